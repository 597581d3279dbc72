#!/usr/bin/env bash
# Deletes the TPU VM / pod slice (its disks go with it; a GCS workdir stays).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/delete.sh --name NAME [--zone ZONE] [--yes] [--async]

Deletes the TPU. Everything on the workers' disks goes (the code, the .venv, the
per-worker logs under ~/TPU_LOG_DIR: copy what you need first, e.g. with
`gcloud compute tpus tpu-vm scp NAME:mtkd_logs/latest.log . --worker=1`).
The workdir in the bucket is not touched.

Flags (environment variable, default):
  --yes, -y   TPU_YES=1    Do not ask for confirmation (default: ask on a terminal,
                           refuse without one).
  --async     TPU_ASYNC=1  Return without waiting for the deletion to finish.

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" \
  "--yes:TPU_YES=1" "-y:TPU_YES=1" "--async:TPU_ASYNC=1" -- "$@"
[ ${#REST[@]} -eq 0 ] || usage_error "unexpected argument: ${REST[0]}"
common_defaults

if [ "${TPU_YES:-0}" != 1 ] && [ "$TPU_DRY_RUN" != 1 ]; then
  [ -t 0 ] || die "not a terminal: pass --yes to delete $TPU_NAME"
  printf 'Delete TPU %s in %s? [y/N] ' "$TPU_NAME" "$TPU_ZONE" >&2
  read -r answer
  case "$answer" in y|Y|yes|YES) ;; *) die "not deleted" ;; esac
fi
args=(compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet)
[ "${TPU_ASYNC:-0}" = 1 ] && args+=(--async)
[ ${#PROJECT_ARGS[@]} -gt 0 ] && args+=("${PROJECT_ARGS[@]}")
log "deleting $TPU_NAME"
gc "${args[@]}"
