"""prefetch_to_device: order, errors, early stop, and real overlap (shown by
the order of events between the two threads, never by timing)."""

import gc
import threading

import jax
import numpy as np
import pytest

from mtkd.train.prefetch import prefetch_to_device

WAIT_S = 30  # Only bounds a hang: every wait below is for an event.


def test_preserves_order_and_applies_put_fn():
  it = prefetch_to_device(range(50), lambda x: 2 * x, size=3)
  assert list(it) == [2 * x for x in range(50)]
  assert not it.alive
  with pytest.raises(StopIteration):
    next(it)


def test_device_put_of_batches():
  batches = [{"x": np.full((4, 2), i, np.float32), "y": np.arange(4) + i}
             for i in range(5)]
  got = list(prefetch_to_device(iter(batches), jax.device_put))
  assert len(got) == 5
  for i, b in enumerate(got):
    assert isinstance(b["x"], jax.Array)
    np.testing.assert_array_equal(b["x"], batches[i]["x"])
    np.testing.assert_array_equal(b["y"], batches[i]["y"])


def _failing_source(n):
  yield from range(n)
  raise ValueError("source broke")


def test_source_exception_reaches_consumer_in_order():
  it = prefetch_to_device(_failing_source(3), lambda x: x)
  got = []
  with pytest.raises(ValueError, match="source broke"):
    for x in it:
      got.append(x)
  assert got == [0, 1, 2] and not it.alive


def test_put_fn_exception_reaches_consumer_in_order():
  def put(x):
    if x == 4:
      raise RuntimeError(f"cannot place batch {x}")
    return x
  it = prefetch_to_device(range(10), put, size=2)
  assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
  with pytest.raises(RuntimeError, match="cannot place batch 4"):
    next(it)
  assert not it.alive


class _Source:
  """An endless source that records what happened to it."""

  def __init__(self):
    self.produced, self.closed = 0, threading.Event()

  def __iter__(self):
    try:
      while True:
        yield self.produced
        self.produced += 1
    finally:
      self.closed.set()


def test_early_close_stops_thread_and_closes_source():
  src = _Source()
  with prefetch_to_device(iter(src), lambda x: x, size=2) as it:
    for x in it:
      if x == 3:
        break
  assert not it.alive and src.closed.is_set()
  assert src.produced <= 3 + 1 + 2 + 1  # Consumed, in flight, queued, held.
  with pytest.raises(StopIteration):
    next(it)
  it.close()  # Idempotent.


def test_dropped_iterator_does_not_leave_a_thread():
  src = _Source()
  it = prefetch_to_device(iter(src), lambda x: x, size=1)
  assert next(it) == 0
  thread = it._thread
  del it
  gc.collect()
  thread.join(WAIT_S)
  assert not thread.is_alive() and src.closed.is_set()


def test_producer_works_while_consumer_steps():
  """A slow producer and a slow consumer overlap: batch i+1 is placed while
  step i runs, and the producer never runs more than size+1 ahead."""
  n, size = 6, 2
  placed = [threading.Event() for _ in range(n)]
  events, lock = [], threading.Lock()

  def log(what, i):
    with lock:
      events.append((what, i))

  def put(i):
    log("put", i)
    placed[i].set()
    return i

  consumed = 0
  for i in prefetch_to_device(range(n), put, size=size):
    log("step start", i)
    if i + 1 < n:  # The "step" lasts until the next batch has been placed.
      assert placed[i + 1].wait(WAIT_S)
    with lock:
      puts = sum(e[0] == "put" for e in events)
    consumed += 1
    assert puts <= consumed + size + 1
    log("step end", i)
  assert consumed == n
  for i in range(n - 1):  # A synchronous put would have hung at the wait.
    assert events.index(("put", i + 1)) < events.index(("step end", i))


def test_size_must_be_positive():
  with pytest.raises(ValueError, match="size"):
    prefetch_to_device(range(3), lambda x: x, size=0)
