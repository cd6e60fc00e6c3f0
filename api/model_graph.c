/*
 * model_graph.c — graph specs, read and checked as graphs: named inputs with dtypes,
 * blocks (sub-graphs with inputs and outputs of their own, declared once, instantiated
 * by nodes, "repeat": N making a ModuleList of copies), nodes that take the outputs of
 * other nodes, and the model's outputs, like Keras' functional API or an ONNX graph.
 * Every problem is reported at its path and names the node: unknown or duplicate names,
 * names that would nest a module inside a layer, references to nothing, cycles (listed),
 * values nobody uses, blocks that contain themselves. model_graph_shape.c then expands
 * the blocks and infers shapes and dtypes node by node.
 */
#include "graph_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const NODE_FIELDS[] = {"name", "input", "inputs", "repeat", "tie", NULL};
static const char *const BLOCK_FIELDS[] = {"inputs", "nodes", "outputs", NULL};
static const char *const INPUT_FIELDS[] = {"name", "shape", "dtype", NULL};

void kapi__graph_path(char *out, const char *scope_path, const char *rest)
{
    kapi__path(out, scope_path, rest);
}

/* ---- names -------------------------------------------------------------------------------- */

/* A node's name: segments of letters, digits and '_' joined by dots ("mlp.fc"), each a
 * module name under KN_MODULE_NAME_MAX; an input's or a block's: one segment. */
static bool valid_name(const char *s, bool dots)
{
    size_t n = strlen(s), segment = 0;
    if (n == 0 || n >= (dots ? KAPI_NODE_NAME_MAX - 16 : KAPI_INPUT_NAME_MAX)) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.' && dots) {
            if (segment == 0 || i + 1 == n) return false;
            segment = 0;
        } else if (isalnum(c) || c == '_') {
            if (++segment >= KN_MODULE_NAME_MAX) return false;
        } else {
            return false;
        }
    }
    return dots || !isdigit((unsigned char)s[0]);
}

static bool read_name(kapi_errors *errors, const cJSON *value, const char *path, bool dots,
                      char *out, size_t size)
{
    if (cJSON_IsString(value) && valid_name(value->valuestring, dots)) {
        snprintf(out, size, "%s", value->valuestring);
        return true;
    }
    char got[120];
    kapi__describe(value, got, sizeof got);
    if (dots)
        kapi_errors_add(errors, path,
                        "expected a module name of letters, digits and '_' (dots nest it: "
                        "\"mlp.fc\"; at most %d characters), got %s",
                        KAPI_NODE_NAME_MAX - 17, got);
    else
        kapi_errors_add(errors, path,
                        "expected a name of letters, digits and '_' not starting with a digit "
                        "(at most %d characters), got %s",
                        KAPI_INPUT_NAME_MAX - 1, got);
    return false;
}

/* A reference: "name" or "name:k". */
static bool read_ref(kapi_errors *errors, const cJSON *value, const char *path, gref *ref)
{
    memset(ref, 0, sizeof *ref);
    ref->input = ref->node = ref->index = -1;
    const char *s = cJSON_IsString(value) ? value->valuestring : NULL;
    const char *colon = s ? strchr(s, ':') : NULL;
    bool ok = s && strlen(s) < sizeof ref->text;
    if (ok) {
        char name[KAPI_NODE_NAME_MAX + 8];
        snprintf(name, sizeof name, "%.*s", colon ? (int)(colon - s) : (int)strlen(s), s);
        ok = valid_name(name, true);
        if (ok && colon) {
            char *end = NULL;
            long k = strtol(colon + 1, &end, 10);
            ok = isdigit((unsigned char)colon[1]) && !*end && k < KN_LAYER_MAX_OUTPUTS;
            ref->index = (int)k;
        }
    }
    if (!ok) {
        char got[120];
        kapi__describe(value, got, sizeof got);
        kapi_errors_add(errors, path,
                        "expected the name of an input or a node (\"x\"; \"qkv:1\" for one of "
                        "several outputs), got %s",
                        got);
        return false;
    }
    snprintf(ref->text, sizeof ref->text, "%s", s);
    return true;
}

/* The name part of a reference. */
static void ref_name(const gref *ref, char *out, size_t size)
{
    const char *colon = strchr(ref->text, ':');
    snprintf(out, size, "%.*s", colon ? (int)(colon - ref->text) : (int)strlen(ref->text),
             ref->text);
}

/* ---- reading --------------------------------------------------------------------------- */

static int find_block(const graph_parse *gp, const char *name)
{
    for (int i = 0; i < gp->n_blocks; i++)
        if (strcmp(gp->blocks[i].name, name) == 0) return i;
    return -1;
}

/* "input": one reference, or "inputs": a list of them. */
static bool read_node_inputs(graph_parse *gp, const cJSON *obj, gnode *node)
{
    const cJSON *one = cJSON_GetObjectItemCaseSensitive(obj, "input");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(obj, "inputs");
    char path[KAPI_PATH_MAX], item[KAPI_PATH_MAX], got[120];
    if (one && list) {
        kapi__path(path, node->path, "inputs");
        kapi_errors_add(gp->errors, path,
                        "give \"input\" (one value) or \"inputs\" (a list), not both");
        return false;
    }
    if (one) {
        kapi__path(path, node->path, "input");
        node->single = true;
        node->n_refs = 1;
        return read_ref(gp->errors, one, path, &node->refs[0]);
    }
    if (!list) {
        node->implicit = true;
        return true;
    }
    kapi__path(path, node->path, "inputs");
    int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
    if (n < 1 || n > KN_GRAPH_MAX_INPUTS) {
        kapi__describe(list, got, sizeof got);
        kapi_errors_add(gp->errors, path,
                        "expected a list of 1 to %d names of inputs or nodes, got %s",
                        KN_GRAPH_MAX_INPUTS, got);
        return false;
    }
    bool ok = true;
    int i = 0;
    for (const cJSON *v = list->child; v; v = v->next, i++) {
        kapi__path_index(item, path, i);
        ok = read_ref(gp->errors, v, item, &node->refs[i]) && ok;
    }
    node->n_refs = n;
    return ok;
}

/* "tie": {"weight": "wte.weight"}: parameters that are other nodes'. */
static bool read_ties(graph_parse *gp, const cJSON *tie, const gscope *scope, gnode *node)
{
    char path[KAPI_PATH_MAX], item[KAPI_PATH_MAX], got[120];
    kapi__path(path, node->path, "tie");
    if (scope != &gp->top) {
        kapi_errors_add(gp->errors, path,
                        "ties are made by the model's own nodes, not a block's (name the "
                        "parameter by its full path there: \"blocks.0.%s.weight\")",
                        node->name);
        return false;
    }
    int n = cJSON_IsObject(tie) ? cJSON_GetArraySize(tie) : -1;
    if (n < 1 || n > KAPI_MAX_TIES) {
        kapi__describe(tie, got, sizeof got);
        kapi_errors_add(gp->errors, path,
                        "expected an object of 1 to %d parameters and the parameters they are "
                        "(e.g. {\"weight\": \"wte.weight\"}), got %s",
                        KAPI_MAX_TIES, got);
        return false;
    }
    bool ok = true;
    for (const cJSON *v = tie->child; v; v = v->next) {
        kapi__path(item, path, v->string);
        kapi_tie_spec *t = &node->ties[node->n_ties];
        if (strlen(v->string) >= sizeof t->parameter || !cJSON_IsString(v) ||
            strlen(v->valuestring) >= sizeof t->to || !strchr(v->valuestring, '.')) {
            kapi__describe(v, got, sizeof got);
            kapi_errors_add(gp->errors, item,
                            "expected the state-dict name of another node's parameter (e.g. "
                            "\"wte.weight\"), got %s",
                            got);
            ok = false;
            continue;
        }
        bool duplicate = false;
        for (int k = 0; k < node->n_ties; k++)
            duplicate = duplicate || strcmp(node->ties[k].parameter, v->string) == 0;
        if (duplicate) {
            kapi_errors_add(gp->errors, item, "duplicate key (each field may appear only once)");
            ok = false;
            continue;
        }
        snprintf(t->parameter, sizeof t->parameter, "%s", v->string);
        snprintf(t->to, sizeof t->to, "%s", v->valuestring);
        node->n_ties++;
    }
    return ok;
}

static bool read_node(graph_parse *gp, gscope *scope, const cJSON *obj, gnode *node)
{
    char path[KAPI_PATH_MAX], got[120];
    node->block = -1;
    if (!cJSON_IsObject(obj)) {
        kapi__describe(obj, got, sizeof got);
        kapi_errors_add(gp->errors, node->path,
                        "expected a node object such as {\"name\": \"fc\", \"type\": \"linear\", "
                        "\"input\": \"x\", \"out_features\": 10}, got %s",
                        got);
        return false;
    }
    int before = gp->errors->count;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(obj, "name");
    kapi__path(path, node->path, "name");
    if (!name)
        kapi__missing(gp->errors, node->path, "name",
                      "the node's name, which is its module's (\"fc\", \"mlp.proj\")");
    else
        read_name(gp->errors, name, path, true, node->name, sizeof node->name);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    kapi__path(path, node->path, "type");
    if (!type) {
        kapi__missing(gp->errors, node->path, "type",
                      "a layer type such as \"linear\" or the name of a block");
    } else if (!cJSON_IsString(type)) {
        kapi__describe(type, got, sizeof got);
        kapi_errors_add(gp->errors, path,
                        "expected a layer type or a block name (a string), got %s", got);
    } else {
        node->row = kn_layer_find(type->valuestring);
        if (node->row && (node->row->flags & KN_LAYER_CONTAINER)) node->row = NULL;
        node->block = node->row ? -1 : find_block(gp, type->valuestring);
        if (!node->row && node->block < 0)
            kapi__unknown_type(gp->errors, path, type, gp->block_names);
    }
    read_node_inputs(gp, obj, node);
    const cJSON *repeat = cJSON_GetObjectItemCaseSensitive(obj, "repeat");
    kapi__path(path, node->path, "repeat");
    if (repeat && node->row) {
        kapi_errors_add(gp->errors, path,
                        "repeat makes copies of a block; %s is a layer (declare a block of it "
                        "to repeat it)",
                        node->row->name);
    } else if (repeat && node->block >= 0) {
        kapi__int_value(gp->errors, repeat, path, 1, KAPI_GRAPH_MAX_REPEAT, &node->repeat);
    }
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(obj, "tie");
    kapi__path(path, node->path, "tie");
    if (tie && node->block >= 0)
        kapi_errors_add(gp->errors, path,
                        "a block instance has no parameters of its own to tie (tie them in the "
                        "model's nodes by their full names)");
    else if (tie && node->row)
        read_ties(gp, tie, scope, node);
    if (node->row)
        kapi__layer_fields(gp->errors, obj, node->path, node->row, NODE_FIELDS, &node->options);
    else if (node->block >= 0)
        kapi__check_fields(
            gp->errors, obj, node->path,
            (const char *const[]){"name", "type", "input", "inputs", "repeat", "tie", NULL});
    node->ok = gp->errors->count == before && (node->row || node->block >= 0);
    return node->ok;
}

/* A list field of obj at its path: its size, or -1 with an error (missing, not a list,
 * out of [1, most]). */
static int list_size(graph_parse *gp, const cJSON *obj, const char *scope_path, const char *key,
                     int most, const char *what)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(obj, key);
    char path[KAPI_PATH_MAX], got[120];
    kapi__path(path, scope_path, key);
    if (!list) {
        kapi__missing(gp->errors, scope_path, key, what);
        return -1;
    }
    int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
    if (n < 1 || n > most) {
        kapi__describe(list, got, sizeof got);
        kapi_errors_add(gp->errors, path, "expected %s (1 to %d), got %s", what, most, got);
        return -1;
    }
    return n;
}

/* The model's inputs: [{"name", "shape", "dtype"}]. */
static bool read_model_inputs(graph_parse *gp, const cJSON *root, gscope *scope)
{
    int n = list_size(gp, root, scope->path, "inputs", KN_GRAPH_MAX_INPUTS,
                      "a list of inputs such as {\"name\": \"x\", \"shape\": [784]}");
    if (n < 0) return false;
    char path[KAPI_PATH_MAX], list_path[KAPI_PATH_MAX], field[KAPI_PATH_MAX], got[120];
    kapi__path(list_path, scope->path, "inputs");
    bool ok = true;
    int i = 0;
    for (const cJSON *in = cJSON_GetObjectItemCaseSensitive(root, "inputs")->child; in;
         in = in->next, i++) {
        kapi__path_index(path, list_path, i);
        if (!cJSON_IsObject(in)) {
            kapi__describe(in, got, sizeof got);
            kapi_errors_add(gp->errors, path,
                            "expected an input object such as {\"name\": \"tokens\", \"shape\": "
                            "[64], \"dtype\": \"int64\"}, got %s",
                            got);
            ok = false;
            continue;
        }
        ok = kapi__check_fields(gp->errors, in, path, INPUT_FIELDS) && ok;
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
        kapi__path(field, path, "name");
        if (!name) {
            kapi__missing(gp->errors, path, "name", "the input's name");
            ok = false;
        } else {
            ok = read_name(gp->errors, name, field, false, scope->inputs[i],
                           sizeof scope->inputs[i]) &&
                 ok;
        }
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(in, "shape");
        kapi__path(field, path, "shape");
        kn_layer_io *io = &scope->input_io[i];
        if (!shape) {
            kapi__missing(gp->errors, path, "shape",
                          "the shape of one sample without the batch dim, e.g. [64]");
            ok = false;
        } else {
            ok = kapi__sample_shape(gp->errors, shape, field, io->shape, &io->ndim) && ok;
        }
        const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(in, "dtype");
        kapi__path(field, path, "dtype");
        io->dtype = KN_FLOAT32;
        if (dtype && cJSON_IsString(dtype) && strcmp(dtype->valuestring, "int64") == 0) {
            io->dtype = KN_INT64;
        } else if (dtype && !(cJSON_IsString(dtype) && !strcmp(dtype->valuestring, "float32"))) {
            kapi__describe(dtype, got, sizeof got);
            kapi_errors_add(gp->errors, field,
                            "expected \"float32\" (values) or \"int64\" (indices such as token "
                            "ids), got %s",
                            got);
            ok = false;
        }
    }
    scope->n_inputs = n;
    return ok;
}

/* A block's inputs: a list of names. */
static bool read_block_inputs(graph_parse *gp, const cJSON *obj, gscope *scope)
{
    int n = list_size(gp, obj, scope->path, "inputs", KN_GRAPH_MAX_INPUTS,
                      "a list of the block's input names, e.g. [\"x\"]");
    if (n < 0) return false;
    char list_path[KAPI_PATH_MAX], path[KAPI_PATH_MAX];
    kapi__path(list_path, scope->path, "inputs");
    bool ok = true;
    int i = 0;
    for (const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "inputs")->child; v;
         v = v->next, i++) {
        kapi__path_index(path, list_path, i);
        ok = read_name(gp->errors, v, path, false, scope->inputs[i], sizeof scope->inputs[i]) && ok;
    }
    scope->n_inputs = n;
    return ok;
}

static bool read_outputs(graph_parse *gp, const cJSON *obj, gscope *scope)
{
    int n = list_size(gp, obj, scope->path, "outputs", KN_GRAPH_MAX_INPUTS,
                      "a list of the names of the nodes that are outputs");
    if (n < 0) return false;
    char list_path[KAPI_PATH_MAX], path[KAPI_PATH_MAX];
    kapi__path(list_path, scope->path, "outputs");
    bool ok = true;
    int i = 0;
    for (const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "outputs")->child; v;
         v = v->next, i++) {
        kapi__path_index(path, list_path, i);
        ok = read_ref(gp->errors, v, path, &scope->outputs[i]) && ok;
    }
    scope->n_outputs = n;
    return ok;
}

static bool read_nodes(graph_parse *gp, const cJSON *obj, gscope *scope)
{
    int n =
        list_size(gp, obj, scope->path, "nodes", KAPI_GRAPH_MAX_NODES, "a list of node objects");
    if (n < 0) return false;
    scope->nodes = calloc((size_t)n, sizeof *scope->nodes);
    if (!scope->nodes) {
        kapi_errors_add(gp->errors, scope->path, "out of memory");
        return false;
    }
    char list_path[KAPI_PATH_MAX];
    kapi__path(list_path, scope->path, "nodes");
    bool ok = true;
    int i = 0;
    for (const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "nodes")->child; v;
         v = v->next, i++) {
        kapi__path_index(scope->nodes[i].path, list_path, i);
        ok = read_node(gp, scope, v, &scope->nodes[i]) && ok;
    }
    scope->n_nodes = n;
    return ok;
}

/* ---- checks of one scope ------------------------------------------------------------------ */

/* Whether inner is a module path inside outer ("mlp.fc" inside "mlp"). */
static bool inside(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    return strncmp(inner, outer, n) == 0 && inner[n] == '.';
}

static const char *where(const gscope *scope)
{
    return scope->name[0] ? "the block" : "the model";
}

static const char *block_name(const graph_parse *gp, const gnode *node)
{
    return node->block >= 0 ? gp->blocks[node->block].name : "?";
}

/* Names: unique among the inputs and nodes, and no node inside another's module. */
static bool check_names(graph_parse *gp, gscope *scope)
{
    bool ok = true;
    char path[KAPI_PATH_MAX];
    for (int i = 0; i < scope->n_nodes; i++) {
        gnode *a = &scope->nodes[i];
        if (!a->name[0]) continue;
        kapi__path(path, a->path, "name");
        for (int k = 0; k < scope->n_inputs; k++)
            if (strcmp(a->name, scope->inputs[k]) == 0) {
                kapi_errors_add(gp->errors, path, "\"%s\" is the name of an input of %s", a->name,
                                where(scope));
                a->ok = ok = false;
            }
        for (int j = 0; j < i && a->ok; j++) {
            const gnode *b = &scope->nodes[j];
            if (!b->name[0]) continue;
            if (strcmp(a->name, b->name) == 0) {
                kapi_errors_add(gp->errors, path, "duplicate name \"%s\" (%s has it)", a->name,
                                b->path);
                a->ok = ok = false;
            } else if (inside(a->name, b->name) || inside(b->name, a->name)) {
                const gnode *outer = inside(a->name, b->name) ? b : a;
                const gnode *inner = outer == b ? a : b;
                if (outer->row)
                    kapi_errors_add(gp->errors, path,
                                    "\"%s\" would be a module inside \"%s\" (%s), a %s, which "
                                    "holds no modules",
                                    inner->name, outer->name, outer->path, outer->row->name);
                else
                    kapi_errors_add(gp->errors, path,
                                    "\"%s\" would be a module inside \"%s\" (%s), an instance "
                                    "of block %s, which holds only the block's",
                                    inner->name, outer->name, outer->path, block_name(gp, outer));
                a->ok = ok = false;
            }
        }
    }
    for (int i = 0; i < scope->n_inputs; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(scope->inputs[i], scope->inputs[j]) == 0) {
                char list_path[KAPI_PATH_MAX];
                kapi__path(list_path, scope->path, "inputs");
                char item[KAPI_PATH_MAX];
                kapi__path_index(item, list_path, i);
                if (scope == &gp->top)
                    kapi__path(path, item, "name");
                else
                    snprintf(path, sizeof path, "%s", item);
                kapi_errors_add(gp->errors, path, "duplicate input name \"%s\"", scope->inputs[i]);
                ok = false;
            }
    return ok;
}

/* Resolves a reference to the scope's input or node; false with an error at path. */
static bool resolve(graph_parse *gp, const gscope *scope, gref *ref, const char *path)
{
    char name[KAPI_NODE_NAME_MAX + 8];
    ref_name(ref, name, sizeof name);
    for (int k = 0; k < scope->n_inputs; k++)
        if (strcmp(scope->inputs[k], name) == 0) {
            if (ref->index >= 0) {
                kapi_errors_add(gp->errors, path,
                                "\"%s\" is an input, a single value: write \"%s\"", ref->text,
                                name);
                return false;
            }
            ref->input = k;
            return true;
        }
    for (int k = 0; k < scope->n_nodes; k++)
        if (strcmp(scope->nodes[k].name, name) == 0) {
            ref->node = k;
            return true;
        }
    const char *candidates[KN_GRAPH_MAX_INPUTS + KAPI_GRAPH_MAX_NODES + 1];
    int n = 0;
    for (int k = 0; k < scope->n_inputs; k++) candidates[n++] = scope->inputs[k];
    for (int k = 0; k < scope->n_nodes; k++)
        if (scope->nodes[k].name[0]) candidates[n++] = scope->nodes[k].name;
    candidates[n] = NULL;
    const char *suggestion = kapi__suggest(name, candidates);
    char hint[KAPI_NODE_NAME_MAX + 24] = "";
    if (suggestion) snprintf(hint, sizeof hint, " (did you mean %s?)", suggestion);
    if (scope->name[0])
        kapi_errors_add(gp->errors, path, "no input or node named \"%s\" in block %s%s", name,
                        scope->name, hint);
    else
        kapi_errors_add(gp->errors, path, "no input or node named \"%s\" in the model%s", name,
                        hint);
    return false;
}

static void ref_path(const gnode *node, int i, char *out)
{
    char list[KAPI_PATH_MAX];
    if (node->single || node->implicit) {
        kapi__path(out, node->path, node->implicit ? "name" : "input");
        return;
    }
    kapi__path(list, node->path, "inputs");
    kapi__path_index(out, list, i);
}

static bool resolve_refs(graph_parse *gp, gscope *scope)
{
    bool ok = true;
    char path[KAPI_PATH_MAX];
    for (int i = 0; i < scope->n_nodes; i++) {
        gnode *node = &scope->nodes[i];
        if (!node->ok) continue;
        if (node->implicit) { /* the previous node's output, or the first input */
            gref *ref = &node->refs[0];
            memset(ref, 0, sizeof *ref);
            ref->input = ref->node = ref->index = -1;
            if (i == 0) {
                ref->input = 0;
                snprintf(ref->text, sizeof ref->text, "%s", scope->inputs[0]);
            } else {
                ref->node = i - 1;
                snprintf(ref->text, sizeof ref->text, "%s", scope->nodes[i - 1].name);
            }
            node->n_refs = 1;
            continue;
        }
        for (int k = 0; k < node->n_refs; k++) {
            ref_path(node, k, path);
            if (!resolve(gp, scope, &node->refs[k], path)) node->ok = ok = false;
        }
    }
    char list[KAPI_PATH_MAX];
    kapi__path(list, scope->path, "outputs");
    for (int k = 0; k < scope->n_outputs; k++) {
        kapi__path_index(path, list, k);
        if (!resolve(gp, scope, &scope->outputs[k], path))
            ok = false;
        else if (scope->outputs[k].input >= 0) {
            kapi_errors_add(gp->errors, path,
                            "\"%s\" is an input; outputs are nodes (add an identity node to "
                            "pass an input through)",
                            scope->outputs[k].text);
            ok = false;
        }
        for (int j = 0; j < k; j++)
            if (strcmp(scope->outputs[j].text, scope->outputs[k].text) == 0) {
                kapi_errors_add(gp->errors, path, "\"%s\" is listed twice", scope->outputs[k].text);
                ok = false;
            }
    }
    return ok;
}

/* "a -> b -> c -> a" for a cycle upstream of node start (each feeds the next); returns
 * the node it is written from, the cycle's earliest listed one. */
static int describe_cycle(const gscope *scope, int start, const bool *left, char *out, size_t size)
{
    int path[KAPI_GRAPH_MAX_NODES + 1], n = 0;
    bool seen[KAPI_GRAPH_MAX_NODES] = {false};
    int at = start;
    /* walk backwards along inputs that are still left (every left node has one) until a
     * node repeats: the walk from there is a cycle */
    while (!seen[at]) {
        seen[at] = true;
        path[n++] = at;
        const gnode *node = &scope->nodes[at];
        int next = -1;
        for (int k = 0; k < node->n_refs && next < 0; k++)
            if (node->refs[k].node >= 0 && left[node->refs[k].node]) next = node->refs[k].node;
        at = next;
    }
    int first = 0;
    while (path[first] != at) first++;
    /* path[first..n) goes against the data: written backwards it follows the data */
    int from = first;
    for (int i = first; i < n; i++)
        if (path[i] < path[from]) from = i;
    size_t used = 0;
    out[0] = '\0';
    for (int k = 0; k <= n - first && used < size; k++) {
        int i = from - k;
        if (i < first) i += n - first;
        used += (size_t)snprintf(out + used, size - used, "%s%s", k ? " -> " : "",
                                 scope->nodes[path[i]].name);
    }
    return path[from];
}

/* An order in which every node comes after the nodes it reads (the listed order among
 * those that are free), or an error naming a cycle. */
static bool sort_nodes(graph_parse *gp, gscope *scope)
{
    int n = scope->n_nodes;
    scope->order = malloc(sizeof *scope->order * (size_t)n);
    bool *left = malloc(sizeof *left * (size_t)n);
    if (!scope->order || !left) {
        free(left);
        kapi_errors_add(gp->errors, scope->path, "out of memory");
        return false;
    }
    for (int i = 0; i < n; i++) left[i] = true;
    int done = 0;
    for (bool progress = true; progress && done < n;) {
        progress = false;
        for (int i = 0; i < n; i++) {
            if (!left[i]) continue;
            bool ready = true;
            for (int k = 0; k < scope->nodes[i].n_refs && ready; k++) {
                int from = scope->nodes[i].refs[k].node;
                ready = from < 0 || !left[from];
            }
            if (!ready) continue;
            left[i] = false;
            scope->order[done++] = i;
            progress = true;
            break; /* the earliest free node first: the listed order where it can be */
        }
    }
    if (done < n) {
        int start = 0;
        while (!left[start]) start++;
        char cycle[600];
        int in_cycle = describe_cycle(scope, start, left, cycle, sizeof cycle);
        kapi_errors_add(gp->errors, scope->nodes[in_cycle].path,
                        "node \"%s\" is in a cycle: %s (each feeds the next)",
                        scope->nodes[in_cycle].name, cycle);
    }
    free(left);
    return done == n;
}

/* Every input and node is read by a node or is an output. */
static bool check_used(graph_parse *gp, gscope *scope)
{
    bool ok = true;
    char path[KAPI_PATH_MAX], list[KAPI_PATH_MAX];
    bool *used = calloc((size_t)(scope->n_nodes + KN_GRAPH_MAX_INPUTS), sizeof *used);
    if (!used) return false;
    bool *input_used = used + scope->n_nodes;
    for (int i = 0; i < scope->n_nodes; i++)
        for (int k = 0; k < scope->nodes[i].n_refs; k++) {
            const gref *ref = &scope->nodes[i].refs[k];
            if (ref->node >= 0) used[ref->node] = true;
            if (ref->input >= 0) input_used[ref->input] = true;
        }
    for (int k = 0; k < scope->n_outputs; k++)
        if (scope->outputs[k].node >= 0) used[scope->outputs[k].node] = true;
    for (int i = 0; i < scope->n_nodes; i++)
        if (!used[i]) {
            kapi_errors_add(gp->errors, scope->nodes[i].path,
                            "the output of node \"%s\" is never used (feed it to a node or list "
                            "it in %s outputs)",
                            scope->nodes[i].name, scope->name[0] ? "the block's" : "the model's");
            ok = false;
        }
    kapi__path(list, scope->path, "inputs");
    for (int k = 0; k < scope->n_inputs; k++)
        if (!input_used[k]) {
            kapi__path_index(path, list, k);
            kapi_errors_add(gp->errors, path, "input \"%s\" is never used", scope->inputs[k]);
            ok = false;
        }
    free(used);
    return ok;
}

static bool check_scope(graph_parse *gp, gscope *scope)
{
    bool ok = check_names(gp, scope);
    ok = resolve_refs(gp, scope) && ok;
    for (int i = 0; i < scope->n_nodes; i++) ok = ok && scope->nodes[i].ok;
    if (!ok) return false; /* a graph with broken nodes has no order worth checking */
    return sort_nodes(gp, scope) && check_used(gp, scope);
}

/* ---- blocks -------------------------------------------------------------------------------- */

static bool read_blocks(graph_parse *gp, const cJSON *root)
{
    const cJSON *blocks = cJSON_GetObjectItemCaseSensitive(root, "blocks");
    if (!blocks) return true;
    char path[KAPI_PATH_MAX], got[120];
    kapi__path(path, gp->prefix, "blocks");
    int n = cJSON_IsObject(blocks) ? cJSON_GetArraySize(blocks) : -1;
    if (n < 1 || n > KAPI_MAX_BLOCKS) {
        kapi__describe(blocks, got, sizeof got);
        kapi_errors_add(gp->errors, path,
                        "expected an object of 1 to %d blocks by name, e.g. {\"Block\": "
                        "{\"inputs\": [\"x\"], \"nodes\": [...], \"outputs\": [...]}}, got %s",
                        KAPI_MAX_BLOCKS, got);
        return false;
    }
    /* names first, so that nodes can instantiate blocks declared after them */
    bool names_ok = true;
    for (const cJSON *b = blocks->child; b; b = b->next) {
        gscope *scope = &gp->blocks[gp->n_blocks];
        char field[KAPI_PATH_MAX];
        kapi__path(field, path, b->string);
        snprintf(scope->path, sizeof scope->path, "%s", field);
        const char *name = b->string;
        bool duplicate = find_block(gp, name) >= 0;
        if (duplicate) {
            kapi_errors_add(gp->errors, field, "duplicate key (each field may appear only once)");
            names_ok = false;
            continue;
        }
        if (!valid_name(name, false)) {
            kapi_errors_add(gp->errors, field,
                            "expected a block name of letters, digits and '_' not starting with "
                            "a digit (a class name such as \"Block\")");
            names_ok = false;
            continue;
        }
        if (kn_layer_find(name)) {
            kapi_errors_add(gp->errors, field,
                            "\"%s\" is a layer type; name the block otherwise (e.g. \"%c%s\")",
                            name, toupper((unsigned char)name[0]), name + 1);
            names_ok = false;
            continue;
        }
        snprintf(scope->name, sizeof scope->name, "%s", name);
        gp->block_names[gp->n_blocks++] = scope->name;
    }
    gp->block_names[gp->n_blocks] = NULL;
    return names_ok;
}

static bool read_block_bodies(graph_parse *gp, const cJSON *root)
{
    const cJSON *blocks = cJSON_GetObjectItemCaseSensitive(root, "blocks");
    bool ok = true;
    char got[120];
    for (int i = 0; i < gp->n_blocks; i++) {
        gscope *scope = &gp->blocks[i];
        const cJSON *body = cJSON_GetObjectItemCaseSensitive(blocks, scope->name);
        if (!cJSON_IsObject(body)) {
            kapi__describe(body, got, sizeof got);
            kapi_errors_add(gp->errors, scope->path,
                            "expected a block object {\"inputs\": [...], \"nodes\": [...], "
                            "\"outputs\": [...]}, got %s",
                            got);
            ok = false;
            continue;
        }
        int before = gp->errors->count;
        kapi__check_fields(gp->errors, body, scope->path, BLOCK_FIELDS);
        bool read = read_block_inputs(gp, body, scope);
        read = read_nodes(gp, body, scope) && read;
        read = read_outputs(gp, body, scope) && read;
        scope->ok = read && gp->errors->count == before && check_scope(gp, scope);
        ok = scope->ok && ok;
    }
    return ok;
}

/* No block contains itself, through any chain of instances. */
static bool check_recursion(graph_parse *gp, int block, int *stack, int depth)
{
    for (int d = 0; d < depth; d++)
        if (stack[d] == block) {
            char chain[600];
            size_t used = 0;
            for (int k = d; k < depth && used < sizeof chain; k++)
                used += (size_t)snprintf(chain + used, sizeof chain - used, "%s -> ",
                                         gp->blocks[stack[k]].name);
            if (used < sizeof chain)
                snprintf(chain + used, sizeof chain - used, "%s", gp->blocks[block].name);
            kapi_errors_add(gp->errors, gp->blocks[block].path, "block %s contains itself: %s",
                            gp->blocks[block].name, chain);
            return false;
        }
    if (depth == KAPI_GRAPH_MAX_DEPTH) {
        kapi_errors_add(gp->errors, gp->blocks[block].path, "blocks nest more than %d deep here",
                        KAPI_GRAPH_MAX_DEPTH);
        return false;
    }
    stack[depth] = block;
    const gscope *scope = &gp->blocks[block];
    for (int i = 0; i < scope->n_nodes; i++)
        if (scope->nodes[i].block >= 0 &&
            !check_recursion(gp, scope->nodes[i].block, stack, depth + 1))
            return false;
    return true;
}

/* ---- the model ------------------------------------------------------------------------------ */

static void free_scope(gscope *scope)
{
    free(scope->nodes);
    free(scope->order);
}

bool kapi__graph_from_json(const cJSON *root, const char *prefix, kapi_model_spec *spec,
                           kapi_errors *errors)
{
    graph_parse *gp = calloc(1, sizeof *gp);
    if (!gp) {
        kapi_errors_add(errors, prefix, "out of memory");
        return false;
    }
    gp->errors = errors;
    gp->prefix = prefix;
    snprintf(gp->top.path, sizeof gp->top.path, "%s", prefix);
    int before = errors->count;
    bool ok = read_blocks(gp, root);
    bool inputs_ok = read_model_inputs(gp, root, &gp->top);
    bool nodes_ok = read_nodes(gp, root, &gp->top);
    bool outputs_ok = read_outputs(gp, root, &gp->top);
    ok = read_block_bodies(gp, root) && ok;
    if (inputs_ok && nodes_ok && outputs_ok && errors->count == before)
        ok = check_scope(gp, &gp->top) && ok;
    else
        ok = false;
    int stack[KAPI_GRAPH_MAX_DEPTH];
    for (int b = 0; ok && b < gp->n_blocks; b++) ok = check_recursion(gp, b, stack, 0);
    if (ok) ok = kapi__graph_expand(gp, spec);
    free_scope(&gp->top);
    for (int b = 0; b < gp->n_blocks; b++) free_scope(&gp->blocks[b]);
    free(gp);
    return ok && errors->count == before;
}
