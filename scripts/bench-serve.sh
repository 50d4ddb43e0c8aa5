#!/usr/bin/env bash
# Load test of `sc-runtime serve` on loopback: 1, 8 and 64 concurrent clients, each POSTing one
# PNG image at a time to /classify over a kept-alive connection (examples/serve_load.rs), against
# the same image through Classifier::classify (batch 1) and classify_batch (64) in-process with
# the same threads. Prints images/s, p50/p99 latency, errors and the server/in-process ratios.
#
# Usage: scripts/bench-serve.sh MODEL.onnx [THREADS] [SECONDS]
#   THREADS  the server's and the in-process run's threads (default: nproc)
#   SECONDS  per measurement (default 20)
set -euo pipefail
model=${1:?usage: scripts/bench-serve.sh MODEL.onnx [THREADS] [SECONDS]}
threads=${2:-$(nproc)}
seconds=${3:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build -q --release --workspace --bin sc-runtime --example serve_load
target=${CARGO_TARGET_DIR:-$root/target}/release
bash scripts/cpu-info.sh || true
name=$(basename "$model" .onnx)
"$target/sc-runtime" serve "$model" --port 0 --threads "$threads" > /tmp/bench-serve.$$ &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f /tmp/bench-serve.$$' EXIT
for _ in $(seq 100); do grep -q http:// /tmp/bench-serve.$$ 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's|.*http://\([^ ]*\).*|\1|p' /tmp/bench-serve.$$)
echo "model $model, $threads threads, ${seconds}s per run, server $addr"
inproc=$("$target/examples/serve_load" inproc "$model" "$threads" "$seconds")
echo "in-process (batch-1 latency, classify_batch 64 images/s): $inproc"
for c in 1 8 64; do
  r=$("$target/examples/serve_load" http "$addr" "$name" "$c" "$seconds")
  echo "$c clients: $r"
done | tee /tmp/bench-serve-runs.$$
python3 - "$inproc" /tmp/bench-serve-runs.$$ <<'PY'
import json, sys
base = json.loads(sys.argv[1])
for line in open(sys.argv[2]):
    c, r = line.split(" clients: ")
    r = json.loads(r)
    print(f"{c:>3} clients: {r['images_per_s'] / base['images_per_s']:.2f}x in-process images/s, "
          f"p99 {r['p99_ms']:.2f} ms vs 2 x {base['p50_ms']:.2f} + 1 ms = {2 * base['p50_ms'] + 1:.2f} ms, "
          f"{r['errors']} errors")
PY
rm -f /tmp/bench-serve-runs.$$
kill -TERM $pid
wait $pid && echo "server exited 0 after SIGTERM"
