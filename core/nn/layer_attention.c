/*
 * layer_attention.c — the attention layers: nn.MultiheadAttention (the fused
 * scaled-dot-product attention between torch's in_proj and out_proj) and
 * nn.TransformerEncoderLayer (self-attention and a feed-forward block, each with a
 * residual and a LayerNorm before or after). Their parameters, children, names and
 * initial values are torch 1.13's, so a state dict moves between the two as it is.
 *
 * Kiln's batch dim is always first: batch_first is accepted (and must be true) so
 * torch's arguments read the same. torch passes a causal mask per call; here it is a
 * field of the layer, is_causal, as a spec describes a model once. A key-padding mask
 * is an extra int64 input (nonzero = padding) in a graph node.
 */
#include "nn_internal.h"

#include <math.h>
#include <string.h>

/* Per-sample shapes of a sequence layer: a float [length, features] input, and the
 * length of the int64 key-padding mask that goes with it. */
static bool sequence_input(kn_layer_shape *s, int i, const char *what, int64_t features)
{
    const kn_layer_io *in = &s->inputs[i];
    if (in->dtype != KN_FLOAT32)
        return kn__shape_fail(s, NULL, "expects a float32 %s, got %s", what,
                              kn_dtype_name(in->dtype));
    if (in->ndim != 2)
        return kn__shape_fail(s, NULL, "expects a [sequence, features] %s, got %s", what,
                              kn__shape_of(in->shape, in->ndim));
    if (features > 0 && in->shape[1] != features)
        return kn__shape_fail(s, NULL, "expects a %s of %lld features (the query's), got %s", what,
                              (long long)features, kn__shape_of(in->shape, in->ndim));
    return true;
}

static bool mask_input(kn_layer_shape *s, int i, int64_t keys)
{
    const kn_layer_io *in = &s->inputs[i];
    if (in->dtype != KN_INT64 || in->ndim != 1 || in->shape[0] != keys)
        return kn__shape_fail(s, NULL,
                              "expects an int64 key-padding mask of [%lld] (one per key, nonzero "
                              "= padding), got a %s %s",
                              (long long)keys, kn_dtype_name(in->dtype),
                              kn__shape_of(in->shape, in->ndim));
    return true;
}

static bool check_batch_first(kn_layer_shape *s, bool batch_first)
{
    if (batch_first) return true;
    return kn__shape_fail(s, "batch_first",
                          "expected true: Kiln's inputs always have the batch dim first (torch's "
                          "batch_first=True); a torch model made with batch_first=False has the "
                          "same weights");
}

/* ---- multi_head_attention: nn.MultiheadAttention(embed_dim, num_heads, dropout=0.0,
 * bias=True, batch_first) --------------------------------------------------------------
 * query [N, L, E], key and value [N, S, E] (self-attention: all three are x), optional
 * key_padding_mask int64 [N, S] -> [N, L, E] = out_proj(attention(q, k, v) of heads of
 * E / num_heads); in_proj_weight [3E, E] (q, k, v stacked), in_proj_bias [3E]. */

static const kn_layer_arg MHA_ARGS[] = {
    KN_ARG_SIZE_OF(multi_head_attention, embed_dim, KN_ARG_INFERRED),
    KN_ARG_SIZE_OF(multi_head_attention, num_heads, KN_ARG_REQUIRED),
    KN_ARG_NUMBER_OF(multi_head_attention, dropout, .def = 0.0, .min = 0, .max = 1),
    KN_ARG_BOOL_OF(multi_head_attention, bias, true),
    KN_ARG_BOOL_OF(multi_head_attention, batch_first, true),
    KN_ARG_BOOL_OF(multi_head_attention, is_causal, false),
    {0},
};

static kn_status check_heads(const kn_module *m, int64_t embed_dim, int64_t heads, double dropout,
                             bool batch_first)
{
    KN__CHECK_POSITIVE(m, "embed_dim", embed_dim);
    KN__CHECK_POSITIVE(m, "num_heads", heads);
    if (embed_dim % heads)
        return kn__error(KN_ERR_VALUE,
                         "%s: embed_dim must be divisible by num_heads, got embed_dim %lld and "
                         "num_heads %lld",
                         m->type_name, (long long)embed_dim, (long long)heads);
    if (!(dropout >= 0.0 && dropout <= 1.0))
        return kn__error(KN_ERR_VALUE, "%s: dropout probability has to be between 0 and 1, got %g",
                         m->type_name, dropout);
    if (!batch_first)
        return kn__error(KN_ERR_VALUE,
                         "%s: batch_first must be true: Kiln's inputs always have the batch dim "
                         "first",
                         m->type_name);
    return KN_OK;
}

static kn_status mha_init(kn_module *m, kn_generator *gen)
{
    const kn_multi_head_attention_options *o = &m->options.multi_head_attention;
    kn_status st = check_heads(m, o->embed_dim, o->num_heads, o->dropout, o->batch_first);
    if (st != KN_OK) return st;
    int64_t e = o->embed_dim;
    kn_tensor *w = kn__module_parameter(m, "in_proj_weight", (int64_t[]){3 * e, e}, 2, 0.0);
    if (!w || (o->bias && !kn__module_parameter(m, "in_proj_bias", (int64_t[]){3 * e}, 1, 0.0)))
        return kn_last_status();
    /* torch makes out_proj (drawing its Linear init) before _reset_parameters draws
     * in_proj_weight, then zeroes both biases */
    kn_module *out_proj = kn_linear_new(e, e, o->bias, gen);
    if (!out_proj) return kn_last_status();
    out_proj->type_name = "NonDynamicallyQuantizableLinear";
    if (kn__module_child(m, "out_proj", out_proj) != KN_OK) return kn_last_status();
    if (kn_init_xavier_uniform_(w, 1.0, gen) != KN_OK) return kn_last_status();
    kn_tensor *bias = kn__module_tensor(out_proj, "bias");
    kn_no_grad_begin(); /* torch's constant_ runs under no_grad too */
    st = bias ? kn_fill_(bias, 0.0) : KN_OK;
    kn_no_grad_end();
    return st;
}

static bool mha_shape(kn_layer_shape *s)
{
    kn_multi_head_attention_options *o = &s->options->multi_head_attention;
    int n = s->n_inputs;
    bool separate = n >= 3;
    if (!sequence_input(s, 0, separate ? "query" : "input", 0)) return false;
    int64_t e = s->inputs[0].shape[1];
    if (!kn__shape_infer(s, "embed_dim", &o->embed_dim, e)) return false;
    if (!check_batch_first(s, o->batch_first)) return false;
    if (e % o->num_heads)
        return kn__shape_fail(s, "num_heads",
                              "expected a divisor of embed_dim %lld (each head takes embed_dim / "
                              "num_heads features), got %lld",
                              (long long)e, (long long)o->num_heads);
    int64_t keys = s->inputs[0].shape[0];
    if (separate) {
        if (!sequence_input(s, 1, "key", e) || !sequence_input(s, 2, "value", e)) return false;
        keys = s->inputs[1].shape[0];
        if (s->inputs[2].shape[0] != keys)
            return kn__shape_fail(s, NULL, "expects a key and a value of one length, got %s and %s",
                                  kn__shape_of(s->inputs[1].shape, 2),
                                  kn__shape_of(s->inputs[2].shape, 2));
    }
    if ((n == 2 || n == 4) && !mask_input(s, n - 1, keys)) return false;
    s->output.shape[1] = e;
    s->parameter_count = 4 * e * e + (o->bias ? 4 * e : 0);
    return true;
}

/* The rows [start, start + e) of t (in_proj_weight or its bias), or NULL for no t. */
static kn_tensor *rows_of(kn_tensor *t, int64_t start, int64_t e)
{
    return t ? kn_narrow(t, 0, start, e) : NULL;
}

/* x [N, T, E] projected by rows [part * E, (part + 1) * E) of in_proj, as [N, H, T, D]. */
static kn_tensor *project_heads(kn_module *m, kn_tensor *x, int part)
{
    const kn_multi_head_attention_options *o = &m->options.multi_head_attention;
    int64_t e = o->embed_dim, h = o->num_heads;
    kn_tensor *w = kn__module_tensor(m, "in_proj_weight"),
              *b = kn__module_tensor(m, "in_proj_bias");
    kn_tensor *y = kn_linear(x, rows_of(w, part * e, e), rows_of(b, part * e, e));
    if (!y) return NULL;
    return kn_transpose(kn_view(y, (int64_t[]){y->shape[0], y->shape[1], h, e / h}, 4), 1, 2);
}

/* query, key, value [N, L or S, E] (batched), mask int64 [N, S] or NULL. */
static kn_tensor *mha_attend(kn_module *m, kn_tensor *query, kn_tensor *key, kn_tensor *value,
                             kn_tensor *mask)
{
    const kn_multi_head_attention_options *o = &m->options.multi_head_attention;
    int64_t e = o->embed_dim;
    const char *names[3] = {"query", "key", "value"};
    kn_tensor *in[3] = {query, key, value};
    for (int i = 0; i < 3; i++)
        if (in[i]->ndim != 3 || in[i]->shape[2] != e || in[i]->shape[0] != query->shape[0] ||
            (i == 2 && value->shape[1] != key->shape[1]))
            return kn__error_null(KN_ERR_SHAPE,
                                  "%s: expected the %s as [N, %s, %lld] (batch, sequence, "
                                  "embed_dim), got %s (query %s)",
                                  m->type_name, names[i], i ? "S" : "L", (long long)e,
                                  kn__shape(in[i]), kn__shape(query));
    kn_attention_args args = {
        .is_causal = o->is_causal,
        .key_padding_mask = mask,
        .dropout_p = m->training ? o->dropout : 0.0,
        .generator = m->dropout_generator,
    };
    kn_tensor *attended;
    if (key == query && value == query) { /* self-attention: one packed projection */
        kn_tensor *qkv = kn_linear(query, kn__module_tensor(m, "in_proj_weight"),
                                   kn__module_tensor(m, "in_proj_bias"));
        kn__kv_slot *slot = kn__kv_slot_of(m);
        attended = slot ? kn__kv_attend(slot, qkv, mask, o->num_heads, &args)
                        : kn_attention_qkv(qkv, o->num_heads, &args);
    } else {
        kn_tensor *heads =
            kn_scaled_dot_product_attention(project_heads(m, query, 0), project_heads(m, key, 1),
                                            project_heads(m, value, 2), &args);
        attended = heads ? kn_reshape(kn_transpose(heads, 1, 2),
                                      (int64_t[]){query->shape[0], query->shape[1], e}, 3)
                         : NULL;
    }
    return attended ? kn_module_forward(m->children[0], attended) : NULL;
}

static kn_tensor *mha_forward(kn_module *m, kn_tensor *const *x, int n)
{
    kn_tensor *query = x[0], *key = n >= 3 ? x[1] : query, *value = n >= 3 ? x[2] : query;
    kn_tensor *mask = n == 2 || n == 4 ? x[n - 1] : NULL;
    if (query->ndim != 2) return mha_attend(m, query, key, value, mask);
    /* unbatched, as torch takes it: [L, E] in and out */
    kn_tensor *q1 = kn_unsqueeze(query, 0);
    kn_tensor *k1 = key == query ? q1 : kn_unsqueeze(key, 0);
    kn_tensor *v1 = value == query ? q1 : kn_unsqueeze(value, 0);
    kn_tensor *m1 = mask ? kn_unsqueeze(mask, 0) : NULL;
    if (!q1 || !k1 || !v1 || (mask && !m1)) return NULL;
    return kn_squeeze(mha_attend(m, q1, k1, v1, m1), 0);
}

static const char *mha_host_bound(const kn_module *m)
{
    return m->options.multi_head_attention.dropout > 0
               ? "MultiheadAttention draws its dropout seed on the cpu at every step"
               : NULL;
}

const kn_layer_type kn__layer_multi_head_attention = {
    .kind = KN_MODULE_MULTI_HEAD_ATTENTION,
    .name = "multi_head_attention",
    .torch_name = "MultiheadAttention",
    .args = MHA_ARGS,
    .flags = KN_LAYER_OWN_DTYPES | KN_LAYER_RANDOM,
    .min_inputs = 1,
    .max_inputs = 4,
    .host_bound_if = mha_host_bound,
    .init = mha_init,
    .shape = mha_shape,
    .forward = mha_forward,
};

kn_module *kn_multi_head_attention_new(int64_t embed_dim, int64_t num_heads, double dropout,
                                       bool bias, bool is_causal, kn_generator *gen)
{
    kn_layer_options o = {
        .multi_head_attention = {embed_dim, num_heads, dropout, bias, true, is_causal}};
    return kn_module_new(KN_MODULE_MULTI_HEAD_ATTENTION, &o, gen);
}

/* ---- transformer_encoder_layer: nn.TransformerEncoderLayer(d_model, nhead,
 * dim_feedforward=2048, dropout=0.1, activation=relu, layer_norm_eps=1e-05,
 * batch_first, norm_first=False) ----------------------------------------------------------
 * x [N, T, d_model] (and a key-padding mask int64 [N, T]) -> [N, T, d_model]:
 *   norm_first:  x = x + sa(norm1(x));  x = x + ff(norm2(x))
 *   otherwise:   x = norm1(x + sa(x));  x = norm2(x + ff(x))
 * sa(x) = dropout1(self_attn(x, x, x)), ff(x) = dropout2(linear2(dropout(act(linear1(x))))). */

static const char *const TRANSFORMER_ACTIVATIONS[] = {"relu", "gelu", NULL};

static const kn_layer_arg TEL_ARGS[] = {
    KN_ARG_SIZE_OF(transformer_encoder_layer, d_model, KN_ARG_INFERRED),
    KN_ARG_SIZE_OF(transformer_encoder_layer, nhead, KN_ARG_REQUIRED),
    KN_ARG_INT_OF(transformer_encoder_layer, dim_feedforward, .def = 2048, .min = 1,
                  .max = KN_ARG_MAX_SIZE),
    KN_ARG_NUMBER_OF(transformer_encoder_layer, dropout, .def = 0.1, .min = 0, .max = 1),
    KN_ARG_CHOICE_OF(transformer_encoder_layer, activation, TRANSFORMER_ACTIVATIONS,
                     .def = KN_TRANSFORMER_RELU),
    KN_ARG_NUMBER_OF(transformer_encoder_layer, layer_norm_eps, .def = 1e-5, .min = 0,
                     .max = INFINITY, .flags = KN_ARG_MIN_OPEN | KN_ARG_MAX_OPEN),
    KN_ARG_BOOL_OF(transformer_encoder_layer, batch_first, true),
    KN_ARG_BOOL_OF(transformer_encoder_layer, norm_first, false),
    KN_ARG_BOOL_OF(transformer_encoder_layer, is_causal, false),
    {0},
};

enum { SELF_ATTN, LINEAR1, DROPOUT, LINEAR2, NORM1, NORM2, DROPOUT1, DROPOUT2, TEL_CHILDREN };

static kn_status tel_init(kn_module *m, kn_generator *gen)
{
    const kn_transformer_encoder_layer_options *o = &m->options.transformer_encoder_layer;
    kn_status st = check_heads(m, o->d_model, o->nhead, o->dropout, o->batch_first);
    if (st != KN_OK) return st;
    KN__CHECK_POSITIVE(m, "dim_feedforward", o->dim_feedforward);
    if (!(isfinite(o->layer_norm_eps) && o->layer_norm_eps > 0))
        return kn__error(KN_ERR_VALUE, "%s: expected a finite layer_norm_eps > 0, got %g",
                         m->type_name, o->layer_norm_eps);
    if (o->activation != KN_TRANSFORMER_RELU && o->activation != KN_TRANSFORMER_GELU)
        return kn__error(KN_ERR_VALUE, "%s: activation should be relu/gelu, not %d", m->type_name,
                         o->activation);
    int64_t d = o->d_model, ff = o->dim_feedforward;
    /* made in torch's order, so the draws are torch's */
    static const char *const names[TEL_CHILDREN] = {"self_attn", "linear1", "dropout",  "linear2",
                                                    "norm1",     "norm2",   "dropout1", "dropout2"};
    for (int i = 0; i < TEL_CHILDREN; i++) {
        kn_module *child = NULL;
        switch (i) {
        case SELF_ATTN:
            child = kn_multi_head_attention_new(d, o->nhead, o->dropout, true, o->is_causal, gen);
            break;
        case LINEAR1:
            child = kn_linear_new(d, ff, true, gen);
            break;
        case LINEAR2:
            child = kn_linear_new(ff, d, true, gen);
            break;
        case NORM1:
        case NORM2:
            child = kn_layer_norm_new(&d, 1, o->layer_norm_eps, true);
            break;
        default:
            child = kn_dropout_new(o->dropout);
            break;
        }
        if (!child || kn__module_child(m, names[i], child) != KN_OK) return kn_last_status();
    }
    return KN_OK;
}

static bool tel_shape(kn_layer_shape *s)
{
    kn_transformer_encoder_layer_options *o = &s->options->transformer_encoder_layer;
    if (!sequence_input(s, 0, "input", 0)) return false;
    int64_t d = s->inputs[0].shape[1];
    if (!kn__shape_infer(s, "d_model", &o->d_model, d)) return false;
    if (!check_batch_first(s, o->batch_first)) return false;
    if (d % o->nhead)
        return kn__shape_fail(s, "nhead",
                              "expected a divisor of d_model %lld (each head takes d_model / "
                              "nhead features), got %lld",
                              (long long)d, (long long)o->nhead);
    if (s->n_inputs == 2 && !mask_input(s, 1, s->inputs[0].shape[0])) return false;
    int64_t ff = o->dim_feedforward;
    /* self_attn 4d^2 + 4d, linear1 d ff + ff, linear2 ff d + d, the norms 4d */
    s->parameter_count = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d;
    return true;
}

static kn_tensor *child(kn_module *m, int i, kn_tensor *x)
{
    return kn_module_forward(m->children[i], x);
}

static kn_tensor *self_attention_block(kn_module *m, kn_tensor *x, kn_tensor *mask)
{
    kn_tensor *in[2] = {x, mask};
    return child(m, DROPOUT1, kn_module_forward_n(m->children[SELF_ATTN], in, mask ? 2 : 1));
}

static kn_tensor *feed_forward_block(kn_module *m, kn_tensor *x)
{
    const kn_transformer_encoder_layer_options *o = &m->options.transformer_encoder_layer;
    kn_tensor *h = child(m, LINEAR1, x);
    h = o->activation == KN_TRANSFORMER_GELU ? kn_gelu(h, KN_GELU_EXACT) : kn_relu(h);
    return child(m, DROPOUT2, child(m, LINEAR2, child(m, DROPOUT, h)));
}

static kn_tensor *tel_forward(kn_module *m, kn_tensor *const *in, int n)
{
    kn_tensor *x = in[0], *mask = n == 2 ? in[1] : NULL;
    if (m->options.transformer_encoder_layer.norm_first) {
        x = kn_add(x, self_attention_block(m, child(m, NORM1, x), mask));
        return kn_add(x, feed_forward_block(m, child(m, NORM2, x)));
    }
    x = child(m, NORM1, kn_add(x, self_attention_block(m, x, mask)));
    return child(m, NORM2, kn_add(x, feed_forward_block(m, x)));
}

const kn_layer_type kn__layer_transformer_encoder_layer = {
    .kind = KN_MODULE_TRANSFORMER_ENCODER_LAYER,
    .name = "transformer_encoder_layer",
    .torch_name = "TransformerEncoderLayer",
    .args = TEL_ARGS,
    .flags = KN_LAYER_OWN_DTYPES,
    .min_inputs = 1,
    .max_inputs = 2,
    .capturable = true, /* as capturable as its children (their dropout) */
    .init = tel_init,
    .shape = tel_shape,
    .forward = tel_forward,
};

kn_module *kn_transformer_encoder_layer_new(const kn_transformer_encoder_layer_options *options,
                                            kn_generator *gen)
{
    if (!options)
        return kn__error_null(KN_ERR_NULL, "transformer_encoder_layer_new: options is NULL");
    kn_layer_options o = {.transformer_encoder_layer = *options};
    return kn_module_new(KN_MODULE_TRANSFORMER_ENCODER_LAYER, &o, gen);
}
