"""The teacher stage: one teacher network trained (resumed, restored) on
every labelled training example of its tasks."""

import dataclasses

from mtkd import models
from mtkd.data import augment, host_augment, streams
from mtkd.errors import UserError
from mtkd.methods.objectives import OBJECTIVES
from mtkd.models import pretrained
from mtkd.models.masks import transplant
from mtkd.stages.base import Run, Stage
from mtkd.stages.plan import part_settings, steps_per_epoch
from mtkd.stages.teachers import Member
from mtkd.store.layout import SOURCE
from mtkd.train.optim import make_optimizer


class TeacherStage(Stage):
  """Trains (resumes, restores) one teacher network on every labelled
  training example of its tasks, with the `supervised` objective. Given
  `source_params` (`config.teacher.init='source'`), its trunk starts from
  the source model's."""

  def __init__(self, member: Member, source_params=None):
    self.member, self.source_params = member, source_params
    self.name = f"teacher/{member.name}"
    self.init, self.loaded = self._init(), None

  def reads(self, r: Run) -> list[str]:
    return [r.layout.stage(SOURCE)] if self.source_params is not None else []

  def writes(self, r: Run) -> list[str]:
    """Its folder; none for a checkpoint used as it is (steps=0)."""
    c = r.config.teacher
    if c.get("checkpoint") and not c.steps:
      return []
    return [r.layout.teacher(self.member.name)]

  def settings(self, r: Run) -> dict:
    # Not `workdir`: where teachers live does not change them, and runs
    # that share a teacher directory must agree on everything else.
    m = self.member
    out = dict(r.common, teacher=part_settings(r.config.teacher,
                                               drop=("workdir",)),
               model=m.model_cfg, tasks=list(m.tasks), seed=m.seed,
               source=self._init() is not None)
    if self.loaded is not None:  # The weights, not just their path.
      out["init_from"] = models.fingerprint(self.loaded)
    return out

  def _init(self):
    if self.source_params is None:
      return None
    return lambda v: transplant(v, self.source_params, "trunk", self.name)

  def model(self, r: Run) -> models.MultiHead:
    return models.build(self.member.model_cfg,
                        {t: r.ds.num_classes[t] for t in self.member.tasks},
                        r.ds.kinds)

  def pretrained(self, r: Run) -> dict | None:
    """The weights `config.teacher.checkpoint` names, or None."""
    c, m = r.config.teacher, self.member
    if not c.get("checkpoint"):
      return None
    if not c.steps and len(m.tasks) > 1:
      raise UserError(
          f"{self.name}: a checkpoint used as is (config.teacher.steps=0) "
          "fills one classifier, but this teacher has tasks "
          f"{list(m.tasks)}. Fix: fine-tune it (steps > 0) or use per-task "
          "teachers (config.teacher.kind='single').")
    return pretrained.load(c.checkpoint, self.model(r), r.ds.input_shape,
                           m.name, m.tasks[0] if len(m.tasks) == 1 else None)

  def run(self, r: Run) -> dict:
    """`{"last": exported variables}` (`models.export`), and with
    evaluation during training `{name}:best` (`Run.best`)."""
    c, m = r.config.teacher, self.member
    loaded = self.loaded = self.pretrained(r)
    if loaded is not None and not c.steps:
      return {"last": loaded}
    if loaded is not None:  # Fine-tune: every submodule it has.
      self.init = lambda v: transplant(v, loaded, "model", self.name)
    by_name = {s.name: s for s in r.specs}
    spe = steps_per_epoch(len(r.ds.train), c.batch_size)
    model = self.model(r)
    specs = tuple(dataclasses.replace(by_name[t], weight=1.0,
                                      label_smoothing=c.label_smoothing)
                  for t in m.tasks)
    aug = augment.make(c.get("augment"))
    state = r.fit(
        self.name, self.writes(r)[0], net=models.Net(model),
        tx=make_optimizer(c.optimizer, total_steps=c.steps,
                          steps_per_epoch=spe),
        objective=OBJECTIVES.get("supervised")(), tasks=specs,
        stream=streams.train_stream(r.ds.train, r.ds.train.labels,
                                    c.batch_size, m.seed,
                                    augment_seeds=aug is not None,
                                    host=host_augment.make(
                                        c.get("host_augment")),
                                    mix=host_augment.mix_spec(
                                        c.get("host_augment"))),
        num_steps=c.steps, batch_size=c.batch_size,
        config=self.settings(r), augment=aug,
        init_variables=self.init, seed=m.seed, accumulate=c.accumulate,
        **r.evaluation(model, specs, spe))
    return {"last": models.export(state.variables),
            **r.best(self.name, self.writes(r)[0], state)}
