/*
 * client_models.c — the kiln client's model commands: models (list, or one model with
 * its versions and aliases), create-model, delete-model, versions, delete-version, alias,
 * upload-weights, and infer (inputs from a JSON, CSV, NPY or IDX file or standard input,
 * sent in batches through the Open Inference Protocol v2 route).
 */
#include "kclient.h"

#include "kn_data.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- models ----------------------------------------------------------------------------- */
static void print_aliases(const cJSON *aliases)
{
    const cJSON *a;
    bool first = true;
    cJSON_ArrayForEach(a, aliases)
    {
        printf("%s%s", first ? "" : ",", a->string);
        first = false;
    }
    if (first) printf("-");
}

static int show_model(kcli_args *a, const char *escaped)
{
    char path[400];
    snprintf(path, sizeof path, "/v1/models/%s", escaped);
    int rc = 0;
    cJSON *m = kcli_expect(a, "GET", path, NULL, 200, &rc);
    if (!m) return rc;
    if (a->local.json) {
        kcli_print_json(m);
        cJSON_Delete(m);
        return 0;
    }
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(m, "spec");
    char *input = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(spec, "input_shape"));
    printf("model %s: %.0f parameters, input %s, %d layers\n", kcli_string(m, "name"),
           kcli_number(m, "parameter_count", 0), input ? input : "?",
           cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(spec, "layers")));
    free(input);
    const char *def = kcli_string(m, "default_version");
    printf("default version: %s\n", def[0] ? def : "none yet");
    printf("%-24s %-7s %-10s %s\n", "VERSION", "KIND", "BYTES", "ALIASES");
    const cJSON *v;
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(m, "versions"))
    {
        char aliases[256] = "";
        const cJSON *name;
        cJSON_ArrayForEach(name, cJSON_GetObjectItemCaseSensitive(v, "aliases"))
        {
            size_t n = strlen(aliases);
            snprintf(aliases + n, sizeof aliases - n, "%s%s", n ? "," : "", name->valuestring);
        }
        printf("%-24s %-7s %-10.0f %s%s\n", kcli_string(v, "version"), kcli_string(v, "kind"),
               kcli_number(v, "bytes", 0), aliases[0] ? aliases : "-",
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "default")) ? " (default)" : "");
    }
    cJSON_Delete(m);
    return 0;
}

int kcli_cmd_models(kcli_args *a)
{
    char escaped[400];
    if (a->n_positional == 1) {
        if (!kcli_escape(a->positional[0], escaped, sizeof escaped)) return KCLI_EXIT_SPEC;
        return show_model(a, escaped);
    }
    int rc = 0;
    cJSON *doc = kcli_expect(a, "GET", "/v1/models", NULL, 200, &rc);
    if (!doc) return rc;
    if (!a->local.json)
        printf("%-24s %-12s %-9s %-24s %s\n", "NAME", "PARAMETERS", "VERSIONS", "DEFAULT",
               "ALIASES");
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(doc, "models"))
    {
        if (a->local.json) {
            kcli_print_json(m);
            continue;
        }
        const char *def = kcli_string(m, "default_version");
        printf("%-24s %-12.0f %-9.0f %-24s ", kcli_string(m, "name"),
               kcli_number(m, "parameter_count", 0), kcli_number(m, "version_count", 0),
               def[0] ? def : "-");
        print_aliases(cJSON_GetObjectItemCaseSensitive(m, "aliases"));
        printf("\n");
    }
    cJSON_Delete(doc);
    return 0;
}

int kcli_cmd_create_model(kcli_args *a)
{
    size_t size;
    char *body = kcli_read_all(a->positional[0], &size);
    if (!body) return KCLI_EXIT_RUNTIME;
    int rc = 0;
    cJSON *doc = kcli_expect(
        a, "POST", a->validate_only ? "/v1/models?validate_only=true" : "/v1/models", body, 0, &rc);
    free(body);
    if (!doc) return rc;
    if (a->local.json)
        kcli_print_json(doc);
    else
        printf("%s %s: %.0f parameters\n", a->validate_only ? "valid model" : "stored model",
               kcli_string(doc, "name"), kcli_number(doc, "parameter_count", 0));
    cJSON_Delete(doc);
    return 0;
}

/* DELETE path, printing what was deleted. */
static int delete_and_report(kcli_args *a, const char *path, const char *what)
{
    int rc = 0;
    cJSON *doc = kcli_expect(a, "DELETE", path, NULL, 200, &rc);
    if (!doc) return rc;
    if (a->local.json) {
        kcli_print_json(doc);
    } else {
        printf("deleted %s %s", what, a->positional[a->n_positional - 1]);
        int jobs = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "jobs"));
        if (jobs) printf(" with %d job%s", jobs, jobs == 1 ? "" : "s");
        if (kcli_number(doc, "versions", 0) > 0)
            printf(" and %.0f uploaded version(s)", kcli_number(doc, "versions", 0));
        printf("\n");
    }
    cJSON_Delete(doc);
    return 0;
}

int kcli_cmd_delete_model(kcli_args *a)
{
    char escaped[400], path[450];
    if (!kcli_escape(a->positional[0], escaped, sizeof escaped)) return KCLI_EXIT_SPEC;
    snprintf(path, sizeof path, "/v1/models/%s%s", escaped, a->force ? "?force=true" : "");
    return delete_and_report(a, path, "model");
}

int kcli_cmd_versions(kcli_args *a)
{
    char escaped[400];
    if (!kcli_escape(a->positional[0], escaped, sizeof escaped)) return KCLI_EXIT_SPEC;
    return show_model(a, escaped);
}

int kcli_cmd_delete_version(kcli_args *a)
{
    char model[400], version[200], path[700];
    if (!kcli_escape(a->positional[0], model, sizeof model) ||
        !kcli_escape(a->positional[1], version, sizeof version))
        return KCLI_EXIT_SPEC;
    snprintf(path, sizeof path, "/v1/models/%s/versions/%s%s", model, version,
             a->force ? "?force=true" : "");
    return delete_and_report(a, path, "version");
}

/* ---- aliases ------------------------------------------------------------------------------ */
int kcli_cmd_alias(kcli_args *a)
{
    char model[400], alias[200], path[700];
    if (!kcli_escape(a->positional[0], model, sizeof model)) return KCLI_EXIT_SPEC;
    if (a->n_positional == 1) {
        if (a->remove) return kcli_usage_error(a, "--delete needs the ALIAS");
        snprintf(path, sizeof path, "/v1/models/%s/aliases", model);
        int rc = 0;
        cJSON *doc = kcli_expect(a, "GET", path, NULL, 200, &rc);
        if (!doc) return rc;
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(doc, "aliases"))
        {
            if (a->local.json)
                kcli_print_json(item);
            else
                printf("%s -> %s\n", kcli_string(item, "alias"), kcli_string(item, "version"));
        }
        cJSON_Delete(doc);
        return 0;
    }
    if (!kcli_escape(a->positional[1], alias, sizeof alias)) return KCLI_EXIT_SPEC;
    snprintf(path, sizeof path, "/v1/models/%s/aliases/%s", model, alias);
    if (a->remove && a->n_positional == 3)
        return kcli_usage_error(a, "--delete takes MODEL ALIAS, not a version");
    int rc = 0;
    cJSON *doc;
    if (a->n_positional == 3) {
        cJSON *body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "version", a->positional[2]);
        char *text = cJSON_PrintUnformatted(body);
        cJSON_Delete(body);
        doc = text ? kcli_expect(a, "PUT", path, text, 0, &rc) : NULL;
        free(text);
    } else {
        doc = kcli_expect(a, a->remove ? "DELETE" : "GET", path, NULL, 200, &rc);
    }
    if (!doc) return rc ? rc : KCLI_EXIT_RUNTIME;
    if (a->local.json) {
        kcli_print_json(doc);
    } else {
        const char *previous = kcli_string(doc, "previous");
        printf("%s%s -> %s", a->remove ? "deleted " : "", kcli_string(doc, "alias"),
               kcli_string(doc, "version"));
        if (previous[0] && strcmp(previous, kcli_string(doc, "version")) != 0)
            printf(" (was %s)", previous);
        printf("\n");
    }
    cJSON_Delete(doc);
    return 0;
}

/* ---- upload-weights ------------------------------------------------------------------------- */
static void print_keys(const char *what, const cJSON *keys)
{
    int n = cJSON_GetArraySize(keys);
    if (n == 0) return;
    printf("%d %s key%s:", n, what, n == 1 ? "" : "s");
    const cJSON *k;
    cJSON_ArrayForEach(k, keys)
    {
        printf(" %s", cJSON_IsString(k) ? k->valuestring : "?");
    }
    printf("\n");
}

int kcli_cmd_upload_weights(kcli_args *a)
{
    char model[400], version[200], prefix[200] = "", path[1200];
    if (!kcli_escape(a->positional[0], model, sizeof model) ||
        !kcli_escape(a->positional[1], version, sizeof version) ||
        (a->strip_prefix && !kcli_escape(a->strip_prefix, prefix, sizeof prefix)))
        return KCLI_EXIT_SPEC;
    int n = snprintf(path, sizeof path, "/v1/models/%s/versions/%s/weights?strict=%s", model,
                     version, a->lenient ? "false" : "true");
    if (prefix[0]) snprintf(path + n, sizeof path - (size_t)n, "&strip_prefix=%s", prefix);
    khttp_response r;
    if (!kcli_request(a, "PUT", path, NULL, a->positional[2], &r)) return KCLI_EXIT_RUNTIME;
    int rc = 0;
    if (r.status != 201) {
        rc = kcli_print_error(&r);
        cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
        print_keys("missing", cJSON_GetObjectItemCaseSensitive(error, "missing_keys"));
        print_keys("unexpected", cJSON_GetObjectItemCaseSensitive(error, "unexpected_keys"));
        cJSON_Delete(doc);
    } else if (a->local.json) {
        printf("%s\n", r.body);
    } else {
        cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
        const cJSON *info = cJSON_GetObjectItemCaseSensitive(doc, "upload");
        printf("uploaded %s version %s (%.0f bytes)\n", a->positional[0], a->positional[1],
               kcli_number(doc, "bytes", 0));
        print_keys("missing", cJSON_GetObjectItemCaseSensitive(info, "missing_keys"));
        print_keys("unexpected", cJSON_GetObjectItemCaseSensitive(info, "unexpected_keys"));
        cJSON_Delete(doc);
    }
    khttp_response_free(&r);
    return rc;
}

/* ---- infer ------------------------------------------------------------------------------------
 */

/* Inputs as rows of floats. */
typedef struct rows {
    float *values;
    int64_t n, width; /* width: values per row */
} rows;

static bool all_numeric(const char *line)
{
    char *end;
    for (const char *p = line; *p;) {
        strtod(p, &end);
        if (end == p) return false;
        p = end;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == ',')
            p++;
        else if (*p && *p != '\r' && *p != '\n')
            return false;
        else
            break;
    }
    return true;
}

/* CSV of numbers: a header line (not numeric) is skipped; its "label" column is left out. */
static bool csv_rows(char *text, rows *out, char *error, size_t size)
{
    int label = -1;
    int64_t line_no = 0, capacity = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\r' || isspace((unsigned char)line[len - 1]))) len--;
        line[len] = '\0';
        if (!len) continue;
        if (out->n == 0 && out->width == 0 && !all_numeric(line)) {
            int column = 0;
            for (char *s2 = NULL, *name = strtok_r(line, ",", &s2); name;
                 name = strtok_r(NULL, ",", &s2), column++) {
                while (*name == ' ') name++;
                if (!strcmp(name, "label")) label = column;
            }
            continue;
        }
        int64_t width = 0;
        int column = 0;
        char *p = line;
        for (;; column++) {
            char *end;
            double v = strtod(p, &end);
            if (end == p) {
                snprintf(error, size, "line %lld, column %d: expected a number", (long long)line_no,
                         column + 1);
                return false;
            }
            if (column != label) {
                if (out->n * (out->width ? out->width : 1) + width + 1 > capacity) {
                    capacity = capacity ? capacity * 2 : 4096;
                    float *grown = realloc(out->values, (size_t)capacity * sizeof(float));
                    if (!grown) {
                        snprintf(error, size, "out of memory");
                        return false;
                    }
                    out->values = grown;
                }
                out->values[out->n * out->width + width] = (float)v;
                width++;
            }
            p = end;
            while (*p == ' ' || *p == '\t') p++;
            if (*p != ',') break;
            p++;
        }
        if (out->width == 0) out->width = width;
        if (width != out->width) {
            snprintf(error, size, "line %lld has %lld values, the first row %lld",
                     (long long)line_no, (long long)width, (long long)out->width);
            return false;
        }
        out->n++;
    }
    return true;
}

static void flatten(const cJSON *node, float *out, int64_t *count, int64_t capacity, bool *ok)
{
    if (cJSON_IsArray(node)) {
        for (const cJSON *c = node->child; c; c = c->next) flatten(c, out, count, capacity, ok);
    } else if (cJSON_IsNumber(node)) {
        if (*count < capacity) out[*count] = (float)node->valuedouble;
        (*count)++;
    } else {
        *ok = false;
    }
}

/* A JSON list of rows (numbers, or nested lists of them). */
static bool json_rows(const cJSON *doc, int64_t width, rows *out, char *error, size_t size)
{
    int n = cJSON_GetArraySize(doc);
    out->width = width;
    out->values = malloc((size_t)(n > 0 ? n : 1) * (size_t)width * sizeof(float));
    if (!out->values) {
        snprintf(error, size, "out of memory");
        return false;
    }
    int i = 0;
    for (const cJSON *row = doc->child; row; row = row->next, i++) {
        int64_t count = 0;
        bool ok = true;
        flatten(row, out->values + (int64_t)i * width, &count, width, &ok);
        if (!ok || count != width) {
            snprintf(error, size, "row %d: expected %lld numbers, got %s%lld", i, (long long)width,
                     ok ? "" : "something else than numbers among ", (long long)count);
            return false;
        }
    }
    out->n = n;
    return true;
}

/* NPY or IDX: a tensor [N, ...] parsed by the engine. */
static bool tensor_rows(const char *data, size_t size, bool npy, rows *out, char *error,
                        size_t error_size)
{
    kn_scope_begin();
    kn_tensor *t = npy ? kn_parse_npy(data, size, false) : kn_parse_idx(data, size, false);
    kn_tensor *c = t ? kn_contiguous(t) : NULL;
    bool ok = c && c->ndim >= 1;
    if (ok) {
        out->n = c->shape[0];
        out->width = out->n > 0 ? kn_numel(c) / out->n : 0;
        out->values = malloc((size_t)kn_numel(c) * sizeof(float) + 1);
        ok = out->values != NULL;
        if (ok) memcpy(out->values, kn_data_f32(c), (size_t)kn_numel(c) * sizeof(float));
    }
    if (!ok) snprintf(error, error_size, "%s", c ? "out of memory" : kn_last_error());
    kn_scope_end();
    return ok;
}

static const char *sniff(const char *data, size_t size)
{
    const unsigned char *b = (const unsigned char *)data;
    if (size >= 6 && !memcmp(data, "\x93NUMPY", 6)) return "npy";
    if (size >= 4 && b[0] == 0 && b[1] == 0 && b[2] >= 0x08 && b[2] <= 0x0E && b[3] >= 1 &&
        b[3] <= 8)
        return "idx";
    size_t i = 0;
    while (i < size && isspace(b[i])) i++;
    return i < size && (b[i] == '[' || b[i] == '{') ? "json" : "csv";
}

/* The model's values per input (from its v2 metadata); 0 after printing why. */
static int64_t input_width(kcli_args *a, const char *model, int *rc)
{
    char path[512];
    snprintf(path, sizeof path, "/v2/models/%s", model);
    cJSON *meta = kcli_expect(a, "GET", path, NULL, 200, rc);
    if (!meta) return 0;
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(meta, "inputs"), 0), "shape");
    int64_t width = 1;
    for (const cJSON *d = shape && shape->child ? shape->child->next : NULL; d; d = d->next)
        width *= (int64_t)d->valuedouble;
    cJSON_Delete(meta);
    return width;
}

/* Prints a v2 answer's outputs: index, argmax (when a row has several values), values. */
static void print_outputs(const cJSON *answer, int64_t first)
{
    const cJSON *out = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(answer, "outputs"), 0);
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(out, "shape");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(out, "data");
    int64_t n = (int64_t)cJSON_GetArrayItem(shape, 0)->valuedouble;
    int64_t width = n > 0 ? cJSON_GetArraySize(data) / n : 0;
    const cJSON *v = data ? data->child : NULL;
    for (int64_t i = 0; i < n; i++) {
        double best = -INFINITY;
        int64_t arg = 0;
        const cJSON *row = v;
        for (int64_t k = 0; k < width && v; k++, v = v->next)
            if (v->valuedouble > best) best = v->valuedouble, arg = k;
        printf("%lld", (long long)(first + i));
        if (width > 1) printf("\t%lld", (long long)arg);
        for (int64_t k = 0; k < width && row; k++, row = row->next)
            printf("\t%.6g", row->valuedouble);
        printf("\n");
    }
}

/* Sends rows in batches of about 64k values. */
static int infer_rows(kcli_args *a, const char *path, const rows *in)
{
    int64_t per_request = in->width > 0 ? 65536 / in->width : 1;
    if (per_request < 1) per_request = 1;
    if (!a->local.json) printf("# index\t%s\toutputs...\n", "argmax");
    for (int64_t first = 0; first < in->n; first += per_request) {
        int64_t n = in->n - first < per_request ? in->n - first : per_request;
        cJSON *body = cJSON_CreateObject();
        if (a->softmax)
            cJSON_AddBoolToObject(cJSON_AddObjectToObject(body, "parameters"), "softmax", true);
        cJSON *input = cJSON_CreateObject();
        cJSON_AddItemToArray(cJSON_AddArrayToObject(body, "inputs"), input);
        cJSON_AddStringToObject(input, "name", "input");
        cJSON *shape = cJSON_AddArrayToObject(input, "shape");
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)n));
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)in->width));
        cJSON_AddStringToObject(input, "datatype", "FP32");
        cJSON_AddItemToObject(
            input, "data",
            cJSON_CreateFloatArray(in->values + first * in->width, (int)(n * in->width)));
        char *text = cJSON_PrintUnformatted(body);
        cJSON_Delete(body);
        int rc = 0;
        cJSON *answer = text ? kcli_expect(a, "POST", path, text, 200, &rc) : NULL;
        free(text);
        if (!answer) return rc ? rc : KCLI_EXIT_RUNTIME;
        if (a->local.json)
            kcli_print_json(answer);
        else
            print_outputs(answer, first);
        cJSON_Delete(answer);
    }
    return 0;
}

int kcli_cmd_infer(kcli_args *a)
{
    if (a->read_stdin == (a->n_positional == 2))
        return kcli_usage_error(a, "give a FILE of inputs or --stdin (one of them)");
    if (a->format && strcmp(a->format, "json") && strcmp(a->format, "csv") &&
        strcmp(a->format, "npy") && strcmp(a->format, "idx"))
        return kcli_usage_error(a, "--format: expected json, csv, npy or idx, got \"%s\"",
                                a->format);
    char model[400], version[200], path[700];
    if (!kcli_escape(a->positional[0], model, sizeof model) ||
        (a->version && !kcli_escape(a->version, version, sizeof version)))
        return KCLI_EXIT_SPEC;
    if (a->version)
        snprintf(path, sizeof path, "/v2/models/%s/versions/%s/infer", model, version);
    else
        snprintf(path, sizeof path, "/v2/models/%s/infer", model);
    const char *source = a->read_stdin ? "-" : a->positional[1];
    size_t size = 0;
    char *data = kcli_read_all(source, &size);
    if (!data) return KCLI_EXIT_RUNTIME;
    if (size >= 2 && (unsigned char)data[0] == 0x1f && (unsigned char)data[1] == 0x8b) {
        kapi_errors errors = {0};
        size_t plain_size = 0;
        char *plain =
            kapi_gunzip(data, size, a->read_stdin ? "stdin" : source, &plain_size, &errors);
        free(data);
        if (!plain) {
            kcli_print_errors(&errors);
            kapi_errors_free(&errors);
            return KCLI_EXIT_RUNTIME;
        }
        kapi_errors_free(&errors);
        char *terminated = realloc(plain, plain_size + 1);
        if (!terminated) {
            free(plain);
            return KCLI_EXIT_RUNTIME;
        }
        terminated[plain_size] = '\0';
        data = terminated;
        size = plain_size;
    }
    const char *format = a->format ? a->format : sniff(data, size);
    int rc = 0;
    rows in = {0};
    char error[512] = "";
    bool ok;
    cJSON *doc = NULL;
    if (!strcmp(format, "json")) {
        doc = cJSON_ParseWithLength(data, size);
        if (cJSON_IsObject(doc) && cJSON_GetObjectItemCaseSensitive(doc, "inputs")) {
            /* a whole v2 request: sent as it is */
            cJSON *answer = kcli_expect(a, "POST", path, data, 200, &rc);
            if (answer) {
                if (a->local.json)
                    kcli_print_json(answer);
                else
                    print_outputs(answer, 0);
            }
            cJSON_Delete(answer);
            cJSON_Delete(doc);
            free(data);
            return rc;
        }
        int64_t width = cJSON_IsArray(doc) ? input_width(a, model, &rc) : 0;
        if (!cJSON_IsArray(doc) && !rc) snprintf(error, sizeof error, "expected a list of rows");
        ok = width > 0 && json_rows(doc, width, &in, error, sizeof error);
    } else if (!strcmp(format, "csv")) {
        ok = csv_rows(data, &in, error, sizeof error);
    } else {
        ok = tensor_rows(data, size, !strcmp(format, "npy"), &in, error, sizeof error);
    }
    cJSON_Delete(doc);
    free(data);
    if (!ok) {
        if (error[0])
            fprintf(stderr, "kiln infer: %s: %s\n", a->read_stdin ? "stdin" : source, error);
        free(in.values);
        return rc ? rc : KCLI_EXIT_SPEC;
    }
    if (in.n == 0) {
        fprintf(stderr, "kiln infer: %s holds no inputs\n", a->read_stdin ? "stdin" : source);
        free(in.values);
        return KCLI_EXIT_SPEC;
    }
    rc = infer_rows(a, path, &in);
    free(in.values);
    return rc;
}
