/*
 * test_golden_attention.c — the attention family against PyTorch fixtures
 * (tests/golden/data, written by the "attention" section of generate.py):
 * scaled_dot_product_attention (causal from the top left and with an offset, key
 * padding, several query and key blocks, head dims that are not whole vectors, 3-D
 * inputs, a scale, large scores, heads read in place and a strided last dim), the packed
 * self-attention kn_attention_qkv, nn.MultiheadAttention (self, causal with padding,
 * cross) and nn.TransformerEncoderLayer (post-norm ReLU, pre-norm GELU causal, padding)
 * with torch's parameters loaded by their state-dict names, forward and every gradient;
 * and the modules' initialisation for a seed, number for number.
 */
#include "golden/golden_case.h"

#include "kn_nn.h"

#include <string.h>

/* Sums over S (the keys) in another order than torch's batched matmul and softmax. */
#define ATTENTION_TOL 1e-5, 2e-6

/* ---- scaled_dot_product_attention ----------------------------------------------------------- */

static void sdpa_case(const char *name, kn_attention_args args, bool padded)
{
    GOLDEN_BEGIN(name);
    kn_tensor *q = golden_leaf(g, "q"), *k = golden_leaf(g, "k"), *v = golden_leaf(g, "v");
    if (padded) args.key_padding_mask = golden_input(g, "pad");
    kn_tensor *out = kn_scaled_dot_product_attention(q, k, v, &args);
    cr_assert_not_null(out, "%s", kn_last_error());
    golden_check(g, out, "out", ATTENTION_TOL);
    golden_backward(g, out, ATTENTION_TOL, "q", q, "k", k, "v", v, NULL);
    GOLDEN_END();
}

Test(golden_attention, sdpa_basic)
{
    sdpa_case("sdpa_basic", (kn_attention_args){0}, false); /* L 5, S 7, E 8, Ev 6 */
}
Test(golden_attention, sdpa_causal)
{
    sdpa_case("sdpa_causal", (kn_attention_args){.is_causal = true}, false);
}
Test(golden_attention, sdpa_causal_offset)
{
    sdpa_case("sdpa_causal_offset", (kn_attention_args){.is_causal = true, .causal_offset = 5},
              false);
}
Test(golden_attention, sdpa_padding)
{
    sdpa_case("sdpa_padding", (kn_attention_args){0}, true);
}
Test(golden_attention, sdpa_causal_padding)
{
    sdpa_case("sdpa_causal_padding", (kn_attention_args){.is_causal = true}, true);
}
Test(golden_attention, sdpa_long_causal)
{
    sdpa_case("sdpa_long_causal", (kn_attention_args){.is_causal = true}, false); /* T 100, E 20 */
}
Test(golden_attention, sdpa_long_cross)
{
    sdpa_case("sdpa_long_cross", (kn_attention_args){0}, false); /* L 70, S 150, Ev 33 */
}
Test(golden_attention, sdpa_3d)
{
    sdpa_case("sdpa_3d", (kn_attention_args){0}, false);
}
Test(golden_attention, sdpa_scale)
{
    sdpa_case("sdpa_scale", (kn_attention_args){.is_causal = true, .scale = 0.3}, false);
}
Test(golden_attention, sdpa_large_scores)
{
    sdpa_case("sdpa_large_scores", (kn_attention_args){0}, false);
}

Test(golden_attention, sdpa_noncontig)
{
    GOLDEN_BEGIN("sdpa_noncontig");
    kn_tensor *qb = golden_leaf(g, "qbase"), *kb = golden_leaf(g, "kbase");
    kn_tensor *vb = golden_leaf(g, "vbase");
    kn_tensor *q = kn_transpose(qb, 1, 2), *k = kn_transpose(kb, 1, 2),
              *v = kn_transpose(vb, -1, -2);
    cr_assert(!kn_is_contiguous(q) && !kn_is_contiguous(v));
    kn_tensor *out =
        kn_scaled_dot_product_attention(q, k, v, &(kn_attention_args){.is_causal = true});
    golden_check(g, out, "out", ATTENTION_TOL);
    golden_backward(g, out, ATTENTION_TOL, "qbase", qb, "kbase", kb, "vbase", vb, NULL);
    GOLDEN_END();
}

/* ---- the packed projection ------------------------------------------------------------------ */

Test(golden_attention, attention_qkv)
{
    GOLDEN_BEGIN("attention_qkv");
    kn_tensor *qkv = golden_leaf(g, "qkv");
    kn_tensor *out = kn_attention_qkv(qkv, 2, NULL);
    golden_check(g, out, "out", ATTENTION_TOL);
    golden_backward(g, out, ATTENTION_TOL, "qkv", qkv, NULL);
    GOLDEN_END();
}

Test(golden_attention, attention_qkv_causal_padding)
{
    GOLDEN_BEGIN("attention_qkv_causal_padding");
    kn_tensor *qkv = golden_leaf(g, "qkv");
    kn_attention_args args = {.is_causal = true, .key_padding_mask = golden_input(g, "pad")};
    kn_tensor *out = kn_attention_qkv(qkv, 3, &args);
    golden_check(g, out, "out", ATTENTION_TOL);
    golden_backward(g, out, ATTENTION_TOL, "qkv", qkv, NULL);
    GOLDEN_END();
}

/* ---- the layers, with torch's parameters loaded by name ------------------------------------- */

/* Loads the fixture's tensors named as m's state-dict entries into m, strictly, and
 * moves m to the device the golden inputs are on. */
static void load_params(kn_golden *g, kn_module *m)
{
    cr_assert_not_null(m, "%s", kn_last_error());
    int n;
    kn_named_tensor *entries = kn_module_state_dict(m, &n);
    for (int i = 0; i < n; i++) {
        entries[i].tensor = kn_golden_tensor(g, entries[i].name);
        cr_assert_not_null(entries[i].tensor, "the fixture has no %s", entries[i].name);
    }
    cr_assert_eq(kn_module_load_state_dict(m, entries, n, true), KN_OK, "%s", kn_last_error());
    free(entries);
#ifdef KN_GOLDEN_CUDA
    cr_assert_eq(kn_module_to(m, kn_test_cuda0), KN_OK, "%s", kn_last_error());
#endif
}

/* The module's parameter grads against the fixture's grad_<name>. */
static void check_param_grads(kn_golden *g, kn_module *m)
{
    int n;
    kn_named_tensor *params = kn_module_parameters(m, &n);
    for (int i = 0; i < n; i++) {
        char entry[128];
        snprintf(entry, sizeof entry, "grad_%s", params[i].name);
        cr_assert_not_null(params[i].tensor->grad, "%s has no grad", params[i].name);
        golden_check(g, params[i].tensor->grad, entry, ATTENTION_TOL);
    }
    free(params);
}

static void mha_case(const char *name, int64_t e, int64_t heads, bool causal, bool cross,
                     bool padded)
{
    GOLDEN_BEGIN(name);
    kn_module *m = kn_multi_head_attention_new(e, heads, 0.0, true, causal, NULL);
    load_params(g, m);
    kn_tensor *in[4];
    int n = 0;
    if (cross) {
        in[n++] = golden_leaf(g, "query");
        in[n++] = golden_leaf(g, "key");
        in[n++] = golden_leaf(g, "value");
    } else {
        in[n++] = golden_leaf(g, "x");
    }
    if (padded) in[n++] = golden_input(g, "pad");
    kn_tensor *out = kn_module_forward_n(m, in, n);
    cr_assert_not_null(out, "%s", kn_last_error());
    golden_check(g, out, "out", ATTENTION_TOL);
    if (cross)
        golden_backward(g, out, ATTENTION_TOL, "query", in[0], "key", in[1], "value", in[2], NULL);
    else
        golden_backward(g, out, ATTENTION_TOL, "x", in[0], NULL);
    check_param_grads(g, m);
    kn_module_free(m);
    GOLDEN_END();
}

Test(golden_attention, mha_self)
{
    mha_case("mha_self", 8, 2, false, false, false);
}
Test(golden_attention, mha_causal_padding)
{
    mha_case("mha_causal_padding", 12, 3, true, false, true);
}
Test(golden_attention, mha_cross)
{
    mha_case("mha_cross", 8, 4, false, true, false);
}

static void tel_case(const char *name, kn_transformer_encoder_layer_options o, bool padded)
{
    GOLDEN_BEGIN(name);
    o.dropout = 0.0;
    o.layer_norm_eps = 1e-5;
    o.batch_first = true;
    kn_module *m = kn_transformer_encoder_layer_new(&o, NULL);
    load_params(g, m);
    kn_tensor *in[2] = {golden_leaf(g, "x"), padded ? golden_input(g, "pad") : NULL};
    kn_tensor *out = kn_module_forward_n(m, in, padded ? 2 : 1);
    cr_assert_not_null(out, "%s", kn_last_error());
    golden_check(g, out, "out", ATTENTION_TOL);
    golden_backward(g, out, ATTENTION_TOL, "x", in[0], NULL);
    check_param_grads(g, m);
    kn_module_free(m);
    GOLDEN_END();
}

Test(golden_attention, tel_post_relu)
{
    tel_case(
        "tel_post_relu",
        (kn_transformer_encoder_layer_options){.d_model = 8, .nhead = 2, .dim_feedforward = 12},
        false);
}
Test(golden_attention, tel_pre_gelu_causal)
{
    tel_case("tel_pre_gelu_causal",
             (kn_transformer_encoder_layer_options){.d_model = 8,
                                                    .nhead = 4,
                                                    .dim_feedforward = 16,
                                                    .activation = KN_TRANSFORMER_GELU,
                                                    .norm_first = true,
                                                    .is_causal = true},
             false);
}
Test(golden_attention, tel_post_padding)
{
    tel_case(
        "tel_post_padding",
        (kn_transformer_encoder_layer_options){.d_model = 8, .nhead = 2, .dim_feedforward = 12},
        true);
}

/* kn_manual_seed(1234), then the modules torch made after torch.manual_seed(1234): the
 * same numbers (torch's draws in torch's order), bit for bit. */
static void check_state(kn_golden *g, const kn_module *m, const char *prefix)
{
    int n;
    kn_named_tensor *state = kn_module_state_dict(m, &n);
    for (int i = 0; i < n; i++) {
        char entry[160];
        snprintf(entry, sizeof entry, "%s.%s", prefix, state[i].name);
        cr_assert(kn_golden_has(g, entry), "torch has no %s", entry);
        KN_ASSERT_GOLDEN(g, state[i].tensor, entry, 0.0, 0.0);
    }
    free(state);
}

Test(golden_attention, init_matches_torch_for_a_seed)
{
    GOLDEN_BEGIN("attention_init_seed1234");
    kn_manual_seed(1234);
    kn_module *mha = kn_multi_head_attention_new(12, 3, 0.0, true, false, NULL);
    kn_layer_options o;
    kn_layer_defaults(KN_MODULE_TRANSFORMER_ENCODER_LAYER, &o);
    o.transformer_encoder_layer.d_model = 8;
    o.transformer_encoder_layer.nhead = 2;
    o.transformer_encoder_layer.dim_feedforward = 24;
    kn_module *tel = kn_transformer_encoder_layer_new(&o.transformer_encoder_layer, NULL);
    cr_assert(mha && tel, "%s", kn_last_error());
    check_state(g, mha, "mha");
    check_state(g, tel, "tel");
    kn_module_free(mha);
    kn_module_free(tel);
    GOLDEN_END();
}
