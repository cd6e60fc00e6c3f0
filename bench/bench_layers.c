/*
 * bench_layers.c — every layer of the Fashion-MNIST CNN, MLP and ResNet (batch 64) and of
 * the character GPT (batch 12 x 64 tokens, n_embd 128, 4 heads, 4 layers), at the shapes
 * those models run (bench/bench_layers.rows), Kiln beside PyTorch in one run: forward
 * alone (no grad), forward + backward (weight, bias and, where the model needs it, input
 * gradients), and each Fashion-MNIST model's whole training step (forward, cross_entropy,
 * backward, Adam; the model built from examples/fmnist-<model>.json as kiln train builds
 * it). Kiln and PyTorch (bench/bench_layers_torch.py, run by /usr/bin/python3, reading
 * the same rows) take turns for several rounds and each figure is the median over the
 * rounds, so load from other processes hits both sides alike; the minimum over the
 * rounds is printed too.
 *
 * Attention (issue 12): causal self-attention at nanoGPT's shape (batch 12, T 64, 4 heads
 * of 32), the op alone (gpt.sdpa) and with its projections (gpt.mha; nanoGPT's
 * CausalSelfAttention on the torch side); the GPT's own layers (gpt.attn, gpt.block) are
 * torch's nn.MultiheadAttention and nn.TransformerEncoderLayer, as bench/gpt/torch_gpt.py
 * builds them.
 *
 * Prints a table, then one JSON line per row: {"model", "layer", "kind",
 * "kiln_fwd_us", "torch_fwd_us", "fwd_ratio", "kiln_fwdbwd_us", "torch_fwdbwd_us",
 * "fwdbwd_ratio", "kiln_fwdbwd_min_us", "torch_fwdbwd_min_us", "fwdbwd_min_ratio",
 * "threads", "loadavg_*"}
 * (ratio = PyTorch's time / Kiln's: above 1, Kiln is faster; steps have no fwd).
 *
 * Usage: bench_layers [--threads N] [--rounds R] [--quick] [--no-torch] [--only NAME]
 * (--only model.layer or model: that row or that model's rows, Kiln beside PyTorch;
 * add --no-torch for Kiln alone, as for perf record). Run from the repository root
 * (or set KILN_SOURCE_DIR) so the rows and the Python script are found.
 */
#include "kapi.h"
#include "kn.h"
#include "kn_nn.h"
#include "kn_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_timing.h"

enum { MAX_ROWS = 64, MAX_ROUNDS = 15 };

static int quick;
static const char *only;
static const char *source_dir = "."; /* the repository root: rows, examples, scripts */

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
    char model[16], layer[24], kind[32], options[64];
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

static bool known_kind(const char *name); /* the kinds table below, or "step" */

/* "64x16x14x14", in a static buffer. */
static const char *shape_text(const row *r)
{
    static char text[64];
    int n = 0;
    for (int d = 0; d < r->ndim && n < (int)sizeof text; d++)
        n += snprintf(text + n, sizeof text - (size_t)n, d ? "x%lld" : "%lld",
                      (long long)r->shape[d]);
    return text;
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
        if (sscanf(line, "%15s %23s %31s %63s %63s %7s", r.model, r.layer, r.kind, shape, r.options,
                   grad) != 6 ||
            !parse_shape(shape, &r) || n_rows == MAX_ROWS) {
            fprintf(stderr,
                    "bench_layers: %s:%d: expected 'model layer kind NxCxHxW options "
                    "yes|no'\n",
                    path, number);
            fclose(f);
            return false;
        }
        if (!known_kind(r.kind)) {
            fprintf(stderr, "bench_layers: %s:%d: unknown kind '%s'\n", path, number, r.kind);
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
    snprintf(name, sizeof name, "%.15s.%.23s", r->model, r->layer);
    return !strcmp(only, name) || !strcmp(only, r->model);
}

/* ---- Kiln's layers ----------------------------------------------------------------------
 * One entry per kind (the rows' third column): setup makes what the layer needs besides
 * its input (parameters, more inputs, a module; the input itself when it is not a float
 * tensor of the row's shape), forward runs it as the model runs it in training. The
 * layers torch runs as a module (normalisations, embedding, attention) run as Kiln's
 * module, in training mode, so both sides pay the same module overhead. */

typedef struct layer {
    const row *r;
    kn_tensor *x;        /* the input: float32, or int64 token ids (embedding) */
    kn_tensor *w, *b;    /* conv2d and linear: weight and bias (NULL without one) */
    kn_tensor *extra[2]; /* more inputs with gradients: add's other term, sdpa's k and v */
    kn_tensor *target;   /* cross_entropy: the classes */
    kn_module *module;   /* a layer that runs as a module, else NULL */
    kn_tensor *grad;     /* the output's gradient (NULL for a loss: gradient 1) */
} layer;

static kn_tensor *uniform(const int64_t *shape, int ndim, double bound, bool grad)
{
    kn_tensor *t = kn_empty(shape, ndim, KN_FLOAT32);
    kn_uniform_(t, -bound, bound, NULL);
    return grad ? kn_set_requires_grad(t, true) : t;
}

/* int64 values i % classes for i = 0.. over shape (class targets, token ids). */
static kn_tensor *cyclic_indices(const int64_t *shape, int ndim, int64_t classes)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    int64_t *values = malloc(sizeof(int64_t) * (size_t)n);
    if (!values) return NULL;
    for (int64_t i = 0; i < n; i++) values[i] = i % classes;
    kn_tensor *t = kn_from_int64s(values, shape, ndim);
    free(values);
    return t;
}

static int64_t last_dim(const row *r)
{
    return r->shape[r->ndim - 1];
}

/* conv2d, linear: weight and (unless bias=0) bias, PyTorch's default init bounds. */
static bool setup_conv2d(layer *l)
{
    int64_t in = l->r->shape[1], out = option(l->r, "out", 0), k = option(l->r, "k", 3);
    int64_t shape[4] = {out, in, k, k};
    double bound = 1.0 / sqrt((double)(in * k * k));
    l->w = uniform(shape, 4, bound, true);
    if (option(l->r, "bias", 1)) l->b = uniform(&out, 1, bound, true);
    return true;
}

static bool setup_linear(layer *l)
{
    int64_t out = option(l->r, "out", 0), shape[2] = {out, last_dim(l->r)};
    double bound = 1.0 / sqrt((double)shape[1]);
    l->w = uniform(shape, 2, bound, true);
    if (option(l->r, "bias", 1)) l->b = uniform(&out, 1, bound, true);
    return true;
}

static bool setup_add(layer *l) /* the residual: both terms get gradients */
{
    l->extra[0] = uniform(l->r->shape, l->r->ndim, 1, l->r->input_grad);
    return true;
}

static bool setup_cross_entropy(layer *l) /* logits [..., classes]: one class per row */
{
    int64_t rows = 1;
    for (int d = 0; d < l->r->ndim - 1; d++) rows *= l->r->shape[d];
    l->target = cyclic_indices(&rows, 1, last_dim(l->r));
    return l->target != NULL;
}

static bool setup_sdpa(layer *l) /* x is the queries [B, H, T, D]; keys, values alike */
{
    l->extra[0] = uniform(l->r->shape, l->r->ndim, 1, true);
    l->extra[1] = uniform(l->r->shape, l->r->ndim, 1, true);
    return true;
}

static bool setup_attention(layer *l) /* x [B, T, E] */
{
    l->module = kn_multi_head_attention_new(last_dim(l->r), option(l->r, "heads", 1), 0.0, true,
                                            option(l->r, "causal", 0), NULL);
    return l->module != NULL;
}

static bool setup_transformer(layer *l) /* x [B, T, E]; GELU and norm_first unless 0 */
{
    kn_layer_options o;
    kn_layer_defaults(KN_MODULE_TRANSFORMER_ENCODER_LAYER, &o);
    o.transformer_encoder_layer.d_model = last_dim(l->r);
    o.transformer_encoder_layer.nhead = option(l->r, "heads", 1);
    o.transformer_encoder_layer.dim_feedforward = option(l->r, "ff", 2048);
    o.transformer_encoder_layer.dropout = 0.0;
    o.transformer_encoder_layer.activation =
        option(l->r, "gelu", 1) ? KN_TRANSFORMER_GELU : KN_TRANSFORMER_RELU;
    o.transformer_encoder_layer.norm_first = option(l->r, "norm_first", 1);
    o.transformer_encoder_layer.batch_first = true;
    o.transformer_encoder_layer.is_causal = option(l->r, "causal", 0);
    l->module = kn_module_new(KN_MODULE_TRANSFORMER_ENCODER_LAYER, &o, NULL);
    return l->module != NULL;
}

static bool setup_batch_norm2d(layer *l) /* nn.BatchNorm2d(C): eps 1e-5, momentum 0.1 */
{
    l->module = kn_batch_norm2d_new(l->r->shape[1], 1e-5, 0.1, true, true);
    return l->module != NULL;
}

static bool setup_layer_norm(layer *l) /* nn.LayerNorm(last dim) */
{
    int64_t normalized = last_dim(l->r);
    l->module = kn_layer_norm_new(&normalized, 1, 1e-5, true);
    return l->module != NULL;
}

static bool setup_embedding(layer *l) /* the row's shape is the token ids' */
{
    l->module = kn_embedding_new(option(l->r, "vocab", 0), option(l->r, "dim", 0), NULL);
    l->x = cyclic_indices(l->r->shape, l->r->ndim, option(l->r, "vocab", 1));
    return l->module && l->x;
}

/* nanoGPT's x + wpe(arange(T)): positions= the table's rows (the model's window), the
 * input [B, T, E] the token embeddings (their gradient flows on to wte) */
static bool setup_positional_embedding(layer *l)
{
    l->module = kn_positional_embedding_new(option(l->r, "positions", l->r->shape[1]),
                                            last_dim(l->r), NULL);
    return l->module != NULL;
}

static kn_tensor *forward_conv2d(const layer *l)
{
    int p = (int)option(l->r, "p", 0);
    return kn_conv2d(l->x, l->w, l->b, (kn_conv2d_args){.padding = {p, p}});
}

static kn_tensor *forward_max_pool2d(const layer *l)
{
    int k = (int)option(l->r, "k", 2);
    return kn_max_pool2d(l->x, (kn_pool2d_args){.kernel_size = {k, k}});
}

static kn_tensor *forward_adaptive_avg_pool2d(const layer *l)
{
    int out = (int)option(l->r, "out", 1);
    return kn_adaptive_avg_pool2d(l->x, out, out);
}

static kn_tensor *forward_relu(const layer *l)
{
    return kn_relu(l->x);
}

static kn_tensor *forward_gelu(const layer *l)
{
    return kn_gelu(l->x, KN_GELU_EXACT);
}

static kn_tensor *forward_add(const layer *l)
{
    return kn_add(l->x, l->extra[0]);
}

static kn_tensor *forward_linear(const layer *l)
{
    return kn_linear(l->x, l->w, l->b);
}

/* Logits [N, C], or [N, T, C] viewed as [N*T, C] as the GPT computes its loss. */
static kn_tensor *forward_cross_entropy(const layer *l)
{
    int64_t flat[2] = {-1, last_dim(l->r)};
    kn_tensor *logits = l->r->ndim > 2 ? kn_reshape(l->x, flat, 2) : l->x;
    return kn_cross_entropy(logits, l->target, KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0.0);
}

static kn_tensor *forward_sdpa(const layer *l)
{
    return kn_scaled_dot_product_attention(
        l->x, l->extra[0], l->extra[1],
        &(kn_attention_args){.is_causal = option(l->r, "causal", 0)});
}

static kn_tensor *forward_module(const layer *l)
{
    return kn_module_forward(l->module, l->x);
}

typedef struct layer_kind {
    const char *name;
    bool (*setup)(layer *l); /* NULL: nothing besides the input */
    kn_tensor *(*forward)(const layer *l);
} layer_kind;

static const layer_kind kinds[] = {
    {"conv2d", setup_conv2d, forward_conv2d},
    {"max_pool2d", NULL, forward_max_pool2d},
    {"adaptive_avg_pool2d", NULL, forward_adaptive_avg_pool2d},
    {"batch_norm2d", setup_batch_norm2d, forward_module},
    {"relu", NULL, forward_relu},
    {"gelu", NULL, forward_gelu},
    {"add", setup_add, forward_add},
    {"linear", setup_linear, forward_linear},
    {"cross_entropy", setup_cross_entropy, forward_cross_entropy},
    {"embedding", setup_embedding, forward_module},
    {"positional_embedding", setup_positional_embedding, forward_module},
    {"layer_norm", setup_layer_norm, forward_module},
    {"sdpa", setup_sdpa, forward_sdpa},
    {"mha", setup_attention, forward_module},
    {"multi_head_attention", setup_attention, forward_module},
    {"transformer_encoder_layer", setup_transformer, forward_module},
};

static const layer_kind *kind_of(const char *name)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (!strcmp(kinds[i].name, name)) return &kinds[i];
    return NULL;
}

static bool known_kind(const char *name)
{
    return kind_of(name) || !strcmp(name, "step");
}

static bool run_forward(void *context)
{
    const layer *l = context;
    kn_scope_begin();
    kn_no_grad_begin();
    bool ok = kind_of(l->r->kind)->forward(l) != NULL;
    kn_no_grad_end();
    kn_scope_end();
    return ok;
}

static bool run_forward_backward(void *context)
{
    const layer *l = context;
    if (l->r->input_grad) kn_zero_grad(l->x);
    kn_tensor *params[] = {l->w, l->b, l->extra[0], l->extra[1]};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        if (params[i]) kn_zero_grad(params[i]);
    if (l->module) kn_module_zero_grad(l->module);
    kn_scope_begin();
    kn_tensor *out = kind_of(l->r->kind)->forward(l);
    bool ok = out && kn_backward(out, l->grad, false) == KN_OK;
    kn_scope_end();
    return ok;
}

static void bench_layer(row *r)
{
    const layer_kind *kind = kind_of(r->kind);
    kn_scope_begin();
    layer l = {.r = r};
    bool ok = !kind->setup || kind->setup(&l);
    if (ok && !l.x) l.x = uniform(r->shape, r->ndim, 1, r->input_grad);
    kn_tensor *y = NULL;
    if (ok) {
        kn_no_grad_begin();
        y = kind->forward(&l);
        kn_no_grad_end();
    }
    if (!y) {
        fprintf(stderr, "bench_layers: %s.%s: %s\n", r->model, r->layer, kn_last_error());
    } else {
        l.grad = y->ndim ? kn_rand(y->shape, y->ndim, NULL) : NULL;
        record(r, 0, false, measure(run_forward, &l));
        record(r, 1, false, measure(run_forward_backward, &l));
    }
    kn_module_free(l.module);
    kn_scope_end();
}

/* ---- Kiln's training steps --------------------------------------------------------------
 * The example models (examples/fmnist-<model>.json) built as kiln train builds them
 * (kapi_model_build after kn_manual_seed(0): a Sequential, which runs conv -> relu ->
 * pool as one op where it fuses, or a graph), then forward, cross_entropy, backward and
 * Adam, as the trainer steps. */

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
    kn_tensor *out = kn_module_forward(m->net, m->x);
    /* a language model's logits [B, T, V] are B*T rows of V classes, as the GPT trains */
    if (out && out->ndim > 2) out = kn_reshape(out, KN_SHAPE(-1, out->shape[out->ndim - 1]));
    kn_tensor *loss = kn_cross_entropy(out, m->y, KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0.0);
    bool ok = loss && kn_backward(loss, NULL, false) == KN_OK;
    kn_scope_end();
    return ok && kn_optimizer_step(m->opt) == KN_OK;
}

/* The model of examples/fmnist-<name>.json (examples/chargpt.json for "gpt"), or NULL (the
 * error printed). */
static kn_module *example_model(const char *name)
{
    char path[1024];
    if (!strcmp(name, "gpt"))
        snprintf(path, sizeof path, "%s/examples/chargpt.json", source_dir);
    else
        snprintf(path, sizeof path, "%s/examples/fmnist-%s.json", source_dir, name);
    kapi_errors errors = {0};
    size_t size = 0;
    char *text = kapi_read_file(path, &size, &errors);
    kapi_job_spec *job =
        text ? kapi_job_spec_parse(text, size, (kapi_job_parse_options){.allow_paths = true},
                                   &errors)
             : NULL;
    free(text);
    kn_module *net = NULL;
    if (job && job->model) {
        kn_manual_seed(0);
        net = kapi_model_build(job->model, NULL);
        if (!net) fprintf(stderr, "bench_layers: %s: %s\n", path, kn_last_error());
    } else {
        char *message = kapi_errors_to_text(&errors);
        fprintf(stderr, "bench_layers: %s: %s\n", path, message ? message : "no inline model");
        free(message);
    }
    kapi_job_spec_free(job);
    kapi_errors_free(&errors);
    return net;
}

static void bench_step(row *r)
{
    char which[16];
    model m = {.net = example_model(option_text(r, "model", which, sizeof which))};
    if (!m.net) return;
    int count;
    kn_named_tensor *named = kn_module_parameters(m.net, &count);
    kn_tensor **params = malloc(sizeof(kn_tensor *) * (size_t)(count > 0 ? count : 1));
    for (int i = 0; params && i < count; i++) params[i] = named[i].tensor;
    free(named);
    /* tokens=V: the input is int64 token ids below V (the GPT), else uniform floats;
     * the targets are one class per row of the output's last dim */
    int64_t tokens = option(r, "tokens", 0);
    m.x = tokens > 0 ? cyclic_indices(r->shape, r->ndim, tokens) : kn_rand(r->shape, r->ndim, NULL);
    int64_t classes = 0, rows = 0;
    kn_no_grad_begin();
    kn_scope_begin();
    kn_tensor *probe = m.x ? kn_module_forward(m.net, m.x) : NULL;
    if (probe) {
        classes = probe->shape[probe->ndim - 1];
        rows = kn_numel(probe) / classes;
    }
    kn_scope_end();
    kn_no_grad_end();
    if (classes > 0) m.y = cyclic_indices(&rows, 1, classes); /* outside the scope: kept */
    m.opt = params ? kn_optimizer_new(params, count, kn_optimizer_defaults(KN_OPTIM_ADAM)) : NULL;
    free(params);
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
static bool torch_round(int threads)
{
    char command[1024];
    /* only was matched against the rows already, so it is one of their names: no quoting */
    snprintf(command, sizeof command,
             "/usr/bin/python3 %s/bench/bench_layers_torch.py --rows %s/bench/bench_layers.rows "
             "--threads %d%s%s%s",
             source_dir, source_dir, threads, quick ? " --quick" : "", only ? " --only " : "",
             only ? only : "");
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

/* PyTorch's time / Kiln's, or -1 when either is missing. */
static double ratio(double kiln, double torch)
{
    return kiln > 0 && torch > 0 ? torch / kiln : -1;
}

static void print_ratio(double r)
{
    if (r > 0)
        printf(" %7.2fx", r);
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

static void json_ratio(const char *key, double r)
{
    if (r > 0)
        printf(", \"%s\": %.3f", key, r);
    else
        printf(", \"%s\": null", key);
}

static void print_report(int threads, const char *load_before, const char *load_after)
{
    printf("\nshapes of bench/bench_layers.rows, %d threads, median us over rounds and the "
           "minimum (load %s -> %s); ratio = PyTorch's time / Kiln's (> 1: Kiln faster); '<' "
           "marks forward + backward below 1.0x (issue 14's target) by the medians, '<<' by "
           "the minima too\n",
           threads, load_before, load_after);
    int below = 0, below_min = 0;
    printf("%-20s %10s %10s %8s %10s %10s %8s %10s %10s %8s\n", "layer", "kiln fwd", "torch fwd",
           "ratio", "kiln f+b", "torch f+b", "ratio", "kiln min", "torch min", "ratio");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        if (!selected(r)) continue;
        figures f = figures_of(r, 0), b = figures_of(r, 1);
        double median_ratio = ratio(b.k, b.t), min_ratio = ratio(b.kmin, b.tmin);
        char name[48];
        snprintf(name, sizeof name, "%s.%s", r->model, r->layer);
        printf("%-20s", name);
        print_cell(f.k);
        print_cell(f.t);
        print_ratio(ratio(f.k, f.t));
        print_cell(b.k);
        print_cell(b.t);
        print_ratio(median_ratio);
        print_cell(b.kmin);
        print_cell(b.tmin);
        print_ratio(min_ratio);
        bool slow = median_ratio > 0 && median_ratio < 1, slow_min = slow && min_ratio < 1;
        below += slow;
        below_min += slow_min;
        printf(" %-2s", slow_min ? "<<" : slow ? "<" : "");
        if (!strcmp(r->kind, "step") && b.k > 0)
            printf("  %.0f / %.0f samples/s", (double)r->shape[0] * 1e6 / b.k,
                   b.t > 0 ? (double)r->shape[0] * 1e6 / b.t : 0.0);
        printf("\n");
    }
    printf("%d row(s) below 1.0x forward + backward by the medians, %d of them by the minima "
           "too\n\n",
           below, below_min);
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        if (!selected(r)) continue;
        figures f = figures_of(r, 0), b = figures_of(r, 1);
        printf("{\"model\": \"%s\", \"layer\": \"%s\", \"kind\": \"%s\"", r->model, r->layer,
               r->kind);
        json_number("kiln_fwd_us", f.k);
        json_number("torch_fwd_us", f.t);
        json_ratio("fwd_ratio", ratio(f.k, f.t));
        json_number("kiln_fwdbwd_us", b.k);
        json_number("torch_fwdbwd_us", b.t);
        json_ratio("fwdbwd_ratio", ratio(b.k, b.t));
        json_number("kiln_fwdbwd_min_us", b.kmin);
        json_number("torch_fwdbwd_min_us", b.tmin);
        json_ratio("fwdbwd_min_ratio", ratio(b.kmin, b.tmin));
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
    bool with_torch = true, list = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            only = argv[++i];
        } else if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--no-torch")) {
            with_torch = false;
        } else if (!strcmp(argv[i], "--list")) {
            list = true;
        } else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--rounds R] [--quick] [--no-torch] "
                    "[--only model.layer|model] [--list]\n"
                    "--only: that row or that model's rows, Kiln beside PyTorch (add "
                    "--no-torch for Kiln alone)\n"
                    "models: cnn, mlp, resnet (Fashion-MNIST, batch 64), gpt (the character "
                    "GPT, 12 x 64 tokens); --list prints every row (bench/bench_layers.rows)\n",
                    argv[0]);
            return 2;
        }
    }
    if (rounds < 1) rounds = 1;
    if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
    if (getenv("KILN_SOURCE_DIR")) source_dir = getenv("KILN_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/bench/bench_layers.rows", source_dir);
    if (!load_rows(path)) return 1;
    int matching = 0;
    for (int i = 0; i < n_rows; i++) {
        if (!selected(&rows[i])) continue;
        matching++;
        if (list)
            printf("%s.%s %s %s %s\n", rows[i].model, rows[i].layer, rows[i].kind,
                   shape_text(&rows[i]), rows[i].options);
    }
    if (list) return 0;
    if (!matching) {
        fprintf(stderr, "bench_layers: --only %s: no such model or row (--list shows them)\n",
                only);
        return 2;
    }
    kn_set_num_threads(threads);
    kn_manual_seed(0);
    char load_before[64], load_after[64];
    read_load(load_before, sizeof load_before);
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
    read_load(load_after, sizeof load_after);
    print_report(threads, load_before, load_after);
    return 0;
}
