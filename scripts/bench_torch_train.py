#!/usr/bin/env python3
"""PyTorch CPU reference for `cargo bench -p sc-trainer --bench train_step`: the same CIFAR ResNets
(option-A shortcut: every second pixel, zero channels appended), the same full SGD step (forward,
cross-entropy, backward, Nesterov SGD with weight decay) on synthetic 3x32x32 data.

Usage: bench_torch_train.py [--configs resnet20:128,...] [--threads 2] [--seconds 8]
         [--formats nchw,channels_last]
Prints one JSON object per (configuration, memory format); each runs in its own process so that
its peak RSS is its own.
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def build(depth):
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = stride != 1 or cin != cout
            self.extra = cout - cin

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            s = x
            if self.down:
                s = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, self.extra))
            return F.relu(y + s)

    class ResNet(nn.Module):
        def __init__(self, depth, classes=10, widths=(16, 32, 64)):
            super().__init__()
            n = (depth - 2) // 6
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            blocks, cin = [], widths[0]
            for s, cout in enumerate(widths):
                for b in range(n):
                    blocks.append(Block(cin, cout, 2 if s > 0 and b == 0 else 1))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(widths[2], classes)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.blocks(x)
            return self.fc(x.mean((2, 3)))

    return ResNet(depth)


def child(model, batch, fmt, threads, seconds):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    depth = int(model.lower().replace("resnet", ""))
    net = build(depth)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.arange(batch) * 7 % 10
    # FORMAT is nchw or channels_last, with "-bf16" for torch.autocast('cpu', bfloat16).
    layout, _, prec = fmt.partition("-")
    if layout == "channels_last":
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    import contextlib
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else contextlib.nullcontext
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with cast():
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    step()
    start, steps = time.perf_counter(), 0
    while steps < 2 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    dt = time.perf_counter() - start
    print(json.dumps({
        "model": model, "batch": batch, "format": fmt, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "steps": steps, "images_per_second": steps * batch / dt,
        "step_ms": dt / steps * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="resnet20:128,resnet20:512,resnet56:128,resnet56:512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--formats", default="nchw,channels_last")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "BATCH", "FORMAT"))
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), a.child[2], a.threads, a.seconds)
        return
    for cfg in a.configs.split(","):
        model, batch = cfg.split(":")
        for fmt in a.formats.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--child", model, batch, fmt,
                 "--threads", str(a.threads), "--seconds", str(a.seconds)],
                check=True, capture_output=True, text=True)
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
