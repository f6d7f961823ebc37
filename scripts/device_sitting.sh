#!/usr/bin/env bash
# One sitting on a lent device machine (e.g. an H200 with 16 CPU cores): run a plan side by side
# until a deadline (scripts/parallel_runs.sh), optionally run one more command on what they wrote,
# then pack every file that the sitting wrote under results/ and runs/logs/ into $OUT as a gzipped
# tar in 15 MiB parts, since the device returns at most 8 files of 16 MiB each.
#
#   scripts/device_sitting.sh DEADLINE_SECONDS PLAN_FILE [AFTER_COMMAND]
#
# Back here: cat PARTS_DIR/sitting.tgz.* | tar xzf -   (in the repository root).
# MNIST comes from $GLIMPSE_MNIST_SOURCE (default .mnist, a copy carried with the working tree).
set -u
if [ $# -lt 2 ]; then
    echo "usage: $0 DEADLINE_SECONDS PLAN_FILE [AFTER_COMMAND]" >&2
    exit 2
fi
deadline_s=$1
plan=$2
after=${3:-}
out=${OUT:?set OUT to the folder whose files come back}
export PYTHONUNBUFFERED=1
export GLIMPSE_MNIST_SOURCE=${GLIMPSE_MNIST_SOURCE:-.mnist} GLIMPSE_DATA=${GLIMPSE_DATA:-data}
export PYTHON=${PYTHON:-python3}
stamp=$(mktemp)
sleep 1  # files written from now on are newer than the stamp

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
grep -m1 'model name' /proc/cpuinfo; nproc
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

scripts/parallel_runs.sh "$deadline_s" "$plan" runs/logs/device
status=$?
if [ -n "$after" ]; then
    bash -c "$after" || echo "after-command failed with status $?" >&2
fi

find results runs/logs -type f -newer "$stamp" | sort > "$out/written.txt"
echo "files written this sitting:"; cat "$out/written.txt"
tar czf - -T "$out/written.txt" | split -b 15M -d - "$out/sitting.tgz."
ls -la "$out"
exit $status
