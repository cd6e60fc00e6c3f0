/*
 * test_nn.c — modules: PyTorch's default initialisation bit for bit, state_dict names,
 * a small model's forward against torch, train/eval (dropout, batch norm and its
 * num_batches_tracked), load_state_dict errors, output shape inference and its
 * messages, the repr, module_to, and kn_adaptive_avg_pool2d (values, gradient,
 * gradcheck, the bits of the uniform-window path). Expected numbers come from
 * tests/golden/nn_expected.py (torch 1.13).
 */
#include "kn_nn.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_EXACT(t, want, n)                                                                   \
    do {                                                                                           \
        char msg__[256];                                                                           \
        cr_assert_not_null((t), "%s", kn_last_error());                                            \
        cr_assert(kn_test_close((t), (want), (n), 0, 0, msg__, sizeof msg__), "%s", msg__);        \
    } while (0)

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())

static kn_tensor *param(const kn_module *m, const char *name)
{
    int n;
    kn_named_tensor *all = kn_module_state_dict(m, &n);
    kn_tensor *t = NULL;
    for (int i = 0; i < n; i++)
        if (strcmp(all[i].name, name) == 0) t = all[i].tensor;
    free(all);
    cr_assert_not_null(t, "no state entry %s", name);
    return t;
}

static kn_module *append(kn_module *seq, kn_module *child)
{
    cr_assert_not_null(child, "%s", kn_last_error());
    ASSERT_OK(kn_sequential_append(seq, child));
    return child;
}

static kn_pool2d_args pool2(void)
{
    return (kn_pool2d_args){.kernel_size = {2, 2}};
}

static kn_conv2d_args pad1(void)
{
    return (kn_conv2d_args){.padding = {1, 1}};
}

/* The Fashion-MNIST CNN; with_flatten false leaves out layer 6. */
static kn_module *fmnist_cnn(bool with_flatten)
{
    kn_module *m = kn_sequential_new();
    append(m, kn_conv2d_new(1, 16, (int[]){3, 3}, pad1(), true, NULL));
    append(m, kn_relu_new());
    append(m, kn_max_pool2d_new(pool2()));
    append(m, kn_conv2d_new(16, 32, (int[]){3, 3}, pad1(), true, NULL));
    append(m, kn_relu_new());
    append(m, kn_max_pool2d_new(pool2()));
    if (with_flatten) append(m, kn_flatten_new(1, -1));
    append(m, kn_linear_new(1568, 128, true, NULL));
    append(m, kn_relu_new());
    append(m, kn_linear_new(128, 10, true, NULL));
    return m;
}

/* ---- initialisation ------------------------------------------------------------------ */

Test(nn_init, linear_matches_torch)
{
    kn_scope_begin();
    kn_manual_seed(0);
    kn_module *m = kn_linear_new(4, 3, true, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    const float w[] = {-0.00374341011f, 0.268221796f, -0.411522567f,   -0.367969513f,
                       -0.192577183f,   0.134078681f, -0.00990658998f, 0.396444738f,
                       -0.0443720222f,  0.132306278f, -0.151106536f,   -0.0982826948f};
    const float b[] = {-0.477674246f, -0.331141055f, -0.20611155f};
    ASSERT_EXACT(param(m, "weight"), w, 12);
    ASSERT_EXACT(param(m, "bias"), b, 3);
    cr_assert(param(m, "weight")->requires_grad);
    cr_assert_eq(kn_module_parameter_count(m), 15);
    kn_module_free(m);
    kn_scope_end();
}

Test(nn_init, conv2d_matches_torch)
{
    kn_scope_begin();
    kn_manual_seed(0);
    kn_module *m = kn_conv2d_new(2, 3, (int[]){3, 3}, (kn_conv2d_args){0}, true, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    const float w[] = {-0.00176466047f, 0.126440972f,  -0.193993598f,   -0.173462495f,
                       -0.0907817557f,  0.0632052943f, -0.00467001135f, 0.186885849f};
    const float b[] = {0.158035144f, -0.138782039f, 0.0439217091f};
    kn_tensor *weight = param(m, "weight");
    KN_ASSERT_SHAPE(weight, KN_SHAPE(3, 2, 3, 3));
    ASSERT_EXACT(kn_narrow(kn_reshape(weight, KN_SHAPE(-1)), 0, 0, 8), w, 8);
    ASSERT_EXACT(param(m, "bias"), b, 3);
    cr_assert_eq(kn_init_fan_in(weight), 18);
    kn_module_free(m);
    kn_scope_end();
}

/* torch.manual_seed(42); the CNN; first and last value and the (double) sum of each
 * parameter: the whole stream of draws lines up, bit for bit. */
Test(nn_init, cnn_matches_torch)
{
    kn_scope_begin();
    kn_manual_seed(42);
    kn_module *m = fmnist_cnn(true);
    const struct {
        const char *name;
        float first, last;
        double sum;
    } want[] = {
        {"0.weight", 0.254846185f, -0.244684577f, -2.82086725},
        {"0.bias", -0.057557784f, -0.180215403f, 0.42945696},
        {"3.weight", 0.0757459626f, -0.0313921981f, -2.82943954},
        {"3.bias", 0.0216507018f, 0.0363098979f, -0.145808959},
        {"7.weight", -0.0154216709f, -0.022134589f, 6.15099031},
        {"7.bias", 0.0249349102f, -0.0187643226f, -0.0291720384},
        {"9.weight", 0.0515925586f, -0.0243651029f, -0.890563567},
        {"9.bias", 0.00361104705f, -0.0517639257f, -0.0769209657},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        kn_tensor *t = param(m, want[i].name);
        int64_t n = kn_numel(t);
        const float *v = kn_data_f32(t);
        double sum = 0;
        for (int64_t j = 0; j < n; j++) sum += v[j];
        cr_assert_eq(v[0], want[i].first, "%s[0]: %.9g", want[i].name, v[0]);
        cr_assert_eq(v[n - 1], want[i].last, "%s[-1]: %.9g", want[i].name, v[n - 1]);
        cr_assert_float_eq(sum, want[i].sum, 1e-6, "%s sum: %.9g", want[i].name, sum);
    }
    kn_module_free(m);
    kn_scope_end();
}

Test(nn_init, embedding_matches_torch)
{
    kn_scope_begin();
    kn_manual_seed(0);
    kn_module *big = kn_embedding_new(5, 4, NULL); /* >= 16 elements: torch's vector path */
    const float want_big[] = {-1.12583983f, -1.1523602f,   -0.250578582f, -0.433878809f,
                              0.598839462f, -1.55509508f,  -0.34136039f,  1.85300612f,
                              0.468096405f, -0.157712445f, 1.44366014f,   0.266049415f,
                              1.38936615f,  1.58633423f,   0.946298361f,  -0.843676746f,
                              0.931826591f, 1.25900924f,   2.00498056f,   0.0537369028f};
    char msg[256];
    cr_assert(kn_test_close(param(big, "weight"), want_big, 20, 1e-6, 1e-6, msg, sizeof msg), "%s",
              msg);
    kn_manual_seed(0);
    kn_module *small = kn_embedding_new(3, 2, NULL);
    const float want_small[] = {1.54099607f,  -0.293428898f, -2.17878938f,
                                0.568431258f, -1.08452237f,  -1.39859545f};
    cr_assert(kn_test_close(param(small, "weight"), want_small, 6, 1e-6, 1e-6, msg, sizeof msg),
              "%s", msg);
    /* forward looks rows up */
    kn_tensor *y = kn_module_forward(small, kn_from_int64s((int64_t[]){2, 0}, KN_SHAPE(2)));
    KN_ASSERT_CLOSE(y, {-1.08452237f, -1.39859545f, 1.54099607f, -0.293428898f});
    kn_module_free(big);
    kn_module_free(small);
    kn_scope_end();
}

Test(nn_init, norms_start_at_identity)
{
    kn_scope_begin();
    kn_module *bn = kn_batch_norm1d_new(3, 1e-5, 0.1, true, true);
    KN_ASSERT_CLOSE(param(bn, "weight"), {1, 1, 1});
    KN_ASSERT_CLOSE(param(bn, "bias"), {0, 0, 0});
    KN_ASSERT_CLOSE(param(bn, "running_mean"), {0, 0, 0});
    KN_ASSERT_CLOSE(param(bn, "running_var"), {1, 1, 1});
    kn_tensor *count = param(bn, "num_batches_tracked");
    cr_assert_eq(count->ndim, 0);
    cr_assert_eq(count->dtype, KN_INT64);
    cr_assert_eq(kn_item_i64(count), 0);
    cr_assert(!param(bn, "running_mean")->requires_grad);
    kn_module *ln = kn_layer_norm_new((int64_t[]){2, 3}, 2, 1e-5, true);
    KN_ASSERT_SHAPE(param(ln, "weight"), KN_SHAPE(2, 3));
    KN_ASSERT_CLOSE(param(ln, "bias"), {0, 0, 0, 0, 0, 0});
    kn_module_free(bn);
    kn_module_free(ln);
    kn_scope_end();
}

Test(nn_init, bad_arguments_are_errors)
{
    cr_assert_null(kn_linear_new(0, 3, true, NULL));
    cr_assert(strstr(kn_last_error(), "in_features must be positive, got 0"), "%s",
              kn_last_error());
    cr_assert_null(kn_conv2d_new(3, 4, (int[]){3, 3}, (kn_conv2d_args){.groups = 2}, true, NULL));
    cr_assert(strstr(kn_last_error(), "divisible by groups"), "%s", kn_last_error());
    cr_assert_null(kn_dropout_new(1.5));
    cr_assert(strstr(kn_last_error(), "between 0 and 1, but got 1.5"), "%s", kn_last_error());
    cr_assert_null(kn_max_pool2d_new((kn_pool2d_args){.kernel_size = {2, 2}, .padding = {2, 2}}));
    cr_assert(strstr(kn_last_error(), "padding"), "%s", kn_last_error());
    cr_assert_eq(kn_sequential_append(NULL, kn_relu_new()), KN_ERR_NULL); /* child freed */
}

/* ---- names, counts, repr ------------------------------------------------------------- */

Test(nn_state, cnn_state_dict_names_count_and_repr)
{
    kn_scope_begin();
    kn_module *m = fmnist_cnn(true);
    const char *want[] = {"0.weight", "0.bias", "3.weight", "3.bias",
                          "7.weight", "7.bias", "9.weight", "9.bias"};
    int n;
    kn_named_tensor *sd = kn_module_state_dict(m, &n);
    cr_assert_eq(n, 8);
    for (int i = 0; i < n; i++) cr_assert_str_eq(sd[i].name, want[i]);
    free(sd);
    kn_named_tensor *ps = kn_module_parameters(m, &n);
    cr_assert_eq(n, 8);
    free(ps);
    cr_assert_eq(kn_module_parameter_count(m), 206922);
    char *repr = kn_module_describe(m);
    cr_assert_str_eq(
        repr, "Sequential(\n"
              "  (0): Conv2d(1, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
              "  (1): ReLU()\n"
              "  (2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
              "  (3): Conv2d(16, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
              "  (4): ReLU()\n"
              "  (5): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
              "  (6): Flatten(start_dim=1, end_dim=-1)\n"
              "  (7): Linear(in_features=1568, out_features=128, bias=True)\n"
              "  (8): ReLU()\n"
              "  (9): Linear(in_features=128, out_features=10, bias=True)\n"
              ")");
    free(repr);
    kn_module_free(m);
    kn_scope_end();
}

Test(nn_state, buffers_are_in_state_dict_not_parameters)
{
    kn_scope_begin();
    kn_module *m = kn_sequential_new();
    append(m, kn_linear_new(3, 4, true, NULL));
    append(m, kn_batch_norm1d_new(4, 1e-5, 0.1, true, true));
    append(m, kn_dropout_new(0.5));
    append(m, kn_layer_norm_new((int64_t[]){4}, 1, 1e-5, true));
    const char *want[] = {"0.weight",
                          "0.bias",
                          "1.weight",
                          "1.bias",
                          "1.running_mean",
                          "1.running_var",
                          "1.num_batches_tracked",
                          "3.weight",
                          "3.bias"};
    int n;
    kn_named_tensor *sd = kn_module_state_dict(m, &n);
    cr_assert_eq(n, 9);
    for (int i = 0; i < n; i++) {
        cr_assert_str_eq(sd[i].name, want[i]);
        cr_assert_eq(sd[i].is_buffer, i >= 4 && i <= 6);
    }
    free(sd);
    kn_named_tensor *ps = kn_module_parameters(m, &n);
    cr_assert_eq(n, 6);
    cr_assert_str_eq(ps[5].name, "3.bias");
    free(ps);
    cr_assert_eq(kn_module_parameter_count(m), 16 + 8 + 8);
    char *repr = kn_module_describe(m);
    cr_assert_str_eq(
        repr,
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "  (1): BatchNorm1d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "  (2): Dropout(p=0.5, inplace=False)\n"
        "  (3): LayerNorm((4,), eps=1e-05, elementwise_affine=True)\n"
        ")");
    free(repr);
    kn_module_free(m);
    kn_scope_end();
}

Test(nn_state, nested_sequential_names)
{
    kn_scope_begin();
    kn_module *inner = kn_sequential_new();
    append(inner, kn_relu_new());
    append(inner, kn_linear_new(2, 2, false, NULL));
    kn_module *m = kn_sequential_new();
    append(m, kn_linear_new(2, 2, true, NULL));
    append(m, inner);
    int n;
    kn_named_tensor *sd = kn_module_state_dict(m, &n);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(sd[2].name, "1.1.weight");
    free(sd);
    kn_module_free(m);
    kn_scope_end();
}

/* ---- forward, train/eval ------------------------------------------------------------- */

Test(nn_forward, small_model_matches_torch)
{
    kn_scope_begin();
    kn_manual_seed(1);
    kn_module *m = kn_sequential_new();
    append(m, kn_conv2d_new(1, 2, (int[]){3, 3}, pad1(), true, NULL));
    append(m, kn_relu_new());
    append(m, kn_max_pool2d_new(pool2()));
    append(m, kn_flatten_new(1, -1));
    append(m, kn_linear_new(8, 3, true, NULL));
    kn_tensor *x = kn_test_seq(KN_SHAPE(2, 1, 4, 4), 5);
    kn_tensor *y = kn_module_forward(m, x);
    KN_ASSERT_CLOSE(
        y, {-0.441506803f, 0.199676543f, 0.0546582043f, -0.432268083f, 0.256018847f, 0.112783119f});
    ASSERT_OK(kn_backward(kn_sum_all(y), NULL, false));
    int n;
    kn_named_tensor *ps = kn_module_parameters(m, &n);
    for (int i = 0; i < n; i++) cr_assert_not_null(kn_grad(ps[i].tensor), "%s", ps[i].name);
    free(ps);
    kn_module_zero_grad(m);
    cr_assert_null(kn_grad(param(m, "4.bias")));
    kn_module_free(m);
    kn_scope_end();
}

Test(nn_forward, errors_name_the_layer)
{
    kn_scope_begin();
    kn_module *m = fmnist_cnn(false);
    cr_assert_null(kn_module_forward(m, kn_zeros(KN_SHAPE(2, 1, 28, 28), KN_FLOAT32)));
    cr_assert(strncmp(kn_last_error(), "layer 6 (linear): ", 18) == 0, "%s", kn_last_error());
    kn_module_free(m);
    kn_scope_end();
}

Test(nn_forward, dropout_follows_training_flag)
{
    kn_scope_begin();
    kn_module *m = kn_sequential_new();
    kn_module *d = append(m, kn_dropout_new(0.5));
    kn_tensor *x = kn_ones(KN_SHAPE(1000), KN_FLOAT32);
    cr_assert(d->training);
    kn_tensor *y = kn_module_forward(m, x);
    int zeros = 0;
    for (int i = 0; i < 1000; i++) {
        float v = kn_data_f32(y)[i];
        cr_assert(v == 0.f || v == 2.f, "%g", v);
        zeros += v == 0.f;
    }
    cr_assert(zeros > 400 && zeros < 600, "%d zeros", zeros);
    kn_module_train(m, false);
    cr_assert(!d->training);
    y = kn_module_forward(m, x);
    cr_assert_float_eq(kn_item(kn_sum_all(y)), 1000.f, 0);
    kn_module_free(m);
    kn_scope_end();
}

/* torch: base = ((i*7+3)%17-8)/8 as [1, 2, 2, 3], repeated over a batch of 2 and the
 * second copy doubled; nn.BatchNorm2d(2) trained on it once, then evaluated. */
static kn_tensor *bn_input(void)
{
    float v[24];
    for (int n = 0; n < 2; n++)
        for (int i = 0; i < 12; i++) v[n * 12 + i] = (float)((i * 7 + 3) % 17 - 8) / 8 * (n + 1);
    return kn_from_floats(v, KN_SHAPE(2, 2, 2, 3));
}

Test(nn_forward, batch_norm_train_eval_and_count)
{
    kn_scope_begin();
    kn_module *bn = kn_batch_norm2d_new(2, 1e-5, 0.1, true, true);
    kn_tensor *x = bn_input();
    cr_assert_not_null(kn_module_forward(bn, x), "%s", kn_last_error());
    KN_ASSERT_CLOSE(param(bn, "running_mean"), {-0.03125f, 0.0125000002f});
    KN_ASSERT_CLOSE(param(bn, "running_var"), {0.993039727f, 0.992045462f});
    cr_assert_eq(kn_item_i64(param(bn, "num_batches_tracked")), 1);
    kn_module_train(bn, false);
    kn_tensor *y = kn_module_forward(bn, x);
    KN_ASSERT_CLOSE(
        kn_narrow(kn_reshape(y, KN_SHAPE(-1)), 0, 0, 6),
        {-0.595824242f, 0.282232523f, -0.972134233f, -0.0940775126f, 0.783979237f, -0.470387548f});
    cr_assert_eq(kn_item_i64(param(bn, "num_batches_tracked")), 1); /* eval: unchanged */
    /* shapes */
    cr_assert_null(kn_module_forward(bn, kn_zeros(KN_SHAPE(2, 2, 3), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "BatchNorm2d: expected a 4-D [N, C, H, W] input, got "
                                      "[2, 2, 3]"),
              "%s", kn_last_error());
    kn_module *bn1 = kn_batch_norm1d_new(2, 1e-5, 0.1, true, true);
    cr_assert_not_null(kn_module_forward(bn1, kn_randn(KN_SHAPE(4, 2), NULL)));
    cr_assert_not_null(kn_module_forward(bn1, kn_randn(KN_SHAPE(4, 2, 3), NULL)));
    cr_assert_eq(kn_item_i64(param(bn1, "num_batches_tracked")), 2);
    cr_assert_null(kn_module_forward(bn1, x));
    cr_assert(strstr(kn_last_error(), "BatchNorm1d: expected a 2-D"), "%s", kn_last_error());
    cr_assert_null(kn_module_forward(bn1, kn_zeros(KN_SHAPE(4, 3), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "expected 2 channels"), "%s", kn_last_error());
    kn_module_free(bn);
    kn_module_free(bn1);
    kn_scope_end();
}

Test(nn_forward, batch_norm_without_running_stats)
{
    kn_scope_begin();
    kn_module *bn = kn_batch_norm2d_new(2, 1e-5, 0.1, false, false);
    int n;
    free(kn_module_state_dict(bn, &n));
    cr_assert_eq(n, 0);
    kn_module_train(bn, false);
    /* eval without running stats normalises with the batch's own statistics */
    kn_tensor *y = kn_module_forward(bn, bn_input());
    cr_assert_not_null(y, "%s", kn_last_error());
    kn_tensor *mean = kn_mean(y, KN_DIMS(0, 2, 3), false);
    cr_assert_float_eq(kn_get(mean, (int64_t[]){0}), 0.0, 1e-6);
    kn_module_free(bn);
    kn_scope_end();
}

Test(nn_forward, batch_norm_momentum_none_is_cumulative)
{
    kn_scope_begin();
    kn_module *bn = kn_batch_norm1d_new(1, 1e-5, -1, true, true);
    cr_assert_not_null(kn_module_forward(bn, kn_from_floats((float[]){1, 3}, KN_SHAPE(2, 1))));
    cr_assert_not_null(kn_module_forward(bn, kn_from_floats((float[]){5, 7}, KN_SHAPE(2, 1))));
    KN_ASSERT_CLOSE(param(bn, "running_mean"), {4}); /* (2 + 6) / 2 */
    char *repr = kn_module_describe(bn);
    cr_assert(strstr(repr, "momentum=None"), "%s", repr);
    free(repr);
    kn_module_free(bn);
    kn_scope_end();
}

/* ---- load_state_dict ----------------------------------------------------------------- */

Test(nn_load, round_trip_and_errors)
{
    kn_scope_begin();
    kn_module *a = kn_sequential_new();
    append(a, kn_linear_new(3, 2, true, NULL));
    append(a, kn_batch_norm1d_new(2, 1e-5, 0.1, true, true));
    kn_module *b = kn_sequential_new();
    append(b, kn_linear_new(3, 2, true, NULL));
    append(b, kn_batch_norm1d_new(2, 1e-5, 0.1, true, true));
    kn_data_i64(param(a, "1.num_batches_tracked"))[0] = 7;
    int n;
    kn_named_tensor *sd = kn_module_state_dict(a, &n);
    ASSERT_OK(kn_module_load_state_dict(b, sd, n, true));
    float wa[6];
    kn_copy_to_floats(param(a, "0.weight"), wa);
    ASSERT_EXACT(param(b, "0.weight"), wa, 6);
    cr_assert_eq(kn_item_i64(param(b, "1.num_batches_tracked")), 7);
    cr_assert_neq(param(a, "0.weight"), param(b, "0.weight")); /* copied, not shared */

    /* missing key */
    cr_assert_eq(kn_module_load_state_dict(b, sd, n - 1, true), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "missing key \"1.num_batches_tracked\""), "%s",
              kn_last_error());
    ASSERT_OK(kn_module_load_state_dict(b, sd, n - 1, false));

    /* unexpected key */
    kn_named_tensor extra[8];
    memcpy(extra, sd, sizeof *sd * (size_t)n);
    snprintf(extra[n].name, sizeof extra[n].name, "2.weight");
    extra[n].tensor = sd[0].tensor;
    extra[n].is_buffer = false;
    cr_assert_eq(kn_module_load_state_dict(b, extra, n + 1, true), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "unexpected key \"2.weight\""), "%s", kn_last_error());
    ASSERT_OK(kn_module_load_state_dict(b, extra, n + 1, false));

    /* shape mismatch names both shapes, strict or not, and changes nothing */
    float before[2];
    kn_copy_to_floats(param(b, "0.bias"), before);
    extra[1].tensor = kn_zeros(KN_SHAPE(3), KN_FLOAT32);
    cr_assert_eq(kn_module_load_state_dict(b, extra, n, false), KN_ERR_SHAPE);
    cr_assert(strstr(kn_last_error(), "size mismatch for \"0.bias\": the checkpoint has shape "
                                      "[3], the model has [2]"),
              "%s", kn_last_error());
    ASSERT_EXACT(param(b, "0.bias"), before, 2);
    extra[1].tensor = kn_zeros(KN_SHAPE(2), KN_FLOAT32);
    extra[0].tensor = kn_zeros(KN_SHAPE(2, 3), KN_INT64);
    cr_assert_eq(kn_module_load_state_dict(b, extra, n, true), KN_ERR_DTYPE);
    cr_assert(strstr(kn_last_error(), "dtype mismatch for \"0.weight\""), "%s", kn_last_error());
    ASSERT_EXACT(param(b, "0.bias"), before, 2);
    free(sd);
    kn_module_free(a);
    kn_module_free(b);
    kn_scope_end();
}

Test(nn_load, module_to)
{
    kn_scope_begin();
    kn_module *m = kn_linear_new(2, 2, true, NULL);
    kn_tensor *w = param(m, "weight");
    ASSERT_OK(kn_module_to(m, kn_cpu()));
    cr_assert_eq(param(m, "weight"), w);
    kn_device cuda = {KN_DEVICE_CUDA, 0};
    cr_assert_eq(kn_module_to(m, cuda), KN_ERR_DEVICE);
    cr_assert(strstr(kn_last_error(), "cuda"), "%s", kn_last_error());
    cr_assert_eq(param(m, "weight"), w);
    kn_module *relu = kn_relu_new();
    cr_assert_eq(kn_module_to(relu, cuda), KN_ERR_DEVICE);
    kn_module_free(relu);
    kn_module_free(m);
    kn_scope_end();
}

/* ---- output shapes ------------------------------------------------------------------- */

static void assert_shape_error(const kn_module *m, const int64_t *in, int n, const char *want)
{
    int64_t out[KN_MAX_DIMS];
    int out_n;
    cr_assert_neq(kn_module_output_shape(m, in, n, out, &out_n), KN_OK);
    cr_assert_str_eq(kn_last_error(), want);
}

Test(nn_shape, cnn_infers_and_explains)
{
    kn_scope_begin();
    kn_module *m = fmnist_cnn(true);
    int64_t out[KN_MAX_DIMS];
    int n;
    ASSERT_OK(kn_module_output_shape(m, KN_SHAPE(1, 28, 28), out, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0], 10);
    kn_module_free(m);

    m = fmnist_cnn(false);
    assert_shape_error(m, KN_SHAPE(1, 28, 28),
                       "layer 6 (linear): expects a 1-D input, got [32, 7, 7] — add a flatten, or "
                       "set in_features: 7 to apply it to the last dim as nn.Linear does");
    kn_module_free(m);

    m = fmnist_cnn(true);
    assert_shape_error(m, KN_SHAPE(3, 28, 28),
                       "layer 0 (conv2d): in_channels: expected 3 (inferred from the input "
                       "[3, 28, 28]), got 1");
    assert_shape_error(m, KN_SHAPE(1, 28, 28, 1),
                       "layer 0 (conv2d): expects a [channels, height, width] input, got "
                       "[1, 28, 28, 1]");
    assert_shape_error(m, KN_SHAPE(1, 2, 2),
                       "layer 5 (max_pool2d): would output [32, 0, 0] from the input [32, 1, 1]: "
                       "the input is too small for kernel_size [2, 2] (stride [2, 2], padding "
                       "[0, 0], dilation [1, 1])");
    assert_shape_error(m, KN_SHAPE(1, 32, 32),
                       "layer 7 (linear): in_features: expected 2048 (inferred from the input "
                       "[2048]), got 1568");
    kn_module_free(m);
    kn_scope_end();
}

Test(nn_shape, single_layers)
{
    int64_t out[KN_MAX_DIMS];
    int n;
    kn_module *m = kn_linear_new(4, 5, true, NULL);
    assert_shape_error(m, KN_SHAPE(3),
                       "linear: in_features: expected 3 (inferred from the input [3]), got 4");
    ASSERT_OK(kn_module_output_shape(m, KN_SHAPE(7, 4), out, &n)); /* torch: [*, in] */
    cr_assert(n == 2 && out[0] == 7 && out[1] == 5);
    kn_module_free(m);

    m = kn_flatten_new(0, -1);
    assert_shape_error(m, KN_SHAPE(2, 3),
                       "flatten: start_dim: dim 0 is the batch dim of the batched input [N, 2, 3]: "
                       "expected a dim from 1 to 2 (or from -2 to -1)");
    kn_module_free(m);
    m = kn_flatten_new(2, 3);
    ASSERT_OK(kn_module_output_shape(m, KN_SHAPE(2, 3, 4, 5), out, &n));
    cr_assert(n == 3 && out[0] == 2 && out[1] == 12 && out[2] == 5);
    kn_module_free(m);

    m = kn_max_pool2d_new(
        (kn_pool2d_args){.kernel_size = {3, 3}, .stride = {2, 2}, .ceil_mode = true});
    ASSERT_OK(kn_module_output_shape(m, KN_SHAPE(1, 6, 7), out, &n));
    cr_assert(n == 3 && out[1] == 3 && out[2] == 3, "%lld %lld", (long long)out[1],
              (long long)out[2]);
    kn_module_free(m);

    m = kn_adaptive_avg_pool2d_new(3, 4);
    ASSERT_OK(kn_module_output_shape(m, KN_SHAPE(8, 5, 7), out, &n));
    cr_assert(n == 3 && out[0] == 8 && out[1] == 3 && out[2] == 4);
    kn_module_free(m);

    m = kn_embedding_new(10, 6, NULL);
    ASSERT_OK(kn_module_output_shape(m, KN_SHAPE(12), out, &n));
    cr_assert(n == 2 && out[0] == 12 && out[1] == 6);
    kn_module_free(m);

    m = kn_batch_norm2d_new(4, 1e-5, 0.1, true, true);
    assert_shape_error(m, KN_SHAPE(4, 5),
                       "batch_norm2d: expects a [channels, height, width] input, got [4, 5] — give "
                       "input_shape a channel dim, e.g. [1, H, W]");
    kn_module_free(m);

    m = kn_softmax_new(2);
    assert_shape_error(m, KN_SHAPE(10),
                       "softmax: dim: expected an integer from -2 to 1 (the batched input [N, 10] "
                       "has 2 dims), got 2");
    kn_module_free(m);

    m = kn_layer_norm_new((int64_t[]){4}, 1, 1e-5, true);
    assert_shape_error(m, KN_SHAPE(3, 5),
                       "layer_norm: normalized_shape: expected the trailing dims "
                       "of the input [3, 5], got [4]");
    kn_module_free(m);
}

/* ---- adaptive_avg_pool2d ------------------------------------------------------------- */

Test(nn_adaptive, values_and_gradient_match_torch)
{
    kn_scope_begin();
    float v[35];
    for (int i = 0; i < 35; i++) v[i] = (float)i;
    kn_tensor *x = kn_set_requires_grad(kn_from_floats(v, KN_SHAPE(1, 1, 5, 7)), true);
    kn_tensor *y = kn_adaptive_avg_pool2d(x, 3, 4);
    KN_ASSERT_SHAPE(y, KN_SHAPE(1, 1, 3, 4));
    KN_ASSERT_CLOSE(y, {4, 5.5f, 7.5f, 9, 14.5f, 16, 18, 19.5f, 25, 26.5f, 28.5f, 30});
    float g[12];
    for (int i = 0; i < 12; i++) g[i] = (float)i;
    ASSERT_OK(kn_backward(y, kn_from_floats(g, KN_SHAPE(1, 1, 3, 4)), false));
    KN_ASSERT_CLOSE(kn_grad(x), {0,
                                 0.166666672f,
                                 0.166666672f,
                                 0.5f,
                                 0.333333343f,
                                 1.08333337f,
                                 0.75f,
                                 0.666666687f,
                                 1.38888884f,
                                 0.722222209f,
                                 1.72222233f,
                                 1,
                                 2.91666651f,
                                 1.91666663f,
                                 0.666666687f,
                                 1.22222221f,
                                 0.555555522f,
                                 1.22222221f,
                                 0.666666687f,
                                 1.83333325f,
                                 1.16666663f,
                                 2.66666675f,
                                 4.72222233f,
                                 2.05555558f,
                                 4.38888884f,
                                 2.33333325f,
                                 6.25f,
                                 3.91666651f,
                                 2,
                                 3.5f,
                                 1.5f,
                                 3.16666651f,
                                 1.66666663f,
                                 4.41666651f,
                                 2.75f});
    kn_scope_end();
}

/* PyTorch's window rule, one plane after another, in the order the op sums: the
 * reference for the bits of the uniform-window path (avg_pool2d's kernel). */
static void adaptive_reference(const float *x, const float *gy, int64_t planes, int64_t h,
                               int64_t w, int64_t oh, int64_t ow, float *y, float *gx)
{
    memset(gx, 0, sizeof(float) * (size_t)(planes * h * w));
    for (int64_t p = 0; p < planes; p++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++) {
                int64_t h0 = i * h / oh, h1 = ((i + 1) * h + oh - 1) / oh;
                int64_t w0 = j * w / ow, w1 = ((j + 1) * w + ow - 1) / ow;
                float sum = 0.f, count = (float)((h1 - h0) * (w1 - w0));
                for (int64_t r = h0; r < h1; r++)
                    for (int64_t c = w0; c < w1; c++) sum += x[(p * h + r) * w + c];
                y[(p * oh + i) * ow + j] = sum / count;
                float g = gy[(p * oh + i) * ow + j] / count;
                for (int64_t r = h0; r < h1; r++)
                    for (int64_t c = w0; c < w1; c++) gx[(p * h + r) * w + c] += g;
            }
}

/* Windows that tile the plane (the ResNet's 14x14 -> 7x7) run as avg_pool2d: the same
 * bits as the window rule, forward and backward, on more planes than one thread takes. */
Test(nn_adaptive, uniform_windows_same_bits_as_the_window_rule)
{
    const int64_t cases[][4] = {{14, 14, 7, 7}, {12, 12, 4, 3}, {6, 9, 1, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        kn_scope_begin();
        int64_t n = 64, ch = 16, h = cases[c][0], w = cases[c][1], oh = cases[c][2],
                ow = cases[c][3], planes = n * ch;
        kn_tensor *x =
            kn_set_requires_grad(kn_test_uniform(KN_SHAPE(n, ch, h, w), -1, 1, 5 + c), true);
        kn_tensor *gy = kn_test_uniform(KN_SHAPE(n, ch, oh, ow), -1, 1, 9 + c);
        kn_tensor *y = kn_adaptive_avg_pool2d(x, (int)oh, (int)ow);
        cr_assert_not_null(y, "%s", kn_last_error());
        ASSERT_OK(kn_backward(y, gy, false));
        float *xv = malloc(sizeof(float) * (size_t)(planes * h * w)),
              *gyv = malloc(sizeof(float) * (size_t)(planes * oh * ow)),
              *want_y = malloc(sizeof(float) * (size_t)(planes * oh * ow)),
              *want_gx = malloc(sizeof(float) * (size_t)(planes * h * w)),
              *got_y = malloc(sizeof(float) * (size_t)(planes * oh * ow)),
              *got_gx = malloc(sizeof(float) * (size_t)(planes * h * w));
        kn_copy_to_floats(x, xv);
        kn_copy_to_floats(gy, gyv);
        kn_copy_to_floats(y, got_y);
        kn_copy_to_floats(kn_grad(x), got_gx);
        adaptive_reference(xv, gyv, planes, h, w, oh, ow, want_y, want_gx);
        cr_assert_eq(memcmp(got_y, want_y, sizeof(float) * (size_t)(planes * oh * ow)), 0,
                     "%lldx%lld -> %lldx%lld: values differ", (long long)h, (long long)w,
                     (long long)oh, (long long)ow);
        cr_assert_eq(memcmp(got_gx, want_gx, sizeof(float) * (size_t)(planes * h * w)), 0,
                     "%lldx%lld -> %lldx%lld: gradients differ", (long long)h, (long long)w,
                     (long long)oh, (long long)ow);
        free(xv);
        free(gyv);
        free(want_y);
        free(want_gx);
        free(got_y);
        free(got_gx);
        kn_scope_end();
    }
}

static kn_tensor *adaptive_fn(kn_tensor **inputs, void *context)
{
    const int *size = context;
    return kn_adaptive_avg_pool2d(inputs[0], size[0], size[1]);
}

Test(nn_adaptive, gradcheck_and_module)
{
    kn_scope_begin();
    kn_tensor *x = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(2, 3, 5, 6), -1, 1, 3), true);
    int up[2] = {7, 4}, down[2] = {2, 3};
    KN_ASSERT_GRADCHECK(adaptive_fn, &x, 1, up);
    KN_ASSERT_GRADCHECK(adaptive_fn, &x, 1, down);
    /* 1x1 output is the global mean; 3-D input works too */
    kn_module *m = kn_adaptive_avg_pool2d_new(1, 1);
    kn_tensor *y = kn_module_forward(m, kn_select(x, 0, 1));
    KN_ASSERT_SHAPE(y, KN_SHAPE(3, 1, 1));
    kn_tensor *mean = kn_mean(kn_select(x, 0, 1), KN_DIMS(1, 2), false);
    float want[3];
    kn_copy_to_floats(mean, want);
    KN_ASSERT_VALUES(y, want);
    cr_assert_null(kn_adaptive_avg_pool2d(kn_zeros(KN_SHAPE(4, 4), KN_FLOAT32), 2, 2));
    cr_assert(strstr(kn_last_error(), "got [4, 4]"), "%s", kn_last_error());
    cr_assert_null(kn_adaptive_avg_pool2d(x, 0, 2));
    kn_module_free(m);
    kn_scope_end();
}
