/*
 * test_golden_loss.c — losses against PyTorch fixtures (tests/golden/data): mse_loss,
 * l1_loss, smooth_l1_loss (beta), huber_loss (delta), cross_entropy (the three reductions,
 * ignore_index, label smoothing, [N, C, d] logits, class weights), nll_loss (with weights)
 * and binary_cross_entropy_with_logits (with pos_weight, one logit, multi-label); values
 * and gradients.
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

/* ---- l1, smooth_l1, huber: regression losses, input and target both differentiable -------- */

typedef enum { REG_L1, REG_SMOOTH_L1, REG_HUBER } reg_kind;

static void regression_case(const char *name, reg_kind kind, kn_reduction reduction, double param)
{
    GOLDEN_BEGIN(name);
    kn_tensor *input = golden_leaf(g, "input"), *target = golden_leaf(g, "target");
    kn_tensor *out = kind == REG_L1          ? kn_l1_loss(input, target, reduction)
                     : kind == REG_SMOOTH_L1 ? kn_smooth_l1_loss(input, target, reduction, param)
                                             : kn_huber_loss(input, target, reduction, param);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "input", input, "target", target, NULL);
    GOLDEN_END();
}

Test(golden_l1_loss, mean)
{
    regression_case("l1_loss_mean", REG_L1, KN_REDUCTION_MEAN, 0);
}
Test(golden_l1_loss, sum)
{
    regression_case("l1_loss_sum", REG_L1, KN_REDUCTION_SUM, 0);
}
Test(golden_l1_loss, none)
{
    regression_case("l1_loss_none", REG_L1, KN_REDUCTION_NONE, 0);
}
Test(golden_smooth_l1_loss, mean)
{
    regression_case("smooth_l1_loss_mean", REG_SMOOTH_L1, KN_REDUCTION_MEAN, 1.0);
}
Test(golden_smooth_l1_loss, sum)
{
    regression_case("smooth_l1_loss_sum", REG_SMOOTH_L1, KN_REDUCTION_SUM, 1.0);
}
Test(golden_smooth_l1_loss, none)
{
    regression_case("smooth_l1_loss_none", REG_SMOOTH_L1, KN_REDUCTION_NONE, 1.0);
}
Test(golden_smooth_l1_loss, beta_0_5)
{
    regression_case("smooth_l1_loss_beta_0_5", REG_SMOOTH_L1, KN_REDUCTION_MEAN, 0.5);
}
Test(golden_smooth_l1_loss, beta_0_is_l1)
{
    regression_case("smooth_l1_loss_beta_0", REG_SMOOTH_L1, KN_REDUCTION_MEAN, 0.0);
}
Test(golden_huber_loss, mean)
{
    regression_case("huber_loss_mean", REG_HUBER, KN_REDUCTION_MEAN, 1.0);
}
Test(golden_huber_loss, sum)
{
    regression_case("huber_loss_sum", REG_HUBER, KN_REDUCTION_SUM, 1.0);
}
Test(golden_huber_loss, none)
{
    regression_case("huber_loss_none", REG_HUBER, KN_REDUCTION_NONE, 1.0);
}
Test(golden_huber_loss, delta_2)
{
    regression_case("huber_loss_delta_2", REG_HUBER, KN_REDUCTION_MEAN, 2.0);
}
/* A regression head [5, 1] against targets near 150: the scale of the diabetes targets. */
Test(golden_mse_loss, column_of_targets)
{
    mse_case("mse_loss_column", KN_REDUCTION_MEAN);
}

/* ---- class weights: cross_entropy and nll divide a mean by the sum of weight[target] ------- */

static void weighted_ce_case(const char *name, kn_reduction reduction, int64_t ignore_index,
                             double label_smoothing)
{
    GOLDEN_BEGIN(name);
    kn_tensor *logits = golden_leaf(g, "logits");
    kn_tensor *out =
        kn_cross_entropy_weighted(logits, golden_input(g, "target"), golden_input(g, "weight"),
                                  reduction, ignore_index, label_smoothing);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "logits", logits, NULL);
    GOLDEN_END();
}

Test(golden_cross_entropy_weighted, mean)
{
    weighted_ce_case("cross_entropy_weighted_mean", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0);
}
Test(golden_cross_entropy_weighted, sum)
{
    weighted_ce_case("cross_entropy_weighted_sum", KN_REDUCTION_SUM, KN_DEFAULT_IGNORE_INDEX, 0);
}
Test(golden_cross_entropy_weighted, none)
{
    weighted_ce_case("cross_entropy_weighted_none", KN_REDUCTION_NONE, KN_DEFAULT_IGNORE_INDEX, 0);
}
Test(golden_cross_entropy_weighted, label_smoothing)
{
    weighted_ce_case("cross_entropy_weighted_smoothing", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX,
                     0.2);
}
Test(golden_cross_entropy_weighted, ignore_index)
{
    weighted_ce_case("cross_entropy_weighted_ignore", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX,
                     0);
}
Test(golden_cross_entropy_weighted, logits_3d_smoothing)
{
    weighted_ce_case("cross_entropy_weighted_3d", KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX, 0.1);
}

static void weighted_nll_case(const char *name, kn_reduction reduction)
{
    GOLDEN_BEGIN(name);
    kn_tensor *log_probs = golden_leaf(g, "log_probs");
    kn_tensor *out =
        kn_nll_loss_weighted(log_probs, golden_input(g, "target"), golden_input(g, "weight"),
                             reduction, KN_DEFAULT_IGNORE_INDEX);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "log_probs", log_probs, NULL);
    GOLDEN_END();
}

Test(golden_nll_loss_weighted, mean)
{
    weighted_nll_case("nll_loss_weighted_mean", KN_REDUCTION_MEAN);
}
Test(golden_nll_loss_weighted, sum)
{
    weighted_nll_case("nll_loss_weighted_sum", KN_REDUCTION_SUM);
}
Test(golden_nll_loss_weighted, none)
{
    weighted_nll_case("nll_loss_weighted_none", KN_REDUCTION_NONE);
}

/* ---- bce with pos_weight: the target is differentiable here, as torch makes it ----------- */

static void pos_weight_case(const char *name, kn_reduction reduction, bool target_grad)
{
    GOLDEN_BEGIN(name);
    kn_tensor *logits = golden_leaf(g, "logits");
    kn_tensor *target = target_grad ? golden_leaf(g, "target") : golden_input(g, "target");
    kn_tensor *out = kn_binary_cross_entropy_with_logits_pos_weight(
        logits, target, golden_input(g, "pos_weight"), reduction);
    golden_check(g, out, "out", GOLDEN_TOL);
    if (target_grad)
        golden_backward(g, out, GOLDEN_TOL, "logits", logits, "target", target, NULL);
    else
        golden_backward(g, out, GOLDEN_TOL, "logits", logits, NULL);
    GOLDEN_END();
}

Test(golden_bce_logits, pos_weight_mean)
{
    pos_weight_case("bce_logits_pos_weight_mean", KN_REDUCTION_MEAN, true);
}
Test(golden_bce_logits, pos_weight_sum)
{
    pos_weight_case("bce_logits_pos_weight_sum", KN_REDUCTION_SUM, true);
}
Test(golden_bce_logits, pos_weight_none)
{
    pos_weight_case("bce_logits_pos_weight_none", KN_REDUCTION_NONE, true);
}
/* [4, 3] 0/1 labels with pos_weight [1]: one weight for every label */
Test(golden_bce_logits, multilabel_pos_weight_broadcast)
{
    pos_weight_case("bce_logits_multilabel_pos_weight_1", KN_REDUCTION_MEAN, false);
}
/* binary classification: one logit per sample and 0/1 targets */
Test(golden_bce_logits, binary_one_logit)
{
    bce_case("bce_logits_binary", KN_REDUCTION_MEAN);
}
