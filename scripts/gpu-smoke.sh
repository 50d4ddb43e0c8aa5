#!/usr/bin/env bash
# GPU smoke test for a machine with an NVIDIA GPU and no network or toolchain: runs the carried
# CUDA build (scripts/build-cuda.sh) and the CPU runtime.
#   scripts/gpu-smoke.sh CIFAR10_DIR [SC_TRAINER_BINARY] [SC_RUNTIME_BINARY]
# 1. the same weights and batch, forward + backward, CPU vs GPU (tolerance printed by the check);
# 2. ResNet-20, one cycle, a few hundred iterations on CIFAR-10: images/s and validation accuracy;
#    then the same run in bf16 mixed precision (--precision bf16);
# 3. export and check the ONNX file with sc-runtime (info + bench).
set -euo pipefail
data=${1:?usage: gpu-smoke.sh CIFAR10_DIR [sc-trainer] [sc-runtime]}
trainer=${2:-target/cuda/release/sc-trainer}
runtime=${3:-target/release/sc-runtime}
out=${OUT:-/tmp/gpu-smoke}
iterations=${ITERATIONS:-300}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "== 1. CPU vs GPU, same weights, forward + backward"
"$trainer" device-check --device cuda --model resnet20 --batch-size 64 | tee "$out/device-check.txt"
echo "== 2. ResNet-20 one cycle, $iterations iterations"
"$trainer" fit --device cuda --data "$data" --model resnet20 --batch-size 512 \
  --schedule one-cycle --min-lr 0.2 --max-lr 2.0 --iterations "$iterations" --eval-every 100 \
  --runs "$out/runs" --name smoke-$(date +%s) --quiet | tee "$out/fit.txt"
run=$(ls -dt "$out"/runs/smoke-* | head -1)
echo "== 2b. the same in bf16 mixed precision"
"$trainer" fit --device cuda --precision bf16 --data "$data" --model resnet20 --batch-size 512 \
  --schedule one-cycle --min-lr 0.2 --max-lr 2.0 --iterations "$iterations" --eval-every 100 \
  --runs "$out/runs" --name bf16-$(date +%s) --quiet | tee "$out/fit-bf16.txt"
echo "== 3. export and check"
"$trainer" export "$run" --out "$out/model.onnx"
"$runtime" info "$out/model.onnx"
"$runtime" bench "$out/model.onnx" --batch 1,64 | tee "$out/bench.txt"
echo "gpu smoke: done ($out)"
