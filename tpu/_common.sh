# shellcheck shell=bash
# Shared by the tpu/*.sh scripts that run on your machine (sourced, not run).
# Flag parsing, defaults and the gcloud wrappers. Written for bash >= 3.2
# (macOS) as well as Linux: no mapfile, no associative arrays, and possibly
# empty arrays are expanded as ${a[@]+"${a[@]}"} (set -u).

# shellcheck disable=SC2034  # used by the scripts that source this file
TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034
TPU_REPO_ROOT=$(cd "$TPU_SCRIPTS_DIR/.." && pwd)

log() { printf '[%s %s] %s\n' "$(date -u +%H:%M:%S)" "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }
usage_error() {
  printf '%s: %s\n\n' "${0##*/}" "$*" >&2
  usage >&2
  exit 2
}

# Flags shared by every script. A spec is "--flag:VAR" (takes a value) or
# "--flag:VAR=VALUE" (a switch that sets VAR to VALUE).
# shellcheck disable=SC2034  # used by the scripts that source this file
COMMON_SPECS=(
  "--name:TPU_NAME"
  "--zone:TPU_ZONE"
  "--project:TPU_PROJECT"
  "--ssh-flags:TPU_SSH_FLAGS"
  "--dry-run:TPU_DRY_RUN=1"
)

common_usage() {
  cat <<'EOF'
Common flags (each also read from the environment variable shown):
  --name NAME        TPU_NAME     TPU VM / pod slice name (required).
  --zone ZONE        TPU_ZONE     Zone (default: gcloud config compute/zone).
  --project ID       TPU_PROJECT  Project (default: gcloud config core/project).
  --ssh-flags FLAGS  TPU_SSH_FLAGS  Extra flags for `gcloud ... tpu-vm ssh/scp`,
                                  split on spaces, e.g. "--internal-ip" (default: none).
  --dry-run          TPU_DRY_RUN=1  Print the gcloud commands instead of running them.
  -h, --help         This message.
Flags may be written --flag VALUE or --flag=VALUE; flags override the environment.
EOF
}

# parse_flags SPEC... -- ARG...
# Sets the variables named by the specs and exports them. Parsing stops at
# "--" or at the first argument that does not start with "-"; the remaining
# arguments are left in the array REST.
parse_flags() {
  local specs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  REST=()
  local arg name val has_val spec rest var found
  while [ $# -gt 0 ]; do
    arg=$1
    case "$arg" in
      -h|--help) usage; exit 0 ;;
      --) shift; REST=("$@"); return 0 ;;
      --*=*) name=${arg%%=*}; val=${arg#*=}; has_val=1 ;;
      -*) name=$arg; val=""; has_val=0 ;;
      *) REST=("$@"); return 0 ;;
    esac
    found=0
    for spec in "${specs[@]}"; do
      case "$spec" in "$name:"*) ;; *) continue ;; esac
      found=1
      rest=${spec#"$name:"}
      case "$rest" in
        *=*)  # switch
          [ "$has_val" = 1 ] && usage_error "$name takes no value"
          var=${rest%%=*}; val=${rest#*=}; shift ;;
        *)
          var=$rest
          if [ "$has_val" = 1 ]; then
            shift
          else
            [ $# -ge 2 ] || usage_error "$name needs a value"
            val=$2; shift 2
          fi ;;
      esac
      printf -v "$var" '%s' "$val"
      # shellcheck disable=SC2163  # exporting the variable named by $var
      export "$var"
      break
    done
    [ "$found" = 1 ] || usage_error "unknown flag: $name"
  done
}

# Fills in the common defaults; call after parse_flags.
common_defaults() {
  TPU_NAME=${TPU_NAME:-}
  TPU_ZONE=${TPU_ZONE:-}
  TPU_PROJECT=${TPU_PROJECT:-}
  TPU_SSH_FLAGS=${TPU_SSH_FLAGS:-}
  TPU_DRY_RUN=${TPU_DRY_RUN:-0}
  [ -n "$TPU_NAME" ] || usage_error "missing --name (or TPU_NAME)"
  if [ -z "$TPU_ZONE" ] && command -v gcloud >/dev/null 2>&1; then
    TPU_ZONE=$(gcloud config get-value compute/zone 2>/dev/null || true)
  fi
  [ -n "$TPU_ZONE" ] || usage_error \
    "missing --zone (or TPU_ZONE, or gcloud config set compute/zone ZONE)"
  export TPU_NAME TPU_ZONE TPU_PROJECT TPU_SSH_FLAGS TPU_DRY_RUN
  PROJECT_ARGS=()
  [ -n "$TPU_PROJECT" ] && PROJECT_ARGS=("--project=$TPU_PROJECT")
  SSH_ARGS=()
  # Intentional word splitting of a user-supplied flag list.
  # shellcheck disable=SC2206
  [ -n "$TPU_SSH_FLAGS" ] && SSH_ARGS=($TPU_SSH_FLAGS)
  return 0
}

# Remote paths are relative to the remote user's home unless absolute; a
# leading "~/" is accepted and dropped.
remote_path() {
  # shellcheck disable=SC2088  # a literal "~/" typed by the user
  case "$1" in
    "~/"*) printf '%s' "${1#"~/"}" ;;
    "~") printf '.' ;;
    *) printf '%s' "$1" ;;
  esac
}

# Repository and log locations on the workers, shared by several scripts.
remote_defaults() {
  TPU_REPO_DIR=$(remote_path "${TPU_REPO_DIR:-mtkd}")
  TPU_LOG_DIR=$(remote_path "${TPU_LOG_DIR:-mtkd_logs}")
  TPU_BUCKET=${TPU_BUCKET:-}
  TPU_BUCKET=${TPU_BUCKET#gs://}
  TPU_BUCKET=${TPU_BUCKET%/}
  TPU_MOUNT_ROOT=${TPU_MOUNT_ROOT:-/gcs}
  TPU_MOUNT_ROOT=${TPU_MOUNT_ROOT%/}
  TPU_GCSFUSE_FLAGS=${TPU_GCSFUSE_FLAGS:---implicit-dirs --rename-dir-limit=1000000 --metadata-cache-ttl-secs=0 --metadata-cache-negative-ttl-secs=0}
  export TPU_REPO_DIR TPU_LOG_DIR TPU_BUCKET TPU_MOUNT_ROOT TPU_GCSFUSE_FLAGS
}

quote_cmd() {  # prints its arguments as one shell-quoted line
  local out="" a
  for a in "$@"; do out+=" $(printf '%q' "$a")"; done
  printf '%s' "${out# }"
}

gc() {  # gcloud, or only print it with --dry-run
  if [ "${TPU_DRY_RUN:-0}" = 1 ]; then
    printf '+ gcloud %s\n' "$(quote_cmd "$@")"
  else
    gcloud "$@"
  fi
}

# tpu_ssh WORKER COMMAND: runs COMMAND (one string, run by the remote user's
# login shell, bash on TPU VM images) on WORKER ("all", "0", "0,2", "1-3").
tpu_ssh() {
  gc compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" \
    ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} --worker="$1" \
    ${SSH_ARGS[@]+"${SSH_ARGS[@]}"} --command "$2"
}

# worker_cmd SUBCOMMAND ARG...: the remote command line that runs
# tpu/worker.sh from the installed repository, with the TPU_* settings it
# reads passed in its environment.
worker_cmd() {
  # shellcheck disable=SC2016  # $HOME is expanded on the worker
  local s='cd "$HOME" &&' v
  for v in TPU_REPO_DIR TPU_LOG_DIR TPU_BUCKET TPU_MOUNT_ROOT TPU_GCSFUSE_FLAGS \
           TPU_PYTHON TPU_JAX_SPEC TPU_RESTART TPU_STOP_GRACE TPU_START_CHECK; do
    s+=" $v=$(printf '%q' "${!v:-}")"
  done
  s+=" bash $(printf '%q' "$TPU_REPO_DIR/tpu/worker.sh") $(quote_cmd "$@")"
  printf '%s' "$s"
}

# tpu_state: prints the TPU's state (READY, CREATING, PREEMPTED, ...),
# MISSING when it does not exist, or UNKNOWN when gcloud failed otherwise.
tpu_state() {
  if [ "${TPU_DRY_RUN:-0}" = 1 ]; then
    gc compute tpus tpu-vm describe "$TPU_NAME" --zone "$TPU_ZONE" \
      ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} --format='value(state)' >&2
    echo DRY_RUN
    return 0
  fi
  local err out
  err=$(mktemp)
  if out=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$TPU_ZONE" \
           ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} --format='value(state)' \
           2>"$err"); then
    rm -f "$err"
    printf '%s\n' "${out:-UNKNOWN}"
  elif grep -qiE 'NOT_FOUND|not found' "$err"; then
    rm -f "$err"
    echo MISSING
  else
    sed 's/^/  gcloud: /' "$err" >&2
    rm -f "$err"
    echo UNKNOWN
  fi
}

# tpu_num_workers: number of hosts of the TPU (0 if unknown).
tpu_num_workers() {
  local ips
  ips=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$TPU_ZONE" \
          ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} \
          --format='value(networkEndpoints[].ipAddress)' 2>/dev/null) || ips=""
  if [ -z "$ips" ]; then echo 0; return 0; fi
  printf '%s\n' "$ips" | awk -F'[;,]' '{n += NF} END {print n + 0}'
}

# status_cmd: remote command printing one "mtkd-worker N: ..." status line,
# also on a worker where mtkd is not installed (yet).
status_cmd() {
  local ws
  ws=$(printf '%q' "$TPU_REPO_DIR/tpu/worker.sh")
  # shellcheck disable=SC2016  # expanded on the worker
  printf 'cd "$HOME"; if [ -f %s ]; then %s; else h=$(hostname); echo "mtkd-worker ${h##*-w-}: not-installed"; fi' \
    "$ws" "$(worker_cmd status)"
}

workdir_of() {  # prints the value of --workdir in its arguments, or nothing
  local prev="" arg
  for arg in "$@"; do
    case "$arg" in --workdir=*) printf '%s\n' "${arg#--workdir=}"; return ;; esac
    if [ "$prev" = "--workdir" ]; then printf '%s\n' "$arg"; return; fi
    prev=$arg
  done
}
