"""Host input rate (decode + augment + batch) against the student's step
rate, side by side in one run (experiments/README.md, "Host input").

Random images, encoded here: 32x32 PNG (CIFAR) and 224x224 JPEG (quality
90, ImageNet-sized). Rows, images per second:

  decode, 1 thread        Pillow decode of the encoded images (what the
                          in-memory sources do when a dataset is built)
  stream: <augment>       mtkd's training stream (`streams.train_stream`,
                          host augmentation in Grain's map) read with
                          `streams.iterate` (2 threads, 8 batches ahead)
  decode + <augment>      the same stream over the encoded images, decoding
                          in the map (decoding in the workers instead of at
                          build time)
  step: <model>           the jitted train step (supervised, batch 128 at
                          32x32 / 32 at 224x224) on one CPU device

The ratio input / step says whether the pipeline keeps up on this machine;
images/s per core (2 threads here) says how many cores an accelerator
step rate needs.

Run (from the repository root; idle machine):
  .venv/bin/python -m experiments.bench_host_input [--batches=60 --steps=3]
"""

import io
import time
from collections.abc import Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from PIL import Image

from mtkd import models
from mtkd.data import host_augment, streams, views
from mtkd.data.datasets import Split, to_float
from mtkd.methods import objectives
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib

_BATCHES = flags.DEFINE_integer("batches", 60, "Batches per stream row "
                                "(best of 3 reads).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per model row.")

AUGMENTS = {
    "pad-crop 4 + flip": dict(flip=True, pad_crop=4),
    "resized crop + flip": dict(flip=True,
                                resized_crop=dict(scale=(0.08, 1.0))),
    "resized crop + flip + RandAugment(2, 9)": dict(
        flip=True, resized_crop=dict(scale=(0.08, 1.0)),
        randaugment=dict(num_ops=2, magnitude=9)),
}


def _encode(x: np.ndarray, fmt: str) -> list[bytes]:
  out = []
  for xi in x:
    buf = io.BytesIO()
    Image.fromarray(xi).save(buf, format=fmt, **(
        {"quality": 90} if fmt == "JPEG" else {}))
    out.append(buf.getvalue())
  return out


def _decode(b: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(b)) as im:
    return np.asarray(im.convert("RGB"))


class _DecodeGather:
  """rows -> batch, decoding the encoded rows and augmenting them (the
  worker-decode variant of `streams.Gather`)."""

  def __init__(self, encoded, ids, batch, host, seed=0):
    self.encoded, self.ids, self.batch = encoded, ids, batch
    self.host, self.seed = host, seed

  def __call__(self, k: int):
    rows = (np.arange(k * self.batch, (k + 1) * self.batch)
            % len(self.encoded))
    x = np.stack([_decode(self.encoded[r]) for r in rows])
    seeds = views.epoch_seed(self.seed, self.ids[rows], k)
    return {"inputs": to_float(self.host(x, seeds))}


def _rate(fn, images: int) -> float:
  t = time.perf_counter()
  fn()
  return images / (time.perf_counter() - t)


def _stream_rate(ds, batches: int, batch: int, repeats: int = 3,
                 threads: int = 2) -> float:
  """Best of `repeats` reads of `batches` batches (fresh ones each time)
  with `threads` Grain threads."""
  list(streams.iterate(ds, 0, 2, num_threads=threads))  # Warm up.
  return max(_rate(lambda r=r: list(streams.iterate(
      ds, 2 + r * batches, 2 + (r + 1) * batches, num_threads=threads)),
      batches * batch) for r in range(repeats))


def worker_decode_rate(size: int, fmt: str, augment: dict, n: int,
                       batch: int, batches: int, threads: int) -> float:
  """Images/s of decode + host augmentation in the stream's map, over `n`
  random images encoded as `fmt` (the accelerator check's host row)."""
  x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3),
                                        dtype=np.uint8)
  host = host_augment.make(ml_collections.ConfigDict(augment))
  ds = grain.MapDataset.range(2**62).map(_DecodeGather(
      _encode(x, fmt), np.arange(n), batch, host))
  return _stream_rate(ds, batches, batch, threads=threads)


def _step_rate(name: str, shape, batch: int, steps: int) -> float:
  model = models.build(ml_collections.ConfigDict(dict(name=name)),
                       {"label": 100})
  net = models.Net(model)
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="sgd", learning_rate=0.05, momentum=0.9)))
  place = placement.Jit(sharding.make_mesh(devices=jax.devices()[:1]))
  init = step_lib.make_init(net, tx, shape)
  state = place.init(init, jax.random.key(0))
  spec = (objectives.TaskSpec("label", 100),)
  step = place.compile(lambda ax: step_lib.make_train_step(
      net, tx, objectives.OBJECTIVES.get("supervised")(), spec,
      axis_name=ax), state)
  rng = np.random.default_rng(0)
  batch_ = place.put_batch({
      "inputs": rng.uniform(size=(batch, *shape)).astype(np.float32),
      "labels": {"label": rng.integers(0, 100, batch).astype(np.int32)},
      "mask": np.ones(batch, np.float32), "ids": np.arange(batch)})
  key = jax.random.key(1)
  state, m = step(state, batch_, key)
  jax.block_until_ready(m)

  def run():
    s = state
    for _ in range(steps):
      s, m = step(s, batch_, key)
    jax.block_until_ready(m)
  return _rate(run, steps * batch)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  rng = np.random.default_rng(0)
  batches = _BATCHES.value
  rows = []
  for size, fmt, batch, model, augs in (
      (32, "PNG", 128, "resnet20", ["pad-crop 4 + flip"]),
      (224, "JPEG", 32, "resnet50_imagenet",
       ["resized crop + flip", "resized crop + flip + RandAugment(2, 9)"])):
    n = 1024 if size == 32 else 256
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    encoded = _encode(x, fmt)
    tag = f"{size}x{size} {fmt}"
    rows.append((tag, "decode, 1 thread",
                 _rate(lambda e=encoded: [_decode(b) for b in e], n)))
    split = Split(x, {"label": np.zeros(n, np.int32)}, np.arange(n))
    for a in augs:
      host = host_augment.make(ml_collections.ConfigDict(AUGMENTS[a]))
      ds = streams.train_stream(split, split.labels, batch, 0, host=host)
      rows.append((tag, f"stream: {a}", _stream_rate(ds, batches, batch)))
      dec = grain.MapDataset.range(2**62).map(_DecodeGather(
          encoded, split.ids, batch, host))
      rows.append((tag, f"decode + {a}", _stream_rate(dec, batches, batch)))
    rows.append((tag, f"step: {model}, batch {batch}",
                 _step_rate(model, (size, size, 3), batch, _STEPS.value)))
  print(f"{jax.devices()[0].platform}; images/s (2 Grain threads for the "
        "streams)")
  for tag, name, r in rows:
    print(f"{tag:<12} {name:<48} {r:10.0f}")


if __name__ == "__main__":
  app.run(main)
