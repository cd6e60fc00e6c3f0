/*
 * kn_safetensors.h — reading and writing safetensors files (the format
 * safetensors.torch.load_file reads): an 8-byte little-endian header length, a JSON
 * header {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}, then
 * the raw little-endian data. The header is parsed here without a JSON library, so the
 * engine keeps to libc.
 *
 * Writes are atomic: a temporary file in the same folder, fsync, rename, fsync of the
 * folder. Supported dtypes: F32, I64 (read also F64, F16, BF16, I32, U8 converted to F32/I64).
 */
#ifndef KN_SAFETENSORS_H
#define KN_SAFETENSORS_H

#include "kn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kn_safetensors_entry {
    char *name;        /* owned by the file object */
    kn_tensor *tensor; /* one reference owned by the file object */
} kn_safetensors_entry;

typedef struct kn_safetensors_meta {
    char *key, *value;
} kn_safetensors_meta;

typedef struct kn_safetensors {
    kn_safetensors_entry *entries;
    int count;
    kn_safetensors_meta *metadata;
    int metadata_count;
} kn_safetensors;

/* Loads a whole file. NULL with an error naming the file and the problem (truncated,
 * header not valid JSON, offsets out of range, unsupported dtype). Free with
 * kn_safetensors_free. */
kn_safetensors *kn_safetensors_load(const char *path);
kn_safetensors *kn_safetensors_parse(const void *bytes, size_t size);
void kn_safetensors_free(kn_safetensors *file);
kn_tensor *kn_safetensors_get(const kn_safetensors *file, const char *name); /* borrowed */
const char *kn_safetensors_get_meta(const kn_safetensors *file, const char *key);

/* Writes tensors (float32/int64, any strides) under names, plus string metadata. */
kn_status kn_safetensors_save(const char *path, const char *const *names,
                              kn_tensor *const *tensors, int count,
                              const kn_safetensors_meta *metadata, int metadata_count);

#ifdef __cplusplus
}
#endif
#endif
