/*
 * nn.c — what every module shares: freeing, forward through its row of the layer
 * table, train/eval, which modules a CUDA graph can capture, and the named views of
 * parameters and buffers (parameters, state_dict, load_state_dict, to) under PyTorch's
 * dotted names. Making modules is in nn_init.c, shapes and the repr in nn_shape.c, each
 * kind's own code in layer_*.c.
 */
#include "nn_internal.h"

#include <stdlib.h>
#include <string.h>

const char *kn_module_kind_name(kn_module_kind kind)
{
    const kn_layer_type *row = kn_layer_of(kind);
    return row ? row->name : "unknown";
}

void kn_module_free(kn_module *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) kn_release(m->tensors[i].tensor);
    for (int i = 0; i < m->n_children; i++) kn_module_free(m->children[i]);
    kn__graph_free(m->graph);
    free(m->tensors);
    free(m->children);
    free(m->child_names);
    free(m);
}

kn_tensor *kn__module_tensor(const kn_module *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return m->tensors[i].tensor;
    return NULL;
}

/* ---- forward ---------------------------------------------------------------------- */

/* Whether m can be called on these n inputs; the error set when not. */
static bool callable_on(const kn_module *m, kn_tensor *const *inputs, int n)
{
    if (!m) {
        kn__error(KN_ERR_NULL, "module_forward: module is NULL");
        return false;
    }
    int least = m->layer->min_inputs ? m->layer->min_inputs : 1;
    int most = m->layer->max_inputs ? m->layer->max_inputs : 1;
    if (n < least || n > most || !inputs) {
        char takes[48];
        kn__error(KN_ERR_VALUE, "%s: takes %s, got %d", m->type_name,
                  kn__inputs_text(least, most, takes, sizeof takes), inputs ? n : 0);
        return false;
    }
    for (int i = 0; i < n; i++) {
        if (inputs[i]) continue;
        if (kn_last_status() == KN_OK)
            kn__error(KN_ERR_NULL, "module_forward: input of %s is NULL", m->type_name);
        return false;
    }
    return true;
}

kn_tensor *kn_module_forward_n(kn_module *m, kn_tensor *const *inputs, int n)
{
    return callable_on(m, inputs, n) ? m->layer->forward(m, inputs, n) : NULL;
}

kn_tensor *kn_module_forward(kn_module *m, kn_tensor *x)
{
    return kn_module_forward_n(m, &x, 1);
}

kn_status kn_module_forward_outputs(kn_module *m, kn_tensor *const *inputs, int n,
                                    kn_tensor **outputs, int capacity, int *n_outputs)
{
    if (!outputs || !n_outputs)
        return kn__error(KN_ERR_NULL, "module_forward_outputs: %s is NULL",
                         outputs ? "n_outputs" : "outputs");
    *n_outputs = 0;
    if (!callable_on(m, inputs, n))
        return kn_last_status() != KN_OK ? kn_last_status() : KN_ERR_NULL;
    if (m->layer->forward_outputs) {
        kn_tensor *all[KN_LAYER_MAX_OUTPUTS];
        int count = 0;
        kn_status status = m->layer->forward_outputs(m, inputs, n, all, &count);
        if (status != KN_OK) return status;
        if (count > capacity)
            return kn__error(KN_ERR_VALUE, "%s: gives %d outputs, room was made for %d",
                             m->type_name, count, capacity);
        for (int i = 0; i < count; i++) outputs[i] = all[i];
        *n_outputs = count;
        return KN_OK;
    }
    kn_tensor *y = m->layer->forward(m, inputs, n);
    if (!y) return kn_last_status() != KN_OK ? kn_last_status() : KN_ERR_NULL;
    if (capacity < 1)
        return kn__error(KN_ERR_VALUE, "%s: gives 1 output, room was made for %d", m->type_name,
                         capacity);
    outputs[0] = y;
    *n_outputs = 1;
    return KN_OK;
}

void kn_module_train(kn_module *m, bool training)
{
    if (!m) return;
    m->training = training;
    for (int i = 0; i < m->n_children; i++) kn_module_train(m->children[i], training);
}

/* ---- CUDA-graph capture ------------------------------------------------------------- */

const char *kn_layer_host_bound(const kn_module *m)
{
    const kn_layer_type *row = m->layer;
    const char *why = row->host_bound_if ? row->host_bound_if(m)
                      : row->capturable  ? NULL
                      : row->host_bound  ? row->host_bound
                                         : "a layer not known to be capturable";
    for (int i = 0; !why && i < m->n_children; i++) why = kn_layer_host_bound(m->children[i]);
    return why;
}

/* ---- named tensors ---------------------------------------------------------------- */

typedef struct {
    kn_named_tensor *items;
    int count, capacity;
    bool buffers, failed;
} collection;

static bool listed(const collection *c, const kn_tensor *t)
{
    for (int i = 0; i < c->count; i++)
        if (c->items[i].tensor == t) return true;
    return false;
}

/* Appends m's tensors (and its children's, prefixed "name.") in registration order. */
static void collect(const kn_module *m, const char *prefix, collection *c)
{
    for (int i = 0; i < m->n_tensors && !c->failed; i++) {
        if (m->tensors[i].is_buffer && !c->buffers) continue;
        /* a tied tensor is one parameter, listed under its first name (torch's
         * named_parameters); the state dict lists every name, as torch's does */
        if (m->tensors[i].shared && !c->buffers && listed(c, m->tensors[i].tensor)) continue;
        if (c->count == c->capacity) {
            int capacity = c->capacity ? 2 * c->capacity : 16;
            kn_named_tensor *grown = realloc(c->items, sizeof *grown * (size_t)capacity);
            if (!grown) {
                c->failed = true;
                kn__error(KN_ERR_MEMORY, "state_dict: out of memory");
                return;
            }
            c->items = grown;
            c->capacity = capacity;
        }
        kn_named_tensor *e = &c->items[c->count++];
        snprintf(e->name, sizeof e->name, "%s%s", prefix, m->tensors[i].name);
        e->tensor = m->tensors[i].tensor;
        e->is_buffer = m->tensors[i].is_buffer;
    }
    for (int i = 0; i < m->n_children && !c->failed; i++) {
        char child_prefix[96];
        snprintf(child_prefix, sizeof child_prefix, "%s%s.", prefix, m->child_names[i]);
        collect(m->children[i], child_prefix, c);
    }
}

static kn_named_tensor *named(const kn_module *m, bool buffers, int *count)
{
    collection c = {.buffers = buffers};
    if (count) *count = 0;
    if (!m) return kn__error_null(KN_ERR_NULL, "state_dict: module is NULL");
    collect(m, "", &c);
    if (c.failed) {
        free(c.items);
        return NULL;
    }
    if (!c.items) c.items = malloc(sizeof *c.items); /* a freeable array even when empty */
    if (count) *count = c.count;
    return c.items;
}

kn_named_tensor *kn_module_parameters(const kn_module *m, int *count)
{
    return named(m, false, count);
}

kn_named_tensor *kn_module_state_dict(const kn_module *m, int *count)
{
    return named(m, true, count);
}

int64_t kn_module_parameter_count(const kn_module *m)
{
    int n = 0;
    kn_named_tensor *parameters = m ? kn_module_parameters(m, &n) : NULL;
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += kn_numel(parameters[i].tensor); /* tied ones once */
    free(parameters);
    return total;
}

void kn_module_zero_grad(kn_module *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) kn_zero_grad(m->tensors[i].tensor);
    for (int i = 0; i < m->n_children; i++) kn_module_zero_grad(m->children[i]);
}

/* Appends "; "-separated problems to a fixed buffer, counting those that do not fit. */
typedef struct {
    char text[1024];
    size_t length;
    int count, left_out;
    kn_status status;
} problems;

static void problem(problems *p, kn_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void problem(problems *p, kn_status status, const char *fmt, ...)
{
    if (p->count++ == 0) p->status = status;
    char line[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    size_t need = strlen(line) + 2;
    if (p->length + need + 32 >= sizeof p->text) {
        p->left_out++;
        return;
    }
    p->length += (size_t)snprintf(p->text + p->length, sizeof p->text - p->length, "%s%s",
                                  p->count > 1 ? "; " : "", line);
}

static const kn_named_tensor *find(const kn_named_tensor *entries, int count, const char *name)
{
    for (int i = 0; i < count; i++)
        if (strcmp(entries[i].name, name) == 0) return &entries[i];
    return NULL;
}

/* Every problem entries have as m's state dict (own_entries, n), into p. */
static void check_entries(const kn_named_tensor *own_entries, int n, const kn_named_tensor *entries,
                          int count, bool strict, problems *p)
{
    for (int i = 0; i < n; i++) {
        const kn_named_tensor *e = find(entries, count, own_entries[i].name);
        kn_tensor *dst = own_entries[i].tensor;
        if (!e) {
            if (strict)
                problem(p, KN_ERR_VALUE, "missing key \"%s\" (shape %s)", own_entries[i].name,
                        kn__shape(dst));
        } else if (!e->tensor) {
            problem(p, KN_ERR_NULL, "entry \"%s\" has no tensor", e->name);
        } else if (!kn__same_shape(dst, e->tensor)) {
            problem(p, KN_ERR_SHAPE,
                    "size mismatch for \"%s\": the checkpoint has shape %s, the model has %s",
                    e->name, kn__shape(e->tensor), kn__shape(dst));
        } else if (dst->dtype != e->tensor->dtype) {
            problem(p, KN_ERR_DTYPE,
                    "dtype mismatch for \"%s\": the checkpoint has %s, the model has %s", e->name,
                    kn_dtype_name(e->tensor->dtype), kn_dtype_name(dst->dtype));
        }
    }
    for (int i = 0; strict && i < count; i++)
        if (!find(own_entries, n, entries[i].name))
            problem(p, KN_ERR_VALUE, "unexpected key \"%s\"", entries[i].name);
}

static kn_status problems_error(problems *p)
{
    if (p->left_out)
        snprintf(p->text + p->length, sizeof p->text - p->length, "; and %d more", p->left_out);
    return kn__error(p->status, "load_state_dict: %s", p->text);
}

kn_status kn__module_check_state_dict(const kn_module *m, const kn_named_tensor *entries, int count,
                                      bool strict)
{
    if (!m || (count > 0 && !entries))
        return kn__error(KN_ERR_NULL, "load_state_dict: %s is NULL", m ? "entries" : "module");
    int n;
    kn_named_tensor *own_entries = kn_module_state_dict(m, &n);
    if (!own_entries) return kn_last_status();
    problems p = {.status = KN_OK};
    check_entries(own_entries, n, entries, count, strict, &p);
    free(own_entries);
    return p.count == 0 ? KN_OK : problems_error(&p);
}

kn_status kn_module_load_state_dict(kn_module *m, const kn_named_tensor *entries, int count,
                                    bool strict)
{
    /* check everything first, so a failed load changes nothing */
    kn_status status = kn__module_check_state_dict(m, entries, count, strict);
    if (status != KN_OK) return status;
    int n;
    kn_named_tensor *own_entries = kn_module_state_dict(m, &n);
    if (!own_entries) return kn_last_status();
    kn_no_grad_begin(); /* parameters are leaves that require grad */
    for (int i = 0; i < n && status == KN_OK; i++) {
        const kn_named_tensor *e = find(entries, count, own_entries[i].name);
        if (e) status = kn_copy_(own_entries[i].tensor, e->tensor);
    }
    kn_no_grad_end();
    free(own_entries);
    return status;
}

/* Whether kn_module_to moves m's tensor i: all but the host's counters. BatchNorm's
 * num_batches_tracked stays on the CPU: the forward reads it for momentum=None and adds
 * 1 there, and keeping it there saves a device round trip per step; the state dict and
 * checkpoints name and save it as before. */
static bool moves(const kn_module *m, int i)
{
    return !m->tensors[i].host;
}

/* Every tensor slot of m and its children that moves, for moving them in place. */
static int count_tensors(const kn_module *m)
{
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) n += moves(m, i);
    for (int i = 0; i < m->n_children; i++) n += count_tensors(m->children[i]);
    return n;
}

static void gather_slots(kn_module *m, kn_tensor ***slots, int *n)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (moves(m, i)) slots[(*n)++] = &m->tensors[i].tensor;
    for (int i = 0; i < m->n_children; i++) gather_slots(m->children[i], slots, n);
}

kn_status kn_module_to(kn_module *m, kn_device device)
{
    if (!m) return kn__error(KN_ERR_NULL, "module_to: module is NULL");
    int total = count_tensors(m), n = 0;
    if (total == 0) {
        char name[32];
        if (!kn_device_available(device))
            return kn__error(KN_ERR_DEVICE, "to: device %s is not available",
                             kn_device_str(device, name, sizeof name));
        return KN_OK;
    }
    kn_tensor ***slots = malloc(sizeof *slots * (size_t)total);
    kn_tensor **moved = calloc((size_t)total, sizeof *moved);
    if (!slots || !moved) {
        free(slots);
        free(moved);
        return kn__error(KN_ERR_MEMORY, "module_to: out of memory");
    }
    gather_slots(m, slots, &n);
    /* Move everything first; swap only when all moved, so a failure changes nothing. */
    kn_status status = KN_OK;
    kn_scope_begin();
    for (int i = 0; i < n && status == KN_OK; i++) {
        kn_tensor *t = *slots[i];
        int same = 0; /* a tied tensor moves once, and stays one tensor */
        while (same < i && *slots[same] != t) same++;
        if (same < i) {
            moved[i] = kn_retain(moved[same]);
            continue;
        }
        kn_tensor *copy = kn_to(t, device);
        if (copy && copy != t) { /* a new leaf with the parameter's flag */
            copy = kn_detach(copy);
            if (copy && t->requires_grad) copy = kn_set_requires_grad(copy, true);
        }
        if (!copy) status = kn_last_status();
        moved[i] = kn_retain(copy);
    }
    kn_scope_end();
    for (int i = 0; i < n; i++) {
        if (status == KN_OK) {
            kn_release(*slots[i]);
            *slots[i] = moved[i];
        } else {
            kn_release(moved[i]);
        }
    }
    free(slots);
    free(moved);
    return status;
}

/* ---- weight tying ------------------------------------------------------------------- */

/* The slot of the tensor at a state-dict name ("lm_head.weight") under root, or NULL
 * with the error set. */
static kn_module_tensor *slot_at(const kn_module *root, const char *name, const char *what)
{
    const char *dot = strrchr(name, '.');
    char path[96];
    snprintf(path, sizeof path, "%.*s", dot ? (int)(dot - name) : 0, name);
    const char *own = dot ? dot + 1 : name;
    kn_module *m = kn_module_find(root, path);
    for (int i = 0; m && i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, own) == 0) return &m->tensors[i];
    kn__error(KN_ERR_VALUE, "tie: no %s \"%s\" in the module", what, name);
    return NULL;
}

kn_status kn_module_tie(kn_module *root, const char *name, const char *to)
{
    if (!root || !name || !to)
        return kn__error(KN_ERR_NULL, "tie: %s is NULL", !root ? "module" : "a name");
    kn_module_tensor *slot = slot_at(root, name, "tensor");
    kn_module_tensor *source = slot ? slot_at(root, to, "tensor") : NULL;
    if (!slot || !source) return kn_last_status();
    if (slot->is_buffer || source->is_buffer)
        return kn__error(KN_ERR_VALUE, "tie: \"%s\" is a buffer; only parameters can be tied",
                         slot->is_buffer ? name : to);
    if (slot == source)
        return kn__error(KN_ERR_VALUE, "tie: \"%s\" cannot be tied to itself", name);
    if (!kn__same_shape(slot->tensor, source->tensor))
        return kn__error(KN_ERR_SHAPE, "tie: \"%s\" has shape %s but \"%s\" has %s", name,
                         kn__shape(slot->tensor), to, kn__shape(source->tensor));
    if (!kn_device_equal(slot->tensor->device, source->tensor->device))
        return kn__error(KN_ERR_DEVICE, "tie: \"%s\" and \"%s\" are on different devices", name,
                         to);
    kn_release(slot->tensor);
    slot->tensor = kn_retain(source->tensor);
    slot->shared = source->shared = true;
    return KN_OK;
}
