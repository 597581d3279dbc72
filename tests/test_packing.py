"""packing: the batch a step sees is the dict it was given, exactly."""

import jax
import numpy as np
import pytest

from mtkd.train import packing


def _batch(n=6):
  rng = np.random.default_rng(0)
  return {"inputs": rng.normal(size=(n, 3, 2, 1)).astype(np.float32),
          "labels": {"a": rng.integers(0, 5, n).astype(np.int32),
                     "b": rng.integers(0, 2, n).astype(np.int32)},
          "mask": np.ones(n, np.float32),
          "teacher": {"a": rng.normal(size=(n, 2, 5)).astype(np.float32)},
          "flags": rng.random(n) < 0.5}


def _assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    g = np.asarray(g)
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(g, w)


def test_one_buffer_per_dtype_and_exact_round_trip():
  b = _batch()
  p = packing.pack(b)
  # float32: 6 + 1 + 10 columns; int32: 1 + 1; bool: 1.
  assert sorted(x.shape for x in p.buffers) == [(6, 1), (6, 2), (6, 17)]
  _assert_same(p.unpack(), b)
  _assert_same(jax.jit(packing.unpack)(p), b)  # Traced, as in the step.
  _assert_same(packing.unpack(b), b)  # Dicts pass through.


def test_unpack_reads_the_leading_dimension_from_the_buffers():
  """pmap hands each device a [B / n, F] share of every buffer."""
  b = _batch(8)
  p = packing.pack(b)
  half = jax.tree.map(lambda x: x[4:], p)
  _assert_same(half.unpack(), jax.tree.map(lambda x: x[4:], b))


def test_layout_is_static_so_jit_retraces_on_structure_change():
  traces = []

  @jax.jit
  def f(p):
    traces.append(1)
    return packing.unpack(p)["mask"].sum()

  f(packing.pack(_batch()))
  f(packing.pack(_batch()))
  assert len(traces) == 1
  b = _batch()
  b["teacher"]["b"] = np.zeros((6, 1, 2), np.float32)
  f(packing.pack(b))
  assert len(traces) == 2


def test_rejects_mismatched_leading_dimensions():
  b = _batch()
  b["mask"] = np.ones(5, np.float32)
  with pytest.raises(ValueError, match="same leading dimension"):
    packing.pack(b)


@pytest.mark.parametrize("name", ["jit", "pmap"])
def test_placements_send_packed_batches(name):
  """What the train step receives: one buffer per dtype, not one per array;
  host-only `ids` stay behind."""
  from mtkd.train import placement, sharding
  mesh = sharding.make_mesh(devices=jax.devices()[:2])
  b = dict(_batch(8), ids=np.arange(8))
  placed = placement.PLACEMENTS.get(name)(mesh).put_batch(b)
  assert isinstance(placed, packing.Packed)
  assert len(placed.buffers) == 3  # float32, int32, bool.
  del b["ids"]
  got = packing.unpack(jax.tree.map(
      lambda x: np.asarray(x).reshape(8, *x.shape[2:]) if name == "pmap"
      else np.asarray(x), placed))
  _assert_same(got, b)
