"""The methods whose data is not MultiFashion, under a reduced budget.

arg `method`: task_level (configs/kd_task_level.py on digits_mixed: softmax,
sigmoid and regression KD, as that config sets them) | transfer
(configs/transfer.py: Fashion-MNIST source trunk -> MNIST-10k student,
fine-tuned) | transfer_frozen (frozen source trunk, heads only) |
transfer_kd (teacher initialised from the source, student distilled).
Budget for the transfer runs (2-core CPU): source 469 steps (1 epoch of
Fashion-MNIST), teacher 469 steps (7.5 epochs of the 8k MNIST train rows),
student 500 steps. task_level keeps its config's sizes (1797 examples).

Used by experiments/repro_other_data.py. Reproduce one run:
  python -m mtkd.main --config=configs/repro_other_data.py:method=transfer_kd \
      --workdir=W --config.seed=0 --config.teacher.workdir=T
Smoke run (CI):
  python -m mtkd.main --config=configs/repro_other_data.py:method=task_level,smoke \
      --workdir=/tmp/od
"""

import importlib.util
import os

import ml_collections

from mtkd.configs_util import parse_arg

METHODS = {
    "task_level": ("kd_task_level", ""),
    "transfer": ("transfer", ""),
    "transfer_frozen": ("transfer", "frozen"),
    "transfer_kd": ("transfer", "kd"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, method="task_level")
  if args["method"] not in METHODS:
    raise ValueError(f"Unknown method {args['method']!r}; known: "
                     f"{sorted(METHODS)}.")
  name, sub = METHODS[args["method"]]
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_repro_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(",".join(filter(None, [sub, "smoke" * args["smoke"]])))
  if not args["smoke"] and name == "transfer":
    c.source.steps = 469
    c.teacher.steps = 469
    c.student.steps = 500
  return c
