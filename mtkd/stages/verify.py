"""`--verify`: check every artifact in a workdir without training.

Checks each checkpoint of each stage (it restores and its bytes hash to the
fingerprint saved with it), each teacher cache (complete, every file's
checksum, examples and ids against the configured dataset, teacher
fingerprint against the teacher's final checkpoint, and the cached outputs
against a re-run of that teacher on a sample) and results.json (one entry
per task with teacher, baseline and every student stage). Every path comes
from `mtkd.store.layout`, feature and storage-mode caches included.
"""

import json
import math
import os

import jax
import numpy as np

from mtkd import models
from mtkd.data import augment, datasets, host_augment
from mtkd.data import views as views_lib
from mtkd.errors import UserError
from mtkd.methods import tasks
from mtkd.stages import plan, teachers
from mtkd.store import cache, checkpoint, sparse
from mtkd.store import layout as layout_lib
from mtkd.store.layout import Layout
from mtkd.train import sharding
from mtkd.train.predict import predict


def _check_checkpoints(config, layout: Layout,
                       problems: list[str]) -> dict[str, dict]:
  """Checks every step; returns {teacher member: final exported params}."""
  teacher_dirs = set(layout.teachers())
  stage_dirs = sorted(teacher_dirs) + [
      layout.stage(s) for s in (layout_lib.SOURCE, *plan.stage_plan(config))]
  final = {}
  for stage_dir in stage_dirs:
    directory = layout_lib.checkpoints(stage_dir)
    if not os.path.isdir(directory):
      continue
    ckpt = checkpoint.Checkpointer(directory)
    for step in ckpt.all_steps():
      err = ckpt.check(step)
      if err:
        problems.append(f"checkpoint {directory}/{step} is unusable: {err}. "
                        "A resumed run falls back to the previous checkpoint.")
    good = [s for s in ckpt.all_steps() if not ckpt.check(s)]
    if good and stage_dir in teacher_dirs:
      state, _ = ckpt.restore(good[-1], None)
      # On the host: restored as saved, it would sit on the devices of the
      # run that wrote it, not on this mesh.
      final[os.path.basename(stage_dir)] = jax.device_get(models.export(
          {"params": state["params"],
           **state.get("extra", {}).get("model_state", {})}))
    ckpt.close()
  return final


def _check_caches(layout: Layout, ds: datasets.Dataset | None,
                  teacher_params: dict[str, dict],
                  problems: list[str]) -> None:
  for key, directory in layout.caches():
    if cache.read_metadata(directory) is None:
      problems.append(f"teacher cache {directory} is incomplete (no "
                      "metadata.json); re-run the command to finish it.")
      continue
    expected = {"teacher": key.member, "split": key.split,
                "dtype": key.dtype, "top_k": key.top_k}
    if key.tail != "uniform":
      expected["tail"] = key.tail
    if ds is not None and key.split in ("train", "test"):
      expected["dataset_fingerprint"] = getattr(ds, key.split).fingerprint()
    if key.member in teacher_params:
      expected["teacher_fingerprint"] = models.fingerprint(
          teacher_params[key.member])
    try:
      c = cache.LogitCache(directory, expected, verify=True)
      if ds is not None and key.split in ("train", "test"):
        ids = getattr(ds, key.split).ids
        if key.views:  # Every (example, view) has its logits.
          ids = views_lib.view_ids(np.repeat(ids, key.views), np.tile(
              np.arange(key.views), len(ids)), key.views)
        c.rows(ids)  # Every example has its logits.
    except UserError as e:
      problems.append(str(e))


def _check_results(layout: Layout, ds: datasets.Dataset | None,
                   runs: list[str], problems: list[str]) -> None:
  path = layout.results
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
  for task, rows in results.items():
    for model in ("teacher", *runs):
      m = rows.get(model, {}) if isinstance(rows, dict) else {}
      kind = ds.kind(task) if ds is not None and task in ds.tasks else ""
      main = "mse" if kind == "regression" else "accuracy"
      value, loss = m.get(main), m.get("loss")
      ok_value = isinstance(value, float | int) and math.isfinite(value) and (
          main == "mse" or 0 <= value <= 1)
      if not (ok_value and isinstance(loss, float | int)
              and math.isfinite(loss)):
        problems.append(f"{path}: {task}/{model} lacks a valid {main} and "
                        "loss.")


def _softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _difference(c: cache.LogitCache, ids: np.ndarray, online: np.ndarray,
                task: str, kind: str) -> tuple[str, float, float]:
  """(what, difference, tolerance) between a cache's rows of `task` and
  the re-run teacher's outputs `online`."""
  # fp32 storage is exact up to reduction order; fp16/bf16 round logits.
  tol = 1e-4 if c.meta.get("dtype", "float32") == "float32" else 2e-2
  if task not in c.meta.get("top_k_names", ()):
    if kind not in tasks.SOFTMAX_KINDS:
      return "outputs", float(np.max(np.abs(online - c.lookup(ids)[task]))), tol
    return "probabilities", float(np.max(np.abs(
        _softmax(online) - _softmax(c.lookup(ids)[task])))), tol
  stored = c.stored(ids, task)
  if online.ndim == 3:  # A sequence task: one row per token, as stored.
    n, length = online.shape[:2]
    ids = (np.asarray(ids, np.int64)[:, None] * length
           + np.arange(length)).reshape(-1)
    online = online.reshape(n * length, -1)
    stored = [s.reshape(n * length, *s.shape[2:]) for s in stored]
  temps = c.meta.get("tail_temperatures", {}).get(task, ())
  if c.tail == "sampled":  # Draws are a pure function of (seed, id, draw).
    idx, counts = sparse.sample(online, ids, stored[0].shape[1], temps[0])
    same = np.all((idx == stored[0]) & (counts == stored[1]), 1)
    # A re-run's last-bit differences may move a draw across a CDF boundary.
    return "rows with other draws (fraction)", float(1 - same.mean()), 0.05
  top = np.asarray(stored[1], np.intp)
  diff = np.abs(np.take_along_axis(_softmax(online), top, 1)
                - np.exp(stored[0] - stored[2][:, None]))
  if c.tail == "bucket":
    diff = np.concatenate([diff, np.abs(sparse.tail_mass(online, top, temps)
                                        - stored[4])], 1)
  return "top-k probabilities and tail masses", float(np.max(diff)), tol


def _check_teacher_outputs(config, layout: Layout, ds: datasets.Dataset,
                           teacher_params: dict[str, dict],
                           problems: list[str], sample: int = 256) -> None:
  """Re-runs each teacher on the first `sample` training examples and
  compares its outputs with every train cache of it (TinyViT-style check
  that a cache holds what the teacher computes). A view cache is checked
  on one seeded random view of each, re-rendered from (view_seed, id,
  view)."""
  mesh = sharding.make_mesh(config.mesh)
  part = ds.train.take(slice(0, min(sample, len(ds.train))))
  by_member = {m.name: m for m in teachers.members(config, ds.tasks)}
  for key, directory in layout.caches():
    m = by_member.get(key.member)
    meta = cache.read_metadata(directory)
    if key.split != "train" or m is None or meta is None or (
        key.member not in teacher_params):
      continue
    model = models.build(m.model_cfg, {t: ds.num_classes[t] for t in m.tasks},
                         ds.kinds)
    rendered = part
    if key.views:
      v = np.random.default_rng(0).integers(0, key.views, len(part))
      render = views_lib.renderer(augment.make(config.student.augment))
      x = views_lib.render_rows(
          render, ds.train, np.arange(len(part)), v, meta.get("view_seed", 0),
          key.mixup, host_augment.make(config.student.get("host_augment")))
      rendered = datasets.Split(x, part.labels, views_lib.view_ids(
          part.ids, v, key.views))
    online = predict(model, teacher_params[key.member], rendered,
                     config.eval_batch_size, mesh)
    try:
      c = cache.LogitCache(directory, {}, verify=False)
      c.rows(rendered.ids)
    except UserError as e:
      problems.append(str(e))
      continue
    for t in m.tasks:
      what, diff, tol = _difference(c, rendered.ids, online[t], t,
                                    ds.kind(t))
      if not diff <= tol:
        problems.append(
            f"teacher cache {directory}: task {t!r} differs from re-running "
            f"the teacher's final checkpoint on {len(part)} examples ({what}: "
            f"max difference {diff:.3g} > {tol}). The cache is stale or "
            "corrupt: delete it and re-run to rebuild it.")


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
  layout = Layout.of(config, workdir)
  teacher_params = _check_checkpoints(config, layout, problems)
  _check_caches(layout, ds, teacher_params, problems)
  if ds is not None:
    _check_teacher_outputs(config, layout, ds, teacher_params, problems)
  _check_results(layout, ds, list(plan.stage_plan(config)), problems)
  return problems
