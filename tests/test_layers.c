/*
 * test_layers.c — the layer table (core/kn_layer.h): every kind has one well-formed row
 * (arguments with sane defaults and ranges, a forward), docs/model-spec.md documents
 * every spec layer and argument the table has, modules built from defaults work, the
 * parts of a module the next layers need (named children, many tensors, several
 * inputs) behave, the CUDA-graph capture check reads the rows, and each pointwise
 * activation's op passes a finite-difference check.
 */
#include "kapi.h"
#include "kn_layer.h"
#include "kn_test.h"
#include "nn/nn_internal.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_OK(call) cr_assert_eq((call), KN_OK, "%s", kn_last_error())

/* ---- the rows ------------------------------------------------------------------------- */

Test(layers, every_kind_has_one_well_formed_row)
{
    for (int i = 0; i < KN_MODULE_KIND_COUNT; i++) {
        const kn_layer_type *row = kn_layer_at(i);
        cr_assert_not_null(row, "kind %d has no row", i);
        cr_assert_eq((int)row->kind, i, "%s is listed as kind %d", row->name, i);
        cr_assert_eq(kn_layer_of(row->kind), row);
        cr_assert_eq(kn_layer_find(row->name), row, "%s: another row has its name", row->name);
        cr_assert_str_eq(kn_module_kind_name(row->kind), row->name);
        cr_assert(row->torch_name && row->torch_name[0], "%s has no torch name", row->name);
        cr_assert_not_null(row->forward, "%s has no forward", row->name);
        cr_assert(row->capturable || row->host_bound || row->host_bound_if,
                  "%s neither is capturable nor says why not", row->name);
        int least = row->min_inputs ? row->min_inputs : 1;
        int most = row->max_inputs ? row->max_inputs : 1;
        cr_assert(least >= 1 && least <= most, "%s takes %d to %d inputs", row->name, least, most);
        int n_args = 0;
        for (const kn_layer_arg *a = row->args; a && a->name; a++) n_args++;
        cr_assert_lt(n_args, KN_LAYER_MAX_ARGS, "%s has too many arguments", row->name);
        for (const kn_layer_arg *a = row->args; a && a->name; a++) {
            const char *what = a->name;
            cr_assert_eq(kn_layer_arg_find(row, a->name), a, "%s.%s is given twice", row->name,
                         what);
            cr_assert(strcmp(a->name, "type") != 0, "%s: 'type' names the layer", row->name);
            cr_assert_leq(a->offset, sizeof(kn_layer_options), "%s.%s", row->name, what);
            cr_assert_leq(a->min, a->max, "%s.%s has an empty range", row->name, what);
            bool required = a->flags & KN_ARG_REQUIRED, inferred = a->flags & KN_ARG_INFERRED;
            cr_assert(!(required && inferred), "%s.%s", row->name, what);
            if (a->type == KN_ARG_CHOICE) {
                cr_assert(a->choices && a->choices[0], "%s.%s has no choices", row->name, what);
                int n = 0;
                while (a->choices[n]) n++;
                cr_assert(a->def >= 0 && a->def < n, "%s.%s", row->name, what);
            }
            if (a->default_from) {
                const kn_layer_arg *from = kn_layer_arg_find(row, a->default_from);
                cr_assert(from && from->type == a->type, "%s.%s copies a missing %s", row->name,
                          what, a->default_from);
            }
            /* an optional argument's default is a value the spec could give */
            if (!required && !inferred && !a->default_from &&
                (a->type == KN_ARG_INT || a->type == KN_ARG_NUMBER || a->type == KN_ARG_PAIR))
                cr_assert(a->def >= a->min && a->def <= a->max, "%s.%s: default %g not in [%g, %g]",
                          row->name, what, a->def, a->min, a->max);
        }
    }
    cr_assert_null(kn_layer_of(KN_MODULE_KIND_COUNT));
    cr_assert_null(kn_layer_find("conv3d"));
}

/* Every kind whose arguments all have defaults builds from them, and computes. */
Test(layers, modules_from_defaults)
{
    kn_scope_begin();
    for (int i = 0; i < KN_MODULE_KIND_COUNT; i++) {
        const kn_layer_type *row = kn_layer_at(i);
        bool needs = false;
        for (const kn_layer_arg *a = row->args; a && a->name; a++)
            needs = needs || (a->flags & (KN_ARG_REQUIRED | KN_ARG_INFERRED));
        /* a graph runs nothing until it has nodes; a plain container is never called */
        bool empty_container =
            (row->flags & KN_LAYER_CONTAINER) && row->kind != KN_MODULE_SEQUENTIAL;
        if (needs || row->input_dtype != KN_FLOAT32 || empty_container) continue;
        kn_module *m = kn_module_new(row->kind, NULL, NULL);
        cr_assert_not_null(m, "%s: %s", row->name, kn_last_error());
        cr_assert_str_eq(m->type_name, row->torch_name);
        kn_tensor *x = kn_ones(KN_SHAPE(2, 4, 4), KN_FLOAT32);
        kn_tensor *inputs[] = {x, x}; /* add, mul, matmul: as many as the row takes at least */
        kn_tensor *y = kn_module_forward_n(m, inputs, row->min_inputs ? row->min_inputs : 1);
        cr_assert_not_null(y, "%s: %s", row->name, kn_last_error());
        char *repr = kn_module_describe(m);
        cr_assert(repr && strncmp(repr, row->torch_name, strlen(row->torch_name)) == 0, "%s", repr);
        free(repr);
        kn_module_free(m);
    }
    kn_layer_options o;
    kn_layer_defaults(KN_MODULE_MAX_POOL2D, &o);
    cr_assert_eq(o.max_pool2d.dilation[1], 1);
    kn_layer_defaults(KN_MODULE_BATCH_NORM2D, &o);
    cr_assert(o.batch_norm.eps == 1e-5 && o.batch_norm.momentum == 0.1 && o.batch_norm.affine);
    cr_assert_null(kn_module_new(KN_MODULE_KIND_COUNT, NULL, NULL));
    cr_assert_null(kn_module_new(KN_MODULE_LINEAR, NULL, NULL)); /* in_features 0 */
    cr_assert(strstr(kn_last_error(), "Linear: in_features must be positive"), "%s",
              kn_last_error());
    kn_scope_end();
}

/* ---- docs/model-spec.md reads the table ----------------------------------------------- */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    cr_assert_eq(fread(text, 1, (size_t)size, f), (size_t)size);
    text[size] = '\0';
    fclose(f);
    return text;
}

/* The "### " section whose heading has `name`, up to the next heading; NULL if none. */
static char *doc_section(const char *doc, const char *name)
{
    char quoted[96];
    snprintf(quoted, sizeof quoted, "`%s`", name);
    for (const char *p = strstr(doc, "\n### "); p; p = strstr(p + 1, "\n### ")) {
        const char *eol = strchr(p + 1, '\n');
        if (!eol) break;
        const char *hit = strstr(p, quoted);
        if (!hit || hit > eol) continue;
        const char *end = strstr(eol, "\n#");
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char *section = malloc(n + 1);
        memcpy(section, p, n);
        section[n] = '\0';
        return section;
    }
    return NULL;
}

static const char *doc_type(kn_arg_type type)
{
    switch (type) {
    case KN_ARG_INT:
        return "integer";
    case KN_ARG_NUMBER:
        return "number";
    case KN_ARG_BOOL:
        return "boolean";
    case KN_ARG_PAIR:
        return "int or pair";
    case KN_ARG_INTS:
        return "int or list";
    case KN_ARG_CHOICE:
        return "string";
    }
    return "?";
}

/* A table row of section that documents arg: "| `name` | type | default | ..." (or, in
 * a table of several layers, "| `layer` | `name` | type | ..."). */
static bool documents(const char *section, const char *layer, const kn_layer_arg *a)
{
    char cell[96], layer_cell[96];
    snprintf(cell, sizeof cell, "| `%s` | %s |", a->name, doc_type(a->type));
    snprintf(layer_cell, sizeof layer_cell, "| `%s` ", layer);
    for (const char *line = section; line; line = strchr(line, '\n')) {
        line++;
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        char text[512];
        snprintf(text, sizeof text, "%.*s", (int)n, line);
        const char *hit = strstr(text, cell);
        if (!hit) continue;
        if (hit != text && strncmp(text, layer_cell, strlen(layer_cell)) != 0) continue;
        bool required = strstr(hit + strlen(cell), "required") != NULL;
        if (required == ((a->flags & KN_ARG_REQUIRED) != 0)) return true;
    }
    return false;
}

Test(layers, docs_document_every_layer_and_argument)
{
    char *doc = read_text(KILN_SOURCE_DIR "/docs/model-spec.md");
    for (int i = 0; i < KN_MODULE_KIND_COUNT; i++) {
        const kn_layer_type *row = kn_layer_at(i);
        if (row->flags & KN_LAYER_CONTAINER) continue;
        char *section = doc_section(doc, row->name);
        cr_assert_not_null(section, "docs/model-spec.md has no \"### ... `%s`\" section",
                           row->name);
        for (const kn_layer_arg *a = row->args; a && a->name; a++)
            cr_expect(documents(section, row->name, a),
                      "docs/model-spec.md, `%s`: no row \"| `%s` | %s | ...\"%s", row->name,
                      a->name, doc_type(a->type), a->flags & KN_ARG_REQUIRED ? " (required)" : "");
        free(section);
    }
    free(doc);
}

/* ---- what modules of the next layers need ------------------------------------------------ */

Test(layers, named_children_many_tensors_and_inputs)
{
    kn_scope_begin();
    kn_module *block = kn_sequential_new();
    ASSERT_OK(kn__module_child(block, "self_attn", kn_linear_new(2, 2, true, NULL)));
    ASSERT_OK(kn__module_child(block, NULL, kn_relu_new())); /* its index: "1" */
    kn_module *m = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(m, block));
    /* more tensors than the 5 of a batch norm: an LSTM has 4 per layer and direction */
    kn_module *many = kn_relu_new();
    for (int i = 0; i < 12; i++) {
        char name[32];
        snprintf(name, sizeof name, "weight_ih_l%d", i);
        cr_assert_not_null(kn__module_parameter(many, name, KN_SHAPE(2), 0.5 * i));
    }
    ASSERT_OK(kn_sequential_append(m, many));
    int n;
    kn_named_tensor *sd = kn_module_state_dict(m, &n);
    cr_assert_eq(n, 14);
    cr_assert_str_eq(sd[0].name, "0.self_attn.weight");
    cr_assert_str_eq(sd[1].name, "0.self_attn.bias");
    cr_assert_str_eq(sd[13].name, "1.weight_ih_l11");
    free(sd);
    cr_assert_eq(kn_module_parameter_count(m), 6 + 24);
    char *repr = kn_module_describe(m);
    cr_assert_str_eq(repr, "Sequential(\n"
                           "  (0): Sequential(\n"
                           "    (self_attn): Linear(in_features=2, out_features=2, bias=True)\n"
                           "    (1): ReLU()\n"
                           "  )\n"
                           "  (1): ReLU()\n"
                           ")");
    free(repr);
    cr_assert_null(kn__module_parameter(
        many, "a_name_longer_than_the_48_bytes_a_module_tensor_name_has", NULL, 0, 0));
    /* a one-input layer refuses two inputs */
    kn_tensor *x = kn_ones(KN_SHAPE(1, 2), KN_FLOAT32);
    kn_tensor *two[2] = {x, x};
    cr_assert_null(kn_module_forward_n(block->children[0], two, 2));
    cr_assert(strstr(kn_last_error(), "Linear: takes 1 input, got 2"), "%s", kn_last_error());
    cr_assert_not_null(kn_module_forward_n(block->children[0], two, 1));
    kn_module_free(m);
    kn_scope_end();
}

Test(layers, cuda_graph_capture_reads_the_rows)
{
    kn_module *m = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(m, kn_linear_new(4, 4, true, NULL)));
    ASSERT_OK(kn_sequential_append(m, kn_dropout_new(0.0)));
    cr_assert_null(kn_layer_host_bound(m), "%s", kn_layer_host_bound(m));
    kn_module *inner = kn_sequential_new();
    ASSERT_OK(kn_sequential_append(inner, kn_dropout_new(0.1)));
    ASSERT_OK(kn_sequential_append(m, inner));
    cr_assert_str_eq(kn_layer_host_bound(m), "Dropout draws its mask on the cpu at every step");
    kn_module_free(m);
    m = kn_batch_norm1d_new(4, 1e-5, 0.1, true, true);
    cr_assert_str_eq(kn_layer_host_bound(m), "BatchNorm counts batches on the cpu");
    kn_module_free(m);
    m = kn_embedding_new(4, 2, NULL);
    cr_assert_not_null(kn_layer_host_bound(m));
    kn_module_free(m);
}

/* ---- the shape rules -------------------------------------------------------------------- */

/* The spec's rules on a built module and on options with inferred arguments left at 0. */
Test(layers, shape_rules_infer_and_check)
{
    kn_layer_options o;
    kn_layer_defaults(KN_MODULE_CONV2D, &o);
    o.conv2d.out_channels = 8;
    o.conv2d.kernel_size[0] = o.conv2d.kernel_size[1] = 3;
    kn_layer_io in = {.shape = {3, 10, 12}, .ndim = 3};
    kn_layer_shape s = {
        .type = kn_layer_of(KN_MODULE_CONV2D), .options = &o, .inputs = &in, .n_inputs = 1};
    cr_assert(kn_layer_infer(&s), "%s", s.message);
    cr_assert_eq(o.conv2d.in_channels, 3, "in_channels is inferred");
    cr_assert(s.output.ndim == 3 && s.output.shape[0] == 8 && s.output.shape[1] == 8 &&
              s.output.shape[2] == 10);
    cr_assert_eq(s.parameter_count, 8 * 3 * 9 + 8);
    in.shape[0] = 4;
    cr_assert_not(kn_layer_infer(&s));
    cr_assert_str_eq(s.field, "in_channels");
    cr_assert_str_eq(s.message, "expected 4 (inferred from the input [4, 10, 12]), got 3");
    /* int64 indices only where the row takes them */
    in.dtype = KN_INT64;
    cr_assert_not(kn_layer_infer(&s));
    cr_assert_null(s.field);
    cr_assert_str_eq(s.message, "expects float32 inputs, got a int64 input");
    kn_layer_defaults(KN_MODULE_BATCH_NORM1D, &o);
    kn_layer_io flat = {.shape = {6}, .ndim = 1};
    s = (kn_layer_shape){
        .type = kn_layer_of(KN_MODULE_BATCH_NORM1D), .options = &o, .inputs = &flat, .n_inputs = 1};
    cr_assert(kn_layer_infer(&s), "%s", s.message);
    cr_assert_eq(s.buffer_bytes, 2 * 4 * 6 + 8);
    o.batch_norm.track_running_stats = false;
    o.batch_norm.num_features = 0;
    cr_assert(kn_layer_infer(&s), "%s", s.message);
    cr_assert_eq(s.buffer_bytes, 0);
}

/* ---- the pointwise activations' ops under finite differences ---------------------------- */

typedef struct {
    const char *name;
    kn_tensor *(*op)(kn_tensor *);
} activation;

static kn_tensor *gelu_exact(kn_tensor *x)
{
    return kn_gelu(x, KN_GELU_EXACT);
}
static kn_tensor *gelu_tanh(kn_tensor *x)
{
    return kn_gelu(x, KN_GELU_TANH);
}
static kn_tensor *leaky_relu(kn_tensor *x)
{
    return kn_leaky_relu(x, 0.1);
}

static const activation ACTIVATIONS[] = {
    {"relu", kn_relu},        {"leaky_relu", leaky_relu}, {"gelu", gelu_exact},
    {"gelu_tanh", gelu_tanh}, {"silu", kn_silu},          {"tanh", kn_tanh},
    {"sigmoid", kn_sigmoid},
};

static kn_tensor *apply(kn_tensor **inputs, void *context)
{
    return ((const activation *)context)->op(inputs[0]);
}

Test(layers, activations_pass_finite_differences)
{
    kn_scope_begin();
    for (size_t i = 0; i < sizeof ACTIVATIONS / sizeof *ACTIVATIONS; i++) {
        /* fixed draws, none within the step of relu's kink at 0 */
        kn_tensor *x = kn_set_requires_grad(kn_test_uniform(KN_SHAPE(3, 7), -2.5, 2.5, 11), true);
        KN_ASSERT_GRADCHECK(apply, &x, 1, (void *)&ACTIVATIONS[i]);
    }
    kn_scope_end();
}

/* ---- silu, the worked example of docs/adding-a-layer.md: spec to module to output ------- */

Test(layers, silu_from_a_spec)
{
    kn_scope_begin();
    const char *json = "{\"input_shape\": [4], \"layers\": [{\"type\": \"linear\", "
                       "\"out_features\": 3}, {\"type\": \"silu\"}, {\"type\": \"silu\", "
                       "\"inplace\": true}]}";
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(json, strlen(json), &errors);
    cr_assert_not_null(spec, "%s", errors.count ? errors.items[0].message : "");
    cr_assert_eq(spec->layers[1].kind, KN_MODULE_SILU);
    cr_assert_eq(spec->layers[2].out_shape[0], 3);
    kn_module *m = kapi_model_build(spec, NULL);
    cr_assert_not_null(m, "%s", kn_last_error());
    char *repr = kn_module_describe(m);
    cr_assert(strstr(repr, "(1): SiLU()\n  (2): SiLU()"), "%s", repr);
    free(repr);
    kn_tensor *x = kn_test_uniform(KN_SHAPE(2, 4), -3, 3, 5);
    kn_tensor *h = kn_module_forward(m->children[0], x);
    float v[6];
    kn_copy_to_floats(h, v);
    for (int i = 0; i < 6; i++) {
        v[i] = v[i] / (1.f + expf(-v[i]));
        v[i] = v[i] / (1.f + expf(-v[i]));
    }
    KN_ASSERT_VALUES(kn_module_forward(m, x), v);
    kn_module_free(m);
    kapi_model_spec_free(spec);
    /* a silu takes no argument but inplace */
    json = "{\"input_shape\": [4], \"layers\": [{\"type\": \"silu\", \"beta\": 1}]}";
    cr_assert_null(kapi_model_spec_parse(json, strlen(json), &errors));
    cr_assert_str_eq(errors.items[errors.count - 1].path, "layers[0].beta");
    cr_assert_str_eq(errors.items[errors.count - 1].message,
                     "unknown field (expected one of: type, inplace)");
    kapi_errors_free(&errors);
    kn_scope_end();
}
