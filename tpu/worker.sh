#!/usr/bin/env bash
# Runs ON each TPU VM worker; the tpu/*.sh scripts on your machine call it
# over `gcloud compute tpus tpu-vm ssh`. You normally do not run it yourself.
#
#   worker.sh setup          Python >= 3.11, .venv via scripts/setup.sh, jax[tpu],
#                            gcsfuse and the bucket mount (if TPU_BUCKET is set).
#   worker.sh mount          Mount TPU_BUCKET at TPU_MOUNT_ROOT/TPU_BUCKET (idempotent).
#   worker.sh check          jax.distributed.initialize() and print the devices
#                            (run on all workers at once).
#   worker.sh start CMD...   Start CMD (+ --config.parallel.distributed=True) under
#                            nohup in the repo, with .venv/bin first on PATH.
#   worker.sh status         One line: running / exited rc N / killed / not-started.
#   worker.sh stop           TERM the run's process group (mtkd checkpoints and exits
#                            143), KILL it if still there after TPU_STOP_GRACE s.
#   worker.sh log N FOLLOW   Last N lines of the latest log (FOLLOW=1: tail -F).
#   worker.sh logs           List this worker's log files.
#
# Settings (environment; paths relative to $HOME unless absolute):
#   TPU_REPO_DIR (mtkd), TPU_LOG_DIR (mtkd_logs), TPU_BUCKET (none),
#   TPU_MOUNT_ROOT (/gcs), TPU_GCSFUSE_FLAGS, TPU_PYTHON (auto),
#   TPU_JAX_SPEC (same), TPU_RESTART (0), TPU_STOP_GRACE (120),
#   TPU_START_CHECK (3: seconds after a start to look for an instant failure),
#   TPU_WORKER_ID (default: the TPU metadata server's agent-worker-number).
set -euo pipefail

cd "$HOME"
REPO_DIR=${TPU_REPO_DIR:-mtkd}
LOG_DIR=${TPU_LOG_DIR:-mtkd_logs}
BUCKET=${TPU_BUCKET:-}
MOUNT_ROOT=${TPU_MOUNT_ROOT:-/gcs}
GCSFUSE_FLAGS=${TPU_GCSFUSE_FLAGS:---implicit-dirs --rename-dir-limit=1000000 --metadata-cache-ttl-secs=0 --metadata-cache-negative-ttl-secs=0}
PYTHON=${TPU_PYTHON:-auto}
JAX_SPEC=${TPU_JAX_SPEC:-same}
RESTART=${TPU_RESTART:-0}
STOP_GRACE=${TPU_STOP_GRACE:-120}
DIST_FLAG=--config.parallel.distributed=True

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo

worker_id() {
  if [ -n "${TPU_WORKER_ID:-}" ]; then echo "$TPU_WORKER_ID"; return; fi
  local id
  id=$(curl -sf -m 5 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null) || id=""
  case "$id" in
    ''|*[!0-9]*) id=$(hostname); id=${id##*-w-}
                 case "$id" in ''|*[!0-9]*) id=0 ;; esac ;;
  esac
  echo "$id"
}
W=$(worker_id)
say() { echo "mtkd-worker $W: $*"; }
fail() { say "error: $*" >&2; exit 1; }

abs_log_dir() { mkdir -p "$LOG_DIR" && (cd "$LOG_DIR" && pwd); }

python_ok() {  # python_ok EXE: true if EXE exists and is Python >= 3.11
  command -v "$1" >/dev/null 2>&1 \
    && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

pick_python() {
  if [ "$PYTHON" != auto ]; then
    python_ok "$PYTHON" || fail "TPU_PYTHON=$PYTHON is not a Python >= 3.11"
    echo "$PYTHON"; return
  fi
  local p
  for p in python3.13 python3.12 python3.11 python3; do
    if python_ok "$p"; then echo "$p"; return; fi
  done
  # TPU VM images are Ubuntu 22.04 (Python 3.10); its archive has 3.11.
  say "no Python >= 3.11; installing python3.11 from the distribution" >&2
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq python3.11 python3.11-venv >&2
  python_ok python3.11 || fail "could not install python3.11; set TPU_PYTHON"
  echo python3.11
}

do_mount() {
  [ -n "$BUCKET" ] || return 0
  local mnt="$MOUNT_ROOT/$BUCKET"
  if mountpoint -q "$mnt" 2>/dev/null; then
    say "gs://$BUCKET already mounted at $mnt"; return 0
  fi
  command -v gcsfuse >/dev/null 2>&1 || fail "gcsfuse is not installed (run install.sh)"
  $SUDO mkdir -p "$mnt"
  $SUDO chown "$(id -u):$(id -g)" "$mnt"
  local flags
  # shellcheck disable=SC2206  # a user-supplied flag list, split on spaces
  flags=($GCSFUSE_FLAGS)
  gcsfuse "${flags[@]}" "$BUCKET" "$mnt"
  say "mounted gs://$BUCKET at $mnt"
}

install_gcsfuse() {
  command -v gcsfuse >/dev/null 2>&1 && return 0
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || fail "cannot tell the distribution's codename for the gcsfuse repo"
  say "installing gcsfuse (gcsfuse-$codename)"
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
    | $SUDO tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$codename main" \
    | $SUDO tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq gcsfuse
}

do_setup() {
  [ -f "$REPO_DIR/scripts/setup.sh" ] || fail "no mtkd checkout at $HOME/$REPO_DIR"
  local py
  py=$(pick_python)
  cd "$REPO_DIR"
  if [ -x .venv/bin/python ] && ! python_ok .venv/bin/python; then
    say "removing .venv built with Python < 3.11"; rm -rf .venv
  fi
  if [ ! -x .venv/bin/python ]; then
    # scripts/setup.sh would use `python3`; create the venv with $py first.
    if ! "$py" -m venv .venv; then
      rm -rf .venv
      $SUDO apt-get install -y -qq "${py##*/}-venv"
      "$py" -m venv .venv
    fi
  fi
  say "scripts/setup.sh with $(.venv/bin/python --version)"
  bash scripts/setup.sh
  local spec
  if [ "$JAX_SPEC" = same ]; then
    spec="jax[tpu]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
    .venv/bin/pip install -q "$spec"
  else
    spec=$JAX_SPEC
    .venv/bin/pip install -q -U "$spec"
  fi
  say "installed $spec: $(.venv/bin/python -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__)')"
  cd "$HOME"
  if [ -n "$BUCKET" ]; then
    install_gcsfuse
    do_mount
  fi
}

do_check() {
  cd "$REPO_DIR"
  .venv/bin/python - "$W" <<'EOF'
import sys
import jax
jax.distributed.initialize()
print(f"mtkd-worker {sys.argv[1]}: check ok: process {jax.process_index()} of "
      f"{jax.process_count()}, {jax.local_device_count()} local / "
      f"{jax.device_count()} global {jax.devices()[0].platform} devices",
      flush=True)
EOF
}

run_pid() {  # prints the pid of this worker's run if it is alive
  local pidf pid
  pidf="$LOG_DIR/mtkd.pid"
  [ -f "$pidf" ] || return 1
  pid=$(cat "$pidf")
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the wrapper's command line names itself mtkd-run.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q mtkd-run || return 1
  echo "$pid"
}

do_stop() {
  local pid i
  if ! pid=$(run_pid); then say "not running"; return 0; fi
  say "stopping pid $pid (process group)"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_GRACE; i++)); do
    run_pid >/dev/null || { say "stopped"; return 0; }  # gone, or a zombie
    sleep 1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  say "killed after ${STOP_GRACE}s"
}

do_start() {
  [ $# -gt 0 ] || fail "start: no command given"
  [ -x "$REPO_DIR/.venv/bin/python" ] || fail "$HOME/$REPO_DIR/.venv is missing: run install.sh first"
  local pid
  if pid=$(run_pid); then
    [ "$RESTART" = 1 ] || fail "a run is already going (pid $pid); stop.sh it or launch with --restart"
    do_stop
  fi
  do_mount
  local logs cmd a has_dist=0 log
  logs=$(abs_log_dir)
  cmd=("$@")
  for a in "$@"; do
    case "$a" in --config.parallel.distributed|--config.parallel.distributed=*) has_dist=1 ;; esac
  done
  [ "$has_dist" = 1 ] || cmd+=("$DIST_FLAG")
  log="$logs/mtkd-$(date -u +%Y%m%dT%H%M%SZ)-w$W.log"
  rm -f "$logs/mtkd.rc"
  {
    echo "# mtkd-worker $W on $(hostname) at $(date -u +%FT%TZ)"
    echo "# cwd: $HOME/$REPO_DIR"
    printf '# command:'; printf ' %q' "${cmd[@]}"; echo
  } >"$log"
  cd "$REPO_DIR"
  # setsid: the run gets its own process group (stop.sh signals that group)
  # and survives the ssh session. The wrapper records the exit status; its
  # no-op TERM/INT trap keeps it alive while mtkd, on SIGTERM, finishes the
  # step, writes a checkpoint and exits 143, so "running" lasts until then.
  # shellcheck disable=SC2016  # expanded by the wrapper shell
  PATH="$PWD/.venv/bin:$PATH" PYTHONUNBUFFERED=1 MTKD_RC_FILE="$logs/mtkd.rc" \
    nohup setsid bash -c 'trap : TERM INT; "$@"; rc=$?; echo "$rc" >"$MTKD_RC_FILE"; exit "$rc"' \
    mtkd-run "${cmd[@]}" >>"$log" 2>&1 </dev/null &
  pid=$!
  cd "$HOME"
  echo "$pid" >"$logs/mtkd.pid"
  ln -sfn "$log" "$logs/latest.log"
  sleep "${TPU_START_CHECK:-3}"
  if ! run_pid >/dev/null; then
    local rc
    rc=$(cat "$logs/mtkd.rc" 2>/dev/null || echo "?")
    if [ "$rc" != 0 ]; then
      tail -n 20 "$log" | sed "s/^/mtkd-worker $W: | /" >&2
      fail "the run exited at once (rc $rc); log $log"
    fi
  fi
  say "started pid $pid, log $log"
}

do_status() {
  local pid logs rc
  logs=$(abs_log_dir)
  if pid=$(run_pid); then
    say "running pid $pid log $(readlink -f "$logs/latest.log")"
  elif [ -f "$logs/mtkd.rc" ]; then
    rc=$(cat "$logs/mtkd.rc")
    say "exited rc $rc log $(readlink -f "$logs/latest.log")"
  elif [ -f "$logs/mtkd.pid" ]; then
    say "killed (no exit status) log $(readlink -f "$logs/latest.log")"
  else
    say "not-started"
  fi
}

sub=${1:-}
[ $# -gt 0 ] && shift
case "$sub" in
  setup) do_setup ;;
  mount) do_mount ;;
  check) do_check ;;
  start) do_start "$@" ;;
  status) do_status ;;
  stop) do_stop ;;
  log)
    lines=${1:-100}; follow=${2:-1}
    f="$LOG_DIR/latest.log"
    [ -e "$f" ] || fail "no log yet in $HOME/$LOG_DIR"
    if [ "$follow" = 1 ]; then exec tail -n "$lines" -F "$f"; else tail -n "$lines" "$f"; fi ;;
  logs) ls -l "$LOG_DIR" ;;
  *) echo "usage: worker.sh setup|mount|check|start CMD...|status|stop|log [N] [FOLLOW]|logs" >&2
     exit 2 ;;
esac
