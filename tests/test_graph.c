/*
 * test_graph.c — models beyond a chain: the graph container (several named inputs and
 * outputs, nodes of several outputs, errors that name the node, intermediates released
 * after their last reader), the module tree under dotted paths, weight tying with
 * torch's semantics (one parameter under two state-dict names, gradients of both uses
 * summed, one optimizer update), the structure rows' finite differences, a graph spec
 * built and run (shapes from inference agree with the forward's), a graph spec's weights
 * loaded strictly into the equivalent torch module with the same outputs and the
 * reverse (tests/golden/check_graph_torch.py; skipped without torch), examples/
 * chargpt.json as bench/gpt/torch_gpt.py's module (recipe, names, shapes, torch's init,
 * a strict load with the same logits), and a small residual net from a graph spec that
 * trains.
 */
#include "kapi.h"
#include "kn_layer.h"
#include "kn_optim.h"
#include "kn_safetensors.h"
#include "kn_test.h"
#include "kn_test_spec.h"
#include "kn_train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cJSON.h>

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())
#define ASSERT_NEAR(t, want, n, rtol, atol)                                                        \
    do {                                                                                           \
        char msg__[256];                                                                           \
        cr_assert_not_null((t), "%s", kn_last_error());                                            \
        cr_assert(kn_test_close((t), (want), (n), (rtol), (atol), msg__, sizeof msg__), "%s",      \
                  msg__);                                                                          \
    } while (0)

static kn_module *layer(kn_module_kind kind, void (*set)(kn_layer_options *))
{
    kn_layer_options o;
    kn_layer_defaults(kind, &o);
    if (set) set(&o);
    kn_module *m = kn_module_new(kind, &o, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    return m;
}

static void chunk2_last(kn_layer_options *o)
{
    o->chunk.chunks = 2;
    o->chunk.dim = -1;
}

/* a [N, 4], b [N, 4] -> sum = a + b; parts = chunk(sum, 2, -1); prod = parts:0 * parts:1;
 * outputs prod and parts:1 */
static kn_module *two_input_graph(void)
{
    kn_module *g = kn_graph_new();
    cr_assert_not_null(g);
    int a = kn_graph_add_input(g, "a", KN_FLOAT32), b = kn_graph_add_input(g, "b", KN_FLOAT32);
    cr_assert(a == 0 && b == 1);
    ASSERT_OK(kn_module_add(g, "sum", layer(KN_MODULE_ADD, NULL)));
    ASSERT_OK(kn_module_add(g, "parts", layer(KN_MODULE_CHUNK, chunk2_last)));
    ASSERT_OK(kn_module_add(g, "prod", layer(KN_MODULE_MUL, NULL)));
    int sum = kn_graph_add_node(g, "sum", (int[]){a, b}, 2, 1);
    int parts = kn_graph_add_node(g, "parts", &sum, 1, 2);
    int prod = kn_graph_add_node(g, "prod", (int[]){parts, parts + 1}, 2, 1);
    cr_assert(sum == 2 && parts == 3 && prod == 5, "%s", kn_last_error());
    ASSERT_OK(kn_graph_set_outputs(g, (int[]){prod, parts + 1}, 2));
    return g;
}

Test(graph, several_inputs_and_outputs_forward_and_backward)
{
    kn_scope_begin();
    kn_module *g = two_input_graph();
    cr_assert_eq(kn_graph_input_count(g), 2);
    cr_assert_eq(kn_graph_output_count(g), 2);
    kn_tensor *a = kn_set_requires_grad(kn_test_seq(KN_SHAPE(2, 4), 3), true);
    kn_tensor *b = kn_set_requires_grad(kn_test_seq(KN_SHAPE(2, 4), 5), true);
    kn_tensor *out[4];
    int n = 0;
    ASSERT_OK(kn_module_forward_outputs(g, (kn_tensor *[]){a, b}, 2, out, 4, &n));
    cr_assert_eq(n, 2);
    KN_ASSERT_SHAPE(out[0], KN_SHAPE(2, 2));
    KN_ASSERT_SHAPE(out[1], KN_SHAPE(2, 2));
    /* by hand: s = a + b, prod = s[:, :2] * s[:, 2:] */
    float av[8], bv[8], want_prod[4], want_part[4];
    ASSERT_OK(kn_copy_to_floats(a, av));
    ASSERT_OK(kn_copy_to_floats(b, bv));
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++) {
            float left = av[r * 4 + c] + bv[r * 4 + c],
                  right = av[r * 4 + c + 2] + bv[r * 4 + c + 2];
            want_prod[r * 2 + c] = left * right;
            want_part[r * 2 + c] = right;
        }
    ASSERT_NEAR(out[0], want_prod, 4, 0, 0);
    ASSERT_NEAR(out[1], want_part, 4, 0, 0);
    /* forward gives the first output */
    kn_tensor *first = kn_module_forward_n(g, (kn_tensor *[]){a, b}, 2);
    ASSERT_NEAR(first, want_prod, 4, 0, 0);
    /* d(sum(prod) + sum(part))/da[:, j] = right (j < 2), left + 1 (j >= 2) */
    ASSERT_OK(kn_backward(kn_add(kn_sum_all(out[0]), kn_sum_all(out[1])), NULL, false));
    float want_grad[8];
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++) {
            want_grad[r * 4 + c] = av[r * 4 + c + 2] + bv[r * 4 + c + 2];
            want_grad[r * 4 + c + 2] = av[r * 4 + c] + bv[r * 4 + c] + 1;
        }
    ASSERT_NEAR(kn_grad(a), want_grad, 8, 1e-6, 1e-6);
    ASSERT_NEAR(kn_grad(b), want_grad, 8, 1e-6, 1e-6);
    kn_module_free(g);
    kn_scope_end();
}

Test(graph, errors_name_the_node_and_the_input)
{
    kn_scope_begin();
    kn_module *g = two_input_graph();
    kn_tensor *a = kn_ones(KN_SHAPE(2, 4), KN_FLOAT32), *b = kn_ones(KN_SHAPE(2, 3), KN_FLOAT32);
    cr_assert_null(kn_module_forward_n(g, (kn_tensor *[]){a, b}, 2));
    cr_assert(strstr(kn_last_error(), "node sum (add): "), "%s", kn_last_error());
    cr_assert_null(kn_module_forward_n(g, (kn_tensor *[]){a}, 1));
    cr_assert(strstr(kn_last_error(), "graph: takes 2 inputs (\"a\", ...), got 1"), "%s",
              kn_last_error());
    kn_tensor *ids = kn_zeros(KN_SHAPE(2, 4), KN_INT64);
    cr_assert_null(kn_module_forward_n(g, (kn_tensor *[]){a, ids}, 2));
    cr_assert(strstr(kn_last_error(), "input \"b\" must be float32, got int64 [2, 4]"), "%s",
              kn_last_error());
    kn_module_free(g);

    /* a node nobody reads, an input nobody reads, an unfinished graph */
    g = kn_graph_new();
    int x = kn_graph_add_input(g, "x", KN_FLOAT32);
    ASSERT_OK(kn_module_add(g, "r1", kn_relu_new()));
    ASSERT_OK(kn_module_add(g, "r2", kn_relu_new()));
    int r1 = kn_graph_add_node(g, "r1", &x, 1, 1);
    int r2 = kn_graph_add_node(g, "r2", &x, 1, 1);
    cr_assert_null(kn_module_forward(g, a));
    cr_assert(strstr(kn_last_error(), "not complete"), "%s", kn_last_error());
    cr_assert_eq(kn_graph_set_outputs(g, &r2, 1), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "the output of node \"r1\" is never used"), "%s",
              kn_last_error());
    cr_assert_eq(kn_graph_add_node(g, "nowhere", &x, 1, 1), -1);
    cr_assert(strstr(kn_last_error(), "no module at \"nowhere\""), "%s", kn_last_error());
    cr_assert_eq(kn_graph_add_node(g, "r1", (int[]){7}, 1, 1), -1);
    ASSERT_OK(kn_graph_set_outputs(g, (int[]){r1, r2}, 2));
    cr_assert_eq(kn_graph_add_input(g, "late", KN_FLOAT32), -1);
    kn_module_free(g);
    kn_scope_end();
}

/* A chain of 32 relu nodes on 1 MiB values, without grad: each intermediate is released
 * after the node that reads it, so the allocator never holds more than a few of them
 * (in use or cached). Keeping them to the end would hold 32 MiB. */
Test(graph, intermediates_are_released_after_their_last_reader)
{
    kn_module *g = kn_graph_new();
    int v = kn_graph_add_input(g, "x", KN_FLOAT32);
    for (int i = 0; i < 32; i++) {
        char name[16];
        snprintf(name, sizeof name, "r%d", i);
        ASSERT_OK(kn_module_add(g, name, kn_relu_new()));
        v = kn_graph_add_node(g, name, &v, 1, 1);
        cr_assert_geq(v, 0, "%s", kn_last_error());
    }
    ASSERT_OK(kn_graph_set_outputs(g, &v, 1));
    kn_empty_cache();
    kn_no_grad_begin();
    kn_scope_begin();
    kn_tensor *x = kn_ones(KN_SHAPE(4, 65536), KN_FLOAT32); /* 1 MiB */
    kn_tensor *y = kn_module_forward(g, x);
    cr_assert_not_null(y, "%s", kn_last_error());
    kn_alloc_stats stats = kn_get_alloc_stats();
    uint64_t held = stats.bytes_in_use + stats.bytes_cached;
    cr_assert_leq(held, 4u << 20,
                  "the forward held %llu bytes at once (32 MiB if nothing was "
                  "released)",
                  (unsigned long long)held);
    kn_scope_end();
    kn_no_grad_end();
    kn_module_free(g);
}

Test(graph, module_tree_paths)
{
    kn_scope_begin();
    kn_module *root = kn_graph_new();
    ASSERT_OK(kn_module_add(root, "blocks", kn_module_container_new("ModuleList")));
    ASSERT_OK(kn_module_add(root, "blocks.0", kn_module_container_new("Block")));
    ASSERT_OK(kn_module_add(root, "blocks.0.mlp.fc", kn_linear_new(2, 3, true, NULL)));
    cr_assert_not_null(kn_module_find(root, "blocks.0.mlp"));
    cr_assert_str_eq(kn_module_find(root, "blocks.0")->type_name, "Block");
    cr_assert_str_eq(kn_module_find(root, "blocks.0.mlp")->type_name, "Module");
    cr_assert_eq(kn_module_find(root, ""), root);
    cr_assert_null(kn_module_find(root, "blocks.1"));
    cr_assert_eq(kn_module_add(root, "blocks.0.mlp.fc", kn_relu_new()), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "\"blocks.0.mlp.fc\" is taken (by a Linear)"), "%s",
              kn_last_error());
    cr_assert_eq(kn_module_add(root, "blocks.0.mlp.fc.x", kn_relu_new()), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "goes through a Linear, which holds no modules"), "%s",
              kn_last_error());
    cr_assert_eq(kn_module_add(root, "a..b", kn_relu_new()), KN_ERR_VALUE);
    int n;
    kn_named_tensor *state = kn_module_state_dict(root, &n);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(state[0].name, "blocks.0.mlp.fc.weight");
    free(state);
    char *repr = kn_module_describe(root);
    cr_assert(strstr(repr, "(blocks): ModuleList(\n    (0): Block(\n      (mlp): Module(\n"
                           "        (fc): Linear(in_features=2, out_features=3, bias=True)"),
              "%s", repr);
    free(repr);
    cr_assert_null(
        kn_module_forward(kn_module_find(root, "blocks"), kn_ones(KN_SHAPE(1), KN_FLOAT32)));
    cr_assert(strstr(kn_last_error(), "ModuleList: a container of modules is not called itself"),
              "%s", kn_last_error());
    kn_module_free(root);
    kn_scope_end();
}

/* ---- weight tying ------------------------------------------------------------------------- */

/* An optimizer over m's parameters (each once, as kn_module_parameters lists them). */
static kn_optimizer *optimizer_for(const kn_module *m, kn_optimizer_options o)
{
    int n;
    kn_named_tensor *named = kn_module_parameters(m, &n);
    kn_tensor **params = malloc(sizeof *params * (size_t)n);
    for (int i = 0; i < n; i++) params[i] = named[i].tensor;
    kn_optimizer *opt = kn_optimizer_new(params, n, o);
    cr_assert_not_null(opt, "%s", kn_last_error());
    free(params);
    free(named);
    return opt;
}

static kn_optimizer *sgd(const kn_module *m, double lr)
{
    kn_optimizer_options o = kn_optimizer_defaults(KN_OPTIM_SGD);
    o.lr = lr;
    return optimizer_for(m, o);
}

/* tokens -> wte (Embedding 5x3) -> head (Linear 3->5, no bias, its weight wte's). */
static kn_module *tied_lm(void)
{
    kn_manual_seed(3);
    kn_module *g = kn_graph_new();
    int tokens = kn_graph_add_input(g, "tokens", KN_INT64);
    ASSERT_OK(kn_module_add(g, "wte", kn_embedding_new(5, 3, NULL)));
    ASSERT_OK(kn_module_add(g, "head", kn_linear_new(3, 5, false, NULL)));
    int e = kn_graph_add_node(g, "wte", &tokens, 1, 1);
    int h = kn_graph_add_node(g, "head", &e, 1, 1);
    ASSERT_OK(kn_graph_set_outputs(g, &h, 1));
    ASSERT_OK(kn_module_tie(g, "head.weight", "wte.weight"));
    return g;
}

Test(graph, a_tied_weight_is_one_parameter_under_two_names)
{
    kn_scope_begin();
    kn_module *g = tied_lm();
    int n;
    kn_named_tensor *state = kn_module_state_dict(g, &n);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(state[0].name, "wte.weight");
    cr_assert_str_eq(state[1].name, "head.weight");
    cr_assert_eq(state[0].tensor, state[1].tensor, "one tensor under both names");
    free(state);
    kn_named_tensor *params = kn_module_parameters(g, &n);
    cr_assert_eq(n, 1, "the optimizer sees it once");
    cr_assert_str_eq(params[0].name, "wte.weight");
    free(params);
    cr_assert_eq(kn_module_parameter_count(g), 15);

    /* the gradient is the sum of both uses': compare with an untied copy's two grads */
    kn_tensor *w = kn_module_find(g, "wte")->tensors[0].tensor;
    kn_tensor *tokens = kn_from_int64s((int64_t[]){0, 3, 3, 1}, KN_SHAPE(2, 2));
    kn_tensor *y = kn_module_forward(g, tokens);
    ASSERT_OK(kn_backward(kn_sum_all(kn_mul(y, y)), NULL, false));
    kn_tensor *w_emb = kn_set_requires_grad(kn_clone(kn_detach(w)), true);
    kn_tensor *w_head = kn_set_requires_grad(kn_clone(kn_detach(w)), true);
    kn_tensor *y2 = kn_linear(kn_embedding(w_emb, tokens), w_head, NULL);
    ASSERT_OK(kn_backward(kn_sum_all(kn_mul(y2, y2)), NULL, false));
    float want[15], a[15], b[15];
    ASSERT_OK(kn_copy_to_floats(kn_grad(w_emb), a));
    ASSERT_OK(kn_copy_to_floats(kn_grad(w_head), b));
    for (int i = 0; i < 15; i++) want[i] = a[i] + b[i];
    ASSERT_NEAR(kn_grad(w), want, 15, 1e-5, 1e-6);

    /* one SGD step moves it once: w - lr * grad */
    float before[15];
    ASSERT_OK(kn_copy_to_floats(w, before));
    kn_optimizer *opt = sgd(g, 0.1);
    ASSERT_OK(kn_optimizer_step(opt));
    for (int i = 0; i < 15; i++) want[i] = before[i] - 0.1f * (a[i] + b[i]);
    ASSERT_NEAR(w, want, 15, 1e-5, 1e-6);
    cr_assert_eq(kn_module_find(g, "head")->tensors[0].tensor, w, "still tied after the step");
    kn_optimizer_free(opt);

    /* moving the model keeps one tensor */
    ASSERT_OK(kn_module_to(g, kn_cpu()));
    cr_assert_eq(kn_module_find(g, "head")->tensors[0].tensor,
                 kn_module_find(g, "wte")->tensors[0].tensor);

    /* ties that cannot be */
    cr_assert_eq(kn_module_tie(g, "head.weight", "wte.bias"), KN_ERR_VALUE);
    cr_assert(strstr(kn_last_error(), "no tensor \"wte.bias\""), "%s", kn_last_error());
    kn_module_free(g);
    g = kn_graph_new();
    ASSERT_OK(kn_module_add(g, "a", kn_linear_new(3, 5, true, NULL)));
    ASSERT_OK(kn_module_add(g, "b", kn_linear_new(5, 3, true, NULL)));
    cr_assert_eq(kn_module_tie(g, "a.weight", "b.weight"), KN_ERR_SHAPE);
    cr_assert(strstr(kn_last_error(), "\"a.weight\" has shape [5, 3] but \"b.weight\" has [3, 5]"),
              "%s", kn_last_error());
    cr_assert_eq(kn_module_tie(g, "a.weight", "a.weight"), KN_ERR_VALUE);
    kn_module_free(g);
    kn_scope_end();
}

/* ---- the structure rows: finite differences --------------------------------------------- */

typedef struct row_case {
    kn_module *m;
    int output; /* which output (split, chunk) */
} row_case;

static kn_tensor *run_row(kn_tensor **inputs, void *context)
{
    row_case *c = context;
    int n_in = c->m->layer->min_inputs ? c->m->layer->min_inputs : 1;
    kn_tensor *outs[KN_LAYER_MAX_OUTPUTS];
    int n = 0;
    if (kn_module_forward_outputs(c->m, inputs, n_in, outs, KN_LAYER_MAX_OUTPUTS, &n) != KN_OK)
        return NULL;
    return outs[c->output];
}

static void set_matmul(kn_layer_options *o)
{
    (void)o;
}
static void set_concat(kn_layer_options *o)
{
    o->concat.dim = 1;
}
static void set_split(kn_layer_options *o)
{
    o->split.split_size_or_sections = (kn_int_list){{1, 2}, 2};
    o->split.dim = -1;
}
static void set_reshape(kn_layer_options *o)
{
    o->reshape.shape = (kn_int_list){{3, -1}, 2};
}
static void set_permute(kn_layer_options *o)
{
    o->permute.dims = (kn_int_list){{0, 2, 1}, 3};
}
static void set_transpose(kn_layer_options *o)
{
    o->transpose.dim0 = -1;
    o->transpose.dim1 = 1;
}
static void set_mean(kn_layer_options *o)
{
    o->mean.dim = (kn_int_list){{1}, 1};
    o->mean.keepdim = true;
}
static void set_slice(kn_layer_options *o)
{
    o->slice.dim = 1;
    o->slice.start = -3;
    o->slice.step = 2;
}
static void set_select(kn_layer_options *o)
{
    o->select.dim = 1;
    o->select.index = -1;
}

Test(graph, structure_rows_pass_finite_differences)
{
    struct {
        kn_module_kind kind;
        void (*set)(kn_layer_options *);
        int output;
        int64_t a[3], b[3];
    } cases[] = {
        {KN_MODULE_ADD, NULL, 0, {2, 3, 4}, {2, 1, 4}},
        {KN_MODULE_MUL, NULL, 0, {2, 3, 4}, {1, 3, 1}},
        {KN_MODULE_CONCAT, set_concat, 0, {2, 3, 4}, {2, 2, 4}},
        {KN_MODULE_SPLIT, set_split, 1, {2, 3, 3}, {0}},
        {KN_MODULE_CHUNK, chunk2_last, 1, {2, 3, 3}, {0}},
        {KN_MODULE_RESHAPE, set_reshape, 0, {2, 3, 4}, {0}},
        {KN_MODULE_PERMUTE, set_permute, 0, {2, 3, 4}, {0}},
        {KN_MODULE_TRANSPOSE, set_transpose, 0, {2, 3, 4}, {0}},
        {KN_MODULE_MATMUL, set_matmul, 0, {2, 3, 4}, {2, 4, 2}},
        {KN_MODULE_MEAN, set_mean, 0, {2, 3, 4}, {0}},
        {KN_MODULE_SLICE, set_slice, 0, {2, 5, 2}, {0}},
        {KN_MODULE_SELECT, set_select, 0, {2, 3, 4}, {0}},
        {KN_MODULE_IDENTITY, NULL, 0, {2, 3, 4}, {0}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_scope_begin();
        row_case c = {layer(cases[i].kind, cases[i].set), cases[i].output};
        kn_tensor *inputs[2] = {
            kn_set_requires_grad(kn_test_uniform(cases[i].a, 3, -1, 1, 10 + i), true),
            cases[i].b[0]
                ? kn_set_requires_grad(kn_test_uniform(cases[i].b, 3, -1, 1, 40 + i), true)
                : NULL};
        int n = inputs[1] ? 2 : 1;
        cr_assert_not_null(run_row(inputs, &c), "%s: %s", c.m->layer->name, kn_last_error());
        KN_ASSERT_GRADCHECK(run_row, inputs, n, &c);
        kn_module_free(c.m);
        kn_scope_end();
    }
}

/* ---- graph specs -------------------------------------------------------------------------- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    cr_assert_eq(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fclose(f);
    return text;
}

static kapi_model_spec *spec_file(const char *relative)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", KILN_SOURCE_DIR, relative);
    char *text = slurp(path);
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(text, strlen(text), &errors);
    char *report = kapi_errors_to_text(&errors);
    cr_assert_not_null(spec, "%s: %s", relative, report);
    free(report);
    kapi_errors_free(&errors);
    free(text);
    return spec;
}

static kn_tensor *tokens_for(const kapi_model_spec *spec, int64_t n)
{
    int64_t t = spec->input_shape[0], count = n * t;
    int64_t *ids = malloc(sizeof *ids * (size_t)count);
    for (int64_t i = 0; i < count; i++) ids[i] = (i * 7 + 3) % 20;
    kn_tensor *x = kn_from_int64s(ids, KN_SHAPE(n, t));
    free(ids);
    return x;
}

Test(graph, a_graph_spec_builds_and_its_shapes_are_the_forward_s)
{
    kn_scope_begin();
    kapi_model_spec *spec = spec_file("tests/specs/valid/model-graph-tiny-lm.json");
    cr_assert(spec->graph);
    cr_assert_eq(spec->n_outputs, 2);
    kn_generator *gen = kn_generator_new(7);
    kn_module *m = kapi_model_build(spec, gen);
    cr_assert_not_null(m, "%s", kn_last_error());
    cr_assert_eq(kn_module_parameter_count(m), spec->parameter_count);
    kn_tensor *outs[4];
    int n = 0;
    kn_tensor *x = tokens_for(spec, 3);
    ASSERT_OK(kn_module_forward_outputs(m, &x, 1, outs, 4, &n));
    cr_assert_eq(n, 2);
    for (int i = 0; i < 2; i++) {
        const kapi_value_spec *v = &spec->values[spec->outputs[i]];
        cr_assert_eq(outs[i]->ndim, v->ndim + 1, "%s", v->name);
        for (int d = 0; d < v->ndim; d++) cr_assert_eq(outs[i]->shape[d + 1], v->shape[d]);
    }
    int64_t shape[KN_MAX_DIMS];
    int ndim;
    ASSERT_OK(kn_module_output_shape(m, spec->input_shape, spec->input_ndim, shape, &ndim));
    cr_assert(ndim == 2 && shape[0] == 8 && shape[1] == 20, "rank %d", ndim);
    char *repr = kn_module_describe(m);
    cr_assert(strstr(repr, "(blocks): ModuleList(\n    (0): Block(\n      (ln_1): LayerNorm"), "%s",
              repr);
    free(repr);
    kn_module_free(m);
    kn_generator_free(gen);
    kapi_model_spec_free(spec);
    kn_scope_end();
}

/* Runs tests/golden/check_graph_torch.py MODE FILE FILE MODEL (tiny-lm, gpt); 77 means
 * no torch. */
static int run_torch_model(const char *mode, const char *a, const char *b, const char *model)
{
    char command[1536];
    snprintf(command, sizeof command,
             "/usr/bin/python3 '%s/tests/golden/check_graph_torch.py' %s '%s' '%s' %s",
             KILN_SOURCE_DIR, mode, a, b, model);
    int rc = system(command);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int run_torch(const char *mode, const char *a, const char *b)
{
    return run_torch_model(mode, a, b, "tiny-lm");
}

static void temp_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "/tmp/kiln-test-graph-%d-%s", (int)getpid(), name);
}

/* Kiln's weights (after a few SGD steps, so they are not the initial ones) and outputs
 * go to torch, which loads them strictly into the equivalent nn.Module and compares its
 * outputs; it also checks that torch.manual_seed(7) initialises that module with the
 * very values Kiln drew for seed 7. */
Test(graph, a_graph_spec_s_weights_load_strictly_into_torch)
{
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("no /usr/bin/python3");
    kn_scope_begin();
    kapi_model_spec *spec = spec_file("tests/specs/valid/model-graph-tiny-lm.json");
    kn_generator *gen = kn_generator_new(7);
    kn_module *m = kapi_model_build(spec, gen);
    char init[256], weights[256], io[256];
    temp_path(init, sizeof init, "init.safetensors");
    temp_path(weights, sizeof weights, "weights.safetensors");
    temp_path(io, sizeof io, "io.safetensors");
    ASSERT_OK(kn_module_save_weights(m, init));
    kn_tensor *x = tokens_for(spec, 4);
    kn_optimizer *opt = sgd(m, 0.02);
    for (int step = 0; step < 3; step++) {
        kn_scope_begin();
        kn_module_zero_grad(m);
        kn_tensor *outs[2];
        int count;
        ASSERT_OK(kn_module_forward_outputs(m, &x, 1, outs, 2, &count));
        ASSERT_OK(kn_backward(kn_add(kn_mean_all(kn_mul(outs[0], outs[0])), kn_sum_all(outs[1])),
                              NULL, false));
        ASSERT_OK(kn_optimizer_step(opt));
        kn_scope_end();
    }
    kn_optimizer_free(opt);
    ASSERT_OK(kn_module_save_weights(m, weights));
    kn_module_train(m, false);
    kn_tensor *outs[2];
    int count;
    kn_no_grad_begin();
    ASSERT_OK(kn_module_forward_outputs(m, &x, 1, outs, 2, &count));
    kn_no_grad_end();
    const char *names[] = {"tokens", "lm_head", "cls"};
    kn_tensor *tensors[] = {x, outs[0], outs[1]};
    ASSERT_OK(kn_safetensors_save(io, names, tensors, 3, NULL, 0));
    int rc = run_torch("load", init, weights);
    if (rc != 77) rc = rc == 0 ? run_torch("outputs", weights, io) : rc;
    unlink(init);
    unlink(weights);
    unlink(io);
    kn_module_free(m);
    kn_generator_free(gen);
    kapi_model_spec_free(spec);
    kn_scope_end();
    if (rc == 77) cr_skip_test("/usr/bin/python3 has no torch");
    cr_assert_eq(rc, 0, "torch disagrees (its message is above)");
}

/* The reverse: torch's module (its weights moved off their initial values) saves its
 * state_dict, both names of the tied weight included, with its outputs; Kiln loads it
 * strictly into the spec's model and gives the same outputs. */
Test(graph, torch_weights_load_strictly_into_a_graph_spec_s_model)
{
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("no /usr/bin/python3");
    char weights[256], io[256];
    temp_path(weights, sizeof weights, "torch.safetensors");
    temp_path(io, sizeof io, "torch-io.safetensors");
    int rc = run_torch("save", weights, io);
    if (rc == 77) cr_skip_test("/usr/bin/python3 has no torch");
    cr_assert_eq(rc, 0, "the torch side failed (its message is above)");
    kn_scope_begin();
    kapi_model_spec *spec = spec_file("tests/specs/valid/model-graph-tiny-lm.json");
    kn_module *m = kapi_model_build(spec, NULL);
    ASSERT_OK(kn_module_load_weights(m, weights, true));
    cr_assert_eq(kn_module_find(m, "lm_head")->tensors[0].tensor,
                 kn_module_find(m, "wte")->tensors[0].tensor, "still one tensor");
    kn_module_train(m, false);
    kn_safetensors *file = kn_safetensors_load(io);
    cr_assert_not_null(file, "%s", kn_last_error());
    kn_tensor *x = kn_safetensors_get(file, "tokens");
    kn_tensor *outs[2];
    int count;
    kn_no_grad_begin();
    ASSERT_OK(kn_module_forward_outputs(m, &x, 1, outs, 2, &count));
    kn_no_grad_end();
    const char *names[] = {"lm_head", "cls"};
    for (int i = 0; i < 2; i++) {
        kn_tensor *want = kn_safetensors_get(file, names[i]);
        cr_assert_not_null(want, "%s", kn_last_error());
        float diff = kn_item(kn_max_all(kn_abs(kn_sub(outs[i], want))));
        cr_assert_leq(diff, 1e-4, "%s differs from torch's by %g", names[i], diff);
    }
    kn_safetensors_free(file);
    unlink(weights);
    unlink(io);
    kn_module_free(m);
    kapi_model_spec_free(spec);
    kn_scope_end();
}

/* ---- attention layers as graph nodes ---------------------------------------------------- */

/* model-graph-gpt.json's inputs for n samples: tokens, and a key-padding mask (nonzero =
 * padding) that pads the tail of every other sample (each query still sees key 0). */
static void gpt_inputs(int64_t n, kn_tensor **tokens, kn_tensor **padding, kn_tensor **targets)
{
    int64_t ids[8 * 8], next[8 * 8], pad[8 * 8];
    cr_assert_leq(n, 8);
    for (int64_t i = 0; i < n * 8; i++) {
        ids[i] = (i * 7 + 3) % 20;
        next[i] = (i * 7 + 10) % 20; /* the next position's token */
        pad[i] = i / 8 % 2 == 1 && i % 8 >= 5;
    }
    *tokens = kn_from_int64s(ids, KN_SHAPE(n, 8));
    *padding = kn_from_int64s(pad, KN_SHAPE(n, 8));
    if (targets) *targets = kn_from_int64s(next, KN_SHAPE(n, 8));
}

/* Next-token cross-entropy of logits [N, T, V] (torch's cross_entropy on [N, V, T]). */
static kn_tensor *lm_loss(kn_tensor *logits, kn_tensor *targets)
{
    return kn_cross_entropy(kn_transpose(logits, 1, 2), targets, KN_REDUCTION_MEAN,
                            KN_DEFAULT_IGNORE_INDEX, 0.0);
}

/* steps of opt (freed here) on the next-token loss of m's logits on inputs, then the
 * logits in eval mode without gradients (the open scope's). */
static kn_tensor *lm_steps_then_logits(kn_module *m, kn_optimizer *opt, kn_tensor *const *inputs,
                                       int n_inputs, kn_tensor *targets, int steps)
{
    kn_tensor *logits;
    int count;
    for (int step = 0; step < steps; step++) {
        kn_scope_begin();
        kn_module_zero_grad(m);
        ASSERT_OK(kn_module_forward_outputs(m, inputs, n_inputs, &logits, 1, &count));
        ASSERT_OK(kn_backward(lm_loss(logits, targets), NULL, false));
        ASSERT_OK(kn_optimizer_step(opt));
        kn_scope_end();
    }
    kn_optimizer_free(opt);
    kn_module_train(m, false);
    kn_no_grad_begin();
    ASSERT_OK(kn_module_forward_outputs(m, inputs, n_inputs, &logits, 1, &count));
    kn_no_grad_end();
    return logits;
}

/* A GPT-like graph of transformer_encoder_layer nodes (causal, a key-padding mask as a
 * second int64 input, the head tied to the embedding): shapes inferred per node equal
 * the forward's, a few training steps (dropout on) lower the loss, incremental decoding
 * with a key/value cache gives the full forward's logits, and the weights load strictly
 * into the torch module of nn.TransformerEncoderLayer blocks with the same outputs, and
 * back. */
Test(graph, a_gpt_graph_of_transformer_layers_trains_decodes_and_loads_into_torch)
{
    kn_scope_begin();
    kapi_model_spec *spec = spec_file("tests/specs/valid/model-graph-gpt.json");
    cr_assert(spec->graph);
    kn_generator *gen = kn_generator_new(7);
    kn_module *m = kapi_model_build(spec, gen);
    cr_assert_not_null(m, "%s", kn_last_error());
    cr_assert_eq(kn_module_parameter_count(m), spec->parameter_count);
    cr_assert_eq(kn_module_find(m, "lm_head")->tensors[0].tensor,
                 kn_module_find(m, "wte")->tensors[0].tensor, "tied");
    cr_assert_not_null(kn_module_find(m, "h.1.self_attn.out_proj"));
    const kapi_value_spec *out = &spec->values[spec->outputs[0]];
    cr_assert(out->ndim == 2 && out->shape[0] == 8 && out->shape[1] == 20, "%s", out->name);

    char init[256], weights[256], io[256];
    temp_path(init, sizeof init, "gpt-init.safetensors");
    temp_path(weights, sizeof weights, "gpt-weights.safetensors");
    temp_path(io, sizeof io, "gpt-io.safetensors");
    ASSERT_OK(kn_module_save_weights(m, init));

    kn_tensor *tokens, *padding, *targets;
    gpt_inputs(4, &tokens, &padding, &targets);
    kn_tensor *inputs[2] = {tokens, padding};
    kn_tensor *logits;
    int count;
    kn_module_train(m, false);
    kn_no_grad_begin();
    ASSERT_OK(kn_module_forward_outputs(m, inputs, 2, &logits, 1, &count));
    kn_no_grad_end();
    cr_assert(logits->ndim == 3 && logits->shape[0] == 4 && logits->shape[1] == 8 &&
              logits->shape[2] == 20);
    float before = kn_item(lm_loss(logits, targets));

    /* training mode: the layers' dropout draws (from the default generator) */
    kn_module_train(m, true);
    logits = lm_steps_then_logits(m, sgd(m, 0.1), inputs, 2, targets, 5);
    float after = kn_item(lm_loss(logits, targets));
    cr_assert(isfinite(after) && after < before, "loss %g -> %g", before, after);

    /* the key/value cache: a prefill of 3 positions, then one at a time */
    kn_kv_cache *cache = kn_kv_cache_new(m, 8);
    cr_assert_not_null(cache, "%s", kn_last_error());
    for (int64_t start = 0, len = 3; start < 8; start += len, len = 1) {
        kn_scope_begin();
        kn_tensor *part[2] = {kn_narrow(tokens, 1, start, len), kn_narrow(padding, 1, start, len)};
        kn_tensor *y = kn_module_forward_incremental_n(m, cache, part, 2);
        cr_assert_not_null(y, "%s", kn_last_error());
        float diff = kn_item(kn_max_all(kn_abs(kn_sub(y, kn_narrow(logits, 1, start, len)))));
        cr_assert_leq(diff, 1e-4, "positions %lld+%lld differ from the full forward by %g",
                      (long long)start, (long long)len, diff);
        kn_scope_end();
    }
    cr_assert_eq(kn_kv_cache_length(cache), 8);
    kn_kv_cache_free(cache);

    /* torch: the initial weights are torch.manual_seed(7)'s, the trained ones load
     * strictly and give the same logits */
    ASSERT_OK(kn_module_save_weights(m, weights));
    const char *names[] = {"tokens", "padding", "lm_head"};
    kn_tensor *tensors[] = {tokens, padding, logits};
    ASSERT_OK(kn_safetensors_save(io, names, tensors, 3, NULL, 0));
    int rc = run_torch_model("load", init, weights, "gpt");
    if (rc != 77) rc = rc == 0 ? run_torch_model("outputs", weights, io, "gpt") : rc;
    if (rc == 0) rc = run_torch_model("save", weights, io, "gpt");
    if (rc == 0) { /* the reverse: torch's weights, strictly, give torch's logits */
        kn_module *back = kapi_model_build(spec, NULL);
        ASSERT_OK(kn_module_load_weights(back, weights, true));
        cr_assert_eq(kn_module_find(back, "lm_head")->tensors[0].tensor,
                     kn_module_find(back, "wte")->tensors[0].tensor, "still tied");
        kn_module_train(back, false);
        kn_safetensors *file = kn_safetensors_load(io);
        cr_assert_not_null(file, "%s", kn_last_error());
        kn_tensor *theirs[2] = {kn_safetensors_get(file, "tokens"),
                                kn_safetensors_get(file, "padding")};
        kn_no_grad_begin();
        ASSERT_OK(kn_module_forward_outputs(back, theirs, 2, &logits, 1, &count));
        kn_no_grad_end();
        float diff =
            kn_item(kn_max_all(kn_abs(kn_sub(logits, kn_safetensors_get(file, "lm_head")))));
        cr_assert_leq(diff, 1e-4, "torch's logits differ from Kiln's by %g", diff);
        kn_safetensors_free(file);
        kn_module_free(back);
    }
    unlink(init);
    unlink(weights);
    unlink(io);
    kn_module_free(m);
    kn_generator_free(gen);
    kapi_model_spec_free(spec);
    kn_scope_end();
    if (rc == 77) cr_skip_test("/usr/bin/python3 has no torch");
    cr_assert_eq(rc, 0, "torch disagrees (its message is above)");
}

/* examples/chargpt.json, nanoGPT's CPU shakespeare_char model and recipe as a job: it
 * parses with the recipe bench/gpt/torch_gpt.py runs (AdamW with decay on matrices only,
 * clipping, nanoGPT's get_lr as a warmup + cosine schedule), builds with torch's state-dict
 * names and shapes, and (with torch) torch.manual_seed(7) initialises torch_gpt.py's
 * CharGPT with Kiln's seed-7 values, Kiln's weights after two steps load strictly into it
 * and give Kiln's logits. */
Test(graph, chargpt_example_is_torch_gpt_s_module)
{
    kn_scope_begin();
    char path[512];
    snprintf(path, sizeof path, "%s/examples/chargpt.json", KILN_SOURCE_DIR);
    char *text = slurp(path);
    kapi_errors errors = {0};
    kapi_job_spec *job = kapi_job_spec_parse(
        text, strlen(text), (kapi_job_parse_options){.allow_paths = true}, &errors);
    char *report = kapi_errors_to_text(&errors);
    cr_assert_not_null(job, "examples/chargpt.json: %s", report);
    free(report);
    free(text);
    const kapi_model_spec *spec = job->model;
    cr_assert(spec && spec->graph);
    const int64_t d = 128, ff = 512, v = 256, block = 64;
    const int64_t layer_params = 4 * d * d + 4 * d + 2 * d * ff + ff + 5 * d;
    cr_expect_eq(spec->parameter_count, v * d + block * d + 4 * layer_params + 2 * d + v * d);
    cr_expect_eq(spec->input_shape[0], block);

    /* the recipe: torch_gpt.py's constants */
    const kn_train_config *c = &job->train;
    cr_expect_eq(c->optimizer.kind, KN_OPTIM_ADAMW);
    cr_expect_float_eq(c->optimizer.lr, 1e-3, 0);
    cr_expect_float_eq(c->optimizer.beta1, 0.9, 0);
    cr_expect_float_eq(c->optimizer.beta2, 0.99, 0);
    cr_expect_float_eq(c->optimizer.eps, 1e-8, 0);
    cr_expect_float_eq(c->optimizer.weight_decay, 0.1, 0);
    cr_expect_eq(c->optimizer.weight_decay_params, KN_DECAY_MATRICES);
    cr_expect_eq(c->batch_size, 12);
    cr_expect_eq(c->max_steps, 2000);
    cr_expect_float_eq(c->grad_clip_norm, 1.0, 0);
    cr_expect_eq(c->loss, KN_LOSS_CROSS_ENTROPY);
    /* nanoGPT's get_lr (warmup_iters 100, lr_decay_iters = max_iters 2000, min_lr 1e-4) */
    for (int64_t it = 0; it < 2000; it += 7) {
        double want = it < 100
                          ? 1e-3 * (double)(it + 1) / 101
                          : 1e-4 + 0.5 * (1 + cos(acos(-1.0) * (double)(it - 100) / 1900)) * 9e-4;
        double got = kn_lr_at(&c->lr_schedule, c->optimizer.lr, it);
        cr_assert_float_eq(got, want, 1e-15, "lr at %lld: %.17g, nanoGPT %.17g", (long long)it, got,
                           want);
    }

    kn_generator *gen = kn_generator_new(7);
    kn_module *m = kapi_model_build(spec, gen);
    cr_assert_not_null(m, "%s", kn_last_error());
    int n;
    kn_named_tensor *state = kn_module_state_dict(m, &n);
    cr_assert_eq(n, 2 + 4 * 12 + 2 + 1, "%d entries", n);
    cr_expect_str_eq(state[0].name, "wte.weight");
    KN_ASSERT_SHAPE(state[0].tensor, ((int64_t[]){v, d}), 2);
    cr_expect_str_eq(state[1].name, "wpe.weight");
    KN_ASSERT_SHAPE(state[1].tensor, ((int64_t[]){block, d}), 2);
    cr_expect_str_eq(state[2].name, "h.0.self_attn.in_proj_weight");
    KN_ASSERT_SHAPE(state[2].tensor, ((int64_t[]){3 * d, d}), 2);
    cr_expect_str_eq(state[n - 3].name, "ln_f.weight");
    cr_expect_str_eq(state[n - 1].name, "lm_head.weight");
    KN_ASSERT_SHAPE(state[n - 1].tensor, ((int64_t[]){v, d}), 2);
    free(state);

    char init[256], weights[256], io[256];
    temp_path(init, sizeof init, "chargpt-init.safetensors");
    temp_path(weights, sizeof weights, "chargpt-weights.safetensors");
    temp_path(io, sizeof io, "chargpt-io.safetensors");
    ASSERT_OK(kn_module_save_weights(m, init));
    /* two steps of the example's optimizer on a next-token loss, off the initial values */
    int64_t ids[3 * 65];
    for (int i = 0; i < 3 * 65; i++) ids[i] = (i * 37 + i / 5) % v;
    kn_tensor *all = kn_from_int64s(ids, KN_SHAPE(3, 65));
    kn_tensor *tokens = kn_contiguous(kn_narrow(all, 1, 0, block));
    kn_tensor *targets = kn_contiguous(kn_narrow(all, 1, 1, block));
    kn_tensor *logits =
        lm_steps_then_logits(m, optimizer_for(m, c->optimizer), &tokens, 1, targets, 2);
    KN_ASSERT_SHAPE(logits, ((int64_t[]){3, block, v}), 3);
    ASSERT_OK(kn_module_save_weights(m, weights));
    const char *names[] = {"tokens", "lm_head"};
    kn_tensor *tensors[] = {tokens, logits};
    ASSERT_OK(kn_safetensors_save(io, names, tensors, 2, NULL, 0));
    int rc = run_torch_model("load", init, weights, "chargpt");
    if (rc != 77) rc = rc == 0 ? run_torch_model("outputs", weights, io, "chargpt") : rc;
    unlink(init);
    unlink(weights);
    unlink(io);
    kn_module_free(m);
    kn_generator_free(gen);
    kapi_job_spec_free(job);
    kn_scope_end();
    if (rc == 77) cr_skip_test("/usr/bin/python3 has no torch");
    cr_assert_eq(rc, 0, "torch disagrees (its message is above)");
}

/* ---- training ----------------------------------------------------------------------------- */

static const char RESIDUAL[] =
    "{\"name\": \"residual-mlp\", \"inputs\": [{\"name\": \"x\", \"shape\": [6]}],"
    " \"blocks\": {\"Residual\": {\"inputs\": [\"h\"], \"nodes\": ["
    "   {\"name\": \"fc1\", \"type\": \"linear\", \"out_features\": 16},"
    "   {\"name\": \"act\", \"type\": \"relu\"},"
    "   {\"name\": \"fc2\", \"type\": \"linear\", \"out_features\": 16},"
    "   {\"name\": \"sum\", \"type\": \"add\", \"inputs\": [\"h\", \"fc2\"]}],"
    "  \"outputs\": [\"sum\"]}},"
    " \"nodes\": ["
    "   {\"name\": \"stem\", \"type\": \"linear\", \"input\": \"x\", \"out_features\": 16},"
    "   {\"name\": \"res\", \"type\": \"Residual\", \"repeat\": 3},"
    "   {\"name\": \"norm\", \"type\": \"layer_norm\"},"
    "   {\"name\": \"head\", \"type\": \"linear\", \"out_features\": 3}],"
    " \"outputs\": [\"head\"]}";

Test(graph, a_residual_net_from_a_graph_spec_trains)
{
    kn_scope_begin();
    kapi_model_spec *spec = kn_test_parse_model(RESIDUAL);
    /* three classes by the sign pattern of two features */
    int64_t count = 240;
    float *xs = malloc(sizeof *xs * (size_t)count * 6);
    int64_t *ys = malloc(sizeof *ys * (size_t)count);
    kn_tensor *noise = kn_test_uniform(KN_SHAPE(count, 6), -1, 1, 5);
    ASSERT_OK(kn_copy_to_floats(noise, xs));
    for (int64_t i = 0; i < count; i++) ys[i] = xs[i * 6] > 0 ? (xs[i * 6 + 1] > 0 ? 2 : 1) : 0;
    kn_dataset *ds =
        kn_dataset_new(kn_from_floats(xs, KN_SHAPE(count, 6)), kn_from_int64s(ys, KN_SHAPE(count)));
    cr_assert_not_null(ds, "%s", kn_last_error());
    kn_module *m = kapi_model_build(spec, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    kn_eval_result before, after;
    ASSERT_OK(kn_evaluate(m, ds, KN_LOSS_CROSS_ENTROPY, 1000, &before));
    kn_train_config config = kn_train_config_defaults();
    config.optimizer.lr = 1e-2;
    config.batch_size = 32;
    config.epochs = 15;
    kn_trainer *t = kn_trainer_new(m, &config);
    kn_train_summary summary;
    ASSERT_OK(kn_trainer_run(t, ds, NULL, NULL, &summary));
    ASSERT_OK(kn_evaluate(m, ds, KN_LOSS_CROSS_ENTROPY, 1000, &after));
    cr_assert_lt(after.loss, 0.5 * before.loss, "loss %g -> %g", before.loss, after.loss);
    cr_assert_gt(after.accuracy, 0.9, "accuracy %g", after.accuracy);
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(ds);
    free(xs);
    free(ys);
    kapi_model_spec_free(spec);
    kn_scope_end();
}

/* ---- the command line ----------------------------------------------------------------------- */

/* kiln validate, train and predict on a job whose inline model is a graph spec. */
Test(graph, kiln_validates_trains_and_predicts_a_graph_job)
{
    char kiln[512];
    snprintf(kiln, sizeof kiln, "%s/kiln", KILN_BINARY_DIR);
    if (access(kiln, X_OK) != 0) cr_skip_test("%s is not built", kiln);
    char dir[128], path[256];
    snprintf(dir, sizeof dir, "/tmp/kiln-test-graph-cli-%d", (int)getpid());
    cr_assert_eq(mkdir(dir, 0700), 0);
    snprintf(path, sizeof path, "%s/train.csv", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "a,b,c,d,e,f,label\n");
    for (int i = 0; i < 120; i++) {
        double a = sin(i * 1.7), b = cos(i * 0.9);
        fprintf(f, "%g,%g,%g,%g,%g,%g,%d\n", a, b, a * b, a - b, 0.5, -a,
                a > 0 ? (b > 0 ? 2 : 1) : 0);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/job.json", dir);
    f = fopen(path, "w");
    fprintf(f,
            "{\"model\": %s, \"data\": {\"train\": {\"format\": \"csv\", \"path\": \"train.csv\"}, "
            "\"test\": {\"format\": \"csv\", \"path\": \"train.csv\"}}, \"epochs\": 2, "
            "\"batch_size\": 16}",
            RESIDUAL);
    fclose(f);
    char command[1024], out[4096] = "";
    snprintf(command, sizeof command, "'%s' validate --json '%s/job.json'", kiln, dir);
    FILE *p = popen(command, "r");
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "%s", out);
    cr_assert(strstr(out, "\"nodes\":[{\"name\":\"stem\",\"type\":\"linear\""), "%s", out);
    cr_assert(strstr(out, "{\"name\":\"res.2.sum\",\"type\":\"add\",\"inputs\":[\"res.1.sum\","
                          "\"res.2.fc2\"]"),
              "%s", out);
    snprintf(command, sizeof command, "'%s' train '%s/job.json' --out '%s/run' > /dev/null", kiln,
             dir, dir);
    cr_assert_eq(system(command), 0, "kiln train failed");
    snprintf(command, sizeof command,
             "'%s' predict '%s/run/model.safetensors' '%s/job.json' --limit 3 --json", kiln, dir,
             dir);
    p = popen(command, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "%s", out);
    int lines = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        cJSON *o = cJSON_Parse(line);
        cr_assert(o && cJSON_IsNumber(cJSON_GetObjectItem(o, "class")), "%s", line);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "probabilities")), 3);
        cJSON_Delete(o);
    }
    cr_assert_eq(lines, 3);

    /* an output [N, T, classes] of a classification job: a class per position (issue 12's
     * sequence models), with the probabilities of each */
    const char *grid = "{\"name\": \"grid\", \"inputs\": [{\"name\": \"x\", \"shape\": [6]}], "
                       "\"nodes\": [{\"name\": \"fc\", \"type\": \"linear\", \"out_features\": 6}, "
                       "{\"name\": \"grid\", \"type\": \"reshape\", \"shape\": [2, 3]}], "
                       "\"outputs\": [\"grid\"]}";
    snprintf(path, sizeof path, "%s/grid.json", dir);
    f = fopen(path, "w");
    fprintf(f,
            "{\"model\": %s, \"data\": {\"test\": {\"format\": \"csv\", \"path\": "
            "\"train.csv\"}, \"train\": {\"format\": \"csv\", \"path\": \"train.csv\"}}}",
            grid);
    fclose(f);
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(grid, strlen(grid), &errors);
    cr_assert_not_null(spec);
    kn_module *m = kapi_model_build(spec, NULL);
    snprintf(path, sizeof path, "%s/grid.safetensors", dir);
    ASSERT_OK(kn_module_save_weights(m, path));
    kn_module_free(m);
    kapi_model_spec_free(spec);
    snprintf(command, sizeof command, "'%s' predict '%s' '%s/grid.json' --limit 2 --json", kiln,
             path, dir);
    p = popen(command, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "%s", out);
    lines = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *rows = cJSON_GetObjectItem(o, "probabilities");
        cr_assert(o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "classes")) == 2 &&
                      cJSON_GetArraySize(rows) == 2 &&
                      cJSON_GetArraySize(cJSON_GetArrayItem(rows, 1)) == 3,
                  "%s", line);
        cJSON_Delete(o);
    }
    cr_assert_eq(lines, 2);
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    cr_assert_eq(system(command), 0);
}

/* A model whose second layer shares the first's weight trains (the shared weight gets
 * one update per step), and its checkpoint restores into a fresh model with the tie. */
Test(graph, a_tied_model_trains_and_its_checkpoint_round_trips)
{
    static const char TIED[] =
        "{\"name\": \"tied\", \"inputs\": [{\"name\": \"x\", \"shape\": [6]}], \"nodes\": ["
        "{\"name\": \"fc1\", \"type\": \"linear\", \"out_features\": 6},"
        "{\"name\": \"act\", \"type\": \"tanh\"},"
        "{\"name\": \"fc2\", \"type\": \"linear\", \"out_features\": 6, \"tie\": {\"weight\": "
        "\"fc1.weight\"}},"
        "{\"name\": \"head\", \"type\": \"linear\", \"out_features\": 3}], \"outputs\": "
        "[\"head\"]}";
    kn_scope_begin();
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(TIED, strlen(TIED), &errors);
    cr_assert_not_null(spec);
    cr_assert_eq(spec->parameter_count, 36 + 6 + 6 + 18 + 3);
    kn_module *m = kapi_model_build(spec, NULL);
    cr_assert_eq(kn_module_parameter_count(m), spec->parameter_count);
    int64_t count = 64;
    kn_tensor *x = kn_test_uniform(KN_SHAPE(count, 6), -1, 1, 9);
    int64_t ys[64];
    float xs[64 * 6];
    ASSERT_OK(kn_copy_to_floats(x, xs));
    for (int i = 0; i < count; i++)
        ys[i] = xs[i * 6] > xs[i * 6 + 1] ? 1 : xs[i * 6 + 2] > 0 ? 2 : 0;
    kn_dataset *ds = kn_dataset_new(x, kn_from_int64s(ys, KN_SHAPE(count)));
    kn_train_config config = kn_train_config_defaults();
    config.batch_size = 16;
    config.epochs = 2;
    kn_trainer *t = kn_trainer_new(m, &config);
    kn_train_summary summary;
    ASSERT_OK(kn_trainer_run(t, ds, NULL, NULL, &summary));
    kn_tensor *w1 = kn_module_find(m, "fc1")->tensors[0].tensor;
    cr_assert_eq(kn_module_find(m, "fc2")->tensors[0].tensor, w1, "still tied after training");
    char path[256];
    temp_path(path, sizeof path, "tied.safetensors");
    ASSERT_OK(kn_trainer_save_checkpoint(t, path));
    kn_module *fresh = kapi_model_build(spec, NULL);
    kn_trainer *t2 = kn_trainer_new(fresh, &config);
    ASSERT_OK(kn_trainer_load_checkpoint(t2, path));
    kn_tensor *w = kn_module_find(fresh, "fc1")->tensors[0].tensor;
    cr_assert_eq(kn_module_find(fresh, "fc2")->tensors[0].tensor, w, "tied after loading");
    float a[36], b[36];
    ASSERT_OK(kn_copy_to_floats(w1, a));
    ASSERT_OK(kn_copy_to_floats(w, b));
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "the checkpoint's weight");
    cr_assert_eq(kn_trainer_step(t2), kn_trainer_step(t));
    unlink(path);
    kn_trainer_free(t2);
    kn_trainer_free(t);
    kn_module_free(fresh);
    kn_module_free(m);
    kn_dataset_free(ds);
    kapi_model_spec_free(spec);
    kapi_errors_free(&errors);
    kn_scope_end();
}
