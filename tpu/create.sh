#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice with `gcloud compute tpus tpu-vm create`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/create.sh --name NAME [--zone ZONE] [--type TYPE] [--version VERSION]
                     [--spot | --preemptible | --reserved] [flags]

Creates the TPU VM (single host) or pod slice (several hosts, "workers").

Flags (environment variable, default):
  --type TYPE            TPU_TYPE (v4-16)  Accelerator type: v4-8, v4-16, v5litepod-16,
                         v5p-8, v6e-16, ... (`gcloud compute tpus accelerator-types list
                         --zone ZONE` lists what a zone offers).
  --version VERSION      TPU_VERSION (from TYPE)  TPU software / runtime version:
                         v2*, v3*, v4* -> tpu-ubuntu2204-base; v5litepod*/v5e* ->
                         v2-alpha-tpuv5-lite; v5p* -> v2-alpha-tpuv5; v6e* ->
                         v2-alpha-tpuv6e (`gcloud compute tpus versions list --zone ZONE`).
  --spot                 TPU_CAPACITY=spot         Spot capacity (cheap, preemptible at any time).
  --preemptible          TPU_CAPACITY=preemptible  Legacy preemptible capacity (max 24 h).
  --reserved             TPU_CAPACITY=reserved     Use the project's reservation.
                         TPU_CAPACITY (on-demand) may be on-demand|spot|preemptible|reserved.
  --service-account SA   TPU_SERVICE_ACCOUNT (Compute Engine default)  Account the workers run as;
                         it needs read/write access to the workdir bucket.
  --scopes SCOPES        TPU_SCOPES (https://www.googleapis.com/auth/cloud-platform)
                         OAuth scopes of that account ("" = gcloud's default).
  --network NET          TPU_NETWORK ("" = gcloud's default, "default")
  --subnetwork SUBNET    TPU_SUBNETWORK ("")
  --labels K=V,...       TPU_LABELS ("")
  --create-flags FLAGS   TPU_CREATE_FLAGS ("")  Extra flags for `tpu-vm create`, split on spaces.

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" \
  "--type:TPU_TYPE" "--version:TPU_VERSION" \
  "--spot:TPU_CAPACITY=spot" "--preemptible:TPU_CAPACITY=preemptible" \
  "--reserved:TPU_CAPACITY=reserved" \
  "--service-account:TPU_SERVICE_ACCOUNT" "--scopes:TPU_SCOPES" \
  "--network:TPU_NETWORK" "--subnetwork:TPU_SUBNETWORK" "--labels:TPU_LABELS" \
  "--create-flags:TPU_CREATE_FLAGS" -- "$@"
[ ${#REST[@]} -eq 0 ] || usage_error "unexpected argument: ${REST[0]}"
common_defaults

TPU_TYPE=${TPU_TYPE:-v4-16}
if [ -z "${TPU_VERSION:-}" ]; then
  case "$TPU_TYPE" in
    v2-*|v3-*|v4-*) TPU_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) TPU_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) TPU_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) TPU_VERSION=v2-alpha-tpuv6e ;;
    *) usage_error "no default runtime for --type $TPU_TYPE; pass --version" ;;
  esac
fi
TPU_CAPACITY=${TPU_CAPACITY:-on-demand}
TPU_SCOPES=${TPU_SCOPES-https://www.googleapis.com/auth/cloud-platform}

args=(compute tpus tpu-vm create "$TPU_NAME" --zone "$TPU_ZONE"
      --accelerator-type="$TPU_TYPE" --version="$TPU_VERSION")
case "$TPU_CAPACITY" in
  on-demand) ;;
  spot) args+=(--spot) ;;
  preemptible) args+=(--preemptible) ;;
  reserved) args+=(--reserved) ;;
  *) usage_error "TPU_CAPACITY must be on-demand, spot, preemptible or reserved (got $TPU_CAPACITY)" ;;
esac
[ -n "$TPU_SCOPES" ] && args+=("--scopes=$TPU_SCOPES")
[ -n "${TPU_SERVICE_ACCOUNT:-}" ] && args+=("--service-account=$TPU_SERVICE_ACCOUNT")
[ -n "${TPU_NETWORK:-}" ] && args+=("--network=$TPU_NETWORK")
[ -n "${TPU_SUBNETWORK:-}" ] && args+=("--subnetwork=$TPU_SUBNETWORK")
[ -n "${TPU_LABELS:-}" ] && args+=("--labels=$TPU_LABELS")
if [ -n "${TPU_CREATE_FLAGS:-}" ]; then
  # shellcheck disable=SC2206  # a user-supplied flag list, split on spaces
  args+=($TPU_CREATE_FLAGS)
fi
[ ${#PROJECT_ARGS[@]} -gt 0 ] && args+=("${PROJECT_ARGS[@]}")

log "creating $TPU_NAME: $TPU_TYPE, runtime $TPU_VERSION, $TPU_CAPACITY, zone $TPU_ZONE"
gc "${args[@]}"
