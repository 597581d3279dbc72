"""The split train step (config.split_step): two programs, the same update.

`make_train_step(split=True)` runs the forward (returning `jax.vjp`'s
closure) and the backward + update as two programs; these tests hold it to
the one-program step (BatchNorm state, EMA, weightings, the non-finite
guard, metrics), to itself under pmap, and to exact resume in `fit`.
"""

import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np
import pytest

from mtkd import models
from mtkd.data import streams
from mtkd.methods import objectives
from mtkd.methods import weighting as weighting_lib
from mtkd.models import masks
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib
from mtkd.train.loop import fit
from tests.test_train import _crash_once_at, _Interrupt, _logged

TASKS = (objectives.TaskSpec("a", 3, temperature=2.0, alpha=0.5),
         objectives.TaskSpec("b", 2, weight=0.5, temperature=4.0, alpha=0.9))
BATCHNORM = dict(name="cifar_resnet", depth=8, widths=(4, 4, 8, 8))
SHAPE = (6, 6, 1)


def _mesh(n: int = 1):
  return sharding.make_mesh((("data", -1),), jax.devices()[:n])


def _batches(n: int, nan_last: bool = False) -> list[dict]:
  """n batches of 16 with partial labels and a cached teacher; the last
  one's inputs NaN with `nan_last`."""
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    labels = {"a": rng.integers(0, 3, 16).astype(np.int32),
              "b": rng.integers(0, 2, 16).astype(np.int32)}
    labels["a"][::3] = -1
    out.append({
        "inputs": rng.normal(size=(16, *SHAPE)).astype(np.float32),
        "labels": labels, "mask": np.ones(16, np.float32),
        "teacher": {"a": rng.normal(size=(16, 1, 3)).astype(np.float32),
                    "b": rng.normal(size=(16, 1, 2)).astype(np.float32)}})
  if nan_last:
    out[-1]["inputs"] = np.full_like(out[-1]["inputs"], np.nan)
  return out


def _run(place, split: bool, batches, weighting: str = "fixed",
         ema: float = 0.0):
  """The steps on `batches`: (final state, per-step host metrics)."""
  model = models.build(ml_collections.ConfigDict(BATCHNORM), {"a": 3, "b": 2})
  net = models.Net(model)
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-2)))
  objective = objectives.OBJECTIVES.get("distill")()
  weights = weighting_lib.make(
      weighting, None, objective.term_names(TASKS), masks.trunk_mask,
      masks.last_trunk_layer_mask, {t.name: t.weight for t in TASKS})
  state = place.init(step_lib.make_init(
      net, tx, SHAPE, lambda p: {"weighting": weights.init(p)}, ema > 0),
      jax.random.key(0))
  step = place.compile(lambda axis: step_lib.make_train_step(
      net, tx, objective, TASKS, weights, axis_name=axis, ema=ema,
      split=split), state)
  assert isinstance(step, placement.Chained) == split
  state, metrics = place.to_device(state), []
  for batch in batches:
    state, m = step(state, place.put_batch(batch), jax.random.key(1))
    metrics.append(place.metrics_to_host(m))
  return jax.device_get(place.from_device(state)), metrics


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("weighting,ema", [("fixed", 0.9),
                                           ("uncertainty", 0.0),
                                           ("gradnorm", 0.0)])
def test_split_matches_one_program(weighting, ema):
  """Params, BatchNorm statistics, optimizer, weighting and EMA state, and
  every metric agree after 3 steps; a 4th step on NaN inputs is refused by
  the non-finite guard in both (nothing but the step counter moves).
  GradNorm takes per-task gradients by vmapped VJPs: the split replays
  them through the forward's closure."""
  batches = _batches(4, nan_last=True)
  place = placement.Jit(_mesh())
  one, m1 = _run(place, False, batches, weighting, ema)
  two, m2 = _run(place, True, batches, weighting, ema)
  assert int(two.step) == 4 and "batch_stats" in two.model_state
  _assert_close(one, two)
  _assert_close(m1, m2)
  assert [float(m["nonfinite"][0]) for m in m2] == [0, 0, 0, 1]
  three, _ = _run(place, True, batches[:3], weighting, ema)
  for a, b in zip(jax.tree.leaves((three.params, three.opt_state,
                                   three.extra)),
                  jax.tree.leaves((two.params, two.opt_state, two.extra)),
                  strict=True):
    np.testing.assert_array_equal(a, b)  # The NaN step changed nothing.


@functools.cache
def _one_device_split():
  return _run(placement.Jit(_mesh()), True, _batches(3))


@pytest.mark.parametrize("make", [
    lambda: placement.Pmap(_mesh(8)),
    lambda: placement.Jit(sharding.make_mesh((("data", 4), ("fsdp", 2)),
                                             jax.devices()[:8]),
                          fsdp_min_size=64)], ids=["pmap8", "fsdp4x2"])
def test_split_layouts_match_one_device(make):
  """With the split on, pmap on 8 devices (BatchNorm over the device axis,
  gradients psummed in the backward program), and jit over a mesh with
  sharded parameters (the carry's layout left to XLA), give the update of
  jit on one device."""
  s1, m1 = _one_device_split()
  s8, m8 = _run(make(), True, _batches(3))
  _assert_close(s1, s8, rtol=2e-5, atol=2e-6)
  _assert_close(m1, m8, rtol=2e-5, atol=2e-6)




def test_split_fit_resumes_exactly(tmp_path, toy_split, toy_job,
                                   one_device_mesh):
  """`fit` with split_step (BatchNorm, accumulation, EMA): crashed at step
  7 and resumed from checkpoint 6, it ends bit-identical to a straight run
  and logs the same metrics; the split step is deterministic."""
  place = placement.Jit(one_device_mesh)
  split = toy_split()
  stream = streams.train_stream(split, split.labels, 8, seed=0)
  job = dict(accumulate=2, ema=0.9, split_step=True)
  straight = fit(toy_job(tmp_path, stream, "straight", BATCHNORM, **job),
                 place)
  stage = toy_job(tmp_path, stream.map(_crash_once_at(stream, 7)),
                  "resumed", BATCHNORM, **job)
  with pytest.raises(_Interrupt):
    fit(stage, place)
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == [
      "3", "6"]
  resumed = fit(stage, place)
  assert int(resumed.step) == 10
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert _logged(tmp_path / "resumed") == _logged(tmp_path / "straight")
  # The same job without the split: the same training, to float rounding.
  plain = fit(dataclasses.replace(
      toy_job(tmp_path, stream, "plain", BATCHNORM, **job),
      split_step=False), place)
  _assert_close(jax.device_get(plain), jax.device_get(straight))
