#!/usr/bin/env bash
# Checks exported models with the reference ONNX tooling: onnx.checker (full_check) and
# onnxruntime's logits against tract's, on the models and inputs of tests/export_parity.rs, and on
# their int8 QDQ versions (`sc-runtime quantize`, written by runtime/tests/quantize.rs).
# Makes its own Python venv (.venv) with onnx, onnxruntime and numpy from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SC_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check onnx onnxruntime numpy
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
SC_INTEROP_DIR="$dir" cargo test -q --release --test export_parity >/dev/null
# After the float models: the quantize test also quantizes every 3x32x32 model it finds there.
SC_INTEROP_DIR="$dir" cargo test -q --release -p sc-runtime --test quantize >/dev/null
"$venv/bin/python" scripts/onnx_interop.py "$dir"
