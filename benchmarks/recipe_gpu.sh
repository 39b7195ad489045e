#!/usr/bin/env bash
# The recipe study of issue 14 on one GPU, in one call (about 7 minutes on an H200):
#   1. every recipe of quality_vs_dim.RECIPES, plain and the reference, 150 steps on the 9,600-pair sample, seeds 42
#      and 43, several trainings at once on the device (scored with and without a PCA rotation after training);
#   2. recipe_report.py picks a candidate by its fixed rule (most targets met over both seeds);
#   3. that candidate, the reference and plain: a 4x longer run (38,400 pairs, 600 steps, seed 42) and, through
#      gpu_check.sh, a bf16 epoch over all shared pairs; gpu_check.sh also runs the gpu tests and the loss overhead.
# Per-query scores come back as npz files; `python benchmarks/recipe_report.py FOLDER` renders them anywhere.
#
#   bash benchmarks/recipe_gpu.sh --data ../shared/data --out benchmarks/results/recipe_gpu [--base MODEL]
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=../shared/data
BASE=""
OUT=benchmarks/results/recipe_gpu
CACHE=benchmarks/.cache/recipe_gpu
PROCS=6
SMOKE=()  # --smoke: a few steps on the CPU, to check the script itself
SWEEP="plain reference kl kl-t2 share pca pca-kl share-kl pca-share pca-share-kl pca-share-kl-t2 pca-share6-kl"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --cache-dir) CACHE=$2; shift 2 ;;
    --procs) PROCS=$2; shift 2 ;;
    --sweep) SWEEP=$2; shift 2 ;;
    --smoke) SMOKE=(--smoke); shift ;;
    *) echo "recipe_gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" "$CACHE"
BASE_ARGS=()
[[ -n "$BASE" ]] && BASE_ARGS=(--base "$BASE")
DEVICE=cuda SHORT=(--pairs 9600 --steps 150) LONG=(--pairs 38400 --steps 600)
[[ ${#SMOKE[@]} -gt 0 ]] && DEVICE=cpu SHORT=(--pairs 640 --steps 2 --batch-size 16) LONG=(--pairs 960 --steps 3 --batch-size 16)
start=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - start )) s]"; }

train() {  # train VARIANTS... with the remaining quality_vs_dim flags; log to $CACHE/logs
  local name=$1; shift
  python3 benchmarks/quality_vs_dim.py --data "$DATA" "${BASE_ARGS[@]}" --scorer numpy --head-steps 0 --posthoc-pca \
    --device "$DEVICE" --cache-dir "$CACHE/models" "$@" > "$CACHE/logs/$name.log" 2>&1
}
mkdir -p "$CACHE/logs"

echo "$(elapsed) == 0. gpu tests and loss overhead, alone on the device"
bash benchmarks/gpu_check.sh --data "$DATA" "${BASE_ARGS[@]}" --out "$OUT" --skip-training "${SMOKE[@]}" || echo "gpu_check.sh failed"

echo "$(elapsed) == 1. the sweep: $SWEEP"
read -r -a variants <<< "$SWEEP"
pids=()
for ((i = 0; i < PROCS; i++)); do
  mine=()
  for ((j = i; j < ${#variants[@]}; j += PROCS)); do mine+=("${variants[j]}"); done
  [[ ${#mine[@]} -gt 0 ]] || continue
  train "sweep$i" "${SHORT[@]}" --seeds 42 43 --variants "${mine[@]}" --per-query-dir "$CACHE/per_query_150" \
    --output "$CACHE/out_sweep$i" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || echo "a sweep process failed (see $CACHE/logs)"; done
python3 benchmarks/recipe_report.py "$CACHE/per_query_150" --output "$OUT" --stem recipe_150_steps \
  --title "Recipes, 150 steps on 9,600 pairs, seeds 42 and 43 (GPU, fp32)" > /dev/null
winner=$(python3 benchmarks/recipe_report.py "$CACHE/per_query_150" --select) || winner=""
echo "$(elapsed) selected: ${winner:-none}"
[[ -n "$winner" ]] || { tail -20 "$CACHE"/logs/*.log; exit 1; }
trained=${winner%+pca-after}

echo "$(elapsed) == 2. longer runs (38,400 pairs, 600 steps) and gpu_check.sh (bf16 epoch over all pairs)"
pids=()
for variant in "$trained" reference plain; do
  train "long_$variant" --seeds 42 --variants "$variant" "${LONG[@]}" \
    --per-query-dir "$CACHE/per_query_600" --output "$CACHE/out_long_$variant" &
  pids+=($!)
done
bash benchmarks/gpu_check.sh --data "$DATA" "${BASE_ARGS[@]}" --out "$OUT" --cache-dir "$CACHE/gpu_check" \
  --variants "$trained reference plain" --skip-tests --skip-overhead "${SMOKE[@]}" > "$CACHE/logs/gpu_check.log" 2>&1 &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid" || echo "a process failed (see $CACHE/logs)"; done
python3 benchmarks/recipe_report.py "$CACHE/per_query_600" --output "$OUT" --stem recipe_600_steps \
  --title "4x budget: 38,400 pairs, 600 steps, seed 42 (GPU, fp32)" > /dev/null
echo "$(elapsed) done"
tail -5 "$CACHE/logs/gpu_check.log"
