#!/usr/bin/env bash
# Starts the same mtkd command on every worker of a TPU VM / pod slice, in the
# background (nohup), with --config.parallel.distributed=True appended.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/launch.sh --name NAME [--zone ZONE] [flags] -- python -m mtkd.main \
           --config=configs/quickstart.py --workdir=/gcs/BUCKET/mtkd/quickstart [--config.X=Y ...]

Runs the command after "--" on --worker=all, in ~/TPU_REPO_DIR with its .venv first
on PATH (so "python" is the venv's), under nohup + setsid, and returns. Each worker
appends stdout+stderr to its own file ~/TPU_LOG_DIR/mtkd-<UTC time>-w<worker>.log
(latest.log links to it); tpu/logs.sh streams it. --config.parallel.distributed=True
is appended unless the command already sets it: jax.distributed.initialize() finds
the other workers through the TPU metadata server. Prefix the command with
`env VAR=value` to set environment variables for the run.

The workdir must be a path every worker sees: the gcsfuse mount of --bucket
(TPU_MOUNT_ROOT/BUCKET/...). Re-running the same command resumes from the
workdir's checkpoints; a finished workdir is skipped stage by stage.

Flags (environment variable, default):
  --bucket BUCKET     TPU_BUCKET ("")  Mounted first if not mounted (after a reboot);
                      also used to check that --workdir lies in the mount.
  --mount-root DIR    TPU_MOUNT_ROOT (/gcs)
  --gcsfuse-flags F   TPU_GCSFUSE_FLAGS (see install.sh)
  --repo-dir DIR      TPU_REPO_DIR (mtkd)  Checkout on the workers (relative to home).
  --log-dir DIR       TPU_LOG_DIR (mtkd_logs)  Log directory on each worker's own disk.
  --restart           TPU_RESTART=1  Stop a run that is still going first (default:
                      refuse to start a second one).
  --stop-grace SECS   TPU_STOP_GRACE (120)  With --restart: seconds between TERM and KILL.

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" \
  "--bucket:TPU_BUCKET" "--mount-root:TPU_MOUNT_ROOT" "--gcsfuse-flags:TPU_GCSFUSE_FLAGS" \
  "--repo-dir:TPU_REPO_DIR" "--log-dir:TPU_LOG_DIR" "--restart:TPU_RESTART=1" \
  "--stop-grace:TPU_STOP_GRACE" -- "$@"
[ ${#REST[@]} -gt 0 ] || usage_error "missing the mtkd command after --"
common_defaults
remote_defaults
TPU_RESTART=${TPU_RESTART:-0}
TPU_STOP_GRACE=${TPU_STOP_GRACE:-120}
CMD=("${REST[@]}")

# Find the workdir to warn early about a path the workers do not share.
workdir=$(workdir_of "${CMD[@]}")
[ -n "$workdir" ] || die "the command has no --workdir; mtkd needs one on a path all workers see"
if [ -n "$TPU_BUCKET" ]; then
  case "$workdir" in
    "$TPU_MOUNT_ROOT/$TPU_BUCKET"/*) ;;
    *) log "warning: --workdir=$workdir is not under the bucket mount" \
           "$TPU_MOUNT_ROOT/$TPU_BUCKET/; on a multi-host slice every worker must see it" ;;
  esac
else
  log "note: no --bucket given; --workdir=$workdir must be shared by all workers" \
      "(single-host TPU VMs may use a local path)"
fi

log "launching on all workers of $TPU_NAME: $(quote_cmd "${CMD[@]}")"
tpu_ssh all "$(worker_cmd start "${CMD[@]}")"
log "started. Logs: tpu/logs.sh --name $TPU_NAME --zone $TPU_ZONE [--worker N]"
