/*
 * routes_v1_datasets.c — datasets: create, list, get, delete, and file uploads.
 *
 * PUT or POST /v1/datasets/{name}/files/{role}[?format=idx|csv|npy|json] takes one file,
 * streamed by http.c to a temporary file (never the whole body in memory), checks it
 * with the engine's parsers (IDX plain or gzip, CSV of numbers with a header, NPY whose
 * labels are integer classes or float targets [N] / [N, K]) to count its samples, and
 * moves it to data_dir/datasets/<name>/<role>.<format>. The dataset is created with its
 * first file, in the transaction that records it (an upload refused or cut off by a crash
 * leaves no empty dataset). A delete removes the files before the record: on a full disk
 * they are the room its commit needs. A JSON body {"inputs": [[...]], "labels": [...]}
 * (role "train" or "test"; labels class indices, float targets or rows of targets) is
 * stored as the NPY pair <role>_inputs/<role>_labels. Roles are what the workers read:
 * train, test (CSV), {train,test}_{images,inputs,labels}; ksrv_dataset_source turns them
 * into a source. Requests name datasets and roles only: no server path or URL is ever
 * accepted.
 */
#include "ksrv_http.h"
#include "routes_v1.h"

#include "kapi_text.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* Files up to this size (on disk) are parsed whole to count and check every sample;
 * bigger ones only get their header checked. */
#define FULL_CHECK_BYTES ((int64_t)256 << 20)

static const char *const ROLES[] = {"train_text", /* a language model's text (issue 12) */
                                    "train",
                                    "test",
                                    "train_csv",
                                    "test_csv",
                                    "train_images",
                                    "train_inputs",
                                    "train_labels",
                                    "test_images",
                                    "test_inputs",
                                    "test_labels",
                                    NULL};

static bool known_role(const char *role)
{
    for (int i = 0; ROLES[i]; i++)
        if (!strcmp(role, ROLES[i])) return true;
    return false;
}

static cJSON *dataset_json(const kstore_dataset *d)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", d->name);
    cJSON_AddStringToObject(o, "description", d->description ? d->description : "");
    cJSON_AddNumberToObject(o, "created_at", d->created_at);
    cJSON *files = cJSON_AddArrayToObject(o, "files");
    for (int i = 0; i < d->n_files; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "role", d->files[i].role);
        cJSON_AddStringToObject(f, "format", d->files[i].format);
        cJSON_AddNumberToObject(f, "bytes", (double)d->files[i].bytes);
        cJSON_AddNumberToObject(f, "samples", (double)d->files[i].samples);
        cJSON_AddItemToArray(files, f);
    }
    return o;
}

static void respond_dataset(ksrv_response *response, kstore *store, const char *name, int status)
{
    kstore_dataset d;
    memset(&d, 0, sizeof d);
    kstore_status s = kstore_dataset_get(store, name, &d);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "dataset");
        return;
    }
    ksrv_respond_json(response, status, dataset_json(&d));
    kstore_dataset_free(&d);
}

void ksrv_handle_datasets_create(ksrv_server *server, ksrv_request *request,
                                 ksrv_response *response)
{
    cJSON *root = ksrv_parse_body(request, response);
    if (!root) return;
    const cJSON *name = NULL, *description = NULL;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (!strcmp(c->string, "name"))
            name = c;
        else if (!strcmp(c->string, "description"))
            description = c;
        else {
            ksrv_respond_error(response, 400, "unknown_field", c->string,
                               "%s: unknown field (expected name, description)", c->string);
            cJSON_Delete(root);
            return;
        }
    }
    if (!cJSON_IsString(name) || !ksrv_valid_name(name->valuestring)) {
        ksrv_respond_error(response, 400, name ? "invalid_value" : "missing_field", "name",
                           "name: expected 1-127 characters from A-Z a-z 0-9 . _ - (not "
                           "starting with .)");
        cJSON_Delete(root);
        return;
    }
    if (description && (!cJSON_IsString(description) || strlen(description->valuestring) > 4096)) {
        ksrv_respond_error(response, 400, "invalid_value", "description",
                           "description: expected a string of at most 4096 characters");
        cJSON_Delete(root);
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    if (store) {
        kstore_status s = kstore_dataset_create(store, name->valuestring,
                                                description ? description->valuestring : "");
        if (s == KSTORE_CONFLICT)
            ksrv_respond_error(response, 409, "already_exists", "name",
                               "a dataset named \"%s\" exists", name->valuestring);
        else if (s != KSTORE_OK)
            ksrv_respond_store_error(response, store, s, "dataset");
        else
            respond_dataset(response, store, name->valuestring, 201);
    }
    cJSON_Delete(root);
}

void ksrv_handle_datasets_list(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)request;
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_dataset *list = NULL;
    int n = 0;
    kstore_status s = kstore_dataset_list(store, &list, &n);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "datasets");
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *array = cJSON_AddArrayToObject(root, "datasets");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(array, dataset_json(&list[i]));
    kstore_dataset_list_free(list, n);
    ksrv_respond_json(response, 200, root);
}

void ksrv_handle_datasets_get(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (store) respond_dataset(response, store, request->params[0], 200);
}

static kstore_status delete_dataset(kstore *store, void *name)
{
    return kstore_dataset_delete(store, name);
}

void ksrv_handle_datasets_delete(ksrv_server *server, ksrv_request *request,
                                 ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    const char *name = request->params[0];
    char job_id[40] = "";
    int used = ksrv_active_job_using(store, NULL, name, job_id);
    if (used) {
        if (used < 0)
            ksrv_respond_store_error(response, store, KSTORE_ERROR, "dataset");
        else
            ksrv_respond_error(response, 409, "dataset_in_use", NULL,
                               "dataset %s is used by job %s, which has not finished", name,
                               job_id);
        return;
    }
    /* the files first: on a full disk, they are the room the delete needs to commit */
    char folder[300];
    snprintf(folder, sizeof folder, "datasets/%s", name);
    if (ksrv_valid_name(name)) ksrv_remove_folder(server, folder);
    kstore_status s = ksrv_store_delete(server, store, delete_dataset, (void *)name);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "dataset");
        return;
    }
    ksrv_log(KSRV_LOG_INFO, "dataset %s deleted", name);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "deleted", name);
    ksrv_respond_json(response, 200, root);
}

/* ---- what training reads ------------------------------------------------------------ */

const char *ksrv_dataset_source(ksrv_server *server, const kstore_dataset *ds, const char *split,
                                const kapi_data_spec *data, kapi_data_source *out, char *message,
                                size_t size)
{
    memset(out, 0, sizeof *out);
    /* a CSV's target columns are the job's to name (default "label") */
    snprintf(out->label_column, sizeof out->label_column, "%s",
             data && data->label_column[0] ? data->label_column : "label");
    if (data) snprintf(out->target_columns, sizeof out->target_columns, "%s", data->target_columns);
    size_t n = strlen(split);
    for (int i = 0; i < ds->n_files; i++) {
        const kstore_dataset_file *f = &ds->files[i];
        if (strncmp(f->role, split, n) != 0) continue;
        const char *rest = f->role + n;
        char *target = NULL;
        if (!strcmp(rest, "") || !strcmp(rest, "_images") || !strcmp(rest, "_inputs") ||
            !strcmp(rest, "_csv"))
            target = out->inputs_path;
        else if (!strcmp(rest, "_labels"))
            target = out->labels_path;
        if (!target) continue;
        if (!strcmp(f->format, "idx")) {
            out->format = KAPI_FORMAT_IDX;
        } else if (!strcmp(f->format, "npy")) {
            out->format = KAPI_FORMAT_NPY;
        } else if (!strcmp(f->format, "csv")) {
            out->format = KAPI_FORMAT_CSV;
        } else {
            snprintf(message, size, "dataset %s: file %s has format %s, which training cannot read",
                     ds->name, f->role, f->format);
            return "invalid_data";
        }
        if (!ksrv_data_path(server, f->path, target, sizeof out->inputs_path)) {
            snprintf(message, size, "dataset %s: file %s: path too long", ds->name, f->role);
            return "internal";
        }
        out->present = true;
    }
    if (out->present && out->format != KAPI_FORMAT_CSV &&
        (!out->inputs_path[0] || !out->labels_path[0])) {
        snprintf(message, size, "dataset %s: %s needs both %s_images (or %s_inputs) and %s_labels",
                 ds->name, split, split, split, split);
        return "dataset_incomplete";
    }
    return NULL;
}

/* ---- uploads ------------------------------------------------------------------------ */
/* The first bytes of a file, gunzipped when it is gzip. */
static int peek(const char *path, unsigned char *out, int size, bool *gzipped)
{
    gzFile f = gzopen(path, "rb");
    if (!f) return -1;
    int n = gzread(f, out, (unsigned)size);
    *gzipped = !gzdirect(f);
    gzclose(f);
    return n;
}

static const char *sniff(const unsigned char *head, int n, const char *content_type)
{
    if (n >= 6 && !memcmp(head, "\x93NUMPY", 6)) return "npy";
    if (n >= 4 && head[0] == 0 && head[1] == 0 &&
        (head[2] == 0x08 || head[2] == 0x09 || (head[2] >= 0x0B && head[2] <= 0x0E)) &&
        head[3] >= 1 && head[3] <= 8)
        return "idx";
    if (content_type && !strncmp(content_type, "application/json", 16)) return "json";
    int i = 0;
    while (i < n && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t')) i++;
    if (i < n && head[i] == '{') return "json";
    return "csv";
}

/* Inputs a model can train on are finite: a NaN or an infinity in a feature gives a NaN
 * loss at the first batch that holds it. Said at upload, where the user can fix the file,
 * naming the sample and the feature (for a CSV, the line too: the header is line 1). */
static bool finite_inputs(kn_tensor *inputs, bool csv, char *message, size_t size)
{
    if (!inputs || inputs->dtype != KN_FLOAT32 || inputs->ndim < 1) return true;
    int64_t total = kn_numel(inputs), per_sample = inputs->shape[0] ? total / inputs->shape[0] : 1;
    const float *x = kn_data_f32(inputs);
    for (int64_t i = 0; i < total; i++) {
        if (isfinite(x[i])) continue;
        char line[48] = "";
        if (csv) snprintf(line, sizeof line, " (line %lld)", (long long)(i / per_sample + 2));
        snprintf(message, size,
                 "sample %lld%s has %g at feature %lld: training needs finite inputs (fill or "
                 "drop missing values before uploading)",
                 (long long)(i / per_sample), line, (double)x[i], (long long)(i % per_sample));
        return false;
    }
    return true;
}

/* Checks the file with the engine's parsers; samples -1 when only the header was. */
static bool check_file(const char *path, const char *format, bool labels, int64_t bytes,
                       int64_t *samples, char *message, size_t size)
{
    *samples = -1;
    if (bytes > FULL_CHECK_BYTES) {
        unsigned char head[16];
        bool gz;
        int n = peek(path, head, sizeof head, &gz);
        const char *seen = n > 0 ? sniff(head, n, NULL) : "empty";
        if (strcmp(seen, format) != 0 && strcmp(format, "csv") != 0) {
            snprintf(message, size, "the file does not start like %s data", format);
            return false;
        }
        return true;
    }
    kapi_errors errors = {0};
    size_t length = 0;
    void *data = kapi_read_file(path, &length, &errors);
    kapi_errors_free(&errors);
    if (!data) {
        snprintf(message, size, "cannot read the upload back (or gzip data is corrupt)");
        return false;
    }
    kn_clear_error();
    bool ok = false;
    if (!strcmp(format, "csv")) {
        /* every column a number: which are targets is the job's to say (label_column,
         * target_columns), so all of them must be finite */
        kn_tensor *inputs = NULL, *labels_t = NULL;
        bool finite = true;
        if (kn_parse_csv_targets(data, length, NULL, 0, false, &inputs, &labels_t) == KN_OK) {
            *samples = inputs->shape[0];
            ok = finite = finite_inputs(inputs, true, message, size);
        }
        kn_release(inputs);
        kn_release(labels_t);
        if (!finite) {
            free(data);
            return false;
        }
    } else {
        /* NPY labels keep their dtype: integer classes, or float targets [N] / [N, K] */
        kn_tensor *t = !strcmp(format, "idx") ? kn_parse_idx(data, length, labels)
                       : labels               ? kn_parse_npy_targets(data, length)
                                              : kn_parse_npy(data, length, false);
        bool finite = true;
        if (t) {
            *samples = t->ndim > 0 ? t->shape[0] : 1;
            ok = t->ndim > 0;
            if (!ok) kn_clear_error();
            if (ok && (!labels || t->dtype == KN_FLOAT32))
                ok = finite = finite_inputs(t, false, message, size);
        }
        kn_release(t);
        if (!finite) {
            free(data);
            return false;
        }
    }
    if (!ok) {
        const char *why = kn_last_error();
        snprintf(message, size, "not valid %s%s: %s", format, labels ? " labels" : "",
                 why[0] ? why : "a scalar has no samples");
    }
    free(data);
    return ok;
}

/* Moves a checked file into the dataset's folder and records it (the dataset with it,
 * when this is its first file). */
static bool keep_file(ksrv_server *server, kstore *store, ksrv_response *response, const char *name,
                      const char *role, const char *format, const char *from, int64_t bytes,
                      int64_t samples)
{
    kstore_dataset_file file;
    memset(&file, 0, sizeof file);
    snprintf(file.role, sizeof file.role, "%s", role);
    snprintf(file.format, sizeof file.format, "%s", format);
    snprintf(file.path, sizeof file.path, "datasets/%s/%s.%s", name, role, format);
    file.bytes = bytes;
    file.samples = samples;
    char folder[600], target[600], relative[300];
    snprintf(relative, sizeof relative, "datasets/%s", name);
    if (!ksrv_data_path(server, relative, folder, sizeof folder) || !ksrv_mkdirs(folder, 0700) ||
        !ksrv_data_path(server, file.path, target, sizeof target) || rename(from, target) != 0) {
        ksrv_respond_write_error(response, errno, "the file");
        return false;
    }
    kstore_status s = kstore_dataset_add_file_creating(store, name, &file);
    if (s != KSTORE_OK) {
        unlink(target);
        ksrv_respond_store_error(response, store, s, "dataset");
        return false;
    }
    return true;
}

/* JSON arrays: nested numbers into a flat float buffer with their shape. */
typedef struct flat {
    float *values;
    int64_t count, capacity;
    int64_t shape[KN_MAX_DIMS];
    int ndim;
} flat;

static bool flatten(const cJSON *node, int depth, flat *f, char *message, size_t size)
{
    if (cJSON_IsNumber(node)) {
        if (depth != f->ndim) {
            snprintf(message, size, "inputs: ragged nesting (a number at depth %d of %d)", depth,
                     f->ndim);
            return false;
        }
        if (!isfinite(node->valuedouble)) {
            snprintf(message, size, "inputs: values must be finite");
            return false;
        }
        if (f->count == f->capacity) {
            int64_t capacity = f->capacity ? f->capacity * 2 : 1024;
            float *grown = realloc(f->values, (size_t)capacity * sizeof *grown);
            if (!grown) {
                snprintf(message, size, "out of memory");
                return false;
            }
            f->values = grown;
            f->capacity = capacity;
        }
        f->values[f->count++] = (float)node->valuedouble;
        return true;
    }
    if (!cJSON_IsArray(node) || depth >= f->ndim) {
        snprintf(message, size, "inputs: expected nested arrays of numbers of one shape");
        return false;
    }
    if (cJSON_GetArraySize(node) != f->shape[depth]) {
        snprintf(message, size, "inputs: ragged arrays (expected %lld items at depth %d)",
                 (long long)f->shape[depth], depth);
        return false;
    }
    for (const cJSON *c = node->child; c; c = c->next)
        if (!flatten(c, depth + 1, f, message, size)) return false;
    return true;
}

static bool write_npy(const char *path, const char *descr, const int64_t *shape, int ndim,
                      const void *data, size_t bytes)
{
    char header[256], dims[160] = "";
    for (int i = 0; i < ndim; i++) {
        size_t used = strlen(dims);
        snprintf(dims + used, sizeof dims - used, "%lld%s", (long long)shape[i],
                 ndim == 1      ? ","
                 : i + 1 < ndim ? ", "
                                : "");
    }
    int n = snprintf(header, sizeof header,
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    unsigned short header_length = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(header_length & 0xff, f);
    fputc(header_length >> 8, f);
    fwrite(header, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(data, 1, bytes, f);
    bool ok = !ferror(f);
    return fclose(f) == 0 && ok;
}

/* {"inputs": [[...]...], "labels": [...]} → <split>_inputs.npy and <split>_labels.npy */
static void upload_json(ksrv_server *server, kstore *store, ksrv_request *request,
                        ksrv_response *response, const char *name, const char *split)
{
    if (strcmp(split, "train") && strcmp(split, "test")) {
        ksrv_respond_error(response, 400, "invalid_role", "role",
                           "JSON arrays upload to the role train or test, not %s", split);
        return;
    }
    if (request->upload_bytes > server->config.max_body_bytes) {
        ksrv_respond_error(response, 413, "body_too_large", NULL,
                           "JSON data is limited to %zu bytes: upload NPY, IDX or CSV instead",
                           server->config.max_body_bytes);
        return;
    }
    kapi_errors errors = {0};
    size_t length = 0;
    char *text = kapi_read_file(request->upload_path, &length, &errors);
    kapi_errors_free(&errors);
    if (!text) {
        ksrv_respond_error(response, 500, "internal", NULL, "cannot read the upload back");
        return;
    }
    char *body = realloc(text, length + 1);
    if (!body) {
        free(text);
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    body[length] = '\0';
    ksrv_request json_request = *request;
    json_request.body = body;
    json_request.body_length = length;
    cJSON *root = ksrv_parse_body(&json_request, response);
    free(body);
    if (!root) return;
    char message[256] = "";
    const char *path = NULL;
    flat f = {0};
    int64_t *labels = NULL;
    double *values = NULL;
    const cJSON *inputs = NULL, *labels_json = NULL;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (!strcmp(c->string, "inputs"))
            inputs = c;
        else if (!strcmp(c->string, "labels"))
            labels_json = c;
        else {
            path = c->string;
            snprintf(message, sizeof message, "%s: unknown field (expected inputs, labels)",
                     c->string);
            break;
        }
    }
    if (!path && (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) == 0)) {
        path = "inputs";
        snprintf(message, sizeof message, "inputs: expected a non-empty array of samples");
    }
    if (!path) {
        /* the shape is that of the first sample; flatten() checks every other one */
        for (const cJSON *c = inputs; cJSON_IsArray(c) && f.ndim < KN_MAX_DIMS; c = c->child)
            f.shape[f.ndim++] = cJSON_GetArraySize(c);
        if (!flatten(inputs, 0, &f, message, sizeof message)) path = "inputs";
    }
    int64_t n = path ? 0 : f.shape[0];
    if (!path && (!cJSON_IsArray(labels_json) || cJSON_GetArraySize(labels_json) != n)) {
        path = "labels";
        snprintf(message, sizeof message,
                 "labels: expected an array of %lld class indices, target values or rows of "
                 "targets",
                 (long long)n);
    }
    /* class indices stay int64; a non-integer or negative value, or rows of K values,
     * make float targets (regression, multi-label) */
    const cJSON *first = path ? NULL : labels_json->child;
    int64_t k = cJSON_IsArray(first) ? cJSON_GetArraySize(first) : 0;
    if (!path && (k > 0 || !cJSON_IsNumber(first)) && (k < 1 || k > 1000000)) {
        path = "labels";
        snprintf(message, sizeof message, "labels[0]: expected a number or a non-empty row");
    }
    int64_t per = k > 0 ? k : 1;
    if (!path && !(values = malloc((size_t)(n * per) * sizeof *values))) {
        path = "";
        snprintf(message, sizeof message, "out of memory");
    }
    bool integral = k == 0;
    int64_t i = 0;
    for (const cJSON *c = path ? NULL : labels_json->child; c; c = c->next, i++) {
        const cJSON *v = k > 0 ? (cJSON_IsArray(c) ? c->child : NULL) : c;
        int64_t j = 0;
        for (; v && j < per && cJSON_IsNumber(v) && isfinite(v->valuedouble);
             v = k > 0 ? v->next : NULL, j++) {
            double x = v->valuedouble;
            integral = integral && x >= 0 && x <= 1e15 && x == floor(x);
            values[i * per + j] = x;
        }
        if (j != per || (k > 0 && v) || (k > 0 && !cJSON_IsArray(c))) {
            path = "labels";
            if (k > 0)
                snprintf(message, sizeof message,
                         "labels[%lld]: expected a row of %lld finite numbers like labels[0]",
                         (long long)i, (long long)k);
            else
                snprintf(message, sizeof message, "labels[%lld]: expected a finite number",
                         (long long)i);
            break;
        }
    }
    if (!path && integral && !(labels = malloc((size_t)n * sizeof *labels))) {
        path = "";
        snprintf(message, sizeof message, "out of memory");
    }
    for (i = 0; !path && integral && i < n; i++) labels[i] = (int64_t)values[i];
    cJSON_Delete(root);
    if (path) {
        ksrv_respond_error(response, 400, "invalid_data", path, "%s", message);
        free(f.values);
        free(labels);
        free(values);
        return;
    }
    /* both files go through tmp/ and are renamed into place */
    char inputs_tmp[600], labels_tmp[600], role[64];
    snprintf(role, sizeof role, "%s_inputs", split);
    bool ok = ksrv_data_path(server, "tmp/json-inputs-XXXXXX", inputs_tmp, sizeof inputs_tmp) &&
              ksrv_data_path(server, "tmp/json-labels-XXXXXX", labels_tmp, sizeof labels_tmp);
    int fd1 = ok ? mkstemp(inputs_tmp) : -1, fd2 = ok ? mkstemp(labels_tmp) : -1;
    if (fd1 >= 0) close(fd1);
    if (fd2 >= 0) close(fd2);
    errno = 0;
    ok = fd1 >= 0 && fd2 >= 0 &&
         write_npy(inputs_tmp, "<f4", f.shape, f.ndim, f.values, (size_t)f.count * sizeof(float)) &&
         (integral ? write_npy(labels_tmp, "<i8", &n, 1, labels, (size_t)n * sizeof *labels)
                   : write_npy(labels_tmp, "<f8", (int64_t[]){n, k}, k > 0 ? 2 : 1, values,
                               (size_t)(n * per) * sizeof *values));
    struct stat st1, st2;
    if (!ok || stat(inputs_tmp, &st1) || stat(labels_tmp, &st2)) {
        ksrv_respond_write_error(response, errno, "the data files");
    } else if (keep_file(server, store, response, name, role, "npy", inputs_tmp, st1.st_size, n)) {
        snprintf(role, sizeof role, "%s_labels", split);
        if (keep_file(server, store, response, name, role, "npy", labels_tmp, st2.st_size, n)) {
            cJSON *out = cJSON_CreateObject();
            cJSON_AddStringToObject(out, "dataset", name);
            cJSON_AddStringToObject(out, "role", split);
            cJSON_AddStringToObject(out, "format", "json");
            cJSON_AddNumberToObject(out, "samples", (double)n);
            char shape[128];
            cJSON_AddStringToObject(out, "sample_shape",
                                    kn_shape_str(f.shape + 1, f.ndim - 1, shape, sizeof shape));
            ksrv_respond_json(response, 201, out);
        }
    }
    if (fd1 >= 0) unlink(inputs_tmp);
    if (fd2 >= 0) unlink(labels_tmp);
    free(f.values);
    free(labels);
    free(values);
}

/* A language model's text (issue 12): any bytes (the bytes tokenizer takes them all);
 * samples counts the bytes, and UTF-8 text also gets its characters and the size of its
 * chars vocabulary (what "tokenizer": "chars" would make of it) in the answer. */
static void upload_text(ksrv_server *server, ksrv_request *request, ksrv_response *response,
                        const char *name, bool gzipped)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    int64_t characters = -1, vocab = -1, bytes = -1;
    if ((int64_t)request->upload_bytes <= FULL_CHECK_BYTES) {
        kapi_errors errors = {0};
        size_t length = 0;
        char *text = kapi_read_file(request->upload_path, &length, &errors);
        if (!text) {
            ksrv_respond_error(response, 400, "invalid_data", NULL, "%s",
                               errors.count ? errors.items[0].message : "cannot read the upload");
            kapi_errors_free(&errors);
            return;
        }
        kapi_errors_free(&errors);
        bytes = (int64_t)length;
        kapi_tokenizer *t =
            length ? kapi_tokenizer_for_text(KAPI_TOKENIZER_CHARS, text, length, "", &errors)
                   : NULL;
        if (t) {
            kapi_text_check_utf8(text, length, "", &characters, &errors);
            vocab = t->vocab_size;
        }
        kapi_tokenizer_free(t);
        kapi_errors_free(&errors);
        free(text);
        if (length == 0) {
            ksrv_respond_error(response, 400, "invalid_data", NULL,
                               "the text is empty: a language model needs text to learn");
            return;
        }
    }
    if (!keep_file(server, store, response, name, "train_text", "text", request->upload_path,
                   (int64_t)request->upload_bytes, bytes))
        return;
    request->upload_path = NULL; /* kept: http.c must not remove it */
    ksrv_log(KSRV_LOG_INFO, "dataset %s: train_text stored (%s%zu bytes, %lld characters)", name,
             gzipped ? "gzip, " : "", request->upload_bytes, (long long)characters);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "dataset", name);
    cJSON_AddStringToObject(out, "role", "train_text");
    cJSON_AddStringToObject(out, "format", "text");
    cJSON_AddBoolToObject(out, "gzip", gzipped);
    cJSON_AddNumberToObject(out, "bytes", (double)request->upload_bytes);
    cJSON_AddNumberToObject(out, "samples", (double)bytes);
    if (characters >= 0) {
        cJSON_AddNumberToObject(out, "characters", (double)characters);
        cJSON_AddNumberToObject(out, "vocab_size", (double)vocab);
    }
    ksrv_respond_json(response, 201, out);
}

void ksrv_handle_datasets_upload(ksrv_server *server, ksrv_request *request,
                                 ksrv_response *response)
{
    const char *name = request->params[0], *role = request->params[1];
    if (!ksrv_valid_name(name)) {
        ksrv_respond_error(response, 400, "invalid_value", "name",
                           "dataset names are 1-127 characters from A-Z a-z 0-9 . _ -");
        return;
    }
    if (!known_role(role)) {
        ksrv_respond_error(
            response, 400, "invalid_role", "role",
            "unknown role %s (expected train_text, train, test, train_csv, test_csv, "
            "{train,test}_images, {train,test}_inputs, {train,test}_labels)",
            role);
        return;
    }
    if (request->upload_bytes == 0) {
        ksrv_respond_error(response, 400, "missing_body", NULL, "the upload is empty");
        return;
    }
    unsigned char head[16];
    bool gzipped = false;
    int n = peek(request->upload_path, head, sizeof head, &gzipped);
    const char *content_type = MHD_lookup_connection_value(request->connection, MHD_HEADER_KIND,
                                                           MHD_HTTP_HEADER_CONTENT_TYPE);
    const char *format = ksrv_query(request, "format");
    bool text_role = !strcmp(role, "train_text");
    if (!format) format = text_role ? "text" : n > 0 ? sniff(head, n, content_type) : "csv";
    if (text_role || !strcmp(format, "text")) {
        if (!text_role || strcmp(format, "text")) {
            ksrv_respond_error(response, 400, "invalid_role", "role",
                               "a language model's text goes to the role train_text with "
                               "format=text, not %s with format=%.40s",
                               role, format);
            return;
        }
        upload_text(server, request, response, name, gzipped);
        return;
    }
    if (strcmp(format, "idx") && strcmp(format, "csv") && strcmp(format, "npy") &&
        strcmp(format, "json")) {
        ksrv_respond_error(response, 400, "invalid_query", "format",
                           "format: expected idx, csv, npy, json or text, got \"%.40s\"", format);
        return;
    }
    bool table = !strcmp(role, "train") || !strcmp(role, "test") || !strcmp(role, "train_csv") ||
                 !strcmp(role, "test_csv");
    if (strcmp(format, "json") && table != !strcmp(format, "csv")) {
        ksrv_respond_error(response, 400, "invalid_role", "role", "%s data goes to %s, not %s",
                           format, table ? "{train,test}_{images,inputs,labels}" : "train or test",
                           role);
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    if (!strcmp(format, "json")) {
        upload_json(server, store, request, response, name, role);
        return;
    }
    size_t suffix = strlen(role) > 7 ? strlen(role) - 7 : 0;
    bool labels = !strcmp(role + suffix, "_labels");
    int64_t samples = -1;
    char message[600];
    if (!check_file(request->upload_path, format, labels, (int64_t)request->upload_bytes, &samples,
                    message, sizeof message)) {
        ksrv_respond_error(response, 400, "invalid_data", NULL, "%s", message);
        return;
    }
    if (!keep_file(server, store, response, name, role, format, request->upload_path,
                   (int64_t)request->upload_bytes, samples))
        return;
    request->upload_path = NULL; /* kept: http.c must not remove it */
    ksrv_log(KSRV_LOG_INFO, "dataset %s: %s stored (%s%s, %zu bytes, %lld samples)", name, role,
             format, gzipped ? ", gzip" : "", request->upload_bytes, (long long)samples);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "dataset", name);
    cJSON_AddStringToObject(out, "role", role);
    cJSON_AddStringToObject(out, "format", format);
    cJSON_AddBoolToObject(out, "gzip", gzipped);
    cJSON_AddNumberToObject(out, "bytes", (double)request->upload_bytes);
    cJSON_AddNumberToObject(out, "samples", (double)samples);
    ksrv_respond_json(response, 201, out);
}
