#!/usr/bin/env bash
# Data-parallel fit on one machine, three ways, in interleaved rounds: 2 MPI ranks x 1 thread,
# 1 process x 1 thread, 1 process x 2 threads; images/s of each (the runs' summary.json), the
# ratios within each round, and the allreduce's share as the 2-rank run printed it.
#
# Usage: scripts/bench-mpi.sh [CONFIGS] [ROUNDS] [DATA]
#   CONFIGS  model:batch pairs, comma-separated (default resnet20:128,resnet20:1000,resnet56:128,resnet56:1000)
#   ROUNDS   rounds (default 3); each runs every configuration three ways, one after another
#   DATA     training data (default cifar10, from the data home)
# Builds sc-trainer with the `mpi` feature (needs openmpi-bin, libopenmpi-dev, libclang-dev).
# 20 iterations at batch 128, 8 at larger batches, the first step not counted. Measure on an
# otherwise idle machine; these VMs drift by up to 30 % over minutes, so read the per-round ratios.
set -euo pipefail

configs=${1:-resnet20:128,resnet20:1000,resnet56:128,resnet56:1000}
rounds=${2:-3}
data=${3:-cifar10}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet -p sc-trainer --features mpi --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/release/sc-trainer
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
bash "$root/scripts/cpu-info.sh"

ips() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images_per_second"])' "$runs/$1/summary.json"; }
printf '%-6s %-9s %6s | %10s %10s %10s | %9s %9s | %s\n' round model batch "2x1 img/s" "1x1 img/s" "1x2 img/s" "2r/1x1" "2r/1x2" "allreduce"
for round in $(seq 1 "$rounds"); do
    for cfg in ${configs//,/ }; do
        m=${cfg%%:*} b=${cfg##*:}
        it=20; [ "$b" -gt 128 ] && it=8
        common=(fit --data "$data" --model "$m" --batch-size "$b" --iterations "$it" --eval-every 100000 --quiet --runs "$runs")
        tag=$m-$b-$round
        mpirun -np 2 --bind-to core -x RAYON_NUM_THREADS=1 "$bin" "${common[@]}" --name "mpi-$tag" > "$runs/mpi-$tag.log" 2>&1
        RAYON_NUM_THREADS=1 "$bin" "${common[@]}" --name "one-$tag" > /dev/null 2>&1
        RAYON_NUM_THREADS=2 "$bin" "${common[@]}" --name "two-$tag" > /dev/null 2>&1
        a=$(ips "mpi-$tag") o=$(ips "one-$tag") t=$(ips "two-$tag")
        share=$(grep -o 'per step: [0-9.]* ms mean over [0-9]* steps, [0-9.]* %' "$runs/mpi-$tag.log" | tail -1 | sed 's/ mean over [0-9]* steps,/,/')
        printf '%-6s %-9s %6s | %10.1f %10.1f %10.1f | %8.2fx %8.2fx | %s\n' "$round" "$m" "$b" "$a" "$o" "$t" \
            "$(python3 -c "print($a/$o)")" "$(python3 -c "print($a/$t)")" "$share"
    done
done
