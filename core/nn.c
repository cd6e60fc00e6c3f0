/*
 * nn.c — what every module shares: freeing, forward dispatch to the engine's ops,
 * train/eval, and the named views of parameters and buffers (parameters, state_dict,
 * load_state_dict, to) under PyTorch's dotted names. Constructors live in nn_init.c,
 * shape inference and the repr in nn_shape.c.
 */
#include "kn_internal.h"
#include "kn_nn.h"

#include <stdlib.h>
#include <string.h>

const char *kn_module_kind_name(kn_module_kind kind)
{
    static const char *const names[] = {
        [KN_MODULE_SEQUENTIAL] = "sequential",
        [KN_MODULE_LINEAR] = "linear",
        [KN_MODULE_CONV2D] = "conv2d",
        [KN_MODULE_MAX_POOL2D] = "max_pool2d",
        [KN_MODULE_AVG_POOL2D] = "avg_pool2d",
        [KN_MODULE_ADAPTIVE_AVG_POOL2D] = "adaptive_avg_pool2d",
        [KN_MODULE_FLATTEN] = "flatten",
        [KN_MODULE_RELU] = "relu",
        [KN_MODULE_LEAKY_RELU] = "leaky_relu",
        [KN_MODULE_GELU] = "gelu",
        [KN_MODULE_TANH] = "tanh",
        [KN_MODULE_SIGMOID] = "sigmoid",
        [KN_MODULE_SOFTMAX] = "softmax",
        [KN_MODULE_DROPOUT] = "dropout",
        [KN_MODULE_BATCH_NORM1D] = "batch_norm1d",
        [KN_MODULE_BATCH_NORM2D] = "batch_norm2d",
        [KN_MODULE_LAYER_NORM] = "layer_norm",
        [KN_MODULE_EMBEDDING] = "embedding",
    };
    if ((unsigned)kind >= sizeof names / sizeof *names || !names[kind]) return "unknown";
    return names[kind];
}

void kn_module_free(kn_module *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) kn_release(m->tensors[i]);
    for (int i = 0; i < m->n_children; i++) kn_module_free(m->children[i]);
    free(m->children);
    free(m);
}

/* The module's own tensor registered under name, or NULL (e.g. bias=False). */
static kn_tensor *own(const kn_module *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensor_names[i], name) == 0) return m->tensors[i];
    return NULL;
}

/* ---- forward ---------------------------------------------------------------------- */

static kn_tensor *batch_norm_forward(kn_module *m, kn_tensor *x)
{
    if (m->kind == KN_MODULE_BATCH_NORM1D && x->ndim != 2 && x->ndim != 3)
        return kn__error_null(KN_ERR_SHAPE,
                              "BatchNorm1d: expected a 2-D [N, C] or 3-D [N, C, L] input, got %s",
                              kn__shape(x));
    if (m->kind == KN_MODULE_BATCH_NORM2D && x->ndim != 4)
        return kn__error_null(
            KN_ERR_SHAPE, "BatchNorm2d: expected a 4-D [N, C, H, W] input, got %s", kn__shape(x));
    if (x->shape[1] != m->in_features)
        return kn__error_null(KN_ERR_SHAPE, "%s: expected %lld channels in dim 1, got input %s",
                              m->type_name, (long long)m->in_features, kn__shape(x));
    kn_tensor *count = own(m, "num_batches_tracked");
    if (count && count->device.type != KN_DEVICE_CPU)
        return kn__error_null(KN_ERR_DEVICE,
                              "%s: num_batches_tracked must stay on the cpu (kn_module_to keeps "
                              "it there), got it on another device",
                              m->type_name);
    bool update = m->training && m->track_running_stats;
    double factor = m->momentum;
    if (update && m->momentum < 0) /* momentum=None: cumulative moving average */
        factor = 1.0 / (double)(kn_data_i64(count)[0] + 1);
    /* Batch statistics in training and whenever no running statistics are kept. */
    kn_tensor *y =
        kn_batch_norm(x, own(m, "running_mean"), own(m, "running_var"), own(m, "weight"),
                      own(m, "bias"), m->training || !m->track_running_stats, factor, m->eps);
    if (y && update) kn_data_i64(count)[0] += 1;
    return y;
}

static kn_tensor *layer_norm_forward(kn_module *m, kn_tensor *x)
{
    int n = m->normalized_ndim;
    bool fits = x->ndim >= n;
    for (int i = 0; fits && i < n; i++) fits = x->shape[x->ndim - n + i] == m->normalized_shape[i];
    if (!fits)
        return kn__error_null(KN_ERR_SHAPE,
                              "LayerNorm: normalized_shape is %s, so the input must end in those "
                              "dims, got %s",
                              kn__shape_of(m->normalized_shape, n), kn__shape(x));
    return kn_layer_norm(x, n, own(m, "weight"), own(m, "bias"), m->eps);
}

/* Children i.. that run as one op: conv2d -> relu (-> max_pool2d) where ops_conv.c fuses
 * them (the same values and gradients as one by one); the number of children *y is the
 * output of, 0 when they do not fuse here. */
static int fused_children(kn_module *m, int i, kn_tensor *x, kn_tensor **y)
{
    kn_module **c = m->children;
    if (i + 1 >= m->n_children || c[i]->kind != KN_MODULE_CONV2D ||
        c[i + 1]->kind != KN_MODULE_RELU)
        return 0;
    kn_tensor *w = own(c[i], "weight"), *b = own(c[i], "bias");
    const kn_pool2d_args *pool =
        i + 2 < m->n_children && c[i + 2]->kind == KN_MODULE_MAX_POOL2D ? &c[i + 2]->pool : NULL;
    if (pool && !kn__conv2d_relu_pool_fusable(x, w, b, c[i]->conv, pool)) pool = NULL;
    if (!kn__conv2d_relu_pool_fusable(x, w, b, c[i]->conv, pool)) return 0;
    *y = kn__conv2d_relu_pool(x, w, b, c[i]->conv, pool);
    return pool ? 3 : 2;
}

/* Runs the children in order; each intermediate result is dropped as soon as the next
 * layer has used it (the graph keeps what backward needs). */
static kn_tensor *sequential_forward(kn_module *m, kn_tensor *x)
{
    kn_tensor *current = kn_retain(x); /* our own reference */
    for (int i = 0; i < m->n_children; i++) {
        kn_scope_begin();
        kn_tensor *fused = NULL;
        int ran = fused_children(m, i, current, &fused);
        kn_tensor *y = kn_retain(ran ? fused : kn_module_forward(m->children[i], current));
        kn_scope_end();
        kn_release(current);
        current = y;
        if (!y) {
            char message[512];
            snprintf(message, sizeof message, "%s", kn_last_error());
            return kn__error_null(kn_last_status(), "layer %d (%s): %s", i,
                                  kn_module_kind_name(m->children[i]->kind), message);
        }
        if (ran) i += ran - 1;
    }
    return kn_autorelease(current);
}

kn_tensor *kn_module_forward(kn_module *m, kn_tensor *x)
{
    if (!m) return kn__error_null(KN_ERR_NULL, "module_forward: module is NULL");
    if (!x) {
        if (kn_last_status() == KN_OK)
            kn__error(KN_ERR_NULL, "module_forward: input of %s is NULL", m->type_name);
        return NULL;
    }
    switch (m->kind) {
    case KN_MODULE_SEQUENTIAL:
        return sequential_forward(m, x);
    case KN_MODULE_LINEAR:
        return kn_linear(x, own(m, "weight"), own(m, "bias"));
    case KN_MODULE_CONV2D:
        return kn_conv2d(x, own(m, "weight"), own(m, "bias"), m->conv);
    case KN_MODULE_MAX_POOL2D:
        return kn_max_pool2d(x, m->pool);
    case KN_MODULE_AVG_POOL2D:
        return kn_avg_pool2d(x, m->pool);
    case KN_MODULE_ADAPTIVE_AVG_POOL2D:
        return kn_adaptive_avg_pool2d(x, m->output_size[0], m->output_size[1]);
    case KN_MODULE_FLATTEN:
        return kn_flatten(x, m->start_dim, m->end_dim);
    case KN_MODULE_RELU:
        return kn_relu(x);
    case KN_MODULE_LEAKY_RELU:
        return kn_leaky_relu(x, m->negative_slope);
    case KN_MODULE_GELU:
        return kn_gelu(x, m->approximate);
    case KN_MODULE_TANH:
        return kn_tanh(x);
    case KN_MODULE_SIGMOID:
        return kn_sigmoid(x);
    case KN_MODULE_SOFTMAX:
        return kn_softmax(x, m->dim);
    case KN_MODULE_DROPOUT:
        return kn_dropout(x, m->p, m->training, m->dropout_generator);
    case KN_MODULE_BATCH_NORM1D:
    case KN_MODULE_BATCH_NORM2D:
        return batch_norm_forward(m, x);
    case KN_MODULE_LAYER_NORM:
        return layer_norm_forward(m, x);
    case KN_MODULE_EMBEDDING:
        return kn_embedding(own(m, "weight"), x);
    }
    return kn__error_null(KN_ERR_VALUE, "module_forward: unknown module kind %d", (int)m->kind);
}

void kn_module_train(kn_module *m, bool training)
{
    if (!m) return;
    m->training = training;
    for (int i = 0; i < m->n_children; i++) kn_module_train(m->children[i], training);
}

/* ---- named tensors ---------------------------------------------------------------- */

typedef struct {
    kn_named_tensor *items;
    int count, capacity;
    bool buffers, failed;
} collection;

/* Appends m's tensors (and its children's, prefixed "i.") in registration order. */
static void collect(const kn_module *m, const char *prefix, collection *c)
{
    for (int i = 0; i < m->n_tensors && !c->failed; i++) {
        if (m->tensor_is_buffer[i] && !c->buffers) continue;
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
        snprintf(e->name, sizeof e->name, "%s%s", prefix, m->tensor_names[i]);
        e->tensor = m->tensors[i];
        e->is_buffer = m->tensor_is_buffer[i];
    }
    for (int i = 0; i < m->n_children && !c->failed; i++) {
        char child_prefix[96];
        snprintf(child_prefix, sizeof child_prefix, "%s%d.", prefix, i);
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
    if (!m) return 0;
    int64_t total = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (!m->tensor_is_buffer[i]) total += kn_numel(m->tensors[i]);
    for (int i = 0; i < m->n_children; i++) total += kn_module_parameter_count(m->children[i]);
    return total;
}

void kn_module_zero_grad(kn_module *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) kn_zero_grad(m->tensors[i]);
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

/* Whether kn_module_to moves m's tensor i. BatchNorm's num_batches_tracked stays on the
 * CPU: it is a host-side counter (the forward reads it for momentum=None and adds 1),
 * and keeping it there saves a device round trip per step; the state dict and
 * checkpoints name and save it as before. */
static bool moves(const kn_module *m, int i)
{
    return strcmp(m->tensor_names[i], "num_batches_tracked") != 0;
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
        if (moves(m, i)) slots[(*n)++] = &m->tensors[i];
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
