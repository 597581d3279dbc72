#!/usr/bin/env bash
# Keeps an mtkd run going on (spot / preemptible) TPU capacity until
# WORKDIR/results.json exists: recreates a missing or preempted TPU, reinstalls,
# relaunches the same command; mtkd resumes from the workdir's checkpoints.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/resume_until_done.sh --name NAME [--zone ZONE] --bucket BUCKET [--spot] [flags] \
           -- python -m mtkd.main --config=configs/quickstart.py --workdir=/gcs/BUCKET/mtkd/run1

Loop (run it where it can keep going for hours: tmux, screen, or nohup on a small VM):
  1. WORKDIR/results.json exists            -> done, exit 0 (--delete-when-done: delete TPU).
  2. TPU missing                            -> create.sh, install.sh, launch.sh.
     TPU PREEMPTED / TERMINATED             -> delete.sh, then as above.
     TPU STOPPED                            -> gcloud tpu-vm start, install.sh, launch.sh.
     TPU CREATING / STARTING / REPAIRING... -> wait --retry-sleep.
     TPU READY, run going on all workers    -> wait --poll (a run found going when the
                                               script starts is taken to be this command).
     TPU READY, mtkd exited 2 on a worker   -> stop, exit 2 (a config/data error:
       after this script launched it           relaunching would fail the same way).
     TPU READY, run not going everywhere    -> launch.sh --restart (install.sh first if
                                               mtkd is not installed or a launch failed).
Each create / relaunch / failed gcloud call counts as one try; after --max-tries the
script exits 1. Waiting for a READY TPU, or on a running job, is not a try.

Flags (environment variable, default):
  --max-tries N          TPU_MAX_TRIES (10)
  --poll SECS            TPU_POLL_SECS (300)  Sleep between checks while the run is going.
  --retry-sleep SECS     TPU_RETRY_SECS (120)  Sleep after a failed try or while the TPU
                         is in a transitional state.
  --results PATH|URI     TPU_RESULTS (derived)  What to look for. Default: the command's
                         --workdir + /results.json, checked as gs://BUCKET/... with
                         `gcloud storage ls` when the workdir is under the bucket mount,
                         else with `test -f` on worker 0.
  --delete-when-done     TPU_DELETE_WHEN_DONE=1  Delete the TPU once results exist (0).
Passed on to create.sh: --type, --version, --spot, --preemptible, --reserved,
  --service-account, --scopes, --network, --subnetwork, --labels, --create-flags.
Passed on to install.sh: --repo-url, --ref, --repo-dir, --bucket, --mount-root,
  --gcsfuse-flags, --python, --jax-spec.
Passed on to launch.sh: --log-dir, --stop-grace.
See those scripts' -h for meanings and defaults.

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" \
  "--max-tries:TPU_MAX_TRIES" "--poll:TPU_POLL_SECS" "--retry-sleep:TPU_RETRY_SECS" \
  "--results:TPU_RESULTS" "--delete-when-done:TPU_DELETE_WHEN_DONE=1" \
  "--type:TPU_TYPE" "--version:TPU_VERSION" \
  "--spot:TPU_CAPACITY=spot" "--preemptible:TPU_CAPACITY=preemptible" \
  "--reserved:TPU_CAPACITY=reserved" \
  "--service-account:TPU_SERVICE_ACCOUNT" "--scopes:TPU_SCOPES" \
  "--network:TPU_NETWORK" "--subnetwork:TPU_SUBNETWORK" "--labels:TPU_LABELS" \
  "--create-flags:TPU_CREATE_FLAGS" \
  "--repo-url:TPU_REPO_URL" "--ref:TPU_REPO_REF" "--repo-dir:TPU_REPO_DIR" \
  "--bucket:TPU_BUCKET" "--mount-root:TPU_MOUNT_ROOT" "--gcsfuse-flags:TPU_GCSFUSE_FLAGS" \
  "--python:TPU_PYTHON" "--jax-spec:TPU_JAX_SPEC" \
  "--log-dir:TPU_LOG_DIR" "--stop-grace:TPU_STOP_GRACE" -- "$@"
[ ${#REST[@]} -gt 0 ] || usage_error "missing the mtkd command after --"
common_defaults
remote_defaults
[ "$TPU_DRY_RUN" != 1 ] || usage_error "--dry-run is not supported here; dry-run the single scripts"
CMD=("${REST[@]}")
MAX_TRIES=${TPU_MAX_TRIES:-10}
POLL=${TPU_POLL_SECS:-300}
RETRY=${TPU_RETRY_SECS:-120}
case "$MAX_TRIES" in ''|*[!0-9]*) usage_error "--max-tries takes an integer" ;; esac
for v in "$POLL" "$RETRY"; do  # Seconds, fractions allowed (the selftest polls fast).
  [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_error "--poll and --retry-sleep take seconds, e.g. 300 or 0.5"
done

# Where results.json will appear.
workdir=$(workdir_of "${CMD[@]}")
[ -n "$workdir" ] || die "the command has no --workdir"
RESULTS=${TPU_RESULTS:-}
if [ -z "$RESULTS" ]; then
  case "$workdir" in
    "$TPU_MOUNT_ROOT/$TPU_BUCKET"/*)
      if [ -n "$TPU_BUCKET" ]; then
        rel=${workdir#"$TPU_MOUNT_ROOT/$TPU_BUCKET"/}
        RESULTS="gs://$TPU_BUCKET/${rel%/}/results.json"
      fi ;;
  esac
  if [ -z "$RESULTS" ]; then
    case "$workdir" in
      /*) RESULTS="${workdir%/}/results.json" ;;
      *) RESULTS="$TPU_REPO_DIR/${workdir%/}/results.json" ;;  # mtkd runs in the repo
    esac
  fi
fi

here="$TPU_SCRIPTS_DIR"
tries=0
need_install=0
launched=0  # set once this script has launched the command

results_exist() {
  case "$RESULTS" in
    gs://*) gcloud storage ls ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} "$RESULTS" >/dev/null 2>&1 ;;
    *) [ "$(tpu_state)" = READY ] \
         && tpu_ssh 0 "cd \"\$HOME\" && test -f $(printf '%q' "$RESULTS")" >/dev/null 2>&1 ;;
  esac
}

try() {  # counts one try, exits when they are used up
  tries=$((tries + 1))
  if [ "$tries" -gt "$MAX_TRIES" ]; then
    die "giving up after $MAX_TRIES tries; $RESULTS does not exist yet (re-run this script to go on)"
  fi
  log "try $tries/$MAX_TRIES: $*"
}

install_and_launch() {
  launched=1
  if [ "$1" = 1 ]; then
    "$here/install.sh" || { need_install=1; return 1; }
  fi
  need_install=0
  TPU_RESTART=1 "$here/launch.sh" -- "${CMD[@]}" || { need_install=1; return 1; }
}

recreate() {  # recreate DELETE_FIRST
  if [ "$1" = 1 ]; then "$here/delete.sh" --yes || return 1; fi
  "$here/create.sh" || return 1
  install_and_launch 1
}

log "watching $TPU_NAME ($TPU_ZONE) until $RESULTS exists"
while :; do
  if results_exist; then
    log "done: $RESULTS exists"
    if [ "${TPU_DELETE_WHEN_DONE:-0}" = 1 ]; then "$here/delete.sh" --yes; fi
    exit 0
  fi
  state=$(tpu_state)
  case "$state" in
    READY)
      status=$(tpu_ssh all "$(status_cmd)" 2>/dev/null || true)
      lines=$(printf '%s\n' "$status" | grep -Eo 'mtkd-worker [^:]*: .*' || true)
      n=$(printf '%s\n' "$lines" | grep -c . || true)
      expected=$(tpu_num_workers)
      [ "$expected" -gt 0 ] || expected=$n
      running=$(printf '%s\n' "$lines" | grep -c ': running ' || true)
      rc2=$(printf '%s\n' "$lines" | grep -c ': exited rc 2 ' || true)
      rc0=$(printf '%s\n' "$lines" | grep -c ': exited rc 0 ' || true)
      not_installed=$(printf '%s\n' "$lines" | grep -c ': not-installed' || true)
      if [ "$n" -eq 0 ]; then
        try "workers of $TPU_NAME unreachable over ssh"; sleep "$RETRY"; continue
      fi
      if [ "$running" -eq "$expected" ]; then
        [ "$launched" = 1 ] || log "a run is already going on all workers; taking it" \
          "for this command (if it is not, tpu/stop.sh it and start again)"
        log "READY, running on $running/$expected workers; next check in ${POLL}s"
        sleep "$POLL"; continue
      fi
      printf '%s\n' "$lines" | sed 's/^/  /' >&2
      if [ "$launched" = 0 ]; then
        # Exit statuses left by an earlier run, maybe of another command:
        # not evidence about this one. Launch it.
        rc2=0; rc0=0
      fi
      if [ "$rc2" -gt 0 ]; then
        "$here/stop.sh" || true
        log "error: mtkd exited with status 2 (configuration or data error) on $rc2" \
            "worker(s); see tpu/logs.sh --worker N, fix the command and re-run"
        exit 2
      fi
      if [ "$rc0" -eq "$expected" ]; then
        results_exist && continue
        die "mtkd exited 0 on all workers but $RESULTS does not exist; pass --results"
      fi
      inst=$need_install
      [ "$not_installed" -gt 0 ] && inst=1
      try "the run is not going on all workers ($running/$expected): (re)launching on all"
      # Free the chips first: the rest of a broken run, and install's check.
      [ "$running" -gt 0 ] && { "$here/stop.sh" || true; }
      if install_and_launch "$inst"; then sleep "$POLL"; else sleep "$RETRY"; fi
      ;;
    MISSING)
      try "$TPU_NAME does not exist: creating, installing, launching"
      if recreate 0; then sleep "$POLL"; else sleep "$RETRY"; fi
      ;;
    PREEMPTED|TERMINATED)
      try "$TPU_NAME is $state: deleting and recreating"
      if recreate 1; then sleep "$POLL"; else sleep "$RETRY"; fi
      ;;
    STOPPED)
      try "$TPU_NAME is STOPPED: starting it"
      if gc compute tpus tpu-vm start "$TPU_NAME" --zone "$TPU_ZONE" \
           ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} && install_and_launch 1; then
        sleep "$POLL"
      else
        sleep "$RETRY"
      fi
      ;;
    UNKNOWN)
      try "could not read the state of $TPU_NAME"; sleep "$RETRY"
      ;;
    *)
      log "$TPU_NAME is $state; waiting ${RETRY}s"; sleep "$RETRY"
      ;;
  esac
done
