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

from mtkd.methods import tasks
from mtkd.methods.tasks import TaskSpec
from mtkd.stages.base import Run
from mtkd.stages.teachers import Teachers


def evaluate(r: Run, model, exported: Mapping[str, dict],
             t: Teachers) -> dict:
  """results.json's content for the teachers and every exported model."""
  test = r.ds.test
  teacher_out = {s.name: tasks.ensemble(s.kind, t.test_stack(s.name))
                 for s in r.specs}
  results = {s.name: {"teacher": tasks.evaluate(
      s, teacher_out[s.name], test.labels[s.name])} for s in r.specs}
  for name, params in exported.items():
    out = r.predict(model, params, test)
    for s in r.specs:
      results[s.name][name] = tasks.evaluate(
          s, out[s.name], test.labels[s.name], teacher_out[s.name])
  return results


def summarize(results: dict, specs: tuple[TaskSpec, ...],
              models: list[str]) -> dict:
  """Delta_m of each model against the teachers and (when trained) the
  baseline."""
  refs = ["teacher"] + (["baseline"] if "baseline" in models else [])
  return {f"delta_m_vs_{ref}": {
      name: tasks.delta_m(results, specs, name, ref)
      for name in models if name != ref} for ref in refs}


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
  for ref, deltas in summary.items():
    print(f"\nDelta_m vs {ref[len('delta_m_vs_'):]} (%, per task then "
          "averaged, main metric per task): " + ", ".join(
              f"{n} {v:+.2f}" for n, v in deltas.items() if v is not None),
          flush=True)
  print(f"\nWrote {r.layout.results} ({timings['total']:.1f}s).", flush=True)


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                 specs=None) -> str:
  """A fixed-width table: one row per (task, model), the task kind's main
  metric first; Δ is against the baseline (in points for accuracy)."""
  kinds = {s.name: tasks.kind(s) for s in specs or ()}
  head = (f"{'task':<12}{'model':<12}{'metric':>10}{'value':>9}{'loss':>9}"
          f"{'agree':>8}{'KL@T':>8}{'Δ':>8}")
  lines = [head, "-" * len(head)]
  for task, rows in results.items():
    k = kinds.get(task) or tasks.KINDS.get("classification")
    scale = 100.0 if k.main == "accuracy" else 1.0
    base = rows.get("baseline", {}).get(k.main)
    for name, m in rows.items():
      delta = (f"{scale * (m[k.main] - base):+8.2f}"
               if name not in ("teacher", "baseline") and base is not None
               else " " * 8)
      agree = f"{100 * m['agreement']:8.2f}" if "agreement" in m else " " * 8
      klt = f"{m['kl']:8.4f}" if "kl" in m else " " * 8
      lines.append(f"{task:<12}{name:<12}{k.main:>10}{scale * m[k.main]:9.2f}"
                   f"{m['loss']:9.4f}{agree}{klt}{delta}")
  return "\n".join(lines)
