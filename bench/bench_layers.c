/*
 * bench_layers.c — the Fashion-MNIST CNN's conv and pool layers at batch 64, Kiln beside
 * PyTorch in one run: forward alone (no grad), forward + backward (weight, bias and,
 * where the real model needs it, input grads), and the whole training step (forward,
 * cross_entropy, backward, Adam). Kiln and PyTorch (bench/bench_layers_torch.py run by
 * /usr/bin/python3) take turns for several rounds and each figure is the median over
 * the rounds, so load from other processes on the machine hits both sides alike.
 * Attention (issue 12): causal self-attention at nanoGPT's shape (batch 12, T 64, 4
 * heads of 32), the op alone (sdpa) and with its projections (mha; nanoGPT's
 * CausalSelfAttention on the torch side).
 *
 * Usage: bench_layers [--threads N] [--rounds R] [--quick] [--no-torch] [--only NAME]
 * (--only: one of conv1, pool1, conv2, pool2, step, sdpa, mha, Kiln only: for profiling)
 * Run from the repository root (or set KILN_SOURCE_DIR) so the Python script is found.
 */
#include "kn.h"
#include "kn_nn.h"
#include "kn_optim.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_ROWS = 32, MAX_ROUNDS = 15 };

static int quick;
static const char *only; /* --only NAME: one layer (conv1, pool1, conv2, pool2, step) */

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

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), compare_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

typedef bool (*bench_fn)(void *context);

/* Median microseconds per iteration (same method as bench_layers_torch.py), or -1. */
static double measure(bench_fn fn, void *context)
{
    double start = now_s();
    int warm = 0;
    do {
        if (!fn(context)) return -1;
        warm++;
    } while (warm < 2 || now_s() - start < (quick ? 0.02 : 0.1));
    double per_iter = (now_s() - start) / warm;
    int iters = (int)((quick ? 0.01 : 0.05) / per_iter);
    if (iters < 1) iters = 1;
    int runs = quick ? 3 : 5;
    double times[5];
    for (int r = 0; r < runs; r++) {
        double t0 = now_s();
        for (int i = 0; i < iters; i++)
            if (!fn(context)) return -1;
        times[r] = (now_s() - t0) / iters;
    }
    return median(times, runs) * 1e6;
}

/* ---- results table: name -> per-round samples for each side ------------------------ */

typedef struct row {
    char name[64];
    double kiln[MAX_ROUNDS], torch[MAX_ROUNDS];
    int n_kiln, n_torch;
} row;

static row rows[MAX_ROWS];
static int n_rows;

static row *row_for(const char *name)
{
    for (int i = 0; i < n_rows; i++)
        if (!strcmp(rows[i].name, name)) return &rows[i];
    if (n_rows == MAX_ROWS) return NULL;
    row *r = &rows[n_rows++];
    snprintf(r->name, sizeof r->name, "%s", name);
    return r;
}

static void record(const char *name, bool is_torch, double us)
{
    row *r = row_for(name);
    if (!r || us < 0) return;
    if (is_torch && r->n_torch < MAX_ROUNDS) r->torch[r->n_torch++] = us;
    if (!is_torch && r->n_kiln < MAX_ROUNDS) r->kiln[r->n_kiln++] = us;
}

/* ---- Kiln's layers ---------------------------------------------------------------- */

typedef struct layer {
    kn_tensor *x, *w, *b, *grad; /* w, b NULL for pooling */
    bool is_conv;
} layer;

static kn_tensor *layer_forward(const layer *l)
{
    if (l->is_conv) return kn_conv2d(l->x, l->w, l->b, (kn_conv2d_args){.padding = {1, 1}});
    return kn_max_pool2d(l->x, (kn_pool2d_args){.kernel_size = {2, 2}});
}

static bool run_forward(void *context)
{
    kn_scope_begin();
    kn_no_grad_begin();
    bool ok = layer_forward(context) != NULL;
    kn_no_grad_end();
    kn_scope_end();
    return ok;
}

static bool run_forward_backward(void *context)
{
    const layer *l = context;
    kn_zero_grad(l->x);
    if (l->w) kn_zero_grad(l->w);
    if (l->b) kn_zero_grad(l->b);
    kn_scope_begin();
    kn_tensor *out = layer_forward(l);
    bool ok = out && kn_backward(out, l->grad, false) == KN_OK;
    kn_scope_end();
    return ok;
}

static kn_tensor *uniform(const int64_t *shape, int ndim, double bound, bool grad)
{
    kn_tensor *t = kn_empty(shape, ndim, KN_FLOAT32);
    kn_uniform_(t, -bound, bound, NULL);
    return grad ? kn_set_requires_grad(t, true) : t;
}

static void bench_layer(const char *name, int64_t c, int64_t hw, int64_t o, bool input_grad)
{
    if (only && strcmp(only, name)) return;
    kn_scope_begin();
    int64_t xs[4] = {64, c, hw, hw}, ws[4] = {o, c, 3, 3}, bs[1] = {o};
    layer l = {.x = uniform(xs, 4, 1, input_grad), .is_conv = o > 0};
    if (l.is_conv) {
        l.w = uniform(ws, 4, 0.3, true);
        l.b = uniform(bs, 1, 0.3, true);
    }
    kn_no_grad_begin();
    kn_tensor *out = layer_forward(&l);
    kn_no_grad_end();
    l.grad = kn_rand(out->shape, out->ndim, NULL);
    char key[40];
    snprintf(key, sizeof key, "%s.fwd", name);
    record(key, false, measure(run_forward, &l));
    snprintf(key, sizeof key, "%s.fwdbwd", name);
    record(key, false, measure(run_forward_backward, &l));
    kn_scope_end();
}

/* ---- Kiln's training step ---------------------------------------------------------- */

typedef struct model {
    kn_tensor *p[8]; /* conv1 w, b, conv2 w, b, fc1 w, b, fc2 w, b */
    kn_tensor *x, *y;
    kn_optimizer *opt;
} model;

static bool train_step(void *context)
{
    model *m = context;
    kn_conv2d_args same = {.padding = {1, 1}};
    kn_pool2d_args pool = {.kernel_size = {2, 2}};
    kn_optimizer_zero_grad(m->opt);
    kn_scope_begin();
    kn_tensor *h = kn_max_pool2d(kn_relu(kn_conv2d(m->x, m->p[0], m->p[1], same)), pool);
    h = kn_max_pool2d(kn_relu(kn_conv2d(h, m->p[2], m->p[3], same)), pool);
    h = kn_relu(kn_linear(kn_flatten(h, 1, -1), m->p[4], m->p[5]));
    kn_tensor *loss = kn_cross_entropy(kn_linear(h, m->p[6], m->p[7]), m->y, KN_REDUCTION_MEAN,
                                       KN_DEFAULT_IGNORE_INDEX, 0.0);
    bool ok = loss && kn_backward(loss, NULL, false) == KN_OK;
    kn_scope_end();
    return ok && kn_optimizer_step(m->opt) == KN_OK;
}

static void bench_step(void)
{
    if (only && strcmp(only, "step")) return;
    model m = {0};
    const int64_t shapes[8][4] = {{16, 1, 3, 3}, {16},  {32, 16, 3, 3}, {32},
                                  {128, 1568},   {128}, {10, 128},      {10}};
    const int ndims[8] = {4, 1, 4, 1, 2, 1, 2, 1};
    const double bounds[8] = {1 / 3., 1 / 3., 1 / 12., 1 / 12., 0.025, 0.025, 0.088, 0.088};
    for (int i = 0; i < 8; i++) m.p[i] = uniform(shapes[i], ndims[i], bounds[i], true);
    int64_t xs[4] = {64, 1, 28, 28}, ys[1] = {64}, labels[64];
    for (int i = 0; i < 64; i++) labels[i] = i % 10;
    m.x = kn_rand(xs, 4, NULL);
    m.y = kn_from_int64s(labels, ys, 1);
    m.opt = kn_optimizer_new(m.p, 8, kn_optimizer_defaults(KN_OPTIM_ADAM));
    if (!m.opt) {
        fprintf(stderr, "bench_layers: optimizer: %s\n", kn_last_error());
    } else {
        record("step", false, measure(train_step, &m));
        kn_optimizer_free(m.opt);
    }
    for (int i = 0; i < 8; i++) kn_release(m.p[i]);
    kn_release(m.x);
    kn_release(m.y);
}

/* ---- attention (issue 12): nanoGPT's shape ------------------------------------------- */

enum { ATTN_B = 12, ATTN_T = 64, ATTN_H = 4, ATTN_D = 32, ATTN_E = ATTN_H * ATTN_D };

typedef struct attention_bench {
    kn_tensor *q, *k, *v, *g; /* [B, H, T, D] */
    kn_tensor *x, *gx;        /* [B, T, E] */
    kn_module *mha;
    bool grad;
} attention_bench;

static kn_tensor *attention_forward(attention_bench *a, bool layer)
{
    if (layer) return kn_module_forward(a->mha, a->x);
    return kn_scaled_dot_product_attention(a->q, a->k, a->v, &(kn_attention_args){.is_causal = 1});
}

static bool run_attention(attention_bench *a, bool layer)
{
    if (a->grad) {
        kn_tensor *leaves[4] = {a->q, a->k, a->v, a->x};
        for (int i = 0; i < 4; i++) kn_zero_grad(leaves[i]);
        kn_module_zero_grad(a->mha);
    }
    kn_scope_begin();
    if (!a->grad) kn_no_grad_begin();
    kn_tensor *out = attention_forward(a, layer);
    bool ok = out && (!a->grad || kn_backward(out, layer ? a->gx : a->g, false) == KN_OK);
    if (!a->grad) kn_no_grad_end();
    kn_scope_end();
    return ok;
}

static bool run_sdpa(void *context)
{
    return run_attention(context, false);
}

static bool run_mha(void *context)
{
    return run_attention(context, true);
}

static void bench_attention(void)
{
    if (only && strcmp(only, "sdpa") && strcmp(only, "mha")) return;
    kn_scope_begin();
    int64_t heads[4] = {ATTN_B, ATTN_H, ATTN_T, ATTN_D}, seq[3] = {ATTN_B, ATTN_T, ATTN_E};
    attention_bench a = {.q = uniform(heads, 4, 1, true),
                         .k = uniform(heads, 4, 1, true),
                         .v = uniform(heads, 4, 1, true),
                         .g = kn_rand(heads, 4, NULL),
                         .x = uniform(seq, 3, 1, true),
                         .gx = kn_rand(seq, 3, NULL),
                         .mha = kn_multi_head_attention_new(ATTN_E, ATTN_H, 0.0, true, true, NULL)};
    if (!a.mha) {
        fprintf(stderr, "bench_layers: attention: %s\n", kn_last_error());
        kn_scope_end();
        return;
    }
    for (int grad = 0; grad < 2; grad++) {
        a.grad = grad;
        if (!only || !strcmp(only, "sdpa"))
            record(grad ? "sdpa.fwdbwd" : "sdpa.fwd", false, measure(run_sdpa, &a));
        if (!only || !strcmp(only, "mha"))
            record(grad ? "mha.fwdbwd" : "mha.fwd", false, measure(run_mha, &a));
    }
    kn_module_free(a.mha);
    kn_scope_end();
}

static void kiln_round(void)
{
    bench_layer("conv1", 1, 28, 16, false);
    bench_layer("pool1", 16, 28, 0, true);
    bench_layer("conv2", 16, 14, 32, true);
    bench_layer("pool2", 32, 14, 0, true);
    bench_step();
    bench_attention();
}

static bool torch_round(int threads)
{
    const char *dir = getenv("KILN_SOURCE_DIR");
    char command[1024];
    snprintf(command, sizeof command,
             "/usr/bin/python3 %s/bench/bench_layers_torch.py --threads %d%s", dir ? dir : ".",
             threads, quick ? " --quick" : "");
    FILE *pipe = popen(command, "r");
    if (!pipe) return false;
    char name[64];
    double us;
    int got = 0;
    while (fscanf(pipe, "%63s %lf", name, &us) == 2) {
        record(name, true, us);
        got++;
    }
    return pclose(pipe) == 0 && got > 0;
}

static void print_table(void)
{
    printf("\n%-14s %12s %12s %10s   (median us over rounds; ratio = PyTorch/Kiln time, >1 "
           "means Kiln faster)\n",
           "layer", "kiln_us", "torch_us", "ratio");
    for (int i = 0; i < n_rows; i++) {
        row *r = &rows[i];
        double k = r->n_kiln ? median(r->kiln, r->n_kiln) : -1;
        double t = r->n_torch ? median(r->torch, r->n_torch) : -1;
        printf("%-14s %12.1f %12.1f", r->name, k, t);
        if (k > 0 && t > 0) printf(" %10.2f", t / k);
        printf("\n");
        if (!strcmp(r->name, "step") && k > 0)
            printf("%-14s %12.0f %12.0f   samples/s (batch 64)\n", "step.samples", 64e6 / k,
                   t > 0 ? 64e6 / t : 0);
    }
    /* spread of the per-round medians, to judge how noisy the machine was */
    printf("\nspread (min..max over rounds):\n");
    for (int i = 0; i < n_rows; i++) {
        row *r = &rows[i];
        if (!r->n_kiln) continue;
        printf("  %-12s kiln %.0f..%.0f", r->name, r->kiln[0], r->kiln[r->n_kiln - 1]);
        if (r->n_torch) printf("  torch %.0f..%.0f", r->torch[0], r->torch[r->n_torch - 1]);
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    int threads = 2, rounds = 3;
    bool with_torch = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            only = argv[++i];
            with_torch = false;
        } else if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--no-torch")) {
            with_torch = false;
        } else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--rounds R] [--quick] [--no-torch] [--only NAME]\n",
                    argv[0]);
            return 2;
        }
    }
    if (rounds < 1) rounds = 1;
    if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
    kn_set_num_threads(threads);
    if (getenv("BENCH_BLAS_THREADS")) /* experiment: OpenBLAS's own count, after Kiln's */
        openblas_set_num_threads(atoi(getenv("BENCH_BLAS_THREADS")));
    kn_manual_seed(0);
    for (int r = 0; r < rounds; r++) {
        fprintf(stderr, "round %d/%d: kiln\n", r + 1, rounds);
        kiln_round();
        if (with_torch) {
            fprintf(stderr, "round %d/%d: torch\n", r + 1, rounds);
            if (!torch_round(threads)) {
                fprintf(stderr, "bench_layers: PyTorch run failed; Kiln only\n");
                with_torch = false;
            }
        }
    }
    print_table();
    return 0;
}
