#!/usr/bin/env bash
# Stands in for `python -m mtkd.main` in tpu/tests/selftest.sh. Run by
# worker.sh start inside the fake worker's repo copy. FAKE_MTKD_MODE:
#   preempt_once  first launch: worker 0 marks the fake TPU PREEMPTED and
#                 hangs (until the fake delete kills it); later launches
#                 finish and process 0 writes WORKDIR/results.json.
#   usererror     exit 2 at once, as mtkd does on a config/data error.
#   crash_once    first launch: worker 1 fails (exit 1) after 2 s while worker
#                 0 hangs, as in a collective; later launches finish.
set -euo pipefail
workdir=""
for a in "$@"; do case "$a" in --workdir=*) workdir=${a#--workdir=} ;; esac; done
mkdir -p "$workdir"
w=${TPU_WORKER_ID:?}
echo "fake mtkd on worker $w: $*"
printf '%s\n' "$*" >>"$workdir/args.w$w"
case "${FAKE_MTKD_MODE:-preempt_once}" in
  usererror) echo "UserError: bad config" >&2; exit 2 ;;
  crash_once)
    if [ ! -e "$workdir/launched_once.w$w" ]; then
      touch "$workdir/launched_once.w$w"
      if [ "$w" = 1 ]; then sleep 2; echo "worker 1 crashed" >&2; exit 1; fi
      sleep 1000
    fi
    [ "$w" = 0 ] && echo '{}' >"$workdir/results.json"
    echo "fake mtkd on worker $w: done" ;;
  preempt_once)
    if [ ! -e "$workdir/launched_once.w$w" ]; then
      touch "$workdir/launched_once.w$w"
      [ "$w" = 0 ] && { sleep 0.3; echo PREEMPTED >"${FAKE_GCLOUD_DIR:?}/state"; }
      sleep 1000
    fi
    sleep 0.3
    if [ "$w" = 0 ]; then echo '{"left": {}}' >"$workdir/results.json.tmp"
      mv "$workdir/results.json.tmp" "$workdir/results.json"; fi
    echo "fake mtkd on worker $w: done" ;;
esac
