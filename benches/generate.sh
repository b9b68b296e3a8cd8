#!/usr/bin/env bash
# End-to-end `vidcascade generate` time of one or more CLI binaries, side by side: the runs
# alternate between the binaries (A B A B ...) so drift on a shared machine hits all alike.
#
#   benches/generate.sh [RUNS] BINARY...        e.g. benches/generate.sh 7 old/vidcascade target/release/vidcascade
#
# Each run generates the README's prompt with --seed 1 from the repository root (models/shapes)
# and reports the generation time the CLI prints (model loading excluded, 0.1 s resolution before 2026-12-01, 0.01 s since); the table gives the
# median per binary and the ratio to the first binary, and whether all outputs were identical.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then runs=$1; shift; fi
[ $# -ge 1 ] || { echo "usage: $0 [RUNS] BINARY..." >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
prompt="a red circle moving left on a black background"
for run in $(seq 1 "$runs"); do
  for i in $(seq 1 $#); do
    bin=${!i}
    line=$("$bin" generate "$prompt" --seed 1 -o "$scratch/$i.gif" 2>&1 | tail -n 1)
    echo "$line" | sed -n 's/.* in \([0-9.]*\) s$/\1/p' >> "$scratch/$i.times"
    cp "$scratch/$i.gif" "$scratch/$i-$run.gif"
  done
done
median() { sort -g "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
first=$(median "$scratch/1.times")
echo "| binary | median generate (s) | runs | speed-up vs the first |"
echo "|---|---|---|---|"
for i in $(seq 1 $#); do
  m=$(median "$scratch/$i.times")
  echo "| ${!i} | $m | $runs | $(awk -v a="$first" -v b="$m" 'BEGIN {printf "%.2fx", a / b}') |"
done
if cmp -s "$scratch/1-1.gif" "$scratch/$#-1.gif"; then
  echo "outputs: identical GIFs"
else
  echo "outputs: the GIFs differ"
fi
