/*
 * test_golden_graph.c — the structure nodes of graph specs (issue 12) against PyTorch
 * fixtures (tests/golden/data/graph_*.bin): each row (add and mul of several
 * broadcasting inputs, concat of a non-contiguous input, split and chunk with their
 * parts combined, reshape that must copy, permute, transpose, matmul of broadcast
 * batches, mean over dims, slice with a step, select) run through its module, forward
 * and backward; and a block of structure nodes built through the graph API (two-head
 * attention and a residual) with its weights loaded from the fixture, its output and the
 * gradients of its input and parameters. Built again as test_cuda_golden_graph, every
 * case runs on the GPU.
 */
#include "golden/golden_case.h"
#include "kn_layer.h"

#include <stdlib.h>
#include <string.h>

/* The row's module with options set by set (defaults otherwise). */
static kn_module *row(kn_module_kind kind, void (*set)(kn_layer_options *))
{
    kn_layer_options o;
    kn_layer_defaults(kind, &o);
    if (set) set(&o);
    kn_module *m = kn_module_new(kind, &o, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    return m;
}

/* All of m's outputs for inputs x[0..n). */
static int run(kn_module *m, kn_tensor **x, int n, kn_tensor **outs)
{
    int count = 0;
    cr_assert_eq(kn_module_forward_outputs(m, x, n, outs, KN_LAYER_MAX_OUTPUTS, &count), KN_OK,
                 "%s: %s", m->layer->name, kn_last_error());
    return count;
}

/* A one-input, one-output row: out = row(a) against the fixture. */
static void unary_case(const char *name, const char *input, kn_module_kind kind,
                       void (*set)(kn_layer_options *), kn_tensor *(*view)(kn_tensor *))
{
    GOLDEN_BEGIN(name);
    kn_tensor *leaf = golden_leaf(g, input);
    kn_tensor *x = view ? view(leaf) : leaf, *outs[KN_LAYER_MAX_OUTPUTS];
    kn_module *m = row(kind, set);
    cr_assert_eq(run(m, &x, 1, outs), 1);
    golden_check(g, outs[0], "out", GOLDEN_TOL);
    golden_backward(g, outs[0], GOLDEN_TOL, input, leaf, NULL);
    kn_module_free(m);
    GOLDEN_END();
}

Test(golden_graph, add_of_three_broadcasting_inputs)
{
    GOLDEN_BEGIN("graph_add3_broadcast");
    kn_tensor *x[3] = {golden_leaf(g, "a"), golden_leaf(g, "b"), golden_leaf(g, "c")}, *outs[1];
    kn_module *m = row(KN_MODULE_ADD, NULL);
    run(m, x, 3, outs);
    golden_check(g, outs[0], "out", GOLDEN_TOL);
    golden_backward(g, outs[0], GOLDEN_TOL, "a", x[0], "b", x[1], "c", x[2], NULL);
    kn_module_free(m);
    GOLDEN_END();
}

Test(golden_graph, mul_broadcasting)
{
    GOLDEN_BEGIN("graph_mul_broadcast");
    kn_tensor *x[2] = {golden_leaf(g, "a"), golden_leaf(g, "b")}, *outs[1];
    kn_module *m = row(KN_MODULE_MUL, NULL);
    run(m, x, 2, outs);
    golden_check(g, outs[0], "out", GOLDEN_TOL);
    golden_backward(g, outs[0], GOLDEN_TOL, "a", x[0], "b", x[1], NULL);
    kn_module_free(m);
    GOLDEN_END();
}

static void last_dim(kn_layer_options *o)
{
    o->concat.dim = -1;
}

Test(golden_graph, concat_of_a_non_contiguous_input)
{
    GOLDEN_BEGIN("graph_concat_noncontig");
    kn_tensor *abase = golden_leaf(g, "abase"), *b = golden_leaf(g, "b"), *outs[1];
    kn_tensor *x[2] = {kn_transpose(abase, 1, 2), b};
    kn_module *m = row(KN_MODULE_CONCAT, last_dim);
    run(m, x, 2, outs);
    golden_check(g, outs[0], "out", GOLDEN_EXACT);
    golden_backward(g, outs[0], GOLDEN_TOL, "abase", abase, "b", b, NULL);
    kn_module_free(m);
    GOLDEN_END();
}

static void sections_1_2_3(kn_layer_options *o)
{
    o->split.split_size_or_sections = (kn_int_list){{1, 2, 3}, 3};
    o->split.dim = -1;
}

/* out = p0.sum(-1, keepdim) * p2.mean(-1, keepdim) + p1: every part's gradient adds up */
Test(golden_graph, split_into_sections_each_part_used)
{
    GOLDEN_BEGIN("graph_split_sections");
    kn_tensor *x = golden_leaf(g, "x"), *p[KN_LAYER_MAX_OUTPUTS];
    kn_module *m = row(KN_MODULE_SPLIT, sections_1_2_3);
    cr_assert_eq(run(m, &x, 1, p), 3);
    kn_tensor *out =
        kn_add(kn_mul(kn_sum(p[0], KN_DIMS(-1), true), kn_mean(p[2], KN_DIMS(-1), true)), p[1]);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "x", x, NULL);
    kn_module_free(m);
    GOLDEN_END();
}

static void chunks_3_dim1(kn_layer_options *o)
{
    o->chunk.chunks = 3;
    o->chunk.dim = 1;
}

/* torch.chunk of 5 into 3: parts of 2, 2 and 1 */
Test(golden_graph, chunk_uneven)
{
    GOLDEN_BEGIN("graph_chunk_uneven");
    kn_tensor *x = golden_leaf(g, "x"), *p[KN_LAYER_MAX_OUTPUTS];
    kn_module *m = row(KN_MODULE_CHUNK, chunks_3_dim1);
    cr_assert_eq(run(m, &x, 1, p), 3);
    golden_check(g, p[2], "part2", GOLDEN_EXACT);
    kn_tensor *out = kn_add(p[0], p[1]);
    golden_check(g, out, "out", GOLDEN_TOL);
    golden_backward(g, out, GOLDEN_TOL, "x", x, NULL);
    kn_module_free(m);
    GOLDEN_END();
}

static kn_tensor *swap_1_2(kn_tensor *t)
{
    return kn_transpose(t, 1, 2);
}

static void heads_8_2_2(kn_layer_options *o)
{
    o->reshape.shape = (kn_int_list){{8, 2, 2}, 3};
}

static void permute_0231(kn_layer_options *o)
{
    o->permute.dims = (kn_int_list){{0, 2, 3, 1}, 4};
}

static void transpose_last_first(kn_layer_options *o)
{
    o->transpose.dim0 = -1;
    o->transpose.dim1 = 1;
}

static void mean_1_3(kn_layer_options *o)
{
    o->mean.dim = (kn_int_list){{1, 3}, 2};
}

static void mean_last_keepdim(kn_layer_options *o)
{
    o->mean.dim = (kn_int_list){{-1}, 1};
    o->mean.keepdim = true;
}

static void slice_m5_6_2(kn_layer_options *o)
{
    o->slice.dim = 1;
    o->slice.start = -5;
    o->slice.end = 6;
    o->slice.step = 2;
}

static void select_last(kn_layer_options *o)
{
    o->select.dim = 1;
    o->select.index = -1;
}

Test(golden_graph, reshape_of_a_non_contiguous_input_copies)
{
    unary_case("graph_reshape_noncontig", "base", KN_MODULE_RESHAPE, heads_8_2_2, swap_1_2);
}

Test(golden_graph, permute)
{
    unary_case("graph_permute4", "x", KN_MODULE_PERMUTE, permute_0231, NULL);
}

Test(golden_graph, transpose_with_a_negative_dim)
{
    unary_case("graph_transpose_neg", "x", KN_MODULE_TRANSPOSE, transpose_last_first, NULL);
}

Test(golden_graph, mean_over_two_dims)
{
    unary_case("graph_mean_dims", "x", KN_MODULE_MEAN, mean_1_3, NULL);
}

Test(golden_graph, mean_keepdim)
{
    unary_case("graph_mean_keepdim", "x", KN_MODULE_MEAN, mean_last_keepdim, NULL);
}

Test(golden_graph, slice_with_a_step)
{
    unary_case("graph_slice_step", "x", KN_MODULE_SLICE, slice_m5_6_2, NULL);
}

Test(golden_graph, select_the_last_position)
{
    unary_case("graph_select_last", "x", KN_MODULE_SELECT, select_last, NULL);
}

/* a (non-contiguous) [2, 2, 3, 4] @ b [2, 1, 4, 5]: b's head dim broadcasts */
Test(golden_graph, matmul_of_broadcast_batches)
{
    GOLDEN_BEGIN("graph_matmul_broadcast");
    kn_tensor *abase = golden_leaf(g, "abase"), *b = golden_leaf(g, "b"), *outs[1];
    kn_tensor *x[2] = {kn_transpose(abase, -1, -2), b};
    kn_module *m = row(KN_MODULE_MATMUL, NULL);
    run(m, x, 2, outs);
    golden_check(g, outs[0], "out", GOLDEN_BLAS_TOL);
    golden_backward(g, outs[0], GOLDEN_BLAS_TOL, "abase", abase, "b", b, NULL);
    kn_module_free(m);
    GOLDEN_END();
}

/* ---- a block of structure nodes, built through the graph API -------------------------------- */

static void options_qkv(kn_layer_options *o)
{
    o->linear = (kn_linear_options){8, 24, true};
}
static void options_proj(kn_layer_options *o)
{
    o->linear = (kn_linear_options){8, 8, true};
}
static void options_split(kn_layer_options *o)
{
    o->split.split_size_or_sections = (kn_int_list){{8}, 1};
    o->split.dim = -1;
}
static void options_heads(kn_layer_options *o)
{
    o->reshape.shape = (kn_int_list){{4, 2, -1}, 3};
}
static void options_swap(kn_layer_options *o)
{
    o->transpose.dim0 = 1;
    o->transpose.dim1 = 2;
}
static void options_keys(kn_layer_options *o)
{
    o->permute.dims = (kn_int_list){{0, 2, 3, 1}, 4};
}
static void options_softmax(kn_layer_options *o)
{
    o->softmax.dim = -1;
}
static void options_flat(kn_layer_options *o)
{
    o->reshape.shape = (kn_int_list){{4, 8}, 2};
}

/* Adds a node that calls a new module of kind at path on inputs; its first output. */
static int node(kn_module *g, const char *path, kn_module_kind kind,
                void (*set)(kn_layer_options *), const int *inputs, int n_inputs, int n_outputs)
{
    cr_assert_eq(kn_module_add(g, path, row(kind, set)), KN_OK, "%s", kn_last_error());
    int v = kn_graph_add_node(g, path, inputs, n_inputs, n_outputs);
    cr_assert_geq(v, 0, "%s: %s", path, kn_last_error());
    return v;
}

/* x [N, 4, 8] -> x + proj(two-head attention of x, unscaled), as graph_attention_block. */
static kn_module *attention_block(void)
{
    kn_module *g = kn_graph_new();
    int x = kn_graph_add_input(g, "x", KN_FLOAT32);
    int qkv = node(g, "qkv", KN_MODULE_LINEAR, options_qkv, &x, 1, 1);
    int parts = node(g, "split", KN_MODULE_SPLIT, options_split, &qkv, 1, 3);
    int q = node(g, "q", KN_MODULE_RESHAPE, options_heads, (int[]){parts}, 1, 1);
    int k = node(g, "k", KN_MODULE_RESHAPE, options_heads, (int[]){parts + 1}, 1, 1);
    int v = node(g, "v", KN_MODULE_RESHAPE, options_heads, (int[]){parts + 2}, 1, 1);
    int qh = node(g, "qh", KN_MODULE_TRANSPOSE, options_swap, &q, 1, 1);
    int kt = node(g, "kt", KN_MODULE_PERMUTE, options_keys, &k, 1, 1);
    int vh = node(g, "vh", KN_MODULE_TRANSPOSE, options_swap, &v, 1, 1);
    int scores = node(g, "scores", KN_MODULE_MATMUL, NULL, (int[]){qh, kt}, 2, 1);
    int weights = node(g, "weights", KN_MODULE_SOFTMAX, options_softmax, &scores, 1, 1);
    int mix = node(g, "mix", KN_MODULE_MATMUL, NULL, (int[]){weights, vh}, 2, 1);
    int merge = node(g, "merge", KN_MODULE_TRANSPOSE, options_swap, &mix, 1, 1);
    int flat = node(g, "flat", KN_MODULE_RESHAPE, options_flat, &merge, 1, 1);
    int proj = node(g, "proj", KN_MODULE_LINEAR, options_proj, &flat, 1, 1);
    int res = node(g, "res", KN_MODULE_ADD, NULL, (int[]){x, proj}, 2, 1);
    cr_assert_eq(kn_graph_set_outputs(g, &res, 1), KN_OK, "%s", kn_last_error());
    return g;
}

Test(golden_graph, attention_block_of_structure_nodes)
{
    GOLDEN_BEGIN("graph_attention_block");
    kn_module *m = attention_block();
    /* the fixture's weights under the graph's state-dict names */
    const char *entries[] = {"qkv_weight", "qkv_bias", "proj_weight", "proj_bias"};
    const char *names[] = {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"};
    kn_named_tensor state[4];
    for (int i = 0; i < 4; i++) {
        snprintf(state[i].name, sizeof state[i].name, "%s", names[i]);
        state[i].tensor = kn_golden_tensor(g, entries[i]);
        state[i].is_buffer = false;
    }
    cr_assert_eq(kn_module_load_state_dict(m, state, 4, true), KN_OK, "%s", kn_last_error());
#ifdef KN_GOLDEN_CUDA
    cr_assert_eq(kn_module_to(m, kn_test_cuda0), KN_OK, "%s", kn_last_error());
#endif
    kn_tensor *x = golden_leaf(g, "x");
    kn_tensor *out = kn_module_forward(m, x);
    golden_check(g, out, "out", GOLDEN_BLAS_TOL);
    golden_backward(g, out, 1e-4, 1e-5, "x", x, NULL);
    int n;
    kn_named_tensor *params = kn_module_parameters(m, &n);
    cr_assert_eq(n, 4);
    for (int i = 0; i < 4; i++) {
        char entry[64];
        snprintf(entry, sizeof entry, "grad_%s", entries[i]);
        cr_assert_str_eq(params[i].name, names[i]);
        golden_check(g, kn_grad(params[i].tensor), entry, 1e-4, 1e-5);
    }
    free(params);
    kn_module_free(m);
    GOLDEN_END();
}
