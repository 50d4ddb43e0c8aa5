#!/usr/bin/env python3
"""The recipe experiment's run in PyTorch, for time-to-accuracy against `sc-trainer fit`.

The same network (CIFAR ResNet, option-A shortcuts, from bench_torch_train.py), the same 45k/5k
split, augmentation (pad-4 random crop, horizontal flip), per-channel normalization, and the same
one-cycle schedule as `sc-trainer`'s (trainer/src/schedule.rs): linear min -> max at pct_start,
back to min at cycle_end, then down to final_lr at the last step; momentum max -> min -> max
mirrored against the LR, max after cycle_end. SGD with L2 weight decay (PyTorch's), optionally none
on BatchNorm parameters and biases; the recipe's pieces: label smoothing, an EMA of the weights
and BatchNorm statistics, zero-init of each block's last BatchNorm scale, flip TTA at evaluation.
channels_last, intra-op threads as given.

The validation split is the run's own: `sc-trainer data holdout RUN_DIR --out val.bin` writes the
images a run held out; this script trains on every training record not among them (matched by
content) and validates on them.

Prints one JSON line per evaluation (epoch, cumulative training seconds without the evaluations,
validation accuracy with and without flip TTA) and, at the end, the training seconds at which
validation first reached each --targets accuracy.

Usage: torch_recipe.py --data cifar-10-batches-bin --val val.bin [--epochs 30] [--threads 2]
         [--max-lr 0.2] [--weight-decay 5e-4] [--label-smoothing 0.1] [--ema 0.99 --ema-every 5
         --ema-start 0.5] [--zero-init-residual] [--no-decay-bn-bias] [--targets 0.90,0.91]
         [--limit-iterations N]
"""
import argparse
import copy
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch_train import build  # noqa: E402  (the same network as the speed benchmark)

RECORD = 3073


def read_records(path):
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % RECORD:
        raise SystemExit(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records")
    return raw.reshape(-1, RECORD)


def load_split(data_dir, val_path):
    files = [os.path.join(data_dir, f"data_batch_{i}.bin") for i in range(1, 6)]
    for f in files:
        if not os.path.exists(f):
            raise SystemExit(f"{f}: missing (--data is CIFAR-10's cifar-10-batches-bin)")
    train = np.concatenate([read_records(f) for f in files])
    val = read_records(val_path)
    held = {r.tobytes() for r in val}
    keep = np.array([r.tobytes() not in held for r in train])
    train = train[keep]
    if len(train) + len(val) < 50000 - 50:
        raise SystemExit(f"{val_path}: only {50000 - len(train)} of its {len(val)} records are in the training set")
    split = lambda r: (r[:, 1:].reshape(-1, 3, 32, 32), r[:, 0].astype(np.int64))
    return split(train), split(val)


def point(it, total, a):
    """LR and momentum at iteration `it` of `total` (sc-trainer's one-cycle)."""
    last = max(total - 1, 1)
    peak = max(a.pct_start * total - 1, 0)
    back = max(a.cycle_end * total - 1, peak)
    min_lr, max_lr, final_lr = a.max_lr / 10, a.max_lr, a.max_lr / 1000
    lr_knots = [(0, min_lr), (peak, max_lr), (back, min_lr), (last, final_lr)]
    m_knots = [(0, 0.95), (peak, 0.85), (back, 0.95), (last, 0.95)]

    def through(knots):
        for (x0, y0), (x1, y1) in zip(knots, knots[1:]):
            if it <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (it - x0) / (x1 - x0)
        return knots[-1][1]

    return through(lr_knots), through(m_knots)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--epochs", type=float, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--max-lr", type=float, default=0.2)
    ap.add_argument("--pct-start", type=float, default=0.4375)
    ap.add_argument("--cycle-end", type=float, default=0.875)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--no-decay-bn-bias", action="store_true")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--ema", type=float, default=None, help="EMA decay (weights and BN statistics)")
    ap.add_argument("--ema-every", type=int, default=5)
    ap.add_argument("--ema-start", type=float, default=0.5)
    ap.add_argument("--zero-init-residual", action="store_true")
    ap.add_argument("--targets", default="0.90,0.91")
    ap.add_argument("--eval-every-epochs", type=float, default=1.0)
    ap.add_argument("--limit-iterations", type=int, default=None, help="stop early (a smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    (xtr, ytr), (xva, yva) = load_split(a.data, a.val)
    print(f"{len(xtr)} training images, {len(xva)} validation images ({a.val})", file=sys.stderr)
    mean = xtr.reshape(len(xtr), 3, -1).mean(axis=(0, 2)) / 255.0
    std = (xtr.reshape(len(xtr), 3, -1) / 255.0).std(axis=(0, 2))
    norm = lambda x: (torch.from_numpy(x).float() / 255.0 - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    val_x = norm(xva).contiguous(memory_format=torch.channels_last)
    val_y = torch.from_numpy(yva)

    model = build(a.depth).to(memory_format=torch.channels_last)
    if a.zero_init_residual:
        for b in model.blocks:
            torch.nn.init.zeros_(b.bn2.weight)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if a.no_decay_bn_bias and (p.ndim == 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": a.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=a.max_lr / 10, momentum=0.95, nesterov=False)
    ema = copy.deepcopy(model) if a.ema else None
    ema_started = False

    per_epoch = len(xtr) // a.batch
    total = int(round(a.epochs * per_epoch))
    if a.limit_iterations:
        total_run = min(total, a.limit_iterations)
    else:
        total_run = total
    eval_every = max(1, int(round(a.eval_every_epochs * per_epoch)))
    targets = sorted(float(t) for t in a.targets.split(","))
    reached = {}
    train_s = 0.0

    def evaluate(net):
        net.eval()
        correct = correct_flip = 0
        with torch.no_grad():
            for i in range(0, len(val_x), 500):
                x = val_x[i:i + 500]
                logits = net(x)
                flipped = logits + net(torch.flip(x, dims=[3]))
                correct += (logits.argmax(1) == val_y[i:i + 500]).sum().item()
                correct_flip += (flipped.argmax(1) == val_y[i:i + 500]).sum().item()
        net.train()
        return correct / len(val_x), correct_flip / len(val_x)

    it = 0
    model.train()
    while it < total_run:
        order = rng.permutation(len(xtr))
        for s in range(0, len(order) - a.batch + 1, a.batch):
            if it >= total_run:
                break
            t0 = time.perf_counter()
            idx = order[s:s + a.batch]
            xb = np.pad(xtr[idx], ((0, 0), (0, 0), (4, 4), (4, 4)))
            dx, dy = rng.integers(0, 9, size=2 * a.batch).reshape(2, -1)
            flips = rng.random(a.batch) < 0.5
            crops = np.stack([xb[k, :, dy[k]:dy[k] + 32, dx[k]:dx[k] + 32] for k in range(a.batch)])
            crops[flips] = crops[flips][..., ::-1]
            x = norm(np.ascontiguousarray(crops)).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(ytr[idx])
            lr, mom = point(it, total, a)
            for g in opt.param_groups:
                g["lr"], g["momentum"] = lr, mom
            loss = F.cross_entropy(model(x), y, label_smoothing=a.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            if ema is not None and it >= a.ema_start * total and it % a.ema_every == 0:
                with torch.no_grad():
                    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
                        if not e.dtype.is_floating_point:
                            e.copy_(m)
                        elif ema_started:
                            e.mul_(a.ema).add_(m, alpha=1 - a.ema)
                        else:
                            e.copy_(m)
                ema_started = True
            train_s += time.perf_counter() - t0
            if it % eval_every == 0 or it == total_run:
                acc, acc_flip = evaluate(ema if ema_started else model)
                row = {"iteration": it, "epoch": it / per_epoch, "train_seconds": round(train_s, 2),
                       "val_acc": acc, "val_acc_flip": acc_flip, "loss": loss.item()}
                print(json.dumps(row), flush=True)
                for t in targets:
                    if t not in reached and acc >= t:
                        reached[t] = {"train_seconds": round(train_s, 2), "epoch": it / per_epoch}
    print(json.dumps({"done": True, "iterations": it, "train_seconds": round(train_s, 2),
                      "reached": {str(t): reached.get(t) for t in targets},
                      "threads": a.threads, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
