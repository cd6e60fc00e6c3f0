/*
 * test_sequence_layers.c — issue 12's layer rows (core/nn/layer_sequence.c): conv1d, elu,
 * log_softmax, group_norm and positional_embedding, and dropout on sequences. Modules
 * with a fixture's weights give the fixture's outputs and gradients (PyTorch 1.13,
 * tests/golden/generate.py), initialise as torch does for a seed, print torch's repr and
 * state_dict names, pass finite differences, go through specs (shapes, parameter counts
 * and the training-memory estimate), fail at run time naming the layer, and round-trip
 * with the equivalent torch modules (load_state_dict(strict=True), both directions;
 * skipped without /usr/bin/python3 and torch).
 */
#include "kapi.h"
#include "kn_layer.h"
#include "kn_safetensors.h"
#include "kn_test.h"
#include "kn_test_tokens.h"
#include "nn/nn_internal.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())
#define ASSERT_ERROR_HAS(text)                                                                     \
    cr_assert(strstr(kn_last_error(), (text)), "error '%s' should mention '%s'", kn_last_error(),  \
              (text))

/* ---- modules against the fixtures -------------------------------------------------------- */

/* Loads fixture entries into module m's parameters (names as the state dict's). */
static void load_from(kn_module *m, kn_golden *g, const char *const *names, int n)
{
    kn_named_tensor entries[4];
    for (int i = 0; i < n; i++) {
        snprintf(entries[i].name, sizeof entries[i].name, "%s", names[i]);
        entries[i].tensor = kn_golden_tensor(g, names[i]);
        entries[i].is_buffer = false;
        cr_assert_not_null(entries[i].tensor, "fixture entry %s", names[i]);
    }
    ASSERT_OK(kn_module_load_state_dict(m, entries, n, true));
}

/* forward of m on the fixture's input `input` (a leaf), compared with "out", then the
 * input's and the parameters' gradients with the fixture's. */
static void module_case(kn_module *m, const char *fixture, const char *input, double rtol,
                        double atol)
{
    kn_golden *g = kn_golden_load(fixture);
    cr_assert_not_null(g, "fixture %s", fixture);
    int n = 0;
    kn_named_tensor *params = kn_module_parameters(m, &n);
    const char *names[4];
    for (int i = 0; i < n; i++) names[i] = params[i].name;
    load_from(m, g, names, n);
    kn_tensor *x = kn_set_requires_grad(kn_golden_tensor(g, input), true);
    kn_tensor *out = kn_module_forward(m, x);
    cr_assert_not_null(out, "%s: %s", fixture, kn_last_error());
    KN_ASSERT_GOLDEN(g, out, "out", rtol, atol);
    ASSERT_OK(kn_backward(out, kn_golden_tensor(g, "grad_out"), false));
    char entry[sizeof "grad_" + sizeof params[0].name]; /* any parameter name fits */
    snprintf(entry, sizeof entry, "grad_%s", input);
    KN_ASSERT_GOLDEN(g, kn_grad(x), entry, rtol, atol);
    for (int i = 0; i < n; i++) {
        snprintf(entry, sizeof entry, "grad_%s", params[i].name);
        KN_ASSERT_GOLDEN(g, kn_grad(params[i].tensor), entry, rtol, atol);
    }
    free(params);
    kn_golden_free(g);
}

Test(sequence_layers, modules_give_the_fixtures_outputs_and_gradients)
{
    kn_scope_begin();
    kn_module *conv =
        kn_conv1d_new(2, 4, 3, (kn_conv1d_args){.stride = 2, .padding = 1}, true, NULL);
    cr_assert_not_null(conv, "%s", kn_last_error());
    module_case(conv, "conv1d_stride2_pad1", "x", 1e-4, 1e-4);
    kn_module *grouped =
        kn_conv1d_new(4, 6, 2, (kn_conv1d_args){.groups = 2}, true, NULL); /* groups */
    module_case(grouped, "conv1d_groups2", "x", 1e-4, 1e-4);
    kn_module *norm = kn_group_norm_new(2, 4, 1e-5, true);
    module_case(norm, "group_norm_affine", "x", 1e-4, 1e-5);
    kn_module *instance = kn_group_norm_new(3, 3, 1e-3, true);
    module_case(instance, "group_norm_instance", "x", 1e-4, 1e-5);
    kn_module *pos = kn_positional_embedding_new(5, 4, NULL);
    module_case(pos, "positional_embedding", "x", 1e-5, 1e-6);
    kn_module *elu = kn_elu_new(0.3);
    module_case(elu, "elu_alpha", "a", 1e-5, 1e-6);
    kn_module *log_softmax = kn_log_softmax_new(-1);
    module_case(log_softmax, "log_softmax_dimm1", "a", 1e-5, 1e-6);
    kn_module *modules[] = {conv, grouped, norm, instance, pos, elu, log_softmax};
    for (size_t i = 0; i < sizeof modules / sizeof *modules; i++) kn_module_free(modules[i]);
    kn_scope_end();
}

/* ---- initialisation, repr, state dict: torch's (tests/golden/sequence_expected.py) ------- */

Test(sequence_layers, initialise_as_torch)
{
    kn_scope_begin();
    kn_generator *gen = kn_generator_new(0);
    kn_module *conv = kn_conv1d_new(2, 4, 3, (kn_conv1d_args){0}, true, gen);
    KN_ASSERT_CLOSE(kn__module_tensor(conv, "weight"),
                    {-0.00305648171, 0.219002187,    -0.33600679,   -0.300445855,  -0.157238618,
                     0.109474786,    -0.00808869675, 0.323695779,   -0.0362296067, 0.10802763,
                     -0.123377971,   -0.0802474841,  -0.390019417,  -0.27037555,   -0.168289378,
                     0.0151229752,   0.161394924,    0.244958282,   -0.276768297,  -0.177776963,
                     0.148282766,    0.339004487,    -0.0840175748, 0.30549702});
    KN_ASSERT_CLOSE(kn__module_tensor(conv, "bias"),
                    {-0.0658028349, 0.0431984253, 0.369659126, -0.378719866});
    kn_generator_seed(gen, 0);
    kn_module *pos = kn_positional_embedding_new(5, 4, gen);
    KN_ASSERT_CLOSE(kn__module_tensor(pos, "weight"),
                    {-1.12583983,  -1.1523602,  -0.250578582, -0.433878809, 0.598839462,
                     -1.55509508,  -0.34136039, 1.85300612,   0.468096405,  -0.157712445,
                     1.44366014,   0.266049415, 1.38936615,   1.58633423,   0.946298361,
                     -0.843676746, 0.931826591, 1.25900924,   2.00498056,   0.0537369028});
    kn_module *norm = kn_group_norm_new(2, 4, 1e-5, true);
    KN_ASSERT_CLOSE(kn__module_tensor(norm, "weight"), {1, 1, 1, 1});
    KN_ASSERT_CLOSE(kn__module_tensor(norm, "bias"), {0, 0, 0, 0});
    kn_module *plain = kn_group_norm_new(3, 6, 1e-3, false);
    cr_assert_eq(kn_module_parameter_count(plain), 0);
    kn_module *modules[] = {conv, pos, norm, plain};
    for (size_t i = 0; i < sizeof modules / sizeof *modules; i++) kn_module_free(modules[i]);
    kn_generator_free(gen);
    kn_scope_end();
}

static void expect_repr(kn_module *m, const char *want)
{
    cr_assert_not_null(m, "%s", kn_last_error());
    char *repr = kn_module_describe(m);
    cr_expect_str_eq(repr, want);
    free(repr);
    kn_module_free(m);
}

Test(sequence_layers, print_as_torch)
{
    expect_repr(kn_conv1d_new(2, 4, 3, (kn_conv1d_args){0}, true, NULL),
                "Conv1d(2, 4, kernel_size=(3,), stride=(1,))");
    expect_repr(
        kn_conv1d_new(2, 4, 3,
                      (kn_conv1d_args){.stride = 2, .padding = 1, .dilation = 2, .groups = 2},
                      false, NULL),
        "Conv1d(2, 4, kernel_size=(3,), stride=(2,), padding=(1,), dilation=(2,), "
        "groups=2, bias=False)");
    expect_repr(kn_elu_new(1.0), "ELU(alpha=1.0)");
    expect_repr(kn_elu_new(0.3), "ELU(alpha=0.3)");
    expect_repr(kn_log_softmax_new(-1), "LogSoftmax(dim=-1)");
    expect_repr(kn_group_norm_new(2, 4, 1e-5, true), "GroupNorm(2, 4, eps=1e-05, affine=True)");
    expect_repr(kn_group_norm_new(3, 6, 1e-3, false), "GroupNorm(3, 6, eps=0.001, affine=False)");
    expect_repr(kn_positional_embedding_new(16, 8, NULL), "PositionalEmbedding(16, 8)");
}

Test(sequence_layers, constructors_check_their_arguments_as_torch)
{
    cr_assert_null(kn_conv1d_new(3, 4, 3, (kn_conv1d_args){.groups = 2}, true, NULL));
    ASSERT_ERROR_HAS("Conv1d: in_channels (3) and out_channels (4) must be divisible by groups "
                     "(2)");
    cr_assert_null(kn_conv1d_new(2, 4, 0, (kn_conv1d_args){0}, true, NULL));
    ASSERT_ERROR_HAS("Conv1d: kernel_size must be positive, got 0");
    cr_assert_null(kn_conv1d_new(2, 4, 3, (kn_conv1d_args){.padding = -1}, true, NULL));
    ASSERT_ERROR_HAS("Conv1d: padding must be non-negative, got -1");
    cr_assert_null(kn_group_norm_new(4, 6, 1e-5, true));
    ASSERT_ERROR_HAS("GroupNorm: num_channels (6) must be divisible by num_groups (4)");
    cr_assert_null(kn_group_norm_new(2, 4, NAN, true));
    ASSERT_ERROR_HAS("GroupNorm: expected a finite eps >= 0, got nan");
    cr_assert_null(kn_elu_new(INFINITY));
    ASSERT_ERROR_HAS("ELU: alpha must be finite, got inf");
    cr_assert_null(kn_positional_embedding_new(0, 8, NULL));
    ASSERT_ERROR_HAS("PositionalEmbedding: num_embeddings must be positive, got 0");
}

/* ---- finite differences -------------------------------------------------------------------- */

static kn_tensor *conv1d_fn(kn_tensor **in, void *context)
{
    return kn_conv1d(in[0], in[1], in[2], *(const kn_conv1d_args *)context);
}

static kn_tensor *group_norm_fn(kn_tensor **in, void *context)
{
    return kn_group_norm(in[0], *(const int64_t *)context, in[1], in[2], 1e-5);
}

static kn_tensor *module_fn(kn_tensor **in, void *context)
{
    return kn_module_forward(context, in[0]);
}

static kn_tensor *elu_fn(kn_tensor **in, void *context)
{
    (void)context;
    return kn_elu(in[0], 0.7);
}

static kn_tensor *sequence_ce_fn(kn_tensor **in, void *context)
{
    return kn_sequence_cross_entropy(in[0], context, KN_REDUCTION_MEAN, KN_DEFAULT_IGNORE_INDEX,
                                     0.1);
}

static kn_tensor *leaf(const int64_t *shape, int ndim, uint64_t seed)
{
    return kn_set_requires_grad(kn_test_uniform(shape, ndim, -1.5, 1.5, seed), true);
}

Test(sequence_layers, pass_finite_differences)
{
    kn_scope_begin();
    kn_conv1d_args args = {.stride = 2, .padding = 1, .dilation = 2, .groups = 2};
    kn_tensor *conv_in[3] = {leaf(KN_SHAPE(2, 4, 9), 1), leaf(KN_SHAPE(6, 2, 3), 2),
                             leaf(KN_SHAPE(6), 3)};
    KN_ASSERT_GRADCHECK(conv1d_fn, conv_in, 3, &args);
    int64_t groups = 2;
    kn_tensor *norm_in[3] = {leaf(KN_SHAPE(3, 4, 5), 4), leaf(KN_SHAPE(4), 5),
                             leaf(KN_SHAPE(4), 6)};
    KN_ASSERT_GRADCHECK(group_norm_fn, norm_in, 3, &groups);
    /* positional embedding: the gradient reaches the input and the table's first rows */
    kn_module *pos = kn_positional_embedding_new(6, 3, NULL);
    kn_tensor *x = leaf(KN_SHAPE(2, 4, 3), 7);
    KN_ASSERT_GRADCHECK(module_fn, &x, 1, pos);
    kn_tensor *elu_in = leaf(KN_SHAPE(3, 5), 8);
    KN_ASSERT_GRADCHECK(elu_fn, &elu_in, 1, NULL);
    kn_module *log_softmax = kn_log_softmax_new(1);
    kn_tensor *ls_in = leaf(KN_SHAPE(2, 5, 3), 9);
    KN_ASSERT_GRADCHECK(module_fn, &ls_in, 1, log_softmax);
    kn_tensor *target = kn_from_int64s((int64_t[]){0, 3, -100, 2, 4, -100}, KN_SHAPE(2, 3));
    kn_tensor *logits = leaf(KN_SHAPE(2, 3, 5), 10);
    KN_ASSERT_GRADCHECK(sequence_ce_fn, &logits, 1, target);
    kn_module_free(pos);
    kn_module_free(log_softmax);
    kn_scope_end();
}

/* ---- errors at run time name the layer ----------------------------------------------------- */

Test(sequence_layers, forward_errors_name_the_layer_and_shapes)
{
    kn_scope_begin();
    kn_module *m = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(m, kn_embedding_new(20, 8, NULL)));
    ASSERT_OK(kn_sequential_append(m, kn_positional_embedding_new(16, 8, NULL)));
    int64_t tokens[40] = {0};
    cr_assert_not_null(kn_module_forward(m, kn_from_int64s(tokens, KN_SHAPE(2, 16))), "%s",
                       kn_last_error());
    cr_assert_null(kn_module_forward(m, kn_from_int64s(tokens, KN_SHAPE(2, 20))));
    ASSERT_ERROR_HAS("layer 1 (positional_embedding): PositionalEmbedding: the input [2, 20, 8] "
                     "has 20 positions, more than num_embeddings (16)");
    /* shape inference says the same before anything runs */
    int64_t out[KN_MAX_DIMS];
    int out_ndim;
    cr_assert_neq(kn_module_output_shape(m, (int64_t[]){20}, 1, out, &out_ndim), KN_OK);
    ASSERT_ERROR_HAS("layer 1 (positional_embedding): num_embeddings: expected at least the "
                     "input's 20 positions (input [20, 8]), got 16");
    ASSERT_OK(kn_module_output_shape(m, (int64_t[]){12}, 1, out, &out_ndim));
    cr_assert_eq(out_ndim, 2);
    cr_assert_eq(out[0], 12);
    cr_assert_eq(out[1], 8);
    kn_module_free(m);

    kn_module *norm = kn_group_norm_new(2, 4, 1e-5, true);
    cr_assert_null(kn_module_forward(norm, kn_zeros(KN_SHAPE(2, 6, 3), KN_FLOAT32)));
    ASSERT_ERROR_HAS("GroupNorm: expected an input [N, 4, *] (num_channels 4 in dim 1), got [2, "
                     "6, 3]");
    kn_module_free(norm);
    cr_assert_null(kn_group_norm(kn_zeros(KN_SHAPE(2, 6), KN_FLOAT32), 4, NULL, NULL, 1e-5));
    ASSERT_ERROR_HAS("group_norm: expected the number of channels of the input [2, 6] (6) to be "
                     "divisible by num_groups, got num_groups 4");
    kn_module *conv = kn_conv1d_new(3, 4, 3, (kn_conv1d_args){0}, true, NULL);
    cr_assert_null(kn_module_forward(conv, kn_zeros(KN_SHAPE(2, 3, 8, 8), KN_FLOAT32)));
    ASSERT_ERROR_HAS("conv1d: expected a 2-D [C, L] or 3-D [N, C, L] input, got [2, 3, 8, 8]");
    cr_assert_null(kn_module_forward(conv, kn_zeros(KN_SHAPE(2, 2, 8), KN_FLOAT32)));
    ASSERT_ERROR_HAS("conv1d: input [2, 2, 8] has 2 channels but weight [4, 3, 3] expects 3");
    cr_assert_null(kn_module_forward(conv, kn_zeros(KN_SHAPE(2, 3, 2), KN_FLOAT32)));
    ASSERT_ERROR_HAS("conv1d: input [2, 3, 2] of length 2 (padded 2) is shorter than the "
                     "kernel's span 3");
    kn_module_free(conv);
    kn_scope_end();
}

/* ---- dropout on any shape ------------------------------------------------------------------ */

Test(sequence_layers, dropout_on_sequences_matches_torch)
{
    kn_scope_begin();
    /* torch.manual_seed(7); F.dropout(torch.arange(1., 25.).reshape(2, 3, 4), 0.25, True) */
    static const float want[24] = {1.33333337f, 2.66666675f, 0,  5.33333349f, 0,           0,
                                   9.33333397f, 10.666667f,  0,  0,           14.666667f,  16,
                                   17.333334f,  18.6666679f, 20, 0,           22.6666679f, 0,
                                   25.333334f,  0,           0,  0,           30.6666679f, 32};
    float v[24];
    for (int i = 0; i < 24; i++) v[i] = (float)(i + 1);
    kn_module *dropout = kn_dropout_new(0.25);
    kn_manual_seed(7);
    kn_tensor *x = kn_set_requires_grad(kn_from_floats(v, KN_SHAPE(2, 3, 4)), true);
    kn_tensor *y = kn_module_forward(dropout, x);
    KN_ASSERT_VALUES(y, want);
    /* the gradient is the same scaled mask */
    ASSERT_OK(kn_backward(kn_sum_all(y), NULL, false));
    float grad[24];
    for (int i = 0; i < 24; i++) grad[i] = want[i] == 0 ? 0 : 1 / 0.75f;
    KN_ASSERT_VALUES(kn_grad(x), grad);
    /* evaluation: the identity, on a strided [N, T, C] view too */
    kn_module_train(dropout, false);
    kn_tensor *strided = kn_transpose(kn_from_floats(v, KN_SHAPE(3, 2, 4)), 0, 1);
    kn_tensor *same = kn_module_forward(dropout, strided);
    KN_ASSERT_SHAPE(same, KN_SHAPE(2, 3, 4));
    float expected[24];
    ASSERT_OK(kn_copy_to_floats(strided, expected));
    KN_ASSERT_VALUES(same, expected);
    kn_module_free(dropout);
    kn_scope_end();
}

/* ---- specs: shapes, parameters, summary, memory ------------------------------------------- */

static const char TOKENS_MODEL[] =
    "{\"name\": \"tokens\", \"input_shape\": [12], \"layers\": ["
    "{\"type\": \"embedding\", \"num_embeddings\": 20, \"embedding_dim\": 8},"
    "{\"type\": \"positional_embedding\", \"num_embeddings\": 16},"
    "{\"type\": \"layer_norm\"},"
    "{\"type\": \"linear\", \"in_features\": 8, \"out_features\": 16},"
    "{\"type\": \"elu\", \"alpha\": 0.5}, {\"type\": \"dropout\", \"p\": 0.1},"
    "{\"type\": \"linear\", \"in_features\": 16, \"out_features\": 20},"
    "{\"type\": \"log_softmax\", \"dim\": -1}]}";

static const char SIGNAL_MODEL[] =
    "{\"name\": \"signal\", \"input_shape\": [2, 16], \"layers\": ["
    "{\"type\": \"conv1d\", \"out_channels\": 4, \"kernel_size\": 3, \"padding\": 1},"
    "{\"type\": \"group_norm\", \"num_groups\": 2}, {\"type\": \"elu\"},"
    "{\"type\": \"conv1d\", \"out_channels\": 6, \"kernel_size\": 3, \"stride\": 2, "
    "\"dilation\": 2, \"groups\": 2, \"bias\": false},"
    "{\"type\": \"flatten\"}, {\"type\": \"linear\", \"out_features\": 3},"
    "{\"type\": \"log_softmax\", \"dim\": 1}]}";

static void expect_shape(const kapi_layer_spec *layer, const int64_t *shape, int ndim)
{
    cr_assert_eq(layer->out_ndim, ndim, "%s", layer->type);
    for (int d = 0; d < ndim; d++)
        cr_assert_eq(layer->out_shape[d], shape[d], "%s dim %d", layer->type, d);
}

Test(sequence_layers, specs_infer_shapes_parameters_and_memory)
{
    kapi_model_spec *tokens = kn_test_parse_model(TOKENS_MODEL);
    cr_assert_eq(tokens->input_dtype, KN_INT64);
    expect_shape(&tokens->layers[1], KN_SHAPE(12, 8));
    cr_assert_eq(tokens->layers[1].options.positional_embedding.embedding_dim, 8, "inferred");
    expect_shape(&tokens->layers[7], KN_SHAPE(12, 20));
    /* sum(p.numel()) of the torch module (tests/golden/sequence_torch_check.py) */
    const int64_t params[] = {160, 128, 16, 144, 0, 0, 340, 0};
    for (int i = 0; i < 8; i++) cr_expect_eq(tokens->layers[i].parameter_count, params[i], "%d", i);
    cr_assert_eq(tokens->parameter_count, 788);
    /* weights, grads, Adam's 2 states; int64 input at 8 bytes; 2x each output */
    int64_t acts = 2 * (96 + 96 + 96 + 192 + 192 + 192 + 240 + 240);
    cr_assert_eq(kapi_model_training_memory(tokens, 32, KN_OPTIM_ADAM),
                 4 * 788 * 4 + 32 * (8 * 12 + 4 * acts));

    kapi_model_spec *signal = kn_test_parse_model(SIGNAL_MODEL);
    cr_assert_eq(signal->input_dtype, KN_FLOAT32);
    expect_shape(&signal->layers[0], KN_SHAPE(4, 16));
    cr_assert_eq(signal->layers[1].options.group_norm.num_channels, 4, "inferred");
    expect_shape(&signal->layers[3], KN_SHAPE(6, 6));
    cr_assert_eq(signal->layers[3].options.conv1d.in_channels, 4, "inferred");
    expect_shape(&signal->layers[6], KN_SHAPE(3));
    const int64_t sig_params[] = {28, 8, 0, 36, 0, 111, 0};
    for (int i = 0; i < 7; i++)
        cr_expect_eq(signal->layers[i].parameter_count, sig_params[i], "%d", i);
    cr_assert_eq(signal->parameter_count, 183);
    /* group_norm keeps its normalised values (64 per sample) besides its output */
    cr_assert_eq(signal->layers[1].saved_elements, 64);
    acts = 2 * (64 + 64 + 64 + 36 + 36 + 3 + 3) + 64;
    cr_assert_eq(kapi_model_training_memory(signal, 10, KN_OPTIM_SGD),
                 4 * 183 * 3 + 10 * (4 * 32 + 4 * acts));
    char *summary = kapi_model_spec_summary_json(signal, 10);
    cr_assert(strstr(summary, "\"type\":\"group_norm\",\"output_shape\":[4,16],\"parameters\":8"),
              "%s", summary);
    free(summary);
    kapi_model_spec_free(tokens);
    kapi_model_spec_free(signal);
}

/* The same layers as the nodes of a graph spec (issue 12's graph specs): the int64 input
 * is the model's (the data path keeps the tokens int64 for it), parameter counts and the
 * training-memory estimate (group_norm's saved values, 8-byte tokens) are the chain's, the
 * graph gives the chain's outputs for the same seed, and a sequence longer than the
 * positional table is an error naming the node, at validation and at run time. */
static const char TOKENS_GRAPH[] =
    "{\"name\": \"tokens\", \"inputs\": [{\"name\": \"tokens\", \"shape\": [12], \"dtype\": "
    "\"int64\"}], \"nodes\": ["
    "{\"name\": \"wte\", \"type\": \"embedding\", \"num_embeddings\": 20, \"embedding_dim\": 8},"
    "{\"name\": \"wpe\", \"type\": \"positional_embedding\", \"num_embeddings\": 16},"
    "{\"name\": \"ln\", \"type\": \"layer_norm\"},"
    "{\"name\": \"fc\", \"type\": \"linear\", \"out_features\": 16},"
    "{\"name\": \"act\", \"type\": \"elu\", \"alpha\": 0.5},"
    "{\"name\": \"drop\", \"type\": \"dropout\", \"p\": 0.1},"
    "{\"name\": \"head\", \"type\": \"linear\", \"out_features\": 20},"
    "{\"name\": \"logp\", \"type\": \"log_softmax\", \"dim\": -1}], \"outputs\": [\"logp\"]}";

static const char SIGNAL_GRAPH[] =
    "{\"name\": \"signal\", \"inputs\": [{\"name\": \"x\", \"shape\": [2, 16]}], \"nodes\": ["
    "{\"name\": \"c1\", \"type\": \"conv1d\", \"out_channels\": 4, \"kernel_size\": 3, "
    "\"padding\": 1},"
    "{\"name\": \"gn\", \"type\": \"group_norm\", \"num_groups\": 2},"
    "{\"name\": \"act\", \"type\": \"elu\"},"
    "{\"name\": \"c2\", \"type\": \"conv1d\", \"out_channels\": 6, \"kernel_size\": 3, \"stride\": "
    "2, \"dilation\": 2, \"groups\": 2, \"bias\": false},"
    "{\"name\": \"flat\", \"type\": \"flatten\"}, {\"name\": \"fc\", \"type\": \"linear\", "
    "\"out_features\": 3},"
    "{\"name\": \"logp\", \"type\": \"log_softmax\", \"dim\": 1}], \"outputs\": [\"logp\"]}";

/* chain and graph built from one seed give the same output for x */
static void expect_same_model(const char *chain_json, const char *graph_json, kn_tensor *x)
{
    kapi_model_spec *chain = kn_test_parse_model(chain_json);
    kapi_model_spec *graph = kn_test_parse_model(graph_json);
    cr_assert(graph->graph);
    cr_assert_eq(graph->input_dtype, chain->input_dtype);
    cr_assert_eq(graph->parameter_count, chain->parameter_count);
    for (int i = 0; i < chain->n_layers; i++)
        cr_expect_eq(graph->layers[i].saved_elements, chain->layers[i].saved_elements, "%d", i);
    cr_assert_eq(kapi_model_training_memory(graph, 32, KN_OPTIM_ADAM),
                 kapi_model_training_memory(chain, 32, KN_OPTIM_ADAM));
    kn_generator *g1 = kn_generator_new(3), *g2 = kn_generator_new(3);
    kn_module *a = kapi_model_build(chain, g1), *b = kapi_model_build(graph, g2);
    cr_assert(a && b, "%s", kn_last_error());
    kn_module_train(a, false);
    kn_module_train(b, false);
    kn_tensor *ya = kn_module_forward(a, x), *yb = kn_module_forward(b, x);
    cr_assert(ya && yb, "%s", kn_last_error());
    KN_ASSERT_SHAPE(yb, ya->shape, ya->ndim);
    float *want = malloc(sizeof(float) * (size_t)kn_numel(ya));
    ASSERT_OK(kn_copy_to_floats(ya, want));
    char msg[256];
    cr_assert(kn_test_close(yb, want, kn_numel(ya), 1e-6, 1e-7, msg, sizeof msg), "%s", msg);
    free(want);
    kn_module_free(a);
    kn_module_free(b);
    kn_generator_free(g1);
    kn_generator_free(g2);
    kapi_model_spec_free(chain);
    kapi_model_spec_free(graph);
}

Test(sequence_layers, the_layers_work_as_graph_nodes)
{
    kn_scope_begin();
    int64_t tokens[2 * 20];
    for (int i = 0; i < 40; i++) tokens[i] = (i * 7) % 20;
    expect_same_model(TOKENS_MODEL, TOKENS_GRAPH, kn_from_int64s(tokens, KN_SHAPE(2, 12)));
    float signal[2 * 2 * 16];
    for (int i = 0; i < 64; i++) signal[i] = (float)((i * 37) % 11) / 5.0f - 1.0f;
    expect_same_model(SIGNAL_MODEL, SIGNAL_GRAPH, kn_from_floats(signal, KN_SHAPE(2, 2, 16)));

    /* a longer sequence than wpe's 16 rows, at run time */
    kapi_model_spec *spec = kn_test_parse_model(TOKENS_GRAPH);
    kn_module *m = kapi_model_build(spec, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    cr_assert_null(kn_module_forward(m, kn_from_int64s(tokens, KN_SHAPE(2, 20))));
    ASSERT_ERROR_HAS("wpe");
    ASSERT_ERROR_HAS("PositionalEmbedding: the input [2, 20, 8] has 20 positions, more than "
                     "num_embeddings (16)");
    kn_module_free(m);
    kapi_model_spec_free(spec);
    /* and at validation (tests/specs/invalid/model-graph-positional-too-long.json too) */
    char *longer = strdup(TOKENS_GRAPH);
    memcpy(strstr(longer, "[12]"), "[20]", 4);
    kapi_errors errors = {0};
    cr_assert_null(kapi_model_spec_parse(longer, strlen(longer), &errors));
    cr_assert_str_eq(errors.items[0].path, "nodes[1].num_embeddings");
    cr_assert(strstr(errors.items[0].message, "node wpe: expected at least the input's 20 "
                                              "positions (input [20, 8]), got 16"),
              "%s", errors.items[0].message);
    kapi_errors_free(&errors);
    free(longer);
    kn_scope_end();
}

/* ---- the torch modules: weights both ways ---------------------------------------------------- */

static bool have_torch(void)
{
    return system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") == 0;
}

static void temp_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/seq-layers-%d-%s", KILN_BINARY_DIR, (int)getpid(), name);
}

static int python(const char *mode, const char *model, int seed, const char *weights,
                  const char *io)
{
    char command[1536];
    snprintf(command, sizeof command,
             "/usr/bin/python3 '%s/tests/golden/sequence_torch_check.py' %s %s %d '%s' '%s'",
             KILN_SOURCE_DIR, mode, model, seed, weights, io);
    int rc = system(command);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* The inputs sequence_torch_check.py's export uses are in its io file; Kiln's own check
 * draws its own. */
static kn_tensor *inputs_for(const kapi_model_spec *spec)
{
    if (spec->input_dtype == KN_INT64) {
        int64_t tokens[60];
        for (int i = 0; i < 60; i++) tokens[i] = (i * 7 + 3) % 20;
        return kn_from_int64s(tokens, KN_SHAPE(5, 12));
    }
    return kn_test_uniform(KN_SHAPE(5, 2, 16), -2, 2, 17);
}

static void round_trip(const char *json, const char *name)
{
    kn_scope_begin();
    char weights[512], io[512];
    temp_path(weights, sizeof weights, "weights.safetensors");
    temp_path(io, sizeof io, "io.safetensors");
    kapi_model_spec *spec = kn_test_parse_model(json);
    /* Kiln to torch: the initial weights for seed 5 are torch's, and give its outputs */
    kn_generator *gen = kn_generator_new(5);
    kn_module *m = kapi_model_build(spec, gen);
    kn_generator_free(gen);
    cr_assert_not_null(m, "%s", kn_last_error());
    kn_module_train(m, false);
    ASSERT_OK(kn_module_save_weights(m, weights));
    kn_tensor *x = inputs_for(spec);
    kn_tensor *y = kn_module_forward(m, x);
    cr_assert_not_null(y, "%s", kn_last_error());
    const char *names[] = {"inputs", "outputs"};
    kn_tensor *tensors[] = {x, y};
    ASSERT_OK(kn_safetensors_save(io, names, tensors, 2, NULL, 0));
    cr_assert_eq(python("check", name, 5, weights, io), 0, "torch disagrees with Kiln (%s)", name);
    /* torch to Kiln: its trained-looking weights load strictly and give its outputs */
    cr_assert_eq(python("export", name, 9, weights, io), 0, "the export failed (%s)", name);
    ASSERT_OK(kn_module_load_weights(m, weights, true));
    kn_safetensors *file = kn_safetensors_load(io);
    cr_assert_not_null(file, "%s", kn_last_error());
    kn_tensor *inputs = kn_safetensors_get(file, "inputs"),
              *outputs = kn_safetensors_get(file, "outputs");
    cr_assert(inputs && outputs, "%s", io);
    kn_tensor *out = kn_module_forward(m, inputs);
    cr_assert_not_null(out, "%s", kn_last_error());
    float *want = malloc(sizeof(float) * (size_t)kn_numel(outputs));
    ASSERT_OK(kn_copy_to_floats(outputs, want));
    char message[256];
    cr_assert(kn_test_close(out, want, kn_numel(outputs), 1e-4, 1e-4, message, sizeof message),
              "%s: %s", name, message);
    free(want);
    kn_safetensors_free(file);
    kn_module_free(m);
    kapi_model_spec_free(spec);
    unlink(weights);
    unlink(io);
    kn_scope_end();
}

Test(sequence_layers, weights_move_to_and_from_torch_strictly)
{
    if (!have_torch()) {
        printf("sequence_layers.weights_move_to_and_from_torch_strictly: skipped "
               "(no /usr/bin/python3 with torch)\n");
        return;
    }
    round_trip(TOKENS_MODEL, "tokens");
    round_trip(SIGNAL_MODEL, "signal");
}

/* ---- int64 tensors in the ops ------------------------------------------------------------ */

Test(sequence_layers, to_dtype_saturates_and_keeps_what_it_can)
{
    kn_scope_begin();
    kn_tensor *x =
        kn_from_floats((float[]){NAN, INFINITY, -INFINITY, 9.3e18f, -9.3e18f, -0.9f}, KN_SHAPE(6));
    kn_tensor *i = kn_to_dtype(x, KN_INT64);
    cr_assert_not_null(i, "%s", kn_last_error());
    const int64_t want[6] = {INT64_MIN, INT64_MAX, INT64_MIN, INT64_MAX, INT64_MIN, 0};
    for (int k = 0; k < 6; k++) cr_assert_eq(kn_data_i64(i)[k], want[k], "element %d", k);
    /* the same dtype is the same tensor, and its gradient still flows */
    kn_tensor *leaf = kn_set_requires_grad(kn_ones(KN_SHAPE(3), KN_FLOAT32), true);
    kn_tensor *same = kn_to_dtype(leaf, KN_FLOAT32);
    cr_assert_eq(same, leaf);
    ASSERT_OK(kn_backward(kn_sum_all(kn_mul(same, same)), NULL, false));
    KN_ASSERT_CLOSE(kn_grad(leaf), {2, 2, 2});
    /* an int64 result never asks for a gradient */
    cr_assert_not(kn_to_dtype(leaf, KN_INT64)->requires_grad);
    cr_assert_null(kn_to_dtype(leaf, (kn_dtype)7));
    ASSERT_ERROR_HAS("to_dtype: unknown dtype 7 (expected float32 or int64)");
    kn_scope_end();
}

Test(sequence_layers, int64_arithmetic_is_exact_and_errors_name_the_op)
{
    kn_scope_begin();
    kn_tensor *big = kn_from_int64s((int64_t[]){(int64_t)1 << 53, INT64_MAX}, KN_SHAPE(2));
    kn_tensor *one = kn_from_int64s((int64_t[]){1}, KN_SHAPE(1));
    kn_tensor *sum = kn_add(big, one);
    cr_assert_eq(sum->dtype, KN_INT64);
    cr_assert_eq(kn_data_i64(sum)[0], ((int64_t)1 << 53) + 1, "exact beyond float's 2^24");
    cr_assert_eq(kn_data_i64(sum)[1], INT64_MIN, "wraps as torch's");
    kn_tensor *eq = kn_eq(kn_sub(sum, one), big);
    KN_ASSERT_CLOSE(eq, {1, 1});
    /* key padding masks: tokens == pad */
    kn_tensor *tokens = kn_from_int64s((int64_t[]){5, 0, 0, 3, 9, 0}, KN_SHAPE(2, 3));
    KN_ASSERT_CLOSE(kn_eq(tokens, kn_zeros(KN_SHAPE(1), KN_INT64)), {0, 1, 1, 0, 0, 1});
    cr_assert_null(kn_add(tokens, kn_zeros(KN_SHAPE(2), KN_INT64)));
    ASSERT_ERROR_HAS("add: shapes [2, 3] and [2] cannot be broadcast");
    cr_assert_null(kn_mul(tokens, NULL));
    cr_assert_null(kn_sequence_cross_entropy(kn_zeros(KN_SHAPE(2, 3, 4), KN_FLOAT32), tokens,
                                             KN_REDUCTION_MEAN, -100, 0));
    ASSERT_ERROR_HAS("cross_entropy: target 5 is out of bounds for 4 classes");
    cr_assert_null(kn_sequence_cross_entropy(kn_zeros(KN_SHAPE(2, 4, 3), KN_FLOAT32),
                                             kn_zeros(KN_SHAPE(2, 3), KN_INT64), KN_REDUCTION_MEAN,
                                             -100, 0));
    ASSERT_ERROR_HAS("sequence_cross_entropy: target of shape [2, 3] does not match scores of "
                     "shape [2, 4, 3] (classes on the last dim: expected target shape [2, 4])");
    kn_scope_end();
}
