#!/usr/bin/env bash
# python -m bench.overhead.versus on the lent GPU machine's CPUs (the GPU is not used): two
# instances side by side, each with every process it starts pinned to two cores of its own
# (`taskset`), so the figures do not swing with a shared 2-core VM.
#
# The `device` tool sends the checkout; the Python 3.12 packages travel in the ignored folder
# that bench/scheduling/device_pack.sh fills (carry .devcarry-sched/site-envoy.tar.xz,
# site-core.tar.xz and site-stack.tar.xz: the Pointsman stack without vllm-router):
#
#   bash bench/overhead/device_run.sh
#
# Knobs: BASE (baseline commit, default 00ed12e: it must be in the device's git), ROUNDS (2),
# RATES (50,100), SECS (5), CORES ("0,1 2,3": one instance per entry), OUT ($OUT or /tmp/out).
set -uo pipefail
CARRY=${CARRY:-$PWD/.devcarry-sched}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
for f in "$CARRY"/site-envoy.tar.xz "$CARRY"/site-core.tar.xz "$CARRY"/site-stack.tar.xz; do
  done_mark=/tmp/site/.$(basename "$f").$(stat -c %s "$f")
  [ -e "$done_mark" ] || { tar -C /tmp/site -xJf "$f" && touch "$done_mark"; } || exit 1
done
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/services/classifier:$PWD/services/extproc-shim:$PWD/services/metrics-collector:$PWD/services/picker:$PWD
BASE=${BASE:-00ed12e}
echo "cores $(nproc); $(python3 --version); $(uptime); git $(git log -1 --format=%h 2>/dev/null)"
git cat-file -t "$BASE" >/dev/null || { echo "baseline $BASE not in this git"; exit 1; }
for c in ${CORES:-0,1 2,3}; do
  name=versus-cores-${c/,/-}
  taskset -c "$c" python3 -m bench.overhead.versus --baseline "$BASE" --rounds "${ROUNDS:-2}" \
    --rates "${RATES:-50,100}" --seconds "${SECS:-5}" --out "$OUT/$name.json" >"$OUT/$name.log" 2>&1 &
done
wait
tail -n 16 "$OUT"/versus-cores-*.log
