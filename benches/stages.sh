#!/usr/bin/env bash
# Per-stage capacity of a cascade on this machine, each stage loaded alone with recorded
# requests (embeddings from the real encoder, conditioning videos from the real upstream
# stages): service time at batch 1 per thread count, maximum throughput at max batch 1/2/4/8,
# latency against offered load (open loop, Poisson) and throughput against concurrency.
#
#   cargo build --release --bins -p vidcascade -p vidcascade-load
#   bash benches/stages.sh [model dir] [requests per run]
#
# Writes docs/bench/stages.md (the table), docs/bench/stages.json (the capacity summary the
# Kubernetes capacity planning reads), docs/bench/<stage>-latency.png and
# docs/bench/<stage>-throughput.png; every run's report goes to target/bench-stages.jsonl.
# One stage process runs at a time, so stages never compete for the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/shapes}
REQUESTS=${2:-8}
BIN=target/release
OUT=${OUT:-docs/bench}
RUNS=target/bench-stages.jsonl
PAYLOAD=target/bench-payload.bin
LOGS=$(mktemp -d)
source benches/lib.sh
mkdir -p "$OUT"
: > "$RUNS"
LOAD="$BIN/vidcascade-load"

"$LOAD" record --model "$MODEL" --out "$PAYLOAD"

# stage_run STAGE MAX_BATCH THREADS LOAD-ARGS...: one stage process, one vidcascade-load command.
stage_run() {
  local stage=$1 batch=$2 threads=$3; shift 3
  local addr
  addr=$(RAYON_NUM_THREADS=$threads start "$stage" vidcascade-stage --model "$MODEL" --stage "$stage" --max-batch-size "$batch")
  "$LOAD" "$1" --target "stage:$stage" --addr "http://$addr" --payload "$PAYLOAD" \
    --metrics "$(metrics_of "$stage")" --json "$RUNS" --quiet "${@:2}"
  cleanup
}

# capacity_of STAGE BATCH: the achieved rate of the stage's capacity run at BATCH.
capacity_of() {
  python3 -c "
import json
runs = [json.loads(l) for l in open('$RUNS')]
print(next(r['achieved_rate'] for r in runs if r['label'] == 'stage=$1 kind=capacity batch=$2'))"
}

for stage in $(diffusion_stages "$MODEL"); do
  echo "== $stage" >&2
  for threads in 1 2; do
    stage_run "$stage" 1 "$threads" run --concurrency 1 --requests "$REQUESTS" \
      --label "stage=$stage kind=service threads=$threads"
  done
  for batch in 1 2 4 8; do
    requests=$(( REQUESTS > 3 * batch ? REQUESTS : 3 * batch ))
    stage_run "$stage" "$batch" 2 run --concurrency $((2 * batch)) --requests "$requests" \
      --label "stage=$stage kind=capacity batch=$batch"
  done
  rates=$(python3 -c "c = $(capacity_of "$stage" 4); print(','.join(f'{f * c:.3f}' for f in (0.25, 0.5, 0.75, 1.0, 1.25)))")
  stage_run "$stage" 4 2 sweep --rates "$rates" --requests "$REQUESTS" \
    --label "stage=$stage kind=open batch=4" \
    --plot "$OUT/$stage-latency.png" --title "$stage: latency vs offered load (max batch 4, Poisson)"
  stage_run "$stage" 8 2 sweep --concurrencies 1,2,4,8,16 --requests $((REQUESTS * 2)) \
    --label "stage=$stage kind=closed batch=8" \
    --plot "$OUT/$stage-throughput.png" --title "$stage: throughput vs requests in flight (max batch 8)"
done
"$LOAD" capacity --json "$RUNS" --table "$OUT/stages.md" --summary "$OUT/stages.json"
cat "$OUT/stages.md"
