# Shared by the bench scripts (source it): start release services on free ports, stop them.
# Needs BIN (the release binaries) and LOGS (a scratch folder) set by the caller.
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

# start NAME BINARY ARGS...: runs a service on free ports, prints its gRPC address; its metrics
# address is then `metrics_of NAME`.
start() {
  local name=$1 binary=$2; shift 2
  "$BIN/$binary" "$@" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log warn \
    > "$LOGS/$name.out" 2> "$LOGS/$name.err" &
  echo $! >> "$LOGS/pids"
  # The announcement counts only once its line is complete (newline-terminated): a grep that
  # catches it half-written would hand the gateway a blank or truncated address.
  local addr
  for _ in $(seq 1 400); do
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

# metrics_of NAME: the metrics address NAME announced.
metrics_of() {
  head -n 1 "$LOGS/$1.out" | sed -n 's/.*metrics=\([^ ]*\).*/\1/p'
}

# diffusion_stages MODEL: the manifest's diffusion stage names, in cascade order.
diffusion_stages() {
  python3 -c "import json,sys; print(' '.join(s['name'] for s in json.load(open('$1/manifest.json'))['stages'] if s['kind']!='text-encoder'))"
}
