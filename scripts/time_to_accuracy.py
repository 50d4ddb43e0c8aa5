#!/usr/bin/env python3
"""The training seconds an `sc-trainer fit` run took to first reach each validation accuracy.

Reads RUN_DIR/metrics.jsonl: every validation row carries `train_s`, the training seconds so far
with the evaluations left out (all sessions of a resumed run), as torch_recipe.py counts them for
PyTorch. Run the fit with an evaluation every epoch (`--eval-every` = iterations per epoch) to
read the time to an accuracy at that resolution.

Usage: time_to_accuracy.py RUN_DIR [--targets 0.90,0.91]
Prints one JSON line: {"run": ..., "reached": {"0.9": {"train_seconds": s, "iteration": i}, ...},
"evaluations": n}; a target never reached maps to null.
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--targets", default="0.90,0.91")
    a = ap.parse_args()
    targets = [float(t) for t in a.targets.split(",")]
    path = os.path.join(a.run_dir, "metrics.jsonl")
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        sys.exit(f"{path}: {e.strerror}")
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            sys.exit(f"{path}:{n}: not a JSON line")
        if "val_acc" in r:
            rows.append(r)
    if not rows:
        sys.exit(f"{path}: no validation rows (train with --eval-every)")
    if any("train_s" not in r for r in rows):
        sys.exit(f"{path}: validation rows without train_s (written before it was recorded)")
    reached = {}
    for t in targets:
        hit = next((r for r in rows if r["val_acc"] >= t), None)
        reached[str(t)] = hit and {"train_seconds": round(hit["train_s"], 2), "iteration": hit["iter"]}
    print(json.dumps({"run": a.run_dir, "reached": reached, "evaluations": len(rows)}))


if __name__ == "__main__":
    main()
