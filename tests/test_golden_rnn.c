/*
 * test_golden_rnn.c — the recurrent layers against PyTorch 1.13 fixtures
 * (tests/golden/generate.py, section "rnn"): the one-layer ops kn_lstm and kn_gru with
 * initial states, both directions, with and without biases, with saturated gates; whole nn.LSTM / nn.GRU
 * modules (several layers, bidirectional, no bias, a non-contiguous input, torch's
 * sequence-first layout, dropout between layers in training, the "last" output against
 * torch's h_n) with their parameters loaded by state_dict name; forward and every
 * gradient; and the parameters a seed gives, bit for bit.
 */
#include "golden/golden_case.h"
#include "kn_nn.h"

#include <stdlib.h>

/* GEMMs summed in another order than torch's, compounded over the steps: here every
 * value agrees within 1e-5 relative, 1e-6 absolute; the absolute slack of GOLDEN_BLAS_TOL
 * leaves room for other CPUs' BLAS kernels. */
#define RNN_TOL GOLDEN_BLAS_TOL

/* The fixture's grad_NAME against t's gradient. */
static void check_grad(kn_golden *g, const char *name, kn_tensor *t)
{
    char entry[128];
    snprintf(entry, sizeof entry, "grad_%s", name);
    cr_assert_not_null(t->grad, "%s has no gradient", name);
    golden_check(g, t->grad, entry, RNN_TOL);
}

/* ---- the one-layer ops ------------------------------------------------------------------- */

static void layer_case(const char *name, bool lstm, bool reverse, bool bias)
{
    GOLDEN_BEGIN(name);
    kn_tensor *x = golden_leaf(g, "x"), *h0 = golden_leaf(g, "h0");
    kn_tensor *c0 = lstm ? golden_leaf(g, "c0") : NULL;
    kn_rnn_weights w = {golden_leaf(g, "w_ih"), golden_leaf(g, "w_hh"), NULL, NULL};
    if (bias) {
        w.b_ih = golden_leaf(g, "b_ih");
        w.b_hh = golden_leaf(g, "b_hh");
    }
    kn_tensor *out = lstm ? kn_lstm(x, h0, c0, w, reverse) : kn_gru(x, h0, w, reverse);
    cr_assert_not_null(out, "%s", kn_last_error());
    golden_check(g, out, "out", RNN_TOL);
    golden_backward(g, out, RNN_TOL, "x", x, "h0", h0, "w_ih", w.w_ih, "w_hh", w.w_hh, NULL);
    if (c0) check_grad(g, "c0", c0);
    if (bias) {
        check_grad(g, "b_ih", w.b_ih);
        check_grad(g, "b_hh", w.b_hh);
    }
    GOLDEN_END();
}

Test(golden_rnn, lstm_layer)
{
    layer_case("lstm_layer", true, false, true);
}
Test(golden_rnn, lstm_layer_reverse)
{
    layer_case("lstm_layer_reverse", true, true, true);
}
Test(golden_rnn, gru_layer)
{
    layer_case("gru_layer", false, false, true);
}
Test(golden_rnn, gru_layer_reverse)
{
    layer_case("gru_layer_reverse", false, true, true);
}
Test(golden_rnn, gru_layer_nobias)
{
    layer_case("gru_layer_nobias", false, false, false);
}
Test(golden_rnn, lstm_layer_large)
{
    layer_case("lstm_layer_large", true, false, true);
}
Test(golden_rnn, gru_layer_large)
{
    layer_case("gru_layer_large", false, true, true);
}

/* ---- whole modules ------------------------------------------------------------------------ */

/* A module of kind with options o (input_size from the fixture's x, last dim), its
 * parameters loaded strictly from the fixture entries of the same names, on the test's
 * device. */
static kn_module *module_from(kn_golden *g, kn_module_kind kind, kn_rnn_options o)
{
    kn_tensor *x = kn_golden_tensor(g, "x");
    cr_assert_not_null(x);
    o.input_size = x->shape[x->ndim - 1];
    kn_layer_options options = {.rnn = o};
    kn_module *m = kn_module_new(kind, &options, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    int n;
    kn_named_tensor *entries = kn_module_state_dict(m, &n);
    cr_assert_not_null(entries);
    for (int i = 0; i < n; i++) {
        entries[i].tensor = kn_golden_tensor(g, entries[i].name);
        cr_assert_not_null(entries[i].tensor, "the fixture has no %s", entries[i].name);
    }
    cr_assert_eq(kn_module_load_state_dict(m, entries, n, true), KN_OK, "%s", kn_last_error());
    free(entries);
#ifdef KN_GOLDEN_CUDA
    cr_assert_eq(kn_module_to(m, kn_test_cuda0), KN_OK, "%s", kn_last_error());
#endif
    return m;
}

typedef enum { AS_IS, TRANSPOSED } x_view;

static void module_case(const char *name, kn_module_kind kind, kn_rnn_options o, x_view view,
                        bool training)
{
    GOLDEN_BEGIN(name);
    kn_module *m = module_from(g, kind, o);
    kn_module_train(m, training);
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *y = kn_module_forward(m, view == TRANSPOSED ? kn_transpose(x, 0, 1) : x);
    cr_assert_not_null(y, "%s", kn_last_error());
    golden_check(g, y, "out", RNN_TOL);
    golden_backward(g, y, RNN_TOL, "x", x, NULL);
    int n;
    kn_named_tensor *params = kn_module_parameters(m, &n);
    for (int i = 0; i < n; i++) check_grad(g, params[i].name, params[i].tensor);
    free(params);
    kn_module_free(m);
    GOLDEN_END();
}

static kn_rnn_options options(int64_t hidden, int64_t layers, bool bidirectional)
{
    kn_layer_options o;
    kn_layer_defaults(KN_MODULE_LSTM, &o);
    o.rnn.hidden_size = hidden;
    o.rnn.num_layers = layers;
    o.rnn.bidirectional = bidirectional;
    return o.rnn;
}

Test(golden_rnn, lstm_module_2layer_bidir)
{
    module_case("lstm_module_2layer_bidir", KN_MODULE_LSTM, options(4, 2, true), AS_IS, false);
}
Test(golden_rnn, gru_module_2layer_bidir)
{
    module_case("gru_module_2layer_bidir", KN_MODULE_GRU, options(4, 2, true), AS_IS, false);
}
Test(golden_rnn, lstm_module_3layer_nobias)
{
    kn_rnn_options o = options(3, 3, false);
    o.bias = false;
    module_case("lstm_module_3layer_nobias", KN_MODULE_LSTM, o, AS_IS, false);
}
/* x [T, N, F].transpose(0, 1): batch-first but not contiguous */
Test(golden_rnn, lstm_module_noncontig)
{
    module_case("lstm_module_noncontig", KN_MODULE_LSTM, options(5, 1, false), TRANSPOSED, false);
}
Test(golden_rnn, gru_module_noncontig)
{
    module_case("gru_module_noncontig", KN_MODULE_GRU, options(5, 2, false), TRANSPOSED, false);
}
/* batch_first false: torch's [T, N, F] */
Test(golden_rnn, gru_module_seq_first)
{
    kn_rnn_options o = options(4, 1, true);
    o.batch_first = false;
    module_case("gru_module_seq_first", KN_MODULE_GRU, o, AS_IS, false);
}
/* dropout 1 between layers in training zeroes the second layer's input, as in torch */
Test(golden_rnn, lstm_module_dropout1_train)
{
    kn_rnn_options o = options(3, 2, false);
    o.dropout = 1.0;
    module_case("lstm_module_dropout1_train", KN_MODULE_LSTM, o, AS_IS, true);
}
/* output "last" is torch's h_n[-D:] side by side */
Test(golden_rnn, lstm_module_last_bidir)
{
    kn_rnn_options o = options(4, 2, true);
    o.output = KN_RNN_OUTPUT_LAST;
    module_case("lstm_module_last_bidir", KN_MODULE_LSTM, o, AS_IS, false);
}
Test(golden_rnn, gru_module_last)
{
    kn_rnn_options o = options(4, 1, false);
    o.output = KN_RNN_OUTPUT_LAST;
    module_case("gru_module_last", KN_MODULE_GRU, o, AS_IS, false);
}

/* ---- initialisation ----------------------------------------------------------------------- */

/* kn_manual_seed(seed) then the module: every parameter equals torch's bit for bit. */
static void init_case(const char *name, kn_module_kind kind, uint64_t seed, kn_rnn_options o)
{
    GOLDEN_BEGIN(name);
    kn_manual_seed(seed);
    kn_layer_options options = {.rnn = o};
    kn_module *m = kn_module_new(kind, &options, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    int n;
    kn_named_tensor *params = kn_module_parameters(m, &n);
    int expected = 0;
    for (int i = 0; i < n; i++) {
        KN_ASSERT_GOLDEN(g, params[i].tensor, params[i].name, 0.0, 0.0); /* on the cpu */
        expected++;
    }
    cr_assert_gt(expected, 0);
    free(params);
    kn_module_free(m);
    GOLDEN_END();
}

Test(golden_rnn, lstm_init_is_torchs)
{
    kn_rnn_options o = options(5, 2, true);
    o.input_size = 3;
    init_case("lstm_init", KN_MODULE_LSTM, 1234, o);
}
Test(golden_rnn, gru_init_is_torchs)
{
    kn_rnn_options o = options(7, 1, false);
    o.input_size = 4;
    o.bias = false;
    init_case("gru_init", KN_MODULE_GRU, 99, o);
}
