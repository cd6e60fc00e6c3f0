/*
 * kn_safetensors.h — reading and writing safetensors files (the format
 * safetensors.torch.load_file reads): an 8-byte little-endian header length, a JSON
 * header {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}, then
 * the raw little-endian data. The header is parsed here without a JSON library, so the
 * engine keeps to libc.
 *
 * Writes are atomic: "<path>.tmp.<pid>", fsync, rename, fsync of the folder. Written as
 * the python library does: tensors sorted by name, contiguous data, "__metadata__" first,
 * header padded with spaces to a multiple of 8. Written dtypes: F32, I64. Read: F32, F64,
 * F16, BF16 (as float32) and I64, I32, I16, I8, U8, BOOL (as int64). Loading checks
 * offsets against the file, sizes against dtype x shape, overlaps and duplicate names.
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
kn_safetensors *kn_safetensors_parse(const void *bytes, size_t size); /* entries in header order */
void kn_safetensors_free(kn_safetensors *file);
kn_tensor *kn_safetensors_get(const kn_safetensors *file, const char *name); /* borrowed */
const char *kn_safetensors_get_meta(const kn_safetensors *file, const char *key);

/* Writes tensors (float32/int64, CPU, any strides) under names (unique, not
 * "__metadata__"), plus string metadata (unique keys). */
kn_status kn_safetensors_save(const char *path, const char *const *names, kn_tensor *const *tensors,
                              int count, const kn_safetensors_meta *metadata, int metadata_count);

#ifdef __cplusplus
}
#endif
#endif
