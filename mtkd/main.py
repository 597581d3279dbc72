"""Command-line entry point: parses flags and the config, then runs.

  python -m mtkd.main --config=configs/quickstart.py --workdir=/tmp/qs
  python -m mtkd.main --config=configs/quickstart.py:smoke --workdir=/tmp/s \
      --config.student.steps=100
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtkd.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  from mtkd import distributed, experiment  # Import jax after flag parsing.
  try:
    distributed.initialize(_CONFIG.value.parallel)
    experiment.run(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    print(f"\nmtkd: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
