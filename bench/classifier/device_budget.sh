#!/usr/bin/env bash
# The classifier's CPU budget (python -m bench.classifier.budget) on the lent GPU machine's CPU
# (the GPU is not used): a server processor with more cores than the 2-core VM. Run from the
# checkout's root, there, with the assets carried in .devcarry-budget (an ignored folder named in
# the `device` tool's `carry`):
#
#   .devcarry-budget/minilm/      the MiniLM in float16 with its tokenizer (the package does not
#                                 fit the carry; the budget computes it in float32 as the package),
#                                 its model.safetensors as model.safetensors.xz (xz -6: 45 -> 41 MB,
#                                 what it takes to fit beside the checkout)
#   .devcarry-budget/whl/         cp312 wheels the device's Python lacks (msgspec, pydantic, ...)
#   .devcarry-budget/mmlu_val.jsonl  MMLU-Pro validation prompts
#
#   bash bench/classifier/device_budget.sh
#
# Knobs: THREADS (torch threads per run, default "0 1 4": 0 is the service's default, every core
# but one), REPS (100), OUT ($OUT or bench/results).
set -uo pipefail
A=${ASSETS:-.devcarry-budget}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site-budget "$A"/whl/*.whl || exit 1
ENC=/tmp/minilm-budget
mkdir -p $ENC && cp "$A"/minilm/*.json "$A"/minilm/*.txt $ENC/ || exit 1
if [ -e "$A/minilm/model.safetensors.xz" ]; then
  xz -dc "$A/minilm/model.safetensors.xz" >$ENC/model.safetensors || exit 1
else
  cp "$A/minilm/model.safetensors" $ENC/ || exit 1
fi
export PYTHONPATH=/tmp/site-budget:services/classifier:src:. HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
echo "cores $(nproc); $(python3 --version); $(uptime)"
grep -m1 "model name" /proc/cpuinfo
for t in ${THREADS:-0 1 4}; do
  python3 -m bench.classifier.budget --reps "${REPS:-100}" --threads "$t" --encoder $ENC \
    --prompts "$A/mmlu_val.jsonl" --out "$OUT/classifier-budget-device-threads$t.json" 2>&1 \
    | grep -v -e '^Loading' -e 'Writing model' | tee "$OUT/classifier-budget-device-threads$t.log"
done
