#!/usr/bin/env bash
# Training from a folder of JPEGs against training from CIFAR-10's binary batches, same images,
# same run: the decode-once cache (time to decode the 50,000-image folder), images/s once cached
# (ratio folder / binary), optionally the validation accuracy of both at the same seed and budget,
# and the downsampling stem at 96x96.
#
# Usage: scripts/bench-folder.sh CIFAR_DIR [ITERATIONS]
#   CIFAR_DIR   the CIFAR-10 binary training set (e.g. cifar10, the data home's copy after `sc-trainer data fetch cifar10`)
#   ITERATIONS  iterations per throughput run (default 300, batch 128)
#   ROUNDS=2            throughput runs per side, alternated
#   ACCURACY_EPOCHS=0   when > 0, train both for this many epochs (seed 0) and compare accuracy
#   STEM=0              when 1, also write a 96x96 JPEG folder and time the stride-2 stem on it
#   WORK=.bench/folder  where the JPEG folders and runs go
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,15p' "$0" >&2
    exit 2
fi
cifar=$1
iters=${2:-300}
rounds=${ROUNDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$root/.bench/folder}
mkdir -p "$work"

bash "$root/scripts/cpu-info.sh"
cargo build --release --workspace --examples --manifest-path "$root/Cargo.toml" 2>&1 | tail -1
trainer=$root/target/release/sc-trainer
example=$root/target/release/examples/image_folder

folder=$work/cifar10-jpeg
if [ ! -d "$folder" ]; then
    "$example" write "$cifar" "$folder"
fi
echo "== decode-once cache (all cores)"
"$example" decode "$folder"

ips() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["images_per_second"], 1))' "$1/summary.json"; }
acc() { python3 -c 'import json,sys; print(round(100*json.load(open(sys.argv[1]))["final_val_acc"], 2))' "$1/summary.json"; }

echo "== training images/s, ResNet-20, batch 128, $iters iterations, $rounds rounds alternated"
for r in $(seq 1 "$rounds"); do
    order="binary folder"
    [ $((r % 2)) = 0 ] && order="folder binary"   # ABBA: a drifting machine favours neither side
    for side in $order; do
        data=$cifar
        [ "$side" = folder ] && data=$folder
        rm -rf "$work/runs/tp-$side-$r"
        "$trainer" fit --data "$data" --iterations "$iters" --eval-every "$iters" --quiet \
            --runs "$work/runs" --name "tp-$side-$r" > /dev/null
        echo "round $r $side: $(ips "$work/runs/tp-$side-$r") images/s"
    done
done
python3 - "$work/runs" "$rounds" <<'PY'
import json, sys
runs, rounds = sys.argv[1], int(sys.argv[2])
v = {s: [json.load(open(f"{runs}/tp-{s}-{r}/summary.json"))["images_per_second"] for r in range(1, rounds + 1)] for s in ("binary", "folder")}
b, f = sum(v["binary"]) / rounds, sum(v["folder"]) / rounds
print(f"mean images/s: binary {b:.1f}, folder {f:.1f}; folder / binary = {f / b:.3f}")
PY

epochs=${ACCURACY_EPOCHS:-0}
if [ "$epochs" != 0 ]; then
    echo "== validation accuracy after $epochs epochs, seed 0 (5,000 random validation images each)"
    for side in binary folder; do
        data=$cifar
        [ "$side" = folder ] && data=$folder
        rm -rf "$work/runs/acc-$side"
        "$trainer" fit --data "$data" --epochs "$epochs" --quiet --runs "$work/runs" --name "acc-$side" > /dev/null
        echo "$side: val acc $(acc "$work/runs/acc-$side") %, $(ips "$work/runs/acc-$side") images/s"
    done
fi

if [ "${STEM:-0}" = 1 ]; then
    big=$work/cifar10-jpeg-96
    if [ ! -d "$big" ]; then
        "$example" write "$cifar" "$big" --size 96
    fi
    echo "== 96x96 folder: decode, then the downsampling stem (stride-2 first convolution)"
    "$example" decode "$big" --size 96
    rm -rf "$work/runs/stem96"
    "$trainer" fit --data "$big" --image-size 96 --iterations "$iters" --eval-every "$iters" --quiet \
        --runs "$work/runs" --name stem96 > /dev/null
    echo "96x96 with the stem: $(ips "$work/runs/stem96") images/s (32x32 folder above)"
fi
