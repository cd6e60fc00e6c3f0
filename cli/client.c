/*
 * client.c — what the kiln client commands share: a request to kilnd with the bearer
 * token, error answers ({"error": {"code", "message", "path", "details"}} or the v2
 * {"error": "..."}) printed as "path: message" lines, and small JSON and file helpers.
 */
#include "kclient.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kcli_usage_error(const kcli_args *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kiln %s: ", a->command);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nrun `kiln %s --help` for its usage\n", a->command);
    return KCLI_EXIT_SPEC;
}

bool kcli_request(const kcli_args *a, const char *method, const char *path, const char *body,
                  const char *body_file, khttp_response *response)
{
    khttp_request r = {.method = method,
                       .base_url = a->url,
                       .path = path,
                       .token = a->token,
                       .ca_file = a->ca_file,
                       .body = body,
                       .body_length = body ? strlen(body) : 0,
                       .body_file = body_file,
                       .content_type = body_file ? "application/octet-stream" : NULL,
                       .timeout_seconds = body_file ? 600 : 60};
    char error[1024];
    if (!khttp_do(&r, response, error, sizeof error)) {
        fprintf(stderr, "kiln: %s %s\n", method, error);
        return false;
    }
    return true;
}

int kcli_print_error(const khttp_response *response)
{
    cJSON *doc = cJSON_ParseWithLength(response->body, response->body_length);
    cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    if (cJSON_IsString(error)) {
        fprintf(stderr, "kiln: %d: %s\n", response->status, error->valuestring);
    } else if (cJSON_IsObject(error)) {
        cJSON *details = cJSON_GetObjectItemCaseSensitive(error, "details");
        fprintf(stderr, "kiln: %d %s\n", response->status,
                kcli_string(error, "code")[0] ? kcli_string(error, "code") : "error");
        if (cJSON_GetArraySize(details) > 0) {
            const cJSON *d;
            cJSON_ArrayForEach(d, details)
            {
                const char *p = kcli_string(d, "path");
                fprintf(stderr, "%s%s%s\n", p, p[0] ? ": " : "", kcli_string(d, "message"));
            }
        } else {
            const char *p = kcli_string(error, "path");
            const char *m = kcli_string(error, "message");
            /* messages that already start with their path are printed as they are */
            bool prefixed = p[0] && !strncmp(m, p, strlen(p));
            fprintf(stderr, "%s%s%s\n", prefixed ? "" : p, p[0] && !prefixed ? ": " : "", m);
        }
    } else {
        fprintf(stderr, "kiln: HTTP %d: %.300s\n", response->status,
                response->body ? response->body : "");
    }
    cJSON_Delete(doc);
    return response->status >= 400 && response->status < 500 ? KCLI_EXIT_SPEC : KCLI_EXIT_RUNTIME;
}

cJSON *kcli_expect(const kcli_args *a, const char *method, const char *path, const char *body,
                   int want, int *rc)
{
    khttp_response r;
    if (!kcli_request(a, method, path, body, NULL, &r)) {
        *rc = KCLI_EXIT_RUNTIME;
        return NULL;
    }
    bool ok = want ? r.status == want : r.status >= 200 && r.status < 300;
    cJSON *doc = NULL;
    if (!ok) {
        *rc = kcli_print_error(&r);
    } else if (!(doc = cJSON_ParseWithLength(r.body, r.body_length))) {
        fprintf(stderr, "kiln: %s %s: the answer is not JSON\n", method, path);
        *rc = KCLI_EXIT_RUNTIME;
    }
    khttp_response_free(&r);
    return doc;
}

bool kcli_escape(const char *text, char *out, size_t size)
{
    if (khttp_escape(text, out, size)) return true;
    fprintf(stderr, "kiln: \"%.60s...\" is too long\n", text);
    return false;
}

void kcli_print_json(const cJSON *o)
{
    char *text = cJSON_PrintUnformatted(o);
    if (text) printf("%s\n", text);
    free(text);
}

double kcli_number(const cJSON *o, const char *name, double fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v))
        v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "progress"), name);
    return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

const char *kcli_string(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : "";
}

char *kcli_read_all(const char *path, size_t *size)
{
    bool from_stdin = !strcmp(path, "-");
    FILE *f = from_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kiln: cannot read %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t capacity = 65536, n = 0, got;
    char *data = malloc(capacity);
    while (data && (got = fread(data + n, 1, capacity - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == capacity) {
            char *grown = realloc(data, capacity *= 2);
            if (!grown) free(data);
            data = grown;
        }
    }
    bool failed = ferror(f);
    if (!from_stdin) fclose(f);
    if (!data || failed) {
        fprintf(stderr, "kiln: reading %s: %s\n", path, data ? strerror(errno) : "out of memory");
        free(data);
        return NULL;
    }
    data[n] = '\0';
    *size = n;
    return data;
}
