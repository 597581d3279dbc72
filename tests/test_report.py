"""experiments/report.py on fake workdirs: pooled statistics, logs, plots."""

import json
import math
import os

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import report

TEMPS = (1.0, 2.0, 4.0)
SEEDS = (0, 1, 2)
PNG = b"\x89PNG\r\n\x1a\n"


def _acc(model, t, seed, task):
  """Deterministic fake accuracies, different per (model, T, seed, task)."""
  base = {"teacher": 0.9, "baseline": 0.7, "student": 0.75}[model]
  return base + 0.01 * t + 0.003 * seed ** 2 + (0.05 if task == "b" else 0)


def _workdir(root, t, seed, extra=None, steps=(100, 200, 300),
             results=True):
  wd = root / f"T{t}_s{seed}"
  wd.mkdir()
  config = {"seed": seed, "distill": {"temperature": t, "alpha": 0.5},
            "data": {"num_labeled": 1000}, "student": {"model": {
                "name": "mlp", "hidden": [128]}}}
  config.update(extra or {})
  (wd / "config.json").write_text(json.dumps(config))
  if results:
    res = {task: {m: {"accuracy": _acc(m, t, seed, task), "loss": 0.5,
                      "count": 100} for m in ("teacher", "baseline",
                                               "student")}
           for task in ("a", "b")}
    for task in res:
      res[task]["student"].update(agreement=0.9 - 0.01 * seed, kl=0.1)
    (wd / "results.json").write_text(json.dumps(res))
  for stage, offset in (("baseline", 0.0), ("student", 1.0)):
    logs = wd / stage / "logs"
    logs.mkdir(parents=True)
    lines = [{"step": s, "train/loss": offset + seed + s / 100}
             for s in steps]
    # Resumed from step 100, a stage re-logs 200: the later line must win.
    lines.insert(1, {"step": 200, "train/loss": 99.0})
    (logs / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines))
  return wd


@pytest.fixture
def grid(tmp_path):
  for t in TEMPS:
    for s in SEEDS:
      _workdir(tmp_path, t, s)
  return tmp_path


def test_table_mean_std_over_seeds(grid):
  records = report.collect([str(grid / "*")])
  assert len(records) == 9 * 2 * 3
  rows = report.table(records, ["distill.temperature"], "accuracy")
  assert len(rows) == 3 * 2 * 3
  assert [r["group"]["distill.temperature"] for r in rows[::6]] == list(TEMPS)
  assert [r["model"] for r in rows[:3]] == ["teacher", "baseline", "student"]
  for r in rows:
    t = r["group"]["distill.temperature"]
    ref = np.array([_acc(r["model"], t, s, r["task"]) for s in SEEDS])
    assert r["n"] == 3 and not r["differs"]
    np.testing.assert_allclose(r["mean"], ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(r["std"], ref.std(ddof=1), rtol=1e-12)
  md = report.to_markdown(rows, "accuracy", ["distill.temperature"])
  r = rows[2]
  assert (f"| 1.0 | a | student | {100 * r['mean']:.2f} ± "
          f"{100 * r['std']:.2f} | 3 |") in md
  # Agreement only exists for the student.
  agree = report.table(records, [], "agreement")
  assert {r["model"] for r in agree} == {"student"}
  ref = np.array([0.9 - 0.01 * s for s in SEEDS for _ in TEMPS])
  np.testing.assert_allclose(agree[0]["std"], ref.std(ddof=1))


def test_paired_deltas(grid):
  records = report.collect([str(grid) + "/T2.0_s*"])
  deltas = report.paired_deltas(records)
  assert len(deltas) == 3 * 2
  rows = report.table(deltas, [], "accuracy")
  assert [r["model"] for r in rows] == ["student-baseline"] * 2
  np.testing.assert_allclose(rows[0]["mean"], 0.05)
  np.testing.assert_allclose(rows[0]["std"], 0.0, atol=1e-12)
  assert "| a | student-baseline | +5.00 ± 0.00 | 3 |" in report.to_markdown(
      rows, "accuracy-delta")


def test_single_run_and_pooling_warning(tmp_path):
  _workdir(tmp_path, 2.0, 0)
  _workdir(tmp_path, 2.0, 1, extra={"data": {"num_labeled": 500}})
  _workdir(tmp_path, 4.0, 0)
  _workdir(tmp_path, 8.0, 0, results=False)  # Unfinished: skipped.
  records = report.collect([str(tmp_path / "*")])
  assert {r["workdir"] for r in records} == {
      str(tmp_path / d) for d in ("T2.0_s0", "T2.0_s1", "T4.0_s0")}
  rows = report.table(records, ["distill.temperature"], "accuracy")
  assert rows[0]["differs"] == ["data.num_labeled"]
  single = [r for r in rows if r["group"]["distill.temperature"] == 4.0]
  assert all(r["n"] == 1 and math.isnan(r["std"]) for r in single)
  md = report.to_markdown(rows, "accuracy", ["distill.temperature"])
  assert "Pooled runs also differ in: data.num_labeled." in md
  assert f"| 4.0 | a | teacher | {100 * _acc('teacher', 4, 0, 'a'):.2f} | 1 |" \
      in md


def test_learning_curves_dedupe_and_mean(grid):
  wds = [str(grid / f"T2.0_s{s}") for s in SEEDS]
  assert report.stages(wds[0]) == ["baseline", "student"]
  assert report.read_log(os.path.join(wds[0], "student"))[200] == {
      "train/loss": 3.0}
  curves = report.learning_curves(wds)
  assert [c["stage"] for c in curves] == ["baseline", "student"]
  for c, offset in zip(curves, (0.0, 1.0), strict=True):
    assert c["steps"] == [100, 200, 300] and c["n"] == 3
    ref = np.array([[offset + s + step / 100 for step in c["steps"]]
                    for s in SEEDS])
    np.testing.assert_allclose(c["mean"], ref.mean(0))
    np.testing.assert_allclose(c["std"], ref.std(0, ddof=1))


def _is_png(path):
  with open(path, "rb") as f:
    return os.path.getsize(path) > 1000 and f.read(8) == PNG


def test_plots(grid, tmp_path):
  pytest.importorskip("matplotlib")
  out = tmp_path / "figs"
  records = report.collect([str(grid / "*")])
  p = report.plot_metric_vs(records, "distill.temperature",
                            str(out / "acc_vs_t.png"))
  assert _is_png(p)
  assert _is_png(report.plot_metric_vs(records, "distill.temperature",
                                       str(out / "log_t.png"), xscale="log"))
  p = report.plot_learning_curves([str(grid / "*")], str(out / "lc.png"),
                                  group_by=["distill.temperature"])
  assert _is_png(p)
  # Non-numeric x and missing keys.
  assert _is_png(report.plot_metric_vs(records, "student.model.name",
                                       str(out / "by_name.png")))
  assert report.plot_metric_vs(records, "no.such.key",
                               str(out / "none.png")) is None
  assert report.plot_learning_curves([str(grid / "*")], str(out / "x.png"),
                                     key="no/such/key") is None


def cli(argv: list[str]) -> int:
  """`python -m experiments.report ARGV`'s exit status, in this process
  (its flags are defined once, as running the module defines them)."""
  if report._FLAGS is None:
    report._FLAGS = report.define_flags()
  with flagsaver.flagsaver():  # Each call sees only its own flags.
    return report.main(flags.FLAGS(["report", *argv]))


def test_cli(grid, tmp_path, capsys):
  pytest.importorskip("matplotlib")
  out = tmp_path / "out"
  assert cli(["--workdirs", str(grid / "*"), "--group_by",
              "distill.temperature", "--out", str(out)]) == 0
  md = (out / "report.md").read_text()
  assert md in capsys.readouterr().out
  assert "## accuracy" in md and "## Δ accuracy" in md and "## kl" in md
  assert _is_png(out / "learning_curves.png")
  assert _is_png(out / "accuracy_vs_distill.temperature.png")
  assert cli(["--workdirs", str(tmp_path / "nothing*"), "--out",
              str(out)]) == 1
