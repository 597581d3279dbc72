"""Test setup and the helpers several test files share.

- 8 CPU devices in one process, for the tests about devices; every other
  test runs on a 1-device mesh (`run_mtkd`, `one_device_mesh`), which
  compiles faster and shares compiled programs between tests.
- JAX's persistent compilation cache, in a directory outside the checkout
  (`$MTKD_TEST_COMPILATION_CACHE`, default ~/.cache/mtkd/jax-test-cache),
  used by this process and inherited by the CLI subprocesses the tests
  start: the kill -9 test alone runs the same pipeline seven times.
- XLA:CPU compiling at LLVM -O0 (`--xla_backend_optimization_level=0`,
  also inherited): tests are bound by compilation, not by running their
  tiny models, and -O0 took 30 % off test_methods + test_objectives
  (61 -> 43 s, cold cache). It changes no semantics; mtkd itself, the
  benchmarks and the reproductions compile with XLA's defaults.
- absl flags marked parsed (Grain reads them).
"""

import os
import shutil
import subprocess
import sys

CACHE = os.environ.get("MTKD_TEST_COMPILATION_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "mtkd", "jax-test-cache")
CACHE_LIMIT = 2**30  # Cleared when larger: entries are only ever re-created.


def _size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


if os.path.isdir(CACHE) and _size(CACHE) > CACHE_LIMIT:
  shutil.rmtree(CACHE, ignore_errors=True)
# JAX's own size cap (jax_compilation_cache_max_size) needs `filelock` and
# re-scans the directory on every write: 11 s more on test_objectives,
# test_weighting and test_losses, cold. Tiny programs are cached too
# (threshold 0 s): eager ops recur across tests, and a warm cache runs those
# three files in 8 s instead of 33 s.
for key, value in (("JAX_COMPILATION_CACHE_DIR", CACHE),
                   ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                   ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")):
  os.environ.setdefault(key, value)  # Read when jax is imported.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
flags.FLAGS.mark_as_parsed()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cli():
  """`cli(*args) -> CompletedProcess` of `python -m mtkd.main ARGS` (one
  CPU device, the shared compilation cache)."""
  def run(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mtkd.main", *args], cwd=ROOT, timeout=timeout,
        capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))
  return run


@pytest.fixture(scope="session")
def run_mtkd():
  """`run_mtkd(config, workdir, devices=1, **kw)`: `experiment.run` on the
  first `devices` devices (a 1-device mesh unless devices are tested)."""
  from mtkd import experiment

  def run(config, workdir, devices=1, **kwargs):
    return experiment.run(config, str(workdir),
                          devices=jax.devices()[:devices], **kwargs)
  return run


@pytest.fixture
def tiny_run_config():
  """`tiny_run_config(**data)`: the quickstart smoke config on `data`
  (config.data overrides), 10 teacher and student steps, MLP models of 16
  units: a data source's end-to-end run in seconds."""
  from configs import quickstart

  def make(**data):
    c = quickstart.get_config("smoke")
    for k, v in data.items():
      c.data[k] = v
    c.teacher.steps = c.student.steps = 10
    c.teacher.model = c.student.model = dict(name="mlp", hidden=(16,))
    return c
  return make


@pytest.fixture
def resumes_exactly(run_mtkd):
  """`resumes_exactly(config, workdir)` on a finished run: drops the
  student's last checkpoint and the results, runs again, and checks the
  resumed run writes the same results.json bytes."""
  import shutil

  def check(config, workdir):
    final = (workdir / "results.json").read_bytes()
    ckpts = workdir / "student" / "checkpoints"
    last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    shutil.rmtree(ckpts / str(last))
    (workdir / "results.json").unlink()
    run_mtkd(config, workdir)
    assert (workdir / "results.json").read_bytes() == final
  return check


@pytest.fixture(scope="session")
def one_device_mesh():
  from mtkd.train import sharding
  return sharding.make_mesh(devices=jax.devices()[:1])


@pytest.fixture(scope="session")
def toy_tasks():
  """Task a (3 classes, T 2, alpha 0.5), task b (2 classes, weight 0.5,
  T 4, alpha 0.9)."""
  from mtkd.methods.tasks import TaskSpec
  return (TaskSpec("a", 3, temperature=2.0, alpha=0.5),
          TaskSpec("b", 2, weight=0.5, temperature=4.0, alpha=0.9))


@pytest.fixture(scope="session")
def toy_split():
  """`toy_split(n=64)`: random 6x6x1 inputs, labels for tasks a (every
  third missing) and b, ids 0..n-1."""
  from mtkd.data.datasets import Split

  def make(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
    labels = {"a": rng.integers(0, 3, n).astype(np.int32),
              "b": rng.integers(0, 2, n).astype(np.int32)}
    labels["a"][::3] = -1
    return Split(x, labels, np.arange(n))
  return make


@pytest.fixture(scope="session")
def toy_job(toy_tasks):
  """`toy_job(tmp_path, stream, name='s', model=None)`: a 10-step
  supervised `TrainJob` on the toy split (checkpoint every 3 steps) of a
  small MLP, or of the trunk config `model`."""
  from mtkd import models
  from mtkd.methods.objectives import OBJECTIVES
  from mtkd.train.loop import TrainJob
  from mtkd.train.optim import make_optimizer

  def make(tmp_path, stream, name="s", model=None, **job):
    model = models.build(ml_collections.ConfigDict(
        model or dict(name="mlp", hidden=(8,))), {"a": 3, "b": 2})
    return TrainJob(
        name=name, directory=str(tmp_path / name), net=models.Net(model),
        tx=make_optimizer(ml_collections.ConfigDict(
            dict(name="adam", learning_rate=1e-2))),
        objective=OBJECTIVES.get("supervised")(), tasks=toy_tasks,
        stream=stream, num_steps=10, batch_size=8, seed=3,
        input_shape=(6, 6, 1), config={"lr": 1e-2}, log_every=2,
        checkpoint_every=3, **job)
  return make
