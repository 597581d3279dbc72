"""Teachers: which exist, and how the students read them (cached or
online). The stage that trains one is `mtkd.stages.teacher`.

A teacher *layout* (registry) maps the dataset's tasks to teacher groups:
'single' gives one single-task teacher per task (cross-task KD), 'multi' one
multi-task teacher. Each group has `config.teacher.ensemble` members (seeds
seed, seed+1, ...); a task's KD target averages its members' predictions in
probability space (`mtkd.methods.tasks`, `losses.*_kd` take the `[B, K, out]` stack).
`config.teacher.models` overrides the architecture per group, so per-task
teachers may differ.

Two ways to deliver teacher outputs to a step, with the same batch layout
(`teacher = {task: [B, K, out]}`, `teacher_features = {group: [B, D]}`):
`CachedJoin` reads them from the on-disk caches by example id;
`online(...)` runs the frozen teachers inside the step on the step's
(possibly augmented) inputs. Feature targets come from each group's first
member (features of independently trained members are not aligned, so
averaging them would be meaningless).
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtkd import configs_util, models
from mtkd.errors import UserError
from mtkd.registry import Registry
from mtkd.store import cache

LAYOUTS: Registry = Registry("teacher layout")
LAYOUTS.register("multi")(lambda tasks: {"multi": tuple(tasks)})
LAYOUTS.register("single")(lambda tasks: {t: (t,) for t in tasks})


@dataclasses.dataclass(frozen=True)
class Member:
  """One teacher network: a member of a group, covering the group's tasks."""
  name: str          # Unique: the group, plus `_<i>` for ensemble members.
  group: str
  index: int         # Position within the group's ensemble.
  tasks: tuple[str, ...]
  model_cfg: dict
  seed: int

  def fingerprint_config(self) -> str:
    return configs_util.fingerprint({"model": self.model_cfg,
                                     "tasks": list(self.tasks)})[:10]


def members(config, tasks: tuple[str, ...]) -> list[Member]:
  """The teachers `config.teacher` declares, in a fixed order."""
  t = config.teacher
  overrides = configs_util.to_dict(t.get("models") or {})
  layout = LAYOUTS.get(t.kind)(tasks)
  unknown = sorted(set(overrides) - set(layout))
  if unknown:
    raise UserError(f"config.teacher.models names {unknown}, which are not "
                    f"teachers of layout {t.kind!r} (its teachers: "
                    f"{sorted(layout)}).")
  n = int(t.get("ensemble", 1))
  if n < 1:
    raise UserError(f"config.teacher.ensemble is {n}; it must be >= 1.")
  out = []
  for group, group_tasks in layout.items():
    cfg = overrides.get(group) or configs_util.to_dict(t.model)
    for i in range(n):
      out.append(Member(name=group if n == 1 else f"{group}_{i}", group=group,
                        index=i, tasks=tuple(group_tasks), model_cfg=cfg,
                        seed=config.seed + i))
  return out


def stacks(members_: list[Member], tasks: tuple[str, ...]
           ) -> dict[str, list[str]]:
  """task -> names of the members that predict it (the K of [B, K, out])."""
  return {task: [m.name for m in members_ if task in m.tasks]
          for task in tasks}


def feature_sources(members_: list[Member]) -> dict[str, str]:
  """group -> the member whose features are the group's feature target."""
  return {m.group: m.name for m in members_ if m.index == 0}


def _stack(rows: list) -> np.ndarray | dict:
  """K members' rows -> `[n, K, ...]`; sparse triples leaf by leaf. One
  member (the common case) is a view, not another copy of the rows."""
  if isinstance(rows[0], Mapping):
    return {k: _stack([r[k] for r in rows]) for k in rows[0]}
  return rows[0][:, None] if len(rows) == 1 else np.stack(rows, 1)


class CachedJoin:
  """Example ids -> teacher stacks and features, from per-member caches.

  A task cached in a non-uniform tail mode arrives as the sparse triple of
  `mtkd.store.sparse` at the task's temperature (`temperatures`); the step
  makes it dense (`mtkd.train.teacher_targets`).
  """

  def __init__(self, caches: Mapping[str, cache.LogitCache],
               by_task: Mapping[str, list[str]],
               features: Mapping[str, str] | None = None,
               layer: str = "",
               temperatures: Mapping[str, float] | None = None):
    self.caches, self.by_task = caches, by_task
    self.features, self.layer = features or {}, layer
    self.temperatures = dict(temperatures or {})

  def __call__(self, ids: np.ndarray) -> dict:
    looked = {name: c.teacher_rows(ids, self.temperatures)
              for name, c in self.caches.items()}
    out = {}
    if self.by_task:
      out["teacher"] = {task: _stack([looked[n][task] for n in names])
                        for task, names in self.by_task.items()}
    if self.features:
      out["teacher_features"] = {
          group: looked[name][f"feat_{self.layer}"]
          for group, name in self.features.items()}
    return out


def online(nets: Mapping[str, models.MultiHead],
           by_task: Mapping[str, list[str]],
           features: Mapping[str, str] | None = None,
           layer: str = "") -> Callable:
  """`(teachers {member: exported variables}, inputs) -> (stacks,
  features)`, computed in the step (running statistics) with gradients
  stopped."""
  features = features or {}

  def apply(params, inputs):
    logits, feats = {}, {}
    for name, net in nets.items():
      if name in features.values():
        logits[name], blocks = net.apply(params[name], inputs,
                                         train=False, with_features=True)
        feats[name] = models.flatten(blocks[layer])
      else:
        logits[name] = net.apply(params[name], inputs,
                                 train=False)
    stack = {task: jnp.stack([logits[n][task] for n in names], 1)
             for task, names in by_task.items()}
    out_features = {g: feats[n] for g, n in features.items()}
    return jax.lax.stop_gradient((stack, out_features))
  return apply


@dataclasses.dataclass
class Teachers:
  """Every trained teacher of a run and its caches, as students read them.

  `layer` is the cached feature layer ('' when no stage matches features);
  the feature target of a group is its first member's (`feature_sources`).
  """
  members: list[Member]
  nets: dict[str, models.MultiHead]
  params: dict[str, dict]          # member -> exported variables
  caches: dict[str, dict]          # split -> member -> LogitCache
  layer: str = ""
  # member -> the best checkpoint's variables (evaluation during training).
  best: dict[str, dict] = dataclasses.field(default_factory=dict)

  def by_task(self, tasks) -> dict[str, list[str]]:
    return stacks(self.members, tasks)

  @property
  def feature_groups(self) -> dict[str, str]:
    return feature_sources(self.members)

  def test_stack(self, task: str) -> np.ndarray:
    """`[N, K, out]` cached test outputs of the task's K teachers."""
    names = self.by_task((task,))[task]
    return np.stack([self.caches["test"][n].all_logits(task) for n in names],
                    1)

  def join(self, tasks, logits: bool, features: bool,
           temperatures: Mapping[str, float] | None = None) -> CachedJoin:
    """Batch entries from the training caches: teacher stacks (`logits`,
    sparse ones at the task's temperature) and the groups' features
    (`features`)."""
    return CachedJoin(self.caches["train"],
                      self.by_task(tasks) if logits else {},
                      self.feature_groups if features else None, self.layer,
                      temperatures)

  def online(self, tasks, features: bool) -> Callable:
    """The frozen teachers as a function run inside the step."""
    return online(self.nets, self.by_task(tasks),
                  self.feature_groups if features else None, self.layer)
