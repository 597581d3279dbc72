"""Replayed augmented views vs the fixed cache and the online teacher, on
MultiFashion (experiments/README.md §4's setting, 3 seeds, paired).

Every run is `configs/repro_multifashion.py` with the student seeing random
shifts of up to 2 px (500 steps; the quickstart's teachers, shared by every
variant of a seed):

  fixed    method=online_cached: the cache holds the un-augmented pairs
  views_K  the same with `cache.views=K`: the teachers cached on K shifted
           views per pair, the student replaying one per draw
  views_8_mix  views_8 with mixup views (function matching from a cache;
           distill.alpha=1: a mixed view has no single label)
  online   method=online_teacher: the teachers run in the step

The report (experiments/figures/views/report.md) gives per variant the
student's accuracy and agreement per task, the share of the online
teacher's gain over the fixed cache that it recovers (paired by seed,
per task), the caching time and bytes of its train caches, and its
student stage's time per step against the fixed cache's; plus plots of
accuracy against K and against cache bytes.

From the repository root:
  python -m experiments.repro_views                     # 3 seeds
  python -m experiments.repro_views --seeds 0 --methods fixed,views_4,online
  python -m experiments.repro_views --report_only
"""

import glob
import os
import sys

from absl import app, flags  # noqa: F401 (flags: adopted below)

from experiments import repro_common as rc

CONFIG = "repro_multifashion"
KS = (1, 2, 4, 8, 16, 32)
STEPS, LONG_STEPS = 500, 5000
# 500 steps at batch 128 is ~1 epoch of the 60k pairs: each example is
# drawn about once, so K cannot matter there, only consistency. The long
# schedule (~11 epochs) is where several views per example can.
LONG = ("fixed", "views_1", "views_4", "views_32", "online")
METHODS = (("fixed",) + tuple(f"views_{k}" for k in KS) + (
    "views_8_mix", "online") + tuple(f"{m}_long" for m in LONG))

flags.adopt_module_key_flags(rc)


def method_run(method: str) -> tuple[str, dict]:
  """(config arg, overrides) of a method."""
  if method.endswith("_long"):
    arg, over = method_run(method[:-len("_long")])
    return arg, dict(over, **{"student.steps": LONG_STEPS})
  if method == "online":
    return "method=online_teacher", {}
  if method == "fixed":
    return "method=online_cached", {}
  over = {"cache.views": int(method.split("_")[1])}
  if method.endswith("_mix"):
    over.update({"cache.mixup": True, "distill.alpha": 1.0})
  return "method=online_cached", over


def run_all(root: str, methods, seeds) -> None:
  base = os.path.join(root, "views")
  for seed in seeds:
    # One teacher set per seed: the cache settings do not change teachers.
    tdir = os.path.join(base, "teachers", rc.teacher_key(
        CONFIG, "method=online_cached", {"seed": seed}))
    for m in methods:
      arg, over = method_run(m)
      over = dict(over, seed=seed)
      over["teacher.workdir"] = tdir
      rc.run(CONFIG, arg, os.path.join(base, f"{m}_s{seed}"), over,
             os.path.join(base, "logs"))


def _du(paths) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for p in paths
             for d, _, fs in os.walk(p) for f in fs)


def collect(root: str) -> dict:
  """{method: {seed: record}} from the finished runs."""
  out: dict = {}
  for wd in sorted(glob.glob(os.path.join(root, "views", "*_s[0-9]*"))):
    method, seed = os.path.basename(wd).rsplit("_s", 1)
    res = rc.load_json(os.path.join(wd, "results.json"))
    cfg = rc.load_json(os.path.join(wd, "config.json"), {})
    if res is None:
      continue
    t = rc.load_json(os.path.join(wd, "timings.json"), {})
    k = cfg.get("cache", {}).get("views", 0)
    suffix = f"-views{k}" + ("mix" if cfg.get("cache", {}).get("mixup")
                             else "")
    tdir = cfg.get("teacher", {}).get("workdir") or wd
    names = [p for p in glob.glob(os.path.join(tdir, "cache", "*", "train"))]
    caches = [p for p in names if (p.split(os.sep)[-2].endswith(suffix)
                                   if k else "-views" not in p.split(os.sep)[-2])]
    out.setdefault(method, {})[int(seed)] = dict(
        acc={task: r["student"]["accuracy"] for task, r in res.items()},
        agree={task: r["student"].get("agreement") for task, r in res.items()},
        student_s=t.get("student"), steps=cfg.get("student", {}).get("steps"),
        cache_bytes=0 if method.startswith("online") else _du(caches),
        # A views run restores the seed's teachers: its teacher time is the
        # caching of its K views.
        cache_s=t.get("teachers") if k else None)
  return out


def _ms(values) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "–"
  m = sum(values) / len(values)
  if len(values) == 1:
    return f"{m:.2f}"
  s = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
  return f"{m:.2f} ± {s:.2f}"


def report(root: str, figures: str) -> str | None:
  recs = collect(root)
  if not recs:
    print(f"No finished runs under {root}/views.")
    return None
  tasks = sorted(next(iter(next(iter(recs.values())).values()))["acc"])
  header = ["variant", "steps", "n"] + [f"{t} acc %" for t in tasks] + [
      f"{t} agree %" for t in tasks] + [f"{t} recovered" for t in tasks] + [
          "train cache MB", "caching s", "student ms/step", "vs fixed step"]
  rows = []
  for m in METHODS:
    if m not in recs:
      continue
    # Against the fixed cache and the online teacher of the same schedule.
    suffix = "_long" if m.endswith("_long") else ""
    fixed = recs.get("fixed" + suffix, {})
    online = recs.get("online" + suffix, {})
    fixed_step = [r["student_s"] / r["steps"] for r in fixed.values()
                  if r["student_s"]]
    runs = recs[m]
    row = [m, str(next(iter(runs.values()))["steps"]), str(len(runs))]
    row += [_ms([100 * r["acc"][t] for r in runs.values()]) for t in tasks]
    row += [_ms([100 * r["agree"][t] for r in runs.values()
                 if r["agree"][t] is not None]) for t in tasks]
    for t in tasks:  # Share of (online - fixed) recovered, paired by seed.
      shares = [(r["acc"][t] - fixed[s]["acc"][t]) /
                (online[s]["acc"][t] - fixed[s]["acc"][t])
                for s, r in runs.items() if s in fixed and s in online
                and online[s]["acc"][t] != fixed[s]["acc"][t]]
      row.append(_ms(shares))
    row.append(_ms([r["cache_bytes"] / 1e6 for r in runs.values()]))
    row.append(_ms([r["cache_s"] for r in runs.values()]))
    step = [1e3 * r["student_s"] / r["steps"] for r in runs.values()
            if r["student_s"]]
    row.append(_ms(step))
    ratio = "–"
    if fixed_step and step:
      ratio = f"{sum(fixed_step) / len(fixed_step) / (sum(step) / len(step) / 1e3):.2f}"
    row.append(ratio)
    rows.append(row)
  md = ["| " + " | ".join(header) + " |",
        "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                        for r in rows]
  text = "\n".join(md)
  out = os.path.join(figures, "views")
  parts = [
      "fixed: cached un-augmented pairs; views_K: K cached shifted views "
      "per pair, replayed; online: teachers in the step. Student: "
      f"{STEPS} steps (~1 epoch), or {LONG_STEPS} (`_long`, ~11 epochs), "
      "random shifts of up to 2 px. 'recovered' = (acc − fixed) / (online "
      "− fixed) of the same schedule, paired by seed. 'student ms/step' = "
      "the student stage's wall time (compilation and evaluation included) "
      "over its steps; 'vs fixed step' = the fixed cache's over this "
      "variant's (≥ 0.95 is the goal; the step alone is timed side by side "
      "in experiments/bench_views_step.py).", text,
      f"Command: `{' '.join(['python', '-m', 'experiments.repro_views'] + sys.argv[1:])}`"]
  _plot(recs, tasks, out)
  return rc.write_report(out, "Replayed augmented views", parts)


def _mean_acc(runs: dict, t: str) -> float:
  return 100 * sum(r["acc"][t] for r in runs.values()) / len(runs)


def _plot(recs, tasks, out: str) -> None:
  """Accuracy against K and against cache bytes, one panel per schedule,
  with the fixed cache and the online teacher as horizontal lines."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  panels = [(sfx, [k for k in KS if f"views_{k}{sfx}" in recs])
            for sfx in ("", "_long")]
  panels = [(sfx, ks) for sfx, ks in panels if ks]
  if not panels:
    return
  os.makedirs(out, exist_ok=True)
  for of_k, name, label in (
      (lambda k, sfx: k, "accuracy_vs_views.png", "views per example (K)"),
      (lambda k, sfx: sum(r["cache_bytes"] for r in recs[
          f"views_{k}{sfx}"].values()) / len(recs[f"views_{k}{sfx}"]) / 1e6,
       "accuracy_vs_storage.png", "train cache MB")):
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5),
                             squeeze=False)
    for ax, (sfx, ks) in zip(axes[0], panels, strict=True):
      for t in tasks:
        line, = ax.plot([of_k(k, sfx) for k in ks],
                        [_mean_acc(recs[f"views_{k}{sfx}"], t) for k in ks],
                        "o-", label=f"{t}: views")
        for m, style in (("fixed", ":"), ("online", "--")):
          if m + sfx in recs:
            ax.axhline(_mean_acc(recs[m + sfx], t), ls=style, lw=1,
                       color=line.get_color(), label=f"{t}: {m}")
      steps = LONG_STEPS if sfx else STEPS
      ax.set_title(f"student {steps} steps", fontsize=9)
      ax.set_xscale("log", base=2)
      ax.set_xlabel(label)
      ax.set_ylabel("student test accuracy %")
      ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=120)
    plt.close(fig)


def main(argv) -> int:
  return rc.driver_main(METHODS, run_all, report, argv)


if __name__ == "__main__":
  app.run(main)
