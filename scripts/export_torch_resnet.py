"""Exports PyTorch's CIFAR ResNet (option A, the network scripts/bench_torch_train.py trains) with
random weights and batch statistics to ONNX, as a foreign model for scripts/bench-runtime.sh.

Usage: python scripts/export_torch_resnet.py OUT.onnx [--depth 20] [--seed 0]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch_train import build  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = build(a.depth)
    # A few training-mode passes give the BatchNorm layers non-trivial running statistics.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 3, 32, 32))
    model.eval()
    tmp = a.out + ".tmp"
    torch.onnx.export(model, torch.rand(1, 3, 32, 32), tmp, input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(tmp, a.out)
    print(f"wrote {a.out} (PyTorch ResNet-{a.depth}, random weights, opset 17)")


if __name__ == "__main__":
    main()
