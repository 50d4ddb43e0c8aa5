#!/usr/bin/env bash
# Fuzzes sc-runtime's readers and loaders with cargo-fuzz (libFuzzer): each target for SECONDS
# (default 60), one job, RSS limit 2048 MB, 30 s per input (FUZZ_TIMEOUT); then prints one summary
# line per target (executions, corpus size, crashes). Crash inputs land in fuzz/artifacts/TARGET/;
# copy them to fuzz/regressions/TARGET/ once fixed, so that `cargo test`
# (runtime/tests/fuzz_corpus.rs) replays them in CI. Logs: fuzz/logs/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]       targets: cifar idx image model metadata
#   FUZZ_SANITIZER=none scripts/fuzz.sh 60      faster, without AddressSanitizer
#
# Needs `cargo install cargo-fuzz`. libFuzzer needs nightly-only rustc flags; on a stable
# toolchain RUSTC_BOOTSTRAP=1 (set here) allows them.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(cifar idx image model metadata)
san=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }

(cd fuzz && cargo fuzz build --sanitizer "$san") || { echo "fuzz build failed" >&2; exit 2; }

summary=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" fuzz/logs
  dirs=("fuzz/corpus/$t" "fuzz/corpus-seed/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  log="fuzz/logs/$t-$(date +%Y%m%d-%H%M%S).log"
  before=$(ls "fuzz/artifacts/$t" | wc -l)
  start=$(date +%s)
  (cd fuzz && cargo fuzz run --sanitizer "$san" "$t" "${dirs[@]#fuzz/}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout="${FUZZ_TIMEOUT:-30}" -max_len=8192 \
      -print_final_stats=1) >"$log" 2>&1
  rc=$?
  wall=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  fuzzed=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' | grep -o '[0-9]*')
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  new=$(( $(ls "fuzz/artifacts/$t" | wc -l) - before ))
  if [ "$rc" -eq 0 ]; then verdict=ok; else verdict="FAILED (exit $rc)"; failed=1; fi
  summary+=("$(printf '%-9s %5ss fuzzing (%5ss wall) %10s execs %7s/s  peak %5s MB  corpus %5s  new crashes %2s  %s  %s' \
    "$t" "${fuzzed:-?}" "$wall" "${execs:-?}" "${rate:-?}" "${rss:-?}" "$corpus" "$new" "$verdict" "$log")")
  if [ "$rc" -ne 0 ]; then
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -8
  fi
done
echo
echo "fuzz summary (sanitizer $san, $secs s per target):"
printf '  %s\n' "${summary[@]}"
exit $failed
