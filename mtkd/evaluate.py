"""Prediction over whole splits, and metrics computed on the host.

Predictions pad the last batch and drop the padding, so every example counts
exactly once. Metrics are computed per task kind in `mtkd.tasks`, in float64
numpy: an implementation independent of the jax losses used for training.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from mtkd import sharding, tasks, train
from mtkd.data import pipeline
from mtkd.data.datasets import Split


def predict(model: nn.Module, params, split: Split, batch_size: int,
            mesh, layers: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """`{task: [N, C] float32 logits}` for every example of `split`, in order,
  plus `feat_<layer>: [N, D]` for each of `layers`.

  Every process gets the full result (gathered across processes)."""
  fn = train.make_predict(model, tuple(layers))
  out: dict[str, list[np.ndarray]] = {}
  for i, batch in enumerate(pipeline.iterate(
      pipeline.eval_stream(split, batch_size))):
    valid = min(batch_size, len(split) - i * batch_size)
    for task, logits in fn(params, sharding.put_batch(
        {"inputs": batch["inputs"]}, mesh)["inputs"]).items():
      out.setdefault(task, []).append(_to_host(logits)[:valid])
  return {t: np.concatenate(v) for t, v in out.items()}


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x, np.float32)


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                 specs=None) -> str:
  """A fixed-width table: one row per (task, model), the task kind's main
  metric first; Δ is against the baseline (in points for accuracy)."""
  kinds = {s.name: tasks.kind(s) for s in specs or ()}
  head = (f"{'task':<12}{'model':<12}{'metric':>10}{'value':>9}{'loss':>9}"
          f"{'agree':>8}{'KL@T':>8}{'Δ':>8}")
  lines = [head, "-" * len(head)]
  for task, rows in results.items():
    k = kinds.get(task) or tasks.KINDS.get("classification")
    scale = 100.0 if k.main == "accuracy" else 1.0
    base = rows.get("baseline", {}).get(k.main)
    for name, m in rows.items():
      delta = (f"{scale * (m[k.main] - base):+8.2f}"
               if name not in ("teacher", "baseline") and base is not None
               else " " * 8)
      agree = f"{100 * m['agreement']:8.2f}" if "agreement" in m else " " * 8
      klt = f"{m['kl']:8.4f}" if "kl" in m else " " * 8
      lines.append(f"{task:<12}{name:<12}{k.main:>10}{scale * m[k.main]:9.2f}"
                   f"{m['loss']:9.4f}{agree}{klt}{delta}")
  return "\n".join(lines)
