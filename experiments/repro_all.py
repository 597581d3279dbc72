"""Runs every reproduction experiment, or rebuilds all their reports.

  python experiments/repro_all.py                 # run all (long), then report
  python experiments/repro_all.py --report_only   # tables + PNGs from workdirs

Reports go to experiments/figures/<experiment>/ (report.md and PNGs), read
from the workdirs under --root (default workdirs/repro). Each driver skips
finished runs, so re-running resumes where it stopped.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import repro_common as rc  # noqa: E402
import repro_hinton  # noqa: E402
import repro_multifashion  # noqa: E402
import repro_other_data  # noqa: E402
import repro_text  # noqa: E402

DRIVERS = (repro_hinton, repro_multifashion, repro_text, repro_other_data)


def main(argv=None) -> int:
  args = rc.parser(__doc__).parse_args(argv)
  common = ["--root", args.root, "--seeds", args.seeds, "--figures",
            args.figures] + (["--report_only"] if args.report_only else [])
  for d in DRIVERS:
    d.main(common)
  return 0


if __name__ == "__main__":
  sys.exit(main())
