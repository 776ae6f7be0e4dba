#!/usr/bin/env bash
# One complete GPU run of the classifier: profile, GPU tests, then bench/classifier for the
# shipped MiniLM (real prompt lengths) and for a BERT-base-sized encoder at 256 tokens.
#
# It runs from the root of the checkout it lives in, which may be a self-contained copy carried
# to the lent GPU machine (the `device` tool sends the main checkout; a worktree's code travels
# as an ignored folder named in `carry`):
#
#   mkdir -p .devcarry-gpu && cp -r services src bench tests pyproject.toml .devcarry-gpu/
#   # plus .devcarry-gpu/.devcarry/ with the assets below, then on the device:
#   cd .devcarry-gpu && OUT=$OUT bash bench/classifier/device_run.sh
#
# Assets, in $ASSETS (default .devcarry/ beside the code):
#   whl/             wheels the device's Python lacks (msgspec, pydantic and its dependencies)
#   minilm/          the MiniLM in float16 with its tokenizer (the package does not fit the carry)
#   mmlu_val.jsonl   prompts (MMLU-Pro validation)
# Results (JSON, logs) go to $OUT (default bench/results). Knobs: DURATION (s per load),
# MAX_BATCH_DEFAULT (128), MAX_BATCH_BERT (64), IN_FLIGHT (0 = auto), DEADLINE_MS, LOADS_DEFAULT, LOADS_BERT, OVERLOAD, MODES, MODELS
# ("default bert-base"), TAG (suffix of the result names), SKIP_PROFILE, SKIP_TESTS.
set -uo pipefail
cd "$(dirname "$0")/../.."
ASSETS=${ASSETS:-.devcarry}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$ASSETS"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:services/classifier:src:. HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export POINTSMAN_CLASSIFIER_ENCODER=$ASSETS/minilm POINTSMAN_CLASSIFIER_PROMPTS=$ASSETS/mmlu_val.jsonl
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c 'import torch, transformers, tokenizers, os; print("torch", torch.__version__,
  "transformers", transformers.__version__, "tokenizers", tokenizers.__version__,
  "cpus", os.cpu_count())'
quiet() { grep -v -e '^Loading' -e 'Writing model' ; }
MINILM="--encoder-dir $ASSETS/minilm --prompts $ASSETS/mmlu_val.jsonl"
if [ -z "${SKIP_PROFILE:-}" ]; then
  python3 -m bench.classifier.profile_engine --encoder "$ASSETS/minilm" \
    --prompts "$ASSETS/mmlu_val.jsonl" 2>&1 | quiet | tee "$OUT/profile-minilm.jsonl"
  python3 -m bench.classifier.profile_engine --model bert-base --tokens 256 \
    --encoder "$ASSETS/minilm" --prompts "$ASSETS/mmlu_val.jsonl" 2>&1 | quiet \
    | tee "$OUT/profile-bert-base-256.jsonl"
fi
if [ -z "${SKIP_TESTS:-}" ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/unit/classifier/test_classifier_gpu.py \
    2>&1 | tail -15
fi
COMMON="--duration ${DURATION:-4} --in-flight ${IN_FLIGHT:-0}
  --deadline-ms ${DEADLINE_MS:-150} --overload ${OVERLOAD:-2} --modes ${MODES:-dynamic,single}
  --single-loads 500,1000"
TAG=${TAG:-}
for model in ${MODELS:-default bert-base}; do
  if [ "$model" = default ]; then
    args="--model default --max-batch ${MAX_BATCH_DEFAULT:-128}
      --loads ${LOADS_DEFAULT:-2000,5000,10000,15000,20000,25000}"
    name=gpu-default$TAG
  else
    args="--model bert-base --tokens 256 --max-batch ${MAX_BATCH_BERT:-64}
      --loads ${LOADS_BERT:-2000,4000,5000,6000,7000,7500,8000}"
    name=gpu-bert-base-256$TAG
  fi
  # shellcheck disable=SC2086
  python3 -m bench.classifier $args $MINILM $COMMON --out "$OUT/$name.json" 2>&1 | quiet \
    | tee "$OUT/$name.log"
done
