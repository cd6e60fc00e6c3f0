/*
 * nn_init.c — making modules: kn_module_new (a kind's row checks the options, registers
 * parameters and buffers in PyTorch's order and draws from the generator exactly as the
 * module's reset_parameters does in torch 1.13, so that kn_manual_seed(s) plus the same
 * layers in the same order gives torch's weights), the registration the rows use, the
 * options' defaults from the rows' argument descriptors, and torch.nn.init's fills.
 */
#include "nn_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- torch.nn.init ---------------------------------------------------------------- */

int64_t kn_init_fan_in(const kn_tensor *weight)
{
    if (!weight) return -1;
    if (weight->ndim < 2) {
        kn__error(KN_ERR_SHAPE,
                  "fan_in: can not be computed for a tensor with fewer than 2 dims, got %s",
                  kn__shape(weight));
        return -1;
    }
    int64_t fan_in = weight->shape[1];
    for (int d = 2; d < weight->ndim; d++) fan_in *= weight->shape[d];
    return fan_in;
}

/* torch's CPU uniform_ for float32 computes x * (to - from) + from with one rounding
 * (the multiply-add is fused in its AVX2 build), x = 24 random bits / 2^24 and from/to
 * cast to float. kn_uniform_ rounds twice, which differs in the last bit for about half
 * the values when the bounds are not exact in float (all of kaiming's), so the init
 * draws here for contiguous float32 CPU tensors. */
kn_status kn_init_uniform_(kn_tensor *t, double low, double high, kn_generator *gen)
{
    return kn_uniform_(t, low, high, gen); /* bit-identical to torch's uniform_ */
}

/* kaiming_uniform_(mode='fan_in', nonlinearity='leaky_relu'), computed with the same
 * double operations as torch/nn/init.py so the bound is the same double. */
kn_status kn_init_kaiming_uniform_(kn_tensor *t, double a, kn_generator *gen)
{
    if (!t) return kn__error(KN_ERR_NULL, "kaiming_uniform_: tensor is NULL");
    if (kn_numel(t) == 0) return KN_OK; /* torch: a no-op with a warning */
    int64_t fan = kn_init_fan_in(t);
    if (fan < 0) return kn_last_status();
    double gain = sqrt(2.0 / (1 + pow(a, 2)));
    double std = gain / sqrt((double)fan);
    double bound = sqrt(3.0) * std;
    return kn_init_uniform_(t, -bound, bound, gen);
}

/* ---- attention (issue 12) ---- */
/* xavier_uniform_ (torch/nn/init.py): the bound a = gain sqrt(2 / (fan_in + fan_out))
 * sqrt(3) in the same double operations, fan_out = dim 0 times the receptive field. */
kn_status kn_init_xavier_uniform_(kn_tensor *t, double gain, kn_generator *gen)
{
    if (!t) return kn__error(KN_ERR_NULL, "xavier_uniform_: tensor is NULL");
    int64_t fan_in = kn_init_fan_in(t);
    if (fan_in < 0) return kn_last_status();
    int64_t fan_out = fan_in ? kn_numel(t) / fan_in : 0;
    double std = gain * sqrt(2.0 / (double)(fan_in + fan_out));
    double a = sqrt(3.0) * std;
    return kn_init_uniform_(t, -a, a, gen);
}

/* ---- defaults ------------------------------------------------------------------------ */

void kn_layer_defaults(kn_module_kind kind, kn_layer_options *options)
{
    if (!options) return;
    memset(options, 0, sizeof *options);
    const kn_layer_type *row = kn_layer_of(kind);
    if (!row || !row->args) return;
    for (const kn_layer_arg *a = row->args; a->name; a++) {
        void *field = (char *)options + a->offset;
        switch (a->type) {
        case KN_ARG_INT:
            *(int64_t *)field = (int64_t)a->def;
            break;
        case KN_ARG_NUMBER:
            *(double *)field = a->def;
            break;
        case KN_ARG_BOOL:
            *(bool *)field = a->def != 0;
            break;
        case KN_ARG_PAIR:
            ((int *)field)[0] = ((int *)field)[1] = (int)a->def;
            break;
        case KN_ARG_CHOICE:
            *(int *)field = (int)a->def;
            break;
        case KN_ARG_INTS: /* empty: only inferred lists have no value of their own */
            break;
        }
    }
    /* arguments whose default is another's value (a pool's stride is its kernel_size) */
    for (const kn_layer_arg *a = row->args; a->name; a++) {
        const kn_layer_arg *from = a->default_from ? kn_layer_arg_find(row, a->default_from) : NULL;
        if (from)
            memcpy((char *)options + a->offset, (char *)options + from->offset, sizeof(int[2]));
    }
}

/* ---- making a module ------------------------------------------------------------------ */

kn_module *kn_module_new(kn_module_kind kind, const kn_layer_options *options, kn_generator *gen)
{
    const kn_layer_type *row = kn_layer_of(kind);
    if (!row) return kn__error_null(KN_ERR_VALUE, "module_new: unknown module kind %d", (int)kind);
    kn_module *m = calloc(1, sizeof *m);
    if (!m) return kn__error_null(KN_ERR_MEMORY, "out of memory allocating a %s", row->torch_name);
    m->kind = kind;
    m->layer = row;
    m->type_name = row->torch_name;
    m->training = true;
    if (options)
        m->options = *options;
    else
        kn_layer_defaults(kind, &m->options);
    if (row->init && row->init(m, gen) != KN_OK) {
        kn_module_free(m);
        return NULL;
    }
    return m;
}

/* ---- registration --------------------------------------------------------------------- */

static kn_module_tensor *new_slot(kn_module *m, const char *name)
{
    if (strlen(name) >= sizeof m->tensors[0].name)
        return kn__error_null(KN_ERR_VALUE, "%s: the tensor name \"%s\" is too long", m->type_name,
                              name);
    if (m->n_tensors == m->tensors_capacity) {
        int capacity = m->tensors_capacity ? 2 * m->tensors_capacity : 4;
        kn_module_tensor *grown = realloc(m->tensors, sizeof *grown * (size_t)capacity);
        if (!grown) return kn__error_null(KN_ERR_MEMORY, "%s: out of memory", m->type_name);
        m->tensors = grown;
        m->tensors_capacity = capacity;
    }
    kn_module_tensor *slot = &m->tensors[m->n_tensors];
    memset(slot, 0, sizeof *slot);
    snprintf(slot->name, sizeof slot->name, "%s", name);
    return slot;
}

/* A new tensor filled with fill in a new slot; the module owns its one reference. */
static kn_tensor *add_tensor(kn_module *m, const char *name, const int64_t *shape, int ndim,
                             kn_dtype dtype, bool is_buffer, bool host, double fill)
{
    kn_module_tensor *slot = new_slot(m, name);
    if (!slot) return NULL;
    kn_tensor *t = kn__empty_raw(shape, ndim, dtype, kn_cpu());
    if (!t) return NULL;
    kn_fill_(t, fill);
    if (!is_buffer) kn_set_requires_grad(t, true);
    slot->tensor = t;
    slot->is_buffer = is_buffer;
    slot->host = host;
    m->n_tensors++;
    return t;
}

kn_tensor *kn__module_parameter(kn_module *m, const char *name, const int64_t *shape, int ndim,
                                double fill)
{
    return add_tensor(m, name, shape, ndim, KN_FLOAT32, false, false, fill);
}

kn_tensor *kn__module_buffer(kn_module *m, const char *name, const int64_t *shape, int ndim,
                             kn_dtype dtype, double fill, bool host)
{
    return add_tensor(m, name, shape, ndim, dtype, true, host, fill);
}

kn_status kn__module_child(kn_module *m, const char *name, kn_module *child)
{
    if (!m || !child) {
        kn_module_free(child);
        return kn__error(KN_ERR_NULL, "add child: %s is NULL", m ? "child" : "module");
    }
    if (m->n_children == m->children_capacity) {
        int capacity = m->children_capacity ? 2 * m->children_capacity : 8;
        kn_module **grown = realloc(m->children, sizeof *grown * (size_t)capacity);
        char(*names)[KN_MODULE_NAME_MAX] =
            grown ? realloc(m->child_names, sizeof *names * (size_t)capacity) : NULL;
        if (grown) m->children = grown;
        if (!names) {
            kn_module_free(child);
            return kn__error(KN_ERR_MEMORY, "%s: out of memory adding a child", m->type_name);
        }
        m->child_names = names;
        m->children_capacity = capacity;
    }
    if (name)
        snprintf(m->child_names[m->n_children], KN_MODULE_NAME_MAX, "%s", name);
    else
        snprintf(m->child_names[m->n_children], KN_MODULE_NAME_MAX, "%d", m->n_children);
    m->children[m->n_children++] = child;
    return KN_OK;
}

/* ---- Sequential ---------------------------------------------------------------------- */

kn_module *kn_sequential_new(void)
{
    return kn_module_new(KN_MODULE_SEQUENTIAL, NULL, NULL);
}

kn_status kn_sequential_append(kn_module *sequential, kn_module *child)
{
    if (!sequential || !child) {
        kn_module_free(child);
        return kn__error(KN_ERR_NULL, "sequential_append: %s is NULL",
                         sequential ? "child" : "sequential");
    }
    if (sequential->kind != KN_MODULE_SEQUENTIAL) {
        kn_module_free(child);
        return kn__error(KN_ERR_VALUE, "sequential_append: expected a Sequential, got a %s",
                         sequential->type_name);
    }
    return kn__module_child(sequential, NULL, child);
}

/* ---- parameter sets several rows register ------------------------------------------ */

kn_status kn__module_weight_bias(kn_module *m, const int64_t *shape, int ndim, bool bias,
                                 kn_generator *gen)
{
    kn_tensor *w = kn__module_parameter(m, "weight", shape, ndim, 0.0);
    if (!w || kn_init_kaiming_uniform_(w, sqrt(5.0), gen) != KN_OK) return kn_last_status();
    if (!bias) return KN_OK;
    kn_tensor *b = kn__module_parameter(m, "bias", shape, 1, 0.0); /* [out] */
    double bound = 1 / sqrt((double)kn_init_fan_in(w));
    if (!b || kn_init_uniform_(b, -bound, bound, gen) != KN_OK) return kn_last_status();
    return KN_OK;
}

kn_status kn__module_table(kn_module *m, int64_t rows, int64_t dim, kn_generator *gen)
{
    KN__CHECK_POSITIVE(m, "num_embeddings", rows);
    KN__CHECK_POSITIVE(m, "embedding_dim", dim);
    kn_tensor *w = kn__module_parameter(m, "weight", (int64_t[]){rows, dim}, 2, 0.0);
    if (!w || kn_normal_(w, 0.0, 1.0, gen) != KN_OK) return kn_last_status();
    return KN_OK;
}
