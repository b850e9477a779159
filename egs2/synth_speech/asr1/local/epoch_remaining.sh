#!/usr/bin/env bash
# epoch_remaining.sh TRAIN_LOG ELAPSED: seconds the epoch in progress is expected to take still,
# from ESPnet's train.log: the updates an epoch took so far (total_count of the last "epoch
# results" over its epochs), the updates of the epoch in progress (its last "Nepoch:train:A-Bbatch"
# line) and ELAPSED, the seconds since the last epoch ended.  Prints nothing where the log does
# not tell (no completed epoch, no batch line of the next one yet).  run_comparison.sh uses it to
# let a training finish an epoch that is almost done when --train_minutes is reached.
[[ $# -eq 2 ]] || { echo "usage: $0 TRAIN_LOG ELAPSED_SECONDS" >&2; exit 2; }
awk -v elapsed="$2" '
    match($0, /[0-9]+epoch results: /) {
        done_epochs = substr($0, RSTART, RLENGTH) + 0; batch = 0
        if (match($0, /total_count=[0-9]+/)) per_epoch = substr($0, RSTART + 12, RLENGTH - 12) / done_epochs
        next
    }
    match($0, /[0-9]+epoch:train:[0-9]+-[0-9]+batch/) {
        s = substr($0, RSTART, RLENGTH)
        if (s + 0 == done_epochs + 1) { sub(/batch$/, "", s); sub(/.*-/, "", s); batch = s + 0 }
    }
    END {
        if (!done_epochs || !per_epoch || !batch) exit 0
        f = batch / per_epoch
        print (f >= 1 ? 0 : int(elapsed * (1 - f) / f + 0.5))
    }' "$1"
