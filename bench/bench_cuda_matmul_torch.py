"""bench_cuda_matmul_torch.py — torch.matmul at n x n x n fp32 on a CUDA device, timed
as bench/bench_cuda_matmul.c times Kiln (median of --iters products after three warm-up
ones, each synchronised). TF32 stays off, as in Kiln's default; --tf32 allows it, as
bench_cuda_matmul --tf32 does. Prints one line:
"torch matmul n=N tf32=0|1 ms=<median ms> tflops=<TFLOP/s>", or "skipped: ..." without a
GPU."""
import argparse
import sys
import time

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 tensor-core products")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: torch sees no CUDA device")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(args.n, args.n, generator=gen).to(device)
    b = torch.randn(args.n, args.n, generator=gen).to(device)
    times = []
    for i in range(-3, args.iters):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        if i >= 0:
            times.append(t1 - t0)
    times.sort()
    median = times[len(times) // 2]
    flops = 2.0 * args.n ** 3
    print(f"torch matmul n={args.n} tf32={int(args.tf32)} ms={median * 1e3:.3f} "
          f"tflops={flops / median / 1e12:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
