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
touch "$LOGS/pids"

# Services are started inside $(...) subshells, so their pids go through a file.
cleanup() {
  while read -r pid; do
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done < "$LOGS/pids"
  : > "$LOGS/pids"
}
trap cleanup EXIT

# start NAME BINARY ARGS...: runs a service on a free port, prints its gRPC address.
start() {
  local name=$1 binary=$2; shift 2
  "$BIN/$binary" "$@" --listen 127.0.0.1:0 --metrics-listen off --log warn \
    > "$LOGS/$name.out" 2> "$LOGS/$name.err" &
  echo $! >> "$LOGS/pids"
  # The announcement counts only once its line is complete (newline-terminated): a grep that
  # catches it half-written would hand the gateway a blank or truncated address.
  local addr
  for _ in $(seq 1 200); do
    if [ "$(wc -l < "$LOGS/$name.out" 2>/dev/null || echo 0)" -ge 1 ]; then
      addr=$(head -n 1 "$LOGS/$name.out" | sed -n 's/.*listening grpc=\([^ ]*\).*/\1/p')
      if [ -n "$addr" ]; then
        echo "$addr"
        return
      fi
      echo "$name announced no address: $(head -n 1 "$LOGS/$name.out")" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "$name did not start: $(cat "$LOGS/$name.err")" >&2
  exit 1
}

cluster() {
  local batch=$1
  ENCODER=$(start encoder vidcascade-text-encoder --model "$MODEL")
  local stage_args=()
  for stage in $(python3 -c "import json,sys; print(' '.join(s['name'] for s in json.load(open('$MODEL/manifest.json'))['stages'] if s['kind']!='text-encoder'))"); do
    addr=$(start "$stage" vidcascade-stage --model "$MODEL" --stage "$stage" --max-batch-size "$batch")
    stage_args+=(--stage "$stage=$addr")
  done
  GATEWAY=$(start gateway vidcascade-gateway --model "$MODEL" --encoder "$ENCODER" "${stage_args[@]}" --http-listen off)
}

echo "| configuration | mode | concurrency | requests | median s | p90 s | median first stage video s | generations / min |"
echo "|---|---|---|---|---|---|---|---|"
"$BIN/vidcascade-load" --in-process --model "$MODEL" --requests "$REQUESTS" --label "in-process" --json "$JSON"
for batch in 4 1; do
  cluster "$batch"
  "$BIN/vidcascade-load" --addr "http://$GATEWAY" --requests "$REQUESTS" --concurrency 1 --label "services, max batch $batch" --json "$JSON"
  "$BIN/vidcascade-load" --addr "http://$GATEWAY" --requests $((REQUESTS * 2)) --concurrency 4 --label "services, max batch $batch" --json "$JSON"
  cleanup
done
