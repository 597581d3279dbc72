"""Puts upcoming batches on device in a background thread.

`prefetch_to_device(batches, put_fn, size)` runs `put_fn` (e.g.
`placement.put_batch`: `jax.device_put` or `make_array_from_process_local_data`)
on the next `size` host batches while the caller's step runs, so a step
starts on a batch that is already placed. Measured on the 2-core CPU
machine (experiments/README.md), it removed the loop's waiting for input but
did not speed the loop up: JAX's asynchronous dispatch already lets the loop
prepare the next batch while XLA computes, and the extra thread competes
with XLA's for the cores. It is meant for hosts with spare cores while an
accelerator computes.

Invariants: batches come out in source order; an exception raised by the
source or by `put_fn` is re-raised in the consumer at the position where it
happened (after every batch before it); `close()` (also on `with` exit,
garbage collection, or exhaustion) stops the thread, closes the source if it
has `close()`, and joins; at most `size + 1` batches are placed ahead of the
consumer.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")

_POLL_S = 0.05  # How often a blocked producer checks for close().


class _End:
  """Queue marker: the source is exhausted (error is None) or failed."""

  def __init__(self, error: BaseException | None = None):
    self.error = error


def _produce(source: Iterator[Any], put_fn: Callable[[Any], Any],
             out: queue.Queue, stop: threading.Event) -> None:
  """Thread body; holds no reference to the consumer-side object, so that
  object can be garbage-collected (and close the thread) while this runs."""

  def offer(item) -> bool:  # False once the consumer has closed.
    while not stop.is_set():
      try:
        out.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        pass
    return False

  end = _End()
  try:
    for item in source:
      if stop.is_set() or not offer(put_fn(item)):
        break
  except BaseException as e:  # noqa: BLE001 - re-raised by the consumer.
    end = _End(e)
  finally:
    close = getattr(source, "close", None)
    if close is not None:
      try:
        close()
      except Exception as e:  # noqa: BLE001
        if end.error is None:
          end = _End(e)
  offer(end)


class DevicePrefetcher(Generic[U]):
  """Iterator over `put_fn(batch)`, computed `size` batches ahead."""

  def __init__(self, source: Iterable[Any], put_fn: Callable[[Any], U],
               size: int = 2):
    if size < 1:
      raise ValueError(f"prefetch size must be >= 1, got {size}.")
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(
        target=_produce, args=(iter(source), put_fn, self._queue, self._stop),
        name="mtkd-prefetch", daemon=True)
    self._thread.start()

  def __iter__(self) -> "DevicePrefetcher[U]":
    return self

  def __next__(self) -> U:
    if self._done:
      raise StopIteration
    item = self._queue.get()
    if isinstance(item, _End):
      self._done = True
      self._thread.join()
      if item.error is not None:
        raise item.error
      raise StopIteration
    return item

  def close(self, timeout: float | None = None) -> None:
    """Stops the producer and waits for it (it finishes the batch it is
    computing first); idempotent."""
    self._done = True
    self._stop.set()
    while True:  # Drop placed batches so a blocked producer sees the stop.
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    if self._thread is not threading.current_thread():
      self._thread.join(timeout)

  @property
  def alive(self) -> bool:
    """Whether the producer thread is still running."""
    return self._thread.is_alive()

  def __enter__(self) -> "DevicePrefetcher[U]":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    if hasattr(self, "_thread"):
      self._stop.set()  # Do not block in a finalizer: the thread exits soon.


def prefetch_to_device(iterator: Iterable[T], put_fn: Callable[[T], U],
                       size: int = 2) -> DevicePrefetcher[U]:
  """`put_fn` applied to the batches of `iterator` in a background thread,
  up to `size` batches ahead of the consumer; see the module docstring.

  Use as `with prefetch_to_device(batches, placement.put_batch) as it:` (or
  call `close()`) when the loop may stop early.
  """
  return DevicePrefetcher(iterator, put_fn, size)
