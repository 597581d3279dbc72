"""Text multi-task KD on Rotten Tomatoes over 3 seeds.

Runs configs/repro_text.py per seed (`<root>/text/rt_s<seed>`, teachers
shared per seed under `<root>/text/teachers/`), then writes
experiments/figures/text/: report.md (per-task accuracy of teachers,
labels-only baseline and distilled student, paired deltas, Delta_m, wall
time, and two reference classifiers that need no learning: the majority
class and a length threshold for `subjective`), accuracy_by_task.png and
learning curves.

From the repository root:

  python -m experiments.repro_text
  python -m experiments.repro_text --report_only
"""

import os
import sys

import numpy as np
from absl import app, flags

from experiments import report
from experiments import repro_common as rc

CONFIG = "repro_text"
TASKS = ("subjective", "polarity")

flags.adopt_module_key_flags(rc)  # --root, --seeds, ... in --help.


def run_all(root: str, seed_list, arg: str = "") -> None:
  base = os.path.join(root, "text")
  for seed in seed_list:
    over = {"seed": seed}
    over["teacher.workdir"] = os.path.join(
        base, "teachers", rc.teacher_key(CONFIG, arg, over))
    rc.run(CONFIG, arg, os.path.join(base, f"rt_s{seed}"), over,
           os.path.join(base, "logs"))


def reference_classifiers(data_cfg) -> dict[str, float]:
  """Test accuracy of rules fitted on the train split: the majority class
  per task, and for `subjective` the best threshold on the number of
  tokens (plot synopses are long and fill max_len)."""
  from mtkd.data import datasets  # Loads the corpus (about 10 s).
  ds = datasets.build(data_cfg)
  out = {}
  for t in TASKS:
    ytr, yte = ds.train.labels[t], ds.test.labels[t]
    major = np.bincount(ytr[ytr >= 0]).argmax()
    out[f"{t} majority"] = float(np.mean(yte[yte >= 0] == major))
  ltr = (ds.train.x != 0).sum(1)
  lte = (ds.test.x != 0).sum(1)
  ytr, yte = ds.train.labels["subjective"], ds.test.labels["subjective"]
  best = max(range(1, ds.train.x.shape[1] + 1),
             key=lambda k: np.mean((ltr < k) == (ytr == 1)))
  out["subjective length rule"] = float(np.mean((lte < best) == (yte == 1)))
  out["length threshold"] = best
  out["plot rows filling max_len"] = float(np.mean(lte[yte == 0] ==
                                                   ds.test.x.shape[1]))
  return out


def write_reports(root: str, figures: str, data_cfg=None) -> None:
  wds = [os.path.join(root, "text", "rt_s*")]
  recs = report.collect(wds)
  if not recs:
    print(f"no text results under {root}", file=sys.stderr)
    return
  out = os.path.join(figures, "text")
  acc = report.table(recs, [], "accuracy")
  agree = report.table(recs, [], "agreement")
  deltas = report.table(report.paired_deltas(recs), [], "accuracy")
  summ = rc.summary_records(wds)
  dm = report.table(summ, [], "vs_baseline")
  dmt = report.table(summ, [], "vs_teacher")
  head = ["task", "n", "teacher %", "baseline %", "student %",
          "Δ student − baseline (pts)", "student agreement %"]
  body = []
  for t in TASKS:
    n = rc.select(acc, task=t, model="student")
    body.append([t, str(n[0]["n"]) if n else "0"] + [
        rc.cell(rc.select(acc, task=t, model=m))
        for m in ("teacher", "baseline", "student")] + [
        rc.cell(rc.select(deltas, task=t), sign=True),
        rc.cell(rc.select(agree, task=t, model="student"))])
  times = [r for r in summ if r["task"] == "time"]
  tmean = {k: np.mean([r["metrics"].get(k, 0) for r in times])
           for k in ("teachers", "baseline", "student", "total")}
  parts = [
      "Test split: 3,033 rows of held-out movies (polarity: the 2,822 "
      "review rows). Mean ± std over seeds; Δ paired by seed.",
      report.markdown(head, body),
      f"Δm vs baseline: {rc.cell(rc.select(dm, model='student'), 1, True)} "
      f"%; Δm vs teacher: {rc.cell(rc.select(dmt, model='student'), 1, True)}"
      " %.",
      "Wall time per run (s, mean; teachers only in the run that trained "
      "them): " + ", ".join(f"{k} {v:.0f}" for k, v in tmean.items()),
  ]
  parts.append(rc.wall_time_line(wds))
  if data_cfg is not None:
    ref = reference_classifiers(data_cfg)
    parts.append(
        "Rules without learning (fitted on train, scored on test): "
        f"majority class subjective {100 * ref['subjective majority']:.2f} %,"
        f" polarity {100 * ref['polarity majority']:.2f} %; `subjective` "
        f"from length alone (< {ref['length threshold']} tokens = review): "
        f"{100 * ref['subjective length rule']:.2f} % "
        f"({100 * ref['plot rows filling max_len']:.1f} % of test plot "
        "synopses fill all max_len slots).")
  report.plot_metric_vs(recs, "data.name", os.path.join(
      out, "accuracy_by_task.png"))
  report.plot_learning_curves(wds, os.path.join(out, "learning_curves.png"))
  rc.write_report(out, "Text multi-task KD on Rotten Tomatoes", parts)


def main(argv) -> int:
  a = rc.args(argv)
  if not a.report_only:
    run_all(a.root, a.seeds)
  write_reports(a.root, a.figures, rc.load_config(CONFIG).data)
  return 0


if __name__ == "__main__":
  app.run(main)
