#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, train ResNet-20 with a one-cycle
# schedule on Fashion-MNIST (real data, from Debian), export ONNX, and evaluate the exported model
# with sc-runtime on the Fashion-MNIST test set.
#   ITERATIONS=N to change the budget (default below; about a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
data=${DATA:-/usr/share/datasets/fashion-mnist}
[ -e "$data/train-images-idx3-ubyte.gz" ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -p sc-trainer -p sc-runtime
# The machine and the kernels' instruction set (fit repeats the latter as "CPU kernels: ...").
bash scripts/cpu-info.sh
echo "kernel ISA: ${SC_KERNELS_ISA:-the widest this CPU has} (SC_KERNELS_ISA=avx512|avx2|portable caps it)"
iterations=${ITERATIONS:-1000}
name=${NAME:-fashion-resnet20-$(date +%Y%m%d-%H%M%S)}
./target/release/sc-trainer fit \
  --data "$data" --model resnet20 --pad 2 --batch-size 128 --val-size 5000 \
  --schedule one-cycle --min-lr 0.08 --max-lr 0.8 --final-lr 0.0008 --pct-start 0.3 --anneal cos \
  --cyclic-momentum 0.95,0.85 --weight-decay 5e-4 --nesterov \
  --iterations "$iterations" --eval-every 100 --name "$name"
./target/release/sc-runtime eval "runs/$name/model.onnx" "$data"
