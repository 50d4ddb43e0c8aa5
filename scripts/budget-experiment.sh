#!/usr/bin/env bash
# The budget experiment (docs/REPRODUCTION.md, "Accuracy against budget"), kept where it survives a
# change of machine: its runs are in experiments/budget-cpu/runs (committed: results, and the
# checkpoints of unfinished runs), its report in experiments/budget-cpu/report, its models in zoo/.
# A fresh clone resumes it where the last commit left it.
#
#   scripts/budget-experiment.sh start    build, then run (or resume) it in the background;
#                                         log: runs/budget-experiment.log
#   scripts/budget-experiment.sh status   each run's state (done, started, to do) and the zoo's pick
#   scripts/budget-experiment.sh stop     checkpoint and stop
#   scripts/budget-experiment.sh save     stage its state for a commit (git add)
#
# DATA=DIR is CIFAR-10's training data (default: `cifar10`, the data home's copy:
# `sc-trainer data fetch cifar10` downloads it). The runs are named by the data's content, so any
# copy of CIFAR-10 (the archive, or the cifar-10-batches-bin it unpacks to) goes on from them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=experiments/budget-cpu
runs=$root/runs
bin=target/release/sc-trainer
data=${DATA:-cifar10}
args=(reproduce budget --scale cpu --runs "$runs" --out "$root/report" --zoo zoo)
running() { pgrep -f "sc-trainer reproduce budget.*--runs $runs" || true; }

case "${1:-status}" in
  start)
    if [ -n "$(running)" ]; then echo "already running: pid $(running)"; exit 0; fi
    cargo build --release -p sc-trainer
    # The data is there and readable (a clear error here, not in the log).
    "$bin" "${args[@]}" --data "$data" --dry-run >/dev/null
    mkdir -p runs
    nohup "$bin" "${args[@]}" --data "$data" --quiet >> runs/budget-experiment.log 2>&1 &
    echo "started: pid $!, log runs/budget-experiment.log"
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
    for p in "$runs" "$root/report" zoo; do
      [ -e "$p" ] && git add "$p"
    done
    for d in "$runs"/*/; do
      ck=${d}checkpoint.safetensors
      if grep -qE '"outcome": "(finished|diverged)"' "${d}summary.json" 2>/dev/null; then
        # Ended: its checkpoint is not needed to go on.
        git rm -q --cached --ignore-unmatch "$ck"
      elif [ -f "$ck" ]; then
        git add -f "$ck"
      fi
    done
    git status --short -- "$root" zoo
    ;;
  *)
    sed -n 2,14p "$0" >&2; exit 2 ;;
esac
