/*
 * data_files.c — local data for the CLI and the server's workers: whole files read (and
 * gunzipped when they start with gzip's magic), parsed by core's IDX/NPY/CSV readers into
 * a dataset with the labels its task takes (class indices, or float targets), and a
 * dataset fitted to a model: inputs to its input_shape, labels to its outputs. Errors
 * name the file, or the field to change.
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

/* Reads and parses one file of a source (inputs, class labels or targets as stored); the
 * tensor belongs to the open scope. */
static kn_tensor *load_tensor(const char *path, kapi_data_format format, bool as_labels,
                              kapi_errors *errors)
{
    size_t size = 0;
    void *bytes = kapi_read_file(path, &size, errors);
    if (!bytes) return NULL;
    kn_tensor *t = format == KAPI_FORMAT_IDX ? kn_parse_idx(bytes, size, as_labels)
                   : as_labels               ? kn_parse_npy_targets(bytes, size)
                                             : kn_parse_npy(bytes, size, false);
    free(bytes);
    if (!t) kapi_errors_add(errors, path, "%s", kn_last_error());
    return t;
}

/* The target columns of a CSV source: target_columns split at commas, or label_column
 * ("label" when unset). names is overwritten (it holds the split copy). */
static int csv_columns(const kapi_data_source *source, char *names, size_t size,
                       const char **columns, int max)
{
    const char *list = source->target_columns[0] ? source->target_columns
                       : source->label_column[0] ? source->label_column
                                                 : "label";
    snprintf(names, size, "%s", list);
    int n = 0;
    for (char *p = names; p && n < max;) {
        columns[n++] = p;
        p = strchr(p, ',');
        if (p) *p++ = '\0';
    }
    return n;
}

/* Whether the header line of a CSV text names column. */
static bool csv_has_column(const char *text, size_t size, const char *column)
{
    const char *end = memchr(text, '\n', size);
    size_t n = end ? (size_t)(end - text) : size, len = strlen(column);
    for (size_t i = 0; i + len <= n; i++) {
        if ((i > 0 && text[i - 1] != ',' && text[i - 1] != '"' && text[i - 1] != ' ') ||
            memcmp(text + i, column, len) != 0)
            continue;
        size_t j = i + len;
        while (j < n && (text[j] == '"' || text[j] == ' ' || text[j] == '\r')) j++;
        if (j == n || text[j] == ',') return true;
    }
    return false;
}

static const char *const FLOAT_AS_CLASSES =
    "class labels must be integers: save them as integers (y.astype(np.int64)), or for "
    "regression targets set \"task\": \"regression\" with a regression loss such as \"mse\"";

/* A CSV source's inputs and labels as the task takes them (scope rule). */
static void load_csv(const kapi_data_source *source, kapi_load_options options, kn_tensor **inputs,
                     kn_tensor **labels, kapi_errors *errors)
{
    size_t size = 0;
    char *text = kapi_read_file(source->inputs_path, &size, errors);
    if (!text) return;
    char names[sizeof source->target_columns];
    const char *columns[KAPI_MAX_TARGET_COLUMNS];
    int n = csv_columns(source, names, sizeof names, columns, KAPI_MAX_TARGET_COLUMNS);
    bool classes = options.task == KN_TASK_AUTO || options.task == KN_TASK_CLASSIFICATION;
    kn_status st;
    if (classes && n == 1 && (!options.allow_unlabeled || csv_has_column(text, size, columns[0])))
        st = kn_parse_csv(text, size, columns[0], inputs, labels);
    else
        st = kn_parse_csv_targets(text, size, columns, classes ? 0 : n, options.allow_unlabeled,
                                  inputs, labels);
    if (st != KN_OK) {
        bool float_label = classes && strstr(kn_last_error(), "expected an integer label");
        kapi_errors_add(errors, source->inputs_path, "%s%s%s", kn_last_error(),
                        float_label ? ": " : "", float_label ? FLOAT_AS_CLASSES : "");
    }
    free(text);
}

/* Labels as stored made what the task takes: int64 classes [N] (or [N, T, ...] per
 * position), or float32 [N, K]. NULL with an error at path. */
static kn_tensor *conform_labels(kn_tensor *labels, kn_task task, const char *path,
                                 kapi_errors *errors)
{
    char shape[96];
    kn_shape_str(labels->shape, labels->ndim, shape, sizeof shape);
    if (task == KN_TASK_AUTO || task == KN_TASK_CLASSIFICATION) {
        if (labels->dtype != KN_INT64) {
            kapi_errors_add(errors, path,
                            "targets are %s %s but task classification needs integer class "
                            "labels: %s",
                            kn_dtype_name(labels->dtype), shape, FLOAT_AS_CLASSES);
            return NULL;
        }
        /* a column of labels is one per sample; [N, T, ...] are labels per position, which
         * the model's output must have (kapi_check_labels) */
        if (labels->ndim == 2 && labels->shape[1] == 1)
            return kn_reshape(labels, KN_SHAPE(labels->shape[0]));
        return labels;
    }
    if (labels->ndim != 1 && labels->ndim != 2) {
        kapi_errors_add(errors, path, "task %s takes targets [N] or [N, K], the file has %s",
                        kn_task_name(task), shape);
        return NULL;
    }
    int64_t n = labels->shape[0], k = labels->ndim == 2 ? labels->shape[1] : 1;
    if (labels->dtype == KN_FLOAT32) return kn_reshape(labels, KN_SHAPE(n, k));
    kn_tensor *out = kn_empty(KN_SHAPE(n, k), KN_FLOAT32);
    kn_tensor *in = kn_contiguous(labels);
    if (!out || !in) {
        kapi_errors_add(errors, path, "%s", kn_last_error());
        return NULL;
    }
    const int64_t *src = kn_data_i64(in);
    float *dst = kn_data_f32(out);
    for (int64_t i = 0; i < n * k; i++) dst[i] = (float)src[i];
    return out;
}

kn_dataset *kapi_load_data(const kapi_data_source *source, kapi_load_options options,
                           kapi_errors *errors)
{
    if (!source || !source->present) {
        kapi_errors_add(errors, "", "no data source given");
        return NULL;
    }
    kn_dataset *ds = NULL;
    kn_scope_begin();
    kn_tensor *inputs = NULL, *labels = NULL;
    const char *blame = source->inputs_path;
    int before = errors->count;
    if (source->format == KAPI_FORMAT_CSV) {
        load_csv(source, options, &inputs, &labels, errors);
        if (labels && options.task != KN_TASK_AUTO && options.task != KN_TASK_CLASSIFICATION)
            labels = conform_labels(labels, options.task, source->inputs_path, errors);
    } else {
        inputs = load_tensor(source->inputs_path, source->format, false, errors);
        bool want = !options.allow_unlabeled || source->labels_path[0];
        labels =
            inputs && want ? load_tensor(source->labels_path, source->format, true, errors) : NULL;
        if (labels) labels = conform_labels(labels, options.task, source->labels_path, errors);
    }
    if (inputs && errors->count == before) {
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

bool kapi_model_takes_one_input(const kapi_model_spec *spec, const char *what, kapi_errors *errors)
{
    if (spec->n_inputs <= 1) return true;
    char names[300] = "";
    size_t used = 0;
    for (int i = 0; i < spec->n_inputs && used < sizeof names; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                 spec->values[i].name);
    kapi_errors_add(errors, what,
                    "the model has %d inputs (%s) but a dataset feeds one: train a model of "
                    "several inputs from C (kn_module_forward_n) until datasets hold named "
                    "inputs (docs/model-spec.md, \"Data for graph models\")",
                    spec->n_inputs, names);
    return false;
}

kn_dataset *kapi_load_data_source(const kapi_data_source *source, kapi_errors *errors)
{
    kapi_load_options options = {.task = KN_TASK_CLASSIFICATION};
    return kapi_load_data(source, options, errors);
}

/* *field (a dataset's inputs or labels) replaced by its reshape to shape; false with the
 * reason under `what` when it does not reshape. */
static bool reshape_field(kn_tensor **field, const int64_t *shape, int ndim, const char *what,
                          kapi_errors *errors)
{
    kn_scope_begin();
    kn_tensor *reshaped = kn_retain(kn_reshape(*field, shape, ndim));
    kn_scope_end();
    if (!reshaped) {
        kapi_errors_add(errors, what, "%s", kn_last_error());
        return false;
    }
    kn_release(*field);
    *field = reshaped;
    return true;
}

/* Inputs made the model's input dtype and reshaped to [N, input_shape...] when the sample
 * sizes agree. */
static bool fit_inputs(kn_dataset *ds, const kapi_model_spec *spec, const char *what,
                       kapi_errors *errors)
{
    char have[96], want[96];
    if (!kapi_model_takes_one_input(spec, what, errors)) return false;
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
    /* token indices for an embedding, floats for the rest (an int64 NPY of features) */
    if (kn_dataset_to_dtype(ds, spec->input_dtype) != KN_OK) {
        char taker[96];
        if (spec->input_dtype == KN_INT64)
            kapi_errors_add(errors, what,
                            "%s (%s takes int64 token indices: give integer inputs, not scaled "
                            "or normalised)",
                            kn_last_error(), kapi__token_taker(spec, taker, sizeof taker));
        else
            kapi_errors_add(errors, what, "%s", kn_last_error());
        return false;
    }
    x = ds->inputs;
    if (x->ndim - 1 == spec->input_ndim && strcmp(have, want) == 0) return true;
    int64_t shape[KN_MAX_DIMS];
    shape[0] = x->shape[0];
    memcpy(shape + 1, spec->input_shape, sizeof(int64_t) * (size_t)spec->input_ndim);
    return reshape_field(&ds->inputs, shape, spec->input_ndim + 1, what, errors);
}

/* Whether the model outputs one position of classes per sample ([1, V]): labels [N] are
 * then that position's, as a file's column [N, 1] read as one label per sample is. */
static bool one_position_output(const kapi_model_spec *spec)
{
    return spec->output_ndim == 2 && spec->output_shape[0] == 1;
}

/* Class labels against the model's output per sample (issue 12): the classes are its last
 * dim, so labels [N] go with an output [C] and labels per position [N, T, ...] with
 * [T, ..., V] (labels [N] with [1, V] too: one position). max_label is the largest label,
 * -1 when every one is ignore_index (-100). */
static bool class_labels_fit_shape(const kn_tensor *y, int64_t max_label,
                                   const kapi_model_spec *spec, const char *what,
                                   kapi_errors *errors)
{
    int label_ndim = y->ndim - 1;
    char labels[96], output[96], want[96];
    kn_shape_str(y->shape + 1, label_ndim, labels, sizeof labels);
    kn_shape_str(spec->output_shape, spec->output_ndim, output, sizeof output);
    bool fits =
        spec->output_ndim == label_ndim + 1 || (label_ndim == 0 && one_position_output(spec));
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
                        "%s per sample: expected an output %s, the classes last%s",
                        labels, output, want,
                        spec->output_ndim == 1 && label_ndim == 1 &&
                                y->shape[1] == spec->output_shape[0]
                            ? " (for multi-label targets set \"task\": \"multilabel\" with "
                              "bce_with_logits)"
                            : "");
        return false;
    }
    if (max_label < 0) { /* labels per position, all of them -100 */
        kapi_errors_add(errors, what,
                        "every label is -100 (ignore_index): no position to learn or score");
        return false;
    }
    return true;
}

/* The dataset's labels [N] as a column [N, 1]: float targets of one output (as the
 * outputs [N, 1]), or class labels of a model of one output position ([1, V]), labels per
 * position as the trainer and the evaluation pair them with the outputs [N, 1, V]. */
static bool labels_as_column(kn_dataset *ds, const char *what, kapi_errors *errors)
{
    return reshape_field(&ds->labels, KN_SHAPE(ds->labels->shape[0], 1), what, errors);
}

/* Class labels [N] for a model of one output position become [N, 1] (labels_as_column). */
static bool labels_to_positions(kn_dataset *ds, const kapi_model_spec *spec, const char *what,
                                kapi_errors *errors)
{
    kn_tensor *y = ds->labels;
    if (!y || y->dtype != KN_INT64 || y->ndim != 1 || !one_position_output(spec)) return true;
    return labels_as_column(ds, what, errors);
}

bool kapi_dataset_fit_model(kn_dataset *ds, const kapi_model_spec *spec, const char *what,
                            kapi_errors *errors)
{
    bool ok = true;
    const kn_tensor *y = ds->labels;
    if (y && y->dtype == KN_INT64) {
        ok = class_labels_fit_shape(y, ds->num_classes - 1, spec, what, errors);
        /* the shapes fit: the output has its classes as a last dim */
        int64_t classes = ok ? spec->output_shape[spec->output_ndim - 1] : 0;
        if (ok && ds->num_classes > classes) {
            kapi_errors_add(errors, what, "labels go up to %lld but the model outputs %lld classes",
                            (long long)(ds->num_classes - 1), (long long)classes);
            ok = false;
        }
    }
    return fit_inputs(ds, spec, what, errors) && ok && labels_to_positions(ds, spec, what, errors);
}

/* Float targets [N] or [N, K]: width = the model's outputs, in [0, 1] for bce. */
static bool check_targets(const kn_tensor *y, const kapi_model_spec *spec, const kn_train_config *c,
                          const char *what, kapi_errors *errors)
{
    char out_shape[96];
    kn_shape_str(spec->output_shape, spec->output_ndim, out_shape, sizeof out_shape);
    int64_t width = 1;
    for (int i = 0; i < spec->output_ndim; i++) width *= spec->output_shape[i];
    int64_t k = y->ndim == 2 ? y->shape[1] : 1;
    if (k != width) {
        kapi_errors_add(errors, what,
                        "targets have %lld value%s per sample but the model outputs %lld "
                        "(output_shape %s): task %s compares them one to one (the last "
                        "layer's out_features, or the target columns, must change)",
                        (long long)k, k == 1 ? "" : "s", (long long)width, out_shape,
                        kn_task_name(c->task));
        return false;
    }
    if (c->loss == KN_LOSS_BCE_WITH_LOGITS) {
        kn_tensor *yc = kn_contiguous((kn_tensor *)y);
        const float *t = yc ? kn_data_f32(yc) : NULL;
        for (int64_t i = 0; t && i < kn_numel(yc); i++)
            if (!(t[i] >= 0 && t[i] <= 1)) {
                kapi_errors_add(errors, what,
                                "bce_with_logits takes targets in [0, 1] (0/1 labels or "
                                "probabilities): sample %lld has %g at target %lld",
                                (long long)(i / k), (double)t[i], (long long)(i % k));
                return false;
            }
    }
    if (c->pos_weight && c->pos_weight_count != 1 && c->pos_weight_count != k) {
        kapi_errors_add(errors, "loss.pos_weight",
                        "expected 1 or %lld values (one per target of %s), got %lld", (long long)k,
                        what, (long long)c->pos_weight_count);
        return false;
    }
    return true;
}

/* Class labels: one per sample or per position as the output has them (the classes
 * last), within the model's classes (0/1 for one output with bce). */
static bool check_classes(const kn_tensor *y, const kapi_model_spec *spec, const kn_train_config *c,
                          const char *what, kapi_errors *errors)
{
    kn_tensor *yc = kn_contiguous((kn_tensor *)y);
    if (!yc) {
        kapi_errors_add(errors, what, "%s", kn_last_error());
        return false;
    }
    int64_t max_label = -1;
    for (int64_t i = 0; i < kn_numel(yc); i++)
        if (kn_data_i64(yc)[i] > max_label) max_label = kn_data_i64(yc)[i];
    if (!class_labels_fit_shape(y, max_label, spec, what, errors)) return false;
    int64_t outputs = spec->output_shape[spec->output_ndim - 1];
    bool binary = outputs == 1 && c->loss == KN_LOSS_BCE_WITH_LOGITS;
    int64_t classes = binary ? 2 : outputs;
    if (max_label >= classes) {
        if (binary)
            kapi_errors_add(errors, what,
                            "labels go up to %lld but one output with bce_with_logits takes "
                            "binary labels 0 and 1",
                            (long long)max_label);
        else
            kapi_errors_add(errors, what,
                            "labels go up to %lld but the model outputs %lld classes (the last "
                            "layer's out_features must be at least %lld%s)",
                            (long long)max_label, (long long)outputs, (long long)max_label + 1,
                            max_label + 1 > 2 * outputs + 10
                                ? "; if these are values to predict, set \"task\": "
                                  "\"regression\" with a regression loss such as \"mse\""
                                : "");
        return false;
    }
    if (c->class_weight && c->class_weight_count != outputs) {
        kapi_errors_add(errors, "loss.weight",
                        "expected one weight per class: %lld (the model's outputs), got %lld",
                        (long long)outputs, (long long)c->class_weight_count);
        return false;
    }
    return true;
}

bool kapi_check_labels(const kn_tensor *labels, const kapi_model_spec *spec,
                       const kn_train_config *train, const char *what, kapi_errors *errors)
{
    kn_scope_begin();
    bool ok = labels->dtype == KN_INT64 ? check_classes(labels, spec, train, what, errors)
                                        : check_targets(labels, spec, train, what, errors);
    kn_scope_end();
    return ok;
}

bool kapi_dataset_fit_job(kn_dataset *ds, const kapi_model_spec *spec, const kn_train_config *train,
                          const char *what, kapi_errors *errors)
{
    if (!fit_inputs(ds, spec, what, errors)) return false;
    kn_tensor *y = ds->labels;
    if (!y) return true;
    char path[KAPI_PATH_MAX];
    snprintf(path, sizeof path, "%s (%s)", what, y->dtype == KN_INT64 ? "labels" : "targets");
    if (!kapi_check_labels(y, spec, train, path, errors)) return false;
    if (y->dtype == KN_INT64) return labels_to_positions(ds, spec, path, errors);
    return y->ndim == 2 || labels_as_column(ds, path, errors); /* targets [N] of one output */
}

kn_tensor *kapi_load_labels(const kapi_data_source *source, kn_task task, kapi_errors *errors)
{
    if (!source || !source->present) {
        kapi_errors_add(errors, "", "no data source given");
        return NULL;
    }
    kn_tensor *labels = NULL;
    kapi_load_options options = {.task = task};
    int before = errors->count;
    kn_scope_begin();
    if (source->format == KAPI_FORMAT_CSV) {
        kn_tensor *inputs = NULL;
        load_csv(source, options, &inputs, &labels, errors);
    } else {
        labels = load_tensor(source->labels_path, source->format, true, errors);
    }
    if (labels)
        labels = conform_labels(
            labels, task,
            source->format == KAPI_FORMAT_CSV ? source->inputs_path : source->labels_path, errors);
    kn_tensor *out = labels && errors->count == before ? kn_retain(labels) : NULL;
    kn_scope_end();
    return out;
}
