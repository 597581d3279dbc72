"""The TPU launch scripts' offline self-test (a fake gcloud, two fake
workers): usage, dry runs, and resume-until-done through a preemption."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_tpu_scripts_selftest():
  r = subprocess.run(["bash", os.path.join(ROOT, "tpu", "tests",
                                           "selftest.sh")],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
