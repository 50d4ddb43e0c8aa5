#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the build needs, runs every Rust test
# (unit, integration, cross-crate parity), the MPI tests of data-parallel `fit`, the
# onnxruntime interoperability check and the Triton-client check of `sc-runtime serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
  # candle-onnx generates its ONNX types with protoc at build time.
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
fi
if ! command -v mpirun >/dev/null 2>&1; then
  # Data-parallel `fit` (feature mpi): Open MPI, and libclang for the mpi crate's bindings.
  apt-get update -qq && apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
fi
# Unit, integration and cross-crate tests, and the examples (benchmarks are built, not run: they
# are measurements, run with scripts/bench-*.sh).
cargo test --release --workspace --lib --bins --tests --examples
cargo test --release --workspace --benches --no-run
# The kernels' unsafe SIMD code checks its bounds with debug_assert!, which release builds drop:
# their own tests again with debug assertions on (the dev profile, opt-level 1; ~20 s cold).
cargo test -p sc-kernels
bash scripts/onnx-interop.sh
bash scripts/serve-interop.sh
# Data-parallel fit under `mpirun -np 2` (CI runs as root, which Open MPI must be told is fine). Last: it
# rebuilds target/release/sc-trainer with the feature, and the checks above use the default build.
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  cargo test --release -p sc-trainer --features mpi --test mpi
