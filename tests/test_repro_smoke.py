"""Every repro config runs in its smoke form, and each driver's report is
built from the resulting workdirs (tables and PNGs).

Runs are in-process and shrunk further as in tests/test_methods.py; the
workdirs are laid out as the drivers lay them out, so the drivers' report
code runs on real results. An experiment whose dataset is absent skips.
"""

import importlib
import json
import os
import shutil

import jax
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import repro_common as rc
from experiments import (
    repro_hinton,
    repro_multifashion,
    repro_other_data,
    repro_text,
)
from mtkd import experiment
from mtkd.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def shrink(c):
  """Fewer steps and one small teacher for all tasks: fewer compilations
  (the per-method behaviour is covered by tests/test_methods.py)."""
  if c.teacher.model.name == "patch_cnn":
    c.teacher.model = dict(name="mlp", hidden=(32,))
  if c.teacher.ensemble == 1 and not c.teacher.models:
    c.teacher.kind = "multi"
  c.student.steps, c.teacher.steps = 8, 8
  c.log_every, c.checkpoint_every = 8, 1000
  for s in c.student.stages.values():
    if s.get("steps", -1) > 0:
      s.steps = 4
  return c


def smoke_run(name, arg, root, sub, overrides):
  """Runs configs/<name>.py:<arg>,smoke into <root>/<sub>; teachers shared
  per seed and teacher setting, as the drivers share them."""
  c = rc.apply(rc.load_config(name, ",".join(filter(None, [arg, "smoke"]))),
               overrides)
  shrink(c)
  key = rc.teacher_key(name, ",".join(filter(None, [arg, "smoke"])),
                       overrides)
  c.teacher.workdir = os.path.join(root, os.path.dirname(sub), "teachers",
                                   key)
  try:
    return experiment.run(c, os.path.join(root, sub),
                          devices=jax.devices()[:1])  # Not about devices.
  except UserError as e:
    if "not found" in str(e) or "not installed" in str(e):
      pytest.skip(f"dataset absent: {e}")
    raise


def _png(path):
  with open(path, "rb") as f:
    return f.read(8) == PNG


def test_all_repro_configs_load():
  for m in repro_multifashion.METHODS:
    c = rc.load_config("repro_multifashion", f"method={m}")
    total = sum(s.get("steps", -1) if s.get("steps", -1) > 0 else
                c.student.steps for s in c.student.stages.values())
    assert total == 500, m  # One student budget for every strategy.
  for m in repro_other_data.METHODS:
    rc.load_config("repro_other_data", f"method={m}")
  for name in ("repro_hinton", "repro_text"):
    rc.load_config(name)


def test_hinton_smoke_and_report(tmp_path):
  root = str(tmp_path)
  base = repro_hinton.folder(repro_hinton.MAIN_SHIFT)
  res = {}
  for t in (20.0, 2.0):
    sub = f"{base}/T{t:g}_s0"
    if t != 20.0:  # The driver's re-use of the first T's baseline, which
      # mtkd must accept without --allow_config_change.
      repro_hinton.reuse_baseline(os.path.join(root, base, "T20_s0"),
                                  os.path.join(root, sub))
    res[t] = smoke_run("repro_hinton", f"shift={repro_hinton.MAIN_SHIFT}",
                       root, sub, {"seed": 0, "distill.temperature": t})
  for task in res[20.0]:  # KL@T differs by construction; the model not.
    for k in ("accuracy", "loss", "agreement", "kl_t1"):
      assert res[2.0][task]["baseline"][k] == res[20.0][task]["baseline"][k]
    assert res[2.0][task]["teacher"] == res[20.0][task]["teacher"]
  figs = tmp_path / "figs"
  repro_hinton.write_reports(root, str(figs))
  md = (figs / "hinton" / "report.md").read_text()
  assert "gap closed" in md and "| 20 | 1 |" in md and "| 2 | 1 |" in md
  assert _png(figs / "hinton" / "accuracy_vs_T.png")


def test_multifashion_drivers_smoke_and_report(tmp_path):
  root = str(tmp_path)
  smoke_run("repro_multifashion", "method=online_cached", root,
            "multifashion/online_cached_s0", {"seed": 0})
  figs = tmp_path / "figs"
  repro_multifashion.write_reports(root, str(figs))
  md = (figs / "strategies" / "report.md").read_text()
  assert "| online_cached | 1 |" in md
  assert "agreement" in (figs / "online_teacher" / "report.md").read_text()
  assert _png(figs / "strategies" / "accuracy_by_method.png")
  summary = json.load(open(
      tmp_path / "multifashion/online_cached_s0/summary.json"))
  assert "student" in summary["delta_m_vs_baseline"]
  assert not (figs / "label_budget").exists()  # No budget runs yet.
  # The label-budget report reads kd and kd_n<N> workdirs by name: copies
  # of the smoke run stand in for them (its plumbing, not its numbers).
  for name in ("kd_s0", "kd_n250_s0", "kd_nall_s0"):
    shutil.copytree(tmp_path / "multifashion/online_cached_s0",
                    tmp_path / "multifashion" / name)
  repro_multifashion.write_reports(root, str(figs))
  md = (figs / "label_budget" / "report.md").read_text()
  for n in (250, 1000, 60000):
    assert f"| {n} labels | 1 |" in md
  assert _png(figs / "label_budget" / "accuracy_vs_labels.png")


def test_text_smoke_and_report(tmp_path):
  root = str(tmp_path)
  smoke_run("repro_text", "", root, "text/rt_s0", {"seed": 0})
  figs = tmp_path / "figs"
  repro_text.write_reports(root, str(figs))
  md = (figs / "text" / "report.md").read_text()
  assert "| subjective | 1 |" in md and "| polarity | 1 |" in md


def test_other_data_smoke_and_report(tmp_path):
  root = str(tmp_path)
  smoke_run("repro_other_data", "method=task_level", root,
            "other_data/task_level_s0", {"seed": 0})
  figs = tmp_path / "figs"
  repro_other_data.write_reports(root, str(figs))
  md = (figs / "other_data" / "report.md").read_text()
  assert "| task_level | ink | mse | 1 |" in md


@pytest.mark.parametrize("name", ["repro_hinton", "repro_multifashion",
                                  "repro_text", "repro_other_data"])
def test_driver_report_only_on_empty_root(tmp_path, name):
  mod = importlib.import_module(f"experiments.{name}")
  argv = ["--root", str(tmp_path), "--figures", str(tmp_path / "f"),
          "--report_only"]
  if name == "repro_text":  # Its reference rules load the corpus.
    mod.write_reports(str(tmp_path), str(tmp_path / "f"))
  else:
    with flagsaver.flagsaver():  # The command line, parsed as absl does.
      assert mod.main(flags.FLAGS([name, *argv])) == 0
  assert not (tmp_path / "f").exists() or not any(
      p.name == "report.md" for p in (tmp_path / "f").rglob("*"))


def test_teacher_keys_survive_new_default_settings(monkeypatch):
  """A key hashes the teacher-side settings that differ from mtkd's
  defaults: a new default key (mtkd growing) keeps it, a changed teacher
  or data setting changes it."""
  from mtkd import defaults
  before = rc.teacher_key("quickstart", "", {"seed": 0})
  base = defaults.base_config

  def grown():
    c = base()
    c.data.some_new_option = 3
    c.teacher.another = dict(on=False)
    return c
  monkeypatch.setattr(defaults, "base_config", grown)
  assert rc.teacher_key("quickstart", "", {"seed": 0}) == before
  assert rc.teacher_key("quickstart", "", {"seed": 1}) != before
  assert rc.teacher_key("quickstart", "", {"seed": 0,
                                           "teacher.steps": 7}) != before
  assert rc.teacher_key("quickstart", "", {"seed": 0,
                                           "data.num_labeled": 5}) != before
