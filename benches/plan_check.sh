#!/usr/bin/env bash
# The capacity planner against reality: `vidcascade plan` predicts end-to-end latency for an
# arrival rate from docs/bench/stages.json; this starts the services with the replicas it
# proposes (one each at a low rate: more replicas than cores would only compete for the same
# 2 cores here), drives the gateway with open-loop Poisson arrivals at that rate, and prints
# the predicted and measured p50/p90 side by side.
#
#   cargo build --release --bins -p vidcascade -p vidcascade-load
#   bash benches/plan_check.sh [rate per s] [requests] [max batch]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-0.2}
REQUESTS=${2:-30}
BATCH=${3:-1}
MODEL=models/shapes
BIN=target/release
LOGS=$(mktemp -d)
source benches/lib.sh

echo "== predicted (vidcascade plan --rate $RATE --p90 60 --max-batch $BATCH)"
"$BIN/vidcascade" plan --rate "$RATE" --p90 60 --max-batch "$BATCH" --model "$MODEL"

ENCODER=$(start encoder vidcascade-text-encoder --model "$MODEL")
stage_args=()
for stage in $(diffusion_stages "$MODEL"); do
  addr=$(start "$stage" vidcascade-stage --model "$MODEL" --stage "$stage" --max-batch-size "$BATCH")
  stage_args+=(--stage "$stage=$addr")
done
GATEWAY=$(start gateway vidcascade-gateway --model "$MODEL" --encoder "$ENCODER" "${stage_args[@]}" --http-listen off)
echo "== measured (vidcascade-load run --target gateway --rate $RATE --arrivals poisson --requests $REQUESTS)"
"$BIN/vidcascade-load" run --target gateway --addr "http://$GATEWAY" --rate "$RATE" \
  --arrivals poisson --requests "$REQUESTS" --label "plan check, max batch $BATCH" \
  --json target/bench-plan-check.jsonl --quiet
