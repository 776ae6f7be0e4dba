#!/bin/bash
# bench.overhead for 00ed12e (+ the shim cluster's circuit breakers) and this tree, each pinned
# to two cores, side by side, then the cores swapped.
set -u
C=$PWD/.devcarry-ov
mkdir -p /tmp/site
for f in $C/site-*.tar.xz; do [ -e /tmp/site/.$(basename $f) ] || { tar -C /tmp/site -xJf $f && touch /tmp/site/.$(basename $f); }; done
[ -d /tmp/basetree ] || tar -C /tmp -xJf $C/basetree.tar.xz
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
MAIN=$PWD
pp() { echo /tmp/site:$1/src:$1/services/classifier:$1/services/extproc-shim:$1/services/metrics-collector:$1/services/picker:$1; }
echo "cores $(nproc) $(python3 --version) $(uptime)"
one() { # tree cores name
  (cd $1 && PYTHONPATH=$(pp $1) taskset -c $2 python3 -m bench.overhead --rates 50,100,200 --seconds ${SECS:-5} --rounds 2 --out $OUT/$3.json > $OUT/$3.log 2>&1; echo "exit $?" >> $OUT/$3.log)
}
for r in $(seq 1 ${ROUNDS:-2}); do
  if [ $((r % 2)) = 1 ]; then a=0,1; b=2,3; else a=2,3; b=0,1; fi
  one /tmp/basetree $a base-$r & one $MAIN $b main-$r & wait
  grep -h "+pointsman\|max\|failed open" $OUT/base-$r.log $OUT/main-$r.log
done
cd $OUT && tar -cJf logs.tar.xz *.log *.json && rm -f *.log *.json
