#!/usr/bin/env bash
# sc-trainer vs PyTorch CPU: full SGD training steps of ResNet-20/56 (option A) on synthetic
# 3x32x32 data, same batch sizes and thread count, in one run; images/s, ratio and peak RSS.
#
# Usage: scripts/bench-train.sh [CONFIGS] [THREADS]
#   CONFIGS  MODEL:BATCH,... (default resnet20:128,resnet20:512,resnet56:128,resnet56:512)
#   THREADS  threads for both (default 2)
#   BENCH_SECONDS  minimum measuring time per configuration (default 8)
#   BENCH_OPS=0    skip the per-convolution GFLOP/s table
#   BF16=1         also bf16: ours with bf16 convolution products (AVX512_BF16 CPUs), PyTorch under
#                  torch.autocast('cpu', bfloat16), both layouts; a second table
#   ISA=avx2|avx512|portable  the instruction set both sides are capped to (default: the CPU's
#                  widest). Ours: SC_KERNELS_ISA; PyTorch: ATEN_CPU_CAPABILITY and
#                  ONEDNN_MAX_CPU_ISA (portable caps PyTorch to its plain 'default' kernels).
# Makes .venv-bench (python3 -m venv + pip install torch, CPU use only) on first use.
set -euo pipefail

configs=${1:-resnet20:128,resnet20:512,resnet56:128,resnet56:512}
threads=${2:-2}
seconds=${BENCH_SECONDS:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv-bench

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    "$venv/bin/pip" install --quiet torch
fi

export RAYON_NUM_THREADS=$threads
bash "$root/scripts/cpu-info.sh"
case "${ISA:-}" in
    "") ;;
    avx512) export SC_KERNELS_ISA=avx512 ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ;;
    avx2) export SC_KERNELS_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
    portable) export SC_KERNELS_ISA=portable ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 ;;
    *) echo "ISA=$ISA: expected avx512, avx2 or portable" >&2; exit 2 ;;
esac
echo "ISA cap: ${ISA:-none} (SC_KERNELS_ISA=${SC_KERNELS_ISA:-unset} ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-unset} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-unset})"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "configs $configs, $threads threads, >= ${seconds}s per measurement" >&2
ops=--no-ops
[ "${BENCH_OPS:-1}" != 0 ] && ops=
BENCH_SECONDS=$seconds cargo bench --quiet --manifest-path "$root/Cargo.toml" --workspace \
    --bench train_step -- --json --configs "$configs" $ops > "$out/sc.jsonl"
formats=nchw,channels_last
if [ "${BF16:-0}" = 1 ]; then
    SC_BENCH_PRECISION=bf16 BENCH_SECONDS=$seconds cargo bench --quiet --manifest-path "$root/Cargo.toml" \
        --workspace --bench train_step -- --json --configs "$configs" --no-ops > "$out/sc-bf16.jsonl"
    formats=$formats,nchw-bf16,channels_last-bf16
fi
"$venv/bin/python" "$root/scripts/bench_torch_train.py" --configs "$configs" --threads "$threads" \
    --seconds "$seconds" --formats "$formats" > "$out/torch.jsonl"

"$venv/bin/python" - "$out/sc.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
sc = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
th = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
ops = [r for r in sc if "convs" in r]
sc = [r for r in sc if "model" in r]
print(f"{'model':<9} {'batch':>5} | {'sc img/s':>8} {'peak MB':>7} | {'torch NCHW':>10} {'peak MB':>7} | "
      f"{'torch CL':>8} {'peak MB':>7} | {'vs NCHW':>7} {'vs CL':>6}")
for s in sc:
    t = {r["format"]: r for r in th if r["model"] == s["model"] and r["batch"] == s["batch"]}
    n, c = t.get("nchw"), t.get("channels_last")
    print(f"{s['model']:<9} {s['batch']:>5} | {s['images_per_second']:>8.1f} {s['peak_rss_mb']:>7.0f} | "
          f"{n['images_per_second']:>10.1f} {n['peak_rss_mb']:>7.0f} | "
          f"{c['images_per_second']:>8.1f} {c['peak_rss_mb']:>7.0f} | "
          f"{s['images_per_second'] / n['images_per_second']:>7.2f} {s['images_per_second'] / c['images_per_second']:>6.2f}")
print(f"ratio = sc-trainer images/s / PyTorch images/s ({th[0]['torch'] if th else '?'}, "
      f"{th[0]['threads'] if th else '?'} threads); CL = channels_last")
for s in sc:
    print(f"  sc {s['model']} b{s['batch']}: step {s['step_ms']:.0f} ms = forward {s['forward_ms']:.0f} "
          f"+ backward {s['backward_ms']:.0f} + sgd {s['optimizer_ms']:.0f}")
for o in ops:
    peak = o["fma_peak_gflops"]
    print(f"\nper-convolution GFLOP/s at batch 128; % of the FMA peak = {peak:.0f} GFLOP/s (our AVX-512 tile "
          f"on cached data x {o['threads']} threads; candle's gemm 1024^3 matmul: {o['matmul_gemm_gflops']:.0f}):")
    print(f"{'layer':<20} {'fwd':>11} {'bwd (d+w)':>11} {'bwd w':>11} {'bwd d':>11} | {'stock fwd':>9} {'stock bwd':>9}")
    pc = lambda v: f"{v:.0f} ({100 * v / peak:.0f}%)"
    for r in o["convs"]:
        print(f"{r['layer']:<20} {pc(r['fwd']):>11} {pc(r['bwd']):>11} {pc(r['bwd_w']):>11} {pc(r['bwd_d']):>11} | "
              f"{r['stock_fwd']:>9.0f} {r['stock_bwd']:>9.0f}")
PY
if [ -s "$out/sc-bf16.jsonl" ]; then
"$venv/bin/python" - "$out/sc-bf16.jsonl" "$out/torch.jsonl" "$out/sc.jsonl" <<'PY'
import json, sys
rows = lambda f: [json.loads(l) for l in open(f) if l.strip()]
sc, th, f32 = rows(sys.argv[1]), rows(sys.argv[2]), [r for r in rows(sys.argv[3]) if "model" in r]
print(f"\nbf16: ours with bf16 convolution products; PyTorch under torch.autocast('cpu', bfloat16)")
print(f"{'model':<9} {'batch':>5} | {'sc bf16':>8} {'sc f32':>8} | {'torch f32':>9} {'torch bf16':>10} | "
      f"{'vs f32':>6} {'vs bf16':>7} {'sc bf16/f32':>11}")
for s in sc:
    t = {r["format"]: r["images_per_second"] for r in th if r["model"] == s["model"] and r["batch"] == s["batch"]}
    best32 = max(t.get("nchw", 0), t.get("channels_last", 0))
    best16 = max(t.get("nchw-bf16", 0), t.get("channels_last-bf16", 0))
    ours32 = next((r["images_per_second"] for r in f32 if r["model"] == s["model"] and r["batch"] == s["batch"]), float("nan"))
    v = s["images_per_second"]
    print(f"{s['model']:<9} {s['batch']:>5} | {v:>8.1f} {ours32:>8.1f} | {best32:>9.1f} {best16:>10.1f} | "
          f"{v / best32:>6.2f} {v / best16:>7.2f} {v / ours32:>11.2f}")
print("torch f32 / bf16: the better of NCHW and channels_last")
PY
fi
