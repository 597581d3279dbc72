"""experiments/repro_cifar_pairs.py: its runs, in configs/cifar_kd.py's
smoke form (generated 32x32 images, tiny CIFAR ResNets) in-process with a
few steps, laid out and shared as the driver does (one teacher per seed,
the kd run's baseline copied into fitnets, dkd without one), and the
driver's table built from them."""

import json
import os

import jax
from absl import flags
from absl.testing import flagsaver

from experiments import repro_cifar_pairs as rcp
from experiments import repro_common as rc
from mtkd import experiment
from mtkd.store.layout import Layout

SEEDS = (0, 1)


def smoke_runner(name, arg, workdir, overrides, log_dir):
  """The driver's runner, in-process: the smoke config with the driver's
  overrides, shrunk to a few steps."""
  del log_dir
  # The smoke data's tasks are 'label' and 'coarse', not Fashion's 'class'.
  overrides = {k: v for k, v in overrides.items() if k != "tasks"}
  c = rc.apply(rc.load_config(name, arg + ",smoke"), overrides)
  c.teacher.steps, c.student.steps = 4, 4
  c.log_every, c.checkpoint_every = 4, 1000
  c.data.max_train, c.data.max_test, c.data.val_size = 384, 128, 128
  c.eval.every = 0.5  # Epochs of 256 rows: at step 2 and at the end.
  experiment.run(c, workdir, devices=jax.devices()[:1])
  return True


def test_budget_steps_and_milestones():
  b = rcp.budget(20000, 3.0, 6.0, 0.5)
  assert b["train_rows"] == 15000 and b["tag"] == "e3_t6_n20000"
  assert b["steps"] == {"teacher": round(6 * 15000 / 64),
                        "student": round(3 * 15000 / 64)}
  o = b["overrides"]
  assert o["student.optimizer.schedule.boundaries"] == (1.875, 2.25, 2.625)
  assert o["teacher.optimizer.schedule.boundaries"] == (3.75, 4.5, 5.25)
  dkd = rcp.overrides(b, "dkd", 1)
  assert dkd["baseline"] is False and dkd["seed"] == 1
  assert dkd["dkd.warmup_steps"] == round(20 / 240 * 3 * 15000 / 64)
  assert "baseline" not in rcp.overrides(b, "kd", 1)


def test_cifar_pairs_smoke_and_report(tmp_path):
  root = str(tmp_path)
  b = dict(rcp.budget(0, 1.0, None, 0.5), overrides={},
           dkd_warmup_steps=2)
  base = rcp.group_dir(root, b)
  for seed in SEEDS:
    rcp.run_seed(b, base, rcp.METHODS, seed, runner=smoke_runner)
  teachers = os.listdir(os.path.join(base, "teachers"))
  assert len(teachers) == len(SEEDS)  # One teacher per seed.
  res = {(m, s): json.load(open(Layout(os.path.join(
      base, f"{m}_s{s}")).results)) for m in rcp.METHODS for s in SEEDS}
  for s in SEEDS:  # fitnets restored kd's baseline; dkd trained none.
    kd, fit = res[("kd", s)], res[("fitnets", s)]
    for task in kd:
      assert fit[task]["baseline"] == kd[task]["baseline"]
      assert "baseline" not in res[("dkd", s)][task]
  rcp.write_budget(base, b, "python -m experiments.repro_cifar_pairs")
  figs = tmp_path / "figs"
  rcp.write_reports(root, str(figs))
  md = (figs / "cifar_pairs" / "report.md").read_text()
  assert "Command: `python -m experiments.repro_cifar_pairs`" in md
  assert "| teacher (resnet56) | 2 |" in md
  assert "| baseline (resnet20 alone) | 2 |" in md
  for m in rcp.METHODS:
    line = next(x for x in md.splitlines() if x.startswith(f"| {m} | 2 |"))
    cells = line.strip("|").split("|")
    assert all("±" in c for c in cells[2:6]), line  # 2 seeds: mean ± std.
    assert len(cells[6].split("/")) == 2, line


def test_report_only_on_empty_root(tmp_path):
  argv = ["repro_cifar_pairs", "--root", str(tmp_path), "--figures",
          str(tmp_path / "f"), "--report_only"]
  with flagsaver.flagsaver():
    assert rcp.main(flags.FLAGS(argv)) == 0
  assert not (tmp_path / "f").exists()
