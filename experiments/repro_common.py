"""What the repro_*.py drivers share: launching mtkd runs and summarising.

A run is `python -m mtkd.main --config=configs/<file>.py:<arg> --workdir=W
--config.<key>=<value> ...` in a subprocess, its output in
`<root>/logs/<run>.log`. A workdir whose results.json exists and whose
config.json equals the config this run would resolve to is skipped without
starting Python; anything else is (re)started and mtkd itself skips or
resumes its finished stages. Runs that fail are reported and the driver goes
on with the next one (the report says n per row).

Also the flags every driver shares (--root, --seeds, --report_only,
--figures, --methods), defined here once so that repro_all.py can run every
driver in one process; each driver adopts them as its own (--help lists
them). Paths are found from this file's location, not the working
directory: ROOT is the repository root, configs are loaded by path from
ROOT/configs, and runs start with ROOT as their working directory.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace

from absl import app, flags

from experiments import report
from mtkd import configs_util, defaults
from mtkd.store.layout import Layout

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_ROOT = os.path.join(ROOT, "workdirs", "repro")
FIGURES = os.path.join(HERE, "figures")

_ROOT = flags.DEFINE_string("root", DEFAULT_ROOT,
                            "Folder of all repro workdirs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"],
                           "Seeds to run, comma-separated.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Run nothing: rebuild tables and plots from the "
    "existing workdirs.")
_FIGURES = flags.DEFINE_string(
    "figures", FIGURES, "Where <experiment>/report.md and PNGs go.")
_METHODS = flags.DEFINE_list(
    "methods", None, "repro_multifashion and repro_other_data: the methods "
    "to run, comma-separated (default: all of the driver's).")


def load_config(name: str, arg: str = ""):
  """`configs/<name>.py`'s get_config(arg) (no jax import)."""
  spec = importlib.util.spec_from_file_location(
      f"_cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg or None)


def apply(config, overrides: dict):
  """Sets dotted keys (`{"distill.temperature": 4.0}`) on a ConfigDict."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def resolved(name: str, arg: str, overrides: dict) -> dict:
  """The config.json mtkd would write for this run (as plain JSON)."""
  c = apply(load_config(name, arg), overrides)
  return json.loads(json.dumps(configs_util.to_dict(c)))


def teacher_key(name: str, arg: str, overrides: dict) -> str:
  """A folder name shared by runs whose teachers are the same: the teacher,
  data and source settings and the seed (what teacher.workdir checks).
  Only settings that differ from mtkd's defaults count, so a new default
  setting (mtkd growing) keeps every existing key."""
  c = resolved(name, arg, overrides)
  c["teacher"].pop("workdir", None)
  t = c["teacher"]
  kind = t["kind"] + (f"x{t['ensemble']}" if t["ensemble"] > 1 else "")
  default = configs_util.flatten(json.loads(json.dumps(
      configs_util.to_dict(defaults.base_config()))))
  mine = configs_util.flatten({k: c[k] for k in ("data", "teacher", "source")})
  fp = configs_util.fingerprint({
      "changed": {k: v for k, v in sorted(mine.items())
                  if k not in default or default[k] != v},
      "seed": c["seed"]})
  return f"{kind}-{fp[:8]}_s{c['seed']}"


def finished(workdir: str, want: dict) -> bool:
  try:
    with open(Layout(workdir).results) as f:
      json.load(f)
    with open(Layout(workdir).file("config.json")) as f:
      return json.load(f) == want
  except (OSError, ValueError):
    return False


def run(name: str, arg: str, workdir: str, overrides: dict,
        log_dir: str, flags: Sequence[str] = ()) -> bool:
  """Runs one mtkd command unless finished; True when results exist.
  `flags`: extra mtkd flags (e.g. --allow_config_change)."""
  want = resolved(name, arg, overrides)
  if finished(workdir, want):
    print(f"[skip] {workdir} (finished)", flush=True)
    return True
  cmd = [sys.executable, "-m", "mtkd.main",
         f"--config=configs/{name}.py" + (f":{arg}" if arg else ""),
         f"--workdir={workdir}"] + [
             f"--config.{k}={v}" for k, v in overrides.items()] + list(
                 flags)
  os.makedirs(log_dir, exist_ok=True)
  log = os.path.join(log_dir, os.path.basename(workdir) + ".log")
  print(f"[run ] {' '.join(cmd[1:])}  > {log}", flush=True)
  t0 = time.perf_counter()
  with open(log, "a") as f:
    f.write(f"$ {' '.join(cmd)}\n")
    f.flush()
    rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT
                        ).returncode
  dt = time.perf_counter() - t0
  if rc != 0:
    with open(log) as f:
      tail = f.read()[-1500:]
    print(f"[FAIL] {workdir}: exit {rc} after {dt:.0f}s; log tail:\n{tail}",
          flush=True)
    return False
  print(f"[done] {workdir} in {dt:.0f}s", flush=True)
  return True


# ------------------------------------------------------------- reporting


def load_json(path: str, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def tag(records: list[dict], key: str, fn: Callable[[str], object]
        ) -> list[dict]:
  """Adds `config.repro.<key> = fn(workdir)` (a label to group by)."""
  out = []
  for r in records:
    config = dict(r["config"])
    config["repro"] = dict(config.get("repro", {}), **{key: fn(r["workdir"])})
    out.append(dict(r, config=config))
  return out


def summary_records(workdirs: Iterable[str]) -> list[dict]:
  """Records from summary.json: task 'Δm', model = stage, metrics
  {vs_baseline, vs_teacher} (percent), plus timings (seconds) as task
  'time' with metric per timed stage."""
  out = []
  for wd in report.expand(workdirs):
    s = load_json(Layout(wd).summary)
    config = load_json(Layout(wd).file("config.json"), {})
    if s is None:
      continue
    for ref in ("baseline", "teacher"):
      for model, v in s.get(f"delta_m_vs_{ref}", {}).items():
        if v is None:
          continue
        out.append(dict(workdir=wd, task="Δm", model=model, config=config,
                        metrics={f"vs_{ref}": float(v)}))
    t = load_json(os.path.join(wd, "timings.json"), {})
    if t:
      out.append(dict(workdir=wd, task="time", model="run", config=config,
                      metrics={k: float(v) for k, v in t.items()}))
  # Merge the vs_baseline / vs_teacher halves of one (workdir, model).
  merged: dict[tuple, dict] = {}
  for r in out:
    k = (r["workdir"], r["task"], r["model"])
    if k in merged:
      merged[k]["metrics"].update(r["metrics"])
    else:
      merged[k] = dict(r, metrics=dict(r["metrics"]))
  return list(merged.values())


def cell(rows: list[dict], scale: float = 100.0, sign: bool = False,
         digits: int = 2) -> str:
  """'mean ± std (n)' of the single matching table row; '–' if none."""
  if not rows:
    return "–"
  r = rows[0]
  m = r["mean"] * scale
  s = f"{m:+.{digits}f}" if sign else f"{m:.{digits}f}"
  if r["n"] > 1:
    s += f" ± {r['std'] * scale:.{digits}f}"
  return s


def select(rows: list[dict], **want) -> list[dict]:
  """`report.table` rows whose group value or field (task, model) equals
  each `want` item; group keys are dotted config paths."""
  return [r for r in rows if all(
      (r["group"][k] if k in r["group"] else r.get(k)) == v
      for k, v in want.items())]


def write_report(out_dir: str, title: str, parts: Sequence[str]) -> str:
  os.makedirs(out_dir, exist_ok=True)
  text = f"# {title}\n\n" + "\n\n".join(p for p in parts if p) + "\n"
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write(text)
  print(text)
  return path


def args(argv: Sequence[str], takes_methods: bool = False
         ) -> SimpleNamespace:
  """The shared flags' values (root, seeds as ints, report_only, figures,
  methods: None unless given), once absl has parsed them; a driver's
  `main(argv)` calls this first. Refuses positional arguments, and
  --methods unless `takes_methods`."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _METHODS.value is not None and not takes_methods:
    raise app.UsageError("--methods: this driver has no methods to choose.")
  return SimpleNamespace(
      root=_ROOT.value, seeds=[int(s) for s in _SEEDS.value if s],
      report_only=_REPORT_ONLY.value, figures=_FIGURES.value,
      methods=_METHODS.value)


def driver_main(methods, run_all, write_reports, argv: Sequence[str]) -> int:
  """A per-method driver's `main`: `run_all(root, methods, seeds)` (every
  method in `methods` unless --methods) unless --report_only, then
  `write_reports(root, figures)`."""
  a = args(argv, takes_methods=True)
  if not a.report_only:
    run_all(a.root, [m for m in (methods if a.methods is None
                                 else a.methods) if m], a.seeds)
  write_reports(a.root, a.figures)
  return 0


def wall_time_line(workdirs: Iterable[str]) -> str:
  """'Wall time: sum of timings.json totals ...' for a report."""
  totals, teachers = [], []
  for wd in report.expand(workdirs):
    t = load_json(os.path.join(wd, "timings.json"))
    if t:
      totals.append(t.get("total", 0.0))
      teachers.append(t.get("teachers", 0.0) + t.get("source", 0.0))
  if not totals:
    return "Wall time: no timings.json found."
  return (f"Wall time (sum of the runs' timings.json `total`, 2-core CPU "
          f"shared with other jobs): {sum(totals) / 60:.1f} min over "
          f"{len(totals)} runs, of which teacher/source stages "
          f"{sum(teachers) / 60:.1f} min (a run that re-uses teachers spends "
          "seconds there; one that was interrupted and resumed counts only "
          "the resumed part).")
