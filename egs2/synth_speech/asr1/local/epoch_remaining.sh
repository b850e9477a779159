#!/usr/bin/env bash
# epoch_remaining.sh TRAIN_LOG ELAPSED: seconds the epoch in progress is expected to take still,
# from ESPnet's train.log and ELAPSED, the seconds since the last epoch ended: the batches the
# last completed epoch logged ("Nepoch:train:A-Bbatch" lines) against those of the epoch in
# progress, at the epoch in progress's rate, plus the time the last completed epoch took from
# its last batch line to its "epoch results" line (its last batches and its validation).
# Prints nothing where the log does not tell (no completed epoch with batch lines, no batch line
# of the next one yet).  run_comparison.sh uses it to let a training finish an epoch that is
# almost done when --train_minutes is reached.
[[ $# -eq 2 ]] || { echo "usage: $0 TRAIN_LOG ELAPSED_SECONDS" >&2; exit 2; }
awk -v elapsed="$2" '
    function secs(line) {  # the time of day of a log line, in seconds
        if (!match(line, /[0-9][0-9]:[0-9][0-9]:[0-9][0-9]/)) return -1
        split(substr(line, RSTART, 8), hms, ":")
        return hms[1] * 3600 + hms[2] * 60 + hms[3]
    }
    match($0, /[0-9]+epoch results: /) {
        done_epochs = substr($0, RSTART, RLENGTH) + 0
        last_done = batch; tail = 0
        if (batch && secs($0) >= 0 && batch_time >= 0) tail = (secs($0) - batch_time + 86400) % 86400
        batch = 0; next
    }
    match($0, /[0-9]+epoch:train:[0-9]+-[0-9]+batch/) {
        s = substr($0, RSTART, RLENGTH); batch_epoch = s + 0
        sub(/batch$/, "", s); sub(/.*-/, "", s)
        batch = s + 0; batch_time = secs($0)
    }
    END {
        if (!done_epochs || !last_done || !batch || batch_epoch != done_epochs + 1) exit 0
        left = (last_done > batch ? (last_done - batch) * elapsed / batch : 0) + tail
        print int(left + 0.5)
    }' "$1"
