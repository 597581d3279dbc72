"""MultiFashion reproductions: BAM, strategy comparison, cached vs online.

Runs configs/repro_multifashion.py for every (method, seed), one workdir
each (`<root>/multifashion/<method>_s<seed>`), teachers shared per seed and
teacher setting (`<root>/multifashion/teachers/<kind>-<hash>_s<seed>`), then
writes four reports from the workdirs:

- experiments/figures/bam/: labels only (baseline) vs KD vs teacher
  annealing vs a fixed 0.5 mix (Clark et al. 2019).
- experiments/figures/strategies/: every method, per-task accuracy, Delta_m
  vs the baseline and wall time.
- experiments/figures/online_teacher/: no augmentation (kd) vs shifted views
  with the cached (un-augmented) teacher vs the online teacher on the same
  views (Beyer et al. 2022).
- experiments/figures/label_budget/: kd and its baseline at 250, 1000, 4000
  and all 60000 labelled pairs (`--methods label_budget`).

From the repository root:

  python -m experiments.repro_multifashion                 # all, seeds 0-2
  python -m experiments.repro_multifashion --methods kd,bam --seeds 0
  python -m experiments.repro_multifashion --report_only
"""

import os
import sys

from absl import app, flags

from experiments import report
from experiments import repro_common as rc

CONFIG = "repro_multifashion"
BAM = ("kd", "bam", "bam_fixed")
ONLINE = ("kd", "online_cached", "online_teacher")
# Every method, in table order (BAM's and the online study's first).
METHODS = ("kd", "bam", "bam_fixed", "online_cached", "online_teacher",
           "kd_feature", "kd_cascade", "dkd", "dml", "dml_labelled",
           "uncertainty", "dwa", "dwa_p50",
           "gradnorm", "pcgrad", "kd_multi_teacher", "kd_shared_rep",
           "kd_cross_task")


# Label budget study: `kd` at these data.num_labeled (-1: all 60k) besides
# the 1000 of the kd runs, same teachers (they train on every label).
BUDGETS = (250, 4000, -1)
# What the driver runs by default: every method, then the budget study.
EXPERIMENTS = METHODS + ("label_budget",)

flags.adopt_module_key_flags(rc)  # --root, --seeds, ... in --help.


def budget_name(n: int) -> str:
  return f"kd_n{n if n > 0 else 'all'}"


def labels_of(workdir: str) -> int:
  """Labelled pairs of a kd or label-budget workdir (all = 60000)."""
  name = method_of(workdir)
  if name == "kd":
    return 1000
  n = name[len("kd_n"):]
  return 60000 if n == "all" else int(n)


def run_all(root: str, methods, seed_list) -> None:
  base = os.path.join(root, "multifashion")
  for seed in seed_list:
    for m in methods:
      if m == "label_budget":
        # kd's teacher folder: num_labeled does not change the teachers.
        tdir = os.path.join(base, "teachers", rc.teacher_key(
            CONFIG, "method=kd", {"seed": seed}))
        for n in BUDGETS:
          rc.run(CONFIG, "method=kd",
                 os.path.join(base, f"{budget_name(n)}_s{seed}"),
                 {"seed": seed, "data.num_labeled": n,
                  "teacher.workdir": tdir}, os.path.join(base, "logs"))
        continue
      arg = f"method={m}"
      over = {"seed": seed}
      tdir = os.path.join(base, "teachers", rc.teacher_key(CONFIG, arg, over))
      over["teacher.workdir"] = tdir
      rc.run(CONFIG, arg, os.path.join(base, f"{m}_s{seed}"), over,
             os.path.join(base, "logs"))


def method_of(workdir: str) -> str:
  return os.path.basename(workdir.rstrip("/")).rsplit("_s", 1)[0]


def records(root: str, methods) -> tuple[list[dict], list[dict]]:
  """(results records, summary records) tagged with repro.method."""
  wds = [os.path.join(root, "multifashion", f"{m}_s[0-9]*")
         for m in methods]
  recs = rc.tag(report.collect(wds), "method", method_of)
  summ = rc.tag(rc.summary_records(wds), "method", method_of)
  return recs, summ


def _stage_models(recs, method):
  return list(dict.fromkeys(
      r["model"] for r in recs if r["config"]["repro"]["method"] == method
      and r["model"] not in ("teacher", "baseline")))


def strategy_table(recs, summ, methods, extra_metric: str = "",
                   compact: bool = False) -> str:
  """method -> per-task accuracy (teacher, baseline, the method's final
  stage), paired Δ vs baseline, Δm vs baseline, wall times. `compact`:
  only the final stage's accuracy and Δ, Δm vs baseline and its time."""
  key = ["repro.method"]
  acc = report.table(recs, key, "accuracy")
  dm = report.table(summ, key, "vs_baseline")
  tasks = list(dict.fromkeys(r["task"] for r in recs))
  head = ["method", "n"]
  for t in tasks:
    head += ([] if compact else [f"{t} baseline %"]) + [
        f"{t} student %", f"{t} Δ pts"]
  head += ["Δm vs baseline %"] + ([] if compact else ["Δm vs teacher %"])
  if extra_metric:
    head += [f"{t} {extra_metric} %" for t in tasks]
  head += ([] if compact else ["baseline s"]) + ["student s"]
  body = []
  for m in methods:
    stages = _stage_models(recs, m)
    if not stages:
      continue
    final = stages[-1]
    deltas = report.paired_deltas(
        [r for r in recs if r["config"]["repro"]["method"] == m], final)
    dtab = report.table(deltas, key, "accuracy")
    n = rc.select(acc, **{"repro.method": m, "model": final})
    row = [m if len(stages) == 1 else f"{m} ({final})",
           str(n[0]["n"]) if n else "0"]
    for t in tasks:
      sel = dict(**{"repro.method": m}, task=t)
      row += ([] if compact else [
          rc.cell(rc.select(acc, model="baseline", **sel))]) + [
              rc.cell(rc.select(acc, model=final, **sel)),
              rc.cell(rc.select(dtab, **sel), sign=True)]
    row += [rc.cell(rc.select(dm, **{"repro.method": m}, model=final),
                    scale=1, sign=True)]
    dt = report.table(summ, key, "vs_teacher")
    if not compact:
      row += [rc.cell(rc.select(dt, **{"repro.method": m}, model=final),
                      scale=1, sign=True)]
    if extra_metric:
      ex = report.table(recs, key, extra_metric)
      row += [rc.cell(rc.select(ex, **{"repro.method": m}, model=final,
                                task=t)) for t in tasks]
    times = [r for r in summ if r["task"] == "time"
             and r["config"]["repro"]["method"] == m]
    row += ([] if compact else [_time(times, ["baseline"])]) + [
        _time(times, stages)]
    body.append(row)
  return report.markdown(head, body, right_from=1)


def baseline_line(recs) -> str:
  rows = report.table([r for r in recs if r["config"]["repro"]["method"] ==
                       "kd"], [], "accuracy")
  return ", ".join(f"{r['task']} {rc.cell([r])} % (n={r['n']})"
                   for r in rows if r["model"] == "baseline") + "."


def paired_vs(recs, methods, ref: str, metric: str = "accuracy") -> str:
  """Final-stage `metric` of each method minus `ref`'s, paired by seed
  (same teachers, labelled subset and initialisation), mean ± std (n)."""
  final = {}
  for r in recs:
    m = r["config"]["repro"]["method"]
    if r["model"] not in ("teacher", "baseline") and metric in r["metrics"]:
      final[(m, r["config"]["seed"], r["task"])] = r["metrics"][metric]
  tasks = list(dict.fromkeys(r["task"] for r in recs))
  body = []
  for m in methods:
    row, n = [f"{m} − {ref}"], 0
    for t in tasks:
      d = [v - final[(ref, seed, t)] for (mm, seed, tt), v in final.items()
           if mm == m and tt == t and (ref, seed, t) in final]
      n = max(n, len(d))
      row.append(rc.cell([dict(mean=sum(d) / len(d), n=len(d), std=(
          sum((x - sum(d) / len(d)) ** 2 for x in d) / (len(d) - 1)) ** 0.5
          if len(d) > 1 else 0.0)], sign=True) if d else "–")
    body.append(row[:1] + [str(n)] + row[1:])
  return report.markdown(
      ["paired by seed", "n"] + [f"{t} Δ pts" for t in tasks], body)


def _time(time_records, keys) -> str:
  vals = [sum(r["metrics"].get(k, 0.0) for k in keys) for r in time_records]
  if not vals:
    return "–"
  mean = sum(vals) / len(vals)
  return f"{mean:.0f}"


def teacher_table(recs) -> str:
  """Teacher accuracy per teacher setting: one record per teacher set
  (teacher.workdir) and task, pooled over the seeds."""
  seen, one = set(), []
  for r in recs:
    k = (report.get_path(r["config"], "teacher.workdir"), r["task"])
    if r["model"] == "teacher" and k not in seen:
      seen.add(k)
      one.append(r)
  key = ["teacher.kind", "teacher.ensemble"]
  users: dict[tuple, set] = {}
  for r in recs:
    g = tuple(report.get_path(r["config"], k) for k in key)
    users.setdefault(g, set()).add(r["config"]["repro"]["method"])
  rows = report.table(one, key, "accuracy")
  body = []
  for r in rows:
    g = tuple(r["group"][k] for k in key)
    used = sorted(users.get(g, ()))
    body.append([f"{g[0]} ×{g[1]}", ", ".join(used) if len(used) <= 3 else
                 f"{len(used)} methods", r["task"], rc.cell([r]),
                 str(r["n"])])
  return report.markdown(["teachers", "used by", "task", "accuracy %",
                          "n (seeds)"], body, right_from=3)


def write_reports(root: str, figures: str) -> None:
  recs, summ = records(root, METHODS)
  if not recs:
    print(f"no MultiFashion results under {root}", file=sys.stderr)
    return
  wd = lambda ms: [  # noqa: E731
      os.path.join(root, "multifashion", f"{m}_s[0-9]*") for m in ms]
  # BAM.
  out = os.path.join(figures, "bam")
  brecs = [r for r in recs if r["config"]["repro"]["method"] in BAM]
  parts = ["Per-task test accuracy (10k pairs), mean ± std over seeds; "
           "Δ pts: paired by seed against the run's own labels-only "
           "baseline; Δm: summary.json (LibMTL Δm, %).",
           strategy_table(brecs, summ, BAM),
           "Student accuracy against the KD run of the same seed:",
           paired_vs(brecs, BAM[1:], "kd")]
  report.plot_metric_vs(brecs, "repro.method",
                        os.path.join(out, "accuracy_by_variant.png"))
  report.plot_learning_curves(wd(BAM), os.path.join(out, "train_loss.png"),
                              group_by=["repro.method"])
  rc.write_report(out, "BAM-style per-task teachers -> multi-task student",
                  parts)
  # Strategies.
  out = os.path.join(figures, "strategies")
  parts = ["Per-task test accuracy (10k pairs), mean ± std over seeds (n "
           "runs); Δ pts paired by seed against the run's own baseline; "
           "Δm from summary.json; times are seconds per run (mean), from "
           "timings.json (teachers excluded: trained once per seed and "
           "shared).",
           strategy_table(recs, summ, METHODS, compact=True),
           "The labels-only baseline of the runs without augmentation or a "
           "weighting method (kd's runs; every run reports its own):",
           baseline_line(recs),
           "All columns:",
           strategy_table(recs, summ, METHODS),
           "Teachers (each run evaluates its teachers on the test split):",
           teacher_table(recs), rc.wall_time_line(wd(METHODS))]
  report.plot_metric_vs(recs, "repro.method",
                        os.path.join(out, "accuracy_by_method.png"),
                        models=["baseline", "student", "finetune"])
  rc.write_report(out, "Strategy comparison on MultiFashion", parts)
  budget_report(root, figures)
  # Online vs cached teacher.
  out = os.path.join(figures, "online_teacher")
  orecs = [r for r in recs if r["config"]["repro"]["method"] in ONLINE]
  parts = ["kd: no augmentation, cached teacher; online_cached: student "
           "(and its baseline) see random shifts of up to 2 px, KD target = "
           "cached logits of the un-augmented pair; online_teacher: the "
           "teachers run inside the step on the same shifted view. Accuracy "
           "and agreement (student argmax = teacher argmax, test split) in %.",
           strategy_table(orecs, summ, ONLINE, extra_metric="agreement"),
           "Online against cached teacher (same augmented baseline), and "
           "each against plain KD without augmentation, paired by seed:",
           paired_vs(orecs, ["online_teacher"], "online_cached") + "\n" +
           paired_vs(orecs, ["online_cached", "online_teacher"],
                     "kd").split("\n", 2)[2],
           "Agreement, same pairing:",
           paired_vs(orecs, ["online_teacher"], "online_cached",
                     "agreement")]
  report.plot_metric_vs(orecs, "repro.method",
                        os.path.join(out, "accuracy_by_variant.png"))
  report.plot_metric_vs(orecs, "repro.method",
                        os.path.join(out, "agreement_by_variant.png"),
                        metric="agreement")
  report.plot_learning_curves(wd(ONLINE),
                              os.path.join(out, "train_loss.png"),
                              group_by=["repro.method"])
  rc.write_report(out, "Cached vs online teacher with augmentation", parts)


def budget_report(root: str, figures: str) -> None:
  """Accuracy vs the number of labelled pairs, baseline and KD student."""
  wds = [os.path.join(root, "multifashion", f"{m}_s[0-9]*")
         for m in ("kd", *map(budget_name, BUDGETS))]
  recs = rc.tag(report.collect(wds), "labels", labels_of)
  summ = rc.tag(rc.summary_records(wds), "labels", labels_of)
  if not any(method_of(r["workdir"]) != "kd" for r in recs):
    return
  label = lambda wd: f"{labels_of(wd)} labels"  # noqa: E731
  recs, summ = rc.tag(recs, "method", label), rc.tag(summ, "method", label)
  order = [f"{n} labels" for n in sorted({labels_of(r["workdir"])
                                          for r in recs})]
  out = os.path.join(figures, "label_budget")
  parts = ["kd (the quickstart recipe, 500 student steps) with 250, 1000, "
           "4000 and all 60000 labelled pairs; the rest of the 60k pairs are "
           "the unlabelled transfer set; the same teachers (trained on all "
           "labels) for every budget. Δ pts paired by seed against the run's "
           "own labels-only baseline (same labelled pairs and steps).",
           strategy_table(recs, summ, order),
           rc.wall_time_line(wds[1:])]
  report.plot_metric_vs(recs, "repro.labels",
                        os.path.join(out, "accuracy_vs_labels.png"),
                        models=["teacher", "baseline", "student"],
                        xscale="log")
  rc.write_report(out, "Label budget: KD gain vs labelled pairs", parts)


def main(argv) -> int:
  return rc.driver_main(EXPERIMENTS, run_all, write_reports, argv)


if __name__ == "__main__":
  app.run(main)
