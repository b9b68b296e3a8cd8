#!/usr/bin/env bash
# An `nvcc` for type-checking a cuda build (cargo check / clippy --features cuda), never for
# building one: it answers the questions nvcc is asked (`--version` and anything else that names
# no output) with the real nvcc, and for compile jobs writes empty outputs instead of compiling.
#
# Why: candle-kernels' build script compiles ~30 .cu files with nvcc (~6-7 minutes on 2 cores,
# most of CI's CUDA section; design.md §6) even when cargo only checks, and a check needs none of
# it: the PTX is embedded with include_str! and libmoe.a is only read by a linker, and a check
# never links. Used through cudaforge's `NVCC` variable (CI: `NVCC=$PWD/tools/cuda/nvcc-check-only.sh
# cargo clippy ...`); our own kernels are compiled for real by tools/cuda/gen_ptx.py (NVRTC) and
# checked by tools/cuda/check_ptx.py (ptxas).
#
# The three job shapes cudaforge 0.1.6 runs:
#   nvcc ... --ptx --output-directory DIR ... FILE.cu  -> DIR/FILE.ptx
#   nvcc ... -c -o OBJ ... FILE.cu                     -> OBJ
#   nvcc --lib -o LIB OBJ...                           -> LIB (an empty ar archive)
set -euo pipefail

output_dir="" output="" source="" ptx="" lib=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --ptx | -ptx) ptx=1 ;;
    --lib | -lib) lib=1 ;;
    --output-directory | -odir) output_dir="${args[i + 1]}" ;;
    -o | --output-file) output="${args[i + 1]}" ;;
    *.cu) source="${args[i]}" ;;
  esac
done

if [ -n "$ptx" ] && [ -n "$output_dir" ] && [ -n "$source" ]; then
  stem=$(basename "$source" .cu)
  : > "$output_dir/$stem.ptx"
elif [ -n "$lib" ] && [ -n "$output" ]; then
  printf '!<arch>\n' > "$output"
elif [ -n "$output" ] && [ -n "$source" ]; then
  : > "$output"
else
  # Not a compile job (e.g. `nvcc --version`): the real nvcc, the next one on PATH.
  self=$(readlink -f "$0")
  IFS=: read -r -a dirs <<< "$PATH"
  for dir in "${dirs[@]}"; do
    candidate="$dir/nvcc"
    if [ -x "$candidate" ] && [ "$(readlink -f "$candidate")" != "$self" ]; then
      exec "$candidate" "$@"
    fi
  done
  echo "nvcc-check-only.sh: no real nvcc on PATH for: nvcc $*" >&2
  exit 127
fi
