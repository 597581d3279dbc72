#!/usr/bin/env bash
# Streams (tail -F) one worker's mtkd log over ssh; Ctrl-C stops watching, not the run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/logs.sh --name NAME [--zone ZONE] [--worker N] [--lines N] [--no-follow | --list]

Shows ~/TPU_LOG_DIR/latest.log of one worker (the log of the last launch there).
Process 0 (worker 0) prints mtkd's progress and results; the other workers' logs
mostly matter when something fails there.

Flags (environment variable, default):
  --worker N       TPU_LOG_WORKER (0)  Which worker.
  --lines N        TPU_LOG_LINES (100)  Lines of history to show first.
  --no-follow      TPU_LOG_FOLLOW=0  Print and exit instead of following (default 1).
  --list           TPU_LOG_LIST=1  List the worker's log files instead.
  --log-dir DIR    TPU_LOG_DIR (mtkd_logs)  As given to launch.sh.
  --repo-dir DIR   TPU_REPO_DIR (mtkd)

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" \
  "--worker:TPU_LOG_WORKER" "--lines:TPU_LOG_LINES" "--no-follow:TPU_LOG_FOLLOW=0" \
  "--list:TPU_LOG_LIST=1" "--log-dir:TPU_LOG_DIR" "--repo-dir:TPU_REPO_DIR" -- "$@"
[ ${#REST[@]} -eq 0 ] || usage_error "unexpected argument: ${REST[0]}"
common_defaults
remote_defaults
TPU_LOG_WORKER=${TPU_LOG_WORKER:-0}
case "$TPU_LOG_WORKER" in ''|*[!0-9]*) usage_error "--worker takes one worker number" ;; esac

if [ "${TPU_LOG_LIST:-0}" = 1 ]; then
  tpu_ssh "$TPU_LOG_WORKER" "$(worker_cmd logs)"
else
  tpu_ssh "$TPU_LOG_WORKER" "$(worker_cmd log "${TPU_LOG_LINES:-100}" "${TPU_LOG_FOLLOW:-1}")"
fi
