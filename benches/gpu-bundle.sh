#!/usr/bin/env bash
# Builds what the GPU machine needs and packs it into target/gpu-bundle/ (BUNDLE_DIR to change):
# the `vidcascade` CLI, the GPU test binaries and the GPU bench, all `--features cuda`, each
# xz-compressed, plus manifest.txt. Why: the GPU machine has no cargo and a device run carries at
# most 64 MiB of ignored paths; a cuda binary is ~40 MB raw, ~5 MB in xz. There, run
# `bash benches/gpu.sh` (it reads manifest.txt).
#
#   bash benches/gpu-bundle.sh            # then carry target/gpu-bundle to the device run
#
# manifest.txt: `root DIR` (this checkout: tests find models/ through the CARGO_MANIFEST_DIR
# compiled into them), then one `KIND NAME -> FILE PACKAGE_DIR` line per binary (PACKAGE_DIR is
# relative to the root; cargo runs tests and benches from their package's folder).
set -euo pipefail
shopt -s inherit_errexit  # a failing cargo inside $(...) stops the script too
cd "$(dirname "$0")/.."
ROOT=$PWD
BUNDLE=${BUNDLE_DIR:-target/gpu-bundle}
CUDA_ENV=$(bash tools/cuda/env.sh)  # = eval "$(bash tools/cuda/env.sh)", but a failure stops here
eval "$CUDA_ENV"

# The GPU kernel tests that exist (sampler_cuda lands with the sampler kernel).
KERNEL_TESTS=()
for t in flash_cuda sampler_cuda; do
  if [ -f "kernels/tests/$t.rs" ]; then KERNEL_TESTS+=(--test "$t"); else echo "warning: no kernels/tests/$t.rs, not bundled" >&2; fi
done

# Every cargo command of the bundle, once; stdout is cargo's JSON messages.
build_all() {
  cargo build --release --features cuda --bin vidcascade --message-format=json
  cargo test --release --features cuda --no-run --message-format=json -p vidcascade-kernels "${KERNEL_TESTS[@]}"
  cargo test --release --features cuda --no-run --message-format=json --test gpu
  cargo bench --features cuda --no-run --message-format=json --bench gpu
}

# KIND:NAME of every binary wanted, in the order gpu.sh runs them.
WANT=(bin:vidcascade)
for ((i = 1; i < ${#KERNEL_TESTS[@]}; i += 2)); do WANT+=("test:${KERNEL_TESTS[i]}"); done
WANT+=(test:gpu bench:gpu)

# Prints "KIND NAME EXECUTABLE PACKAGE_DIR" per wanted artifact; fails if one is missing.
ARTIFACTS=$(build_all | python3 -c '
import json, os, sys
root, want, found = sys.argv[1], sys.argv[2:], {}
for line in sys.stdin:
    m = json.loads(line) if line.startswith("{") else {}
    if m.get("reason") == "compiler-message":  # warnings and errors: as cargo would show them
        sys.stderr.write(m["message"].get("rendered") or "")
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        key = m["target"]["kind"][0] + ":" + m["target"]["name"]
        found[key] = (m["executable"], os.path.relpath(os.path.dirname(m["manifest_path"]), root))
missing = [k for k in want if k not in found]
if missing:
    sys.exit("no executable for " + ", ".join(missing))
for k in want:
    print(*k.split(":"), *found[k])
' "$ROOT" "${WANT[@]}")

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
{
  echo "# vidcascade GPU bundle, $(date -u +%FT%TZ), git $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)"
  echo "root $ROOT"
} > "$BUNDLE/manifest.txt"
while read -r kind name exe dir; do
  file=$kind-$name.xz   # the test and the bench are both named `gpu`
  xz -T2 -6 -c "$exe" > "$BUNDLE/$file"
  echo "$kind $name -> $file $dir" >> "$BUNDLE/manifest.txt"
  printf '%-6s %-14s %5s MB raw -> %s\n' "$kind" "$name" "$(( $(stat -c %s "$exe") >> 20 ))" "$file"
done <<< "$ARTIFACTS"

cat "$BUNDLE/manifest.txt"
size=$(du -sb "$BUNDLE" | cut -f1)
echo "bundle: $BUNDLE $((size >> 20)) MiB ($size bytes; a device run carries at most 64 MiB)"
[ "$size" -lt $((60 << 20)) ] || { echo "bundle too large" >&2; exit 1; }
