/*
 * bench_ops.c — throughput of the engine's hot ops, one JSON line per measurement:
 * matmul (kn_matmul and cblas_sgemm called directly, GFLOP/s), elementwise kn_add
 * (GB/s counting two reads and one write) and kn_softmax over the last dim (GB/s
 * counting one read and one write). bench/bench_torch.py measures the same in PyTorch
 * and bench/run.sh puts them side by side.
 *
 * Each measurement: warm-up, then a calibrated number of iterations per run so a run
 * lasts ~50 ms, and the median over several runs. Every iteration is its own scope, as
 * a training step would be. An op that fails (returns NULL) is reported and skipped.
 *
 * Usage: bench_ops [--threads N] [--quick]   (threads default 2, as bench_torch.py)
 */
#include "kn.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int quick; /* fewer runs, for a smoke test */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One iteration of a measured op; returns false (with kn_last_error set) on failure. */
typedef bool (*bench_fn)(void *context);

/* Median seconds per iteration of fn, or a negative value when fn failed. */
static double measure(bench_fn fn, void *context)
{
    double start = now_s();
    int warm = 0;
    do { /* at least two warm-up iterations and ~0.1 s: caches, allocator, thread pool */
        if (!fn(context)) return -1;
        warm++;
    } while (warm < 2 || now_s() - start < (quick ? 0.02 : 0.1));
    double per_iter = (now_s() - start) / warm;
    int iters = (int)((quick ? 0.01 : 0.05) / per_iter);
    if (iters < 1) iters = 1;
    enum { RUNS = 7 };
    int runs = quick ? 3 : RUNS;
    double times[RUNS];
    for (int r = 0; r < runs; r++) {
        double t0 = now_s();
        for (int i = 0; i < iters; i++)
            if (!fn(context)) return -1;
        times[r] = (now_s() - t0) / iters;
    }
    qsort(times, (size_t)runs, sizeof(double), compare_double);
    return times[runs / 2];
}

static void report(const char *op, const char *impl, const char *size, double seconds, double work,
                   const char *unit)
{
    if (seconds < 0) {
        char escaped[512];
        size_t j = 0;
        for (const char *p = kn_last_error(); *p && j + 2 < sizeof escaped; p++) {
            if (*p == '"' || *p == '\\') escaped[j++] = '\\';
            escaped[j++] = *p;
        }
        escaped[j] = '\0';
        fprintf(stderr, "bench_ops: %s %s %s skipped: %s\n", op, impl, size, kn_last_error());
        printf("{\"op\": \"%s\", \"impl\": \"%s\", \"size\": \"%s\", \"error\": \"%s\"}\n", op,
               impl, size, escaped);
    } else {
        printf("{\"op\": \"%s\", \"impl\": \"%s\", \"size\": \"%s\", \"median_us\": %.3f, "
               "\"unit\": \"%s\", \"value\": %.3f}\n",
               op, impl, size, seconds * 1e6, unit, work / seconds * 1e-9);
    }
    fflush(stdout);
}

/* ---- matmul ------------------------------------------------------------------------ */

typedef struct matmul_case {
    kn_tensor *a, *b;
    float *pa, *pb, *pc;
    int n;
} matmul_case;

static bool kiln_matmul(void *context)
{
    matmul_case *c = context;
    kn_scope_begin();
    bool ok = kn_matmul(c->a, c->b) != NULL;
    kn_scope_end();
    return ok;
}

static bool blas_matmul(void *context)
{
    matmul_case *c = context;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->n, c->n, c->n, 1.0f, c->pa, c->n,
                c->pb, c->n, 0.0f, c->pc, c->n);
    return true;
}

static void bench_matmul(kn_generator *gen)
{
    static const int sizes[] = {128, 512, 1024, 2048};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        int n = sizes[i];
        char size[64];
        snprintf(size, sizeof size, "%dx%dx%d", n, n, n);
        double flops = 2.0 * n * n * n;
        kn_scope_begin();
        matmul_case c = {kn_rand(KN_SHAPE(n, n), gen), kn_rand(KN_SHAPE(n, n), gen), 0, 0, 0, n};
        if (!c.a || !c.b) {
            report("matmul", "kiln", size, -1, 0, "");
            kn_scope_end();
            continue;
        }
        report("matmul", "kiln", size, measure(kiln_matmul, &c), flops, "GFLOP/s");
        c.pa = kn_data_f32(c.a);
        c.pb = kn_data_f32(c.b);
        c.pc = malloc(sizeof(float) * (size_t)n * (size_t)n);
        if (c.pc) report("matmul", "openblas", size, measure(blas_matmul, &c), flops, "GFLOP/s");
        free(c.pc);
        kn_scope_end();
    }
}

/* ---- add and softmax ---------------------------------------------------------------- */

typedef struct operands {
    kn_tensor *a, *b;
} operands;

static bool kiln_add(void *context)
{
    operands *c = context;
    kn_scope_begin();
    bool ok = kn_add(c->a, c->b) != NULL;
    kn_scope_end();
    return ok;
}

static bool kiln_softmax(void *context)
{
    operands *c = context;
    kn_scope_begin();
    bool ok = kn_softmax(c->a, -1) != NULL;
    kn_scope_end();
    return ok;
}

static void bench_add(kn_generator *gen)
{
    static const int64_t sizes[] = {65536, 1 << 20, 16 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        int64_t n = sizes[i];
        char size[64];
        snprintf(size, sizeof size, "%lld", (long long)n);
        kn_scope_begin();
        operands c = {kn_rand(KN_SHAPE(n), gen), kn_rand(KN_SHAPE(n), gen)};
        double seconds = c.a && c.b ? measure(kiln_add, &c) : -1;
        report("add", "kiln", size, seconds, 3.0 * 4.0 * (double)n, "GB/s");
        kn_scope_end();
    }
}

static void bench_softmax(kn_generator *gen)
{
    static const int64_t shapes[][2] = {{256, 1000}, {4096, 1024}, {64, 65536}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        int64_t rows = shapes[i][0], cols = shapes[i][1];
        char size[64];
        snprintf(size, sizeof size, "%lldx%lld", (long long)rows, (long long)cols);
        kn_scope_begin();
        operands c = {kn_rand(KN_SHAPE(rows, cols), gen), NULL};
        double seconds = c.a ? measure(kiln_softmax, &c) : -1;
        report("softmax", "kiln", size, seconds, 2.0 * 4.0 * (double)(rows * cols), "GB/s");
        kn_scope_end();
    }
}

int main(int argc, char **argv)
{
    int threads = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else {
            fprintf(stderr, "usage: %s [--threads N] [--quick]\n", argv[0]);
            return 2;
        }
    }
    kn_set_num_threads(threads);       /* the engine's scheduler (its own GEMM) */
    openblas_set_num_threads(threads); /* the reference: OpenBLAS with as many threads */
    kn_generator *gen = kn_generator_new(0);
    if (!gen) {
        fprintf(stderr, "bench_ops: %s\n", kn_last_error());
        return 1;
    }
    bench_matmul(gen);
    bench_add(gen);
    bench_softmax(gen);
    kn_generator_free(gen);
    kn_empty_cache();
    return 0;
}
