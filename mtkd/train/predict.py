"""Prediction over whole splits, on the mesh, gathered on every process.

The last batch is padded and the padding dropped, so every example counts
exactly once. (Metrics are computed from these outputs on the host, per task
kind, in `mtkd.methods.tasks`.)
"""

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from mtkd.data import streams
from mtkd.data.datasets import Split
from mtkd.train import sharding
from mtkd.train import step as step_lib


def predict(model: nn.Module, params, split: Split, batch_size: int,
            mesh, layers: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """`{task: [N, C] float32 logits}` for every example of `split`, in order,
  plus `feat_<layer>: [N, D]` for each of `layers`.

  Every process gets the full result (gathered across processes)."""
  fn = step_lib.make_predict(model, tuple(layers))
  out: dict[str, list[np.ndarray]] = {}
  for i, batch in enumerate(streams.iterate(
      streams.eval_stream(split, batch_size))):
    valid = min(batch_size, len(split) - i * batch_size)
    for task, logits in fn(params, sharding.put_batch(
        {"inputs": batch["inputs"]}, mesh)["inputs"]).items():
      out.setdefault(task, []).append(_to_host(logits)[:valid])
  return {t: np.concatenate(v) for t, v in out.items()}


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x, np.float32)
