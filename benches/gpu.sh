#!/usr/bin/env bash
# The GPU check, run ON the GPU machine from the repo root (it has the driver and PyTorch but no
# cargo): unpacks the binaries that `benches/gpu-bundle.sh` built, then runs the GPU tests, the
# GPU bench, PyTorch's SDPA/copy on the same shapes (benches/gpu_peer.py), the CLI on cuda and
# cpu, and writes report.md (benches/gpu_report.py). Every step has its own timeout and its own
# log; a failure never stops the rest (statuses in summary.txt; the exit status is 1 if any failed).
#
#   bash benches/gpu.sh [BUNDLE_DIR] [OUT_DIR]     # defaults: target/gpu-bundle, ${OUT:-target/gpu-report}
#
# Env: VIDCASCADE_CUDA_LIBS (cuBLAS/cuRAND/cudart 13 folder; default the torch venv's nvidia/cu13/lib),
# VIDCASCADE_TORCH_PYTHON (default /opt/torch/.venv/bin/python), VIDCASCADE_GPU_BENCH (bench
# sections), VIDCASCADE_GPU_BUDGET_S (all steps together, default 540: the report is always written).
set -uo pipefail
BUNDLE=$(realpath "${1:-target/gpu-bundle}")
OUT_DIR=${2:-${OUT:-target/gpu-report}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(realpath "$OUT_DIR")
CUDA_LIBS=${VIDCASCADE_CUDA_LIBS:-/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib}
PY=${VIDCASCADE_TORCH_PYTHON:-/opt/torch/.venv/bin/python}
DEADLINE=$((SECONDS + ${VIDCASCADE_GPU_BUDGET_S:-540}))
PY3=$(command -v python3 || echo "$PY")   # the report needs no torch; any python3
PROMPT="a red circle moving left on a black background"
SUMMARY=$OUT_DIR/summary.txt
: > "$SUMMARY"
BIN=$(mktemp -d)
CREATED_ROOT=
trap 'rm -rf "$BIN"; [ -z "$CREATED_ROOT" ] || rm -f "$CREATED_ROOT"' EXIT

# --- the binaries (manifest lines: `KIND NAME -> FILE PACKAGE_DIR`) ---
[ -f "$BUNDLE/manifest.txt" ] || { echo "no $BUNDLE/manifest.txt: run benches/gpu-bundle.sh on the build machine" >&2; exit 2; }
TESTS=() BENCH= CLI=
while read -r kind name _ file dir; do
  case $kind in \#*|root|'') continue ;; esac
  exe=$BIN/$kind-$name
  if command -v xz >/dev/null; then xz -dc "$BUNDLE/$file" > "$exe"
  else "$PY3" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$BUNDLE/$file" > "$exe"
  fi && chmod +x "$exe" || { echo "cannot unpack $file" >&2; exit 2; }
  case $kind in
    test) TESTS+=("$name:$dir:$exe") ;;
    bench) BENCH=$exe ;;
    bin) CLI=$exe ;;
  esac
done < "$BUNDLE/manifest.txt"

# Tests find models/ through the build machine's CARGO_MANIFEST_DIR: point that path here if absent.
BUILD_ROOT=$(sed -n 's/^root //p' "$BUNDLE/manifest.txt")
if [ -n "$BUILD_ROOT" ] && [ ! -e "$BUILD_ROOT" ] && mkdir -p "$(dirname "$BUILD_ROOT")" 2>/dev/null \
  && ln -s "$PWD" "$BUILD_ROOT" 2>/dev/null; then
  CREATED_ROOT=$BUILD_ROOT
  echo "linked $BUILD_ROOT -> $PWD (the tests' compiled-in checkout path)"
fi
export VIDCASCADE_BENCH_MODEL=$PWD/models/shapes RUST_BACKTRACE=1

# --- libraries: the pip CUDA 13 libs, and never a libcuda stub (a real libcuda is tens of MB) ---
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  [ -e "$CUDA_LIBS/$lib" ] || echo "warning: no $CUDA_LIBS/$lib" >&2
done
KEEP=
IFS=: read -ra DIRS <<< "$CUDA_LIBS:${LD_LIBRARY_PATH:-}"
for d in "${DIRS[@]}"; do
  [ -n "$d" ] || continue
  if [ -e "$d/libcuda.so.1" ] && [ "$(stat -Lc %s "$d/libcuda.so.1")" -lt 1000000 ]; then
    echo "warning: dropping $d from LD_LIBRARY_PATH: its libcuda.so.1 is a stub" >&2
  else
    KEEP=${KEEP:+$KEEP:}$d
  fi
done
export LD_LIBRARY_PATH=$KEEP
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if command -v nvidia-smi >/dev/null; then
  { nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; } 2>&1
else
  echo "no nvidia-smi"
fi | tee "$OUT_DIR/nvidia-smi.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT_DIR/nvidia-smi.txt"

# step NAME LIMIT_S DIR CMD...: runs CMD in DIR, stdout and stderr to NAME.log, under LIMIT_S and
# the overall budget (20 s kept for the report); records its status in summary.txt. On this machine
# "skipped: no CUDA device" is a failure too: the GPU was there to be measured.
FAILED=0
step() {
  local name=$1 limit=$2 dir=$3 start=$SECONDS rc status; shift 3
  local left=$((DEADLINE - SECONDS - 20)) log=$OUT_DIR/$name.log
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 5 ]; then
    rc=skip; echo "skipped: out of time" > "$log"
  else
    echo "== $name (limit ${limit} s): $*"
    (cd "$dir" && exec timeout -k 10 "$limit" "$@") > "$log" 2>&1
    rc=$?
  fi
  case $rc in 0) status=ok ;; skip) status="FAILED (not run: out of time)" ;; 124|137) status="FAILED rc=$rc (timed out)" ;; *) status="FAILED rc=$rc" ;; esac
  if [ "$rc" = 0 ] && grep -q 'skipped: no CUDA device' "$log"; then status="FAILED (skipped: no CUDA device)"; fi
  [ "$status" = ok ] || FAILED=1
  printf '%-20s %4d s  %s\n' "$name" $((SECONDS - start)) "$status" | tee -a "$SUMMARY"
  tail -n 4 "$log" | sed 's/^/    /'
}

# a. the GPU tests (each prints its max differences, or "skipped: no CUDA device")
for t in "${TESTS[@]}"; do
  IFS=: read -r name dir exe <<< "$t"
  step "test-$name" 180 "$dir" "$exe" --nocapture --test-threads=1
done

# b. the bench (harness = false: no `--bench` argument; no argument = all sections)
if [ -n "$BENCH" ]; then
  step gpu-bench 300 . "$BENCH"
  grep '^{' "$OUT_DIR/gpu-bench.log" > "$OUT_DIR/gpu-bench.jsonl"
  # c. the PyTorch peer on the bench's attention shapes
  step torch-peer 120 . bash -c 'set -o pipefail; "$1" attention-shapes | "$2" benches/gpu_peer.py' _ "$BENCH" "$PY"
  grep '^{' "$OUT_DIR/torch-peer.log" > "$OUT_DIR/torch.jsonl"
else
  echo "no bench in the bundle" | tee -a "$SUMMARY"; FAILED=1
fi

# d. the CLI end to end (its "wrote ... in X.XX s" line goes to summary.txt too)
if [ -n "$CLI" ]; then
  step generate-cuda 180 . "$CLI" generate "$PROMPT" -o "$OUT_DIR/gpu.gif" --device cuda --dtype f16
  step generate-cpu 180 . "$CLI" generate "$PROMPT" -o "$OUT_DIR/cpu.gif" --device cpu
  grep -h 'wrote .* in [0-9.]* s' "$OUT_DIR/generate-cuda.log" "$OUT_DIR/generate-cpu.log" | sed 's/^/    /' | tee -a "$SUMMARY"
else
  echo "no vidcascade binary in the bundle" | tee -a "$SUMMARY"; FAILED=1
fi

# e. the report
DEADLINE=$((SECONDS + 60))
step report 30 . "$PY3" benches/gpu_report.py "$OUT_DIR"
cat "$OUT_DIR/report.md" 2>/dev/null
echo; cat "$SUMMARY"
exit "$FAILED"
