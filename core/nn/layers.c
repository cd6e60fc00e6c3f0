/*
 * layers.c — the layer table: every kind's row (kn_layer.h), indexed by kind, in the
 * order of KN_LAYER_KINDS (kn_nn.h). The rows themselves live beside their code in
 * layer_*.c; this file only lists them and finds them.
 */
#include "nn_internal.h"

#include <string.h>

#define KN__LAYER_ENTRY(id, name) [KN_MODULE_##id] = &kn__layer_##name,
static const kn_layer_type *const LAYERS[KN_MODULE_KIND_COUNT] = {KN_LAYER_KINDS(KN__LAYER_ENTRY)};
#undef KN__LAYER_ENTRY

const kn_layer_type *kn_layer_of(kn_module_kind kind)
{
    if ((unsigned)kind >= KN_MODULE_KIND_COUNT) return NULL;
    return LAYERS[kind];
}

const kn_layer_type *kn_layer_at(int i)
{
    return i >= 0 && i < KN_MODULE_KIND_COUNT ? LAYERS[i] : NULL;
}

const kn_layer_type *kn_layer_find(const char *name)
{
    for (int i = 0; name && i < KN_MODULE_KIND_COUNT; i++)
        if (strcmp(LAYERS[i]->name, name) == 0) return LAYERS[i];
    return NULL;
}

const kn_layer_arg *kn_layer_arg_find(const kn_layer_type *row, const char *name)
{
    for (const kn_layer_arg *a = row && row->args ? row->args : NULL; a && a->name; a++)
        if (strcmp(a->name, name) == 0) return a;
    return NULL;
}
