#!/usr/bin/env bash
# Run a long GPU job across several device calls (each call is capped at 10 minutes, the kernel
# build alone takes 7): `start` launches it in its own session (it survives the end of the call
# while the machine stays warm, i.e. if the next call comes within ~30 s), `wait` waits for it.
#   call 1: bash tools/gpu/detached.sh start 560 bash tools/gpu/checks.sh
#   call 2: bash tools/gpu/detached.sh wait 560
# Both return what the job has written so far (its $OUT) in this call's $OUT (see collect).
set -uo pipefail
JOB=/tmp/gpu_job
mode=$1 limit=$2; shift 2
# A call returns at most 8 files: everything the job wrote goes back as one job.tgz, plus the
# kernel parts of tools/gpu/export_kernels.sh as they are (each <= 15 MiB, already xz).
collect() {
    [[ -n ${OUT:-} ]] || return 0
    tar czf "$OUT/job.tgz" -C "$JOB" --exclude='*.tar.xz.part*' out console.log 2>/dev/null
    cp "$JOB"/out/*.tar.xz.part* "$OUT/" 2>/dev/null
    true
}
if [[ $mode == start ]]; then
    rm -rf "$JOB"; mkdir -p "$JOB/out"
    OUT=$JOB/out setsid nohup bash -c 'bash tools/gpu/session.sh "$@"; echo $? > '"$JOB"'/rc' \
        _ "$@" > "$JOB/console.log" 2>&1 < /dev/null &
fi
for ((i = 0; i < limit; i += 5)); do
    [[ -f $JOB/rc ]] && break
    sleep 5
done
if [[ -f $JOB/rc ]]; then echo "job finished: rc=$(cat "$JOB/rc")"; else echo "job still running"; fi
tail -n 30 "$JOB/console.log"
collect
