#!/usr/bin/env bash
# A long `reproduce` experiment at the cpu scale, kept where it survives a change of machine: its
# runs are in experiments/NAME-cpu/runs (committed: results, and the checkpoints of unfinished
# runs), its report in experiments/NAME-cpu/report. A fresh clone resumes it where the last commit
# left it. NAME: budget (docs/REPRODUCTION.md, "Accuracy against budget"; its models go to zoo/),
# recipe (the short-budget recipe, piece by piece; docs/RECIPE.md) or claims (one cycle against a
# step schedule by batch, training-set size and depth; docs/REPRODUCTION.md).
#
#   scripts/experiment.sh NAME start    build, then run (or resume) it in the background;
#                                       log: runs/NAME-experiment.log
#   scripts/experiment.sh NAME status   each run's state (done, started, to do); budget: the zoo's pick
#   scripts/experiment.sh NAME stop     checkpoint and stop
#   scripts/experiment.sh NAME save     stage its state for a commit (git add)
#
# DATA=DIR is CIFAR-10's training data (default: `cifar10`, the data home's copy:
# `sc-trainer data fetch cifar10` downloads it). The runs are named by the data's content, so any
# copy of CIFAR-10 (the archive, or the cifar-10-batches-bin it unpacks to) goes on from them.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-}
case "$name" in
  budget) zoo=(--zoo zoo) ;;
  recipe|claims) zoo=() ;;
  *) sed -n 2,14p "$0" >&2; exit 2 ;;
esac
root=experiments/$name-cpu
runs=$root/runs
bin=target/release/sc-trainer
data=${DATA:-cifar10}
args=(reproduce "$name" --scale cpu --runs "$runs" --out "$root/report" "${zoo[@]}")
log=runs/$name-experiment.log
running() { pgrep -f "sc-trainer reproduce $name.*--runs $runs" || true; }

case "${2:-status}" in
  start)
    if [ -n "$(running)" ]; then echo "already running: pid $(running)"; exit 0; fi
    # Two experiments on one machine share its cores and both take twice as long.
    other=$(pgrep -af "sc-trainer reproduce " | grep -v -- "--dry-run" || true)
    if [ -n "$other" ] && [ -z "${FORCE:-}" ]; then
      echo "another experiment is running on this machine; stop it first (or FORCE=1 to share the cores):" >&2
      echo "$other" >&2
      exit 1
    fi
    cargo build --release -p sc-trainer
    # The data is there and readable (a clear error here, not in the log).
    "$bin" "${args[@]}" --data "$data" --dry-run >/dev/null
    mkdir -p runs
    nohup "$bin" "${args[@]}" --data "$data" --quiet >> "$log" 2>&1 &
    echo "started: pid $!, log $log"
    ;;
  status)
    "$bin" "${args[@]}" --data "$data" --dry-run
    pid=$(running); echo "process: ${pid:-not running}"
    ;;
  stop)
    pid=$(running)
    [ -n "$pid" ] || { echo "not running"; exit 0; }
    kill -INT $pid
    while kill -0 $pid 2>/dev/null; do sleep 1; done
    echo "stopped (checkpoint written)"
    ;;
  save)
    for p in "$runs" "$root/report" "${zoo[@]:1}"; do
      [ -e "$p" ] && git add "$p"
    done
    for d in "$runs"/*/; do
      ck=${d}checkpoint.safetensors
      # The previous checkpoint is a fallback while a run writes; a commit needs only the last.
      git rm -q --cached --ignore-unmatch "${d}checkpoint.prev.safetensors"
      if grep -qE '"outcome": "(finished|diverged)"' "${d}summary.json" 2>/dev/null; then
        # Ended: its checkpoint is not needed to go on.
        git rm -q --cached --ignore-unmatch "$ck"
      elif [ -f "$ck" ]; then
        git add -f "$ck"
      fi
    done
    git status --short -- "$root" "${zoo[@]:1}"
    ;;
  *)
    sed -n 2,14p "$0" >&2; exit 2 ;;
esac
