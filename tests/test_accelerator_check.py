"""experiments/accelerator_check.py in its CPU mode, as the GPU run would
call it (the CLI is what is tested): every section runs and reports."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run(
      [sys.executable, "-m", "experiments.accelerator_check", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_tiny_run_checks_and_measures_everything(tmp_path):
  r = _run("--tiny", f"--out={tmp_path}")
  assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
  report = json.load(open(tmp_path / "accelerator_check.json"))
  assert report["environment"]["platform"] == "cpu"
  assert report["environment"]["versions"]["jax"] != "not installed"
  checks = {c["check"]: c for c in report["correctness"]}
  assert len(checks) == 5 and all(c["ok"] for c in checks.values()), checks
  rows = report["steps"]["rows"]
  assert {(r["model"], r["dtype"], r["mode"]) for r in rows} == {
      ("quickstart_mlp", d, mode) for d in ("bfloat16", "float32")
      for mode in ("plain", "cached", "online")}
  for row in rows:
    assert row["examples_per_s"] > 0 and row["gflop_per_step"] > 0, row
    assert row["compile_s"] > 0 and row["mfu_percent"] is None  # CPU.
  # The online step runs the teacher too: more FLOPs than the cached one.
  flops = {(r["model"], r["dtype"], r["mode"]): r["gflop_per_step"]
           for r in rows}
  for d in ("bfloat16", "float32"):
    assert flops["quickstart_mlp", d, "online"] > flops[
        "quickstart_mlp", d, "cached"]
  loop = report["loop"]["rows"]
  assert sorted(r["prefetch_to_device"] for r in loop) == [0, 2]
  assert all(0 <= r["idle_percent"] <= 100 for r in loop)
  host = report["host_input"]["rows"]
  assert {(r["images"], r["threads"]) for r in host} == {
      (f"{s}x{s} {f}", t) for s, f in ((32, "PNG"), (224, "JPEG"))
      for t in (1, 2)}
  assert all(r["images_per_s"] > 0 for r in host)
  text = (tmp_path / "accelerator_check.md").read_text()
  assert "| quickstart_mlp |" in text and "idle_percent" in text
  assert "Host input" in text and "| 224x224 JPEG |" in text


def test_missing_dependency_is_named_before_anything_runs(tmp_path):
  r = _run("--tiny", f"--out={tmp_path}", "--require=no_such_module_xyz")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert "no_such_module_xyz" in r.stderr and "--no-index" in r.stderr
  assert not os.listdir(tmp_path)
