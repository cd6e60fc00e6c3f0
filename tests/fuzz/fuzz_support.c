/*
 * fuzz_support.c — the checks every fuzz target shares (fuzz.h): failures that abort
 * with a message, error messages that must be there, tensors whose storage must hold
 * their shape, gzip handled as kilnd handles uploads, and model specs checked against
 * the engine's own idea of the model they describe.
 */
#define _GNU_SOURCE /* memfd_create */
#include "fuzz.h"
#include "kn_internal.h"

#include <cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Models above these are only checked on paper: building and running them would make
 * every input slow, and the small ones exercise the same code. */
#define BUILD_MAX_PARAMETERS (1 << 18)
#define FORWARD_MAX_COST (1 << 20)

void fuzz_fail(const char *file, int line, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "\nfuzz check failed at %s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);
    abort();
}

void fuzz_check_kn_error(const char *what)
{
    FUZZ_CHECK(kn_last_error()[0] != '\0', "%s failed without an error message", what);
    FUZZ_CHECK(kn_last_status() != KN_OK, "%s failed but the status is KN_OK (\"%s\")", what,
               kn_last_error());
}

bool fuzz_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xE0) == 0xC0 ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 0;
        if (!len || i + len > n) return false;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1Fu : len == 3 ? c & 0x0Fu : c & 0x07u;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (s[i + k] & 0x3Fu);
        }
        static const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

void fuzz_check_kapi_errors(const kapi_errors *errors, const char *what, bool input_utf8)
{
    FUZZ_CHECK(errors->count > 0, "%s refused the input without an error", what);
    for (int i = 0; i < errors->count; i++)
        FUZZ_CHECK(errors->items[i].message[0] != '\0', "%s: error %d (at \"%s\") has no message",
                   what, i, errors->items[i].path);
    char *text = kapi_errors_to_text(errors);
    FUZZ_CHECK(text && text[0], "%s: kapi_errors_to_text gave nothing", what);
    free(text);
    char *json = kapi_errors_to_json(errors, "invalid_spec");
    FUZZ_CHECK(json, "%s: kapi_errors_to_json gave NULL", what);
    cJSON *root = cJSON_Parse(json);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *details = cJSON_GetObjectItemCaseSensitive(error, "details");
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(error, "message")) &&
                   cJSON_GetArraySize(details) == errors->count,
               "%s: the error body does not read back: %.300s", what, json);
    FUZZ_CHECK(!input_utf8 || fuzz_utf8_valid((const uint8_t *)json, strlen(json)),
               "%s: valid UTF-8 in, invalid UTF-8 in the error body: %.300s", what, json);
    cJSON_Delete(root);
    free(json);
}

void fuzz_check_tensor(const kn_tensor *t, kn_dtype dtype)
{
    char shape[128];
    kn_shape_str(t->shape, t->ndim, shape, sizeof shape);
    FUZZ_CHECK(t->ndim >= 0 && t->ndim <= KN_MAX_DIMS, "tensor has %d dims", t->ndim);
    FUZZ_CHECK(t->dtype == dtype, "tensor is %s, expected %s", kn_dtype_name(t->dtype),
               kn_dtype_name(dtype));
    FUZZ_CHECK(t->device.type == KN_DEVICE_CPU, "tensor is not on the CPU");
    /* kn_is_contiguous says no to some empty shapes ([2, 0]) that nothing reads */
    FUZZ_CHECK((kn_numel(t) == 0 || kn_is_contiguous(t)) && t->offset == 0,
               "tensor %s is not contiguous", shape);
    for (int d = 0; d < t->ndim; d++) FUZZ_CHECK(t->shape[d] >= 0, "tensor shape %s", shape);
    size_t need = (size_t)kn_numel(t) * kn_dtype_size(dtype);
    FUZZ_CHECK(t->storage && t->storage->nbytes >= need,
               "tensor %s of %s needs %zu bytes, its storage has %zu", shape, kn_dtype_name(dtype),
               need, t->storage ? t->storage->nbytes : 0);
}

void fuzz_check_dataset(kn_tensor *inputs, kn_tensor *labels)
{
    /* a stand-in as long as the other tensor's first dim, which can be 2^31 in a tensor
     * of 0 values ([2^31, 0]): those the file did not pay for are not made */
    const kn_tensor *given = inputs ? inputs : labels;
    if (!given) return;
    if ((!inputs || !labels) && (given->ndim < 1 || given->shape[0] > kn_numel(given) + 4096))
        return;
    kn_scope_begin();
    if (!inputs && labels->ndim >= 1) inputs = kn_zeros(KN_SHAPE(labels->shape[0], 1), KN_FLOAT32);
    if (!labels) labels = kn_zeros(KN_SHAPE(inputs->shape[0]), KN_INT64);
    kn_clear_error();
    kn_dataset *ds = kn_dataset_new(inputs, labels);
    if (ds) {
        FUZZ_CHECK(ds->count == inputs->shape[0] && ds->count >= 1, "dataset of %lld samples",
                   (long long)ds->count);
        const int64_t *y = kn__data_ptr(ds->labels);
        /* labels per position ([N, T]) may be -100, a position the loss skips */
        bool per_position = ds->labels->ndim > 1;
        for (int64_t i = 0; i < kn_numel(ds->labels); i++)
            FUZZ_CHECK((y[i] >= 0 && y[i] < ds->num_classes) ||
                           (per_position && y[i] == KN_DEFAULT_IGNORE_INDEX),
                       "label %lld outside [0, %lld)", (long long)y[i], (long long)ds->num_classes);
        kn_dataset_free(ds);
    } else {
        fuzz_check_kn_error("kn_dataset_new");
    }
    kn_scope_end();
}

const uint8_t *fuzz_gunzip_if_gzip(const uint8_t *data, size_t size, size_t *out_size, void **owned)
{
    *owned = NULL;
    *out_size = size;
    if (size < 2 || data[0] != 0x1f || data[1] != 0x8b) return data;
    kapi_errors errors = {0};
    void *plain = kapi_gunzip(data, size, "upload", out_size, &errors);
    if (!plain)
        fuzz_check_kapi_errors(&errors, "kapi_gunzip", false);
    else
        FUZZ_CHECK(errors.count == 0, "kapi_gunzip succeeded with %d errors", errors.count);
    kapi_errors_free(&errors);
    *owned = plain;
    return plain;
}

/* ---- model specs ------------------------------------------------------------------- */

static int64_t numel_of(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

static bool same_shape(const int64_t *a, int a_ndim, const int64_t *b, int b_ndim)
{
    return a_ndim == b_ndim && memcmp(a, b, sizeof *a * (size_t)a_ndim) == 0;
}

/* A rough upper bound on the work of one sample's forward pass: each layer touches its
 * input and output once per weight or window element. */
static double forward_cost(const kapi_model_spec *spec)
{
    double cost = 0;
    for (int i = 0; i < spec->n_layers; i++) {
        const kapi_layer_spec *l = &spec->layers[i];
        const int *k = l->kind == KN_MODULE_CONV2D       ? l->options.conv2d.kernel_size
                       : l->kind == KN_MODULE_MAX_POOL2D ? l->options.max_pool2d.kernel_size
                       : l->kind == KN_MODULE_AVG_POOL2D ? l->options.avg_pool2d.kernel_size
                                                         : NULL;
        double window = k ? (double)k[0] * k[1] : 1;
        if (l->kind == KN_MODULE_CONV1D) window = (double)l->options.conv1d.kernel_size;
        double touched =
            (double)numel_of(l->in_shape, l->in_ndim) + (double)numel_of(l->out_shape, l->out_ndim);
        cost += touched * (1 + (double)l->parameter_count + window);
    }
    return cost;
}

static void check_summary(const kapi_model_spec *spec)
{
    char *text = kapi_model_spec_summary_json(spec, 32);
    FUZZ_CHECK(text, "kapi_model_spec_summary_json gave NULL for a valid spec");
    cJSON *summary = cJSON_Parse(text);
    FUZZ_CHECK(summary, "the model summary is not JSON: %.200s", text);
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(summary, "parameter_count");
    FUZZ_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(summary, "valid")) &&
                   cJSON_IsNumber(count) && count->valuedouble == (double)spec->parameter_count,
               "the model summary disagrees with the spec: %.200s", text);
    cJSON_Delete(summary);
    free(text);
}

/* Builds the model and runs a batch of two zero samples through it. */
static void check_built_model(const kapi_model_spec *spec)
{
    static kn_generator *gen;
    if (!gen) gen = kn_generator_new(0);
    kn_generator_seed(gen, 0);
    kn_clear_error();
    kn_module *model = kapi_model_build(spec, gen);
    FUZZ_CHECK(model, "a valid spec does not build: %s", kn_last_error());
    int64_t count = kn_module_parameter_count(model);
    FUZZ_CHECK(count == spec->parameter_count, "the model has %lld parameters, the spec says %lld",
               (long long)count, (long long)spec->parameter_count);
    int64_t in[KN_MAX_DIMS], out[KN_MAX_DIMS];
    int out_ndim = 0;
    in[0] = 2;
    memcpy(in + 1, spec->input_shape, sizeof *in * (size_t)spec->input_ndim);
    kn_status st =
        kn_module_output_shape(model, spec->input_shape, spec->input_ndim, out + 1, &out_ndim);
    FUZZ_CHECK(st == KN_OK, "the engine refuses a valid spec's input: %s", kn_last_error());
    FUZZ_CHECK(same_shape(out + 1, out_ndim, spec->output_shape, spec->output_ndim),
               "the engine and the spec disagree on the output shape");
    out[0] = 2; /* the batch the forward pass below runs */
    out_ndim++;
    if (forward_cost(spec) <= FORWARD_MAX_COST) {
        kn_module_train(model, false);
        kn_scope_begin();
        kn_no_grad_begin();
        kn_tensor *x = kn_zeros(in, spec->input_ndim + 1, spec->input_dtype);
        kn_tensor *y = kn_module_forward(model, x);
        kn_no_grad_end();
        FUZZ_CHECK(y, "a valid spec's model fails forward: %s", kn_last_error());
        FUZZ_CHECK(same_shape(y->shape, y->ndim, out, out_ndim),
                   "forward gives a different shape from kn_module_output_shape");
        kn_scope_end();
    }
    kn_module_free(model);
}

void fuzz_check_model_spec(const kapi_model_spec *spec)
{
    FUZZ_CHECK(spec->input_ndim >= 1 && spec->input_ndim < KN_MAX_DIMS, "input_ndim %d",
               spec->input_ndim);
    FUZZ_CHECK(spec->n_layers >= 1 && spec->layers, "a valid spec without layers");
    const int64_t *shape = spec->input_shape;
    int ndim = spec->input_ndim;
    int64_t parameters = 0;
    for (int i = 0; i < spec->n_layers; i++) {
        const kapi_layer_spec *l = &spec->layers[i];
        FUZZ_CHECK(same_shape(l->in_shape, l->in_ndim, shape, ndim),
                   "layers[%d]'s input shape is not the previous output", i);
        FUZZ_CHECK(l->out_ndim >= 1 && l->out_ndim < KN_MAX_DIMS, "layers[%d] outputs %d dims", i,
                   l->out_ndim);
        for (int d = 0; d < l->out_ndim; d++)
            FUZZ_CHECK(l->out_shape[d] >= 1, "layers[%d] output dim %d is %lld", i, d,
                       (long long)l->out_shape[d]);
        FUZZ_CHECK(l->parameter_count >= 0, "layers[%d] has %lld parameters", i,
                   (long long)l->parameter_count);
        parameters += l->parameter_count;
        shape = l->out_shape;
        ndim = l->out_ndim;
    }
    FUZZ_CHECK(parameters == spec->parameter_count, "layers add up to %lld parameters, spec %lld",
               (long long)parameters, (long long)spec->parameter_count);
    FUZZ_CHECK(same_shape(spec->output_shape, spec->output_ndim, shape, ndim),
               "output_shape is not the last layer's");
    FUZZ_CHECK(kapi_model_training_memory(spec, 1, KN_OPTIM_ADAM) > 0, "training memory <= 0");
    check_summary(spec);
    if (spec->parameter_count <= BUILD_MAX_PARAMETERS) check_built_model(spec);
}

/* ---- loaders that take a path --------------------------------------------------------- */

kn_module *fuzz_small_model(void)
{
    kapi_errors errors = {0};
    const char *json = FUZZ_SMALL_MODEL;
    kapi_model_spec *spec = kapi_model_spec_parse(json, strlen(json), &errors);
    FUZZ_CHECK(spec, "FUZZ_SMALL_MODEL does not parse: %s",
               errors.count ? errors.items[0].message : "");
    kn_generator *gen = kn_generator_new(0);
    kn_module *model = kapi_model_build(spec, gen);
    FUZZ_CHECK(model, "FUZZ_SMALL_MODEL does not build: %s", kn_last_error());
    kn_generator_free(gen);
    kapi_model_spec_free(spec);
    kapi_errors_free(&errors);
    return model;
}

const char *fuzz_as_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("kiln-fuzz", 0);
        FUZZ_CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate: %s", strerror(errno));
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
        FUZZ_CHECK(n > 0, "pwrite: %s", strerror(errno));
        done += (size_t)n;
    }
    return path;
}

struct fuzz_state {
    int count;
    kn_named_tensor *entries; /* names, and the tensors whose shapes were saved */
    int64_t shapes[64][KN_MAX_DIMS];
    int ndims[64];
    kn_dtype dtypes[64];
    void *values[64];
    size_t bytes[64];
};

fuzz_state *fuzz_state_save(const kn_module *model)
{
    fuzz_state *s = calloc(1, sizeof *s);
    FUZZ_CHECK(s, "out of memory");
    s->entries = kn_module_state_dict(model, &s->count);
    FUZZ_CHECK(s->entries && s->count <= 64, "state dict of %d entries", s->count);
    for (int i = 0; i < s->count; i++) {
        const kn_tensor *t = s->entries[i].tensor;
        memcpy(s->shapes[i], t->shape, sizeof s->shapes[i]);
        s->ndims[i] = t->ndim;
        s->dtypes[i] = t->dtype;
        s->bytes[i] = (size_t)kn_numel(t) * kn_dtype_size(t->dtype);
        s->values[i] = malloc(s->bytes[i] ? s->bytes[i] : 1);
        FUZZ_CHECK(s->values[i], "out of memory");
        memcpy(s->values[i], kn__data_ptr(t), s->bytes[i]);
    }
    return s;
}

bool fuzz_state_same_shapes(const fuzz_state *s, const kn_module *model)
{
    int count = 0;
    kn_named_tensor *now = kn_module_state_dict(model, &count);
    bool same = now && count == s->count;
    for (int i = 0; same && i < count; i++) {
        const kn_tensor *t = now[i].tensor;
        same = strcmp(now[i].name, s->entries[i].name) == 0 && t->dtype == s->dtypes[i] &&
               t->ndim == s->ndims[i] &&
               memcmp(t->shape, s->shapes[i], sizeof *t->shape * (size_t)t->ndim) == 0;
    }
    free(now);
    return same;
}

bool fuzz_state_same(const fuzz_state *s, const kn_module *model)
{
    if (!fuzz_state_same_shapes(s, model)) return false;
    int count = 0;
    kn_named_tensor *now = kn_module_state_dict(model, &count);
    bool same = now != NULL;
    for (int i = 0; same && i < count; i++)
        same = memcmp(kn__data_ptr(now[i].tensor), s->values[i], s->bytes[i]) == 0;
    free(now);
    return same;
}

void fuzz_state_free(fuzz_state *s)
{
    if (!s) return;
    for (int i = 0; i < s->count; i++) free(s->values[i]);
    free(s->entries);
    free(s);
}

static void parse_array(const uint8_t *data, size_t size, bool as_labels, fuzz_array_parser parse,
                        fuzz_array_check check, const char *what)
{
    kn_clear_error();
    kn_scope_begin();
    kn_tensor *t = parse(data, size, as_labels);
    if (t) {
        /* inputs: float32, or int64 indices (NPY integers); labels int64 [N] or [N, T] */
        fuzz_check_tensor(t, as_labels || t->dtype == KN_INT64 ? KN_INT64 : KN_FLOAT32);
        FUZZ_CHECK(!as_labels || t->ndim >= 1, "labels with %d dims", t->ndim);
        if (check) check(t, data, size, as_labels);
        if (as_labels)
            fuzz_check_dataset(NULL, t);
        else if (t->ndim >= 2)
            fuzz_check_dataset(t, NULL);
    } else {
        fuzz_check_kn_error(what);
    }
    kn_scope_end();
}

void fuzz_array_upload(const uint8_t *data, size_t size, fuzz_array_parser parse,
                       fuzz_array_check check, const char *what)
{
    void *owned;
    size_t plain_size;
    const uint8_t *plain = fuzz_gunzip_if_gzip(data, size, &plain_size, &owned);
    if (plain) {
        parse_array(plain, plain_size, false, parse, check, what);
        parse_array(plain, plain_size, true, parse, check, what);
    }
    free(owned);
}
