#!/usr/bin/env python3
"""onnxruntime throughput and latency per batch size, measured like `sc-runtime bench`.

Requests of BATCH images run one after another in one session with THREADS intra-op threads;
the first requests are warm-up; each batch size is measured for at least --seconds and 10 requests.
Prints one JSON list (the same fields as `sc-runtime bench --json`) on stdout.

Usage: bench_onnxruntime.py MODEL.onnx --batch 1,64 --threads 2 [--seconds 3]
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", default="1,64", help="images per request, comma-separated (default 1,64)")
    ap.add_argument("--threads", type=int, required=True, help="intra-op threads")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum time per batch size, s (default 3)")
    args = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    chw = [d if isinstance(d, int) else None for d in inp.shape[1:]]
    if None in chw:
        raise SystemExit(f"{args.model}: input {inp.name} {inp.shape}: C, H, W must be fixed")

    rng = np.random.default_rng(0)
    results = []
    for batch in [int(b) for b in args.batch.split(",")]:
        x = rng.random((batch, *chw), dtype=np.float32)
        for _ in range(3):
            sess.run(None, {inp.name: x})
        lat = []
        start = time.perf_counter()
        while len(lat) < 10 or time.perf_counter() - start < args.seconds:
            t = time.perf_counter()
            sess.run(None, {inp.name: x})
            lat.append((time.perf_counter() - t) * 1e3)
        total = time.perf_counter() - start
        lat.sort()
        rank = lambda q: lat[max(1, min(len(lat), int(np.ceil(q * len(lat))))) - 1]
        results.append({
            "batch": batch,
            "threads": args.threads,
            "requests": len(lat),
            "images_per_second": len(lat) * batch / total,
            "latency_ms_p50": rank(0.50),
            "latency_ms_p99": rank(0.99),
            "latency_ms_mean": sum(lat) / len(lat),
        })
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
