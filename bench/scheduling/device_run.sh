#!/usr/bin/env bash
# bench.scheduling on the lent GPU machine's 16 CPU cores (the GPU is not used): every workload
# and router that issue 17's targets need, in four streams run side by side (each stream a
# `python -m bench.scheduling` of its own, its rows one after another).
#
# The `device` tool sends the main checkout; this branch's code and the wheels travel as an
# ignored folder named in `carry` (made by bench/scheduling/device_pack.sh):
#
#   .devcarry-sched/tree.tar.xz   this branch's files that differ from main (laid over main's
#                             src, services and bench, copied to /tmp/tree)
#   .devcarry-sched/site-*.tar.xz the Python 3.12 packages the machine lacks, installed (binaries
#                             envoy, nats-server and vllm-router in bin/; no redis-server):
#                             envoy + core + stack in one call, envoy + core + vllm in another
#                             (what a call leaves in /tmp/site stays while the machine is warm)
#   .devcarry-sched/traces.tar.xz the Mooncake and Azure traces
#
# On the device, from the checkout's root:
#   python3 -c 'import tarfile; tarfile.open(".devcarry-sched/tree.tar.xz").extractall("/tmp/ov",
#     filter="tar")' && bash /tmp/ov/bench/scheduling/device_run.sh
# Knobs: DURATION_SP, DURATION_MC, DURATION_MCR, DURATION_AZ, DURATION_TEN (seconds of arrivals),
# SANITY=1 (only one short row, to test the recipe), STREAMS (which of sp mc mcr az ten; mcr:
# Mooncake at other rates, MCR_RATES, MCR_ROUTERS), AZ_ROUTERS, AZ_RATES, OURS (the Pointsman
# rows of shared-prefix and Mooncake, default pointsman,pointsman-flow,pointsman-prefill).
# Envoy may come from an earlier call on the same warm machine (/tmp/site stays): one call that
# carries only site-envoy.tar.xz and unpacks it, then one with the rest, fit the carry limit.
set -uo pipefail
CARRY=${CARRY:-$PWD/.devcarry-sched}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/traces
python3 - "$CARRY" <<'EOF' || exit 1
import sys, tarfile
carry = sys.argv[1]
import glob
import os
for path in sorted(glob.glob(f"{carry}/site*.tar.xz")):
    done = f"/tmp/site/.{os.path.basename(path)}.{os.path.getsize(path)}"
    if not os.path.exists(done):  # once per machine (it stays while warm)
        with tarfile.open(path) as t:
            t.extractall("/tmp/site", filter="tar")
        open(done, "w").close()
    print("site:", os.path.basename(path))
with tarfile.open(f"{carry}/traces.tar.xz") as t:
    t.extractall("/tmp/traces", filter="tar")
EOF
TREE=/tmp/tree
rm -rf $TREE && mkdir -p $TREE && cp -r src services bench pyproject.toml $TREE/
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
  "$CARRY/tree.tar.xz" $TREE || exit 1
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 POINTSMAN_TRACES=/tmp/traces
export PYTHONPATH=/tmp/site:$TREE/src:$TREE/services/picker:$TREE/services/extproc-shim:$TREE/services/metrics-collector:$TREE:$TREE/services/classifier
echo "cores $(nproc); $(python3 --version); $(uptime)"
for b in envoy nats-server vllm-router; do printf '%s: ' $b; command -v $b || echo missing; done
envoy --version | head -1; nats-server --version
python3 -c 'import pointsman_picker, pointsman_shim, grpc, google.protobuf as p; from envoy.service.ext_proc.v3 import external_processor_pb2; print("stack imports ok, grpc", grpc.__version__, "protobuf", p.__version__)' || echo "no Pointsman stack here"
echo "code: main $(git log -1 --format=%h 2>/dev/null) with the branch's files of: $(cat "$CARRY/COMMIT" 2>/dev/null)"

run() {  # name, then bench.scheduling's arguments
  local name=$1; shift
  mkdir -p "/tmp/ws-$name" && cd "/tmp/ws-$name" || return 1
  echo "python -m bench.scheduling $* --out $name" >"$OUT/$name.log"
  python3 -m bench.scheduling "$@" --out "$name" >>"$OUT/$name.log" 2>&1
  echo "exit $? $(uptime)" >>"$OUT/$name.log"
}

if [ -n "${SANITY:-}" ]; then
  if command -v nats-server >/dev/null; then
    run sanity --workloads tenants --routers pointsman-fair --rate-for tenants=6 --duration 4
  else
    run sanity --workloads shared-prefix --routers vllm-router-power-of-two --duration 3
  fi
  cat "$OUT/sanity.log"; cp /tmp/ws-sanity/bench/results/sanity.json "$OUT/" 2>/dev/null
  exit 0
fi

# shared-prefix and Mooncake: every router this call's packages can run (a call carries either
# the Pointsman stack or vllm-router, plus whatever an earlier call left on this machine)
RIVALS="vllm-router-cache-aware,vllm-router-cache-aware-tuned,vllm-router-power-of-two"
OURS=${OURS:-"pointsman,pointsman-flow,pointsman-prefill"}
have_rivals=$(command -v vllm-router >/dev/null && echo 1)
have_ours=$(python3 -c 'import grpc_health, faststream, nacl' 2>/dev/null && command -v nats-server >/dev/null \
  && command -v envoy >/dev/null && echo 1)
if [ -n "$have_rivals" ] && [ -n "$have_ours" ]; then SPMC="$RIVALS,$OURS"; TAG=all
elif [ -n "$have_rivals" ]; then SPMC=$RIVALS; TAG=rivals
else SPMC=$OURS; TAG=ours; fi
echo "shared-prefix and Mooncake routers: $SPMC"
STREAMS=${STREAMS:-"sp mc az ten"}
pids=()
for s in $STREAMS; do
  case $s in
    sp) run scheduling-device-shared-prefix-$TAG --workloads shared-prefix --routers "$SPMC" \
          --rate-for shared-prefix=12 --duration "${DURATION_SP:-45}" & pids+=($!) ;;
    mc) run scheduling-device-mooncake-$TAG --workloads mooncake --routers "$SPMC" \
          --rate-for mooncake=8 --duration "${DURATION_MC:-45}" & pids+=($!) ;;
    mcr) run scheduling-device-mooncake-rates-$TAG --workloads mooncake \
          --routers "${MCR_ROUTERS:-vllm-router-power-of-two,vllm-router-cache-aware,pointsman-flow,pointsman-prefill}" \
          --rate-for mooncake="${MCR_RATES:-6,10}" --duration "${DURATION_MCR:-30}" & pids+=($!) ;;
    az) run scheduling-device-azure --workloads azure \
          --routers "${AZ_ROUTERS:-pointsman,pointsman-flow,pointsman-prefill,pointsman-slo,pointsman-slo-strict}" \
          --rate-for azure="${AZ_RATES:-22,26}" --duration "${DURATION_AZ:-35}" & pids+=($!) ;;
    ten) run scheduling-device-tenants --workloads tenants \
          --routers pointsman-flow,pointsman-fair,pointsman-slo \
          --rate-for tenants=6 --duration "${DURATION_TEN:-60}" & pids+=($!) ;;
  esac
done
# the JSON of each stream is rewritten after every row: copy it out as it grows
( while sleep 10; do cp /tmp/ws-*/bench/results/*.json "$OUT/" 2>/dev/null; done ) &
copier=$!
( while sleep 30; do echo "load: $(uptime)"; done ) &
monitor=$!
wait "${pids[@]}"
kill $copier $monitor 2>/dev/null
cp /tmp/ws-*/bench/results/*.json "$OUT/" 2>/dev/null
for f in "$OUT"/*.log; do echo "== $f"; tail -n 40 "$f"; done
# the device tool returns 8 files at most: more than that travel as one archive
if [ "$(ls "$OUT" | wc -l)" -gt 8 ]; then
  (cd "$OUT" && tar -cJf scheduling-device.tar.xz ./*.json ./*.log && rm -f ./*.json ./*.log)
fi
