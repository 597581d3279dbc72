"""Markdown tables and PNG plots rebuilt from experiment workdirs.

Reads, per workdir: `results.json` ({task: {model: {metric: value}}}),
`config.json` (the resolved config `mtkd.runinfo` writes) and each stage's
`logs/metrics.jsonl` (`{"step": s, "train/...": v}` lines from
`mtkd.metric_writers`). Runs whose `group_by` config values agree are pooled:
mean ± sample std (ddof=1) over them, with n shown. Pooling is only honest
when the pooled runs differ in the seed alone, so every table lists any
other config key that differs inside a group.

  python -m experiments.report --workdirs 'workdirs/hinton/*' \\
      --group_by distill.temperature --out experiments/figures/hinton

(from the repository root) writes OUT/report.md (also printed),
OUT/learning_curves.png and, per group_by key, OUT/<metric>_vs_<key>.png.
--workdirs may be repeated, and workdirs listed after it (an unquoted glob
the shell expanded) count too.
"""

import glob
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
from absl import app, flags

from mtkd.store import layout
from mtkd.store.layout import Layout

MODEL_ORDER = ("teacher", "baseline", "student")
PERCENT = ("accuracy", "agreement")
# Config keys expected to differ between pooled runs (seeds, locations).
POOL_OK = ("seed", "teacher.workdir", "data.dir", "data.path")


# ------------------------------------------------------------ collecting


def _load_json(path: str, default: Any) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return default


def expand(patterns: Iterable[str]) -> list[str]:
  """Workdirs matching the glob patterns (sorted, deduplicated)."""
  out: list[str] = []
  for p in patterns:
    for d in sorted(glob.glob(os.path.expanduser(p))) or [p]:
      if os.path.isdir(d) and d not in out:
        out.append(d)
  return out


def collect(workdirs: Iterable[str]) -> list[dict]:
  """One record per (workdir, task, model): {workdir, task, model, metrics,
  config}. `workdirs` may hold globs. Workdirs without results.json (runs
  still going or failed) are skipped with a note on stderr."""
  records = []
  for wd in expand(workdirs):
    results = _load_json(Layout(wd).results, None)
    if results is None:
      print(f"report: skipping {wd}: no results.json", file=sys.stderr)
      continue
    config = _load_json(Layout(wd).file("config.json"), {})
    for task, by_model in results.items():
      for model, metrics in by_model.items():
        records.append(dict(
            workdir=wd, task=task, model=model, config=config,
            metrics={k: float(v) for k, v in metrics.items()
                     if isinstance(v, int | float)}))
  return records


def get_path(tree: Any, key: str, default: Any = None) -> Any:
  """`tree["a"]["b"]` for key "a.b"; `default` when any part is missing."""
  for part in key.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return default
    tree = tree[part]
  return tree


def _hashable(v: Any) -> Any:
  return v if isinstance(v, str | int | float | bool | type(None)) else (
      json.dumps(v, sort_keys=True))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b": leaf}; lists and tuples are leaves (as JSON strings)."""
  if not isinstance(tree, dict):
    return {prefix: _hashable(tree)}
  out: dict[str, Any] = {}
  for k, v in tree.items():
    out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def paired_deltas(records: Sequence[dict], model: str = "student",
                  reference: str = "baseline") -> list[dict]:
  """Records `model-reference` holding, per workdir and task, the metric
  differences of the two models (paired by seed, as they share one)."""
  by_key = {(r["workdir"], r["task"], r["model"]): r for r in records}
  out = []
  for (wd, task, name), r in by_key.items():
    ref = by_key.get((wd, task, reference))
    if name != model or ref is None:
      continue
    out.append(dict(r, model=f"{model}-{reference}", metrics={
        k: v - ref["metrics"][k] for k, v in r["metrics"].items()
        if k in ref["metrics"]}))
  return out


# ---------------------------------------------------------------- tables


def _sort_key(values: tuple) -> tuple:
  return tuple((0, v, "") if isinstance(v, int | float) and
               not isinstance(v, bool) else (1, 0, str(v)) for v in values)


def _model_rank(name: str, seen: list[str]) -> tuple[int, int]:
  if name in MODEL_ORDER:
    return (0, MODEL_ORDER.index(name))
  return (1, seen.index(name))


def table(records: Sequence[dict], group_by: Sequence[str] = (),
          metric: str = "accuracy") -> list[dict]:
  """Rows {group: {key: value}, task, model, mean, std, n, values,
  differs}: `metric` pooled over the records sharing group values, task
  and model. std is the sample std (ddof=1; NaN when n = 1). `differs`
  lists config keys (beyond POOL_OK and group_by) that vary in the pool."""
  pools: dict[tuple, list[dict]] = {}
  tasks: list[str] = []
  models: list[str] = []
  for r in records:
    if metric not in r["metrics"]:
      continue
    g = tuple(_hashable(get_path(r["config"], k)) for k in group_by)
    pools.setdefault((g, r["task"], r["model"]), []).append(r)
    tasks += [r["task"]] if r["task"] not in tasks else []
    models += [r["model"]] if r["model"] not in models else []
  rows = []
  for (g, task, model), pool in sorted(pools.items(), key=lambda kv: (
      _sort_key(kv[0][0]), tasks.index(kv[0][1]),
      _model_rank(kv[0][2], models))):
    values = np.asarray([r["metrics"][metric] for r in pool], np.float64)
    flat = [flatten(r["config"]) for r in pool]
    keys = set().union(*flat)
    differs = sorted(
        k for k in keys if k not in POOL_OK and k not in group_by
        and len({f.get(k) for f in flat}) > 1)
    rows.append(dict(
        group=dict(zip(group_by, g, strict=True)), task=task, model=model,
        mean=float(values.mean()),
        std=float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        n=len(values), values=values.tolist(), differs=differs))
  return rows


def _fmt(x: float, scale: float, sign: bool = False) -> str:
  if math.isnan(x):
    return "–"
  s = f"{x * scale:.2f}" if scale != 1 else f"{x:.4g}"
  return ("+" + s) if sign and x > 0 else s


def markdown(head: Sequence[str], body: Sequence[Sequence[str]],
             right_from: int = 1) -> str:
  """A GitHub markdown table; columns from `right_from` on right-aligned.
  (The one table writer of experiments/: the drivers' and benchmarks'.)"""
  lines = ["| " + " | ".join(head) + " |",
           "|" + "".join("---|" if i < right_from else "---:|"
                         for i in range(len(head)))]
  lines += ["| " + " | ".join(map(str, row)) + " |" for row in body]
  return "\n".join(lines)


def to_markdown(rows: Sequence[dict], metric: str,
                group_by: Sequence[str] = ()) -> str:
  """A markdown table of `table` rows; accuracy/agreement in percent."""
  base = metric.split("-")[0]
  scale = 100.0 if any(base.startswith(p) for p in PERCENT) else 1.0
  unit = " %" if scale == 100 else ""
  head = [*group_by, "task", "model", f"{metric}{unit} (mean ± std)", "n"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * (len(head) - 2) + "---:|---:|"]
  notes = set()
  for r in rows:
    cell = _fmt(r["mean"], scale, "delta" in metric) + (
        f" ± {_fmt(r['std'], scale)}" if r["n"] > 1 else "")
    lines.append("| " + " | ".join(
        [*(str(r["group"][k]) for k in group_by), r["task"], r["model"],
         cell, str(r["n"])]) + " |")
    notes.update(r["differs"])
  if notes:
    lines.append(f"\nPooled runs also differ in: {', '.join(sorted(notes))}.")
  return "\n".join(lines)


# ----------------------------------------------------------------- plots


def read_log(stage_dir: str) -> dict[int, dict[str, float]]:
  """{step: scalars} from `<stage_dir>/logs/metrics.jsonl`. The file is
  appended to, so a resumed stage may log a step twice: the last wins."""
  path = layout.metrics(stage_dir)
  out: dict[int, dict[str, float]] = {}
  try:
    with open(path) as f:
      for line in f:
        if line.strip():
          row = json.loads(line)
          out[int(row.pop("step"))] = row
  except FileNotFoundError:
    pass
  return out


def stages(workdir: str) -> list[str]:
  """Stage directories (relative) that hold a metrics log."""
  run = Layout(workdir)
  dirs = glob.glob(run.stage("*")) + run.teachers()
  return sorted(os.path.relpath(d, workdir) for d in dirs
                if os.path.isfile(layout.metrics(d)))


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _label(group_by: Sequence[str], g: tuple) -> str:
  return ", ".join(f"{k.split('.')[-1]}={v}"
                   for k, v in zip(group_by, g, strict=True))


def learning_curves(workdirs: Iterable[str], key: str = "train/loss",
                    stage_names: Sequence[str] = ("baseline", "student"),
                    group_by: Sequence[str] = ()) -> list[dict]:
  """Curves {stage, group, steps, mean, std, n}: `key` averaged over the
  workdirs of a group at the steps all of them logged."""
  pools: dict[tuple, list[dict[int, float]]] = {}
  for wd in expand(workdirs):
    config = _load_json(os.path.join(wd, "config.json"), {})
    g = tuple(_hashable(get_path(config, k)) for k in group_by)
    for stage in stage_names:
      log = read_log(os.path.join(wd, stage))
      series = {s: row[key] for s, row in log.items() if key in row}
      if series:
        pools.setdefault((stage, g), []).append(series)
  curves = []
  for (stage, g), runs in sorted(pools.items(),
                                 key=lambda kv: (kv[0][0], _sort_key(kv[0][1]))):
    steps = sorted(set.intersection(*(set(r) for r in runs)))
    v = np.asarray([[r[s] for s in steps] for r in runs], np.float64)
    curves.append(dict(
        stage=stage, group=g, steps=steps, mean=v.mean(0),
        std=v.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps)),
        n=len(runs)))
  return curves


def plot_learning_curves(workdirs: Iterable[str], out_path: str,
                         key: str = "train/loss",
                         stage_names: Sequence[str] = ("baseline", "student"),
                         group_by: Sequence[str] = ()) -> str | None:
  """Mean ± std bands of `key` over training steps; None if nothing logged."""
  curves = learning_curves(workdirs, key, stage_names, group_by)
  if not curves:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for c in curves:
    label = " ".join(filter(None, [c["stage"], _label(group_by, c["group"]),
                                   f"(n={c['n']})"]))
    (line,) = ax.plot(c["steps"], c["mean"], label=label,
                      marker="." if len(c["steps"]) < 30 else None)
    if c["n"] > 1:
      ax.fill_between(c["steps"], c["mean"] - c["std"], c["mean"] + c["std"],
                      color=line.get_color(), alpha=0.2)
  ax.set_xlabel("step")
  ax.set_ylabel(key)
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  return _save(fig, out_path)


def _save(fig, out_path: str) -> str:
  os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  _pyplot().close(fig)
  return out_path


def plot_metric_vs(records: Sequence[dict], x_key: str, out_path: str,
                   metric: str = "accuracy",
                   models: Sequence[str] | None = None,
                   xscale: str = "linear") -> str | None:
  """`metric` (mean ± std error bars) against the config value at `x_key`,
  one panel per task and one line per model; None if no record has x.
  Non-numeric x values are placed at evenly spaced categorical positions.
  `xscale`: matplotlib's x scale for numeric x ('log' for temperatures)."""
  rows = [r for r in table(records, (x_key,), metric)
          if r["group"][x_key] is not None
          and (models is None or r["model"] in models)]
  if not rows:
    return None
  xs = sorted({r["group"][x_key] for r in rows}, key=lambda v: _sort_key((v,)))
  numeric = all(isinstance(v, int | float) and not isinstance(v, bool)
                for v in xs)
  pos = {v: (v if numeric else i) for i, v in enumerate(xs)}
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  scale = 100.0 if metric.split("-")[0] in PERCENT else 1.0
  plt = _pyplot()
  # Categorical x: markers only (no line between unrelated categories),
  # wider panels and slanted labels when there are many categories.
  width = 4.5 if numeric else max(4.5, 0.45 * len(xs) + 1.5)
  fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 4),
                           squeeze=False)
  for ax, task in zip(axes[0], tasks, strict=True):
    for model in dict.fromkeys(r["model"] for r in rows if r["task"] == task):
      sel = [r for r in rows if r["task"] == task and r["model"] == model]
      ax.errorbar([pos[r["group"][x_key]] for r in sel],
                  [r["mean"] * scale for r in sel],
                  yerr=[0 if r["n"] < 2 else r["std"] * scale for r in sel],
                  marker="o", capsize=3, label=model,
                  linestyle="-" if numeric else "none")
    if not numeric:
      ax.set_xticks(range(len(xs)), [str(v) for v in xs],
                    rotation=45 if len(xs) > 3 else 0,
                    ha="right" if len(xs) > 3 else "center")
    elif xscale != "linear":
      ax.set_xscale(xscale)
      ax.set_xticks(xs, [f"{v:g}" for v in xs])
      ax.minorticks_off()
    ax.set_title(task)
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric + (" %" if scale == 100 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  return _save(fig, out_path)


# ------------------------------------------------------------------- CLI

def define_flags() -> SimpleNamespace:
  """The CLI's flags, defined only when report.py is the program: other
  scripts import this module for its tables and must not inherit them."""
  return SimpleNamespace(
      workdirs=flags.DEFINE_multi_string(
          "workdirs", None, "Workdirs or quoted globs; repeat the flag, or "
          "list more workdirs after it."),
      group_by=flags.DEFINE_multi_string(
          "group_by", [], "Config key path(s), comma-separated or repeated."),
      metrics=flags.DEFINE_list(
          "metrics", ["accuracy", "agreement", "kl", "loss"],
          "Metrics to tabulate; the first is plotted against each "
          "--group_by key."),
      curve_key=flags.DEFINE_string(
          "curve_key", "train/loss", "A key of metrics.jsonl; note "
          "train/loss is CE for the baseline but the KD mixture for the "
          "student."),
      out=flags.DEFINE_string("out", None, "Output folder."))


_FLAGS: SimpleNamespace | None = None  # Set by define_flags() in __main__.


def _split_list(values: Sequence[str]) -> list[str]:
  return [p for v in values for p in v.split(",") if p]


def main(argv: Sequence[str]) -> int:
  """The CLI, once absl has parsed the flags; argv[1:] are more workdirs."""
  opts = _FLAGS
  workdirs = [*(opts.workdirs.value or []), *argv[1:]]
  out = opts.out.value
  if not workdirs or not out:
    raise app.UsageError("--workdirs and --out are required.")
  group_by = _split_list(opts.group_by.value)
  metrics = _split_list(opts.metrics.value)
  records = collect(workdirs)
  if not records:
    print(f"report: no results.json under {workdirs}", file=sys.stderr)
    return 1
  done = sorted({r["workdir"] for r in records})
  deltas = paired_deltas(records)
  parts = [f"# Report: {len(done)} workdir(s) with results\n"]
  for m in metrics:
    rows = table(records, group_by, m)
    if rows:
      parts.append(f"## {m}\n\n{to_markdown(rows, m, group_by)}\n")
  rows = table(deltas, group_by, "accuracy")
  if rows:
    parts.append("## Δ accuracy, student − baseline (paired by workdir)\n\n"
                 f"{to_markdown(rows, 'accuracy-delta', group_by)}\n")
  os.makedirs(out, exist_ok=True)
  text = "\n".join(parts)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text)
  print(text)
  written = [plot_learning_curves(
      done, os.path.join(out, "learning_curves.png"),
      opts.curve_key.value, group_by=group_by)]
  for key in group_by:
    written.append(plot_metric_vs(
        records, key, os.path.join(out, f"{metrics[0]}_vs_{key}.png"),
        metrics[0]))
  for path in filter(None, written):
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  _FLAGS = define_flags()
  flags.mark_flags_as_required(["workdirs", "out"])
  app.run(main)
