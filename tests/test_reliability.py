"""Resume after kill -9 and SIGTERM, corrupt checkpoints, non-finite steps,
--verify, and the bad-input catalogue entries not covered elsewhere."""

import hashlib
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import quickstart
from mtkd import distributed, experiment
from mtkd.data import streams
from mtkd.errors import UserError
from mtkd.store import checkpoint, layout
from mtkd.store.layout import CacheKey, Layout
from mtkd.train import placement, preemption, sharding
from mtkd.train.loop import TrainJob, fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/quickstart.py:smoke", "--config.data.name=digits",
         "--config.checkpoint_every=5"]


def _final_fingerprint(workdir, stage):
  ckpt = checkpoint.Checkpointer(layout.checkpoints(os.path.join(workdir,
                                                                 stage)))
  try:
    return ckpt.meta(ckpt.latest_step())[checkpoint.FINGERPRINT]
  finally:
    ckpt.close()


def _latest_saved_step(directory) -> int:
  try:
    return max([int(n) for n in os.listdir(directory) if n.isdigit()] or [0])
  except FileNotFoundError:
    return 0


def test_kill9_at_random_moments_resumes_bit_identically(tmp_path, cli):
  """SIGKILL inside every stage (after a random number of its checkpoints,
  so also during saves) and while the cache is written; then finish: all
  results and final parameters must equal an uninterrupted run bit for bit.
  """
  args = [*SMOKE, "--config.teacher.steps=80", "--config.student.steps=80"]
  ref = tmp_path / "ref"
  assert cli(*args, f"--workdir={ref}").returncode == 0
  w = tmp_path / "killed"
  rng = random.Random(0)
  def after_saves(stage):
    n = 5 * rng.randint(1, 12)  # checkpoint_every=5 in SMOKE.
    return f"{stage} after step {n} was saved", lambda: _latest_saved_step(
        w / stage / "checkpoints") >= n
  targets = [after_saves("teachers/digit"), after_saves("teachers/digit"),
             after_saves("teachers/parity"),
             ("cache write", lambda: (w / "cache" / "parity").exists()),
             after_saves("baseline"), after_saves("student")]
  killed, outputs = [], []
  for name, reached in targets:
    log = tempfile.TemporaryFile("w+")  # Not a pipe: nothing drains it.
    p = subprocess.Popen([sys.executable, "-m", "mtkd.main", *args,
                          f"--workdir={w}"], cwd=ROOT, stdout=log,
                         stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline = time.time() + 120
    while p.poll() is None and not reached() and time.time() < deadline:
      time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.2))
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
      killed.append(name)
    p.wait()
    log.seek(0)
    outputs.append(log.read())
    log.close()
  r = cli(*args, f"--workdir={w}")
  assert r.returncode == 0, r.stderr[-2000:]
  resumes = [line for o in outputs + [r.stderr + r.stdout]
             for line in o.splitlines() if "resuming at step" in line]
  print(f"\nkill -9 trial: killed {killed}; resumes: {resumes}")
  assert len(killed) == len(targets), outputs
  assert len(resumes) >= 4
  assert (w / "results.json").read_bytes() == (ref / "results.json").read_bytes()
  for stage in ("teachers/digit", "teachers/parity", "baseline", "student"):
    assert _final_fingerprint(w, stage) == _final_fingerprint(ref, stage)
  assert cli(*args, f"--workdir={w}", "--verify").returncode == 0


def test_kill9_with_replayed_views_resumes_bit_identically(tmp_path, cli):
  """configs/cached_views.py (K = 3 views rendered by the in-step
  augmentation): SIGKILL while the view cache is written and mid-student,
  then finish: results, the student's final parameters and the cache equal
  an uninterrupted run's, and --verify re-derives the views."""
  args = ["--config=configs/cached_views.py:smoke,views=3",
          "--config.checkpoint_every=5", "--config.cache.shard_size=512",
          "--config.teacher.steps=20", "--config.student.steps=60"]
  ref, w = tmp_path / "ref", tmp_path / "killed"
  assert cli(*args, f"--workdir={ref}").returncode == 0
  cache = w / "cache" / "digit-views3" / "train"
  killed = []
  for name, reached in (
      ("view cache write", lambda: cache.is_dir() and any(
          p.name.startswith("shard-") and not p.name.count(".tmp")
          for p in cache.iterdir())),
      ("student", lambda: _latest_saved_step(w / "student" / "checkpoints")
       >= 25)):
    p = subprocess.Popen([sys.executable, "-m", "mtkd.main", *args,
                          f"--workdir={w}"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline = time.time() + 120
    while p.poll() is None and not reached() and time.time() < deadline:
      time.sleep(0.005)
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
      killed.append(name)
    p.wait()
  assert killed == ["view cache write", "student"]
  r = cli(*args, f"--workdir={w}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert (w / "results.json").read_bytes() == (ref / "results.json").read_bytes()
  assert _final_fingerprint(w, "student") == _final_fingerprint(ref, "student")
  for f in sorted(p.relative_to(ref) for p in (ref / "cache" / "digit-views3"
                                                / "train").rglob("*.npy")):
    assert (w / f).read_bytes() == (ref / f).read_bytes(), f
  assert cli(*args, f"--workdir={w}", "--verify").returncode == 0


@pytest.fixture
def handlers():
  old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  preemption.reset()
  yield
  preemption.reset()
  for s, h in old.items():
    signal.signal(s, h)


def test_sigterm_checkpoints_at_a_step_boundary_and_resumes(tmp_path,
                                                            handlers, toy_split, toy_job, one_device_mesh):
  place = placement.Jit(one_device_mesh)
  split = toy_split()
  stream = streams.train_stream(split, split.labels, 8, seed=0)
  straight = fit(toy_job(tmp_path, stream, "straight"), place)

  fired = []

  def sigterm_at_step_4(batch):  # Once: a resumed run must not re-fire it.
    if not fired and np.array_equal(batch["ids"], stream[4]["ids"]):
      fired.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  preemption.install()
  stage = toy_job(tmp_path, stream.map(sigterm_at_step_4), "stopped")
  with pytest.raises(preemption.Preempted) as e:
    fit(stage, place)
  assert e.value.signal_name == "SIGTERM"
  ckpt = checkpoint.Checkpointer(layout.checkpoints(stage.directory))
  stopped_at = ckpt.latest_step()
  ckpt.close()
  assert 0 < stopped_at < 10 and f"step {stopped_at}/10" in e.value.where
  preemption.reset()
  resumed = fit(stage, place)
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed)), strict=True):
    np.testing.assert_array_equal(a, b)


def _corrupt_largest_file(step_dir, truncate=False):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  path = max(files, key=os.path.getsize)
  with open(path, "rb") as f:
    raw = bytearray(f.read())
  if truncate:
    raw = raw[: len(raw) // 2]
  else:
    raw[len(raw) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(raw)


@pytest.mark.parametrize("truncate", [False, True])
def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, capsys,
                                                   truncate, one_device_mesh):
  rep = sharding.replicated(one_device_mesh)
  def state(v):  # Random values: the array data is the largest file.
    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    w[0, 0] = v
    return jax.device_put({"w": w, "step": np.int32(v)}, rep)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  ckpt.save(1, state(1.0), {"config": {}})
  ckpt.save(2, state(2.0), {"config": {}})
  ckpt.wait()
  _corrupt_largest_file(str(tmp_path / "checkpoints" / "2"), truncate)
  assert ckpt.check(2) is not None and ckpt.check(1) is None
  step, restored, _ = ckpt.restore_latest(state(0.0))
  assert step == 1 and float(restored["w"][0, 0]) == 1.0
  assert "checkpoints/2 is unusable" in capsys.readouterr().err
  moved = os.listdir(tmp_path / "corrupt_checkpoints")
  assert len(moved) == 1 and moved[0].startswith("2-")  # Kept, not deleted.
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_keeps_latest_two_plus_best_by_loss(tmp_path, one_device_mesh):
  rep = sharding.replicated(one_device_mesh)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "c"), keep=2)
  for step, loss in [(1, 5.0), (2, 1.0), (3, 3.0), (4, 4.0), (5, 6.0)]:
    ckpt.save(step, jax.device_put({"x": np.float32(step)}, rep),
              {"config": {}}, loss=loss)
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4, 5]  # Latest two, and step 2's loss 1.0.
  ckpt.close()


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_non_finite_steps(tmp_path, mode, toy_split, toy_job, one_device_mesh):
  place = placement.Jit(one_device_mesh)
  split = toy_split()
  stream = streams.train_stream(split, split.labels, 8, seed=0)

  def poison_step_4(batch):
    if np.array_equal(batch["ids"], stream[4]["ids"]):
      batch = dict(batch, inputs=np.full_like(batch["inputs"], np.inf))
    return batch

  stage = toy_job(tmp_path, stream.map(poison_step_4), mode)
  stage = TrainJob(**{**stage.__dict__, "nonfinite": mode})
  if mode == "stop":
    with pytest.raises(UserError, match="between steps 5 and 6"):
      fit(stage, place)
    ckpt = checkpoint.Checkpointer(os.path.join(stage.directory,
                                                "checkpoints"))
    step, state, _ = ckpt.restore_latest(None) or (None, None, None)
    ckpt.close()
    assert step == 3
  else:
    state = fit(stage, place)
    lines = [json.loads(x) for x in open(os.path.join(
        layout.logs(stage.directory), layout.METRICS))]
    assert [x["train/nonfinite"] for x in lines] == [0, 0, 0.5, 0, 0]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(
      jax.device_get(state)))


def test_allow_config_change(tmp_path, toy_split, toy_job, one_device_mesh):
  place = placement.Jit(one_device_mesh)
  split = toy_split()
  stream = streams.train_stream(split, split.labels, 8, seed=0)
  stage = toy_job(tmp_path, stream)
  fit(stage, place)
  changed = TrainJob(**{**stage.__dict__, "config": {"lr": 5.0},
                     "num_steps": 12})
  with pytest.raises(UserError, match="--allow_config_change"):
    fit(changed, place)
  state = fit(TrainJob(**{**changed.__dict__, "allow_config_change": True}),
              place)
  assert int(state.step) == 12


def test_disk_full_while_checkpointing(tmp_path, monkeypatch, toy_split, toy_job, one_device_mesh):
  place = placement.Jit(one_device_mesh)
  split = toy_split()
  stage = toy_job(tmp_path, streams.train_stream(split, split.labels, 8, 0))
  real = ocp.CheckpointManager.save
  def save(self, step, *a, **kw):
    if step >= 6:
      raise OSError(28, "No space left on device")
    return real(self, step, *a, **kw)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(UserError, match="No space left.*step 3"):
    fit(stage, place)
  monkeypatch.undo()
  assert int(fit(stage, place).step) == 10  # Resumes from step 3.


def test_verify_reports_each_broken_artifact(tmp_path, cli, run_mtkd):
  w = tmp_path / "w"
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.steps = c.student.steps = 10
  run_mtkd(c, w)
  from mtkd.stages import verify
  assert verify.verify_workdir(c, str(w)) == []
  caches = Layout(str(w))
  shard = pathlib.Path(caches.cache(CacheKey("digit", "train"))) / (
      "shard-00001-of-00002")
  raw = bytearray((shard / "logits_digit.npy").read_bytes())
  raw[-1] ^= 1
  (shard / "logits_digit.npy").write_bytes(bytes(raw))
  _corrupt_largest_file(str(w / "student" / "checkpoints" / "10"))
  (w / "results.json").write_text("{}")
  problems = verify.verify_workdir(c, str(w))
  assert len(problems) == 3, problems
  assert "logits_digit.npy fails its checksum" in problems[1]
  assert "student/checkpoints/10 is unusable" in problems[0]
  assert "results.json has tasks []" in problems[2]
  r = cli("--config=configs/quickstart.py:smoke", "--config.data.name=digits",
           f"--workdir={w}", "--verify")
  assert r.returncode == 1 and r.stdout.count("PROBLEM:") >= 3

  # A cache whose files are self-consistent (checksums rewritten) but whose
  # logits are not what the teacher computes: only re-running catches it.
  shard = pathlib.Path(caches.cache(CacheKey("parity", "train"))) / (
      "shard-00000-of-00002")
  logits = np.load(shard / "logits_parity.npy")
  logits[7] += np.array([4.0, -4.0], np.float32)  # One example changed.
  np.save(shard / "logits_parity.npy", logits)
  meta = json.loads((shard / "shard.json").read_text())
  meta["files"]["logits_parity.npy"] = hashlib.sha256(
      (shard / "logits_parity.npy").read_bytes()).hexdigest()
  (shard / "shard.json").write_text(json.dumps(meta))
  problems = verify.verify_workdir(c, str(w))
  assert any("parity" in p and "differs from re-running" in p
             for p in problems), problems


def _rewrite_with_checksum(shard, name, edit):
  """Edits one cached array and rewrites its checksum: self-consistent
  files that no longer hold what the teacher computes."""
  x = np.load(shard / name)
  edit(x)
  np.save(shard / name, x)
  digest = hashlib.sha256((shard / name).read_bytes()).hexdigest()
  meta = json.loads((shard / "shard.json").read_text())
  meta["files"][name] = digest
  (shard / "shard.json").write_text(json.dumps(meta))
  top = json.loads((shard.parent / "metadata.json").read_text())
  for s in top["shards"]:
    if s["name"] == shard.name:
      s["files"][name] = digest
  (shard.parent / "metadata.json").write_text(json.dumps(top))


def test_verify_rechecks_feature_caches(tmp_path, run_mtkd):
  """Feature runs cache under cache/<teacher>-feat_<layer>/: --verify
  finds them (through the workdir layout) and re-runs their teacher."""
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.model = dict(name="mlp", hidden=(32,))
  c.teacher.steps = c.student.steps = 6
  c.baseline = False
  c.student.stages = {"student": dict(objective="feature")}
  w = tmp_path / "w"
  run_mtkd(c, w)
  from mtkd.stages import verify
  assert verify.verify_workdir(c, str(w)) == []
  shard = pathlib.Path(Layout(str(w)).cache(CacheKey(
      "digit", "train", layer="representation"))) / "shard-00000-of-00002"
  _rewrite_with_checksum(shard, "logits_digit.npy",
                         lambda x: x.__setitem__(3, x[3] + 5 * np.eye(10)[0]))
  problems = verify.verify_workdir(c, str(w))
  assert len(problems) == 1 and "digit-feat_representation" in problems[0]
  assert "differs from re-running" in problems[0]


# ---------------------------------------------------- bad-input catalogue


def test_workdir_that_cannot_be_created(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  with pytest.raises(UserError, match="Cannot create the workdir"):
    experiment.run(c, str(blocker / "w"))
  assert blocker.read_text() == "x"


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.tasks.update({"colour": {"alpha": 0.5}}),
     r"config.tasks names \['colour'\]"),
    (lambda c: setattr(c.data, "num_labeled", 10**6), "exceeds"),
    (lambda c: c.tasks.update({"digit": {"weight": -1.0}}), "must be >= 0"),
    (lambda c: setattr(c, "nonfinite", "ignore"), "nonfinite"),
    (lambda c: setattr(c.parallel, "placement", "pjit"),
     "Unknown placement"),
])
def test_more_bad_configs(tmp_path, edit, match):
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  edit(c)
  with pytest.raises(UserError, match=match):
    experiment.run(c, str(tmp_path))


def test_distributed_needs_process_id_with_coordinator():
  import ml_collections
  with pytest.raises(UserError, match="process_id"):
    distributed.initialize(ml_collections.ConfigDict(dict(
        distributed=True, coordinator_address="127.0.0.1:1", num_processes=2,
        process_id=-1)))


def test_wrong_type_override_fails_cleanly(tmp_path, cli):
  r = cli("--config=configs/quickstart.py:smoke", f"--workdir={tmp_path}",
           "--config.student.steps=many")
  assert r.returncode != 0 and "steps" in r.stderr
  assert "Traceback" not in r.stderr


def test_no_pickle_on_load_paths():
  for root, _, files in os.walk(os.path.join(ROOT, "mtkd")):
    for f in files:
      if f.endswith(".py"):
        text = open(os.path.join(root, f)).read()
        assert "import pickle" not in text and "allow_pickle=True" not in text
        start = text.find("np.load(")
        while start >= 0:  # Each call, up to its closing parenthesis.
          depth, i = 0, start + len("np.load")
          while True:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
              break
          assert "allow_pickle=False" in text[start:i], (f, text[start:i])
          start = text.find("np.load(", i)


_KILL_MID_SAVE = r"""
import os, signal, sys
import orbax.checkpoint as ocp
real = ocp.CheckpointManager.save
def save(self, step, *a, **kw):
  out = real(self, step, *a, **kw)  # Async: the write is now in flight.
  if step == int(os.environ["KILL_AT_STEP"]) and "/student/" in str(
      self.directory):
    # Kill once the write's temporary directory exists: on a loaded machine
    # the background thread may not have created it yet.
    import time
    end = time.time() + 60
    while time.time() < end and not any(
        n.startswith(f"{step}.") for n in os.listdir(str(self.directory))):
      time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
  return out
ocp.CheckpointManager.save = save
from absl import app
from mtkd import main
app.run(main.main)
"""


def test_kill9_during_a_checkpoint_write(tmp_path, cli):
  """SIGKILL while Orbax is writing step 10 of the student: the partial
  write is ignored, training resumes from step 5, results are identical."""
  args = [*SMOKE, "--config.teacher.steps=20", "--config.student.steps=20"]
  ref = tmp_path / "ref"
  assert cli(*args, f"--workdir={ref}").returncode == 0
  w = tmp_path / "w"
  r = subprocess.run([sys.executable, "-c", _KILL_MID_SAVE, *args,
                      f"--workdir={w}"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu",
                              KILL_AT_STEP="10"))
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  names = os.listdir(w / "student" / "checkpoints")
  assert "10" not in names and "5" in names, names  # Step 10 never landed,
  assert any(n.startswith("10.") for n in names), names  # but had begun.
  r = cli(*args, f"--workdir={w}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "student: resuming at step 5/20" in r.stdout + r.stderr
  assert (w / "results.json").read_bytes() == (ref / "results.json").read_bytes()
  assert _final_fingerprint(w, "student") == _final_fingerprint(ref, "student")


def test_unfinished_checkpoint_write_is_moved_aside(tmp_path):
  """A kill between Orbax's rename and its metadata write leaves a step
  that can be neither restored nor ranked: the next run moves it aside."""
  ckpt = checkpoint.Checkpointer(str(tmp_path / "s" / "checkpoints"))
  state = {"w": np.arange(3.0)}
  for step in (5, 10):
    ckpt.save(step, state, {"config": {}}, force=True, loss=float(step))
  ckpt.wait()
  os.remove(tmp_path / "s" / "checkpoints" / "5" / "_CHECKPOINT_METADATA")
  ckpt.quarantine_unfinished()
  assert ckpt.all_steps() == [10]
  moved = os.listdir(tmp_path / "s" / "corrupt_checkpoints")
  assert len(moved) == 1 and moved[0].startswith("5-")
  ckpt.close()
