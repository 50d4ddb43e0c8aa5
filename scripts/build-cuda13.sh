#!/usr/bin/env bash
# A CUDA build for the GPU machine this project is lent (driver 580, CUDA 13 libraries from PyTorch
# cu130's pip packages, no Rust, at most 64 MiB carried): builds sc-trainer against CUDA 13.0 taken
# from NVIDIA's pip wheels (no system toolkit needed), for sm_90 (H100/H200), then strips and
# compresses it to .cuda13/sc-trainer.xz (~11 MB) for `run`'s carry. See docs/DESIGN.md, "CUDA".
#   On the device:  xz -dc .cuda13/sc-trainer.xz > /tmp/sc-trainer && chmod +x /tmp/sc-trainer
#     export LD_LIBRARY_PATH=$(python3 -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","lib"))')
#     scripts/gpu-smoke.sh CIFAR10_DIR /tmp/sc-trainer
set -euo pipefail
cd "$(dirname "$0")/.."
kit=target/cuda13-toolkit
root=$kit/x/nvidia/cu13
if [ ! -x "$root/nvvm/bin/cicc" ] || [ ! -f "$root/include/crt/host_config.h" ]; then
  mkdir -p "$kit/whl"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$kit/whl" nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  for w in "$kit"/whl/*.whl; do python3 -m zipfile -e "$w" "$kit/x"; done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
  # The linker wants unversioned names; the wheels ship only the versioned ones.
  for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "$root/lib/lib$l.so"; done
  ln -sf libcurand.so.10 "$root/lib/libcurand.so"
fi
root=$(cd "$root" && pwd)
command -v protoc >/dev/null 2>&1 || apt-get install -y -qq protobuf-compiler >/dev/null
# libcuda.so (the driver's, for linking only) comes from the system: the Debian toolkit that
# scripts/build-cuda.sh installs provides it.
[ -e /usr/lib/x86_64-linux-gnu/libcuda.so ] || { echo "libcuda.so missing: run scripts/build-cuda.sh once (it installs it)" >&2; exit 1; }
export CUDA_ROOT=$root CUDA_PATH=$root PATH=$root/bin:$PATH
export LIBRARY_PATH=$root/lib:/usr/lib/x86_64-linux-gnu CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
nvcc --version | tail -1
cargo build --release -p sc-trainer --features cuda --target-dir target/cuda13
mkdir -p .cuda13
objcopy --strip-debug target/cuda13/release/sc-trainer .cuda13/sc-trainer
xz -T2 -6 -f .cuda13/sc-trainer
readelf -d target/cuda13/release/sc-trainer | grep -E 'NEEDED.*(cu|nv)' || true
ls -la .cuda13/sc-trainer.xz
echo "CUDA 13 build ok: .cuda13/sc-trainer.xz (compute capability $CUDA_COMPUTE_CAP)"
