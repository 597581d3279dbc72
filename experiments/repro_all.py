"""Runs every reproduction experiment, or rebuilds all their reports.

From the repository root:

  python -m experiments.repro_all                 # run all (long), then report
  python -m experiments.repro_all --report_only   # tables + PNGs from workdirs

Reports go to experiments/figures/<experiment>/ (report.md and PNGs), read
from the workdirs under --root (default workdirs/repro). Each driver skips
finished runs, so re-running resumes where it stopped. The shared flags
(--root, --seeds, --report_only, --figures) reach every driver and
repro_hinton's own flags reach it; --methods is per driver, so it is refused
here: run that driver alone.
"""

from absl import app, flags

from experiments import (
    repro_common,
    repro_hinton,
    repro_multifashion,
    repro_other_data,
    repro_text,
    repro_views,
)

DRIVERS = (repro_hinton, repro_multifashion, repro_text, repro_other_data,
           repro_views)

flags.adopt_module_key_flags(repro_common)
flags.adopt_module_key_flags(repro_hinton)


def main(argv) -> int:
  if flags.FLAGS["methods"].present:
    raise app.UsageError("--methods names one driver's methods; run that "
                         "driver alone (python -m experiments.repro_...).")
  for d in DRIVERS:
    d.main(argv)
  return 0


if __name__ == "__main__":
  app.run(main)
