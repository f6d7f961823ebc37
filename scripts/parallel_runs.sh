#!/usr/bin/env bash
# Run several `python -m bench run` commands side by side, one process each, and stop them all
# cleanly (SIGTERM: checkpoint written, record marked interrupted and resumable) at a deadline.
# Meant for a machine with more cores than one run uses, e.g. a lent GPU whose small-batch
# models leave it mostly idle: several processes share it.
#
#   scripts/parallel_runs.sh DEADLINE_SECONDS PLAN_FILE [LOG_DIR]
#
# PLAN_FILE: one run per line, the arguments after `python -m bench run`, or `-m MODULE ARGS` to run
# another module (e.g. `-m bench.recipe_study NAME ...`); blank lines and lines starting with # are skipped. Each run's output goes to LOG_DIR/<line number>.log
# (default runs/logs/parallel). Exit status: 0 when every run ended by itself or was stopped at
# the deadline and saved; 1 when any run failed.
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

pids=()
n=0
while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    case $line in ''|'#'*) continue ;; esac
    case $line in '-m '*) command=() ;; *) command=(-m bench run) ;; esac
    # shellcheck disable=SC2086  # the line is a list of arguments
    $python "${command[@]}" $line > "$log_dir/$n.log" 2>&1 &
    pids+=($!)
    echo "started line $n (pid $!): ${command[*]} $line"
done < "$plan"
[ ${#pids[@]} -gt 0 ] || { echo "plan file '$plan' names no runs" >&2; exit 2; }

end=$((SECONDS + deadline_s))
while [ $SECONDS -lt $end ]; do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 1 ] || break
    sleep 5
done
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done

status=0
for pid in "${pids[@]}"; do
    wait "$pid"
    rc=$?
    # 130: stopped by our SIGTERM after saving (the runner exits as for Ctrl-C)
    if [ $rc -ne 0 ] && [ $rc -ne 130 ]; then
        echo "run pid $pid failed with exit status $rc" >&2
        status=1
    fi
done
exit $status
