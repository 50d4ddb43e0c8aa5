#!/usr/bin/env bash
# Training accuracy under each kernel instruction set this CPU has: the same seed, data, split and
# schedule, once per ISA (SC_KERNELS_ISA), on real data; prints validation accuracy and speed.
#
# Usage: scripts/isa-accuracy.sh DATA [ITERATIONS] [ISAS]
#   DATA        a data set fit reads (e.g. cifar10, the data home's copy after `sc-trainer data fetch cifar10`)
#   ITERATIONS  training iterations at batch 128 (default 300)
#   ISAS        comma-separated (default: avx512,avx2,portable, skipping what the CPU lacks)
set -euo pipefail
data=${1:?usage: scripts/isa-accuracy.sh DATA [ITERATIONS] [ISAS]}
iterations=${2:-300}
isas=${3:-avx512,avx2,portable}
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace --bin sc-trainer
bash scripts/cpu-info.sh
stamp=$(date +%Y%m%d-%H%M%S)
mkdir -p runs
for isa in ${isas//,/ }; do
  if [ "$isa" = avx512 ] && ! grep -qw avx512f /proc/cpuinfo; then echo "$isa: not on this CPU, skipped"; continue; fi
  if [ "$isa" = avx2 ] && ! grep -qw avx2 /proc/cpuinfo; then echo "$isa: not on this CPU, skipped"; continue; fi
  name=isa-accuracy-$stamp-$isa
  SC_KERNELS_ISA=$isa ./target/release/sc-trainer fit --data "$data" --model resnet20 \
    --batch-size 128 --val-size 5000 --seed 1 --schedule one-cycle --min-lr 0.08 --max-lr 0.8 \
    --final-lr 0.0008 --pct-start 0.3 --weight-decay 5e-4 --iterations "$iterations" \
    --eval-every "$iterations" --name "$name" > "runs/$name.log" 2>&1 \
    || { echo "$isa: fit failed, see runs/$name.log" >&2; exit 1; }
  python3 - "runs/$name/summary.json" "$isa" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<9} validation accuracy {100 * s['final_val_acc']:.2f} %  "
      f"loss {s['final_val_loss']:.4f}  {s['images_per_second']:.0f} img/s")
PY
done
