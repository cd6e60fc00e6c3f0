#!/usr/bin/python3
"""bench_torch.py — PyTorch's side of the benchmark: the same ops, sizes, work counts,
timing method (warm-up, ~50 ms runs, median of 7) and JSON lines as bench_ops.c.

Run with Debian's PyTorch: /usr/bin/python3 bench/bench_torch.py [--threads N] [--quick]
"""
import argparse
import json
import statistics
import time

import torch


def measure(fn, quick):
    start = time.perf_counter()
    warm = 0
    while warm < 2 or time.perf_counter() - start < (0.02 if quick else 0.1):
        fn()
        warm += 1
    per_iter = (time.perf_counter() - start) / warm
    iters = max(1, int((0.01 if quick else 0.05) / per_iter))
    times = []
    for _ in range(3 if quick else 7):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def report(op, size, seconds, work, unit):
    print(json.dumps({"op": op, "impl": "torch", "size": size,
                      "median_us": round(seconds * 1e6, 3), "unit": unit,
                      "value": round(work / seconds * 1e-9, 3)}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        for n in (128, 512, 1024, 2048):
            a, b = torch.rand(n, n), torch.rand(n, n)
            report("matmul", f"{n}x{n}x{n}", measure(lambda: torch.matmul(a, b), args.quick),
                   2.0 * n ** 3, "GFLOP/s")
        for n in (65536, 1 << 20, 16 << 20):
            a, b = torch.rand(n), torch.rand(n)
            report("add", str(n), measure(lambda: torch.add(a, b), args.quick),
                   3.0 * 4 * n, "GB/s")
        for rows, cols in ((256, 1000), (4096, 1024), (64, 65536)):
            x = torch.rand(rows, cols)
            report("softmax", f"{rows}x{cols}",
                   measure(lambda: torch.softmax(x, -1), args.quick),
                   2.0 * 4 * rows * cols, "GB/s")


if __name__ == "__main__":
    main()
