"""The run's plan, checked before any compute: tasks, student stages, and
every setting a stage will read.

`check_config` builds every plug-in a run names (objectives, weighting,
models, optimizers, placement, cache storage) from its own settings block,
so a bad value fails here, before the teachers train, with a message
naming the key.
"""

import importlib.util

import numpy as np

from mtkd import configs_util
from mtkd.data import augment, host_augment
from mtkd.data.datasets import Dataset
from mtkd.errors import UserError
from mtkd.methods import objectives, tasks, weighting
from mtkd.methods.tasks import TaskSpec
from mtkd.models import TRUNKS
from mtkd.stages import teachers
from mtkd.store import cache
from mtkd.train import optim, sharding
from mtkd.train.metric_writers import WRITERS
from mtkd.train.optim import OPTIMIZERS

STAGE_DEFAULTS = dict(objective="distill", steps=-1, data="all", init="",
                      init_parts="trunk", freeze="", teacher_mode="cached")
CHOICES = {"data": ("all", "labelled"), "init_parts": ("trunk", "model"),
           "freeze": ("", "trunk"), "teacher_mode": ("cached", "online")}
BASELINE = "baseline"


def _check_cache(config, specs: tuple[TaskSpec, ...]) -> None:
  """The storage settings, and a bucket or sampled tail at every
  classification task's distillation temperature."""
  c = config.cache
  _check_views(config)
  if c.get("mixup", False) and any(s.alpha != 1.0 for s in specs):
    raise UserError(
        "config.cache.mixup=True: a mixed view has no single label, so the "
        "student must learn from the teacher alone on it. Fix: set "
        "config.distill.alpha=1.0 (and any per-task alpha in config.tasks).")
  given = [float(t) for t in c.get("temperatures") or ()]
  tail = c.get("tail", "uniform")
  cache.storage_meta(c.dtype, c.top_k, ["logits"], tail,
                     {"logits": given or [1.0]})
  if not (c.top_k and given and tail in ("bucket", "sampled")):
    return
  missing = {s.name: s.temperature for s in specs
             if s.kind in tasks.SOFTMAX_KINDS and s.temperature not in given}
  if missing:
    raise UserError(
        f"config.cache.temperatures={given} has no entry for the "
        f"distillation temperature of {missing}: a {tail!r} cache is exact "
        "only at the temperatures it was built for. Fix: add them, or leave "
        "config.cache.temperatures empty (each task's own temperature).")


SHARD_BYTES = 4 * 2**30  # Host memory one cache shard's logits may take.


def _check_shard_memory(config, ds: Dataset) -> None:
  """A cache shard's teacher outputs are gathered on the host before they
  are stored: with sequence tasks ([shard, L, V] float32) that can exceed
  the host's memory, so refuse before any compute."""
  shard = int(config.cache.shard_size)
  per_example = sum(
      4 * ds.num_classes[t] * (np.prod(ds.train.labels[t].shape[1:])
                               if ds.kind(t) == "sequence" else 1)
      for t in ds.tasks)
  if shard * per_example > SHARD_BYTES:
    fit = max(1, SHARD_BYTES // per_example)
    raise UserError(
        f"config.cache.shard_size={shard}: one shard's teacher outputs "
        f"would take {shard * per_example / 2**30:.1f} GiB of host memory "
        f"({per_example / 2**20:.1f} MiB per example, sequence tasks "
        f"included). Fix: set config.cache.shard_size <= {fit}.")


def _check_views(config) -> None:
  """`config.cache.views`: a count, and something to render views with."""
  k, seed = config.cache.get("views", 0), config.cache.get("view_seed", 0)
  if not isinstance(k, int) or isinstance(k, bool) or k < 0:
    raise UserError(f"config.cache.views={k!r}: use 0 (cache the "
                    "un-augmented inputs) or the number K >= 1 of augmented "
                    "views to cache per training example.")
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise UserError(f"config.cache.view_seed={seed!r}: use an integer >= 0.")
  if config.cache.get("mixup", False) and not k:
    raise UserError("config.cache.mixup=True mixes cached views, but "
                    "config.cache.views is 0. Fix: set config.cache.views "
                    "to K >= 1.")
  if k and augment.make(config.student.get("augment")) is None and (
      host_augment.spec(config.student.get("host_augment")) is None):
    raise UserError(
        f"config.cache.views={k} caches augmented views, but neither "
        "config.student.augment nor config.student.host_augment turns any "
        "augmentation on. Fix: set one (e.g. augment.max_shift=2) or "
        "config.cache.views=0.")


def task_specs(config, ds: Dataset) -> tuple[TaskSpec, ...]:
  """Per-task kind, weight, temperature and alpha: `config.distill`'s
  defaults, overridden per task by `config.tasks`."""
  d = config.distill
  specs = []
  for t in ds.tasks:
    o = config.tasks.get(t, {}) if config.get("tasks") else {}
    specs.append(TaskSpec(t, ds.num_classes[t],
                          weight=float(o.get("weight", 1.0)),
                          temperature=float(o.get("temperature", d.temperature)),
                          alpha=float(o.get("alpha", d.alpha)),
                          kind=ds.kind(t)))
  return tuple(specs)


def student_stages(config) -> dict[str, dict]:
  """`config.student.stages` with defaults filled in, in order."""
  stages = configs_util.to_dict(config.student.get("stages") or {}) or {
      "student": {}}
  out = {}
  for name, s in stages.items():
    unknown = sorted(set(s) - set(STAGE_DEFAULTS))
    if unknown:
      raise UserError(f"config.student.stages.{name} has unknown key(s) "
                      f"{unknown}; known: {sorted(STAGE_DEFAULTS)}.")
    s = dict(STAGE_DEFAULTS, **s)
    if s["steps"] == -1:
      s["steps"] = config.student.steps
    out[name] = s
  return out


def stage_plan(config) -> dict[str, dict]:
  """The baseline (labels only, the student stages' total steps; unless
  `config.baseline=False`), then the student stages, in order."""
  stages = student_stages(config)
  total = sum(s["steps"] for s in stages.values())
  plan = {BASELINE: dict(STAGE_DEFAULTS, objective="supervised", steps=total,
                         data="labelled")} if config.baseline else {}
  plan.update(stages)
  return plan


def check_config(config, ds: Dataset, mesh) -> tuple[TaskSpec, ...]:
  """Validates every result-affecting setting; returns the task specs."""
  specs = _check_tasks(config, ds)
  teachers.members(config, ds.tasks)
  for part in ("teacher", "student"):
    c = config[part]
    TRUNKS.get(c.model.name)  # Unknown names fail here, not mid-run.
    pretrained = part == "teacher" and c.get("checkpoint")
    if c.steps < 0 or (c.steps == 0 and not pretrained):
      raise UserError(f"config.{part}.steps is {c.steps}; it must be > 0 "
                      "(0 only for a teacher loaded with "
                      "config.teacher.checkpoint).")
    _check_recipe(c, f"config.{part}", mesh)
    host_augment.spec(c.get("host_augment"))  # Raises if malformed.
  if config.teacher.get("checkpoint") and config.teacher.get("init"):
    raise UserError("config.teacher.checkpoint and config.teacher.init="
                    f"{config.teacher.init!r} both start the teachers: "
                    "choose one.")
  weighting.build(config, [s.name for s in specs],
                  weights={s.name: s.weight for s in specs})
  _check_stages(config, specs)
  feature_layer(config)
  if config.teacher.get("init", "") not in ("", "source"):
    raise UserError(f"config.teacher.init is {config.teacher.init!r}; use '' "
                    "or 'source'.")
  sharding.check_batch_size(config.eval_batch_size, mesh,
                            "config.eval_batch_size")
  if config.nonfinite not in ("stop", "skip"):
    raise UserError(f"config.nonfinite is {config.nonfinite!r}; use 'stop' or "
                    "'skip'.")
  _check_cache(config, specs)
  _check_host_mix(config, ds, specs)
  _check_vocab(config, ds)
  _check_shard_memory(config, ds)
  _check_eval(config, ds)
  for name in config.writers:
    WRITERS.get(name)
  if "wandb" in config.writers and importlib.util.find_spec("wandb") is None:
    raise UserError("config.writers names 'wandb', but Weights & Biases is "
                    "not installed. Fix: pip install wandb (offline mode, "
                    "the default, needs no account or network), or remove "
                    "it from config.writers.")
  n = config.data.num_labeled
  if n == 0 or n < -1:
    raise UserError(f"config.data.num_labeled is {n}; use a positive count, "
                    "or -1 for all labels.")
  if n > len(ds.train):
    raise UserError(f"config.data.num_labeled={n} exceeds the {len(ds.train)} "
                    "training examples; use -1 for all labels.")
  return specs


def _check_host_mix(config, ds: Dataset, specs) -> None:
  """Host mixup / cutmix: image inputs for cutmix, per-example tasks, and
  no cached teacher logits (they are the unmixed inputs' outputs)."""
  for part in ("teacher", "student"):
    s = host_augment.mix_spec(config[part].get("host_augment"))
    if s is None:
      continue
    where = f"config.{part}.host_augment.mix"
    if s.mix == "cutmix" and len(ds.input_shape) != 3:
      raise UserError(f"{where}: cutmix pastes image boxes; the inputs are "
                      f"{ds.input_shape}. Use kind='mixup'.")
    seq = [t.name for t in specs if tasks.kind(t).per_token]
    if seq:
      raise UserError(f"{where} mixes whole examples; sequence task(s) "
                      f"{seq} have per-token labels. Turn it off.")
    if part == "teacher":
      continue
    if config.cache.get("views", 0):
      raise UserError(f"{where} with config.cache.views: mixed views are "
                      "config.cache.mixup (cached function matching).")
    for name, st in student_stages(config).items():
      obj = objectives.build(st["objective"], config)
      if obj.needs.teacher_logits and st.get("teacher_mode",
                                             "cached") == "cached":
        raise UserError(
            f"{where} with stage {name!r}'s cached teacher logits: they are "
            "the teacher's outputs on the unmixed inputs. Fix: cache mixed "
            "views (config.cache.views=K, config.cache.mixup=True) or run "
            "the teacher online (teacher_mode='online').")


def _check_vocab(config, ds: Dataset) -> None:
  """A text trunk's embedding table covers the data's token ids (a smaller
  one would silently read the ids above it as UNK)."""
  if not ds.vocab_size:
    return
  models = {"config.teacher.model": config.teacher.model,
            "config.student.model": config.student.model,
            **{f"config.teacher.models.{t}": m
               for t, m in (config.teacher.get("models") or {}).items()}}
  for where, m in models.items():
    size = m.get("vocab_size")
    if size is not None and size < ds.vocab_size:
      raise UserError(
          f"{where}.vocab_size is {size}, but the data's token ids need "
          f"{ds.vocab_size} (its tokenizer's vocabulary, PAD included): ids "
          f"from {size} up would all read as UNK. Fix: set "
          f"{where}.vocab_size={ds.vocab_size}.")


def _check_eval(config, ds: Dataset) -> None:
  c = config.eval
  if not (isinstance(c.every, int | float) and c.every >= 0):
    raise UserError(f"config.eval.every is {c.every!r}; use >= 0 (0: no "
                    "evaluation during training).")
  if c.unit not in ("steps", "epochs"):
    raise UserError(f"config.eval.unit is {c.unit!r}; use 'steps' or "
                    "'epochs'.")
  if c.split not in ("val", "test"):
    raise UserError(f"config.eval.split is {c.split!r}; use 'val' or 'test'.")
  if c.every and c.split == "val" and ds.val is None:
    raise UserError("config.eval.split='val' needs a validation split: set "
                    "config.data.val_size > 0 (examples held out of train), "
                    "or choose on the test split with config.eval.split="
                    "'test' (the tables then say so).")


def _check_recipe(c, where: str, mesh) -> None:
  """Optimizer, schedule, label smoothing, accumulation, EMA of a part."""
  OPTIMIZERS.get(c.optimizer.name)
  optim.make_optimizer(c.optimizer, total_steps=c.steps)  # Raises if bad.
  if not 0 <= c.get("label_smoothing", 0.0) < 1:
    raise UserError(f"{where}.label_smoothing is {c.label_smoothing}; use a "
                    "value in [0, 1).")
  accumulate = c.get("accumulate", 1)
  if not (isinstance(accumulate, int) and accumulate >= 1):
    raise UserError(f"{where}.accumulate is {accumulate!r}; use an integer "
                    ">= 1 (micro-batches per step).")
  if not 0 <= c.get("ema", 0.0) < 1:
    raise UserError(f"{where}.ema is {c.ema}; use a decay in [0, 1) (0: no "
                    "EMA).")
  sharding.check_batch_size(c.batch_size, mesh, f"{where}.batch_size",
                            accumulate)


def _check_tasks(config, ds: Dataset) -> tuple[TaskSpec, ...]:
  unknown = sorted(set(config.get("tasks") or {}) - set(ds.tasks))
  if unknown:
    raise UserError(f"config.tasks names {unknown}, which the dataset "
                    f"{config.data.name!r} does not have (its tasks: "
                    f"{list(ds.tasks)}).")
  specs = task_specs(config, ds)
  for s in specs:
    labelled = np.asarray(tasks.kind(s).labelled(ds.test.labels[s.name]))
    if not labelled.any():
      raise UserError(
          f"Task {s.name!r} has no labelled example in the test split of "
          f"{config.data.name!r} ({len(ds.test)} rows), so its metrics "
          "cannot be measured. Fix: use a test split with labels for every "
          "task, or drop the task from the dataset.")
    if not s.temperature > 0:
      raise UserError(f"Temperature for task {s.name!r} is {s.temperature}; "
                      "it must be > 0 (typical: 1 to 20).")
    if not 0 <= s.alpha <= 1:
      raise UserError(f"alpha for task {s.name!r} is {s.alpha}; it must lie "
                      "in [0, 1] (weight of the KD term vs. the label CE).")
    if not s.weight >= 0:
      raise UserError(f"Weight for task {s.name!r} is {s.weight}; it must be "
                      ">= 0.")
  return specs


def _check_stages(config, specs: tuple[TaskSpec, ...]) -> None:
  stages = student_stages(config)
  for name, s in stages.items():
    where = f"config.student.stages.{name}"
    objectives.build(s["objective"], config).check_tasks(specs, where)
    if s["steps"] <= 0:
      raise UserError(f"{where}.steps is {s['steps']}; it must be > 0.")
    for key, allowed in CHOICES.items():
      if s[key] not in allowed:
        raise UserError(f"{where}.{key} is {s[key]!r}; use one of "
                        f"{list(allowed)}.")
    earlier = list(stages)[:list(stages).index(name)]
    if s["init"] not in ("", "source", *earlier):
      raise UserError(f"{where}.init is {s['init']!r}; use '' (fresh), "
                      f"'source', or an earlier stage ({earlier}).")
    if s["init"] == "source" and config.source.steps <= 0:
      raise UserError(f"{where}.init='source' needs a source model: set "
                      "config.source.steps > 0 and config.source.data.")


# Recipe settings at their no-op values: left out of resume fingerprints, so
# a run written before a setting existed still resumes.
NEUTRAL = {"label_smoothing": 0.0, "accumulate": 1, "ema": 0.0,
           "weight_decay": 0.0, "clip_norm": 0.0, "checkpoint": ""}


def part_settings(cfg, drop: tuple[str, ...] = ()) -> dict:
  """`config.<part>` (teacher, student, source) as it counts for a resume:
  without the keys in `drop` and without recipe keys at their no-op
  values (a constant schedule's other settings included)."""
  def keep(d: dict) -> dict:
    return {k: v for k, v in d.items()
            if k not in drop and not (k in NEUTRAL and v == NEUTRAL[k])}
  out = keep(configs_util.to_dict(cfg))
  if isinstance(out.get("augment"), dict) and not out["augment"].get("flip"):
    out["augment"] = {k: v for k, v in out["augment"].items() if k != "flip"}
  if "host_augment" in out and host_augment.spec(cfg.host_augment) is None:
    out.pop("host_augment")  # Off: as before the key existed.
  if isinstance(out.get("optimizer"), dict):
    opt = keep(out["optimizer"])
    if opt.get("schedule", {}).get("name", "constant") == "constant":
      opt.pop("schedule", None)
    out["optimizer"] = opt
  return out


def steps_per_epoch(rows: int, batch_size: int) -> float:
  """What a schedule's 'epochs' mean for a stage: rows / global batch."""
  return max(rows, 1) / batch_size


def feature_layer(config) -> str:
  """The teacher layer the run caches ('' if no stage reads features);
  one per run, since a teacher's cache holds one feature layer."""
  layers = {objectives.build(s["objective"], config).needs.teacher_layer
            for s in student_stages(config).values()} - {""}
  if len(layers) > 1:
    raise UserError(f"The student stages read different teacher feature "
                    f"layers {sorted(layers)}; a run caches one. Fix: give "
                    "every feature objective the same teacher_layer.")
  return layers.pop() if layers else ""
