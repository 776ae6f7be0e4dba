#!/bin/bash
# python -m bench.overhead.versus on the lent machine: two instances side by side, each (with
# every process it starts) pinned to two cores of its own.
set -u
C=$PWD/.devcarry-ov
mkdir -p /tmp/site
for f in $C/site-*.tar.xz; do [ -e /tmp/site/.$(basename $f) ] || { tar -C /tmp/site -xJf $f && touch /tmp/site/.$(basename $f); }; done
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/services/classifier:$PWD/services/extproc-shim:$PWD/services/metrics-collector:$PWD/services/picker:$PWD
echo "cores $(nproc) $(python3 --version) $(uptime); git $(git log -1 --format=%h 2>/dev/null)"
git cat-file -t ${BASE:-00ed12e} || exit 1
for c in 0,1 2,3; do
  taskset -c $c python3 -m bench.overhead.versus --baseline ${BASE:-00ed12e} --rounds ${ROUNDS:-2} --rates ${RATES:-50,100,200} --seconds ${SECS:-5} --out $OUT/versus-cores-${c/,/-}.json > $OUT/versus-cores-${c/,/-}.log 2>&1 &
done
wait
tail -12 $OUT/versus-cores-*.log
