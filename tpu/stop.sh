#!/usr/bin/env bash
# Stops the mtkd run on every worker (the TPU VM keeps running and billing);
# with --vm also stops the TPU VM itself.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/stop.sh --name NAME [--zone ZONE] [--stop-grace SECS] [--vm]

Sends TERM to the run's process group on every worker: mtkd finishes the current step,
writes a checkpoint and exits with status 143. Whatever is still there after the grace
period gets KILL. Launching the same command again resumes from the workdir.

Flags (environment variable, default):
  --stop-grace SECS  TPU_STOP_GRACE (120)  Seconds between TERM and KILL (time for the
                     checkpoint to reach the bucket).
  --vm               TPU_STOP_VM=1  Then `gcloud compute tpus tpu-vm stop` the TPU (0).
                     gcloud's help says spot/preemptible TPUs cannot be restarted, and
                     as far as we know pod slices cannot be stopped: use delete.sh there.
  --log-dir DIR      TPU_LOG_DIR (mtkd_logs)
  --repo-dir DIR     TPU_REPO_DIR (mtkd)

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" \
  "--stop-grace:TPU_STOP_GRACE" "--vm:TPU_STOP_VM=1" \
  "--log-dir:TPU_LOG_DIR" "--repo-dir:TPU_REPO_DIR" -- "$@"
[ ${#REST[@]} -eq 0 ] || usage_error "unexpected argument: ${REST[0]}"
common_defaults
remote_defaults
TPU_STOP_GRACE=${TPU_STOP_GRACE:-120}

log "stopping the mtkd run on all workers of $TPU_NAME"
tpu_ssh all "$(worker_cmd stop)"
if [ "${TPU_STOP_VM:-0}" = 1 ]; then
  log "stopping the TPU VM $TPU_NAME"
  gc compute tpus tpu-vm stop "$TPU_NAME" --zone "$TPU_ZONE" \
    ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"}
fi
