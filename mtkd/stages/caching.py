"""The caching stage: a teacher runs once over train and test, and its raw
outputs are stored by example id (`mtkd.store.cache`).

A cache's metadata records the teacher's parameter fingerprint, the split's
content fingerprint, the cached feature layer and the storage mode
(`config.cache.dtype`, `top_k`, `tail`, `temperatures`); opening checks them
all, and
the folder name carries the layer and storage mode (`mtkd.store.layout`),
so a changed storage setting builds a new cache beside the old one.
"""

import dataclasses

import jax
import numpy as np

from mtkd import configs_util, distributed, models
from mtkd.data import augment, host_augment
from mtkd.data import views as views_lib
from mtkd.data.datasets import Dataset, Split
from mtkd.methods import tasks
from mtkd.stages import plan
from mtkd.stages.base import Run, Stage
from mtkd.stages.teachers import Member
from mtkd.store import cache
from mtkd.store.fingerprint import tree_fingerprint
from mtkd.store.layout import CacheKey

SPLITS = ("train", "test")


def temperatures(config, member: Member, ds: Dataset) -> dict[str, list]:
  """{task: [T, ...]} a bucket or sampled cache of the member stores:
  `config.cache.temperatures`, or each task's distillation temperature."""
  given = [float(t) for t in config.cache.get("temperatures") or ()]
  specs = {s.name: s.temperature for s in plan.task_specs(config, ds)}
  return {t: sorted(set(given or [specs[t]])) for t in member.tasks}


def storage(config, member: Member, ds: Dataset, split: str = "train"
            ) -> dict:
  """The member's storage mode of `split`: `config.cache.top_k` applies to
  its classification and sequence logits only (a top-k sigmoid or
  regression output has no meaning); a member without them is stored dense. The tail mode
  (`config.cache.tail`) applies to the train split; the test split, read
  only for evaluation (top-1 and top-k are kept exactly), keeps the
  uniform tail."""
  names = [t for t in member.tasks
           if ds.kind(t) in tasks.SOFTMAX_KINDS]
  top_k = config.cache.top_k if names else 0
  tail = config.cache.get("tail", "uniform") if split == "train" else "uniform"
  return cache.storage_meta(config.cache.dtype, top_k, names, tail,
                            temperatures(config, member, ds))


def views(config, split: str = "train") -> int:
  """Replayed augmented views per example in the cache of `split`
  (`config.cache.views`; the test split is never augmented)."""
  return int(config.cache.get("views", 0)) if split == "train" else 0


def view_settings(config, split: str = "train") -> dict:
  """What a view cache must match: K, the views' seed and the
  augmentation that renders them (`config.student.augment`, and
  `host_augment` when on)."""
  k = views(config, split)
  if not k:
    return {}
  in_step = configs_util.to_dict(config.student.augment) or {}
  host = host_augment.spec(config.student.get("host_augment"))
  out = {"views": k, "view_seed": int(config.cache.view_seed),
         "augment": tree_fingerprint(in_step if host is None else {
             "in_step": in_step, "host": dataclasses.asdict(host)})}
  if config.cache.get("mixup", False):
    out["mixup"] = True
  return out


def cache_key(config, member: Member, ds: Dataset, split: str,
              layer: str = "") -> CacheKey:
  """Where the member's cache of `split` lives (`mtkd.store.layout`)."""
  s = storage(config, member, ds, split)
  temps = sorted({t for ts in s.get("tail_temperatures", {}).values()
                  for t in ts})
  return CacheKey(member.name, split, layer, s["dtype"], s["top_k"],
                  s.get("tail", "uniform"), tuple(temps),
                  views(config, split), bool(config.cache.get("mixup")))


class CacheStage(Stage):
  """Builds (or finishes, or opens) one teacher's caches of both splits."""

  def __init__(self, member: Member, model, params, layer: str = "",
               teacher_dirs: list[str] | None = None):
    """`teacher_dirs`: what the teacher stage wrote (default: its folder;
    none for a checkpoint used as it is)."""
    self.member, self.model, self.params = member, model, params
    self.teacher_dirs = teacher_dirs
    self.layers = (layer,) if layer else ()
    self.name = f"cache/{member.name}"
    self.fingerprint = models.fingerprint(params)

  def keys(self, r: Run) -> dict[str, CacheKey]:
    layer = self.layers[0] if self.layers else ""
    return {split: cache_key(r.config, self.member, r.ds, split, layer)
            for split in SPLITS}

  def reads(self, r: Run) -> list[str]:
    if self.teacher_dirs is not None:
      return list(self.teacher_dirs)
    return [r.layout.teacher(self.member.name)]

  def writes(self, r: Run) -> list[str]:
    return [r.layout.cache(k) for k in self.keys(r).values()]

  def settings(self, r: Run, split: str = "train") -> dict:
    """The metadata a cache must carry to be used (checked on opening)."""
    vocabulary = {}
    if r.ds.vocabulary or any(r.ds.kind(t) == "sequence"
                              for t in self.member.tasks):
      # Before the dataset's fingerprint: the clearer error when both differ.
      vocabulary = {"vocabulary": r.ds.vocabulary}
    return {"teacher": self.member.name,
            "teacher_fingerprint": self.fingerprint,
            "split": split, "features": list(self.layers), **vocabulary,
            "dataset_fingerprint": getattr(r.ds, split).fingerprint(),
            **storage(r.config, self.member, r.ds, split),
            **view_settings(r.config, split)}

  def run(self, r: Run) -> dict[str, cache.LogitCache]:
    out = {}
    for split_name, key in self.keys(r).items():
      split = getattr(r.ds, split_name)
      directory = r.layout.cache(key)
      expected = self.settings(r, split_name)
      if cache.read_metadata(directory) is None:
        k = views(r.config, split_name)
        render = views_lib.renderer(augment.make(
            r.config.student.augment)) if k else None
        host = host_augment.make(r.config.student.get("host_augment"))

        def predict(start, stop, split=split, k=k, render=render,
                    host=host):
          if not k:
            part = split.take(slice(start, stop))
          else:  # Virtual row i: view i % K of example i // K.
            ex, v = np.divmod(np.arange(start, stop), k)
            part = split.take(ex)
            part = Split(views_lib.render_rows(
                render, split, ex, v, r.config.cache.view_seed,
                bool(r.config.cache.get("mixup")), host), part.labels,
                         views_lib.view_ids(part.ids, v, k))
          return part.ids, r.predict(self.model, self.params, part,
                                     self.layers)
        s = storage(r.config, self.member, r.ds, split_name)
        cache.build(directory, len(split) * max(k, 1),
                    r.config.cache.shard_size,
                    predict, expected, s["dtype"],
                    jax.process_index(), jax.process_count(),
                    distributed.barrier, top_k=s["top_k"],
                    top_k_names=s["top_k_names"],
                    tail=s.get("tail", "uniform"),
                    temperatures=s.get("tail_temperatures"))
      out[split_name] = cache.LogitCache(directory, expected)
    return out
