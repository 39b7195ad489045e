#!/usr/bin/env bash
# GPU check (issue 16): the `gpu` tests, the loss overhead on the device in bf16 (ours vs reference vs plain, MNRL,
# CachedMNRL, CoSENT, GIST; then the loss work alone, with the transformer's layers removed), and a bf16 training of
# a recipe on every shared pair (one epoch; batch 105 makes it ~2,000 steps) with its quality-by-dim table.
# About 5 minutes on one H100/H200. Results go under --out.
#
#   bash benchmarks/gpu_check.sh --data ../shared/data --out benchmarks/results/gpu_check
#   bash benchmarks/gpu_check.sh --variants "pca-share-kl reference plain"   # several recipes side by side
#
# --base defaults to the bundled all-MiniLM-L6-v2; --variants to `default`, the recipe `matryoshka-st train` uses.
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=../shared/data
BASE=""
OUT=benchmarks/results/gpu_check
VARIANTS=default
CACHE=benchmarks/.cache/gpu_check
SKIP_TESTS=0
SKIP_OVERHEAD=0
SKIP_TRAINING=0
SMOKE=0  # --smoke: a few steps on the CPU, to check the script itself
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    --cache-dir) CACHE=$2; shift 2 ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --skip-overhead) SKIP_OVERHEAD=1; shift ;;
    --skip-training) SKIP_TRAINING=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
DEVICE=cuda ROUNDS=(--rounds 30 --warmup 5) EPOCH=(--steps 0 --batch-size 105)
[[ $SMOKE == 1 ]] && DEVICE=cpu ROUNDS=(--rounds 1 --warmup 1 --no-naive) EPOCH=(--steps 2 --batch-size 16)
if [[ $DEVICE == cuda ]] && ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA device visible to torch; this script is for a GPU machine." >&2
  exit 2
fi
if [[ ! -f "$DATA/train/pairs.jsonl.gz" ]]; then
  echo "gpu_check.sh: no $DATA/train/pairs.jsonl.gz: pass --data, the folder holding train/ and dev/." >&2
  exit 2
fi
mkdir -p "$OUT" "$CACHE"
status=0
MODEL_ARGS=()
[[ -n "$BASE" ]] && MODEL_ARGS=(--model "$BASE")
BASE_ARGS=()
[[ -n "$BASE" ]] && BASE_ARGS=(--base "$BASE")

[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

if [[ $SKIP_OVERHEAD == 0 ]]; then
  echo "== loss overhead, bf16, on the device"
  python3 benchmarks/loss_overhead.py "${MODEL_ARGS[@]}" --device "$DEVICE" --bf16 --batch-size 64 --gist "${ROUNDS[@]}" \
    2>&1 | grep -v Warning | tee "$OUT/loss_overhead.txt" || status=1
  echo "== loss work alone (the transformer's layers removed), bf16, on the device: shells against before them"
  python3 benchmarks/loss_overhead.py "${MODEL_ARGS[@]}" --device "$DEVICE" --bf16 --batch-size 64 --gist --shells-off \
    --encoder embeddings "${ROUNDS[@]}" 2>&1 | grep -v Warning | tee "$OUT/loss_overhead_embeddings.txt" || status=1
fi

if [[ $SKIP_TESTS == 0 ]]; then
  echo "== gpu tests"
  python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -rs 2>&1 | tail -40 | tee "$OUT/gpu_tests.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

[[ $SKIP_TRAINING == 1 ]] && exit $status
echo "== bf16 training on every shared pair, one epoch: $VARIANTS"
pids=()
for variant in $VARIANTS; do
  python3 benchmarks/quality_vs_dim.py --data "$DATA" "${BASE_ARGS[@]}" --pairs 0 "${EPOCH[@]}" --bf16 \
    --scorer numpy --seeds 42 --variants "$variant" --head-steps 0 --posthoc-pca --device "$DEVICE" \
    --per-query-dir "$CACHE/per_query_all" --cache-dir "$CACHE" --output "$CACHE/out_$variant" \
    > "$CACHE/train_$variant.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
python3 benchmarks/recipe_report.py "$CACHE/per_query_all" --output "$OUT" --stem quality_all_pairs_bf16 \
  --title "bf16, every shared pair, one epoch (batch 105), seed 42" || status=1
exit $status
