#!/usr/bin/env bash
# Checks `sc-runtime serve` with the reference client of the Open Inference Protocol (Triton's
# `tritonclient[http]` from PyPI, in its own venv): is_server_live, get_model_metadata, and infer
# logits (JSON and binary tensors) equal to tract's within 1e-5, and the native executor's served
# logits against onnxruntime's (same venv), on the ResNet-20 that tests/export_parity.rs exports
# (SC_INTEROP_DIR), served on a loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SC_SERVE_VENV:-.venv-serve}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import tritonclient.http, numpy, onnxruntime' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'tritonclient[http]' numpy onnxruntime
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
SC_INTEROP_DIR="$dir" cargo test -q --release --workspace --test export_parity resnet20_cifar >/dev/null
cargo build -q --release --workspace --bin sc-runtime
bin=${CARGO_TARGET_DIR:-target}/release/sc-runtime
"$venv/bin/python" scripts/serve_interop.py "$bin" "$dir"
