/*
 * autograd.c — the define-by-run graph and the backward engine.
 *
 * Each op that sees an input requiring grad makes a kn_node: the function that made
 * one output tensor. A node holds a reference to each input's node (or, for a leaf,
 * to the leaf tensor, whose .grad it accumulates into) and the tensors its backward
 * needs. Outputs hold their node; nodes never hold their output, so there are no
 * cycles and dropping the last tensor of a step frees the whole graph.
 *
 * Backward and release are iterative (explicit stacks), so graphs 100,000 ops deep
 * neither overflow the C stack going back nor coming down.
 */
#include "kn_internal.h"

#include <stdlib.h>
#include <string.h>

_Thread_local int kn__no_grad_depth;

void kn_no_grad_begin(void)
{
    kn__no_grad_depth++;
}
void kn_no_grad_end(void)
{
    if (kn__no_grad_depth > 0) kn__no_grad_depth--;
}
bool kn_is_grad_enabled(void)
{
    return kn__no_grad_depth == 0;
}

bool kn_is_leaf(const kn_tensor *t)
{
    return t && t->grad_fn == NULL;
}

kn_tensor *kn_grad(const kn_tensor *t)
{
    return t ? t->grad : NULL;
}

void kn_zero_grad(kn_tensor *t)
{
    if (!t) return;
    kn_release(t->grad);
    t->grad = NULL;
}

kn_tensor *kn_set_requires_grad(kn_tensor *t, bool requires_grad)
{
    if (!t) return NULL;
    if (t->grad_fn)
        return kn__error_null(KN_ERR_AUTOGRAD,
                              "set_requires_grad: only leaf tensors can change requires_grad; this "
                              "tensor (shape %s) was made by %s — use kn_detach() first",
                              kn__shape(t), t->grad_fn->name);
    if (requires_grad && t->dtype != KN_FLOAT32)
        return kn__error_null(KN_ERR_DTYPE,
                              "set_requires_grad: only float32 tensors can require grad, got %s",
                              kn_dtype_name(t->dtype));
    t->requires_grad = requires_grad;
    return t;
}

kn_status kn_retain_grad(kn_tensor *t)
{
    if (!t) return kn__error(KN_ERR_NULL, "retain_grad: tensor is NULL");
    if (!t->requires_grad)
        return kn__error(KN_ERR_AUTOGRAD, "retain_grad: tensor of shape %s does not require grad",
                         kn__shape(t));
    if (t->grad_fn) {
        t->grad_fn->retain_target = t;
        t->retains_grad = true;
    }
    return KN_OK;
}

kn_tensor *kn_detach(kn_tensor *t)
{
    if (!t) return NULL;
    return kn__result(kn__view_raw(t, t->shape, t->strides, t->ndim, t->offset));
}

/* ---- nodes ---------------------------------------------------------------------- */

bool kn__needs_grad(kn_tensor *const *inputs, int n)
{
    if (kn__no_grad_depth) return false;
    for (int i = 0; i < n; i++)
        if (inputs[i] && inputs[i]->requires_grad) return true;
    return false;
}

kn_node *kn__node_new(const char *name, kn_backward_fn backward, kn_tensor *const *inputs,
                      int n_inputs)
{
    kn_node *node = kn__alloc(sizeof *node);
    if (!node) return kn__error_null(KN_ERR_MEMORY, "%s: out of memory recording the graph", name);
    memset(node, 0, sizeof *node);
    node->inputs = kn__alloc(sizeof(kn_node_input) * (size_t)(n_inputs ? n_inputs : 1));
    if (!node->inputs) {
        kn__free(node, sizeof *node);
        return kn__error_null(KN_ERR_MEMORY, "%s: out of memory recording the graph", name);
    }
    node->refcount = 1;
    node->name = name;
    node->backward = backward;
    node->n_inputs = n_inputs;
    for (int i = 0; i < n_inputs; i++) {
        kn_node_input *in = &node->inputs[i];
        memset(in, 0, sizeof *in);
        kn_tensor *t = inputs[i];
        if (!t) continue;
        in->dtype = t->dtype;
        in->ndim = t->ndim;
        memcpy(in->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        if (!t->requires_grad) continue;
        in->needs_grad = true;
        if (t->grad_fn) {
            in->node = t->grad_fn;
            __atomic_add_fetch(&t->grad_fn->refcount, 1, __ATOMIC_RELAXED);
        } else {
            in->leaf = kn_retain(t);
        }
    }
    return node;
}

void kn__node_save(kn_node *node, kn_tensor *t)
{
    if (node->n_saved >= KN_NODE_MAX_SAVED) abort(); /* an engine bug, not a user error */
    node->saved[node->n_saved++] =
        t ? kn__view_raw(t, t->shape, t->strides, t->ndim, t->offset) : NULL;
}

void kn__node_attach(kn_tensor *out, kn_node *node)
{
    out->grad_fn = node;
    out->requires_grad = true;
    node->out_ndim = out->ndim;
    node->out_dtype = out->dtype;
    memcpy(node->out_shape, out->shape, sizeof(int64_t) * (size_t)out->ndim);
}

static void free_saved(kn_node *node)
{
    for (int i = 0; i < node->n_saved; i++) {
        kn_release(node->saved[i]);
        node->saved[i] = NULL;
    }
    if (node->extra_free && node->extra) node->extra_free(node->extra);
    node->extra = NULL;
}

/* Releasing a node can release its inputs' nodes, and so on down a chain as long as
 * the graph: a per-thread work list replaces recursion. */
static _Thread_local kn_node **release_stack;
static _Thread_local size_t release_count, release_capacity;
static _Thread_local bool releasing;

void kn__autograd_free_thread_buffers(void)
{
    free(release_stack);
    release_stack = NULL;
    release_count = release_capacity = 0;
}

static void push_release(kn_node *node)
{
    if (release_count == release_capacity) {
        if (!release_stack) kn__register_thread_buffers();
        size_t capacity = release_capacity ? release_capacity * 2 : 64;
        kn_node **grown = realloc(release_stack, sizeof(kn_node *) * capacity);
        if (!grown) abort();
        release_stack = grown;
        release_capacity = capacity;
    }
    release_stack[release_count++] = node;
}

void kn__node_release(kn_node *node)
{
    if (!node) return;
    push_release(node);
    if (releasing) return; /* the outer call's loop will get to it */
    releasing = true;
    while (release_count > 0) {
        kn_node *n = release_stack[--release_count];
        if (__atomic_sub_fetch(&n->refcount, 1, __ATOMIC_ACQ_REL) > 0) continue;
        for (int i = 0; i < n->n_inputs; i++) {
            if (n->inputs[i].node) push_release(n->inputs[i].node);
            kn_release(n->inputs[i].leaf);
        }
        free_saved(n);
        kn_release(n->pending_grad);
        kn__free(n->inputs, sizeof(kn_node_input) * (size_t)(n->n_inputs ? n->n_inputs : 1));
        kn__free(n, sizeof *n);
    }
    releasing = false; /* the stack's buffer stays for the next release */
}

/* ---- backward --------------------------------------------------------------------- */

typedef struct node_list {
    kn_node **items;
    size_t count, capacity;
} node_list;

static bool list_push(node_list *list, kn_node *node)
{
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 64;
        kn_node **grown = realloc(list->items, sizeof(kn_node *) * capacity);
        if (!grown) return false;
        list->items = grown;
        list->capacity = capacity;
    }
    list->items[list->count++] = node;
    return true;
}

/* Adds grad into *slot (which holds one reference or NULL). Never in place on a tensor
 * someone else may hold: accumulation makes a new tensor. */
static kn_status accumulate(kn_tensor **slot, kn_tensor *grad)
{
    if (!*slot) {
        *slot = kn_retain(grad);
        return KN_OK;
    }
    kn_scope_begin();
    kn_tensor *sum = kn_add(*slot, grad);
    if (!sum) {
        kn_scope_end();
        return kn_last_status();
    }
    kn_retain(sum);
    kn_scope_end();
    kn_release(*slot);
    *slot = sum;
    return KN_OK;
}

/* Whether a leaf's first gradient can become its .grad as it is, as PyTorch's
 * AccumulateGrad steals a gradient nothing else holds: the gradient is float32, on the
 * leaf's device, of its shape with exactly contiguous strides over the whole of its own
 * storage (the layout a copy would have), with no history or .grad of its own, and the
 * innermost scope (the backward's) holds its only reference and nothing shares its
 * memory. Anything that is not a fresh result of this backward step fails the last test:
 * a gradient given to kn_backward, a node's grad_output passed on unchanged (held by the
 * engine, not the scope), a view of either (shares the storage), a saved tensor. */
static bool adoptable(const kn_tensor *leaf, const kn_tensor *grad)
{
    if (grad->dtype != KN_FLOAT32 || grad->device.type != leaf->device.type ||
        grad->device.index != leaf->device.index || !kn__same_shape(grad, leaf) ||
        grad->offset != 0 || grad->grad_fn || grad->requires_grad || grad->grad)
        return false;
    int64_t strides[KN_MAX_DIMS];
    kn__contiguous_strides(grad->shape, grad->ndim, strides);
    if (grad->ndim && memcmp(strides, grad->strides, sizeof(int64_t) * (size_t)grad->ndim) != 0)
        return false;
    if (grad->storage->nbytes != (size_t)kn_numel(grad) * sizeof(float)) return false;
    return kn__scope_owns_alone(grad);
}

/* Leaves keep their own .grad, which never aliases a tensor the graph or the caller can
 * still see: the first gradient is adopted when `may_adopt` and adoptable() say nothing
 * else can reach it, else copied; later ones are added in place, as PyTorch does.
 * may_adopt is false when the caller will hand the same tensor on elsewhere. */
static kn_status accumulate_leaf(kn_tensor *leaf, kn_tensor *grad, bool may_adopt)
{
    if (!leaf->grad) {
        if (may_adopt && adoptable(leaf, grad)) {
            leaf->grad = kn_retain(grad);
            return KN_OK;
        }
        kn_tensor *copy = kn__empty_raw(leaf->shape, leaf->ndim, KN_FLOAT32, leaf->device);
        if (!copy) return kn_last_status();
        kn_status status = kn_copy_(copy, grad);
        if (status != KN_OK) {
            kn_release(copy);
            return status;
        }
        leaf->grad = copy;
        return KN_OK;
    }
    return kn_add_(leaf->grad, grad, 1.0);
}

static uint64_t next_mark(void)
{
    static uint64_t mark;
    return __atomic_add_fetch(&mark, 1, __ATOMIC_RELAXED);
}

/* ---- the backward observer (kn__set_backward_hooks) ----------------------------------- */

static _Thread_local const kn__backward_hooks *backward_hooks;

void kn__set_backward_hooks(const kn__backward_hooks *hooks)
{
    backward_hooks = hooks;
}

/* The edges into each leaf of one backward pass, counted only when an observer wants to
 * know when a leaf's gradient is complete: open addressing on the leaf's address. */
typedef struct leaf_counts {
    kn_tensor **keys;
    int *counts;
    size_t capacity, used;
} leaf_counts;

static size_t leaf_hash(const kn_tensor *leaf, size_t capacity)
{
    uint64_t h = (uint64_t)(uintptr_t)leaf * 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 17) & (capacity - 1);
}

static int *leaf_slot(const leaf_counts *m, const kn_tensor *leaf)
{
    if (!m->capacity) return NULL;
    for (size_t i = leaf_hash(leaf, m->capacity);; i = (i + 1) & (m->capacity - 1)) {
        if (m->keys[i] == leaf) return &m->counts[i];
        if (!m->keys[i]) return NULL;
    }
}

static bool leaf_count_add(leaf_counts *m, kn_tensor *leaf)
{
    int *slot = leaf_slot(m, leaf);
    if (slot) {
        (*slot)++;
        return true;
    }
    if (2 * (m->used + 1) > m->capacity) { /* grow: at most half full */
        leaf_counts bigger = {.capacity = m->capacity ? 2 * m->capacity : 64};
        bigger.keys = calloc(bigger.capacity, sizeof *bigger.keys);
        bigger.counts = calloc(bigger.capacity, sizeof *bigger.counts);
        if (!bigger.keys || !bigger.counts) {
            free(bigger.keys);
            free(bigger.counts);
            return false;
        }
        for (size_t i = 0; i < m->capacity; i++) {
            if (!m->keys[i]) continue;
            size_t j = leaf_hash(m->keys[i], bigger.capacity);
            while (bigger.keys[j]) j = (j + 1) & (bigger.capacity - 1);
            bigger.keys[j] = m->keys[i];
            bigger.counts[j] = m->counts[i];
        }
        bigger.used = m->used;
        free(m->keys);
        free(m->counts);
        *m = bigger;
    }
    size_t i = leaf_hash(leaf, m->capacity);
    while (m->keys[i]) i = (i + 1) & (m->capacity - 1);
    m->keys[i] = leaf;
    m->counts[i] = 1;
    m->used++;
    return true;
}

/* After node has run (or passed its turn): its leaves' counts drop, and the observer
 * hears of each leaf that nothing else feeds any more. */
static kn_status notify_observer(kn_node *node, leaf_counts *counts)
{
    const kn__backward_hooks *h = backward_hooks;
    for (int i = 0; i < node->n_inputs; i++) {
        kn_node_input *in = &node->inputs[i];
        if (!in->leaf || !in->needs_grad) continue;
        int *left = leaf_slot(counts, in->leaf);
        if (left && --*left == 0 && h->leaf_ready) {
            kn_status st = h->leaf_ready(h->context, in->leaf);
            if (st != KN_OK) return st;
        }
    }
    return h->after_node ? h->after_node(h->context) : KN_OK;
}

/* Collects every node reachable from root and counts, for each, the edges into it (and
 * into each leaf, when counts is given). */
static kn_status collect(kn_node *root, node_list *all, uint64_t mark, leaf_counts *counts)
{
    node_list stack = {0};
    root->visit_mark = mark;
    root->dependencies = 0;
    kn_status status = KN_OK;
    if (!list_push(&stack, root) || !list_push(all, root)) status = KN_ERR_MEMORY;
    while (status == KN_OK && stack.count > 0) {
        kn_node *node = stack.items[--stack.count];
        for (int i = 0; i < node->n_inputs; i++) {
            kn_node_input *in = &node->inputs[i];
            if (counts && in->leaf && in->needs_grad && !leaf_count_add(counts, in->leaf)) {
                status = KN_ERR_MEMORY;
                break;
            }
            kn_node *next = in->node;
            if (!next) continue;
            if (next->visit_mark != mark) {
                next->visit_mark = mark;
                next->dependencies = 0;
                if (!list_push(&stack, next) || !list_push(all, next)) {
                    status = KN_ERR_MEMORY;
                    break;
                }
            }
            next->dependencies++;
        }
    }
    free(stack.items);
    if (status != KN_OK) kn__error(status, "backward: out of memory walking the graph");
    return status;
}

/* Whether the backward gave input i's gradient tensor to a later input too: the engine
 * routes that one after i, so input i's leaf must not make it its .grad (a later add
 * in place would change what the other input received). */
static bool handed_on(kn_tensor *const *grads, const kn_node *node, int i)
{
    for (int j = i + 1; j < node->n_inputs; j++)
        if (node->inputs[j].needs_grad && grads[j] == grads[i]) return true;
    return false;
}

/* Runs one node's backward and routes each input's gradient to its leaf or node. */
static kn_status call_backward(kn_node *node, kn_tensor *grad_output, bool retain_graph)
{
    if (node->retain_target) {
        /* grad_output is the engine's and goes on to the node's backward: copied */
        kn_status status = accumulate_leaf(node->retain_target, grad_output, false);
        if (status != KN_OK) return status;
    }
    if (node->saved_freed)
        return kn__error(KN_ERR_AUTOGRAD,
                         "backward: trying to backward through the graph a second time (at %s); "
                         "its saved tensors were freed by the first backward — pass "
                         "retain_graph=true to the first call",
                         node->name);
    kn_tensor *small[8] = {0};
    kn_tensor **grads = small;
    if (node->n_inputs > 8) {
        grads = calloc((size_t)node->n_inputs, sizeof *grads);
        if (!grads) return kn__error(KN_ERR_MEMORY, "backward: out of memory");
    }
    kn_scope_begin();
    kn_status status = node->backward(node, grad_output, grads);
    if (status != KN_OK && kn_last_status() == KN_OK)
        kn__error(status, "backward of %s failed", node->name);
    for (int i = 0; status == KN_OK && i < node->n_inputs; i++) {
        kn_node_input *in = &node->inputs[i];
        kn_tensor *g = grads[i];
        if (!in->needs_grad || !g) continue;
        if (g->ndim != in->ndim ||
            memcmp(g->shape, in->shape, sizeof(int64_t) * (size_t)in->ndim) != 0) {
            g = kn__sum_to_shape(g, in->shape, in->ndim);
            if (!g) {
                status = kn_last_status();
                break;
            }
        }
        if (in->leaf)
            status = accumulate_leaf(in->leaf, g, !handed_on(grads, node, i));
        else if (in->node)
            status = accumulate(&in->node->pending_grad, g);
    }
    kn_scope_end();
    if (grads != small) free(grads);
    if (status == KN_OK && !retain_graph) {
        free_saved(node);
        node->saved_freed = true;
    }
    return status;
}

static kn_status run_node(kn_node *node, bool retain_graph, node_list *ready, leaf_counts *counts)
{
    kn_tensor *grad_output = node->pending_grad;
    node->pending_grad = NULL;
    if (grad_output) { /* else no gradient flowed here: just pass the turn on */
        kn_status status = call_backward(node, grad_output, retain_graph);
        kn_release(grad_output);
        if (status != KN_OK) return status;
    }
    if (counts) {
        kn_status status = notify_observer(node, counts);
        if (status != KN_OK) return status;
    }
    for (int i = 0; i < node->n_inputs; i++) {
        kn_node *next = node->inputs[i].node;
        if (next && --next->dependencies == 0 && !list_push(ready, next))
            return kn__error(KN_ERR_MEMORY, "backward: out of memory");
    }
    return KN_OK;
}

kn_status kn_backward(kn_tensor *t, kn_tensor *grad, bool retain_graph)
{
    if (!t) return kn__error(KN_ERR_NULL, "backward: tensor is NULL");
    if (!t->requires_grad)
        return kn__error(KN_ERR_AUTOGRAD,
                         "backward: tensor of shape %s does not require grad and has no grad_fn",
                         kn__shape(t));
    kn_scope_begin();
    if (!grad) {
        if (kn_numel(t) != 1) {
            kn_scope_end();
            return kn__error(KN_ERR_SHAPE,
                             "backward: grad can be implicitly created only for one-element "
                             "outputs, got shape %s — pass an explicit gradient",
                             kn__shape(t));
        }
        grad = kn_ones_like(t); /* on t's device */
    } else if (!kn__same_shape(grad, t)) {
        kn_scope_end();
        return kn__error(KN_ERR_SHAPE, "backward: gradient of shape %s does not match output %s",
                         kn__shape(grad), kn__shape(t));
    }
    if (!grad) {
        kn_scope_end();
        return kn_last_status();
    }
    if (!t->grad_fn) { /* backward on a leaf: its own gradient */
        kn_status status = accumulate_leaf(t, grad, true); /* kn_ones_like's is adoptable */
        if (status == KN_OK && backward_hooks && backward_hooks->leaf_ready)
            status = backward_hooks->leaf_ready(backward_hooks->context, t);
        kn_scope_end();
        return status;
    }
    kn_no_grad_begin();
    node_list all = {0}, ready = {0};
    leaf_counts counts = {0};
    leaf_counts *observed = backward_hooks ? &counts : NULL;
    kn_status status = collect(t->grad_fn, &all, next_mark(), observed);
    if (status == KN_OK) {
        t->grad_fn->pending_grad = kn_retain(grad);
        if (!list_push(&ready, t->grad_fn))
            status = kn__error(KN_ERR_MEMORY, "backward: out of memory");
    }
    while (status == KN_OK && ready.count > 0) {
        kn_node *node = ready.items[--ready.count];
        status = run_node(node, retain_graph, &ready, observed);
    }
    /* On failure, drop what was accumulated but never consumed. */
    for (size_t i = 0; i < all.count; i++) {
        kn_release(all.items[i]->pending_grad);
        all.items[i]->pending_grad = NULL;
    }
    free(all.items);
    free(ready.items);
    free(counts.keys);
    free(counts.counts);
    kn_no_grad_end();
    kn_scope_end();
    return status;
}

kn_tensor *kn__sum_to_shape(kn_tensor *grad, const int64_t *shape, int ndim)
{
    int lead = grad->ndim - ndim;
    if (lead < 0)
        return kn__error_null(KN_ERR_SHAPE,
                              "backward: gradient of shape %s cannot be reduced to %s",
                              kn__shape(grad), kn__shape_of(shape, ndim));
    if (grad->device.type != KN_DEVICE_CPU) return kn__device_sum_to_shape(grad, shape, ndim);
    int dims[KN_MAX_DIMS], count = 0;
    for (int i = 0; i < grad->ndim; i++)
        if (i < lead || (shape[i - lead] == 1 && grad->shape[i] != 1)) dims[count++] = i;
    kn_tensor *reduced = count ? kn_sum(grad, dims, count, false) : grad;
    return kn_reshape(reduced, shape, ndim);
}
