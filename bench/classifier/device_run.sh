#!/usr/bin/env bash
# One complete GPU run of bench/classifier (used with the lent H100 through the `device` tool).
# Needs, carried beside the tree: .whl/ (msgspec, pydantic and its deps for the device's Python)
# and .devcarry/ (minilm/: the MiniLM in float16 with its tokenizer; mmlu_val.jsonl: prompts).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:services/classifier:src:. HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export POINTSMAN_CLASSIFIER_ENCODER=.devcarry/minilm
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
COMMON="--encoder-dir .devcarry/minilm --prompts .devcarry/mmlu_val.jsonl --duration ${DURATION:-4}"
python3 -m bench.classifier.profile_engine --encoder .devcarry/minilm --prompts .devcarry/mmlu_val.jsonl 2>&1 | grep -v '^Loading'
python3 -m pytest -q -p no:cacheprovider -m gpu tests/unit/classifier/test_classifier_gpu.py 2>&1 | tail -3
python3 -m bench.classifier --model default $COMMON --max-batch ${MAX_BATCH:-128} \
  --loads ${LOADS_DEFAULT:-1000,2000,4000,6000,8000} --single-loads 100,250,500 --out "$OUT/gpu-default.json" 2>&1 \
  | grep -v '^Loading' | tee "$OUT/gpu-default.log"
python3 -m bench.classifier --model bert-base --tokens 256 $COMMON --max-batch ${MAX_BATCH:-128} \
  --loads ${LOADS_BERT:-1000,2000,3000,4000,5000} --single-loads 100,250,500 --out "$OUT/gpu-bert-base-256.json" 2>&1 \
  | grep -v '^Loading' | tee "$OUT/gpu-bert-base-256.log"
