"""A real multi-process run: 2 local processes x 2 CPU devices (gloo),
coordinated by jax.distributed on 127.0.0.1, against one process with 4."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/quickstart.py:smoke", "--config.data.name=digits",
        "--config.teacher.steps=20", "--config.student.steps=20"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
              JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def _start(args, devices, base=ARGS):
  """Output goes to a temporary file, not a pipe: an undrained pipe blocks
  its writer once full, and a blocked rank hangs the other in a collective.
  `-X faulthandler`: a hung rank dumps its Python stacks on SIGABRT."""
  log = tempfile.TemporaryFile("w+")
  p = subprocess.Popen(
      [sys.executable, "-X", "faulthandler", "-m", "mtkd.main", *base, *args],
      cwd=ROOT, env=_env(devices), stdout=log, stderr=subprocess.STDOUT,
      text=True)
  p.log = log
  return p


def _finish(procs, timeout=300):
  """The processes' outputs once all exit 0; a hang fails with every rank's
  stacks and output tail."""
  hung = False
  try:
    for p in procs:
      p.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    hung = True
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGABRT)
        try:
          p.wait(timeout=20)
        except subprocess.TimeoutExpired:
          pass
  finally:
    for p in procs:
      p.kill()
  outs = []
  for p in procs:
    p.log.seek(0)
    outs.append(p.log.read())
    p.log.close()
  tails = "\n".join(f"--- rank {i} (exit {p.returncode}):\n{out[-4000:]}"
                     for i, (p, out) in enumerate(zip(procs, outs, strict=True)))
  assert not hung, f"hung past {timeout}s:\n{tails}"
  assert all(p.returncode == 0 for p in procs), tails
  return outs


def _two(workdir, extra=(), base=ARGS):
  """Two processes of 2 CPU devices each, coordinated on a free port."""
  port = _free_port()
  return [_start([f"--workdir={workdir}", *extra,
                  "--config.parallel.distributed=True",
                  f"--config.parallel.coordinator_address=127.0.0.1:{port}",
                  "--config.parallel.num_processes=2",
                  f"--config.parallel.process_id={i}"], 2, base)
          for i in range(2)]


def _assert_match(results_path, reference):
  """The multi-process results equal the 1-process ones (float noise)."""
  got = json.load(open(results_path))
  assert got.keys() == reference.keys()
  for task in reference:
    for model in reference[task]:
      for k, v in reference[task][model].items():
        np.testing.assert_allclose(got[task][model][k], v, rtol=1e-4,
                                   atol=1e-5, err_msg=f"{task}/{model}/{k}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_mtkd):
  """The same run in one process on 4 devices (in this process: the
  multi-process runs are what is tested, not the CLI)."""
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.steps = c.student.steps = 20
  return run_mtkd(c, tmp_path_factory.mktemp("one_process"), devices=4)


@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_two_processes_match_one(tmp_path, reference, strategy):
  outs = _finish(_two(tmp_path, [f"--config.parallel.placement={strategy}"]))
  assert "4 device(s) in 2 process(es)" in outs[0]
  _assert_match(tmp_path / "results.json", reference)
  # Process 0 alone reports and writes results.
  assert "Wrote" in outs[0] and "Wrote" not in outs[1]


def test_view_cache_two_processes_match_one(tmp_path, run_mtkd):
  """A replayed-view cache written by 2 processes (each renders and writes
  its shards) and read by them: the same results as one process, since a
  view is a pure function of (seed, id, view), not of the process."""
  views = ["--config.cache.views=2", "--config.student.augment.max_shift=1"]
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.steps = c.student.steps = 20
  c.cache.views = 2
  c.student.augment.max_shift = 1
  reference = run_mtkd(c, tmp_path / "one", devices=4)
  _finish(_two(tmp_path / "two", views))
  _assert_match(tmp_path / "two" / "results.json", reference)
  assert (tmp_path / "two" / "cache" / "digit-views2" / "train").is_dir()


def test_mixed_text_datasets_two_processes_match_one(tmp_path, run_mtkd,
                                                      monkeypatch):
  """configs/glue_mix.py's smoke (Parquet sources, a tokenizer file, a
  mixed dataset) on 2 processes: every process reads the same examples
  under the same ids (the cache shards each wrote hold the ids one
  process gives them) and the results match one process's."""
  from mtkd.configs_util import load_config
  monkeypatch.setenv("MTKD_STANDIN_DIR", str(tmp_path / "standin"))
  base = ["--config=configs/glue_mix.py:smoke", "--config.cache.shard_size=256",
          "--config.teacher.steps=10", "--config.student.steps=10"]
  c = load_config(os.path.join(ROOT, "configs", "glue_mix.py"), "smoke")
  c.teacher.steps = c.student.steps = 10
  c.cache.shard_size = 256  # 6 train shards: both processes write.
  reference = run_mtkd(c, tmp_path / "one", devices=4)
  _finish(_two(tmp_path / "two", base=base))
  for task in ("sst2", "cola", "mrpc"):
    for split in ("train", "test"):
      ids = [np.concatenate([np.load(p) for p in sorted(
          (tmp_path / w / "cache" / task / split).glob("*/ids.npy"))])
             for w in ("one", "two")]
      assert len(ids[0]) and np.array_equal(*ids), (task, split)
  # 3 x 512 mixed training rows in shards of 256: both processes wrote.
  assert len(list((tmp_path / "two" / "cache" / "sst2" / "train").glob(
      "shard-*"))) == 6
  _assert_match(tmp_path / "two" / "results.json", reference)
