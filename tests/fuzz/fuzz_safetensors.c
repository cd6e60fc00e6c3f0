/*
 * fuzz_safetensors.c — kn_safetensors_parse on arbitrary bytes: the reader behind every
 * checkpoint, weights file and PyTorch state_dict that kilnd or kiln loads. A file that
 * loads must hold tensors whose storage covers their shape, unique names that
 * kn_safetensors_get finds again, and metadata kn_safetensors_get_meta finds again.
 */
#include "fuzz.h"
#include "kn_safetensors.h"

#include <string.h>

static void check_file(const kn_safetensors *file)
{
    FUZZ_CHECK(file->count >= 0 && file->metadata_count >= 0, "negative counts");
    for (int i = 0; i < file->count; i++) {
        const kn_safetensors_entry *e = &file->entries[i];
        FUZZ_CHECK(e->name && e->tensor, "entry %d is empty", i);
        FUZZ_CHECK(strcmp(e->name, "__metadata__") != 0, "a tensor named __metadata__");
        fuzz_check_tensor(e->tensor, e->tensor->dtype);
        FUZZ_CHECK(kn_safetensors_get(file, e->name) == e->tensor,
                   "tensor '%s' is not the one found by name (a duplicate?)", e->name);
    }
    for (int i = 0; i < file->metadata_count; i++) {
        const kn_safetensors_meta *m = &file->metadata[i];
        FUZZ_CHECK(m->key && m->value, "metadata %d is empty", i);
        /* duplicate keys are allowed by the format; the first one wins */
        const char *found = kn_safetensors_get_meta(file, m->key);
        FUZZ_CHECK(found, "metadata '%s' is not found by its key", m->key);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kn_clear_error();
    kn_safetensors *file = kn_safetensors_parse(data, size);
    if (file)
        check_file(file);
    else
        fuzz_check_kn_error("kn_safetensors_parse");
    kn_safetensors_free(file);
    return 0;
}
