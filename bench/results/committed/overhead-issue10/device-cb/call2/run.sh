#!/bin/bash
# bench.overhead: 00ed12e (+ circuit breakers), this tree, and this tree with the shim leaving
# its streams to Envoy; each pinned to two cores of its own, side by side; cores rotate.
set -u
C=$PWD/.devcarry-ov
mkdir -p /tmp/site
for f in $C/site-*.tar.xz; do [ -e /tmp/site/.$(basename $f) ] || { tar -C /tmp/site -xJf $f && touch /tmp/site/.$(basename $f); }; done
[ -d /tmp/basetree ] || tar -C /tmp -xJf $C/basetree.tar.xz
rm -rf /tmp/nobreak; tar -C /tmp -xJf $C/nobreak.tar.xz
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
MAIN=$PWD
pp() { echo /tmp/site:$1/src:$1/services/classifier:$1/services/extproc-shim:$1/services/metrics-collector:$1/services/picker:$1; }
echo "cores $(nproc) $(python3 --version) $(uptime)"
one() { # tree cores name
  (cd $1 && PYTHONPATH=$(pp $1) taskset -c $2 python3 -m bench.overhead --rates ${RATES:-50,100} --seconds ${SECS:-5} --rounds 2 --out $OUT/$3.json > $OUT/$3.log 2>&1; echo "exit $?" >> $OUT/$3.log)
}
cores=(0,1 2,3 4,5)
for r in $(seq 1 ${ROUNDS:-2}); do
  i=$((r % 3))
  one /tmp/basetree ${cores[$i]} base-$r & one $MAIN ${cores[$(((i+1)%3))]} main-$r & one /tmp/nobreak ${cores[$(((i+2)%3))]} nobreak-$r & wait
  for n in base main nobreak; do echo "$n-$r"; grep -h "+pointsman\|max" $OUT/$n-$r.log; done
done
cd $OUT && tar -cJf logs.tar.xz *.log *.json && rm -f *.log *.json
