/*
 * model_graph_shape.c — a checked graph spec made into the model's flat list of nodes:
 * blocks expanded in place (an instance "blocks" with "repeat": 4 is the ModuleList
 * "blocks" of the containers "blocks.0" .. "blocks.3", each holding the block's nodes
 * under its own names: "blocks.3.attn"), each node's output shapes and dtypes inferred
 * from its inputs' by its row's shape rule (kn_layer_infer), in an order that runs, and
 * weight ties checked against the parameters' shapes. Nodes are kept in the order their
 * modules are registered (the spec's, blocks in place), which is the order torch's
 * __init__ would register them in, and so the order of the state dict and of the draws
 * that initialise them.
 */
#include "graph_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SAMPLE_NUMEL (1LL << 31)
#define MAX_PARAMETERS (1LL << 36)
#define KEY_MAX (1 + 2 * (KAPI_GRAPH_MAX_DEPTH + 1))
#define NODE_PATH_MAX 64 /* a node's full path: its state-dict names stay under 96 */

/* Where a node is in the spec: its index in the model's nodes, then for each block
 * instance around it the copy and the index in the block's nodes. Sorting by it gives
 * the registration order. */
typedef struct node_key {
    int k[KEY_MAX];
    int n;
} node_key;

typedef struct flat_node {
    kapi_layer_spec layer;
    node_key key;
    int run; /* its place in the order nodes run */
} flat_node;

typedef struct expansion {
    graph_parse *gp;
    kapi_errors *errors;
    int n_nodes, nodes_capacity;
    flat_node *nodes; /* in the order they run */
    int n_values, values_capacity;
    kapi_value_spec *values;
    int n_containers, containers_capacity;
    kapi_container_spec *containers;
} expansion;

static bool grow(expansion *x, void **items, int count, int *capacity, size_t size)
{
    if (count < *capacity) return true;
    int want = *capacity ? 2 * *capacity : 64;
    void *grown = realloc(*items, size * (size_t)want);
    if (!grown) {
        kapi_errors_add(x->errors, x->gp->prefix, "out of memory");
        return false;
    }
    *items = grown;
    *capacity = want;
    return true;
}

static int add_value(expansion *x, const char *name, const kn_layer_io *io)
{
    if (!grow(x, (void **)&x->values, x->n_values, &x->values_capacity, sizeof *x->values))
        return -1;
    kapi_value_spec *v = &x->values[x->n_values];
    memset(v, 0, sizeof *v);
    snprintf(v->name, sizeof v->name, "%s", name);
    memcpy(v->shape, io->shape, sizeof v->shape);
    v->ndim = io->ndim;
    v->dtype = io->dtype;
    return x->n_values++;
}

static kn_layer_io value_io(const expansion *x, int id)
{
    kn_layer_io io;
    memset(&io, 0, sizeof io);
    memcpy(io.shape, x->values[id].shape, sizeof io.shape);
    io.ndim = x->values[id].ndim;
    io.dtype = x->values[id].dtype;
    return io;
}

static bool add_container(expansion *x, const char *path, const char *class_name)
{
    if (!grow(x, (void **)&x->containers, x->n_containers, &x->containers_capacity,
              sizeof *x->containers))
        return false;
    kapi_container_spec *c = &x->containers[x->n_containers++];
    snprintf(c->path, sizeof c->path, "%.79s", path);
    snprintf(c->class_name, sizeof c->class_name, "%s", class_name);
    return true;
}

/* "[N, 64, 128]" */
static const char *value_shape(const expansion *x, int id, char *buf, size_t size)
{
    const kapi_value_spec *v = &x->values[id];
    int64_t batched[KN_MAX_DIMS + 1] = {1};
    memcpy(batched + 1, v->shape, sizeof(int64_t) * (size_t)v->ndim);
    kn_shape_str(batched, v->ndim + 1, buf, size);
    size_t n = strlen(buf);
    /* "[1, 64]" with the batch dim written as N: "[N, 64]" */
    if (n > 1) {
        char rest[128];
        const char *after = strchr(buf, ',');
        snprintf(rest, sizeof rest, "[N%s", after ? after : "]");
        snprintf(buf, size, "%s", rest);
    }
    return buf;
}

/* ---- one node ------------------------------------------------------------------------------ */

/* The path of a node's i-th input as written ("nodes[3].inputs[1]", "nodes[3].input"; the
 * node itself when it took the previous node's output). */
static void input_path(const gnode *node, int i, char *out)
{
    char list[KAPI_PATH_MAX];
    if (node->implicit) {
        snprintf(out, KAPI_PATH_MAX, "%s", node->path);
    } else if (node->single) {
        kapi__path(out, node->path, "input");
    } else {
        kapi__path(list, node->path, "inputs");
        kapi__path_index(out, list, i);
    }
}

/* What one instance of a scope knows: the ids of its inputs' values and of its nodes'
 * outputs (ids[k * KN_LAYER_MAX_OUTPUTS + j], count[k] of them). */
typedef struct instance {
    const gscope *scope;
    const int *in_ids;
    int *ids, *count;
} instance;

/* The value a reference names. */
static bool ref_value(expansion *x, const instance *in, const gref *ref, const char *path, int *out)
{
    if (ref->input >= 0) {
        *out = in->in_ids[ref->input];
        return true;
    }
    const char *name = in->scope->nodes[ref->node].name;
    int n = in->count[ref->node];
    if (n > 1 && ref->index < 0) {
        kapi_errors_add(x->errors, path, "node \"%s\" gives %d outputs: write %s:0 to %s:%d", name,
                        n, name, name, n - 1);
        return false;
    }
    if (n == 1 && ref->index >= 0) {
        kapi_errors_add(x->errors, path, "node \"%s\" gives one output: write \"%s\"", name, name);
        return false;
    }
    if (ref->index >= n) {
        kapi_errors_add(x->errors, path, "node \"%s\" gives %d outputs (%s:0 to %s:%d), got %s",
                        name, n, name, name, n - 1, ref->text);
        return false;
    }
    *out = in->ids[ref->node * KN_LAYER_MAX_OUTPUTS + (ref->index < 0 ? 0 : ref->index)];
    return true;
}

/* A float layer given indices, or embedding given values: said at the input's path. */
static bool check_dtypes(expansion *x, const gnode *node, const char *full, const int *in,
                         const kn_layer_io *ins)
{
    const kn_layer_type *row = node->row;
    if (row->flags & KN_LAYER_ANY_DTYPE) return true; /* one dtype: kn_layer_infer */
    /* a row that checks its own dtypes (attention's int64 key-padding mask after the
     * sequence) takes input_dtype first: its rule says what the others must be */
    int n = row->flags & KN_LAYER_OWN_DTYPES ? 1 : node->n_refs;
    char path[KAPI_PATH_MAX];
    for (int i = 0; i < n; i++) {
        if (ins[i].dtype == row->input_dtype) continue;
        input_path(node, i, path);
        const char *source = x->values[in[i]].name;
        if (row->input_dtype == KN_FLOAT32)
            kapi_errors_add(x->errors, path,
                            "node %s: \"%s\" is int64 (indices), but %s takes float32 values (an "
                            "embedding turns indices into vectors)",
                            full, source, row->name);
        else
            kapi_errors_add(
                x->errors, path, "node %s: \"%s\" is float32, but %s takes int64 indices (%s)",
                full, source, row->name,
                in[i] < x->gp->top.n_inputs ? "declare the input with \"dtype\": \"int64\""
                                            : "indices come from an int64 input, not from a layer");
        return false;
    }
    return true;
}

/* A layer node: its outputs inferred from its inputs' values, appended to the model. */
static bool infer_layer(expansion *x, const gnode *node, const char *full, const int *in,
                        const node_key *key, int *ids, int *count)
{
    kn_layer_io ins[KN_GRAPH_MAX_INPUTS];
    for (int i = 0; i < node->n_refs; i++) ins[i] = value_io(x, in[i]);
    if (!check_dtypes(x, node, full, in, ins)) return false;
    kn_layer_options options = node->options; /* each copy infers its own */
    kn_layer_shape s = {.type = node->row,
                        .options = &options,
                        .inputs = ins,
                        .n_inputs = node->n_refs,
                        .in_graph = true};
    if (!kn_layer_infer(&s)) {
        char field[KAPI_PATH_MAX];
        if (s.field) {
            kapi__path(field, node->path, s.field);
            kapi_errors_add(x->errors, field, "node %s: %s", full, s.message);
        } else {
            kapi_errors_add(x->errors, node->path, "node %s: %s %s", full, node->row->name,
                            s.message);
        }
        return false;
    }
    char text[96];
    for (int j = 0; j < s.n_outputs; j++) {
        double numel = 1;
        for (int d = 0; d < s.outputs[j].ndim; d++) numel *= (double)s.outputs[j].shape[d];
        if (numel > (double)MAX_SAMPLE_NUMEL) {
            kapi_errors_add(x->errors, node->path,
                            "node %s: the output %s has %.0f elements per sample (at most %lld)",
                            full,
                            kn_shape_str(s.outputs[j].shape, s.outputs[j].ndim, text, sizeof text),
                            numel, (long long)MAX_SAMPLE_NUMEL);
            return false;
        }
    }
    if (x->n_nodes == KAPI_GRAPH_MAX_EXPANDED) {
        kapi_errors_add(x->errors, node->path,
                        "node %s: the model has more than %d nodes with its blocks expanded", full,
                        KAPI_GRAPH_MAX_EXPANDED);
        return false;
    }
    if (!grow(x, (void **)&x->nodes, x->n_nodes, &x->nodes_capacity, sizeof *x->nodes))
        return false;
    flat_node *f = &x->nodes[x->n_nodes];
    memset(f, 0, sizeof *f);
    f->key = *key;
    f->run = x->n_nodes;
    kapi_layer_spec *layer = &f->layer;
    layer->kind = node->row->kind;
    layer->type = node->row->name;
    layer->options = options;
    snprintf(layer->name, sizeof layer->name, "%s", full);
    memcpy(layer->in_shape, ins[0].shape, sizeof layer->in_shape);
    layer->in_ndim = ins[0].ndim;
    memcpy(layer->out_shape, s.outputs[0].shape, sizeof layer->out_shape);
    layer->out_ndim = s.outputs[0].ndim;
    layer->parameter_count = s.parameter_count;
    layer->buffer_bytes = s.buffer_bytes;
    layer->saved_elements = s.saved_elements;
    layer->n_inputs = node->n_refs;
    memcpy(layer->inputs, in, sizeof(int) * (size_t)node->n_refs);
    layer->first_output = x->n_values;
    layer->n_outputs = s.n_outputs;
    x->n_nodes++;
    for (int j = 0; j < s.n_outputs; j++) {
        char name[KAPI_NODE_NAME_MAX + 8];
        if (s.n_outputs == 1)
            snprintf(name, sizeof name, "%s", full);
        else
            snprintf(name, sizeof name, "%s:%d", full, j);
        ids[j] = add_value(x, name, &s.outputs[j]);
        if (ids[j] < 0) return false;
    }
    *count = s.n_outputs;
    return true;
}

static bool expand(expansion *x, const gscope *scope, const char *prefix, const int *in_ids,
                   const node_key *key, int *out_ids);

/* A block instance: one copy of the block (or, with repeat, a ModuleList of copies, each
 * copy's first output the next one's first input). */
static bool expand_block(expansion *x, const gnode *node, int listed, const char *full,
                         const int *in, const node_key *key, int *ids, int *count)
{
    const gscope *block = &x->gp->blocks[node->block];
    if (node->n_refs != block->n_inputs) {
        kapi_errors_add(x->errors, node->path, "node %s: block %s takes %d input%s (%s%s), got %d",
                        full, block->name, block->n_inputs, block->n_inputs == 1 ? "" : "s",
                        block->inputs[0], block->n_inputs > 1 ? ", ..." : "", node->n_refs);
        return false;
    }
    int copies = node->repeat > 0 ? (int)node->repeat : 1;
    if (node->repeat > 0 && !add_container(x, full, "ModuleList")) return false;
    int current[KN_GRAPH_MAX_INPUTS], outs[KN_GRAPH_MAX_INPUTS];
    memcpy(current, in, sizeof(int) * (size_t)node->n_refs);
    char shape_in[128], shape_out[128];
    for (int r = 0; r < copies; r++) {
        char copy[KAPI_NODE_NAME_MAX + 16], inner_prefix[KAPI_NODE_NAME_MAX + 24];
        if (node->repeat > 0)
            snprintf(copy, sizeof copy, "%s.%d", full, r);
        else
            snprintf(copy, sizeof copy, "%s", full);
        if (!add_container(x, copy, block->name)) return false;
        snprintf(inner_prefix, sizeof inner_prefix, "%s.", copy);
        node_key inner = *key;
        inner.k[inner.n++] = listed;
        inner.k[inner.n++] = r;
        if (!expand(x, block, inner_prefix, current, &inner, outs)) return false;
        if (r + 1 < copies) {
            const kapi_value_spec *a = &x->values[current[0]], *b = &x->values[outs[0]];
            bool same = a->ndim == b->ndim && a->dtype == b->dtype &&
                        memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0;
            if (!same) {
                kapi_errors_add(
                    x->errors, node->path,
                    "node %s: block %s gives %s (%s) from %s (%s): with repeat, each "
                    "copy's first output is the next copy's first input, so they "
                    "must agree",
                    copy, block->name, value_shape(x, outs[0], shape_out, sizeof shape_out),
                    kn_dtype_name(b->dtype), value_shape(x, current[0], shape_in, sizeof shape_in),
                    kn_dtype_name(a->dtype));
                return false;
            }
            current[0] = outs[0];
        }
    }
    memcpy(ids, outs, sizeof(int) * (size_t)block->n_outputs);
    *count = block->n_outputs;
    return true;
}

/* One instance of scope under prefix ("" for the model, "blocks.3." for a copy of a
 * block), its inputs the values in_ids; out_ids gets its outputs' values. */
static bool expand(expansion *x, const gscope *scope, const char *prefix, const int *in_ids,
                   const node_key *key, int *out_ids)
{
    int n = scope->n_nodes;
    int *ids = malloc(sizeof *ids * (size_t)n * KN_LAYER_MAX_OUTPUTS);
    int *count = calloc((size_t)n, sizeof *count);
    bool ok = ids && count;
    if (!ok) kapi_errors_add(x->errors, scope->path, "out of memory");
    instance inst = {.scope = scope, .in_ids = in_ids, .ids = ids, .count = count};
    char path[KAPI_PATH_MAX];
    for (int o = 0; ok && o < n; o++) {
        int k = scope->order[o];
        const gnode *node = &scope->nodes[k];
        char full[KAPI_NODE_NAME_MAX + 24];
        snprintf(full, sizeof full, "%s%s", prefix, node->name);
        if (strlen(full) >= NODE_PATH_MAX) {
            kapi_errors_add(x->errors, node->path,
                            "node %s: the path is longer than %d characters (state-dict names "
                            "must stay under 96)",
                            full, NODE_PATH_MAX - 1);
            ok = false;
            break;
        }
        int in[KN_GRAPH_MAX_INPUTS];
        for (int i = 0; ok && i < node->n_refs; i++) {
            input_path(node, i, path);
            ok = ref_value(x, &inst, &node->refs[i], path, &in[i]);
        }
        if (!ok) break;
        node_key here = *key;
        if (node->row) {
            here.k[here.n++] = k;
            ok = infer_layer(x, node, full, in, &here, ids + k * KN_LAYER_MAX_OUTPUTS, &count[k]);
        } else {
            ok = expand_block(x, node, k, full, in, key, ids + k * KN_LAYER_MAX_OUTPUTS, &count[k]);
        }
    }
    char list[KAPI_PATH_MAX];
    kapi__path(list, scope->path, "outputs");
    for (int i = 0; ok && i < scope->n_outputs; i++) {
        kapi__path_index(path, list, i);
        ok = ref_value(x, &inst, &scope->outputs[i], path, &out_ids[i]);
    }
    free(ids);
    free(count);
    return ok;
}

/* ---- ties ----------------------------------------------------------------------------------- */

static flat_node *node_named(expansion *x, const char *name)
{
    for (int i = 0; i < x->n_nodes; i++)
        if (strcmp(x->nodes[i].layer.name, name) == 0) return &x->nodes[i];
    return NULL;
}

static int64_t io_numel(const kn_layer_io *io)
{
    int64_t n = 1;
    for (int d = 0; d < io->ndim; d++) n *= io->shape[d];
    return n;
}

/* A parameter of a node that can be tied, or false with an error at path. */
static bool tie_end(expansion *x, const char *path, const flat_node *f, const char *parameter,
                    kn_layer_io *shape)
{
    const kn_layer_type *row = kn_layer_of(f->layer.kind);
    if (!row->parameter_shape) {
        kapi_errors_add(x->errors, path,
                        "node %s is a %s, whose parameters cannot be tied (linear and embedding "
                        "weights can)",
                        f->layer.name, row->name);
        return false;
    }
    if (!row->parameter_shape(&f->layer.options, parameter, shape)) {
        kapi_errors_add(x->errors, path, "node %s (%s) has no parameter \"%s\"", f->layer.name,
                        row->name, parameter);
        return false;
    }
    return true;
}

static bool tie_nodes(expansion *x)
{
    const gscope *top = &x->gp->top;
    char path[KAPI_PATH_MAX], tie_path[KAPI_PATH_MAX], a[96], b[96];
    for (int k = 0; k < top->n_nodes; k++) {
        const gnode *node = &top->nodes[k];
        for (int t = 0; t < node->n_ties; t++) {
            const kapi_tie_spec *tie = &node->ties[t];
            kapi__path(tie_path, node->path, "tie");
            kapi__path(path, tie_path, tie->parameter);
            flat_node *f = node_named(x, node->name);
            kn_layer_io mine, theirs;
            if (!f || !tie_end(x, path, f, tie->parameter, &mine)) return false;
            const char *dot = strrchr(tie->to, '.');
            char target[KAPI_NODE_NAME_MAX + 32];
            snprintf(target, sizeof target, "%.*s", (int)(dot - tie->to), tie->to);
            flat_node *g = node_named(x, target);
            if (!g) {
                kapi_errors_add(x->errors, path,
                                "no node \"%s\" in the model (\"%s\" names a parameter by its "
                                "node's path and its name, e.g. \"wte.weight\")",
                                target, tie->to);
                return false;
            }
            if (g == f) {
                kapi_errors_add(x->errors, path, "a parameter of node %s cannot be tied to its own",
                                f->layer.name);
                return false;
            }
            if (!tie_end(x, path, g, dot + 1, &theirs)) return false;
            if (mine.ndim != theirs.ndim ||
                memcmp(mine.shape, theirs.shape, sizeof(int64_t) * (size_t)mine.ndim) != 0) {
                kapi_errors_add(x->errors, path, "node %s: %s.%s is %s but %s is %s", f->layer.name,
                                f->layer.name, tie->parameter,
                                kn_shape_str(mine.shape, mine.ndim, a, sizeof a), tie->to,
                                kn_shape_str(theirs.shape, theirs.ndim, b, sizeof b));
                return false;
            }
            for (int j = 0; j < g->layer.n_ties; j++)
                if (strcmp(g->layer.ties[j].parameter, dot + 1) == 0) {
                    kapi_errors_add(x->errors, path, "%s is itself tied to %s: tie to that",
                                    tie->to, g->layer.ties[j].to);
                    return false;
                }
            f->layer.ties[f->layer.n_ties++] = *tie;
            f->layer.parameter_count -= io_numel(&mine); /* one parameter, counted once */
        }
    }
    return true;
}

/* ---- the model --------------------------------------------------------------------------------
 */

static int compare_keys(const void *pa, const void *pb)
{
    const node_key *a = &((const flat_node *)pa)->key, *b = &((const flat_node *)pb)->key;
    for (int i = 0; i < a->n && i < b->n; i++)
        if (a->k[i] != b->k[i]) return a->k[i] < b->k[i] ? -1 : 1;
    return a->n - b->n;
}

/* spec's layers in registration order, run_order the order they run. */
static bool store_nodes(expansion *x, kapi_model_spec *spec)
{
    int n = x->n_nodes;
    spec->layers = malloc(sizeof *spec->layers * (size_t)n);
    spec->run_order = malloc(sizeof *spec->run_order * (size_t)n);
    if (!spec->layers || !spec->run_order) {
        kapi_errors_add(x->errors, x->gp->prefix, "out of memory");
        return false;
    }
    qsort(x->nodes, (size_t)n, sizeof *x->nodes, compare_keys);
    for (int i = 0; i < n; i++) {
        spec->layers[i] = x->nodes[i].layer;
        spec->run_order[x->nodes[i].run] = i;
    }
    spec->n_layers = n;
    return true;
}

bool kapi__graph_expand(graph_parse *gp, kapi_model_spec *spec)
{
    expansion x = {.gp = gp, .errors = gp->errors};
    const gscope *top = &gp->top;
    int in_ids[KN_GRAPH_MAX_INPUTS], out_ids[KN_GRAPH_MAX_INPUTS];
    bool ok = true;
    for (int i = 0; ok && i < top->n_inputs; i++) {
        in_ids[i] = add_value(&x, top->inputs[i], &top->input_io[i]);
        ok = in_ids[i] >= 0;
    }
    node_key key = {.n = 0};
    ok = ok && expand(&x, top, "", in_ids, &key, out_ids) && tie_nodes(&x);
    double parameters = 0;
    for (int i = 0; ok && i < x.n_nodes; i++)
        parameters += (double)x.nodes[i].layer.parameter_count;
    if (ok && parameters > (double)MAX_PARAMETERS) {
        char path[KAPI_PATH_MAX];
        kapi__path(path, gp->prefix, "nodes");
        kapi_errors_add(x.errors, path, "the model has %.0f parameters (at most %lld)", parameters,
                        (long long)MAX_PARAMETERS);
        ok = false;
    }
    ok = ok && store_nodes(&x, spec);
    if (ok) {
        spec->graph = true;
        spec->parameter_count = (int64_t)parameters;
        spec->n_inputs = top->n_inputs;
        spec->n_outputs = top->n_outputs;
        for (int i = 0; i < top->n_outputs; i++) {
            spec->outputs[i] = out_ids[i];
            /* an output is called what "outputs" calls it ("blocks", not "blocks.3.add") */
            snprintf(x.values[out_ids[i]].name, sizeof x.values[0].name, "%s",
                     top->outputs[i].text);
        }
        spec->values = x.values;
        spec->n_values = x.n_values;
        spec->containers = x.containers;
        spec->n_containers = x.n_containers;
        x.values = NULL;
        x.containers = NULL;
        const kapi_value_spec *in = &spec->values[0], *out = &spec->values[spec->outputs[0]];
        memcpy(spec->input_shape, in->shape, sizeof spec->input_shape);
        spec->input_ndim = in->ndim;
        spec->input_dtype = in->dtype; /* what a dataset feeds (int64 tokens stay int64) */
        memcpy(spec->output_shape, out->shape, sizeof spec->output_shape);
        spec->output_ndim = out->ndim;
    }
    free(x.nodes);
    free(x.values);
    free(x.containers);
    return ok;
}
