#!/usr/bin/env bash
# Which register block the AVX2 convolution tile should use: compiles scripts/avx2_geometry.rs
# (no dependencies) with rustc -O and runs it on one core. Needs a CPU with AVX2 and FMA.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/cpu-info.sh"
grep -qw fma /proc/cpuinfo && grep -qw avx2 /proc/cpuinfo || { echo "this CPU lacks AVX2+FMA" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rustc -O --edition 2021 "$root/scripts/avx2_geometry.rs" -o "$out/avx2-geometry"
# One core: the figures are per core (and a failed check must not be hidden by a rerun).
if command -v taskset >/dev/null; then
    taskset -c 0 "$out/avx2-geometry"
else
    "$out/avx2-geometry"
fi
