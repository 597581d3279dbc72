#!/usr/bin/env bash
# Prints the TPU's state and, when it is READY, the mtkd run's state per worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/status.sh --name NAME [--zone ZONE]

Prints "state: READY|CREATING|PREEMPTED|...|MISSING", then one line per worker:
"mtkd-worker N: running pid P log L", "exited rc R log L" (mtkd exits 2 on a
config/data error), "killed (no exit status)", "not-started" or "not-installed".

Flags (environment variable, default):
  --log-dir DIR    TPU_LOG_DIR (mtkd_logs)
  --repo-dir DIR   TPU_REPO_DIR (mtkd)

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" "--log-dir:TPU_LOG_DIR" "--repo-dir:TPU_REPO_DIR" -- "$@"
[ ${#REST[@]} -eq 0 ] || usage_error "unexpected argument: ${REST[0]}"
common_defaults
remote_defaults

state=$(tpu_state)
echo "state: $state"
if [ "$state" = READY ] || [ "$state" = DRY_RUN ]; then
  tpu_ssh all "$(status_cmd)"
fi
