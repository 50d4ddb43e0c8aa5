#!/usr/bin/env bash
# sc-runtime vs onnxruntime on the same model, batch sizes and thread count, in one run.
#
# Usage: scripts/bench-runtime.sh MODEL.onnx [BATCHES] [THREADS]
#   BATCHES  images per request, comma-separated (default 1,64)
#   THREADS  threads for both runtimes (default: all cores, nproc)
#   BENCH_SECONDS  minimum measuring time per batch size and runtime, in seconds (default 3)
#   ISA=avx2|avx512|portable  caps sc-runtime's kernels (SC_KERNELS_ISA). tract and onnxruntime
#                  pick their kernels for the CPU at run time and cannot be capped from outside
#                  (MLAS has no run-time switch; its ISA is fixed by CPUID), so on a wider CPU
#                  they run uncapped: the script says so.
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
cargo build --release --quiet --workspace --bin sc-runtime --manifest-path "$root/Cargo.toml"

bash "$root/scripts/cpu-info.sh"
case "${ISA:-}" in
    "") ;;
    avx512|avx2|portable) export SC_KERNELS_ISA=$ISA
        echo "ISA cap: sc-runtime's kernels at $ISA; tract and onnxruntime uncapped (no switch exists)" ;;
    *) echo "ISA=$ISA: expected avx512, avx2 or portable" >&2; exit 2 ;;
esac
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "model $model, batches $batches, $threads threads, >= ${seconds}s per measurement" >&2
"$root/target/release/sc-runtime" bench "$model" --batch "$batches" --threads "$threads" \
    --seconds "$seconds" --json > "$out/sc.json"
# The same with each executor forced: the native one (sc-kernels convolutions) and tract's own
# plan (what sc-runtime falls back to for graphs the native one does not take).
SC_RUNTIME_ENGINE=native "$root/target/release/sc-runtime" bench "$model" --batch "$batches" \
    --threads "$threads" --seconds "$seconds" --json > "$out/native.json"
# The native executor in each layout: flat NCHW, and 8-channel blocks (NCHWc).
for layout in flat blocked; do
    SC_RUNTIME_ENGINE=native SC_RUNTIME_LAYOUT=$layout "$root/target/release/sc-runtime" bench \
        "$model" --batch "$batches" --threads "$threads" --seconds "$seconds" --json > "$out/$layout.json"
done
SC_RUNTIME_ENGINE=tract "$root/target/release/sc-runtime" bench "$model" --batch "$batches" \
    --threads "$threads" --seconds "$seconds" --json > "$out/tract.json"
"$venv/bin/python" "$root/scripts/bench_onnxruntime.py" "$model" --batch "$batches" \
    --threads "$threads" --seconds "$seconds" > "$out/ort.json"

"$venv/bin/python" - "$out/sc.json" "$out/ort.json" "$out/tract.json" "$out/native.json" \
    "$out/flat.json" "$out/blocked.json" <<'PY'
import json, sys
sc, ort, tr, nat, flat, blk = (json.load(open(p)) for p in sys.argv[1:7])
print(f"executor chosen: {sc[0]['executor'] if sc else '?'}")
print(f"{'batch':>5} {'threads':>7} | {'sc-runtime img/s':>16} {'p50 ms':>8} {'p99 ms':>8} | "
      f"{'onnxruntime img/s':>17} {'p50 ms':>8} {'p99 ms':>8} | {'vs ort':>6} {'vs tract':>8} | "
      f"{'native img/s':>12} {'tract img/s':>11} | {'flat img/s':>10} {'blocked img/s':>13}")
for s, o, t, n, f, b in zip(sc, ort, tr, nat, flat, blk):
    print(f"{s['batch']:>5} {s['threads']:>7} | {s['images_per_second']:>16.0f} "
          f"{s['latency_ms_p50']:>8.3f} {s['latency_ms_p99']:>8.3f} | "
          f"{o['images_per_second']:>17.0f} {o['latency_ms_p50']:>8.3f} {o['latency_ms_p99']:>8.3f} | "
          f"{s['images_per_second'] / o['images_per_second']:>6.2f} "
          f"{s['images_per_second'] / t['images_per_second']:>8.2f} | "
          f"{n['images_per_second']:>12.0f} {t['images_per_second']:>11.0f} | "
          f"{f['images_per_second']:>10.0f} {b['images_per_second']:>13.0f}")
print("sc-runtime = the executor chosen at load; vs ort / vs tract = its images/s over onnxruntime's /"
      " over sc-runtime with SC_RUNTIME_ENGINE=tract; native = SC_RUNTIME_ENGINE=native;"
      " flat / blocked = native with SC_RUNTIME_LAYOUT=flat / blocked")
PY
