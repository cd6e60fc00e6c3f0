/*
 * layer_graph.c — models beyond a chain: the module tree under dotted paths
 * (kn_module_add, kn_module_find, containers with a class name: torch's nn.Module and
 * nn.ModuleList used as namespaces) and the graph, a container whose plan calls modules
 * of its tree on named inputs and earlier nodes' outputs, as a torch module's forward()
 * calls what its __init__ registered.
 *
 * A graph's values are numbered: its inputs first, then each node's outputs in the order
 * the nodes were added (a node's outputs are consecutive). kn_graph_set_outputs ends the
 * construction: it computes each value's last reader, so that the forward releases an
 * intermediate value as soon as the last node that reads it has run (what autograd saved
 * for backward stays alive through the graph of ops, as in torch).
 */
#include "nn_internal.h"

#include <stdlib.h>
#include <string.h>

#define GRAPH_NAME_MAX 96 /* a node's path, an input's name */

typedef struct graph_input {
    char name[GRAPH_NAME_MAX];
    kn_dtype dtype;
} graph_input;

typedef struct graph_node {
    kn_module *module; /* borrowed: the graph's tree owns it */
    char path[GRAPH_NAME_MAX];
    int n_inputs, inputs[KN_GRAPH_MAX_INPUTS];
    int first_output, n_outputs;
} graph_node;

struct kn_graph {
    int n_inputs;
    graph_input inputs[KN_GRAPH_MAX_INPUTS];
    int n_nodes, nodes_capacity;
    graph_node *nodes;
    int n_values;
    int n_outputs, outputs[KN_GRAPH_MAX_INPUTS];
    int *last_reader; /* per value: the last node that reads it; n_nodes: an output */
    bool finished;
};

void kn__graph_free(struct kn_graph *g)
{
    if (!g) return;
    free(g->nodes);
    free(g->last_reader);
    free(g);
}

/* ---- the module tree ------------------------------------------------------------------- */

static kn_module *child_named(const kn_module *m, const char *name, size_t length)
{
    for (int i = 0; i < m->n_children; i++)
        if (strlen(m->child_names[i]) == length && strncmp(m->child_names[i], name, length) == 0)
            return m->children[i];
    return NULL;
}

kn_module *kn_module_find(const kn_module *root, const char *path)
{
    if (!root || !path) return NULL;
    const kn_module *m = root;
    for (const char *p = path; *p && m;) {
        const char *dot = strchr(p, '.');
        size_t length = dot ? (size_t)(dot - p) : strlen(p);
        m = child_named(m, p, length);
        p += length + (dot ? 1 : 0);
    }
    return (kn_module *)m;
}

static kn_status container_init(kn_module *m, kn_generator *gen)
{
    (void)gen;
    m->options.container.class_name[sizeof m->options.container.class_name - 1] = '\0';
    if (m->options.container.class_name[0]) m->type_name = m->options.container.class_name;
    return KN_OK;
}

kn_module *kn_module_container_new(const char *class_name)
{
    kn_layer_options o;
    memset(&o, 0, sizeof o);
    if (class_name && strlen(class_name) >= sizeof o.container.class_name)
        return kn__error_null(KN_ERR_VALUE, "container: the class name \"%s\" is too long",
                              class_name);
    if (class_name)
        snprintf(o.container.class_name, sizeof o.container.class_name, "%s", class_name);
    return kn_module_new(KN_MODULE_MODULE, &o, NULL);
}

kn_status kn_module_add(kn_module *root, const char *path, kn_module *child)
{
    if (!root || !path || !child) {
        kn_module_free(child);
        return kn__error(KN_ERR_NULL, "module_add: %s is NULL",
                         !root   ? "root"
                         : !path ? "path"
                                 : "child");
    }
    kn_module *m = root;
    for (const char *p = path;;) {
        const char *dot = strchr(p, '.');
        size_t length = dot ? (size_t)(dot - p) : strlen(p);
        kn_status status = KN_OK;
        if (length == 0 || length >= KN_MODULE_NAME_MAX)
            status = kn__error(KN_ERR_VALUE,
                               "module_add: \"%s\" has a name of %zu characters (expected 1 to %d "
                               "between dots)",
                               path, length, KN_MODULE_NAME_MAX - 1);
        else if (!(m->layer->flags & KN_LAYER_CONTAINER))
            status = kn__error(KN_ERR_VALUE,
                               "module_add: \"%s\" goes through a %s, which holds no modules", path,
                               m->type_name);
        if (status != KN_OK) {
            kn_module_free(child);
            return status;
        }
        char name[KN_MODULE_NAME_MAX];
        snprintf(name, sizeof name, "%.*s", (int)length, p);
        kn_module *next = child_named(m, p, length);
        if (!dot) {
            if (next) {
                kn_module_free(child);
                return kn__error(KN_ERR_VALUE, "module_add: \"%s\" is taken (by a %s)", path,
                                 next->type_name);
            }
            return kn__module_child(m, name, child);
        }
        if (!next) {
            next = kn_module_container_new(NULL);
            if (!next || kn__module_child(m, name, next) != KN_OK) {
                kn_module_free(child);
                return kn_last_status();
            }
        }
        m = next;
        p = dot + 1;
    }
}

/* ---- building a graph ------------------------------------------------------------------ */

static kn_status graph_init(kn_module *m, kn_generator *gen)
{
    kn_status status = container_init(m, gen);
    if (status != KN_OK) return status;
    m->graph = calloc(1, sizeof *m->graph);
    if (!m->graph) return kn__error(KN_ERR_MEMORY, "graph: out of memory");
    return KN_OK;
}

kn_module *kn_graph_new(void)
{
    return kn_module_new(KN_MODULE_GRAPH, NULL, NULL);
}

static struct kn_graph *building(kn_module *graph, const char *what)
{
    if (!graph || graph->kind != KN_MODULE_GRAPH || !graph->graph)
        return kn__error_null(KN_ERR_VALUE, "%s: expected a graph, got %s", what,
                              graph ? graph->type_name : "NULL");
    if (graph->graph->finished)
        return kn__error_null(KN_ERR_VALUE, "%s: the graph's outputs are set: it is complete",
                              what);
    return graph->graph;
}

int kn_graph_add_input(kn_module *graph, const char *name, kn_dtype dtype)
{
    struct kn_graph *g = building(graph, "graph_add_input");
    if (!g) return -1;
    if (g->n_nodes > 0) {
        kn__error(KN_ERR_VALUE, "graph_add_input: inputs come before the nodes");
        return -1;
    }
    if (g->n_inputs == KN_GRAPH_MAX_INPUTS) {
        kn__error(KN_ERR_VALUE, "graph_add_input: a graph takes at most %d inputs",
                  KN_GRAPH_MAX_INPUTS);
        return -1;
    }
    if (!name || !name[0] || strlen(name) >= GRAPH_NAME_MAX) {
        kn__error(KN_ERR_VALUE, "graph_add_input: expected a name of 1 to %d characters",
                  GRAPH_NAME_MAX - 1);
        return -1;
    }
    graph_input *in = &g->inputs[g->n_inputs];
    snprintf(in->name, sizeof in->name, "%s", name);
    in->dtype = dtype;
    g->n_values++;
    return g->n_inputs++;
}

int kn_graph_add_node(kn_module *graph, const char *path, const int *inputs, int n_inputs,
                      int n_outputs)
{
    struct kn_graph *g = building(graph, "graph_add_node");
    if (!g) return -1;
    kn_module *m = path && path[0] ? kn_module_find(graph, path) : NULL;
    if (!m) {
        kn__error(KN_ERR_VALUE, "graph_add_node: no module at \"%s\" in the graph",
                  path ? path : "(null)");
        return -1;
    }
    if (strlen(path) >= GRAPH_NAME_MAX || n_inputs < 1 || n_inputs > KN_GRAPH_MAX_INPUTS ||
        !inputs || n_outputs < 1 || n_outputs > KN_LAYER_MAX_OUTPUTS) {
        kn__error(KN_ERR_VALUE,
                  "graph_add_node: %s: expected a path under %d characters, 1 to %d inputs and 1 "
                  "to %d outputs, got %d inputs and %d outputs",
                  path, GRAPH_NAME_MAX, KN_GRAPH_MAX_INPUTS, KN_LAYER_MAX_OUTPUTS, n_inputs,
                  n_outputs);
        return -1;
    }
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] < 0 || inputs[i] >= g->n_values) {
            kn__error(KN_ERR_VALUE,
                      "graph_add_node: %s: input %d is value %d, which is not made yet (values "
                      "0 to %d are)",
                      path, i, inputs[i], g->n_values - 1);
            return -1;
        }
    if (g->n_nodes == g->nodes_capacity) {
        int capacity = g->nodes_capacity ? 2 * g->nodes_capacity : 16;
        graph_node *grown = realloc(g->nodes, sizeof *grown * (size_t)capacity);
        if (!grown) {
            kn__error(KN_ERR_MEMORY, "graph_add_node: out of memory");
            return -1;
        }
        g->nodes = grown;
        g->nodes_capacity = capacity;
    }
    graph_node *node = &g->nodes[g->n_nodes++];
    memset(node, 0, sizeof *node);
    node->module = m;
    snprintf(node->path, sizeof node->path, "%s", path);
    node->n_inputs = n_inputs;
    memcpy(node->inputs, inputs, sizeof(int) * (size_t)n_inputs);
    node->first_output = g->n_values;
    node->n_outputs = n_outputs;
    g->n_values += n_outputs;
    return node->first_output;
}

/* What makes value v, for errors: an input's name, or a node's path (":i" for one of
 * several outputs). */
static const char *value_name(const struct kn_graph *g, int v, char *buf, size_t size)
{
    if (v < g->n_inputs) {
        snprintf(buf, size, "input \"%s\"", g->inputs[v].name);
        return buf;
    }
    for (int k = 0; k < g->n_nodes; k++) {
        const graph_node *node = &g->nodes[k];
        if (v < node->first_output || v >= node->first_output + node->n_outputs) continue;
        if (node->n_outputs == 1)
            snprintf(buf, size, "node \"%s\"", node->path);
        else
            snprintf(buf, size, "node \"%s:%d\"", node->path, v - node->first_output);
        return buf;
    }
    snprintf(buf, size, "value %d", v);
    return buf;
}

kn_status kn_graph_set_outputs(kn_module *graph, const int *values, int n_values)
{
    struct kn_graph *g = building(graph, "graph_set_outputs");
    if (!g) return kn_last_status();
    if (g->n_inputs == 0 || g->n_nodes == 0)
        return kn__error(KN_ERR_VALUE, "graph_set_outputs: the graph has no %s",
                         g->n_inputs == 0 ? "inputs" : "nodes");
    if (n_values < 1 || n_values > KN_GRAPH_MAX_INPUTS || !values)
        return kn__error(KN_ERR_VALUE, "graph_set_outputs: expected 1 to %d outputs, got %d",
                         KN_GRAPH_MAX_INPUTS, n_values);
    for (int i = 0; i < n_values; i++)
        if (values[i] < 0 || values[i] >= g->n_values)
            return kn__error(KN_ERR_VALUE,
                             "graph_set_outputs: output %d is value %d (expected 0 to %d)", i,
                             values[i], g->n_values - 1);
    int *last = malloc(sizeof *last * (size_t)g->n_values);
    if (!last) return kn__error(KN_ERR_MEMORY, "graph_set_outputs: out of memory");
    for (int v = 0; v < g->n_values; v++) last[v] = -1;
    for (int k = 0; k < g->n_nodes; k++)
        for (int i = 0; i < g->nodes[k].n_inputs; i++) last[g->nodes[k].inputs[i]] = k;
    for (int i = 0; i < n_values; i++) last[values[i]] = g->n_nodes;
    /* every input and every node is read (a node of several outputs: one of them) */
    char name[GRAPH_NAME_MAX + 64];
    for (int v = 0; v < g->n_inputs; v++)
        if (last[v] < 0) {
            free(last);
            return kn__error(KN_ERR_VALUE, "graph_set_outputs: %s is never used",
                             value_name(g, v, name, sizeof name));
        }
    for (int k = 0; k < g->n_nodes; k++) {
        const graph_node *node = &g->nodes[k];
        bool read = false;
        for (int j = 0; j < node->n_outputs; j++) read = read || last[node->first_output + j] >= 0;
        if (!read) {
            free(last);
            return kn__error(KN_ERR_VALUE,
                             "graph_set_outputs: the output of node \"%s\" is never used",
                             node->path);
        }
    }
    g->last_reader = last;
    memcpy(g->outputs, values, sizeof(int) * (size_t)n_values);
    g->n_outputs = n_values;
    g->finished = true;
    return KN_OK;
}

int kn_graph_input_count(const kn_module *graph)
{
    return graph && graph->graph ? graph->graph->n_inputs : 0;
}

int kn_graph_output_count(const kn_module *graph)
{
    return graph && graph->graph ? graph->graph->n_outputs : 0;
}

kn_dtype kn_graph_input_dtype(const kn_module *graph, int i)
{
    bool valid = graph && graph->graph && i >= 0 && i < graph->graph->n_inputs;
    return valid ? graph->graph->inputs[i].dtype : KN_FLOAT32;
}

kn_dtype kn__graph_input_dtype(const kn_module *m)
{
    return m->graph && m->graph->n_inputs > 0 ? m->graph->inputs[0].dtype : KN_FLOAT32;
}

/* ---- running a graph ------------------------------------------------------------------- */

static const struct kn_graph *complete(const kn_module *m)
{
    if (m->graph && m->graph->finished) return m->graph;
    return kn__error_null(KN_ERR_VALUE,
                          "%s: the graph is not complete (kn_graph_set_outputs was not called)",
                          m->type_name);
}

static kn_status check_inputs(const struct kn_graph *g, kn_tensor *const *x, int n)
{
    if (n != g->n_inputs)
        return kn__error(KN_ERR_VALUE, "graph: takes %d input%s (\"%s\"%s), got %d", g->n_inputs,
                         g->n_inputs == 1 ? "" : "s", g->inputs[0].name,
                         g->n_inputs > 1 ? ", ..." : "", n);
    for (int i = 0; i < n; i++)
        if (x[i]->dtype != g->inputs[i].dtype)
            return kn__error(KN_ERR_DTYPE, "graph: input \"%s\" must be %s, got %s %s",
                             g->inputs[i].name, kn_dtype_name(g->inputs[i].dtype),
                             kn_dtype_name(x[i]->dtype), kn__shape(x[i]));
    return KN_OK;
}

/* The error of a node's module, prefixed with the node: "node blocks.3.attn (linear): ". */
static kn_status node_failed(const graph_node *node, kn_status status)
{
    char message[512];
    snprintf(message, sizeof message, "%s", kn_last_error());
    return kn__error(status, "node %s (%s): %s", node->path, node->module->layer->name, message);
}

/* Releases the values node k was the last to read (and the outputs of k nobody reads). */
static void release_after(const struct kn_graph *g, int k, kn_tensor **values)
{
    const graph_node *node = &g->nodes[k];
    for (int i = 0; i < node->n_inputs; i++) {
        int v = node->inputs[i];
        if (g->last_reader[v] == k && values[v]) {
            kn_release(values[v]);
            values[v] = NULL;
        }
    }
    for (int j = 0; j < node->n_outputs; j++) {
        int v = node->first_output + j;
        if (g->last_reader[v] < 0) {
            kn_release(values[v]);
            values[v] = NULL;
        }
    }
}

/* Runs every node; out[0..g->n_outputs) get one reference each (the caller's). */
static kn_status run(kn_module *m, kn_tensor *const *x, int n, kn_tensor **out)
{
    const struct kn_graph *g = complete(m);
    if (!g) return kn_last_status();
    kn_status status = check_inputs(g, x, n);
    if (status != KN_OK) return status;
    kn_tensor **values = calloc((size_t)g->n_values, sizeof *values);
    if (!values) return kn__error(KN_ERR_MEMORY, "graph: out of memory");
    for (int i = 0; i < n; i++) values[i] = kn_retain(x[i]);
    for (int k = 0; k < g->n_nodes && status == KN_OK; k++) {
        const graph_node *node = &g->nodes[k];
        kn_tensor *ins[KN_GRAPH_MAX_INPUTS], *outs[KN_LAYER_MAX_OUTPUTS];
        for (int i = 0; i < node->n_inputs; i++) ins[i] = values[node->inputs[i]];
        int count = 0;
        kn_scope_begin();
        status = kn_module_forward_outputs(node->module, ins, node->n_inputs, outs,
                                           KN_LAYER_MAX_OUTPUTS, &count);
        if (status == KN_OK && count != node->n_outputs)
            status = kn__error(KN_ERR_VALUE, "gave %d outputs, the graph reads %d", count,
                               node->n_outputs);
        for (int j = 0; status == KN_OK && j < count; j++)
            values[node->first_output + j] = kn_retain(outs[j]);
        kn_scope_end();
        if (status != KN_OK) {
            status = node_failed(node, status);
            break;
        }
        release_after(g, k, values);
    }
    for (int i = 0; status == KN_OK && i < g->n_outputs; i++)
        out[i] = kn_retain(values[g->outputs[i]]);
    for (int v = 0; v < g->n_values; v++) kn_release(values[v]);
    free(values);
    return status;
}

static kn_tensor *graph_forward(kn_module *m, kn_tensor *const *x, int n)
{
    kn_tensor *out[KN_GRAPH_MAX_INPUTS];
    if (run(m, x, n, out) != KN_OK) return NULL;
    for (int i = 1; i < m->graph->n_outputs; i++) kn_release(out[i]);
    return kn_autorelease(out[0]);
}

static kn_status graph_forward_outputs(kn_module *m, kn_tensor *const *x, int n,
                                       kn_tensor **outputs, int *n_outputs)
{
    kn_tensor *out[KN_GRAPH_MAX_INPUTS];
    kn_status status = run(m, x, n, out);
    if (status != KN_OK) return status;
    for (int i = 0; i < m->graph->n_outputs; i++) outputs[i] = kn_autorelease(out[i]);
    *n_outputs = m->graph->n_outputs;
    return KN_OK;
}

/* ---- shapes ------------------------------------------------------------------------------ */

/* The outputs of one node's module for its inputs' shapes. */
static kn_status node_shape(const kn_module *m, const kn_layer_io *in, int n_in, kn_layer_io *out,
                            int *n_out)
{
    if (m->kind == KN_MODULE_GRAPH) return kn__graph_shape(m, in, n_in, out, n_out);
    if (m->kind == KN_MODULE_SEQUENTIAL) {
        if (n_in != 1) return kn__error(KN_ERR_VALUE, "a Sequential takes 1 input, got %d", n_in);
        *n_out = 1;
        return kn__module_shape(m, in, out, NULL);
    }
    kn_layer_options options = m->options; /* inference must not change the module */
    kn_layer_shape s = {
        .type = m->layer, .options = &options, .inputs = in, .n_inputs = n_in, .in_graph = true};
    if (!kn_layer_infer(&s))
        return kn__error(KN_ERR_SHAPE, "%s%s%s", s.field ? s.field : "", s.field ? ": " : "",
                         s.message);
    memcpy(out, s.outputs, sizeof *out * (size_t)s.n_outputs);
    *n_out = s.n_outputs;
    return KN_OK;
}

kn_status kn__graph_shape(const kn_module *m, const kn_layer_io *in, int n_in, kn_layer_io *out,
                          int *n_out)
{
    const struct kn_graph *g = complete(m);
    if (!g) return kn_last_status();
    if (n_in != g->n_inputs)
        return kn__error(KN_ERR_VALUE, "graph: takes %d inputs, got %d", g->n_inputs, n_in);
    kn_layer_io *values = calloc((size_t)g->n_values, sizeof *values);
    if (!values) return kn__error(KN_ERR_MEMORY, "graph: out of memory");
    kn_status status = KN_OK;
    for (int i = 0; i < n_in; i++) {
        values[i] = in[i];
        if (in[i].dtype != g->inputs[i].dtype)
            status =
                kn__error(KN_ERR_DTYPE, "graph: input \"%s\" must be %s, got %s", g->inputs[i].name,
                          kn_dtype_name(g->inputs[i].dtype), kn_dtype_name(in[i].dtype));
    }
    for (int k = 0; k < g->n_nodes && status == KN_OK; k++) {
        const graph_node *node = &g->nodes[k];
        kn_layer_io ins[KN_GRAPH_MAX_INPUTS], outs[KN_LAYER_MAX_OUTPUTS];
        for (int i = 0; i < node->n_inputs; i++) ins[i] = values[node->inputs[i]];
        int count = 0;
        status = node_shape(node->module, ins, node->n_inputs, outs, &count);
        if (status == KN_OK && count != node->n_outputs)
            status = kn__error(KN_ERR_VALUE, "gives %d outputs, the graph reads %d", count,
                               node->n_outputs);
        if (status != KN_OK) {
            status = node_failed(node, status);
            break;
        }
        memcpy(values + node->first_output, outs, sizeof *outs * (size_t)count);
    }
    for (int i = 0; status == KN_OK && i < g->n_outputs; i++) out[i] = values[g->outputs[i]];
    if (status == KN_OK) *n_out = g->n_outputs;
    free(values);
    return status;
}

/* ---- parameters' shapes for weight ties -------------------------------------------------- */

static bool io_of(kn_layer_io *out, int64_t d0, int64_t d1, int ndim)
{
    memset(out, 0, sizeof *out);
    out->shape[0] = d0;
    out->shape[1] = d1;
    out->ndim = ndim;
    out->dtype = KN_FLOAT32;
    return true;
}

bool kn__linear_parameter_shape(const kn_layer_options *o, const char *name, kn_layer_io *out)
{
    if (strcmp(name, "weight") == 0)
        return io_of(out, o->linear.out_features, o->linear.in_features, 2);
    if (strcmp(name, "bias") == 0 && o->linear.bias)
        return io_of(out, o->linear.out_features, 0, 1);
    return false;
}

bool kn__embedding_parameter_shape(const kn_layer_options *o, const char *name, kn_layer_io *out)
{
    if (strcmp(name, "weight") != 0) return false;
    return io_of(out, o->embedding.num_embeddings, o->embedding.embedding_dim, 2);
}

/* ---- the rows ------------------------------------------------------------------------------ */

static kn_tensor *container_forward(kn_module *m, kn_tensor *const *x, int n)
{
    (void)x, (void)n;
    return kn__error_null(KN_ERR_VALUE,
                          "%s: a container of modules is not called itself (a graph calls the "
                          "modules it holds)",
                          m->type_name);
}

static void graph_describe(const kn_module *m, char *buf, size_t size)
{
    const struct kn_graph *g = m->graph;
    if (!g) return;
    kn__repr_add(buf, size, "inputs=[");
    for (int i = 0; i < g->n_inputs; i++)
        kn__repr_add(buf, size, "%s%s: %s", i ? ", " : "", g->inputs[i].name,
                     kn_dtype_name(g->inputs[i].dtype));
    kn__repr_add(buf, size, "], nodes=%d", g->n_nodes);
}

/* torch.fx's GraphModule is the nearest torch class: a module whose forward is a graph
 * of calls to its submodules. */
const kn_layer_type kn__layer_graph = {
    .kind = KN_MODULE_GRAPH,
    .name = "graph",
    .torch_name = "Graph",
    .flags = KN_LAYER_CONTAINER,
    .min_inputs = 1,
    .max_inputs = KN_GRAPH_MAX_INPUTS,
    .capturable = true, /* as capturable as the modules it holds (kn_layer_host_bound) */
    .init = graph_init,
    .forward = graph_forward,
    .describe = graph_describe,
    .forward_outputs = graph_forward_outputs,
};

const kn_layer_type kn__layer_module = {
    .kind = KN_MODULE_MODULE,
    .name = "module",
    .torch_name = "Module",
    .flags = KN_LAYER_CONTAINER,
    .capturable = true,
    .init = container_init,
    .forward = container_forward,
};
