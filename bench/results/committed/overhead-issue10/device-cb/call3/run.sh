#!/bin/bash
# 00ed12e (+ circuit breakers) against this tree with --no-apis (the same stack shape: one model),
# two copies of each side by side, each on two cores of its own; the cores swap each round.
set -u
C=$PWD/.devcarry-ov
mkdir -p /tmp/site
for f in $C/site-*.tar.xz; do [ -e /tmp/site/.$(basename $f) ] || { tar -C /tmp/site -xJf $f && touch /tmp/site/.$(basename $f); }; done
[ -d /tmp/basetree ] || tar -C /tmp -xJf $C/basetree.tar.xz
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
MAIN=$PWD
pp() { echo /tmp/site:$1/src:$1/services/classifier:$1/services/extproc-shim:$1/services/metrics-collector:$1/services/picker:$1; }
echo "cores $(nproc) $(python3 --version) $(uptime)"
one() { # tree cores name extra
  (cd $1 && PYTHONPATH=$(pp $1) taskset -c $2 python3 -m bench.overhead --rates ${RATES:-50,100} --seconds ${SECS:-5} --rounds 2 --out $OUT/$3.json $4 > $OUT/$3.log 2>&1; echo "exit $?" >> $OUT/$3.log)
}
for r in $(seq 1 ${ROUNDS:-2}); do
  if [ $((r % 2)) = 1 ]; then a=(0,1 4,5); b=(2,3 6,7); else a=(2,3 6,7); b=(0,1 4,5); fi
  one /tmp/basetree ${a[0]} base-$r-a "" & one /tmp/basetree ${a[1]} base-$r-b "" &
  one $MAIN ${b[0]} main-$r-a --no-apis & one $MAIN ${b[1]} main-$r-b --no-apis & wait
  for n in base-$r-a base-$r-b main-$r-a main-$r-b; do echo "$n"; grep -h "+pointsman\|max" $OUT/$n.log; done
done
cd $OUT && tar -cJf logs.tar.xz *.log *.json && rm -f *.log *.json
