#!/usr/bin/env bash
# The main job on a fresh machine: build, train ResNet-20 with a one-cycle schedule on
# Fashion-MNIST (real data), export ONNX, and evaluate the exported model with sc-runtime on the
# Fashion-MNIST test set. Needs Rust (cargo) and a C compiler; no root, no protoc.
#   DATA=DIR        Fashion-MNIST's IDX files (default: Debian's dataset-fashion-mnist in
#                   /usr/share/datasets/fashion-mnist if installed, else the data home's copy,
#                   fetched on first use: `sc-trainer data fetch fashion-mnist`)
#   ITERATIONS=N    the budget (default 1000, a few minutes on 2 cores)
#   NAME=NAME       the run's name under runs/
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p sc-trainer -p sc-runtime
bin=./target/release
data=${DATA:-}
debian=/usr/share/datasets/fashion-mnist
if [ -z "$data" ] && [ -e "$debian/train-images-idx3-ubyte.gz" ]; then
  data=$debian
fi
if [ -z "$data" ]; then
  # The data home (SC_DATA_DIR, else the platform's data directory): downloaded once, checked
  # against the published MD5s; `fashion-mnist` is its short name.
  if ! "$bin/sc-trainer" data fetch fashion-mnist --quiet; then
    # No way to the download (an offline machine): Debian's package, where we may install it.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "download failed: installing Debian's dataset-fashion-mnist instead" >&2
      apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
      data=$debian
    else
      echo "no Fashion-MNIST: the download failed; give DATA=DIR (its IDX files), or install Debian's dataset-fashion-mnist" >&2
      exit 1
    fi
  else
    data=fashion-mnist
  fi
fi
# The machine and the kernels' instruction set (fit repeats the latter as "CPU kernels: ...").
bash scripts/cpu-info.sh
echo "kernel ISA: ${SC_KERNELS_ISA:-the widest this CPU has} (SC_KERNELS_ISA=avx512|avx2|portable caps it)"
echo "data: $data"
iterations=${ITERATIONS:-1000}
name=${NAME:-fashion-resnet20-$(date +%Y%m%d-%H%M%S)}
"$bin/sc-trainer" fit \
  --data "$data" --model resnet20 --pad 2 --batch-size 128 --val-size 5000 \
  --schedule one-cycle --min-lr 0.08 --max-lr 0.8 --final-lr 0.0008 --pct-start 0.3 --anneal cos \
  --cyclic-momentum 0.95,0.85 --weight-decay 5e-4 --nesterov \
  --iterations "$iterations" --eval-every 100 --name "$name"
"$bin/sc-runtime" eval "runs/$name/model.onnx" "$data"
