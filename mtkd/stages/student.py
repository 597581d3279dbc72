"""Student stages (and the labels-only baseline): one model trained by the
objective its plan names, against cached or online teachers.

A stage's plan (`mtkd.stages.plan.STAGE_DEFAULTS`) names its objective,
data (`all`: with the unlabelled transfer set; `labelled`), initialisation
(fresh, `source`, or an earlier stage), what it freezes, and where teacher
outputs come from. What the stage wires up follows from the objective's
declared `Needs`: a cache join or online teachers, feature adaptors, peers.

Fairness: the baseline and the first student stage share the architecture,
optimiser, seed (hence initial parameters), batch size and label budget; the
baseline's step count is the sum of the student stages' steps.
"""

import dataclasses

import numpy as np

from mtkd import configs_util, models
from mtkd.data import augment, datasets, host_augment, streams
from mtkd.methods import objectives, weighting
from mtkd.models.masks import last_trunk_layer_mask, transplant, trunk_mask
from mtkd.stages import caching
from mtkd.stages.base import Run, Stage
from mtkd.stages.plan import part_settings, steps_per_epoch
from mtkd.stages.teachers import Teachers
from mtkd.train.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class StudentData:
  """The labels students may see (the rest marked missing) and the rows
  each `data` choice samples (`None`: the whole split)."""
  labels: dict[str, np.ndarray]
  rows: dict[str, np.ndarray | None]

  @classmethod
  def of(cls, config, r: Run) -> "StudentData":
    ds = r.ds
    keep = datasets.label_budget(len(ds.train), config.data.num_labeled,
                                 config.data.label_seed)
    labels = {s.name: _hide_labels(ds.train.labels[s.name], keep, s.kind)
              for s in r.specs}
    labelled = np.flatnonzero(keep)
    return cls(labels, {"labelled": labelled,
                        "all": None if config.data.transfer_set else labelled})


def _hide_labels(y: np.ndarray, keep: np.ndarray, kind: str) -> np.ndarray:
  """`y` outside the label budget `keep` marked missing. A sequence task's
  targets are its input's own next tokens (self-supervised), so the budget
  does not hide them."""
  if kind == "sequence":
    return y
  if kind == "regression":
    return np.where(keep[:, None], y, np.nan).astype(np.float32)
  k = keep if y.ndim == 1 else keep[:, None]
  return np.where(k, y, -1).astype(np.int32)


class StudentStage(Stage):
  """One student (or baseline) stage; `init_from` is the exported params
  its plan initialises from (the source's or an earlier stage's)."""

  def __init__(self, r: Run, name: str, plan: dict, model: models.MultiHead,
               teachers: Teachers, data: StudentData, init_from=None):
    self.name, self.plan, self.teachers, self.data = name, plan, teachers, data
    self.init_from = init_from
    smoothing = r.config.student.label_smoothing
    self.specs = tuple(dataclasses.replace(s, label_smoothing=smoothing)
                       for s in r.specs)
    objective = objectives.build(plan["objective"], r.config)
    self.needs = objective.needs
    self.adaptors = self._adaptors(r, teachers)
    self.objective = objective.with_feature_targets(
        tuple(a for a, _ in self.adaptors))
    self.net = models.Net(
        model, feature_layer=self.needs.student_layer if self.adaptors else "",
        adaptors=self.adaptors, peers=self.needs.peers,
        regressor=self.needs.regressor)
    self.online = self.needs.teachers and plan["teacher_mode"] == "online"
    names = self.objective.term_names(self.specs)
    self.weights = {s.name: s.weight for s in self.specs}
    self.weights.update(self.objective.term_weights())
    self.weighting = weighting.build(r.config, names, trunk_mask,
                                     last_trunk_layer_mask, self.weights)

  def _adaptors(self, r: Run, t: Teachers
                ) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(target, one example's feature shape) per adaptor: one per teacher
    group, or one onto the fused (flat, concatenated) features."""
    if not self.needs.teacher_layer:
      return ()
    shapes = {g: models.feature_shape(t.nets[n], r.ds.input_shape,
                                      self.needs.teacher_layer)
              for g, n in t.feature_groups.items()}
    if self.needs.fuse_teachers:
      return (("fused", (sum(int(np.prod(s)) for s in shapes.values()),)),)
    return tuple(sorted(shapes.items()))

  def reads(self, r: Run) -> list[str]:
    """The training caches it joins, or the teachers it runs online, and
    the stage it starts from."""
    t, out = self.teachers, []
    if self.online:
      out += [r.layout.teacher(m.name) for m in t.members]
    elif self.needs.teachers:
      sources = set(t.feature_groups.values())
      out += [r.layout.cache(caching.cache_key(
          r.config, m, r.ds, "train", t.layer if m.name in sources else ""))
              for m in t.members]
    init = self.plan["init"]
    if init:
      out.append(r.layout.stage(init))
    return out

  def writes(self, r: Run) -> list[str]:
    return [r.layout.stage(self.name)]

  def settings(self, r: Run) -> dict:
    """Only what this stage reads: the other stages' plans, and the tasks'
    KD temperature and alpha for a stage without teacher logits (the
    baseline), do not change its result, so changing them must not refuse
    its checkpoint."""
    c, needs = r.config, self.needs
    kd_keys = () if needs.teacher_logits else ("temperature", "alpha")
    out = dict(
        r.common, stage=self.plan,
        student=part_settings(c.student, drop=("stages",)),
        num_labeled=c.data.num_labeled, label_seed=c.data.label_seed,
        tasks=[{k: v for k, v in dataclasses.asdict(s).items()
                if k not in kd_keys} for s in self.specs],
        weighting={"name": c.weighting.name, "weights": self.weights,
                   "settings": vars(self.weighting.settings)},
        augment=configs_util.to_dict(c.student.augment))
    if needs.teachers:
      out.update(teachers={n: models.fingerprint(v)
                           for n, v in self.teachers.params.items()},
                 transfer_set=c.data.transfer_set)
      if needs.teacher_logits:
        out["distill"] = configs_util.to_dict(c.distill)
      if not self.online:
        out["cache"] = {m.name: caching.storage(c, m, r.ds)
                        for m in self.teachers.members}
        if caching.views(c):
          out["views"] = caching.view_settings(c)
    key = self.objective.settings_key
    if key:
      out[key] = configs_util.to_dict(c[key])
    if self.init_from is not None:
      out["init_from"] = models.fingerprint(self.init_from)
    return out

  def _init(self):
    if self.init_from is None:
      return None
    where = f"config.student.stages.{self.name}"
    return lambda v: transplant(v, self.init_from, self.plan["init_parts"],
                                where)

  def run(self, r: Run) -> dict[str, dict]:
    """`{name: exported variables}` (`models.export`), and with
    `config.student.ema`, `{name}_ema`: the parameters' EMA with the
    model's running statistics, evaluated as a model of its own."""
    c, t, needs = r.config, self.teachers, self.needs
    join = teacher_fn = None
    num_views = 0
    if needs.teachers and not self.online:
      join = t.join(r.ds.tasks, needs.teacher_logits, bool(self.adaptors),
                    {s.name: s.temperature for s in self.specs})
      num_views = caching.views(c)
    if self.online:
      teacher_fn = t.online(r.ds.tasks, bool(self.adaptors))
    teacher_params = t.params if self.online else None
    wfn = self.weighting

    ema = c.student.ema

    def extra(params):
      out = {"weighting": wfn.init(params)}
      if teacher_params is not None:
        out["teachers"] = teacher_params
      return out

    batch, rows = c.student.batch_size, self.data.rows[self.plan["data"]]
    frozen = trunk_mask if self.plan["freeze"] == "trunk" else None
    spe = steps_per_epoch(len(r.ds.train) if rows is None else len(rows),
                          batch)
    tx = make_optimizer(c.student.optimizer, frozen, self.plan["steps"], spe)
    aug = augment.make(c.student.get("augment"))
    state = r.fit(
        self.name, self.writes(r)[0], net=self.net, tx=tx,
        objective=self.objective, tasks=self.specs,
        stream=streams.train_stream(r.ds.train, self.data.labels, batch,
                                    c.seed, rows=rows, join=join,
                                    num_views=num_views,
                                    view_seed=c.cache.view_seed,
                                    mixup=bool(c.cache.get("mixup")),
                                    augment_seeds=aug is not None,
                                    host=host_augment.make(
                                        c.student.get("host_augment")),
                                    mix=host_augment.mix_spec(
                                        c.student.get("host_augment"))),
        num_steps=self.plan["steps"], batch_size=batch,
        config=self.settings(r), weighting=wfn, augment=aug,
        teacher=teacher_fn,
        extra=extra, init_variables=self._init(),
        accumulate=c.student.accumulate, ema=ema,
        **r.evaluation(self.net.model, self.specs, spe))
    out = {self.name: models.export(state.variables),
           **r.best(self.name, self.writes(r)[0], state)}
    if ema:
      out[f"{self.name}_ema"] = models.export(
          dict(state.variables, params=state.extra["ema"]))
    return out
