#!/usr/bin/env bash
# Service benchmark: one generation through the real services vs in process, and throughput at
# concurrency 1 vs 4 with step-level batching on (max batch 4) vs off (max batch 1).
#
#   cargo build --release --bins -p vidcascade -p vidcascade-load
#   bash benches/services.sh [model dir] [requests]
#
# Starts the release binaries on 127.0.0.1 (free ports), drives the gateway with vidcascade-load,
# prints a markdown table and appends JSON lines to target/bench-services.jsonl. Everything runs
# in one go, side by side, so the numbers compare on the same (noisy, shared) machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/shapes}
REQUESTS=${2:-4}
BIN=target/release
JSON=target/bench-services.jsonl
LOGS=$(mktemp -d)
source benches/lib.sh

cluster() {
  local batch=$1
  ENCODER=$(start encoder vidcascade-text-encoder --model "$MODEL")
  local stage_args=()
  for stage in $(diffusion_stages "$MODEL"); do
    addr=$(start "$stage" vidcascade-stage --model "$MODEL" --stage "$stage" --max-batch-size "$batch")
    stage_args+=(--stage "$stage=$addr")
  done
  GATEWAY=$(start gateway vidcascade-gateway --model "$MODEL" --encoder "$ENCODER" "${stage_args[@]}" --http-listen off)
}

LOAD="$BIN/vidcascade-load"
"$LOAD" in-process --model "$MODEL" --requests "$REQUESTS" --label "in-process" --json "$JSON"
for batch in 4 1; do
  cluster "$batch"
  "$LOAD" run --target gateway --addr "http://$GATEWAY" --requests "$REQUESTS" --concurrency 1 \
    --label "services, max batch $batch" --json "$JSON" --quiet
  "$LOAD" run --target gateway --addr "http://$GATEWAY" --requests $((REQUESTS * 2)) --concurrency 4 \
    --label "services, max batch $batch" --json "$JSON" --quiet
  cleanup
done
