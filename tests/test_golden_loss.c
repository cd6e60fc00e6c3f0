/*
 * test_golden_loss.c — losses against PyTorch fixtures (tests/golden/data): mse_loss,
 * cross_entropy (the three reductions, ignore_index, label smoothing, [N, C, d] logits),
 * nll_loss and binary_cross_entropy_with_logits; values and gradients.
 */
#include "golden/golden_case.h"

/* ---- mse_loss: both input and target are differentiable, as in PyTorch ------------------ */

static void mse_case(const char *name, kn_reduction reduction)
{
    GOLDEN_BEGIN(name);
    kn_tensor *input = golden_leaf(g, "input"), *target = golden_leaf(g, "target");
    kn_tensor *out = kn_mse_loss(input, target, reduction);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "input", input, "target", target, NULL);
    GOLDEN_END();
}

Test(golden_mse_loss, mean)
{
    mse_case("mse_loss_mean", KN_REDUCTION_MEAN);
}
Test(golden_mse_loss, sum)
{
    mse_case("mse_loss_sum", KN_REDUCTION_SUM);
}
Test(golden_mse_loss, none)
{
    mse_case("mse_loss_none", KN_REDUCTION_NONE);
}

/* ---- cross_entropy ---------------------------------------------------------------------- */

static void cross_entropy_case(const char *name, kn_reduction reduction, int64_t ignore_index,
                               double label_smoothing)
{
    GOLDEN_BEGIN(name);
    kn_tensor *logits = golden_leaf(g, "logits");
    kn_tensor *out = kn_cross_entropy(logits, golden_input(g, "target"), reduction, ignore_index,
                                      label_smoothing);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "logits", logits, NULL);
    GOLDEN_END();
}

/* logits [4, 5], target [4] */
Test(golden_cross_entropy, mean)
{
    cross_entropy_case("cross_entropy_mean", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0);
}
Test(golden_cross_entropy, sum)
{
    cross_entropy_case("cross_entropy_sum", KN_REDUCTION_SUM, KN_DEFAULT_IGNORE_INDEX, 0);
}
Test(golden_cross_entropy, none)
{
    cross_entropy_case("cross_entropy_none", KN_REDUCTION_NONE, KN_DEFAULT_IGNORE_INDEX, 0);
}
/* target [1, -100, 3, 0, -100, 2]: the mean divides by the 4 counted rows */
Test(golden_cross_entropy, ignore_index)
{
    cross_entropy_case("cross_entropy_ignore_index", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0);
}
Test(golden_cross_entropy, ignore_index_sum)
{
    cross_entropy_case("cross_entropy_ignore_index_sum", KN_REDUCTION_SUM, KN_DEFAULT_IGNORE_INDEX,
                       0);
}
Test(golden_cross_entropy, ignore_custom_index) /* ignore_index 2, a valid class */
{
    cross_entropy_case("cross_entropy_ignore_custom", KN_REDUCTION_MEAN, 2, 0);
}
Test(golden_cross_entropy, label_smoothing)
{
    cross_entropy_case("cross_entropy_smoothing", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0.1);
}
Test(golden_cross_entropy, label_smoothing_sum)
{
    cross_entropy_case("cross_entropy_smoothing_sum", KN_REDUCTION_SUM, KN_DEFAULT_IGNORE_INDEX,
                       0.1);
}
Test(golden_cross_entropy, label_smoothing_ignore_index)
{
    cross_entropy_case("cross_entropy_smoothing_ignore", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX,
                       0.1);
}
/* logits [2, 4, 3] (N, C, d), target [2, 3] */
Test(golden_cross_entropy, logits_3d)
{
    cross_entropy_case("cross_entropy_3d", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0);
}
Test(golden_cross_entropy, logits_3d_none)
{
    cross_entropy_case("cross_entropy_3d_none", KN_REDUCTION_NONE, KN_DEFAULT_IGNORE_INDEX, 0);
}

/* Logits of magnitude ~100: log-sum-exp must subtract the max. */
Test(golden_cross_entropy, large_logits)
{
    cross_entropy_case("cross_entropy_large", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0);
}
/* [2, 4, 3] logits, target [[1, -100, 3], [-100, 0, 2]] */
Test(golden_cross_entropy, logits_3d_ignore_index)
{
    cross_entropy_case("cross_entropy_3d_ignore", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0);
}

Test(golden_cross_entropy, noncontig_logits) /* logits = lbase [5, 4].t() */
{
    GOLDEN_BEGIN("cross_entropy_noncontig");
    kn_tensor *lbase = golden_leaf(g, "lbase");
    kn_tensor *out = kn_cross_entropy(kn_transpose(lbase, 0, 1), golden_input(g, "target"),
                                      KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "lbase", lbase, NULL);
    GOLDEN_END();
}

/* ---- nll_loss --------------------------------------------------------------------------- */

static void nll_case(const char *name, kn_reduction reduction)
{
    GOLDEN_BEGIN(name);
    kn_tensor *log_probs = golden_leaf(g, "log_probs");
    kn_tensor *out =
        kn_nll_loss(log_probs, golden_input(g, "target"), reduction, KN_DEFAULT_IGNORE_INDEX);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "log_probs", log_probs, NULL);
    GOLDEN_END();
}

Test(golden_nll_loss, mean)
{
    nll_case("nll_loss_mean", KN_REDUCTION_MEAN);
}
Test(golden_nll_loss, sum)
{
    nll_case("nll_loss_sum", KN_REDUCTION_SUM);
}
Test(golden_nll_loss, none)
{
    nll_case("nll_loss_none", KN_REDUCTION_NONE);
}
Test(golden_nll_loss, ignore_index)
{
    nll_case("nll_loss_ignore_index", KN_REDUCTION_MEAN);
}
Test(golden_nll_loss, input_3d)
{
    nll_case("nll_loss_3d", KN_REDUCTION_MEAN);
}

/* ---- binary_cross_entropy_with_logits (target is data: only logits get a gradient) ------ */

static void bce_case(const char *name, kn_reduction reduction)
{
    GOLDEN_BEGIN(name);
    kn_tensor *logits = golden_leaf(g, "logits");
    kn_tensor *out =
        kn_binary_cross_entropy_with_logits(logits, golden_input(g, "target"), reduction);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "logits", logits, NULL);
    GOLDEN_END();
}

Test(golden_bce_logits, mean)
{
    bce_case("bce_logits_mean", KN_REDUCTION_MEAN);
}
Test(golden_bce_logits, sum)
{
    bce_case("bce_logits_sum", KN_REDUCTION_SUM);
}
Test(golden_bce_logits, none)
{
    bce_case("bce_logits_none", KN_REDUCTION_NONE);
}
/* |logits| up to ~100: log(1 + exp(-|x|)) form, no overflow. */
Test(golden_bce_logits, large)
{
    bce_case("bce_logits_large", KN_REDUCTION_MEAN);
}
