#!/usr/bin/env bash
# The zoo's int8 files and their card: quantizes each float model listed in zoo/zoo.json
# (percentile 99.99 calibration on 1000 CIFAR-10 training images: the method chosen on the
# validation split, docs/INT8.md), evaluates the float and the int8 file on the validation images
# its training run held out, and writes zoo/NAME-int8.onnx, zoo/int8.json and zoo/INT8.md.
#
# Usage: scripts/zoo-int8.sh [DATA]
#   DATA  CIFAR-10's training set: a short name or a path (default: cifar10, from the data home)
# Takes about a minute. Quantizing is deterministic: the same data gives the same files.
set -euo pipefail

data=${1:-cifar10}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release
cargo build --release --quiet -p sc-runtime -p sc-trainer --manifest-path "$root/Cargo.toml"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

rows=()
while IFS=$'\t' read -r file run; do
    name=${file%.onnx}
    float=$root/zoo/$file
    int8=$root/zoo/$name-int8.onnx
    "$bin/sc-runtime" quantize "$float" --data "$data" --calibration percentile \
        --percentile 99.99 --out "$int8" --json > "$tmp/$name.quantize.json"
    "$bin/sc-trainer" data holdout "$root/$run" --data "$data" --out "$tmp/$name.val.bin" >&2
    "$bin/sc-runtime" eval "$float" "$tmp/$name.val.bin" --json > "$tmp/$name.float.json"
    "$bin/sc-runtime" eval "$int8" "$tmp/$name.val.bin" --json > "$tmp/$name.int8.json"
    # Which executor runs the int8 file here, and why.
    "$bin/sc-runtime" info "$int8" | sed -n 's/^executor *//p' > "$tmp/$name.executor.txt"
    rows+=("$name")
done < <(python3 -c '
import json, sys
for m in json.load(open(sys.argv[1])):
    print(m["file"] + "\t" + m["run"])
' "$root/zoo/zoo.json")

bash "$root/scripts/cpu-info.sh" > "$tmp/cpu.txt" 2>&1 || true
python3 - "$root" "$tmp" "${rows[@]}" <<'PY'
import hashlib, json, os, sys
root, tmp, names = sys.argv[1], sys.argv[2], sys.argv[3:]
zoo = {m["file"]: m for m in json.load(open(os.path.join(root, "zoo/zoo.json")))}
out = []
for n in names:
    q = json.load(open(os.path.join(tmp, n + ".quantize.json")))
    f = json.load(open(os.path.join(tmp, n + ".float.json")))
    i = json.load(open(os.path.join(tmp, n + ".int8.json")))
    path = os.path.join(root, "zoo", n + "-int8.onnx")
    body = open(path, "rb").read()
    rec = q["quantization"]
    out.append({
        "file": n + "-int8.onnx",
        "from": n + ".onnx",
        "run": zoo[n + ".onnx"]["run"],
        "calibration": f'{rec["method"]} {rec.get("percentile") or ""} on {rec["images"]} training images of {rec["data"]}'.replace("  ", " "),
        "float_layers": rec["float_layers"],
        "val_images": f["images"],
        "val_acc_float": f["accuracy"],
        "val_acc_int8": i["accuracy"],
        "drop_points": round(100 * (f["accuracy"] - i["accuracy"]), 2),
        "executor_here": open(os.path.join(tmp, n + ".executor.txt")).read().strip(),
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "float_bytes": os.path.getsize(os.path.join(root, "zoo", n + ".onnx")),
    })
json.dump(out, open(os.path.join(root, "zoo/int8.json"), "w"), indent=2, ensure_ascii=False)
cpu = open(os.path.join(tmp, "cpu.txt")).read().strip().splitlines()
lines = [
    "# Model zoo: int8 files",
    "",
    "Written by `scripts/zoo-int8.sh` (do not edit by hand): each float model of `zoo.json`, quantized by",
    "`sc-runtime quantize` (ONNX QDQ: int8 weights per output channel, uint8 activations, int32 biases;",
    "docs/INT8.md), calibrated on training images only, and evaluated against its float file on the",
    "validation images its training run held out (`sc-trainer data holdout`).",
    "",
    "| file | from | size | validation, float | validation, int8 | change | calibration |",
    "|---|---|---:|---:|---:|---:|---|",
]
for m in out:
    lines.append(
        f'| `{m["file"]}` | `{m["from"]}` | {m["bytes"] / 1e6:.2f} MB ({m["float_bytes"] / m["bytes"]:.1f}x smaller) '
        f'| {100 * m["val_acc_float"]:.2f} % | **{100 * m["val_acc_int8"]:.2f} %** | {-m["drop_points"]:+.2f} '
        f'| {m["calibration"]} |')
lines += [
    "",
    ("Every convolution and the classifier are int8 (no layer kept in float). " if all(not m["float_layers"] for m in out)
     else "Layers kept in float: " + "; ".join(f'{m["file"]}: {[l["node"] for l in m["float_layers"]]}' for m in out) + ". ") +
    f"Validation: {out[0]['val_images']} images; they chose the calibration method (percentile 99.99 over min-max), nothing else.",
    "",
    "Where they run: `sc-runtime` runs these files on its native int8 executor (VNNI, AVX-VNNI, or",
    "AVX2 without VNNI; checked against tract at load), onnxruntime fuses them into QLinearConv, tract",
    "reads them too. On the machine that wrote this card:",
    "",
]
for m in out:
    lines.append(f'- `{m["file"]}`: {m["executor_here"]}')
lines += ["", "Machine: " + " ".join(cpu), "",
          "Speed against the float files and onnxruntime: `scripts/bench-int8.sh zoo/NAME.onnx zoo/NAME-int8.onnx`",
          "(docs/PERFORMANCE.md has the measured rows).", "",
          "SHA-256:", ""]
for m in out:
    lines.append(f'- `{m["file"]}` `{m["sha256"]}` ({m["bytes"]} bytes)')
open(os.path.join(root, "zoo/INT8.md"), "w").write("\n".join(lines) + "\n")
for m in out:
    print(f'{m["file"]}: float {100 * m["val_acc_float"]:.2f} %, int8 {100 * m["val_acc_int8"]:.2f} %, {m["bytes"]} bytes')
PY
