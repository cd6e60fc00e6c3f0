/*
 * bench_cuda_matmul.c — Kiln's fp32 matmul on a CUDA device (cuBLAS through the CUDA
 * module) at n x n x n, n = 4096 by default: the micro-benchmark against
 * torch.matmul (bench/bench_cuda_matmul_torch.py; bench/cuda/run.sh runs both and
 * prints the ratio).
 *
 * Usage: bench_cuda_matmul [--n N] [--iters I] [--device cuda:K] [--tf32] | --status
 * fp32 throughout; --tf32 lets cuBLAS round the inputs to TF32 on tensor cores
 * (kn_set_allow_tf32, as torch.backends.cuda.matmul.allow_tf32 = True).
 * Prints one line: "kiln matmul n=N tf32=0|1 ms=<median ms> tflops=<TFLOP/s>", or a line starting
 * "skipped:" (exit 0) where no CUDA device is available. --status prints what the engine
 * found ("cuda devices=N: <kn_cuda_status()>") and exits 1 when there is no device, so a
 * script can ask whether to run the GPU benchmarks at all (bench/cuda/run.sh does).
 */
#include "kn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The engine's view of CUDA: how many devices, and what was loaded or why not. */
static int print_status(void)
{
    int count = kn_cuda_device_count();
    printf("cuda devices=%d: %s\n", count, kn_cuda_status());
    return count > 0 ? 0 : 1;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int64_t n = 4096;
    int iters = 20;
    const char *device_name = "cuda:0";
    bool tf32 = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--n") == 0 && i + 1 < argc)
            n = atoll(argv[++i]);
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            device_name = argv[++i];
        else if (strcmp(argv[i], "--tf32") == 0)
            tf32 = true;
        else if (strcmp(argv[i], "--status") == 0)
            return print_status();
        else {
            fprintf(stderr, "usage: %s [--n N] [--iters I] [--device cuda:K] [--tf32] | --status\n",
                    argv[0]);
            return 2;
        }
    }
    if (n <= 0 || iters <= 0 || iters > 1000) {
        fprintf(stderr, "bench_cuda_matmul: --n must be > 0 and --iters in 1..1000\n");
        return 2;
    }
    kn_device device;
    if (kn_device_parse(device_name, &device) != KN_OK || device.type != KN_DEVICE_CUDA) {
        fprintf(stderr, "bench_cuda_matmul: expected a cuda device, got %s\n", device_name);
        return 2;
    }
    if (!kn_device_available(device)) {
        printf("skipped: %s is not available (%s)\n", device_name, kn_cuda_status());
        return 0;
    }
    kn_set_allow_tf32(tf32); /* per thread: this one issues every product */
    kn_generator *gen = kn_generator_new(0);
    kn_scope_begin();
    kn_tensor *a = kn_to(kn_randn((int64_t[]){n, n}, 2, gen), device);
    kn_tensor *b = kn_to(kn_randn((int64_t[]){n, n}, 2, gen), device);
    kn_generator_free(gen);
    if (!a || !b) {
        fprintf(stderr, "bench_cuda_matmul: %s\n", kn_last_error());
        return 1;
    }
    double times[1000];
    for (int i = -3; i < iters; i++) { /* three warm-up products: cuBLAS picks its kernels */
        kn_scope_begin();
        double t0 = now_s();
        kn_tensor *c = kn_matmul(a, b);
        kn_status status = c ? kn_cuda_synchronize(device.index) : kn_last_status();
        double t1 = now_s();
        kn_scope_end();
        if (status != KN_OK) {
            fprintf(stderr, "bench_cuda_matmul: %s\n", kn_last_error());
            return 1;
        }
        if (i >= 0) times[i] = t1 - t0;
    }
    qsort(times, (size_t)iters, sizeof times[0], compare_double);
    double median = times[iters / 2];
    printf("kiln matmul n=%lld tf32=%d ms=%.3f tflops=%.2f\n", (long long)n, tf32 ? 1 : 0,
           median * 1e3, 2.0 * (double)n * (double)n * (double)n / median / 1e12);
    kn_scope_end();
    return 0;
}
