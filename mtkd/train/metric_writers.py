"""Metric logging: metrics.jsonl, TensorBoard and (optionally) Weights &
Biases writers, and a console progress line.

Only process 0 writes. clu's writers need TensorFlow, so TensorBoard events
come from tensorboardX behind this small interface. `config.writers`
chooses the writers besides metrics.jsonl.
"""

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence

import jax

from mtkd.registry import Registry
from mtkd.store import layout

WRITERS: Registry = Registry("metric writer")


@WRITERS.register("tensorboard")
class TensorBoard:
  """Event files beside metrics.jsonl (`tensorboard --logdir WORKDIR`)."""

  def __init__(self, logdir: str, name: str, settings: Mapping):
    del name, settings
    from tensorboardX import SummaryWriter  # Heavy import, process 0 only.
    self._tb = SummaryWriter(logdir)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    self._tb.close()


@WRITERS.register("wandb")
class WeightsAndBiases:
  """One Weights & Biases run per stage, named after it, in `logdir`;
  `mode='offline'` (the default) needs neither an account nor a network
  (`wandb sync` uploads later). `settings`: config.wandb."""

  def __init__(self, logdir: str, name: str, settings: Mapping):
    import wandb
    self._run = wandb.init(project=settings.get("project", "mtkd"),
                           entity=settings.get("entity") or None,
                           mode=settings.get("mode", "offline"), dir=logdir,
                           name=name, group=settings.get("group") or None)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self._run.log(dict(scalars), step=step)

  def close(self) -> None:
    self._run.finish()


class MetricWriter:
  """Appends `{"step": s, **scalars}` lines to metrics.jsonl (always: the
  run's own reports read it) and to the `writers` named (`WRITERS`)."""

  def __init__(self, logdir: str, writers: Sequence[str] = ("tensorboard",),
               name: str = "", settings: Mapping | None = None):
    self.active = jax.process_index() == 0
    self._writers = []
    if not self.active:
      return
    os.makedirs(logdir, exist_ok=True)
    self._jsonl = open(os.path.join(logdir, layout.METRICS), "a")
    self._writers = [WRITERS.get(w)(logdir, name, settings or {})
                     for w in writers]

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    for w in self._writers:
      w.write(int(step), scalars)

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      for w in self._writers:
        w.close()


class Progress:
  """A progress line with throughput and ETA; redrawn in place on a TTY."""

  def __init__(self, name: str, total: int, start: int = 0,
               examples_per_step: int = 1, every_s: float = 2.0):
    self.name, self.total, self.start = name, total, start
    self.examples_per_step, self.every_s = examples_per_step, every_s
    self.t0 = self._last = time.perf_counter()
    self.active = jax.process_index() == 0
    self._tty = sys.stderr.isatty()

  def update(self, step: int, extra: str = "", force: bool = False) -> None:
    now = time.perf_counter()
    if not self.active or (now - self._last < self.every_s and not force):
      return
    self._last = now
    done = step - self.start
    rate = done / max(now - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    line = (f"{self.name}: {step}/{self.total} "
            f"({100 * step / max(self.total, 1):3.0f}%) | {rate:.1f} steps/s, "
            f"{rate * self.examples_per_step:.0f} ex/s | "
            f"ETA {_fmt(eta)}{' | ' + extra if extra else ''}")
    end = "" if self._tty and step < self.total else "\n"
    print(("\r" if self._tty else "") + line, end=end, file=sys.stderr,
          flush=True)

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0


def _fmt(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  m, s = divmod(int(seconds), 60)
  return f"{m}:{s:02d}"
