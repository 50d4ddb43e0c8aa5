#!/usr/bin/env bash
# int8 vs float32, sc-runtime vs onnxruntime, in one run: the float model and its int8 QDQ file
# (`sc-runtime quantize`), each batch size, the same thread count; then sc-runtime again with its
# kernels capped at AVX2 (no VNNI). Prints one table with the file size of each row.
#
# Usage: scripts/bench-int8.sh FLOAT.onnx INT8.onnx [BATCHES] [THREADS]
#   BATCHES  images per request, comma-separated (default 1,64)
#   THREADS  threads for both runtimes (default: all cores, nproc)
#   BENCH_SECONDS  minimum measuring time per batch size and row, in seconds (default 3)
# Makes .venv-bench (python3 -m venv + pip install onnxruntime numpy) on first use. Measure on an
# otherwise idle machine: the rows run one after another.
set -euo pipefail

float=${1:?usage: scripts/bench-int8.sh FLOAT.onnx INT8.onnx [BATCHES] [THREADS]}
int8=${2:?usage: scripts/bench-int8.sh FLOAT.onnx INT8.onnx [BATCHES] [THREADS]}
batches=${3:-1,64}
threads=${4:-$(nproc)}
seconds=${BENCH_SECONDS:-3}
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
echo "float $float, int8 $int8, batches $batches, $threads threads, >= ${seconds}s per measurement" >&2
ours() { # NAME MODEL [ENV...]
    local name=$1 model=$2; shift 2
    env "$@" "$bin" bench "$model" --batch "$batches" --threads "$threads" --seconds "$seconds" \
        --json > "$out/$name.json"
}
ours sc-f32 "$float"
ours sc-i8 "$int8"
ours sc-f32-avx2 "$float" SC_KERNELS_ISA=avx2
ours sc-i8-avx2 "$int8" SC_KERNELS_ISA=avx2
for m in f32:"$float" i8:"$int8"; do
    "$venv/bin/python" "$root/scripts/bench_onnxruntime.py" "${m#*:}" --batch "$batches" \
        --threads "$threads" --seconds "$seconds" > "$out/ort-${m%%:*}.json"
done

"$venv/bin/python" - "$out" "$float" "$int8" <<'PY'
import json, os, sys
out, f32, i8 = sys.argv[1:4]
rows = [("sc-runtime", "f32", "sc-f32", f32), ("sc-runtime", "int8", "sc-i8", i8),
        ("onnxruntime", "f32", "ort-f32", f32), ("onnxruntime", "int8", "ort-i8", i8),
        ("sc-runtime avx2", "f32", "sc-f32-avx2", f32), ("sc-runtime avx2", "int8", "sc-i8-avx2", i8)]
data = {k: json.load(open(os.path.join(out, k + ".json"))) for _, _, k, _ in rows}
for k in ("sc-f32", "sc-i8", "sc-i8-avx2"):
    print(f"{k}: executor {data[k][0].get('executor', '?') if data[k] else '?'}")
print(f"{'runtime':<16} {'model':<5} {'MB':>5} {'batch':>5} | {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} | {'vs own f32':>10}")
for rt, kind, k, path in rows:
    mb = os.path.getsize(path) / 1e6
    base = {"sc-i8": "sc-f32", "ort-i8": "ort-f32", "sc-i8-avx2": "sc-f32-avx2"}.get(k)
    for j, r in enumerate(data[k]):
        rel = f"{r['images_per_second'] / data[base][j]['images_per_second']:>10.2f}" if base else f"{'':>10}"
        print(f"{rt:<16} {kind:<5} {mb:>5.2f} {r['batch']:>5} | {r['images_per_second']:>8.0f} "
              f"{r['latency_ms_p50']:>8.3f} {r['latency_ms_p99']:>8.3f} | {rel}")
for j, r in enumerate(data["sc-i8"]):
    o = data["ort-i8"][j]["images_per_second"]
    print(f"batch {r['batch']}: sc-runtime int8 / onnxruntime int8 (same file) = {r['images_per_second'] / o:.2f}")
PY
