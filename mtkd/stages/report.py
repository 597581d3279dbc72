"""Evaluation on the test split, and what a run reports.

results.json: `{task: {"teacher": {...}, "baseline": {...}, "<stage>":
{...}}}`, each entry the task kind's metrics (`mtkd.methods.tasks`, float64
numpy) plus, for every trained model, agreement and KL with the teachers'
ensemble. summary.json: Delta_m of every stage against the baseline and the
teachers. The teachers' row is computed from their cached test outputs, so
it is exactly what the students learned from.
"""

import json
import os
from collections.abc import Mapping

import jax
import numpy as np

from mtkd.methods import tasks
from mtkd.stages.base import Run
from mtkd.stages.teachers import Teachers
from mtkd.store import layout


def evaluate(r: Run, model, exported: Mapping[str, dict],
             t: Teachers) -> dict:
  """results.json's content for the teachers and every exported model."""
  test = r.ds.test
  teacher_out = {s.name: tasks.ensemble(s.kind, t.test_stack(s.name))
                 for s in r.specs}
  results = {s.name: {"teacher": tasks.evaluate(
      s, teacher_out[s.name], test.labels[s.name])} for s in r.specs}
  if t.best:  # The ensemble of each member's best checkpoint.
    out = {m: r.predict(t.nets[m], v, test) for m, v in t.best.items()}
    for s in r.specs:
      stack = np.stack([out[m][s.name] for m in t.by_task((s.name,))[s.name]],
                       1)
      results[s.name]["teacher:best"] = tasks.evaluate(
          s, tasks.ensemble(s.kind, stack), test.labels[s.name])
  for name, params in exported.items():
    out = r.predict(model, params, test)
    for s in r.specs:
      results[s.name][name] = tasks.evaluate(
          s, out[s.name], test.labels[s.name], teacher_out[s.name])
  return results


def summarize(r: Run, results: dict, models: list[str]) -> dict:
  """Delta_m of each model against the teachers and (when trained) the
  baseline; with evaluation during training, the step each `:best` model
  comes from and the split that chose it."""
  refs = ["teacher"] + (["baseline"] if "baseline" in models else [])
  out = {f"delta_m_vs_{ref}": {
      name: tasks.delta_m(results, r.specs, name, ref)
      for name in models if name != ref} for ref in refs}
  if r.best_steps:
    out["best"] = {"chosen_on": r.eval_split[0], "steps": r.best_steps}
  return out


def write(r: Run, results: dict, summary: dict, timings: dict) -> None:
  """Writes results, summary and timings (process 0) and prints them."""
  if jax.process_index() != 0:
    return
  for path, obj in ((r.layout.results, results), (r.layout.summary, summary),
                    (r.layout.timings, timings)):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1)
    os.replace(tmp, path)
  print("\n" + format_table(results, r.specs), flush=True)
  if "best" in summary:
    chosen = summary["best"]["chosen_on"]
    where = ("the TEST split (config.eval.split='test')" if chosen == "test"
             else f"the {chosen} split")
    print(f"\n<model>:best rows: the checkpoint whose evaluations on "
          f"{where} scored best (steps {summary['best']['steps']}).",
          flush=True)
  for ref, deltas in summary.items():
    if not ref.startswith("delta_m_vs_"):
      continue
    print(f"\nDelta_m vs {ref[len('delta_m_vs_'):]} (%, per task then "
          "averaged, main metric per task): " + ", ".join(
              f"{n} {v:+.2f}" for n, v in deltas.items() if v is not None),
          flush=True)
  drawn = curves(r, [n for n in results[r.specs[0].name]
                     if n in r.best_steps and not n.startswith("teacher")])
  print(f"\nWrote {r.layout.results}{' and ' + drawn if drawn else ''} "
        f"({timings['total']:.1f}s).", flush=True)


def curves(r: Run, names: list[str]) -> str | None:
  """A PNG per run of each task's main metric on the evaluation split
  against the step, one line per trained model (baseline and stages), from
  their logs; None when nothing was evaluated or matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  specs = list(r.specs)
  fig, axes = plt.subplots(1, len(specs), figsize=(4.5 * len(specs), 3.5),
                           squeeze=False)
  drawn = False
  for name in names:
    try:
      with open(layout.metrics(r.layout.stage(name))) as f:
        rows = [json.loads(line) for line in f if '"eval/' in line]
    except FileNotFoundError:
      continue
    for ax, s in zip(axes[0], specs, strict=True):
      key = f"eval/{s.name}/{tasks.kind(s).main}"
      points = sorted({row["step"]: row[key] for row in rows
                       if key in row}.items())
      if points:
        ax.plot(*zip(*points, strict=True), label=name)
        drawn = True
  for ax, s in zip(axes[0], specs, strict=True):
    ax.set(title=s.name, xlabel="step",
           ylabel=f"{tasks.kind(s).main} ({r.eval_split[0]})")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize="small")
  path = r.layout.file("curves.png")
  if drawn:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return path if drawn else None


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                 specs=None) -> str:
  """A fixed-width table: one row per (task, model), the task kind's main
  metric first; Δ is against the baseline (in points for accuracy)."""
  kinds = {s.name: tasks.kind(s) for s in specs or ()}
  head = (f"{'task':<12}{'model':<15}{'metric':>10}{'value':>9}{'loss':>9}"
          f"{'agree':>8}{'KL@T':>8}{'Δ':>8}")
  lines = [head, "-" * len(head)]
  for task, rows in results.items():
    k = kinds.get(task) or tasks.KINDS.get("classification")
    scale = 100.0 if k.main == "accuracy" else 1.0
    base = rows.get("baseline", {}).get(k.main)
    for name, m in rows.items():
      delta = (f"{scale * (m[k.main] - base):+8.2f}"
               if not name.startswith("teacher") and name != "baseline"
               and base is not None else " " * 8)
      agree = f"{100 * m['agreement']:8.2f}" if "agreement" in m else " " * 8
      klt = f"{m['kl']:8.4f}" if "kl" in m else " " * 8
      lines.append(f"{task:<12}{name:<15}{k.main:>10}{scale * m[k.main]:9.2f}"
                   f"{m['loss']:9.4f}{agree}{klt}{delta}")
  return "\n".join(lines)
