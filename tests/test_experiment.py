"""End-to-end smoke runs of the pipeline, in-process and through the CLI."""

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest

from configs import quickstart
from mtkd.data import builtin, datasets
from mtkd.errors import UserError
from mtkd.store import layout
from mtkd.store.layout import CacheKey, Layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke(**data):
  c = quickstart.get_config("smoke")
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, run_mtkd):
  w = str(tmp_path_factory.mktemp("digits") / "w")
  return w, run_mtkd(_smoke(name="digits"), w)


def test_pipeline_end_to_end_on_digits(digits_run, run_mtkd):
  w, results = digits_run
  assert set(results) == {"digit", "parity"}
  L = Layout(w)
  with open(L.results) as f:
    assert json.load(f) == results
  for task, chance in (("digit", 0.1), ("parity", 0.5)):
    r = results[task]
    assert set(r) == {"teacher", "baseline", "student"}
    for m in r.values():
      assert 0 <= m["accuracy"] <= 1 and m["loss"] > 0
    assert r["teacher"]["accuracy"] > chance + 0.2
    assert "agreement" in r["student"] and "kl" in r["student"]
  # The reported teacher accuracy is that of the cached test logits.
  test = datasets.build(_smoke(name="digits").data).test
  test_cache = L.cache(CacheKey("digit", "test"))
  meta = json.load(open(os.path.join(test_cache, "metadata.json")))
  logits = np.concatenate([np.load(os.path.join(
      test_cache, s["name"], "logits_digit.npy"))
                           for s in meta["shards"]])
  acc = np.mean(logits.argmax(-1) == test.labels["digit"])
  assert results["digit"]["teacher"]["accuracy"] == pytest.approx(acc)
  for name in ("config.json", "command.txt", "versions.json", "git.txt",
               "timings.json", "student/logs/metrics.jsonl"):
    assert os.path.isfile(os.path.join(w, name)), name
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(layout.logs(L.stage("student"))))

  # Re-running skips every stage (no new checkpoints) and gives equal results.
  ckpt = layout.checkpoints(L.stage("student"))
  before = {f: os.stat(os.path.join(ckpt, f)).st_mtime_ns
            for f in os.listdir(ckpt)}
  assert run_mtkd(_smoke(name="digits"), w) == results
  assert {f: os.stat(os.path.join(ckpt, f)).st_mtime_ns
          for f in os.listdir(ckpt)} == before

  # A result-changing config in the same workdir is refused, by key.
  c = _smoke(name="digits")
  c.student.optimizer.learning_rate = 0.5
  with pytest.raises(UserError, match="student.optimizer.learning_rate"):
    run_mtkd(c, w)
  # The KD temperature changes the student, not the labels-only baseline:
  # the baseline's checkpoint is accepted, and the student's refused.
  c = _smoke(name="digits")
  c.distill.temperature = 7.0
  with pytest.raises(UserError, match="stage 'student'.*distill.temperature"):
    run_mtkd(c, w)


def test_teachers_are_shared_through_teacher_workdir(tmp_path, digits_run, run_mtkd):
  """A run pointing teacher.workdir at another run's directory reuses its
  teachers and caches: where they live is not a teacher setting."""
  w, results = digits_run
  ckpt = layout.checkpoints(Layout(w).teacher("digit"))
  before = {f: os.stat(os.path.join(ckpt, f)).st_mtime_ns
            for f in os.listdir(ckpt)}
  c = _smoke(name="digits")
  c.teacher.workdir = w
  c.baseline = False
  got = run_mtkd(c, str(tmp_path / "w2"))
  assert {f: os.stat(os.path.join(ckpt, f)).st_mtime_ns
          for f in os.listdir(ckpt)} == before
  assert not Layout(str(tmp_path / "w2")).teachers()
  for task in results:
    assert got[task]["teacher"] == results[task]["teacher"]
    np.testing.assert_allclose(got[task]["student"]["accuracy"],
                               results[task]["student"]["accuracy"])


def test_task_without_labelled_test_rows_is_refused(tmp_path, monkeypatch, run_mtkd):
  real = datasets.build

  def build(cfg):
    ds = real(cfg)
    labels = dict(ds.test.labels, parity=np.full(len(ds.test), -1, np.int32))
    return dataclasses.replace(
        ds, test=dataclasses.replace(ds.test, labels=labels))

  monkeypatch.setattr(datasets, "build", build)
  with pytest.raises(UserError, match="'parity' has no labelled example"):
    run_mtkd(_smoke(name="digits"), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "teachers")


def test_settings_of_unused_plug_ins_do_not_block_a_resume(digits_run, run_mtkd):
  """Only the blocks a stage reads count: the distill run reads neither
  config.dkd nor config.anneal nor another weighting's block."""
  w, results = digits_run
  c = _smoke(name="digits")
  c.dkd.beta, c.anneal.fixed, c.weighting.dwa.period = 3.0, 0.1, 7
  assert run_mtkd(c, w) == results


def test_changed_cache_storage_builds_a_new_cache(tmp_path, digits_run, run_mtkd):
  """config.cache.dtype is part of a cache's identity: a new cache is built
  beside the old one (which stays intact), and the student, which read
  the old one, refuses to resume with the setting named."""
  w = str(tmp_path / "w")
  shutil.copytree(digits_run[0], w)
  old = os.path.join(Layout(w).cache(CacheKey("digit", "train")),
                     "metadata.json")
  before = os.stat(old).st_mtime_ns
  c = _smoke(name="digits")
  c.cache.dtype = "bfloat16"
  with pytest.raises(UserError, match=r"stage 'student'.*cache\.digit\.dtype"):
    run_mtkd(c, w)
  meta = json.load(open(os.path.join(w, "cache", "digit-bfloat16", "train",
                                     "metadata.json")))
  assert meta["dtype"] == "bfloat16"
  assert os.stat(old).st_mtime_ns == before


def test_top_k_cache_keeps_the_teachers_argmax(tmp_path, digits_run, run_mtkd):
  w, results = digits_run
  c = _smoke(name="digits")
  c.teacher.workdir, c.baseline, c.cache.top_k = w, False, 3
  got = run_mtkd(c, str(tmp_path / "w"))
  meta = json.load(open(os.path.join(w, "cache", "digit-top3", "test",
                                     "metadata.json")))
  assert meta["top_k"] == 3 and meta["top_k_names"] == ["digit"]
  for task in results:  # Top-k keeps each row's largest logit.
    assert got[task]["teacher"]["accuracy"] == (
        results[task]["teacher"]["accuracy"])
    assert math.isfinite(got[task]["student"]["loss"])


@pytest.mark.parametrize("layout", ["pmap", "fsdp"])
def test_pmap_and_fsdp_pipelines_match_jit(tmp_path, digits_run, layout, run_mtkd):
  c = _smoke(name="digits")
  if layout == "pmap":
    c.parallel.placement = "pmap"
  else:
    c.mesh = (("data", 2), ("fsdp", 4))
    c.parallel.fsdp_min_size = 1024
  got = run_mtkd(c, str(tmp_path), devices=8)
  for task, models in digits_run[1].items():
    for model, metrics in models.items():
      for k, v in metrics.items():
        np.testing.assert_allclose(got[task][model][k], v, rtol=1e-4,
                                   atol=1e-5, err_msg=f"{task}/{model}/{k}")


def test_multi_task_teacher_and_no_transfer_set(tmp_path, run_mtkd):
  c = _smoke(name="digits", transfer_set=False)
  c.teacher.kind = "multi"
  results = run_mtkd(c, str(tmp_path))
  assert os.listdir(tmp_path / "teachers") == ["multi"]
  assert results["digit"]["teacher"]["accuracy"] > 0.3


@pytest.mark.parametrize("edit,match", [
    (lambda c: setattr(c.distill, "temperature", 0.0), "must be > 0"),
    (lambda c: setattr(c.distill, "alpha", 1.5), r"in \[0, 1\]"),
    (lambda c: setattr(c.student, "batch_size", 60), "multiple of the 8"),
    (lambda c: setattr(c.data, "num_labeled", 0), "num_labeled"),
    (lambda c: setattr(c.teacher, "kind", "dual"), "Unknown teacher layout"),
    (lambda c: setattr(c.student.model, "name", "resnet"), "Unknown model"),
    # An objective's settings are checked with the plan, not at trace time.
    (lambda c: (c.student.stages.student.update(objective="anneal"),
                setattr(c.anneal, "schedule", "cosine")),
     "config.anneal.schedule is 'cosine'"),
    (lambda c: (c.student.stages.student.update(objective="feature"),
                setattr(c.feature, "loss", "l1")), "config.feature.loss"),
    (lambda c: (c.student.stages.student.update(objective="feature"),
                setattr(c.feature, "fusion", "sum")), "config.feature.fusion"),
    (lambda c: setattr(c.weighting, "name", "dwa") or setattr(
        c.weighting.dwa, "period", 0), "config.weighting.dwa.period"),
    (lambda c: setattr(c.cache, "dtype", "int8"), "cache dtype 'int8'"),
    (lambda c: setattr(c.cache, "top_k", -2), "top_k is -2"),
    (lambda c: setattr(c.cache, "tail", "bucket"), "top_k is 0"),
    (lambda c: c.cache.update(top_k=2, tail="bucket", temperatures=(1.0,)),
     r"temperatures=\[1.0\] has no entry.*'digit': 2.0.*Fix"),
    (lambda c: c.cache.update(top_k=2, tail="sampled",
                              temperatures=(1.0, 2.0)), "one temperature"),
])
def test_bad_config_fails_before_training(tmp_path, edit, match, run_mtkd):
  c = _smoke(name="digits")
  edit(c)
  with pytest.raises(UserError, match=match):
    run_mtkd(c, str(tmp_path / "w"), devices=8)
  assert not os.path.exists(tmp_path / "w" / "teachers")


def test_cli_npz_override_with_vector_inputs(tmp_path, cli):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(12, 3))
  def make(n):
    x = rng.normal(size=(n, 12)).astype(np.float32)
    z = x @ w
    return x, (z[:, 0] > 0).astype(int), np.digitize(z[:, 1], [-1, 0, 1])
  xtr, a_tr, b_tr = make(600)
  xte, a_te, b_te = make(200)
  path = tmp_path / "d.npz"
  np.savez(path, x_train=xtr, x_test=xte, y_train_sign=a_tr, y_test_sign=a_te,
           y_train_bin=b_tr, y_test_bin=b_te)
  r = cli("--config=configs/quickstart.py:smoke", f"--workdir={tmp_path/'w'}",
           "--config.data.name=npz", f"--config.data.path={path}",
           "--config.student.steps=30")
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.load(open(tmp_path / "w" / "results.json"))
  assert set(results) == {"sign", "bin"}
  assert results["sign"]["teacher"]["accuracy"] > 0.7
  cfg = json.load(open(tmp_path / "w" / "config.json"))
  assert cfg["student"]["steps"] == 30 and cfg["data"]["name"] == "npz"


def test_cli_user_error_is_one_clear_message(tmp_path, cli):
  r = cli("--config=configs/quickstart.py:smoke", f"--workdir={tmp_path}",
           "--config.data.name=digits", "--config.distill.temperature=-1")
  assert r.returncode == 2
  assert "mtkd: error: Temperature" in r.stderr
  assert "Traceback" not in r.stderr
  for typo, meant in (("student.stpes", "student.steps"),
                      ("tempreature", "distill.temperature")):
    r = cli("--config=configs/quickstart.py:smoke", f"--workdir={tmp_path}",
             f"--config.{typo}=3")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--config.{typo} is not a key" in r.stderr
    assert f"--config.{meant}" in r.stderr  # The suggestion.
  r = cli("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert "'configs/nope.py' does not exist" in r.stderr


@pytest.mark.skipif(not any(os.path.isdir(d) for d in
                            builtin.FASHION_MNIST_DIRS),
                    reason="Fashion-MNIST not installed (dataset-fashion-mnist)")
def test_quickstart_smoke_on_real_fashion_mnist(tmp_path, cli):
  r = cli("--config=configs/quickstart.py:smoke", f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert set(results) == {"left", "right"}
  assert "student" in r.stdout and "baseline" in r.stdout
  for task in results.values():
    assert task["teacher"]["accuracy"] > 0.5
