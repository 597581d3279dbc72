"""The transfer source stage: a model trained on a source dataset, whose
trunk can initialise teachers (transfer KD) or student stages (transfer
learning). Runs when `config.source.steps > 0`."""

import functools

from mtkd import models
from mtkd.data import datasets, streams
from mtkd.errors import UserError
from mtkd.methods.objectives import OBJECTIVES
from mtkd.methods.tasks import TaskSpec
from mtkd.stages.base import Run, Stage
from mtkd.stages.plan import part_settings, steps_per_epoch
from mtkd.store.layout import SOURCE
from mtkd.train.optim import make_optimizer


class SourceStage(Stage):
  """Trains (resumes, restores) the source model on all source labels."""
  name = SOURCE

  def __init__(self, config):
    self.config = config.source

  @functools.cached_property
  def data(self) -> datasets.Dataset:
    return datasets.build(self.config.data)

  def reads(self, r: Run) -> list[str]:
    return []  # Its data comes from config.source.data.

  def writes(self, r: Run) -> list[str]:
    return [r.layout.stage(SOURCE)]

  def settings(self, r: Run) -> dict:
    return {"source": part_settings(self.config),
            "seed": r.config.seed,
            "dataset_fingerprint": self.data.train.fingerprint()}

  def run(self, r: Run):
    """Returns the source model's exported variables."""
    c, src = self.config, self.data
    if src.input_shape != r.ds.input_shape:
      raise UserError(f"config.source.data gives inputs {src.input_shape} "
                      f"but the target data {r.ds.input_shape}; a "
                      "transferred trunk needs the same input shape.")
    specs = tuple(TaskSpec(t, src.num_classes[t], kind=src.kind(t),
                           label_smoothing=c.label_smoothing)
                  for t in src.tasks)
    tx = make_optimizer(c.optimizer, total_steps=c.steps,
                        steps_per_epoch=steps_per_epoch(len(src.train),
                                                        c.batch_size))
    state = r.fit(
        SOURCE, self.writes(r)[0],
        net=models.Net(models.build(c.model, src.num_classes, src.kinds)), tx=tx,
        objective=OBJECTIVES.get("supervised")(), tasks=specs,
        stream=streams.train_stream(src.train, src.train.labels,
                                    c.batch_size, r.config.seed),
        num_steps=c.steps, batch_size=c.batch_size, config=self.settings(r),
        accumulate=c.accumulate)
    return models.export(state.variables)
