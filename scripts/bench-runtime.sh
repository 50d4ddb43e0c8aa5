#!/usr/bin/env bash
# sc-runtime vs onnxruntime on the same model, batch sizes and thread count, in one run.
#
# Usage: scripts/bench-runtime.sh MODEL.onnx [BATCHES] [THREADS]
#   BATCHES  images per request, comma-separated (default 1,64)
#   THREADS  threads for both runtimes (default: all cores, nproc)
#   BENCH_SECONDS  minimum measuring time per batch size and runtime, in seconds (default 3)
# Makes .venv-bench (python3 -m venv + pip install onnxruntime numpy) on first use.
set -euo pipefail

model=${1:?usage: scripts/bench-runtime.sh MODEL.onnx [BATCHES] [THREADS]}
batches=${2:-1,64}
threads=${3:-$(nproc)}
seconds=${BENCH_SECONDS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv-bench

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet onnxruntime numpy
fi
cargo build --release --quiet -p sc-runtime --manifest-path "$root/Cargo.toml"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "model $model, batches $batches, $threads threads, >= ${seconds}s per measurement" >&2
"$root/target/release/sc-runtime" bench "$model" --batch "$batches" --threads "$threads" \
    --seconds "$seconds" --json > "$out/sc.json"
# The same with tract's own executor (what sc-runtime falls back to for graphs the native one
# does not take).
SC_RUNTIME_ENGINE=tract "$root/target/release/sc-runtime" bench "$model" --batch "$batches" \
    --threads "$threads" --seconds "$seconds" --json > "$out/tract.json"
"$venv/bin/python" "$root/scripts/bench_onnxruntime.py" "$model" --batch "$batches" \
    --threads "$threads" --seconds "$seconds" > "$out/ort.json"

"$venv/bin/python" - "$out/sc.json" "$out/ort.json" "$out/tract.json" <<'PY'
import json, sys
sc, ort, tr = (json.load(open(p)) for p in sys.argv[1:4])
print(f"executor: {sc[0]['executor'] if sc else '?'}")
print(f"{'batch':>5} {'threads':>7} | {'sc-runtime img/s':>16} {'p50 ms':>8} {'p99 ms':>8} | "
      f"{'onnxruntime img/s':>17} {'p50 ms':>8} {'p99 ms':>8} | {'ratio':>5} | {'tract img/s':>11} {'ratio':>5}")
for s, o, t in zip(sc, ort, tr):
    print(f"{s['batch']:>5} {s['threads']:>7} | {s['images_per_second']:>16.0f} "
          f"{s['latency_ms_p50']:>8.3f} {s['latency_ms_p99']:>8.3f} | "
          f"{o['images_per_second']:>17.0f} {o['latency_ms_p50']:>8.3f} {o['latency_ms_p99']:>8.3f} | "
          f"{s['images_per_second'] / o['images_per_second']:>5.2f} | "
          f"{t['images_per_second']:>11.0f} {t['images_per_second'] / o['images_per_second']:>5.2f}")
print("ratio = images/s / onnxruntime images/s; tract = sc-runtime with SC_RUNTIME_ENGINE=tract")
PY
