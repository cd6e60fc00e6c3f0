/*
 * bench_timing.h — how the side-by-side benchmarks (bench_layers, bench_rnn) time one
 * call: a monotonic clock, the median of a few samples, and bench_measure (warm up, size
 * the iteration count to a time budget, take the median of the runs), the same method as
 * their PyTorch halves (bench_layers_torch.py, bench_rnn_torch.py). Header-only: each
 * benchmark is one executable.
 */
#ifndef BENCH_TIMING_H
#define BENCH_TIMING_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BENCH_MAX_SAMPLES = 64 };

typedef bool (*bench_fn)(void *context);

static inline double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of values[0..n) (left as they are); n is 1..BENCH_MAX_SAMPLES. */
static inline double bench_median(const double *values, int n)
{
    double v[BENCH_MAX_SAMPLES];
    if (n > BENCH_MAX_SAMPLES) n = BENCH_MAX_SAMPLES;
    memcpy(v, values, sizeof(double) * (size_t)n);
    qsort(v, (size_t)n, sizeof(double), bench_compare_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Median microseconds per call of fn(context) over `runs` (<= 5) runs of about run_s
 * seconds each, after at least two calls and warm_s seconds of warm-up; -1 when fn fails. */
static inline double bench_measure(bench_fn fn, void *context, double warm_s, double run_s,
                                   int runs)
{
    double start = bench_now_s();
    int warm = 0;
    do {
        if (!fn(context)) return -1;
        warm++;
    } while (warm < 2 || bench_now_s() - start < warm_s);
    double per_iter = (bench_now_s() - start) / warm;
    int iters = (int)(run_s / per_iter);
    if (iters < 1) iters = 1;
    if (runs > 5) runs = 5;
    double times[5];
    for (int r = 0; r < runs; r++) {
        double t0 = bench_now_s();
        for (int i = 0; i < iters; i++)
            if (!fn(context)) return -1;
        times[r] = (bench_now_s() - t0) / iters;
    }
    return bench_median(times, runs) * 1e6;
}

#endif
