"""Prediction over whole splits, and metrics computed on the host.

Predictions pad the last batch and drop the padding, so every example counts
exactly once. Metrics are recomputed in float64 numpy from the logits: an
implementation independent of the jax losses used for training.
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


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def classification(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy and mean CE over labelled (label >= 0) examples."""
  keep = labels >= 0
  logits, labels = logits[keep], labels[keep]
  logp = _log_softmax(logits)
  return {"accuracy": float(np.mean(logits.argmax(-1) == labels)),
          "loss": float(-np.mean(logp[np.arange(len(labels)), labels])),
          "count": int(keep.sum())}


def kl(teacher: np.ndarray, student: np.ndarray, temperature: float) -> float:
  """Mean over examples of KL(softmax(t/T) || softmax(s/T)) (no T^2)."""
  lt, ls = _log_softmax(teacher / temperature), _log_softmax(
      student / temperature)
  return float(np.mean(np.sum(np.exp(lt) * (lt - ls), -1)))


def agreement(student: np.ndarray, teacher: np.ndarray,
              temperature: float) -> dict[str, float]:
  """Top-1 agreement with the teacher, and KL at T and at T=1."""
  return {"agreement": float(np.mean(student.argmax(-1) == teacher.argmax(-1))),
          "kl": kl(teacher, student, temperature),
          "kl_t1": kl(teacher, student, 1.0)}


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
