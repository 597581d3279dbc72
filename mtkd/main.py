"""Command-line entry point: parses flags and the config, then runs.

  python -m mtkd.main --config=configs/quickstart.py --workdir=/tmp/qs
  python -m mtkd.main --config=configs/quickstart.py:smoke --workdir=/tmp/s \
      --config.student.steps=100
  python -m mtkd.main --config=configs/quickstart.py --workdir=/tmp/qs --verify
"""

import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtkd.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all outputs.")
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Check every artifact in --workdir (checkpoints, caches, "
    "results) without training; exit 1 if any problem is found.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume stages whose checkpoints were "
    "written with different result-affecting settings.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  # Import jax after flag parsing.
  from mtkd import distributed, experiment, preemption, verify
  try:
    if _VERIFY.value:
      problems = verify.verify_workdir(_CONFIG.value, _WORKDIR.value)
      for p in problems:
        print(f"PROBLEM: {p}")
      print(f"mtkd --verify: {len(problems)} problem(s) in {_WORKDIR.value}.")
      sys.exit(1 if problems else 0)
    distributed.initialize(_CONFIG.value.parallel)
    preemption.install()  # After initialize, which installs its own handler.
    experiment.run(_CONFIG.value, _WORKDIR.value,
                   allow_config_change=_ALLOW_CHANGE.value)
  except UserError as e:
    print(f"\nmtkd: error: {e}", file=sys.stderr)
    sys.exit(2)
  except preemption.Preempted as e:
    print(f"\nmtkd: stopped by {e.signal_name} at {e.where}; a checkpoint was "
          "saved. Re-run the same command to resume.", file=sys.stderr)
    sys.exit(128 + getattr(signal, e.signal_name))


if __name__ == "__main__":
  app.run(main)
