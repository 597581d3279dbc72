"""`--verify`: check every artifact in a workdir without training.

Checks each checkpoint of each stage (it restores and its bytes hash to the
fingerprint saved with it), each teacher cache (complete, every file's
checksum, examples and ids against the configured dataset, teacher
fingerprint against the teacher's final checkpoint, and the cached outputs
against a re-run of that teacher on a sample) and results.json (one entry
per task with teacher, baseline and every student stage).
"""

import glob
import json
import math
import os

import numpy as np

from mtkd import cache, checkpoint
from mtkd.data import datasets
from mtkd.errors import UserError
from mtkd.fingerprint import tree_fingerprint


def _student_runs(config) -> list[str]:
  from mtkd import experiment  # Deferred: verify must not pull in training.
  return (["baseline"] if config.get("baseline", True) else []) + list(
      experiment.student_stages(config))


def _stage_dirs(config, workdir: str, teacher_root: str) -> list[str]:
  return sorted(glob.glob(os.path.join(teacher_root, "teachers", "*"))) + [
      os.path.join(workdir, s) for s in ("source", *_student_runs(config))]


def _check_checkpoints(config, workdir: str, teacher_root: str,
                       problems: list[str]) -> dict[str, str]:
  """Checks every step; returns {teacher name: final params fingerprint}."""
  teacher_fps = {}
  for stage_dir in _stage_dirs(config, workdir, teacher_root):
    directory = os.path.join(stage_dir, "checkpoints")
    if not os.path.isdir(directory):
      continue
    ckpt = checkpoint.Checkpointer(directory)
    for step in ckpt.all_steps():
      err = ckpt.check(step)
      if err:
        problems.append(f"checkpoint {directory}/{step} is unusable: {err}. "
                        "A resumed run falls back to the previous checkpoint.")
    good = [s for s in ckpt.all_steps() if not ckpt.check(s)]
    if good and os.path.basename(os.path.dirname(stage_dir)) == "teachers":
      state, _ = ckpt.restore(good[-1], None)
      teacher_fps[os.path.basename(stage_dir)] = tree_fingerprint(
          state["params"]["model"])
    ckpt.close()
  return teacher_fps


def _check_caches(teacher_root: str, ds: datasets.Dataset | None,
                  teacher_fps: dict[str, str], problems: list[str]) -> None:
  for directory in sorted(glob.glob(os.path.join(teacher_root, "cache", "*",
                                                 "*"))):
    teacher, split_name = directory.split(os.sep)[-2:]
    teacher = teacher.split("-feat_")[0]  # Caches that also hold features.
    if cache.read_metadata(directory) is None:
      problems.append(f"teacher cache {directory} is incomplete (no "
                      "metadata.json); re-run the command to finish it.")
      continue
    expected = {"teacher": teacher, "split": split_name}
    if ds is not None and split_name in ("train", "test"):
      expected["dataset_fingerprint"] = getattr(ds, split_name).fingerprint()
    if teacher in teacher_fps:
      expected["teacher_fingerprint"] = teacher_fps[teacher]
    try:
      c = cache.LogitCache(directory, expected, verify=True)
      if ds is not None and split_name in ("train", "test"):
        c.rows(getattr(ds, split_name).ids)  # Every example has its logits.
    except UserError as e:
      problems.append(str(e))


def _check_results(workdir: str, ds: datasets.Dataset | None,
                   runs: list[str], problems: list[str]) -> None:
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      results = json.load(f)
  except ValueError as e:
    problems.append(f"{path} is not valid JSON ({e}); re-run to rewrite it.")
    return
  if ds is not None and sorted(results) != sorted(ds.tasks):
    problems.append(f"{path} has tasks {sorted(results)}, the config's data "
                    f"has {sorted(ds.tasks)}.")
  for task, models in results.items():
    for model in ("teacher", *runs):
      m = models.get(model, {}) if isinstance(models, dict) else {}
      acc, loss = m.get("accuracy", 0.0), m.get("loss")
      if not (isinstance(acc, float | int) and 0 <= acc <= 1 and
              isinstance(loss, float | int) and math.isfinite(loss)):
        problems.append(f"{path}: {task}/{model} lacks a valid accuracy and "
                        "loss.")


def _softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _check_teacher_outputs(config, teacher_root: str, ds: datasets.Dataset,
                           problems: list[str], sample: int = 256) -> None:
  """Re-runs each teacher on the first `sample` training examples and
  compares its class probabilities with the cached ones (TinyViT-style
  check that the cache holds what the teacher computes)."""
  from mtkd import evaluate, models, sharding, teachers  # Training imports.
  mesh = sharding.make_mesh(config.mesh)
  part = ds.train.take(slice(0, min(sample, len(ds.train))))
  for m in teachers.members(config, ds.tasks):
    stage = os.path.join(teacher_root, "teachers", m.name, "checkpoints")
    directory = os.path.join(teacher_root, "cache", m.name, "train")
    meta = cache.read_metadata(directory)
    if not os.path.isdir(stage) or meta is None:
      continue
    ckpt = checkpoint.Checkpointer(stage)
    try:
      state, _ = ckpt.restore(ckpt.latest_step(), None)
    except Exception:  # noqa: BLE001 - reported by _check_checkpoints.
      continue
    finally:
      ckpt.close()
    model = models.build(m.model_cfg, {t: ds.num_classes[t] for t in m.tasks})
    online = evaluate.predict(model, state["params"]["model"], part,
                              config.eval_batch_size, mesh)
    try:
      cached = cache.LogitCache(directory, {}, verify=False).lookup(part.ids)
    except UserError as e:
      problems.append(str(e))
      continue
    # fp32 storage is exact up to reduction order; fp16/bf16 round logits;
    # top-k spreads the tail mass uniformly.
    tol = 1e-4 if meta.get("dtype", "float32") == "float32" else 2e-2
    tol = 0.1 if meta.get("top_k", 0) else tol
    for t in m.tasks:
      if ds.kind(t) != "classification":
        diff = float(np.max(np.abs(online[t] - cached[t])))
      else:
        diff = float(np.max(np.abs(_softmax(online[t]) - _softmax(cached[t]))))
      if not diff <= tol:
        problems.append(
            f"teacher cache {directory}: task {t!r} differs from re-running "
            f"the teacher's final checkpoint on {len(part)} examples (max "
            f"difference {diff:.3g} > {tol}). The cache is stale or corrupt: "
            "delete it and re-run to rebuild it.")


def verify_workdir(config, workdir: str) -> list[str]:
  """All problems found in `workdir` (empty if everything checks out)."""
  if not os.path.isdir(workdir):
    return [f"workdir {workdir} does not exist."]
  problems: list[str] = []
  try:
    ds = datasets.build(config.data)
  except UserError as e:
    ds = None
    problems.append(f"cannot load the configured dataset to check caches "
                    f"against: {e}")
  teacher_root = config.teacher.get("workdir") or workdir
  teacher_fps = _check_checkpoints(config, workdir, teacher_root, problems)
  _check_caches(teacher_root, ds, teacher_fps, problems)
  if ds is not None:
    _check_teacher_outputs(config, teacher_root, ds, problems)
  _check_results(workdir, ds, _student_runs(config), problems)
  return problems
