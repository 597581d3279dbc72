"""Every path of a workdir, named once.

    <workdir>/config.json, command.txt, versions.json, git.txt
    <workdir>/results.json, summary.json, timings.json
    <workdir>/source/                     the transfer source model
    <workdir>/<stage>/                    baseline and student stages
    <teacher root>/teachers/<member>/     one folder per teacher network
    <teacher root>/cache/<member><suffix>/<split>/   its cached outputs

A stage folder holds `checkpoints/` (Orbax), `corrupt_checkpoints/` (steps
moved aside, never deleted) and `logs/` (metrics.jsonl, TensorBoard).

The teacher root is the workdir unless `config.teacher.workdir` names
another run's, so sweeps share teachers and caches. A cache folder's
suffix records what the cache holds beyond dense float32 logits:
`-feat_<layer>` when it also holds a feature layer, and `-<dtype>` /
`-top<k>`, `-<tail>` and `-T<temperatures>` for another storage mode, and
`-views<K>` for K replayed augmented views per example (`-views<K>mix`:
mixup views; `mtkd.data.views`).
Caches that differ in any of these
live side by side, so changing `config.cache.dtype` builds a new cache
instead of reusing (or overwriting) the old one.
"""

import dataclasses
import glob
import os
import re

RUN_RECORDS = ("config.json", "command.txt", "versions.json", "git.txt")
SOURCE = "source"
_CACHE_NAME = re.compile(
    r"^(?P<member>.+?)(?:-feat_(?P<layer>[^-]+))?(?:-(?P<dtype>float16|"
    r"bfloat16))?(?:-top(?P<top_k>\d+))?(?:-(?P<tail>renormalized|bucket|"
    r"sampled))?(?:-T(?P<temps>[0-9._e+-]+))?(?:-views(?P<views>\d+)(?P<mix>mix)?)?$")


@dataclasses.dataclass(frozen=True)
class CacheKey:
  """What distinguishes one cache folder of a teacher from another."""
  member: str
  split: str
  layer: str = ""        # Cached feature layer ('' = logits only).
  dtype: str = "float32"
  top_k: int = 0
  tail: str = "uniform"  # Sparse tail mode (train caches).
  temperatures: tuple[float, ...] = ()  # Of a bucket or sampled tail.
  views: int = 0         # Replayed augmented views per example (0: none).
  mixup: bool = False    # The views are mixup views.

  @property
  def name(self) -> str:
    return (self.member + (f"-feat_{self.layer}" if self.layer else "")
            + (f"-{self.dtype}" if self.dtype != "float32" else "")
            + (f"-top{self.top_k}" if self.top_k else "")
            + (f"-{self.tail}" if self.tail != "uniform" else "")
            + ("-T" + "_".join(f"{t:g}" for t in self.temperatures)
               if self.temperatures else "")
            + (f"-views{self.views}" if self.views else "")
            + ("mix" if self.views and self.mixup else ""))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The paths of one run: `root` is its workdir, `teacher_root` where its
  teachers and caches live (the workdir, or `config.teacher.workdir`)."""
  root: str
  teacher_root: str = ""

  def __post_init__(self):
    if not self.teacher_root:
      object.__setattr__(self, "teacher_root", self.root)

  @classmethod
  def of(cls, config, workdir: str) -> "Layout":
    return cls(workdir, config.teacher.get("workdir") or workdir)

  # Run records and outputs.
  def file(self, name: str) -> str:
    """`config.json`, `results.json`, ...: a file at the workdir's top."""
    return os.path.join(self.root, name)

  @property
  def results(self) -> str:
    return self.file("results.json")

  @property
  def summary(self) -> str:
    return self.file("summary.json")

  @property
  def timings(self) -> str:
    return self.file("timings.json")

  # Trained models.
  def stage(self, name: str) -> str:
    """A stage folder of this run: `source`, `baseline` or a student."""
    return os.path.join(self.root, name)

  def teacher(self, member: str) -> str:
    return os.path.join(self.teacher_root, "teachers", member)

  def teachers(self) -> list[str]:
    """Every teacher folder that exists, sorted."""
    return sorted(glob.glob(os.path.join(self.teacher_root, "teachers", "*")))

  # Teacher caches.
  def cache(self, key: CacheKey) -> str:
    return os.path.join(self.teacher_root, "cache", key.name, key.split)

  def caches(self) -> list[tuple[CacheKey, str]]:
    """Every cache folder that exists, with what its name says it holds."""
    out = []
    for path in sorted(glob.glob(os.path.join(self.teacher_root, "cache",
                                              "*", "*"))):
      name, split = path.split(os.sep)[-2:]
      m = _CACHE_NAME.match(name)
      if m is None or not os.path.isdir(path):
        continue
      temps = tuple(float(t) for t in m["temps"].split("_")) if m[
          "temps"] else ()
      out.append((CacheKey(m["member"], split, m["layer"] or "",
                           m["dtype"] or "float32", int(m["top_k"] or 0),
                           m["tail"] or "uniform", temps,
                           int(m["views"] or 0), bool(m["mix"])), path))
    return out


def checkpoints(stage_dir: str) -> str:
  return os.path.join(stage_dir, "checkpoints")


def corrupt_checkpoints(stage_dir: str) -> str:
  return os.path.join(stage_dir, "corrupt_checkpoints")


def logs(stage_dir: str) -> str:
  return os.path.join(stage_dir, "logs")


METRICS = "metrics.jsonl"  # In logs/: one JSON line per log step.


def metrics(stage_dir: str) -> str:
  return os.path.join(logs(stage_dir), METRICS)
