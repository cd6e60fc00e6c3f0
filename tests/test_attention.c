/*
 * test_attention.c — the attention family beyond its golden fixtures
 * (test_golden_attention.c): finite differences for scaled_dot_product_attention (causal,
 * padded, cross lengths, dropout with a fixed seed), the packed op and both layers; the
 * dropout's statistics; rows that see no key; the backward giving the same bits whatever
 * the split between (batch, head) tasks and key/query-block tasks; memory that grows with
 * the length, not its square; every error with its message; the layers' reprs, names
 * and counts against torch's; the layers through a model spec; and, with Debian's torch,
 * a Kiln module's weights loaded strictly into torch's module (and back) giving the same
 * output.
 */
#include "kapi.h"
#include "kn_layer.h"
#include "kn_nn.h"
#include "kn_safetensors.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())
#define ASSERT_ERROR(expr, text)                                                                   \
    do {                                                                                           \
        cr_assert_null((expr), "expected an error mentioning: %s", (text));                        \
        cr_assert(strstr(kn_last_error(), (text)), "got \"%s\", expected it to mention \"%s\"",    \
                  kn_last_error(), (text));                                                        \
    } while (0)

static kn_tensor *leaf(const int64_t *shape, int ndim, uint64_t seed)
{
    return kn_set_requires_grad(kn_test_uniform(shape, ndim, -1, 1, seed), true);
}

static bool same_bits(const kn_tensor *a, const kn_tensor *b)
{
    if (!a || !b || kn_numel(a) != kn_numel(b)) return false;
    int64_t n = kn_numel(a);
    float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
    kn_copy_to_floats(a, x);
    kn_copy_to_floats(b, y);
    bool same = memcmp(x, y, sizeof(float) * (size_t)n) == 0;
    free(x);
    free(y);
    return same;
}

/* ---- finite differences --------------------------------------------------------------- */

typedef struct sdpa_setup {
    kn_attention_args args;
    uint64_t dropout_seed; /* reseeds the generator before every call: the same mask */
} sdpa_setup;

static kn_tensor *sdpa_fn(kn_tensor **in, void *context)
{
    sdpa_setup *s = context;
    if (s->args.generator) kn_generator_seed(s->args.generator, s->dropout_seed);
    return kn_scaled_dot_product_attention(in[0], in[1], in[2], &s->args);
}

Test(attention, sdpa_passes_finite_differences)
{
    kn_scope_begin();
    kn_tensor *pad = kn_from_int64s((int64_t[]){0, 0, 1, 0, 0, 0, 0, 0, 0, 1}, KN_SHAPE(2, 5));
    kn_generator *gen = kn_generator_new(7);
    sdpa_setup setups[] = {
        {.args = {0}},
        {.args = {.is_causal = true, .key_padding_mask = pad}},
        {.args = {.is_causal = true, .causal_offset = 1, .scale = 0.7}},
        {.args = {.dropout_p = 0.3, .generator = gen}, .dropout_seed = 11},
        {.args = {.is_causal = true, .dropout_p = 0.5, .generator = gen, .key_padding_mask = pad},
         .dropout_seed = 12},
    };
    for (size_t i = 0; i < sizeof setups / sizeof setups[0]; i++) {
        kn_tensor *in[3] = {leaf(KN_SHAPE(2, 2, 4, 3), 10 + i), leaf(KN_SHAPE(2, 2, 5, 3), 20 + i),
                            leaf(KN_SHAPE(2, 2, 5, 2), 30 + i)};
        KN_ASSERT_GRADCHECK(sdpa_fn, in, 3, &setups[i]);
    }
    kn_generator_free(gen);
    kn_scope_end();
}

static kn_tensor *qkv_fn(kn_tensor **in, void *context)
{
    return kn_attention_qkv(in[0], 2, context);
}

Test(attention, attention_qkv_passes_finite_differences)
{
    kn_scope_begin();
    kn_tensor *pad = kn_from_int64s((int64_t[]){0, 0, 0, 0, 1, 0, 1, 0, 0, 0}, KN_SHAPE(2, 5));
    kn_attention_args args = {.is_causal = true, .key_padding_mask = pad};
    kn_tensor *qkv = leaf(KN_SHAPE(2, 5, 12), 3);
    KN_ASSERT_GRADCHECK(qkv_fn, &qkv, 1, &args);
    kn_scope_end();
}

/* kn_attention_qkv is the same kernel on strided heads: the same bits as the separate
 * op on the heads permuted out of qkv, forward and backward. */
Test(attention, attention_qkv_equals_the_separate_op)
{
    kn_scope_begin();
    kn_tensor *qkv = leaf(KN_SHAPE(3, 70, 24), 4);
    kn_attention_args args = {.is_causal = true};
    kn_tensor *packed = kn_attention_qkv(qkv, 2, &args);
    ASSERT_OK(kn_backward(kn_sum_all(kn_mul(packed, packed)), NULL, false));
    kn_tensor *grad_packed = kn_clone(kn_grad(qkv));
    kn_zero_grad(qkv);
    kn_tensor *split = kn_permute(kn_view(qkv, KN_SHAPE(3, 70, 3, 2, 4)), KN_DIMS(2, 0, 3, 1, 4));
    kn_tensor *heads = kn_scaled_dot_product_attention(
        kn_select(split, 0, 0), kn_select(split, 0, 1), kn_select(split, 0, 2), &args);
    kn_tensor *out = kn_reshape(kn_transpose(heads, 1, 2), KN_SHAPE(3, 70, 8));
    cr_assert(same_bits(out, packed));
    ASSERT_OK(kn_backward(kn_sum_all(kn_mul(out, out)), NULL, false));
    cr_assert(same_bits(kn_grad(qkv), grad_packed));
    kn_scope_end();
}

/* ---- what the kernel promises --------------------------------------------------------- */

/* Whole (batch, head) tasks with one thread, key-block then query-block tasks with many:
 * every gradient sums its blocks in one order either way. */
Test(attention, backward_same_bits_for_any_split)
{
    kn_scope_begin();
    int threads = kn_get_num_threads();
    kn_tensor *q = leaf(KN_SHAPE(2, 3, 130, 20), 1), *k = leaf(KN_SHAPE(2, 3, 150, 20), 2);
    kn_tensor *v = leaf(KN_SHAPE(2, 3, 150, 17), 3),
              *g = kn_test_uniform(KN_SHAPE(2, 3, 130, 17), -1, 1, 4);
    kn_tensor *pad = kn_zeros(KN_SHAPE(2, 150), KN_INT64);
    kn_data_i64(pad)[149] = kn_data_i64(pad)[70] = 1;
    kn_attention_args args = {.is_causal = true, .causal_offset = 20, .key_padding_mask = pad};
    kn_tensor *grads[2][3], *outs[2];
    const int counts[2] = {1, 16}; /* 6 pairs: >= 4 per thread with 1, not with 16 */
    for (int run = 0; run < 2; run++) {
        kn_set_num_threads(counts[run]);
        kn_tensor *in[3] = {q, k, v};
        for (int i = 0; i < 3; i++) kn_zero_grad(in[i]);
        outs[run] = kn_scaled_dot_product_attention(q, k, v, &args);
        ASSERT_OK(kn_backward(outs[run], g, false));
        for (int i = 0; i < 3; i++) grads[run][i] = kn_clone(kn_grad(in[i]));
    }
    kn_set_num_threads(threads);
    cr_assert(same_bits(outs[0], outs[1]), "the forward differs");
    for (int i = 0; i < 3; i++) cr_assert(same_bits(grads[0][i], grads[1][i]), "grad %d", i);
    kn_scope_end();
}

/* A query whose keys are all padding, or that precedes every key it may see, gets zeros
 * and passes no gradient (torch 1.13: NaN). */
Test(attention, rows_that_see_no_key_are_zero)
{
    kn_scope_begin();
    kn_tensor *q = leaf(KN_SHAPE(2, 1, 3, 4), 1), *k = leaf(KN_SHAPE(2, 1, 3, 4), 2);
    kn_tensor *v = leaf(KN_SHAPE(2, 1, 3, 4), 3);
    kn_tensor *pad = kn_from_int64s((int64_t[]){1, 1, 1, 0, 0, 0}, KN_SHAPE(2, 3));
    kn_tensor *out = kn_scaled_dot_product_attention(
        q, k, v,
        &(kn_attention_args){.key_padding_mask = pad, .is_causal = true, .causal_offset = -1});
    ASSERT_OK(kn_backward(kn_sum_all(out), NULL, false));
    float o[24], gq[24];
    kn_copy_to_floats(out, o);
    kn_copy_to_floats(kn_grad(q), gq);
    for (int i = 0; i < 24; i++) {
        bool blind = i < 16; /* batch 0 (0..11): all padded; batch 1, row 0: offset -1 */
        cr_assert(isfinite(o[i]) && isfinite(gq[i]), "element %d", i);
        if (blind) cr_assert(o[i] == 0.f && gq[i] == 0.f, "element %d: %g, %g", i, o[i], gq[i]);
    }
    cr_assert_neq(o[16], 0.f);
    kn_scope_end();
}

Test(attention, dropout_keeps_one_minus_p_and_scales)
{
    kn_scope_begin();
    /* q = k = 0: every weight is 1/S; v = 1: a row's output is kept/S / (1 - p) */
    const int64_t s = 64, rows = 256;
    kn_tensor *q = kn_zeros(KN_SHAPE(1, 4, rows, 8), KN_FLOAT32);
    kn_tensor *k = kn_zeros(KN_SHAPE(1, 4, s, 8), KN_FLOAT32);
    kn_tensor *v = kn_ones(KN_SHAPE(1, 4, s, 1), KN_FLOAT32);
    kn_generator *gen = kn_generator_new(3);
    kn_attention_args args = {.dropout_p = 0.25, .generator = gen};
    kn_tensor *out = kn_scaled_dot_product_attention(q, k, v, &args);
    double mean = kn_item(kn_mean_all(out));
    /* 65536 Bernoulli(0.75) draws: the mean is 1 within a few 1e-3 */
    cr_assert(fabs(mean - 1.0) < 0.01, "mean %g", mean);
    cr_assert_gt(kn_item(kn_max_all(out)), 1.1f); /* rows differ */
    /* the next call draws another seed; the same seed gives the same mask */
    kn_tensor *again = kn_scaled_dot_product_attention(q, k, v, &args);
    cr_assert(!same_bits(out, again));
    kn_generator_seed(gen, 3);
    cr_assert(same_bits(out, kn_scaled_dot_product_attention(q, k, v, &args)));
    /* p = 1 drops everything; p = 0 draws nothing */
    args.dropout_p = 1.0;
    cr_assert_eq(kn_item(kn_max_all(kn_abs(kn_scaled_dot_product_attention(q, k, v, &args)))), 0.f);
    kn_generator_free(gen);
    kn_scope_end();
}

static long max_rss_kb(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss;
}

/* T = 4096: the weights would be 64 MiB per (batch, head); the forward and backward
 * never hold more than a block of rows, so the peak grows by a few MiB. */
Test(attention, memory_grows_with_the_length_not_its_square)
{
    kn_scope_begin();
    const int64_t t = 4096;
    kn_tensor *q = leaf(KN_SHAPE(1, 1, t, 16), 1), *k = leaf(KN_SHAPE(1, 1, t, 16), 2);
    kn_tensor *v = leaf(KN_SHAPE(1, 1, t, 16), 3);
    long before = max_rss_kb();
    kn_tensor *out = kn_scaled_dot_product_attention(q, k, v, &(kn_attention_args){.is_causal = 1});
    ASSERT_OK(kn_backward(kn_sum_all(out), NULL, false));
    long grown_kb = max_rss_kb() - before;
    cr_assert_lt(grown_kb, 16 * 1024, "the peak grew by %ld KiB (the weights: %lld KiB)", grown_kb,
                 (long long)(t * t * 4 / 1024));
    kn_scope_end();
}

/* ---- errors ----------------------------------------------------------------------------- */

Test(attention, bad_inputs_are_refused_with_a_message)
{
    kn_scope_begin();
    kn_tensor *q = kn_zeros(KN_SHAPE(2, 3, 4, 5), KN_FLOAT32);
    kn_tensor *k = kn_zeros(KN_SHAPE(2, 3, 6, 5), KN_FLOAT32);
    kn_tensor *v = kn_zeros(KN_SHAPE(2, 3, 6, 7), KN_FLOAT32);
    ASSERT_ERROR(
        kn_scaled_dot_product_attention(q, kn_zeros(KN_SHAPE(2, 3, 6, 4), KN_FLOAT32), v, NULL),
        "scaled_dot_product_attention: q [2, 3, 4, 5], k [2, 3, 6, 4], v [2, 3, 6, 7] "
        "do not fit");
    ASSERT_ERROR(
        kn_scaled_dot_product_attention(q, k, kn_zeros(KN_SHAPE(2, 3, 5, 7), KN_FLOAT32), NULL),
        "k and v of the same length S");
    ASSERT_ERROR(kn_scaled_dot_product_attention(kn_zeros(KN_SHAPE(4, 5), KN_FLOAT32), k, v, NULL),
                 "expected q, k, v all [N, H, L, E] (4-D) or all [N, L, E] (3-D)");
    ASSERT_ERROR(
        kn_scaled_dot_product_attention(kn_zeros(KN_SHAPE(2, 3, 4, 5), KN_INT64), k, v, NULL),
        "int64");
    kn_attention_args args = {.key_padding_mask = kn_zeros(KN_SHAPE(2, 6), KN_FLOAT32)};
    ASSERT_ERROR(kn_scaled_dot_product_attention(q, k, v, &args),
                 "key_padding_mask must be int64 (nonzero = padding), got float32");
    args.key_padding_mask = kn_zeros(KN_SHAPE(2, 4), KN_INT64);
    ASSERT_ERROR(kn_scaled_dot_product_attention(q, k, v, &args),
                 "key_padding_mask must be [2, 6] ([batch, keys]), got [2, 4]");
    args = (kn_attention_args){.dropout_p = 1.5};
    ASSERT_ERROR(kn_scaled_dot_product_attention(q, k, v, &args),
                 "dropout_p has to be between 0 and 1, but got 1.5");
    args = (kn_attention_args){.scale = INFINITY};
    ASSERT_ERROR(kn_scaled_dot_product_attention(q, k, v, &args), "scale must be finite");
    ASSERT_ERROR(kn_attention_qkv(kn_zeros(KN_SHAPE(2, 4, 10), KN_FLOAT32), 2, NULL),
                 "attention_qkv: expected qkv [N, T, 3 * embed_dim] (q, k, v side by side), got "
                 "[2, 4, 10]");
    ASSERT_ERROR(kn_attention_qkv(kn_zeros(KN_SHAPE(2, 4, 12), KN_FLOAT32), 3, NULL),
                 "attention_qkv: embed_dim (4) must be divisible by num_heads, got 3");
    kn_tensor *null = NULL;
    cr_assert_null(kn_scaled_dot_product_attention(null, k, v, NULL));
    kn_scope_end();
}

/* ---- the layers ------------------------------------------------------------------------- */

/* A GPT's block: pre-norm, GELU, causal. */
static kn_transformer_encoder_layer_options pre_norm_gelu_causal(int64_t d, int64_t heads,
                                                                 int64_t ff, double dropout)
{
    kn_transformer_encoder_layer_options o = {.d_model = d,
                                              .nhead = heads,
                                              .dim_feedforward = ff,
                                              .dropout = dropout,
                                              .activation = KN_TRANSFORMER_GELU,
                                              .layer_norm_eps = 1e-5,
                                              .batch_first = true,
                                              .norm_first = true,
                                              .is_causal = true};
    return o;
}

typedef struct module_setup {
    kn_module *m;
    int n_inputs;
} module_setup;

/* The module's output from inputs; its parameters are checked through a second pass
 * below (gradcheck perturbs the inputs it is given). */
static kn_tensor *module_fn(kn_tensor **in, void *context)
{
    module_setup *s = context;
    return kn_module_forward_n(s->m, in, s->n_inputs);
}

static kn_tensor *param_fn(kn_tensor **in, void *context)
{
    (void)in;
    module_setup *s = context;
    kn_tensor *x = kn_test_uniform(KN_SHAPE(2, 4, 8), -1, 1, 42);
    kn_tensor *pad = kn_from_int64s((int64_t[]){0, 0, 0, 1, 0, 0, 0, 0}, KN_SHAPE(2, 4));
    kn_tensor *inputs[2] = {x, pad};
    return kn_module_forward_n(s->m, inputs, s->n_inputs);
}

static void gradcheck_module(kn_module *m, bool padded)
{
    kn_module_train(m, false);
    module_setup s = {m, padded ? 2 : 1};
    kn_tensor *x = leaf(KN_SHAPE(2, 4, 8), 5);
    kn_tensor *in[2] = {x, kn_from_int64s((int64_t[]){0, 0, 0, 1, 0, 0, 0, 0}, KN_SHAPE(2, 4))};
    KN_ASSERT_GRADCHECK(module_fn, in, s.n_inputs, &s);
    int n;
    kn_named_tensor *params = kn_module_parameters(m, &n);
    kn_tensor *ps[16];
    for (int i = 0; i < n; i++) ps[i] = params[i].tensor;
    free(params);
    KN_ASSERT_GRADCHECK(param_fn, ps, n, &s);
}

Test(attention, layers_pass_finite_differences)
{
    kn_scope_begin();
    kn_module *mha = kn_multi_head_attention_new(8, 2, 0.0, true, true, NULL);
    gradcheck_module(mha, true);
    kn_transformer_encoder_layer_options o = pre_norm_gelu_causal(8, 2, 6, 0.0);
    kn_module *tel = kn_transformer_encoder_layer_new(&o, NULL);
    gradcheck_module(tel, false);
    kn_module_free(mha);
    kn_module_free(tel);
    kn_scope_end();
}

Test(attention, layers_print_and_name_as_torch)
{
    kn_scope_begin();
    kn_module *mha = kn_multi_head_attention_new(12, 3, 0.1, true, false, NULL);
    char *repr = kn_module_describe(mha);
    cr_assert_str_eq(repr, "MultiheadAttention(\n"
                           "  (out_proj): NonDynamicallyQuantizableLinear(in_features=12, "
                           "out_features=12, bias=True)\n"
                           ")");
    free(repr);
    cr_assert_eq(kn_module_parameter_count(mha), 4 * 12 * 12 + 4 * 12);
    kn_module_free(mha);
    mha = kn_multi_head_attention_new(12, 3, 0.0, false, false, NULL);
    int n;
    kn_named_tensor *sd = kn_module_state_dict(mha, &n);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(sd[0].name, "in_proj_weight");
    cr_assert_str_eq(sd[1].name, "out_proj.weight");
    free(sd);
    kn_module_free(mha);

    kn_layer_options o;
    kn_layer_defaults(KN_MODULE_TRANSFORMER_ENCODER_LAYER, &o);
    cr_assert(o.transformer_encoder_layer.dim_feedforward == 2048 &&
              o.transformer_encoder_layer.dropout == 0.1 &&
              o.transformer_encoder_layer.layer_norm_eps == 1e-5 &&
              o.transformer_encoder_layer.batch_first && !o.transformer_encoder_layer.norm_first);
    o.transformer_encoder_layer.d_model = 16;
    o.transformer_encoder_layer.nhead = 4;
    kn_module *tel = kn_module_new(KN_MODULE_TRANSFORMER_ENCODER_LAYER, &o, NULL);
    cr_assert_not_null(tel, "%s", kn_last_error());
    repr = kn_module_describe(tel);
    cr_assert_str_eq(repr, "TransformerEncoderLayer(\n"
                           "  (self_attn): MultiheadAttention(\n"
                           "    (out_proj): NonDynamicallyQuantizableLinear(in_features=16, "
                           "out_features=16, bias=True)\n"
                           "  )\n"
                           "  (linear1): Linear(in_features=16, out_features=2048, bias=True)\n"
                           "  (dropout): Dropout(p=0.1, inplace=False)\n"
                           "  (linear2): Linear(in_features=2048, out_features=16, bias=True)\n"
                           "  (norm1): LayerNorm((16,), eps=1e-05, elementwise_affine=True)\n"
                           "  (norm2): LayerNorm((16,), eps=1e-05, elementwise_affine=True)\n"
                           "  (dropout1): Dropout(p=0.1, inplace=False)\n"
                           "  (dropout2): Dropout(p=0.1, inplace=False)\n"
                           ")");
    free(repr);
    sd = kn_module_state_dict(tel, &n);
    const char *names[] = {"self_attn.in_proj_weight",
                           "self_attn.in_proj_bias",
                           "self_attn.out_proj.weight",
                           "self_attn.out_proj.bias",
                           "linear1.weight",
                           "linear1.bias",
                           "linear2.weight",
                           "linear2.bias",
                           "norm1.weight",
                           "norm1.bias",
                           "norm2.weight",
                           "norm2.bias"};
    cr_assert_eq(n, 12);
    for (int i = 0; i < n; i++) cr_assert_str_eq(sd[i].name, names[i]);
    free(sd);
    /* the count the shape rule reports is the module's */
    int64_t out_shape[KN_MAX_DIMS];
    int out_ndim;
    ASSERT_OK(kn_module_output_shape(tel, KN_SHAPE(10, 16), out_shape, &out_ndim));
    cr_assert(out_ndim == 2 && out_shape[0] == 10 && out_shape[1] == 16);
    kn_layer_shape s = {.type = tel->layer,
                        .options = &o,
                        .n_inputs = 1,
                        .inputs = &(kn_layer_io){.shape = {10, 16}, .ndim = 2}};
    cr_assert(kn_layer_infer(&s), "%s", s.message);
    cr_assert_eq(s.parameter_count, kn_module_parameter_count(tel));
    kn_module *plain = kn_multi_head_attention_new(4, 1, 0, true, false, NULL);
    kn_module *dropping = kn_multi_head_attention_new(4, 1, 0.2, true, false, NULL);
    cr_assert_null(kn_layer_host_bound(plain)); /* a CUDA graph can capture it */
    cr_assert_str_eq(kn_layer_host_bound(dropping),
                     "MultiheadAttention draws its dropout seed on the cpu at every step");
    cr_assert_not_null(kn_layer_host_bound(tel)); /* its dropouts draw on the cpu */
    kn_module_free(plain);
    kn_module_free(dropping);
    kn_module_free(tel);
    kn_scope_end();
}

Test(attention, layers_refuse_bad_arguments_and_inputs)
{
    kn_scope_begin();
    ASSERT_ERROR(kn_multi_head_attention_new(10, 3, 0, true, false, NULL),
                 "MultiheadAttention: embed_dim must be divisible by num_heads, got embed_dim 10 "
                 "and num_heads 3");
    ASSERT_ERROR(kn_multi_head_attention_new(0, 1, 0, true, false, NULL),
                 "MultiheadAttention: embed_dim must be positive, got 0");
    ASSERT_ERROR(kn_multi_head_attention_new(8, 2, 1.5, true, false, NULL),
                 "dropout probability has to be between 0 and 1, got 1.5");
    kn_layer_options o = {.multi_head_attention = {.embed_dim = 8, .num_heads = 2}};
    ASSERT_ERROR(kn_module_new(KN_MODULE_MULTI_HEAD_ATTENTION, &o, NULL),
                 "MultiheadAttention: batch_first must be true");
    kn_transformer_encoder_layer_options t = {
        .d_model = 8, .nhead = 2, .dim_feedforward = 4, .layer_norm_eps = 0, .batch_first = true};
    ASSERT_ERROR(kn_transformer_encoder_layer_new(&t, NULL),
                 "TransformerEncoderLayer: expected a finite layer_norm_eps > 0, got 0");
    t.layer_norm_eps = 1e-5;
    t.activation = 7;
    ASSERT_ERROR(kn_transformer_encoder_layer_new(&t, NULL), "activation should be relu/gelu");

    kn_module *m = kn_multi_head_attention_new(8, 2, 0, true, false, NULL);
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 5, 8), KN_FLOAT32);
    ASSERT_ERROR(kn_module_forward(m, kn_zeros(KN_SHAPE(2, 5, 6), KN_FLOAT32)),
                 "MultiheadAttention: expected the query as [N, L, 8] (batch, sequence, "
                 "embed_dim), got [2, 5, 6]");
    kn_tensor *cross[3] = {x, kn_zeros(KN_SHAPE(2, 7, 8), KN_FLOAT32),
                           kn_zeros(KN_SHAPE(2, 6, 8), KN_FLOAT32)};
    ASSERT_ERROR(kn_module_forward_n(m, cross, 3), "expected the value as [N, S, 8]");
    kn_tensor *masked[2] = {x, kn_zeros(KN_SHAPE(2, 5), KN_FLOAT32)};
    ASSERT_ERROR(kn_module_forward_n(m, masked, 2), "key_padding_mask must be int64");
    kn_tensor *five[5] = {x, x, x, x, x};
    ASSERT_ERROR(kn_module_forward_n(m, five, 5), "MultiheadAttention: takes 1 to 4 inputs, got 5");
    /* unbatched [L, E], as torch takes it: the batched result's one sample */
    kn_tensor *x1 = kn_test_uniform(KN_SHAPE(5, 8), -1, 1, 9);
    kn_tensor *batched = kn_module_forward(m, kn_unsqueeze(x1, 0));
    kn_tensor *unbatched = kn_module_forward(m, x1);
    KN_ASSERT_SHAPE(unbatched, KN_SHAPE(5, 8));
    cr_assert(same_bits(unbatched, batched));
    kn_module_free(m);
    kn_scope_end();
}

/* ---- through a model spec ---------------------------------------------------------------- */

static kapi_model_spec *parse(const char *json)
{
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(json, strlen(json), &errors);
    cr_assert_not_null(spec, "%s: %s", errors.count ? errors.items[0].path : "",
                       errors.count ? errors.items[0].message : "");
    kapi_errors_free(&errors);
    return spec;
}

Test(attention, a_transformer_from_a_spec)
{
    kn_scope_begin();
    kapi_model_spec *spec = parse(
        "{\"input_shape\": [12], \"layers\": ["
        "{\"type\": \"embedding\", \"num_embeddings\": 20, \"embedding_dim\": 16},"
        "{\"type\": \"transformer_encoder_layer\", \"nhead\": 4, \"dim_feedforward\": 32, "
        "\"dropout\": 0.0, \"norm_first\": true, \"is_causal\": true, \"activation\": \"gelu\"},"
        "{\"type\": \"multi_head_attention\", \"num_heads\": 2, \"is_causal\": true},"
        "{\"type\": \"layer_norm\"},"
        "{\"type\": \"linear\", \"in_features\": 16, \"out_features\": 20}]}");
    cr_assert_eq(spec->layers[1].kind, KN_MODULE_TRANSFORMER_ENCODER_LAYER);
    cr_assert_eq(spec->layers[1].options.transformer_encoder_layer.d_model, 16); /* inferred */
    cr_assert_eq(spec->layers[2].options.multi_head_attention.embed_dim, 16);
    cr_assert(spec->layers[2].out_shape[0] == 12 && spec->layers[2].out_shape[1] == 16);
    kn_module *m = kapi_model_build(spec, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    cr_assert_eq(kn_module_parameter_count(m), spec->parameter_count);
    int64_t tokens[24];
    for (int i = 0; i < 24; i++) tokens[i] = (i * 7) % 20;
    kn_tensor *y = kn_module_forward(m, kn_from_int64s(tokens, KN_SHAPE(2, 12)));
    KN_ASSERT_SHAPE(y, KN_SHAPE(2, 12, 20));
    /* causal: changing the last token changes no earlier position's output */
    tokens[11] = 3;
    kn_tensor *y2 = kn_module_forward(m, kn_from_int64s(tokens, KN_SHAPE(2, 12)));
    cr_assert(same_bits(kn_narrow(y, 1, 0, 11), kn_narrow(y2, 1, 0, 11)));
    cr_assert(!same_bits(kn_narrow(y, 1, 11, 1), kn_narrow(y2, 1, 11, 1)));
    kn_module_free(m);
    kapi_model_spec_free(spec);
    kn_scope_end();
}

/* ---- torch loads Kiln's weights strictly, and Kiln loads torch's ------------------------- */

static char scratch_dir[256];

static const char *scratch(void)
{
    cr_assert(kn_test_temp_dir("kiln-attention", scratch_dir, sizeof scratch_dir), "mkdtemp in /tmp");
    return scratch_dir;
}

/* the test's fini: the folder goes however the test ended (it was left in /tmp before) */
static void remove_scratch(void)
{
    kn_test_remove_dir(scratch_dir);
    scratch_dir[0] = '\0';
}

static void save_module(const char *path, const kn_module *m, kn_tensor *x)
{
    int n;
    kn_named_tensor *sd = kn_module_state_dict(m, &n);
    const char *names[32];
    kn_tensor *tensors[32];
    for (int i = 0; i < n; i++) {
        names[i] = sd[i].name;
        tensors[i] = sd[i].tensor;
    }
    names[n] = "input";
    tensors[n] = x;
    ASSERT_OK(kn_safetensors_save(path, names, tensors, n + 1, NULL, 0));
    free(sd);
}

Test(attention, torch_loads_kiln_weights_strictly_and_back, .fini = remove_scratch)
{
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("/usr/bin/python3 is not available");
    kn_scope_begin();
    const char *dir = scratch();
    char path[512], cmd[1400];
    kn_transformer_encoder_layer_options o = pre_norm_gelu_causal(16, 4, 24, 0.1);
    kn_module *tel = kn_transformer_encoder_layer_new(&o, NULL);
    kn_module *mha = kn_multi_head_attention_new(16, 2, 0.0, true, true, NULL);
    kn_module_train(tel, false);
    kn_module_train(mha, false);
    kn_tensor *x = kn_test_uniform(KN_SHAPE(3, 7, 16), -1, 1, 8);
    snprintf(path, sizeof path, "%s/tel.safetensors", dir);
    save_module(path, tel, x);
    snprintf(path, sizeof path, "%s/mha.safetensors", dir);
    save_module(path, mha, x);
    /* the script loads both into torch strictly, writes torch's outputs, and writes a
     * torch module of its own (weights, input, output) for the other direction */
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/golden/check_attention_torch.py' '%s'",
             KILN_SOURCE_DIR, dir);
    int rc = system(cmd);
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
        kn_scope_end();
        cr_skip_test("/usr/bin/python3 has no torch");
    }
    cr_assert_eq(rc, 0, "check_attention_torch.py failed (its message is above)");
    const char *which[2] = {"tel", "mha"};
    kn_module *mods[2] = {tel, mha};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s.torch_out.safetensors", dir, which[i]);
        kn_safetensors *f = kn_safetensors_load(path);
        cr_assert_not_null(f, "%s", kn_last_error());
        kn_tensor *mine = kn_module_forward(mods[i], x);
        kn_tensor *theirs = kn_safetensors_get(f, "output");
        float want[3 * 7 * 16];
        kn_copy_to_floats(theirs, want);
        char msg[256];
        cr_assert(kn_test_close(mine, want, 3 * 7 * 16, 1e-4, 1e-4, msg, sizeof msg), "%s: %s",
                  which[i], msg);
        kn_safetensors_free(f);
    }
    /* the reverse: torch's own TransformerEncoderLayer, loaded strictly by Kiln */
    snprintf(path, sizeof path, "%s/from_torch.safetensors", dir);
    kn_safetensors *f = kn_safetensors_load(path);
    cr_assert_not_null(f, "%s", kn_last_error());
    kn_named_tensor entries[32];
    int n = 0;
    for (int i = 0; i < f->count; i++) {
        if (!strcmp(f->entries[i].name, "input") || !strcmp(f->entries[i].name, "output")) continue;
        snprintf(entries[n].name, sizeof entries[n].name, "%s", f->entries[i].name);
        entries[n++].tensor = f->entries[i].tensor;
    }
    kn_module *fresh = kn_transformer_encoder_layer_new(&o, NULL);
    kn_module_train(fresh, false);
    ASSERT_OK(kn_module_load_state_dict(fresh, entries, n, true));
    kn_tensor *out = kn_module_forward(fresh, kn_safetensors_get(f, "input"));
    float want[3 * 7 * 16];
    kn_copy_to_floats(kn_safetensors_get(f, "output"), want);
    char msg[256];
    cr_assert(kn_test_close(out, want, 3 * 7 * 16, 1e-4, 1e-4, msg, sizeof msg), "%s", msg);
    kn_safetensors_free(f);
    kn_module_free(fresh);
    kn_module_free(tel);
    kn_module_free(mha);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    kn_scope_end();
}
