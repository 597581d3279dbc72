#!/usr/bin/env bash
# Offline checks of the tpu/ scripts, no cloud access needed:
#   1. bash -n and (if installed) shellcheck on every script;
#   2. -h and missing arguments on every script;
#   3. --dry-run of create.sh (the gcloud command line it would run);
#   4. resume_until_done.sh end to end against tests/fake_gcloud, a local
#      stand-in for gcloud with a fake two-worker TPU: create, install (code
#      copy), launch, a preemption, delete + recreate + relaunch, results.json;
#      then status/logs/stop, a run that exits 2 (must not be retried), and a
#      run in which one worker dies (all are stopped and relaunched).
# It does not show that the scripts work on real Cloud TPUs: only gcloud's own
# behaviour as mimicked by fake_gcloud is exercised.
#
# Usage: bash tpu/tests/selftest.sh      (from anywhere; exits non-zero on failure)

# The bash -c '...' checks below expand their $1, $2 inside: single quotes meant.
# shellcheck disable=SC2016
set -euo pipefail
T=$(cd "$(dirname "$0")/.." && pwd)
FAILS=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

scripts=("$T"/*.sh "$T"/tests/*.sh "$T"/tests/fake_gcloud)

# 1. Syntax and lint.
for f in "${scripts[@]}"; do check "bash -n ${f#"$T"/}" bash -n "$f"; done
if command -v shellcheck >/dev/null; then
  check "shellcheck tpu/" shellcheck -x "${scripts[@]}"
else
  echo "skip shellcheck (not installed)"
fi

# 2. Usage.
for s in create install launch logs stop delete status resume_until_done; do
  check "$s.sh -h exits 0 with usage" \
    bash -c '"$1" -h | grep -q "^Usage: tpu/$2.sh"' _ "$T/$s.sh" "$s"
  rc=0; env -u TPU_NAME "$T/$s.sh" >/dev/null 2>&1 || rc=$?
  check "$s.sh without --name exits 2" [ "$rc" = 2 ]
done
rc=0; "$T/create.sh" --name x --zone z --bogus >/dev/null 2>&1 || rc=$?
check "unknown flag exits 2" [ "$rc" = 2 ]

# 3. Dry runs.
out=$("$T/create.sh" --name my-tpu --zone us-central2-b --spot --dry-run 2>/dev/null)
check "create.sh v4-16 spot command" grep -qF -- \
  "+ gcloud compute tpus tpu-vm create my-tpu --zone us-central2-b --accelerator-type=v4-16 --version=tpu-ubuntu2204-base --spot" \
  <<<"$out"
out=$(TPU_TYPE=v5litepod-16 TPU_PROJECT=p1 "$T/create.sh" --name=t --zone=z --preemptible --dry-run 2>/dev/null)
check "create.sh v5e runtime, --preemptible, --project" \
  grep -qE -- "--version=v2-alpha-tpuv5-lite --preemptible .*--project=p1" <<<"$out"
out=$("$T/launch.sh" --name t --zone z --bucket b --dry-run -- python -m mtkd.main \
  --config=configs/quickstart.py --workdir=/gcs/b/run 2>/dev/null)
check "launch.sh dry run ssh --worker=all" \
  grep -qF -- "tpu-vm ssh t --zone z --worker=all --command" <<<"$out"

# 4. End to end against the fake gcloud.
D=$(mktemp -d)
cleanup() {
  local f
  for f in "$D"/hosts/w*/mtkd_logs/mtkd.pid; do
    if [ -f "$f" ]; then kill -KILL -- "-$(cat "$f")" 2>/dev/null || true; fi
  done
  [ -n "${KEEP:-}" ] && { echo "kept $D"; return; }; rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/bin" "$D/gcs"
ln -s "$T/tests/fake_gcloud" "$D/bin/gcloud"
printf '#!/bin/sh\necho "fake gcsfuse $*" >>"%s/calls.log"\n' "$D" >"$D/bin/gcsfuse"
chmod +x "$D/bin/gcsfuse"
export PATH="$D/bin:$PATH" FAKE_GCLOUD_DIR=$D FAKE_WORKERS=2
export TPU_NAME=fake-tpu TPU_ZONE=fake-zone TPU_BUCKET=bkt TPU_MOUNT_ROOT=$D/gcs \
  TPU_INSTALL_STEPS=code TPU_STOP_GRACE=2 TPU_START_CHECK=0.5
echo 1 >"$D/create_fails"  # the first create fails (no capacity)
WD=$D/gcs/bkt/runs/r1
rc=0
"$T/resume_until_done.sh" --spot --poll 0.3 --retry-sleep 0.3 --max-tries 6 -- \
  bash tpu/tests/fake_mtkd.sh --workdir="$WD" --config.x=1 >"$D/resume.log" 2>&1 || rc=$?
check "resume_until_done exits 0 after a failed create and a preemption" [ "$rc" = 0 ]
check "results.json written" [ -f "$WD/results.json" ]
check "TPU created 3 times (1 failed, 1 preempted)" \
  [ "$(grep -c 'tpu-vm create fake-tpu' "$D/calls.log")" = 3 ]
check "created as spot" grep -q 'tpu-vm create fake-tpu .*--spot' "$D/calls.log"
check "preempted TPU deleted" grep -q 'tpu-vm delete fake-tpu' "$D/calls.log"
check "each worker launched twice" \
  bash -c '[ "$(cat "$1"/args.w0 | wc -l)" = 2 ] && [ "$(cat "$1"/args.w1 | wc -l)" = 2 ]' _ "$WD"
check "--config.parallel.distributed=True appended" \
  grep -q -- '--config.x=1 --config.parallel.distributed=True$' "$WD/args.w1"
check "bucket mounted with gcsfuse" grep -q "fake gcsfuse .*--implicit-dirs .* bkt $D/gcs/bkt" "$D/calls.log"
check "per-worker log files" \
  bash -c 'ls "$1"/hosts/w0/mtkd_logs/mtkd-*-w0.log && ls "$1"/hosts/w1/mtkd_logs/mtkd-*-w1.log' _ "$D" >/dev/null
check "code copied to the workers" [ -f "$D/hosts/w1/mtkd/mtkd/main.py" ]
if [ "$FAILS" -gt 0 ]; then sed 's/^/  | /' "$D/resume.log"; fi

out=$("$T/status.sh" 2>&1)
check "status.sh: READY, both workers exited 0" \
  bash -c '[ "$(grep -c ": exited rc 0 " <<<"$1")" = 2 ] && grep -q "^state: READY" <<<"$1"' _ "$out"
out=$("$T/logs.sh" --worker 1 --no-follow --lines 5 2>&1)
check "logs.sh shows worker 1's log" grep -q "fake mtkd on worker 1: done" <<<"$out"

rc=0; "$T/resume_until_done.sh" --poll 0.3 --retry-sleep 0.3 -- \
  bash tpu/tests/fake_mtkd.sh --workdir="$WD" >/dev/null 2>&1 || rc=$?
check "resume_until_done returns at once when results exist" [ "$rc" = 0 ]

# A long run, then stop.sh; then a config error that must not be retried.
rc=0; "$T/launch.sh" -- bash -c 'sleep 1000' --workdir="$D/gcs/bkt/x" >/dev/null 2>&1 || rc=$?
check "launch.sh starts a long run" [ "$rc" = 0 ]
rc=0; "$T/launch.sh" -- bash -c 'sleep 1000' --workdir="$D/gcs/bkt/x" >/dev/null 2>&1 || rc=$?
check "launch.sh refuses a second run without --restart" [ "$rc" != 0 ]
check "status.sh: running on both workers" \
  bash -c '[ "$("$1"/status.sh 2>&1 | grep -c ": running ")" = 2 ]' _ "$T"
"$T/stop.sh" >/dev/null 2>&1
check "stop.sh stops it; the wrapper records 143 (TERM)" \
  bash -c '[ "$("$1"/status.sh 2>&1 | grep -c ": exited rc 143 ")" = 2 ]' _ "$T"
rc=0; FAKE_MTKD_MODE=usererror "$T/resume_until_done.sh" --poll 0.3 --retry-sleep 0.3 -- \
  bash tpu/tests/fake_mtkd.sh --workdir="$D/gcs/bkt/runs/bad" >"$D/bad.log" 2>&1 || rc=$?
check "resume_until_done stops on mtkd exit status 2" \
  bash -c '[ "$1" != 0 ] && grep -q "exited with status 2" "$2"' _ "$rc" "$D/bad.log"
check "  ... after one launch" bash -c '[ "$(cat "$1" | wc -l)" = 1 ]' _ "$D/gcs/bkt/runs/bad/args.w0"
rc=0; FAKE_MTKD_MODE=crash_once "$T/resume_until_done.sh" --poll 1 --retry-sleep 0.3 -- \
  bash tpu/tests/fake_mtkd.sh --workdir="$D/gcs/bkt/runs/crash" >"$D/crash.log" 2>&1 || rc=$?
check "a worker that dies: the others are stopped, all relaunched, run finishes" \
  bash -c '[ "$1" = 0 ] && grep -q "going on all workers (1/2)" "$2" && [ -f "$3/results.json" ] &&
           [ "$(cat "$3"/args.w0 | wc -l)" = 2 ]' _ "$rc" "$D/crash.log" "$D/gcs/bkt/runs/crash"
rc=0; "$T/delete.sh" </dev/null >/dev/null 2>&1 || rc=$?
check "delete.sh without --yes and without a terminal refuses" \
  bash -c '[ "$1" != 0 ] && [ -f "$2/state" ]' _ "$rc" "$D"
"$T/delete.sh" --yes >/dev/null 2>&1
check "delete.sh --yes deletes" [ ! -f "$D/state" ]

echo
if [ "$FAILS" -eq 0 ]; then echo "selftest: all checks passed"; else echo "selftest: $FAILS failed"; exit 1; fi
