#!/usr/bin/env bash
# Which register block the AVX2 convolution tile should use: kernels/benches/avx2_geometry.rs,
# pinned to one core (the figures are per core). ALIGNED=1 shows what misaligned tap loads cost.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/cpu-info.sh"
cd "$root"
cargo bench -p sc-kernels --bench avx2_geometry --no-run
if command -v taskset >/dev/null; then
    taskset -c 0 cargo bench -p sc-kernels --bench avx2_geometry
else
    cargo bench -p sc-kernels --bench avx2_geometry
fi
