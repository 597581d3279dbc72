"""Shared pieces of the benchmarks: the quickstart student, its data, and
the machine line and markdown table every benchmark prints.

This file is the ONLY place the benchmarks touch mtkd's training API
(`make_student`, `make_student_step`, `make_join`, `teacher_entries`); if
`step_lib.make_train_step`, the objectives or the batch layout change, update
it here. (The reproduction drivers' helpers are in repro_common.py.)

Student: MLP 1296 -> 128 (ReLU) -> two heads of 10 ("left", "right"),
Adam 1e-3, per task alpha*T^2*KL + (1-alpha)*CE with alpha 0.5, T 2, as in
configs/quickstart.py. Data: random 36x36x1 uint8 images (MultiFashion's
shape), random labels and random teacher logits.
"""

import dataclasses
import datetime
import os
import platform
import sys
from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np

from experiments import report
from mtkd import models
from mtkd.data import datasets
from mtkd.methods import objectives
from mtkd.stages import teachers
from mtkd.store import cache
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib

TASKS = ("left", "right")
NUM_CLASSES = 10
INPUT_SHAPE = (36, 36, 1)
TEMPERATURE, ALPHA, LEARNING_RATE, HIDDEN = 2.0, 0.5, 1e-3, 128


def synthetic_split(n: int, seed: int = 0) -> datasets.Split:
  """n random quickstart-shaped examples with labels for both tasks."""
  rng = np.random.default_rng(seed)
  return datasets.Split(
      rng.integers(0, 255, (n, *INPUT_SHAPE), dtype=np.uint8),
      {t: rng.integers(0, NUM_CLASSES, n).astype(np.int32) for t in TASKS},
      np.arange(n, dtype=np.int64))


def synthetic_logits(n: int, seed: int = 1) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {t: rng.normal(size=(n, NUM_CLASSES)).astype(np.float32)
          for t in TASKS}


@dataclasses.dataclass
class Student:
  """The quickstart student on a mesh: model, optimizer, jitted step."""
  model: object
  tx: object
  specs: tuple
  objective: object
  place: placement.Jit
  init: Callable

  def fresh_state(self, seed: int = 0):
    """A new state (the step donates its input state)."""
    return self.place.init(self.init, jax.random.key(seed))

  def put(self, batch: Mapping) -> dict:
    return self.place.put_batch(batch)


def make_student_step(student: Student, state,
                      augment: Callable | None = None) -> Callable:
  """`step(state, device_batch, rng) -> (state, metrics)`, jitted with
  donation by mtkd's place (with the in-step `augment`, if any). The one
  call site of make_train_step."""
  return student.place.compile(
      lambda axis_name: step_lib.make_train_step(
          student.model, student.tx, student.objective, student.specs,
          augment=augment, axis_name=axis_name), state)


def make_student(devices: list | None = None,
                 objective: str = "distill") -> Student:
  """The quickstart student on a mesh of `devices` (default: one), trained
  by `objective` ('distill': cached-logit KD; 'supervised': labels only)."""
  model = models.Net(models.build(ml_collections.ConfigDict(
      dict(name="mlp", hidden=(HIDDEN,))), {t: NUM_CLASSES for t in TASKS}))
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=LEARNING_RATE)))
  specs = tuple(objectives.TaskSpec(t, NUM_CLASSES, temperature=TEMPERATURE,
                                    alpha=ALPHA) for t in TASKS)
  objective = objectives.OBJECTIVES.get(objective)()
  mesh = sharding.make_mesh(devices=devices or jax.devices()[:1])
  return Student(model, tx, specs, objective, placement.Jit(mesh),
                 step_lib.make_init(model, tx, INPUT_SHAPE))


def make_join(c: cache.LogitCache) -> Callable:
  """Example ids -> the batch's teacher entries, from one teacher's cache
  (what the experiment passes to `streams.train_stream(join=...)`)."""
  return teachers.CachedJoin({"teacher": c},
                             {t: ["teacher"] for t in TASKS})


def teacher_entries(logits: Mapping[str, np.ndarray]) -> dict:
  """{task: [B, C]} of one teacher -> the batch entries a join yields."""
  return {"teacher": {t: x[:, None, :] for t, x in logits.items()}}


def host_batch(split: datasets.Split, logits: Mapping[str, np.ndarray],
               rows: np.ndarray) -> dict:
  """The batch dict mtkd's pipeline yields, for the given rows."""
  return {"inputs": datasets.to_float(split.x[rows]),
          "labels": {t: y[rows] for t, y in split.labels.items()},
          "mask": np.ones(len(rows), np.float32),
          **teacher_entries({t: x[rows] for t, x in logits.items()})}


def machine() -> str:
  """One line: date, CPU count, platform, versions, load (other processes
  on a shared machine skew timings; ratios within one run less so)."""
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  return (f"{datetime.date.today()}, {os.cpu_count()} CPU cores, "
          f"{platform.machine()}, Python {sys.version.split()[0]}, "
          f"jax {jax.__version__}, numpy {np.__version__}, "
          f"{jax.devices()[0].platform} x{jax.device_count()}; load average "
          f"(1, 5, 15 min) {load}")


def table(headers: list[str], rows: list[list], title: str = "") -> str:
  """A GitHub markdown table (numbers already formatted as strings; first
  column left-aligned, the rest right-aligned) under an optional title."""
  lines = [title] if title else []
  return "\n".join([*lines, report.markdown(headers, rows)])


# A 1000-class task for the cache benchmarks (bench_cache_storage,
# bench_sparse_tails): Gaussian classes, the teacher the Bayes posterior.
C, DIM, SIGMA = 1000, 32, 1.3


def make_task(n: int, seed: int, means: np.ndarray | None = None):
  """(x [n, DIM], labels [n], teacher logits [n, C] float32, means)."""
  rng = np.random.default_rng(seed)
  if means is None:
    means = rng.normal(size=(C, DIM))
  y = rng.integers(0, C, n)
  x = means[y] + SIGMA * rng.normal(size=(n, DIM))
  logits = (x @ means.T - 0.5 * (means**2).sum(1)) / SIGMA**2
  return (x.astype(np.float32), y.astype(np.int32),
          logits.astype(np.float32), means)
