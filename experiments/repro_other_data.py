"""Task-level KD (digits_mixed) and transfer (Fashion-MNIST -> MNIST-10k).

Runs configs/repro_other_data.py per (method, seed), workdirs
`<root>/other_data/<method>_s<seed>`, teachers shared per seed and teacher
setting, then writes experiments/figures/other_data/report.md and plots.

From the repository root:

  python -m experiments.repro_other_data
  python -m experiments.repro_other_data --methods task_level --seeds 0,1,2
  python -m experiments.repro_other_data --report_only
"""

import os
import sys

from absl import app, flags

from experiments import report
from experiments import repro_common as rc

CONFIG = "repro_other_data"
METHODS = ("task_level", "transfer", "transfer_frozen", "transfer_kd")
# task -> main metric in results.json (digits_mixed / mnist10k).
METRICS = {"digit": "accuracy", "attributes": "accuracy", "ink": "mse"}

flags.adopt_module_key_flags(rc)  # --root, --seeds, ... in --help.


def run_all(root: str, methods, seed_list) -> None:
  base = os.path.join(root, "other_data")
  for seed in seed_list:
    for m in methods:
      arg = f"method={m}"
      over = {"seed": seed}
      over["teacher.workdir"] = os.path.join(
          base, "teachers", rc.teacher_key(CONFIG, arg, over))
      rc.run(CONFIG, arg, os.path.join(base, f"{m}_s{seed}"), over,
             os.path.join(base, "logs"))


def method_of(workdir: str) -> str:
  return os.path.basename(workdir.rstrip("/")).rsplit("_s", 1)[0]


def _table(recs, summ, methods, tasks) -> str:
  key = ["repro.method"]
  head = ["method", "task", "metric", "n", "teacher", "baseline", "student",
          "Δ student − baseline", "Δm vs baseline %", "student s"]
  body = []
  dm = report.table(summ, key, "vs_baseline")
  for m in methods:
    mrecs = [r for r in recs if r["config"]["repro"]["method"] == m]
    if not mrecs:
      continue
    for t in tasks:
      metric = METRICS[t]
      scale = 100.0 if metric == "accuracy" else 1.0
      rows = report.table(mrecs, key, metric)
      deltas = report.table(report.paired_deltas(mrecs), key, metric)
      sel = dict(task=t)
      n = rc.select(rows, model="student", **sel)
      if not n:
        continue
      times = [r for r in summ if r["task"] == "time"
               and r["config"]["repro"]["method"] == m]
      body.append([m, t, metric + (" %" if scale == 100 else ""),
                   str(n[0]["n"])] + [
          rc.cell(rc.select(rows, model=x, **sel), scale, digits=2 if
                  scale == 100 else 4)
          for x in ("teacher", "baseline", "student")] + [
          rc.cell(rc.select(deltas, **sel), scale, sign=True,
                  digits=2 if scale == 100 else 4),
          rc.cell(rc.select(dm, **{"repro.method": m}, model="student"), 1,
                  sign=True) if t == tasks[0] else "",
          (f"{sum(r['metrics'].get('student', 0) for r in times) / len(times):.0f}"
           if times and t == tasks[0] else "")])
  return report.markdown(head, body, right_from=3)


def write_reports(root: str, figures: str) -> None:
  wds = [os.path.join(root, "other_data", f"{m}_s[0-9]*")
         for m in METHODS]
  recs = rc.tag(report.collect(wds), "method", method_of)
  if not recs:
    print(f"no task-level / transfer results under {root}", file=sys.stderr)
    return
  summ = rc.tag(rc.summary_records(wds), "method", method_of)
  out = os.path.join(figures, "other_data")
  parts = [
      "Task-level KD on digits_mixed (sklearn digits, 1,797 images: 10-way "
      "`digit`, 3 binary `attributes` with sigmoid KD, `ink` regression "
      "with MSE-to-teacher KD; 200 labels). Lower is better for mse. Δ is "
      "paired by seed.",
      _table(recs, summ, ["task_level"], ("digit", "attributes", "ink")),
      "Transfer to MNIST-10k (8k train / 2k test rows, 500 labels): "
      "`transfer` fine-tunes a Fashion-MNIST-trained MLP trunk, "
      "`transfer_frozen` trains only the heads on it, `transfer_kd` starts "
      "the teacher from a Fashion-MNIST-trained CNN trunk and distils it "
      "(with the 7.5k unlabelled rows as transfer set). The baseline is "
      "the student from scratch on the 500 labels.",
      _table(recs, summ, ["transfer", "transfer_frozen", "transfer_kd"],
             ("digit",)),
  ]
  parts.append(rc.wall_time_line(wds))
  report.plot_metric_vs([r for r in recs if r["task"] == "digit"],
                        "repro.method",
                        os.path.join(out, "digit_accuracy_by_method.png"))
  rc.write_report(out, "Task-level KD and transfer (other data)", parts)


def main(argv) -> int:
  return rc.driver_main(METHODS, run_all, write_reports, argv)


if __name__ == "__main__":
  app.run(main)
