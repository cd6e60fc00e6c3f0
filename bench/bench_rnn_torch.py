#!/usr/bin/python3
"""bench_rnn_torch.py — PyTorch's side of bench_rnn.c: nn.LSTM / nn.GRU (batch first),
forward under no_grad, and forward + backward with a fixed output gradient (input and
every parameter), for the same cases and with the same timing method (warm-up, runs of
~200 ms, median of the runs). Prints one line per case, "<name> <median microseconds>".

Run with Debian's PyTorch: /usr/bin/python3 bench/bench_rnn_torch.py [--threads N] [--quick]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

# name, lstm, backward, batch, steps, input, hidden, layers, bidirectional: bench_rnn.c's
CASES = [
    ("lstm_fwd", True, False, 32, 64, 64, 128, 1, False),
    ("lstm_fwd_bwd", True, True, 32, 64, 64, 128, 1, False),
    ("gru_fwd", False, False, 32, 64, 64, 128, 1, False),
    ("gru_fwd_bwd", False, True, 32, 64, 64, 128, 1, False),
    ("lstm2_bidir_fwd", True, False, 16, 50, 32, 64, 2, True),
    ("lstm2_bidir_fwd_bwd", True, True, 16, 50, 32, 64, 2, True),
]


def measure(fn, quick):
    span = 0.05 if quick else 0.2
    start = time.perf_counter()
    warm = 0
    while warm < 2 or time.perf_counter() - start < span:
        fn()
        warm += 1
    iters = max(1, int(span / ((time.perf_counter() - start) / warm)))
    times = []
    for _ in range(3 if quick else 5):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, lstm, backward, n, t, i, h, layers, bidir in CASES:
        torch.manual_seed(0)
        m = (nn.LSTM if lstm else nn.GRU)(i, h, layers, bidirectional=bidir, batch_first=True)
        x = torch.randn(n, t, i, requires_grad=backward)
        grad = torch.randn(n, t, (2 if bidir else 1) * h)

        def run():
            if backward:
                m.zero_grad(set_to_none=True)
                x.grad = None
                m(x)[0].backward(grad)
            else:
                with torch.no_grad():
                    m(x)
        print(name, measure(run, args.quick) * 1e6, flush=True)


if __name__ == "__main__":
    main()
