/*
 * data_files.c — local data for the CLI: whole files read (and gunzipped when they
 * start with gzip's magic), parsed by core's IDX/NPY/CSV readers into a dataset, and a
 * dataset fitted to a model's input_shape. Errors name the file.
 */
#include "kapi_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define MAX_FILE_BYTES ((size_t)1 << 36) /* 64 GiB, decompressed */

static void *read_plain(const char *path, size_t *size, kapi_errors *errors)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        kapi_errors_add(errors, path, "cannot open: %s", strerror(errno));
        return NULL;
    }
    size_t capacity = 1 << 16, used = 0;
    unsigned char *buffer = malloc(capacity);
    while (buffer) {
        used += fread(buffer + used, 1, capacity - used, f);
        if (used < capacity) break;
        unsigned char *grown = capacity < MAX_FILE_BYTES ? realloc(buffer, capacity * 2) : NULL;
        if (!grown) {
            free(buffer);
            buffer = NULL;
            break;
        }
        buffer = grown;
        capacity *= 2;
    }
    bool failed = ferror(f);
    fclose(f);
    if (!buffer) {
        kapi_errors_add(errors, path, "out of memory reading the file");
        return NULL;
    }
    if (failed) {
        free(buffer);
        kapi_errors_add(errors, path, "read error");
        return NULL;
    }
    *size = used;
    return buffer;
}

/* Inflates every gzip member of bytes (cat a.gz b.gz is a valid gzip stream). */
void *kapi_gunzip(const void *bytes, size_t in_size, const char *path, size_t *size,
                  kapi_errors *errors)
{
    const unsigned char *in = bytes;
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK) {
        kapi_errors_add(errors, path, "cannot start gzip decompression");
        return NULL;
    }
    size_t capacity = in_size * 4 + 1024, used = 0;
    unsigned char *out = malloc(capacity);
    z.next_in = (unsigned char *)in;
    int status = Z_OK;
    size_t consumed = 0;
    while (out) {
        size_t chunk = in_size - consumed > (1u << 30) ? (1u << 30) : in_size - consumed;
        z.next_in = (unsigned char *)in + consumed;
        z.avail_in = (uInt)chunk;
        if (used == capacity) {
            unsigned char *grown = capacity < MAX_FILE_BYTES ? realloc(out, capacity * 2) : NULL;
            if (!grown) {
                free(out);
                out = NULL;
                break;
            }
            out = grown;
            capacity *= 2;
        }
        size_t room = capacity - used > (1u << 30) ? (1u << 30) : capacity - used;
        z.next_out = out + used;
        z.avail_out = (uInt)room;
        status = inflate(&z, Z_NO_FLUSH);
        consumed += chunk - z.avail_in;
        used += room - z.avail_out;
        if (status == Z_STREAM_END) {
            if (consumed == in_size) break;
            inflateReset(&z); /* another member follows */
            continue;
        }
        if (status == Z_BUF_ERROR && consumed == in_size) break; /* truncated */
        if (status != Z_OK && status != Z_BUF_ERROR) break;
    }
    inflateEnd(&z);
    if (!out) {
        kapi_errors_add(errors, path, "out of memory decompressing the file");
        return NULL;
    }
    if (status != Z_STREAM_END) {
        free(out);
        kapi_errors_add(errors, path, "corrupt or truncated gzip data (%s)",
                        status == Z_BUF_ERROR ? "unexpected end of the file"
                        : z.msg               ? z.msg
                                              : "inflate failed");
        return NULL;
    }
    *size = used;
    return out;
}

void *kapi_read_file(const char *path, size_t *size, kapi_errors *errors)
{
    size_t raw_size = 0;
    unsigned char *raw = read_plain(path, &raw_size, errors);
    if (!raw) return NULL;
    if (raw_size >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
        void *out = kapi_gunzip(raw, raw_size, path, size, errors);
        free(raw);
        return out;
    }
    *size = raw_size;
    return raw;
}

/* Reads and parses one file of a source; the tensor belongs to the open scope. */
static kn_tensor *load_tensor(const char *path, kapi_data_format format, bool as_labels,
                              kapi_errors *errors)
{
    size_t size = 0;
    void *bytes = kapi_read_file(path, &size, errors);
    if (!bytes) return NULL;
    kn_tensor *t = format == KAPI_FORMAT_IDX ? kn_parse_idx(bytes, size, as_labels)
                                             : kn_parse_npy(bytes, size, as_labels);
    free(bytes);
    if (!t) kapi_errors_add(errors, path, "%s", kn_last_error());
    return t;
}

kn_dataset *kapi_load_data_source(const kapi_data_source *source, kapi_errors *errors)
{
    if (!source || !source->present) {
        kapi_errors_add(errors, "", "no data source given");
        return NULL;
    }
    kn_dataset *ds = NULL;
    kn_scope_begin();
    kn_tensor *inputs = NULL, *labels = NULL;
    const char *blame = source->inputs_path;
    if (source->format == KAPI_FORMAT_CSV) {
        size_t size = 0;
        char *text = kapi_read_file(source->inputs_path, &size, errors);
        if (text) {
            if (kn_parse_csv(text, size, source->label_column, &inputs, &labels) != KN_OK)
                kapi_errors_add(errors, source->inputs_path, "%s", kn_last_error());
            free(text);
        }
    } else {
        inputs = load_tensor(source->inputs_path, source->format, false, errors);
        labels = inputs ? load_tensor(source->labels_path, source->format, true, errors) : NULL;
    }
    if (inputs && labels) {
        /* the dataset takes its own references; the scope drops ours */
        ds = kn_dataset_new(inputs, labels);
        /* its messages say which side is wrong ("dataset: inputs must be finite ...",
         * "dataset: labels must be >= 0 ..."): blame that file */
        if (!ds && source->format != KAPI_FORMAT_CSV &&
            strncmp(kn_last_error(), "dataset: inputs", 15) != 0)
            blame = source->labels_path;
        if (!ds) kapi_errors_add(errors, blame, "%s", kn_last_error());
    }
    kn_scope_end();
    return ds;
}

/* Labels against the model's output per sample (issue 12): the classes are its last dim,
 * so labels [N] go with an output [C] and labels per position [N, T] with [T, V]; every
 * label must be below the class count. */
static bool labels_fit_output(const kn_dataset *ds, const kapi_model_spec *spec, const char *what,
                              kapi_errors *errors)
{
    const kn_tensor *y = ds->labels;
    int label_ndim = y->ndim - 1;
    char labels[96], output[96], want[96];
    kn_shape_str(y->shape + 1, label_ndim, labels, sizeof labels);
    kn_shape_str(spec->output_shape, spec->output_ndim, output, sizeof output);
    bool fits = spec->output_ndim == label_ndim + 1;
    for (int d = 0; fits && d < label_ndim; d++) fits = y->shape[d + 1] == spec->output_shape[d];
    if (!fits && label_ndim == 0) {
        /* the positions: the output without its last dim, the classes */
        kn_shape_str(spec->output_shape, spec->output_ndim - 1, want, sizeof want);
        kapi_errors_add(errors, what,
                        "labels are one class per sample but the model outputs %s per sample: "
                        "end the model in an output [classes] (e.g. a flatten and a linear), or "
                        "give labels per position [N, %s",
                        output, spec->output_ndim > 1 ? want + 1 : "...]");
        return false;
    }
    if (!fits) {
        /* the labels' shape and one more dim for the classes */
        snprintf(want, sizeof want, "%.*s, classes]", (int)strlen(labels) - 1, labels);
        kapi_errors_add(errors, what,
                        "labels are %s per sample (a class per position) but the model outputs "
                        "%s per sample: expected an output %s, the classes last",
                        labels, output, want);
        return false;
    }
    if (ds->num_classes == 0) { /* labels per position, all of them -100 */
        kapi_errors_add(errors, what,
                        "every label is -100 (ignore_index): no position to learn or score");
        return false;
    }
    int64_t classes = spec->output_shape[spec->output_ndim - 1];
    if (ds->num_classes > classes) {
        kapi_errors_add(errors, what, "labels go up to %lld but the model outputs %lld classes",
                        (long long)(ds->num_classes - 1), (long long)classes);
        return false;
    }
    return true;
}

bool kapi_dataset_fit_model(kn_dataset *ds, const kapi_model_spec *spec, const char *what,
                            kapi_errors *errors)
{
    char have[96], want[96];
    const kn_tensor *x = ds->inputs;
    int64_t sample = 1, needed = 1;
    for (int i = 1; i < x->ndim; i++) sample *= x->shape[i];
    for (int i = 0; i < spec->input_ndim; i++) needed *= spec->input_shape[i];
    kn_shape_str(x->shape + 1, x->ndim - 1, have, sizeof have);
    kn_shape_str(spec->input_shape, spec->input_ndim, want, sizeof want);
    if (sample != needed) {
        kapi_errors_add(errors, what,
                        "samples are %s (%lld values) but the model's input_shape %s needs %lld",
                        have, (long long)sample, want, (long long)needed);
        return false;
    }
    bool ok = labels_fit_output(ds, spec, what, errors);
    /* token indices for an embedding, floats for the rest (an int64 NPY of features) */
    if (kn_dataset_to_dtype(ds, spec->input_dtype) != KN_OK) {
        kapi_errors_add(errors, what, "%s%s", kn_last_error(),
                        spec->input_dtype == KN_INT64
                            ? " (the model's first layer takes int64 token indices: give "
                              "integer inputs, not scaled or normalised)"
                            : "");
        return false;
    }
    x = ds->inputs;
    if (x->ndim - 1 == spec->input_ndim && strcmp(have, want) == 0) return ok;
    int64_t shape[KN_MAX_DIMS];
    shape[0] = x->shape[0];
    memcpy(shape + 1, spec->input_shape, sizeof(int64_t) * (size_t)spec->input_ndim);
    kn_scope_begin();
    kn_tensor *reshaped = kn_retain(kn_reshape(ds->inputs, shape, spec->input_ndim + 1));
    kn_scope_end();
    if (!reshaped) {
        kapi_errors_add(errors, what, "%s", kn_last_error());
        return false;
    }
    kn_release(ds->inputs);
    ds->inputs = reshaped;
    return ok;
}
