/*
 * bench_layers.c — every layer of the Fashion-MNIST CNN and MLP (bench/bench_layers.rows,
 * batch 64), Kiln beside PyTorch in one run: forward alone (no grad), forward + backward
 * (weight, bias and, where the model needs it, input gradients), and each model's whole
 * training step (forward, cross_entropy, backward, Adam). Kiln and PyTorch
 * (bench/bench_layers_torch.py, run by /usr/bin/python3, reading the same rows) take
 * turns for several rounds and each figure is the median over the rounds, so load from
 * other processes hits both sides alike; the minimum over the rounds is printed too.
 *
 * Attention (issue 12): causal self-attention at nanoGPT's shape (batch 12, T 64, 4 heads
 * of 32), the op alone (gpt.sdpa) and with its projections (gpt.mha; nanoGPT's
 * CausalSelfAttention on the torch side).
 *
 * Prints a table, then one JSON line per row: {"model", "layer", "kind",
 * "kiln_fwd_us", "torch_fwd_us", "fwd_ratio", "kiln_fwdbwd_us", "torch_fwdbwd_us",
 * "fwdbwd_ratio", "kiln_fwdbwd_min_us", "torch_fwdbwd_min_us", "threads", "loadavg_*"}
 * (ratio = PyTorch's time / Kiln's: above 1, Kiln is faster; steps have no fwd).
 *
 * Usage: bench_layers [--threads N] [--rounds R] [--quick] [--no-torch] [--only NAME]
 * (--only model.layer or model: Kiln only, for profiling). Run from the repository root
 * (or set KILN_SOURCE_DIR) so the rows and the Python script are found.
 */
#include "kn.h"
#include "kn_nn.h"
#include "kn_optim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_timing.h"

enum { MAX_ROWS = 64, MAX_ROUNDS = 15 };

static int quick;
static const char *only;

static double minimum(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

/* Median microseconds per iteration (same method as bench_layers_torch.py), or -1. */
static double measure(bench_fn fn, void *context)
{
    return bench_measure(fn, context, quick ? 0.02 : 0.1, quick ? 0.01 : 0.05, quick ? 3 : 5);
}

/* ---- the rows (bench/bench_layers.rows) ------------------------------------------------ */

typedef struct row {
    char model[16], layer[24], kind[24], options[64];
    int64_t shape[4];
    int ndim;
    bool input_grad;
    /* per-round results: [0] forward, [1] forward + backward */
    double kiln[2][MAX_ROUNDS], torch[2][MAX_ROUNDS];
    int n_kiln[2], n_torch[2];
} row;

static row rows[MAX_ROWS];
static int n_rows;

static bool parse_shape(const char *text, row *r)
{
    r->ndim = 0;
    for (const char *p = text; *p && r->ndim < 4;) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v <= 0) return false;
        r->shape[r->ndim++] = v;
        p = *end == 'x' ? end + 1 : end;
        if (*end && *end != 'x') return false;
    }
    return r->ndim > 0;
}

static bool load_rows(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_layers: cannot open %s (run from the repository root)\n", path);
        return false;
    }
    char line[256];
    int number = 0;
    while (fgets(line, sizeof line, f)) {
        number++;
        if (line[0] == '#' || strspn(line, " \t\r\n") == strlen(line)) continue;
        row r = {0};
        char shape[64], grad[8];
        if (sscanf(line, "%15s %23s %23s %63s %63s %7s", r.model, r.layer, r.kind, shape, r.options,
                   grad) != 6 ||
            !parse_shape(shape, &r) || n_rows == MAX_ROWS) {
            fprintf(stderr,
                    "bench_layers: %s:%d: expected 'model layer kind NxCxHxW options "
                    "yes|no'\n",
                    path, number);
            fclose(f);
            return false;
        }
        r.input_grad = !strcmp(grad, "yes");
        rows[n_rows++] = r;
    }
    fclose(f);
    return true;
}

/* options "key=value,...": the value of key, or fallback. */
static int64_t option(const row *r, const char *key, int64_t fallback)
{
    size_t n = strlen(key);
    for (const char *p = r->options; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (!strncmp(p, key, n) && p[n] == '=') return strtoll(p + n + 1, NULL, 10);
    return fallback;
}

static const char *option_text(const row *r, const char *key, char *out, size_t size)
{
    size_t n = strlen(key);
    out[0] = '\0';
    for (const char *p = r->options; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (!strncmp(p, key, n) && p[n] == '=') {
            snprintf(out, size, "%.*s", (int)strcspn(p + n + 1, ","), p + n + 1);
            break;
        }
    return out;
}

static row *find_row(const char *model, const char *layer)
{
    for (int i = 0; i < n_rows; i++)
        if (!strcmp(rows[i].model, model) && !strcmp(rows[i].layer, layer)) return &rows[i];
    return NULL;
}

static void record(row *r, int which, bool is_torch, double us)
{
    if (!r || us < 0) return;
    if (is_torch && r->n_torch[which] < MAX_ROUNDS) r->torch[which][r->n_torch[which]++] = us;
    if (!is_torch && r->n_kiln[which] < MAX_ROUNDS) r->kiln[which][r->n_kiln[which]++] = us;
}

static bool selected(const row *r)
{
    if (!only) return true;
    char name[48];
    snprintf(name, sizeof name, "%s.%s", r->model, r->layer);
    return !strcmp(only, name) || !strcmp(only, r->model);
}

/* ---- Kiln's layers ---------------------------------------------------------------------- */

typedef struct layer {
    const row *r;
    kn_tensor *x, *w, *b, *target, *grad; /* w, b NULL without parameters */
    /* ---- attention (issue 12) ---- */
    kn_tensor *k, *v;  /* sdpa's keys and values (x is the queries) */
    kn_module *module; /* mha: a MultiheadAttention */
} layer;

static kn_tensor *uniform(const int64_t *shape, int ndim, double bound, bool grad)
{
    kn_tensor *t = kn_empty(shape, ndim, KN_FLOAT32);
    kn_uniform_(t, -bound, bound, NULL);
    return grad ? kn_set_requires_grad(t, true) : t;
}

static kn_tensor *layer_forward(const layer *l)
{
    const char *kind = l->r->kind;
    if (!strcmp(kind, "conv2d")) {
        int p = (int)option(l->r, "p", 0);
        return kn_conv2d(l->x, l->w, l->b, (kn_conv2d_args){.padding = {p, p}});
    }
    if (!strcmp(kind, "max_pool2d")) {
        int k = (int)option(l->r, "k", 2);
        return kn_max_pool2d(l->x, (kn_pool2d_args){.kernel_size = {k, k}});
    }
    if (!strcmp(kind, "relu")) return kn_relu(l->x);
    if (!strcmp(kind, "linear")) return kn_linear(l->x, l->w, l->b);
    if (!strcmp(kind, "cross_entropy"))
        return kn_cross_entropy(l->x, l->target, KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0.0);
    /* ---- attention (issue 12) ---- */
    if (!strcmp(kind, "sdpa"))
        return kn_scaled_dot_product_attention(
            l->x, l->k, l->v, &(kn_attention_args){.is_causal = option(l->r, "causal", 0)});
    if (!strcmp(kind, "mha")) return kn_module_forward(l->module, l->x);
    return NULL;
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
    if (l->r->input_grad) kn_zero_grad(l->x);
    if (l->w) kn_zero_grad(l->w);
    if (l->b) kn_zero_grad(l->b);
    if (l->k) kn_zero_grad(l->k);
    if (l->v) kn_zero_grad(l->v);
    if (l->module) kn_module_zero_grad(l->module);
    kn_scope_begin();
    kn_tensor *out = layer_forward(l);
    bool ok = out && kn_backward(out, l->grad, false) == KN_OK;
    kn_scope_end();
    return ok;
}

static kn_tensor *class_targets(int64_t n, int64_t classes)
{
    int64_t *labels = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) labels[i] = i % classes;
    kn_tensor *t = kn_from_int64s(labels, &n, 1);
    free(labels);
    return t;
}

static void bench_layer(row *r)
{
    kn_scope_begin();
    layer l = {.r = r, .x = uniform(r->shape, r->ndim, 1, r->input_grad)};
    int64_t in = r->shape[1], out = option(r, "out", 0), k = option(r, "k", 3);
    if (!strcmp(r->kind, "conv2d")) {
        int64_t ws[4] = {out, in, k, k};
        double bound = 1.0 / __builtin_sqrt((double)(in * k * k));
        l.w = uniform(ws, 4, bound, true);
        l.b = uniform(&out, 1, bound, true);
    } else if (!strcmp(r->kind, "linear")) {
        int64_t ws[2] = {out, r->shape[r->ndim - 1]};
        double bound = 1.0 / __builtin_sqrt((double)ws[1]);
        l.w = uniform(ws, 2, bound, true);
        l.b = uniform(&out, 1, bound, true);
    } else if (!strcmp(r->kind, "cross_entropy")) {
        l.target = class_targets(r->shape[0], r->shape[1]);
    } else if (!strcmp(r->kind, "sdpa")) { /* x, k, v: [B, H, T, D] */
        l.k = uniform(r->shape, r->ndim, 1, true);
        l.v = uniform(r->shape, r->ndim, 1, true);
    } else if (!strcmp(r->kind, "mha")) { /* x: [B, T, E] */
        l.module = kn_multi_head_attention_new(r->shape[2], option(r, "heads", 1), 0.0, true,
                                               option(r, "causal", 0), NULL);
        if (!l.module)
            fprintf(stderr, "bench_layers: %s.%s: %s\n", r->model, r->layer, kn_last_error());
    }
    kn_no_grad_begin();
    kn_tensor *y = layer_forward(&l);
    kn_no_grad_end();
    if (!y) {
        fprintf(stderr, "bench_layers: %s.%s: %s\n", r->model, r->layer, kn_last_error());
    } else {
        l.grad = y->ndim ? kn_rand(y->shape, y->ndim, NULL) : NULL; /* a loss: grad 1 */
        record(r, 0, false, measure(run_forward, &l));
        record(r, 1, false, measure(run_forward_backward, &l));
    }
    kn_module_free(l.module);
    kn_scope_end();
}

/* ---- Kiln's training steps --------------------------------------------------------------
 * The models as kiln train builds them: torch.nn-style modules in a Sequential (which
 * runs conv -> relu -> pool as one op where it fuses), PyTorch's default init. */

typedef struct model {
    kn_module *net;
    kn_tensor *x, *y;
    kn_optimizer *opt;
} model;

static bool train_step(void *context)
{
    model *m = context;
    kn_optimizer_zero_grad(m->opt);
    kn_scope_begin();
    kn_tensor *loss = kn_cross_entropy(kn_module_forward(m->net, m->x), m->y, KN_REDUCTION_MEAN,
                                       KN_DEFAULT_IGNORE_INDEX, 0.0);
    bool ok = loss && kn_backward(loss, NULL, false) == KN_OK;
    kn_scope_end();
    return ok && kn_optimizer_step(m->opt) == KN_OK;
}

static kn_module *build(bool cnn)
{
    kn_generator *gen = kn_generator_new(0);
    kn_module *m = kn_sequential_new();
    if (cnn) {
        const int k3[2] = {3, 3};
        kn_conv2d_args same = {.padding = {1, 1}};
        kn_pool2d_args pool = {.kernel_size = {2, 2}};
        kn_sequential_append(m, kn_conv2d_new(1, 16, k3, same, true, gen));
        kn_sequential_append(m, kn_relu_new());
        kn_sequential_append(m, kn_max_pool2d_new(pool));
        kn_sequential_append(m, kn_conv2d_new(16, 32, k3, same, true, gen));
        kn_sequential_append(m, kn_relu_new());
        kn_sequential_append(m, kn_max_pool2d_new(pool));
        kn_sequential_append(m, kn_flatten_new(1, -1));
        kn_sequential_append(m, kn_linear_new(1568, 128, true, gen));
        kn_sequential_append(m, kn_relu_new());
        kn_sequential_append(m, kn_linear_new(128, 10, true, gen));
    } else {
        kn_sequential_append(m, kn_flatten_new(1, -1));
        kn_sequential_append(m, kn_linear_new(784, 256, true, gen));
        kn_sequential_append(m, kn_relu_new());
        kn_sequential_append(m, kn_linear_new(256, 128, true, gen));
        kn_sequential_append(m, kn_relu_new());
        kn_sequential_append(m, kn_linear_new(128, 10, true, gen));
    }
    kn_generator_free(gen);
    return m;
}

static void bench_step(row *r)
{
    char which[16];
    model m = {.net = build(!strcmp(option_text(r, "model", which, sizeof which), "cnn"))};
    int count;
    kn_named_tensor *named = kn_module_parameters(m.net, &count);
    kn_tensor *params[16];
    for (int i = 0; i < count && i < 16; i++) params[i] = named[i].tensor;
    free(named);
    m.x = kn_rand(r->shape, r->ndim, NULL);
    m.y = class_targets(r->shape[0], 10);
    m.opt = kn_optimizer_new(params, count < 16 ? count : 16, kn_optimizer_defaults(KN_OPTIM_ADAM));
    if (!m.opt) {
        fprintf(stderr, "bench_layers: optimizer: %s\n", kn_last_error());
    } else {
        record(r, 1, false, measure(train_step, &m));
        kn_optimizer_free(m.opt);
    }
    kn_module_free(m.net);
    kn_release(m.x);
    kn_release(m.y);
}

static void kiln_round(void)
{
    for (int i = 0; i < n_rows; i++) {
        if (!selected(&rows[i])) continue;
        if (!strcmp(rows[i].kind, "step"))
            bench_step(&rows[i]);
        else
            bench_layer(&rows[i]);
    }
}

/* PyTorch's round: "model.layer fwd|fwdbwd microseconds" lines. */
static bool torch_round(const char *dir, int threads)
{
    char command[1024];
    snprintf(command, sizeof command,
             "/usr/bin/python3 %s/bench/bench_layers_torch.py --rows %s/bench/bench_layers.rows "
             "--threads %d%s",
             dir, dir, threads, quick ? " --quick" : "");
    FILE *pipe = popen(command, "r");
    if (!pipe) return false;
    char name[64], which[16];
    double us;
    int got = 0;
    while (fscanf(pipe, "%63s %15s %lf", name, which, &us) == 3) {
        char *dot = strchr(name, '.');
        if (!dot) continue;
        *dot = '\0';
        record(find_row(name, dot + 1), strcmp(which, "fwd") ? 1 : 0, true, us);
        got++;
    }
    return pclose(pipe) == 0 && got > 0;
}

/* ---- the report --------------------------------------------------------------------------- */

typedef struct figures {
    double k, t, kmin, tmin; /* -1: not measured */
} figures;

static figures figures_of(const row *r, int which)
{
    figures f = {-1, -1, -1, -1};
    if (r->n_kiln[which]) {
        f.k = bench_median(r->kiln[which], r->n_kiln[which]);
        f.kmin = minimum(r->kiln[which], r->n_kiln[which]);
    }
    if (r->n_torch[which]) {
        f.t = bench_median(r->torch[which], r->n_torch[which]);
        f.tmin = minimum(r->torch[which], r->n_torch[which]);
    }
    return f;
}

static void print_cell(double us)
{
    if (us < 0)
        printf(" %10s", "-");
    else
        printf(" %10.1f", us);
}

static void print_ratio(const figures *f)
{
    if (f->k > 0 && f->t > 0)
        printf(" %7.2fx", f->t / f->k);
    else
        printf(" %8s", "");
}

static void json_number(const char *key, double v)
{
    if (v < 0)
        printf(", \"%s\": null", key);
    else
        printf(", \"%s\": %.1f", key, v);
}

static void json_ratio(const char *key, const figures *f)
{
    if (f->k > 0 && f->t > 0)
        printf(", \"%s\": %.3f", key, f->t / f->k);
    else
        printf(", \"%s\": null", key);
}

static void print_report(int threads, const char *load_before, const char *load_after)
{
    printf("\nbatch 64, %d threads, median us over rounds (load %s -> %s); ratio = PyTorch's "
           "time / Kiln's (> 1: Kiln faster)\n",
           threads, load_before, load_after);
    printf("%-12s %10s %10s %8s %10s %10s %8s %10s %10s\n", "layer", "kiln fwd", "torch fwd",
           "ratio", "kiln f+b", "torch f+b", "ratio", "kiln min", "torch min");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        if (!selected(r)) continue;
        figures f = figures_of(r, 0), b = figures_of(r, 1);
        char name[48];
        snprintf(name, sizeof name, "%s.%s", r->model, r->layer);
        printf("%-12s", name);
        print_cell(f.k);
        print_cell(f.t);
        print_ratio(&f);
        print_cell(b.k);
        print_cell(b.t);
        print_ratio(&b);
        print_cell(b.kmin);
        print_cell(b.tmin);
        if (!strcmp(r->kind, "step") && b.k > 0)
            printf("   %.0f / %.0f samples/s", (double)r->shape[0] * 1e6 / b.k,
                   b.t > 0 ? (double)r->shape[0] * 1e6 / b.t : 0.0);
        printf("\n");
    }
    printf("\n");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        if (!selected(r)) continue;
        figures f = figures_of(r, 0), b = figures_of(r, 1);
        printf("{\"model\": \"%s\", \"layer\": \"%s\", \"kind\": \"%s\"", r->model, r->layer,
               r->kind);
        json_number("kiln_fwd_us", f.k);
        json_number("torch_fwd_us", f.t);
        json_ratio("fwd_ratio", &f);
        json_number("kiln_fwdbwd_us", b.k);
        json_number("torch_fwdbwd_us", b.t);
        json_ratio("fwdbwd_ratio", &b);
        json_number("kiln_fwdbwd_min_us", b.kmin);
        json_number("torch_fwdbwd_min_us", b.tmin);
        printf(", \"threads\": %d, \"loadavg_before\": \"%s\", \"loadavg_after\": \"%s\"}\n",
               threads, load_before, load_after);
    }
}

static void read_load(char *out, size_t size)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return;
    if (fgets(out, (int)size, f)) {
        char *p = out;
        for (int fields = 0; *p && fields < 3; p++) /* keep the 1, 5 and 15 minute loads */
            if (*p == ' ' && ++fields == 3) *p = '\0';
        out[strcspn(out, "\n")] = '\0';
    }
    fclose(f);
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
                    "usage: %s [--threads N] [--rounds R] [--quick] [--no-torch] "
                    "[--only model.layer|model]\n",
                    argv[0]);
            return 2;
        }
    }
    if (rounds < 1) rounds = 1;
    if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
    const char *dir = getenv("KILN_SOURCE_DIR") ? getenv("KILN_SOURCE_DIR") : ".";
    char path[1024];
    snprintf(path, sizeof path, "%s/bench/bench_layers.rows", dir);
    if (!load_rows(path)) return 1;
    kn_set_num_threads(threads);
    kn_manual_seed(0);
    char load_before[64], load_after[64];
    read_load(load_before, sizeof load_before);
    for (int r = 0; r < rounds; r++) {
        fprintf(stderr, "round %d/%d: kiln\n", r + 1, rounds);
        kiln_round();
        if (with_torch) {
            fprintf(stderr, "round %d/%d: torch\n", r + 1, rounds);
            if (!torch_round(dir, threads)) {
                fprintf(stderr, "bench_layers: PyTorch run failed; Kiln only\n");
                with_torch = false;
            }
        }
    }
    read_load(load_after, sizeof load_after);
    print_report(threads, load_before, load_after);
    return 0;
}
