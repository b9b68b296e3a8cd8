#!/usr/bin/env bash
# CUDA build environment for a GPU-less box, from pinned PyPI wheels only (no system toolkit).
# Usage: eval "$(bash tools/cuda/env.sh [PREFIX])"   (PREFIX defaults to ~/.cache/vidcascade-cuda)
# Creates PREFIX/venv with the CUDA 13.0 wheels below, and PREFIX/cudalink with the unversioned
# lib*.so names a linker wants (pip ships only .so.N) plus a generated libcuda stub (no wheel ships
# one; every cu* entry of cuda.h returns 34 = CUDA_ERROR_STUB_LIBRARY). Prints the exports to eval.
# Why these pins: NVRTC must stay at 13.0 (13.2 emits PTX that the 13.0 ptxas/driver rejects), and
# the rest must match it. Idempotent: a marker holding the pin list skips pip on later runs.
# The exported LD_LIBRARY_PATH puts the stub first: right for running a cuda build's CPU tests here,
# wrong on a machine with a real driver (there, use the driver's libcuda.so.1 instead).
set -euo pipefail
P=${1:-$HOME/.cache/vidcascade-cuda}
PINS="nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88
nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35"
MARKER=$P/venv/.vidcascade-pins

if [ ! -x "$P/venv/bin/python" ] || [ "$(cat "$MARKER" 2>/dev/null)" != "$PINS" ]; then
  python3 -m venv "$P/venv" >&2
  # shellcheck disable=SC2086  # PINS is a word list on purpose
  "$P/venv/bin/pip" install -q --disable-pip-version-check $PINS >&2
  printf '%s' "$PINS" > "$MARKER"
  rm -f "$P/cudalink/libcuda.so"  # pins changed: regenerate the stub from the new cuda.h
fi

CU=$("$P/venv/bin/python" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
ln -sfn lib "$CU/lib64"            # nvcc.profile links from lib64; only matters when nvcc itself links
L=$P/cudalink; mkdir -p "$L"
for l in nvrtc.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 cudart.so.13; do
  ln -sfn "$CU/lib/lib$l" "$L/lib${l%%.so*}.so"
done
if [ ! -f "$L/libcuda.so" ]; then
  gcc -E -P -I"$CU/include" "$CU/include/cuda.h" \
    | grep -oE '^\s*(extern\s+)?CUresult\s+cu[A-Za-z0-9_]+\s*\(' | grep -oE 'cu[A-Za-z0-9_]+' | sort -u \
    | awk '{print "int " $1 "(void){return 34;} /* CUDA_ERROR_STUB_LIBRARY */"}' > "$L/cuda_stub.c"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$L/libcuda.so.tmp" "$L/cuda_stub.c"
  mv "$L/libcuda.so.tmp" "$L/libcuda.so"   # atomic: a killed run never leaves a half-written stub
fi
ln -sfn libcuda.so "$L/libcuda.so.1"

echo "export CU=$CU CUDA_LINK_DIR=$L"
echo "export PATH=$CU/bin:\$PATH CUDA_HOME=$CU CUDA_PATH=$CU CUDA_ROOT=$CU CUDA_COMPUTE_CAP=90"
echo "export LD_LIBRARY_PATH=$CU/lib:$L\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
