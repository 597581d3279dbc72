"""What every stage shares (`Run`) and what a stage is (`Stage`).

A stage is one unit of the pipeline: the transfer source, one teacher, one
teacher's caches, the baseline, a student stage. Each declares the folders
it writes (from `mtkd.store.layout`, the one place that spells paths), the
result-affecting settings it reads (stored with its checkpoints or cache
metadata, so a changed setting refuses a resume instead of mixing
results), and `run`, which runs the stage, resumes it from its last
checkpoint or shard, or skips it when its output is complete.
"""

import abc
import dataclasses
import functools
import os
import time
from typing import Any

import jax
from jax.sharding import Mesh

from mtkd import configs_util, models
from mtkd.data.datasets import Dataset, Split
from mtkd.errors import UserError
from mtkd.methods import tasks
from mtkd.methods.tasks import TaskSpec
from mtkd.store.fingerprint import tree_fingerprint
from mtkd.store.layout import Layout
from mtkd.train import loop
from mtkd.train.placement import Placement
from mtkd.train.predict import predict


@dataclasses.dataclass
class Run:
  """What every stage of one run shares: the config, where things live, the
  devices, the data and the tasks. `common` holds the settings every
  stage's fingerprint includes (dataset and its content hash, seed)."""
  config: Any
  layout: Layout
  mesh: Mesh
  placement: Placement
  ds: Dataset
  specs: tuple[TaskSpec, ...]
  allow_config_change: bool = False
  # Model name -> the step its evaluations chose as best (`best`).
  best_steps: dict = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def common(self) -> dict:
    out = {"dataset": self.config.data.name,
           "dataset_fingerprint": self.ds.train.fingerprint(),
           "seed": self.config.seed}
    if self.ds.train.weights is not None:  # How training samples rows.
      out["sampling"] = tree_fingerprint(self.ds.train.weights)
    return out

  def fit(self, name: str, directory: str, **job) -> Any:
    """Trains (resumes, restores) one model with the run's loop settings;
    `job` holds the `loop.TrainJob` fields that differ between stages."""
    c = self.config
    job.setdefault("seed", c.seed)
    wandb = dict(configs_util.to_dict(c.wandb))
    wandb["group"] = wandb.get("group") or os.path.basename(
        os.path.abspath(self.layout.root))
    return loop.fit(loop.TrainJob(
        name=name, directory=directory, input_shape=self.ds.input_shape,
        writers=tuple(c.writers), writer_settings=wandb,
        log_every=c.log_every, checkpoint_every=c.checkpoint_every,
        nonfinite=c.nonfinite, prefetch=c.get("prefetch_to_device", 0),
        split_step=c.get("split_step", False),
        allow_config_change=self.allow_config_change, **job), self.placement)

  def predict(self, model, params, split: Split, layers=()) -> dict:
    return predict(model, params, split, self.config.eval_batch_size,
                   self.mesh, layers)

  @property
  def eval_split(self) -> tuple[str, Split]:
    """(name, split) that evaluation during training reads."""
    name = self.config.eval.split
    return name, self.ds.val if name == "val" else self.ds.test

  def evaluation(self, model, specs, steps_per_epoch: float) -> dict:
    """TrainJob fields of evaluation during training (none when off):
    `evaluate(state) -> {task: metrics}` of the exported model on the
    evaluation split, and the cadence in steps."""
    c = self.config.eval
    if not c.every:
      return {}
    _, split = self.eval_split

    def evaluate(state) -> dict:
      out = self.predict(model, models.export(state.variables), split)
      return {s.name: tasks.evaluate(s, out[s.name], split.labels[s.name])
              for s in specs}
    every = (max(1, round(c.every * steps_per_epoch)) if c.unit == "epochs"
             else int(c.every))
    return {"evaluate": evaluate, "eval_every": every}

  def best(self, name: str, directory: str, state) -> dict:
    """`{f"{name}:best": exported variables}` of the job's checkpoint its
    evaluations scored best (recorded in `best_steps`), or {} when it was
    not evaluated during training."""
    if not self.config.eval.every:
      return {}
    step, best = loop.best_state(directory, state)
    self.best_steps[name] = step
    return {f"{name}:best": models.export(best.variables)}


class Stage(abc.ABC):
  """One unit of the pipeline; see the module docstring."""
  name: str

  @abc.abstractmethod
  def reads(self, r: Run) -> list[str]:
    """The folders of other stages whose output this stage uses."""

  @abc.abstractmethod
  def writes(self, r: Run) -> list[str]:
    """The folders this stage owns."""

  @abc.abstractmethod
  def settings(self, r: Run) -> dict:
    """Its result-affecting settings (what a resume must agree on)."""

  @abc.abstractmethod
  def run(self, r: Run) -> Any:
    """Runs, resumes or skips the stage; returns its output."""


def execute(stage: Stage, r: Run) -> Any:
  """`stage.run(r)`, once what it reads exists (the driver's order
  guarantees that; a miss is a bug in the order, not a user error)."""
  missing = [p for p in stage.reads(r) if not os.path.isdir(p)]
  if missing:
    raise RuntimeError(f"Stage {stage.name!r} reads {missing}, which no "
                       "earlier stage wrote.")
  return stage.run(r)


def timed(timings: dict, name: str, stage: Stage, r: Run) -> Any:
  """`execute(stage, r)`, its wall time recorded in `timings[name]`."""
  t0 = time.perf_counter()
  out = execute(stage, r)
  timings[name] = time.perf_counter() - t0
  return out


def check_workdir(workdir: str) -> None:
  """Creates the workdir, or explains why it cannot."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create the workdir {workdir!r}: {e.strerror}. "
                    "Fix: choose a writable --workdir.") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"The workdir {workdir!r} is not writable. Fix: choose a "
                    "writable --workdir or fix its permissions.")


def describe(r: Run) -> str:
  """One line about the data and the devices, printed at start-up."""
  c, ds = r.config, r.ds
  return (f"Data: {c.data.name}, {len(ds.train)} train / {len(ds.test)} "
          f"test examples, input {ds.input_shape}, tasks "
          f"{dict(ds.num_classes)}; {jax.device_count()} device(s) in "
          f"{jax.process_count()} process(es), mesh {dict(r.mesh.shape)}, "
          f"{c.parallel.placement}.")
