#!/usr/bin/env bash
# Proves the CUDA path still compiles: installs Debian bookworm's non-free CUDA toolkit (11.8) when
# nvcc is missing, then builds sc-trainer with candle's `cuda` feature into target/cuda/.
#   CUDA_COMPUTE_CAP (default 80): the GPU generation to build kernels for. No GPU is needed to build;
#   Debian's CUDA 11.8 cannot target 90a (H100/H200 native), but sm_80 code runs on them.
# Not run by CI (too heavy for every submission). The binary links libcublas/libcurand/libcudart 11
# dynamically: a GPU machine running it needs those libraries (see docs/DESIGN.md, "CUDA").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ] && ! grep -q "non-free" "$src"; then
    sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' "$src"
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvidia-cuda-toolkit >/dev/null
fi
command -v protoc >/dev/null 2>&1 || apt-get install -y -qq protobuf-compiler >/dev/null
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
nvcc --version | tail -1
cargo build --release -p sc-trainer --features cuda --target-dir target/cuda
ls -la target/cuda/release/sc-trainer
echo "CUDA build ok: target/cuda/release/sc-trainer (compute capability $CUDA_COMPUTE_CAP)"
