#!/usr/bin/env bash
# int8 vs float32, sc-runtime vs onnxruntime, in one run: the float model and its int8 QDQ file
# (`sc-runtime quantize`), each batch size, the same thread count; then sc-runtime again with its
# kernels capped at AVX2 (no VNNI). Prints one table with the file size of each row.
#
# Usage: scripts/bench-int8.sh FLOAT.onnx INT8.onnx [BATCHES] [THREADS]
#   BATCHES  images per request, comma-separated (default 1,64)
#   THREADS  threads for both runtimes (default: all cores, nproc)
#   BENCH_SECONDS  minimum measuring time per batch size, row and round, in seconds (default 2)
#   BENCH_ROUNDS   rounds (default 3): each round runs every row once, in the same order, so a
#                  row and its peer run seconds apart; each ratio is the median over rounds of the
#                  two rows' ratio within a round (the VMs drift by up to 2x over minutes).
# Makes .venv-bench (python3 -m venv + pip install onnxruntime numpy) on first use. Measure on an
# otherwise idle machine.
set -euo pipefail

float=${1:?usage: scripts/bench-int8.sh FLOAT.onnx INT8.onnx [BATCHES] [THREADS]}
int8=${2:?usage: scripts/bench-int8.sh FLOAT.onnx INT8.onnx [BATCHES] [THREADS]}
batches=${3:-1,64}
threads=${4:-$(nproc)}
seconds=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv-bench
bin=${CARGO_TARGET_DIR:-$root/target}/release/sc-runtime

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet onnxruntime numpy
fi
cargo build --release --quiet -p sc-runtime --bin sc-runtime --manifest-path "$root/Cargo.toml"

bash "$root/scripts/cpu-info.sh"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "float $float, int8 $int8, batches $batches, $threads threads, $rounds rounds of >= ${seconds}s per measurement" >&2
ours() { # NAME MODEL [ENV...]
    local name=$1 model=$2; shift 2
    env "$@" "$bin" bench "$model" --batch "$batches" --threads "$threads" --seconds "$seconds" \
        --json > "$out/$name.$round.json"
}
theirs() { # NAME MODEL
    "$venv/bin/python" "$root/scripts/bench_onnxruntime.py" "$2" --batch "$batches" \
        --threads "$threads" --seconds "$seconds" > "$out/$1.$round.json"
}
for round in $(seq 1 "$rounds"); do
    ours sc-f32 "$float"
    theirs ort-f32 "$float"
    ours sc-i8 "$int8"
    theirs ort-i8 "$int8"
    ours sc-f32-avx2 "$float" SC_KERNELS_ISA=avx2
    ours sc-i8-avx2 "$int8" SC_KERNELS_ISA=avx2
done

"$venv/bin/python" - "$out" "$float" "$int8" "$rounds" <<'PY'
import json, os, statistics, sys
out, f32, i8, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [("sc-runtime", "f32", "sc-f32", f32), ("sc-runtime", "int8", "sc-i8", i8),
        ("onnxruntime", "f32", "ort-f32", f32), ("onnxruntime", "int8", "ort-i8", i8),
        ("sc-runtime avx2", "f32", "sc-f32-avx2", f32), ("sc-runtime avx2", "int8", "sc-i8-avx2", i8)]
data = {k: [json.load(open(os.path.join(out, f"{k}.{r}.json"))) for r in range(1, rounds + 1)]
        for _, _, k, _ in rows}
ips = lambda k, j: [d[j]["images_per_second"] for d in data[k]]
med = statistics.median
def ratio(a, b, j):
    return med([x / y for x, y in zip(ips(a, j), ips(b, j))])
for k in ("sc-f32", "sc-i8", "sc-i8-avx2"):
    print(f"{k}: executor {data[k][0][0].get('executor', '?') if data[k][0] else '?'}")
print(f"{'runtime':<16} {'model':<5} {'MB':>5} {'batch':>5} | {'img/s (median)':>14} {'range':>13} {'p50 ms':>8} | {'vs own f32':>10}")
for rt, kind, k, path in rows:
    mb = os.path.getsize(path) / 1e6
    base = {"sc-i8": "sc-f32", "ort-i8": "ort-f32", "sc-i8-avx2": "sc-f32-avx2"}.get(k)
    for j, r in enumerate(data[k][0]):
        v = ips(k, j)
        rel = f"{ratio(k, base, j):>10.2f}" if base else f"{'':>10}"
        p50 = med([d[j]["latency_ms_p50"] for d in data[k]])
        print(f"{rt:<16} {kind:<5} {mb:>5.2f} {r['batch']:>5} | {med(v):>14.0f} {f'{min(v):.0f}-{max(v):.0f}':>13} {p50:>8.3f} | {rel}")
for j, r in enumerate(data["sc-i8"][0]):
    b = r["batch"]
    print(f"batch {b}: sc-runtime / onnxruntime, f32 = {ratio('sc-f32', 'ort-f32', j):.2f}, "
          f"int8 (same file) = {ratio('sc-i8', 'ort-i8', j):.2f}  (medians over {rounds} rounds of the within-round ratio)")
PY
