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
    kn_tensor *q = kn_transpose(qb, 1, 2), *k = kn_transpose(kb, 1, 2), *v = kn_transpose(vb, -1, -2);
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
