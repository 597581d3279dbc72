"""CIFAR recipe pairs at a reduced budget on Fashion-MNIST (32x32).

Until CIFAR-100 loads, runs configs/cifar_kd.py's teacher -> student pair
(`--pair`) with `data=fashion` (Fashion-MNIST zero-padded to 32x32), methods
kd, dkd and fitnets, per seed, at a budget set by flags, then writes
experiments/figures/cifar_pairs/report.md: per method, test accuracy (last
and best-on-val) mean ± std over seeds, the teacher's, the student-alone
baseline's, and the gain over the baseline paired by seed.

Budget: `--max_train` rows of the 60k train split (0: all; the config then
holds 5k of them out as the validation split), `--epochs` of those for each
student stage and the baseline, `--pair_teacher_epochs` for the teacher. The
config computes its steps from CIFAR's 50k rows and an integer epoch count,
so this driver sets them explicitly: teacher.steps and student.steps from
the rows left after the hold-out, the x0.1 milestones at epochs 150/180/210
of 240 scaled to the budget (fractional epochs), the DKD warm-up at 20/240
of the student's epochs, and evaluation every `--eval_every` epochs.

Runs share work per seed: the teacher trains once (teacher.workdir, keyed
by rc.teacher_key; its logit and feature caches live there too); the
baseline trains in the kd run and is copied into the fitnets run (its
settings are identical, so mtkd restores it); the dkd run trains no
baseline (config.baseline=False: its task weight 2 would make its baseline
a 2 x CE model, not the student alone). Workdirs:
`<root>/cifar_pairs/<pair>/<budget>/<method>_s<seed>`.

From the repository root:

  python -m experiments.repro_cifar_pairs                     # 3 seeds
  python -m experiments.repro_cifar_pairs --pair wrn_40_2_wrn_16_2 \\
      --epochs 1 --max_train 20000 --seeds 0
  python -m experiments.repro_cifar_pairs --report_only
"""

import glob
import json
import math
import os
import shutil
import sys
import time

from absl import app, flags

from experiments import report
from experiments import repro_common as rc
from mtkd.store.layout import Layout

CONFIG = "cifar_kd"
METHODS = ("kd", "dkd", "fitnets")
FASHION_TRAIN = 60000  # Rows of Fashion-MNIST's train split.
FASHION_TASK = "class"  # Its task's name (the config's dkd sets 'label').
# configs/cifar_kd.py's protocol, in epochs of 240.
PROTOCOL_EPOCHS, MILESTONES, DKD_WARMUP = 240, (150, 180, 210), 20
BUDGET_FILE = "budget.json"

_PAIR = flags.DEFINE_string("pair", "resnet56_resnet20",
                            "configs/cifar_kd.py's pair (teacher_student).")
_EPOCHS = flags.DEFINE_float("epochs", 1.5, "Epochs of each student stage "
                             "(and the baseline) over the training rows.")
_TEACHER_EPOCHS = flags.DEFINE_float(
    "pair_teacher_epochs", 4.0, "Epochs of the teacher (its own budget: the "
    "protocol's teacher is trained in full before the students).")
_MAX_TRAIN = flags.DEFINE_integer(
    "max_train", 12000, "Rows of the 60k train split used (0: all); the "
    "config's 5k validation split is held out of them.")
_EVAL_EVERY = flags.DEFINE_float(
    "eval_every", 0.5, "Evaluate on the validation split every this many "
    "epochs (chooses the :best checkpoints).")
_FITNETS_WEIGHT = flags.DEFINE_float(
    "fitnets_weight", None, "FitNets hint weight (default: the config's "
    "100); another value runs as method fitnets_w<weight>.")

flags.adopt_module_key_flags(rc)  # --root, --seeds, ... in --help.


def budget(max_train: int, epochs: float, teacher_epochs: float | None,
           eval_every: float, pair: str = "resnet56_resnet20") -> dict:
  """The budget's numbers and the overrides every method's run shares."""
  c = rc.load_config(CONFIG, f"pair={pair},data=fashion")
  t_epochs = epochs if teacher_epochs is None else teacher_epochs
  rows = (max_train or FASHION_TRAIN) - c.data.val_size
  over = {"data.max_train": max_train, "eval.every": eval_every}
  steps = {}
  for part, e in (("teacher", t_epochs), ("student", epochs)):
    spe = rows / c[part].batch_size
    steps[part] = max(1, round(e * spe))
    over[f"{part}.steps"] = steps[part]
    over[f"{part}.optimizer.schedule.boundaries"] = tuple(
        round(m * e / PROTOCOL_EPOCHS, 4) for m in MILESTONES)
  warmup = round(DKD_WARMUP * epochs / PROTOCOL_EPOCHS * rows /
                 c.student.batch_size)
  return dict(pair=pair, max_train=max_train, train_rows=rows,
              val_rows=c.data.val_size, epochs=epochs,
              teacher_epochs=t_epochs, eval_every=eval_every, steps=steps,
              dkd_warmup_steps=warmup, overrides=over,
              tag=f"e{epochs:g}_t{t_epochs:g}_n{max_train or 'all'}")


def method_arg(pair: str, method: str, epochs: float) -> str:
  """The config arg; `epochs` (an int there) only for what the overrides
  do not set."""
  return (f"pair={pair},method={method},data=fashion,"
          f"epochs={max(1, math.ceil(epochs))}")


def overrides(b: dict, method: str, seed: int,
              fitnets_weight: float | None = None) -> dict:
  over = dict(b["overrides"], seed=seed)
  if method == "dkd":
    over["dkd.warmup_steps"] = b["dkd_warmup_steps"]
    over["baseline"] = False  # Task weight 2: not the student alone.
    # The config weights task 'label' (CIFAR's); Fashion-MNIST's is 'class'.
    over["tasks"] = {FASHION_TASK: {"weight": 2.0}}
  if method == "fitnets" and fitnets_weight is not None:
    over["feature.weight"] = fitnets_weight
  return over


def run_name(method: str, fitnets_weight: float | None = None) -> str:
  """The workdir's method name: `fitnets_w<weight>` for another weight."""
  if method == "fitnets" and fitnets_weight is not None:
    return f"fitnets_w{fitnets_weight:g}"
  return method


def group_dir(root: str, b: dict) -> str:
  return os.path.join(root, "cifar_pairs", b["pair"], b["tag"])


def run_seed(b: dict, base: str, methods, seed: int, runner=rc.run,
             fitnets_weight: float | None = None) -> None:
  """One seed's runs, kd first (teacher and baseline for the others).
  `runner(name, arg, workdir, overrides, log_dir)`: rc.run (a subprocess),
  or the tests' in-process smoke run."""
  order = [m for m in METHODS if m in methods]
  for m in order:
    arg = method_arg(b["pair"], m, b["epochs"])
    over = overrides(b, m, seed, fitnets_weight)
    over["teacher.workdir"] = os.path.join(
        base, "teachers", rc.teacher_key(CONFIG, arg, over))
    wd = os.path.join(base, f"{run_name(m, fitnets_weight)}_s{seed}")
    kd = os.path.join(base, f"kd_s{seed}")
    if m == "fitnets" and os.path.isfile(Layout(kd).results):
      reuse_baseline(kd, wd)
    runner(CONFIG, arg, wd, over, os.path.join(base, "logs"))


def reuse_baseline(source: str, workdir: str) -> None:
  """Copies `source`'s finished baseline stage into `workdir` (mtkd records
  only what a stage reads, so the copy restores instead of retraining)."""
  dst = os.path.join(workdir, "baseline")
  if not os.path.isdir(dst):
    os.makedirs(workdir, exist_ok=True)
    shutil.copytree(os.path.join(source, "baseline"), dst)


def write_budget(base: str, b: dict, command: str, **extra) -> None:
  """`<group>/budget.json`: the budget, the command and the machine."""
  from experiments import bench_common  # Imports jax: only when running.
  os.makedirs(base, exist_ok=True)
  path = os.path.join(base, BUDGET_FILE)
  old = rc.load_json(path, {})
  rec = dict(old, **b, command=command, machine=bench_common.machine(),
             **extra)
  with open(path, "w") as f:
    json.dump(rec, f, indent=1)


def run_all(root: str, methods, seed_list) -> None:
  b = budget(_MAX_TRAIN.value, _EPOCHS.value, _TEACHER_EPOCHS.value,
             _EVAL_EVERY.value, _PAIR.value)
  base = group_dir(root, b)
  command = " ".join(["python -m experiments.repro_cifar_pairs",
                      *sys.argv[1:]])
  t0 = time.time()
  write_budget(base, b, command, started=time.strftime("%Y-%m-%d %H:%M"))
  for seed in seed_list:
    run_seed(b, base, methods, seed, fitnets_weight=_FITNETS_WEIGHT.value)
  write_budget(base, b, command, finished=time.strftime("%Y-%m-%d %H:%M"),
               driver_wall_s=round(time.time() - t0))


# ------------------------------------------------------------- reporting


def method_of(workdir: str) -> str:
  return os.path.basename(workdir.rstrip("/")).rsplit("_s", 1)[0]


def accuracies(base: str) -> tuple[str, dict]:
  """(task, {(row, which, seed): test accuracy}) of the runs' first task:
  row 'teacher', 'baseline' (from the kd runs, else fitnets') or a method;
  which 'last' or 'best'."""
  recs = report.collect([os.path.join(base, "*_s[0-9]*")])
  task = recs[0]["task"] if recs else ""
  out = {}
  for r in sorted(recs, key=lambda r: method_of(r["workdir"]) != "kd"):
    m, seed = method_of(r["workdir"]), r["config"].get("seed")
    model, _, best = r["model"].partition(":")
    which = "best" if best else "last"
    if r["task"] != task or "accuracy" not in r["metrics"]:
      continue
    row = {"student": m}.get(model, model)
    if row in ("teacher", "baseline") and (row, which, seed) in out:
      continue  # The kd run's (sorted first); the others hold the same.
    out[(row, which, seed)] = r["metrics"]["accuracy"]
  return task, out


def _stats(values: list[float]) -> dict:
  n = len(values)
  mean = sum(values) / n
  std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 \
      else 0.0
  return dict(mean=mean, std=std, n=n)


def _cell(values: list[float], sign: bool = False) -> str:
  return rc.cell([_stats(values)], sign=sign) if values else "–"


def table(acc: dict, archs: tuple[str, str] = ("", "")) -> str:
  """The markdown table of `accuracies` (percent)."""
  seeds = sorted({k[2] for k in acc})
  runs = sorted({k[0] for k in acc} - {"teacher", "baseline"},
                key=lambda m: (METHODS.index(m.split("_w")[0])
                               if m.split("_w")[0] in METHODS else 9, m))
  rows = ["teacher", "baseline", *runs]
  body = []
  for row in rows:
    cells, per_seed = [], []
    for which in ("last", "best"):
      got = [s for s in seeds if (row, which, s) in acc]
      cells.append(_cell([acc[(row, which, s)] for s in got]))
      if which == "last":
        per_seed = [f"{acc[(row, which, s)] * 100:.2f}" for s in got]
    deltas = []
    for which in ("last", "best"):
      d = [acc[(row, which, s)] - acc[("baseline", which, s)] for s in seeds
           if (row, which, s) in acc and ("baseline", which, s) in acc]
      deltas.append("–" if row == "baseline" else _cell(d, sign=True))
    n = sum((row, "last", s) in acc for s in seeds)
    name = {"teacher": f"teacher ({archs[0]})" if archs[0] else "teacher",
            "baseline": (f"baseline ({archs[1]} alone)" if archs[1] else
                         "baseline (student alone)")}.get(row, row)
    body.append([name, str(n), *cells, *deltas, " / ".join(per_seed)])
  head = ["model", "n", "test acc % (last)", "test acc % (best on val)",
          "Δ vs baseline (last)", "Δ vs baseline (best)",
          "last, per seed"]
  return report.markdown(head, body, right_from=1)


def budget_line(b: dict) -> str:
  s = b["steps"]
  return (f"Budget: `--max_train {b['max_train']}` ({b['train_rows']} train "
          f"rows after the {b['val_rows']}-row validation hold-out), "
          f"teacher {b['teacher_epochs']:g} epochs ({s['teacher']} steps), "
          f"baseline and each student {b['epochs']:g} epochs "
          f"({s['student']} steps) at batch 64; x0.1 at "
          f"{', '.join(f'{m / PROTOCOL_EPOCHS:.3g}' for m in MILESTONES)} "
          f"of each stage; DKD warm-up {b['dkd_warmup_steps']} steps; "
          f"evaluation every {b['eval_every']:g} epochs.")


def section(base: str) -> str | None:
  """One (pair, budget) group's report text; None without results."""
  task, acc = accuracies(base)
  if not acc:
    return None
  b = rc.load_json(os.path.join(base, BUDGET_FILE), {})
  pair = os.path.basename(os.path.dirname(base))
  parts = [f"## {pair}, {os.path.basename(base)}"]
  if b:
    parts += [budget_line(b), f"Command: `{b['command']}`"]
  parts += [
      f"Test accuracy (task `{task}`), mean ± std over seeds (n); best: the "
      "checkpoint that scored best on the validation split. Δ: minus the "
      "baseline of the same seed (the kd run's; same seed, steps and "
      "initialisation), mean ± std of the paired differences.",
      table(acc, _archs(pair)),
      rc.wall_time_line([os.path.join(base, "*_s[0-9]*")])]
  if b.get("driver_wall_s"):
    parts.append(f"Driver wall time: {b['driver_wall_s'] / 60:.1f} min "
                 f"({b.get('started', '?')} to {b.get('finished', '?')}).")
  if b.get("machine"):
    parts.append(f"Machine: {b['machine']}.")
  return "\n\n".join(parts)


def _archs(pair: str) -> tuple[str, str]:
  """(teacher, student) architecture names of a configs/cifar_kd.py pair."""
  try:
    c = rc.load_config(CONFIG, f"pair={pair}")
  except ValueError:
    return ("", "")
  return c.teacher.model.name, c.student.model.name


def write_reports(root: str, figures: str) -> None:
  groups = sorted(glob.glob(os.path.join(root, "cifar_pairs", "*", "*")))
  parts = [s for s in map(section, groups) if s]
  if not parts:
    print(f"no cifar_pairs results under {root}", file=sys.stderr)
    return
  rc.write_report(os.path.join(figures, "cifar_pairs"),
                  "CIFAR recipe pairs at reduced budget on Fashion-MNIST",
                  parts)


def main(argv) -> int:
  return rc.driver_main(METHODS, run_all, write_reports, argv)


if __name__ == "__main__":
  app.run(main)
