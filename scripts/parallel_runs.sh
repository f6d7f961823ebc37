#!/usr/bin/env bash
# Run several `python -m bench run` commands side by side, one process each, and stop them all
# cleanly (SIGTERM: checkpoint written, record marked interrupted and resumable) at a deadline.
# Meant for a machine with more cores than one run uses (a lent GPU whose small-batch models leave it
# mostly idle: several processes share it), and for a session's long runs on a CPU: the deadline
# stops them in time, and `nice -n 5 scripts/parallel_runs.sh ...` leaves the machine to other work.
#
#   scripts/parallel_runs.sh DEADLINE_SECONDS PLAN_FILE [LOG_DIR]
#
# PLAN_FILE: one line per process, the arguments after `python -m bench run`, or `-m MODULE ARGS` to
# run another module (e.g. `-m bench.recipe_study NAME ...`); blank lines and lines starting with #
# are skipped. A line may queue several runs separated by ` ;; `: they run one after another in that
# process's place, each whatever way the one before it ended (a record with nothing left to run
# ends with an error), and none starts after the deadline. Each line's output goes to
# LOG_DIR/<line number>.log (default runs/logs/parallel). SIGTERM, SIGINT or SIGHUP to this script
# stops everything as the deadline does: no queued run starts, the runs going get SIGTERM. Exit status:
# 0 when every run ended by itself or was stopped (deadline or signal) and saved; 1 when any run failed.
set -u
if [ $# -lt 2 ]; then
    echo "usage: $0 DEADLINE_SECONDS PLAN_FILE [LOG_DIR]" >&2
    exit 2
fi
deadline_s=$1
plan=$2
log_dir=${3:-runs/logs/parallel}
python=${PYTHON:-python3}
case $deadline_s in
    ''|*[!0-9]*) echo "DEADLINE_SECONDS must be a whole number of seconds, got '$deadline_s'" >&2; exit 2 ;;
esac
[ -r "$plan" ] || { echo "plan file '$plan' not found or unreadable" >&2; exit 2; }
mkdir -p "$log_dir"
state=$(mktemp -d)  # stop: the deadline has passed; <line>.pid: the run a line has going
trap 'rm -rf "$state"' EXIT

# No run starts any more; the runs going get SIGTERM (each saves its checkpoint and exits).
stop_runs() {
    touch "$state/stop"
    for file in "$state"/*.pid; do
        [ -e "$file" ] && kill -TERM "$(cat "$file")" 2>/dev/null
    done
}

# The runs of plan line $1 ($2: the line), one after another.
run_line() {
    local n=$1 rest=$2 run k=0 total failed=0 rc
    total=$(( $(grep -o ' ;; ' <<< "$rest" | wc -l) + 1 ))
    : > "$log_dir/$n.log"
    while [ -n "$rest" ]; do
        run=${rest%% ;; *}
        [ "$run" = "$rest" ] && rest="" || rest=${rest#* ;; }
        k=$((k + 1))
        [ -e "$state/stop" ] && break
        case $run in '-m '*) command=() ;; *) command=(-m bench run) ;; esac
        echo "== run $k of $total: ${command[*]} $run" >> "$log_dir/$n.log"
        # shellcheck disable=SC2086  # the run is a list of arguments
        $python "${command[@]}" $run >> "$log_dir/$n.log" 2>&1 &
        local pid=$!
        echo "$pid" > "$state/$n.pid"
        [ -e "$state/stop" ] && kill -TERM "$pid" 2>/dev/null  # the deadline came as it started
        echo "started line $n$([ "$total" -gt 1 ] && echo ", run $k of $total") (pid $pid): ${command[*]} $run"
        wait "$pid"
        rc=$?
        rm -f "$state/$n.pid"
        # 130: stopped by our SIGTERM after saving (the runner exits as for Ctrl-C)
        if [ $rc -ne 0 ] && [ $rc -ne 130 ]; then
            echo "line $n, run $k (pid $pid) failed with exit status $rc" >&2
            failed=1
        fi
    done
    return $failed
}

lines=()
n=0
while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    case $line in ''|'#'*) continue ;; esac
    run_line "$n" "$line" &
    lines+=($!)
done < "$plan"
[ ${#lines[@]} -gt 0 ] || { echo "plan file '$plan' names no runs" >&2; exit 2; }

signalled=0
trap 'signalled=1; stop_runs' TERM INT HUP
end=$((SECONDS + deadline_s))
while [ $SECONDS -lt $end ] && [ $signalled -eq 0 ]; do
    alive=0
    for pid in "${lines[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 1 ] || break
    sleep 1
done
stop_runs

status=0
for pid in "${lines[@]}"; do
    while true; do  # a signal interrupts wait (status > 128) while the line still runs: wait again
        wait "$pid"
        rc=$?
        [ $rc -gt 128 ] && kill -0 "$pid" 2>/dev/null || break
    done
    [ $rc -eq 0 ] || status=1
done
exit $status
