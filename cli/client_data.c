/*
 * client_data.c — the kiln client's dataset commands and health: upload (creates the
 * dataset, then streams each file; IDX, NPY and CSV recognised from the file's first
 * bytes, so inputs and labels may be either IDX or NPY; a language model's text as it
 * is), datasets, delete-dataset, health.
 */
#include "kclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* "idx", "npy" or "csv" from a file's first bytes (gunzipped); NULL when unreadable. */
static const char *file_format(const char *path)
{
    gzFile f = gzopen(path, "rb");
    if (!f) return NULL;
    unsigned char head[8];
    int n = gzread(f, head, sizeof head);
    gzclose(f);
    if (n < 0) return NULL;
    if (n >= 6 && !memcmp(head, "\x93NUMPY", 6)) return "npy";
    if (n >= 4 && head[0] == 0 && head[1] == 0 && head[2] >= 0x08 && head[2] <= 0x0E &&
        head[3] >= 1 && head[3] <= 8)
        return "idx";
    return "csv";
}

int kcli_cmd_upload(kcli_args *a)
{
    const char *const *f = a->files;
    bool arrays =
        f[KCLI_TRAIN_INPUTS] || f[KCLI_TRAIN_LABELS] || f[KCLI_TEST_INPUTS] || f[KCLI_TEST_LABELS];
    bool tables = f[KCLI_TRAIN_CSV] || f[KCLI_TEST_CSV];
    bool text = f[KCLI_TRAIN_TEXT] != NULL;
    if (arrays + tables + text != 1)
        return kcli_usage_error(a,
                                "give inputs and labels (--train-inputs ...), tables "
                                "(--train-csv ...) or a text (--train-text F)%s",
                                arrays + tables + text ? ": one kind, not several" : "");
    if (arrays && (!f[KCLI_TRAIN_INPUTS] || !f[KCLI_TRAIN_LABELS]))
        return kcli_usage_error(a, "--train-inputs and --train-labels go together");
    if (arrays && !f[KCLI_TEST_INPUTS] != !f[KCLI_TEST_LABELS])
        return kcli_usage_error(a, "--test-inputs and --test-labels go together");
    if (tables && !f[KCLI_TRAIN_CSV]) return kcli_usage_error(a, "--train-csv is required");
    /* every file's format before anything is sent */
    const char *formats[KCLI_UPLOAD_FILES] = {0};
    for (int i = 0; i < KCLI_UPLOAD_FILES; i++) {
        if (!f[i]) continue;
        if (!(formats[i] = i == KCLI_TRAIN_TEXT ? "text" : file_format(f[i]))) {
            perror(f[i]);
            return KCLI_EXIT_RUNTIME;
        }
        if (i == KCLI_TRAIN_TEXT) continue; /* any bytes are a text; kilnd reads them */
        bool table = i == KCLI_TRAIN_CSV || i == KCLI_TEST_CSV;
        if (table != !strcmp(formats[i], "csv"))
            return kcli_usage_error(a, "%s is %s: %s", f[i], formats[i],
                                    table ? "--train-csv and --test-csv take CSV files"
                                          : "inputs and labels are IDX or NPY files");
    }
    char escaped[400], path[600];
    if (!kcli_escape(a->positional[0], escaped, sizeof escaped)) return KCLI_EXIT_SPEC;
    cJSON *create = cJSON_CreateObject();
    cJSON_AddStringToObject(create, "name", a->positional[0]);
    char *body = cJSON_PrintUnformatted(create);
    cJSON_Delete(create);
    khttp_response r;
    bool ok = body && kcli_request(a, "POST", "/v1/datasets", body, NULL, &r);
    free(body);
    if (!ok) return KCLI_EXIT_RUNTIME;
    /* 409: the dataset exists; its files are replaced role by role */
    if (r.status >= 300 && r.status != 409) {
        int rc = kcli_print_error(&r);
        khttp_response_free(&r);
        return rc;
    }
    khttp_response_free(&r);
    static const char *const SPLIT[KCLI_UPLOAD_FILES] = {"train", "train", "test", "test",
                                                         "train", "test",  "train"};
    for (int i = 0; i < KCLI_UPLOAD_FILES; i++) {
        if (!f[i]) continue;
        char role[32];
        if (i == KCLI_TRAIN_TEXT)
            snprintf(role, sizeof role, "train_text");
        else if (i == KCLI_TRAIN_CSV || i == KCLI_TEST_CSV)
            snprintf(role, sizeof role, "%s", SPLIT[i]);
        else if (i == KCLI_TRAIN_LABELS || i == KCLI_TEST_LABELS)
            snprintf(role, sizeof role, "%s_labels", SPLIT[i]);
        else /* IDX inputs keep their historical role name */
            snprintf(role, sizeof role, "%s_%s", SPLIT[i],
                     !strcmp(formats[i], "idx") ? "images" : "inputs");
        snprintf(path, sizeof path, "/v1/datasets/%s/files/%s?format=%s", escaped, role,
                 formats[i]);
        double t0 = kcli_now();
        if (!kcli_request(a, "PUT", path, NULL, f[i], &r)) return KCLI_EXIT_RUNTIME;
        if (r.status >= 300) {
            fprintf(stderr, "kiln: uploading %s as %s failed\n", f[i], role);
            int rc = kcli_print_error(&r);
            khttp_response_free(&r);
            return rc;
        }
        if (a->local.json) {
            printf("%s\n", r.body);
        } else {
            cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
            double samples = kcli_number(doc, "samples", -1), bytes = kcli_number(doc, "bytes", -1);
            printf("%s: %s uploaded (%s", role, f[i], formats[i]);
            if (bytes >= 0) printf(", %.0f bytes", bytes);
            if (samples >= 0 && i != KCLI_TRAIN_TEXT) printf(", %.0f samples", samples);
            double characters = kcli_number(doc, "characters", -1);
            if (characters >= 0)
                printf(", %.0f characters, %.0f distinct", characters,
                       kcli_number(doc, "vocab_size", -1));
            printf(", %.1f s)\n", kcli_now() - t0);
            cJSON_Delete(doc);
        }
        khttp_response_free(&r);
    }
    return 0;
}

static void print_dataset(const cJSON *d)
{
    printf("dataset %s%s%s\n", kcli_string(d, "name"), kcli_string(d, "description")[0] ? ": " : "",
           kcli_string(d, "description"));
    const cJSON *file;
    cJSON_ArrayForEach(file, cJSON_GetObjectItemCaseSensitive(d, "files"))
    {
        printf("  %-14s %-5s %12.0f bytes %10.0f samples\n", kcli_string(file, "role"),
               kcli_string(file, "format"), kcli_number(file, "bytes", 0),
               kcli_number(file, "samples", -1));
    }
}

int kcli_cmd_datasets(kcli_args *a)
{
    char escaped[400], path[450];
    if (a->n_positional == 1) {
        if (!kcli_escape(a->positional[0], escaped, sizeof escaped)) return KCLI_EXIT_SPEC;
        snprintf(path, sizeof path, "/v1/datasets/%s", escaped);
    } else {
        snprintf(path, sizeof path, "/v1/datasets");
    }
    int rc = 0;
    cJSON *doc = kcli_expect(a, "GET", path, NULL, 200, &rc);
    if (!doc) return rc;
    if (a->local.json) {
        kcli_print_json(doc);
    } else if (a->n_positional == 1) {
        print_dataset(doc);
    } else {
        const cJSON *d;
        cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(doc, "datasets"))
        {
            print_dataset(d);
        }
    }
    cJSON_Delete(doc);
    return 0;
}

int kcli_cmd_delete_dataset(kcli_args *a)
{
    char escaped[400], path[450];
    if (!kcli_escape(a->positional[0], escaped, sizeof escaped)) return KCLI_EXIT_SPEC;
    snprintf(path, sizeof path, "/v1/datasets/%s", escaped);
    int rc = 0;
    cJSON *doc = kcli_expect(a, "DELETE", path, NULL, 200, &rc);
    if (!doc) return rc;
    if (a->local.json)
        kcli_print_json(doc);
    else
        printf("deleted dataset %s\n", a->positional[0]);
    cJSON_Delete(doc);
    return 0;
}

/* Exit 0 when kilnd answers that it is ready, 1 otherwise (unreachable, stopping, any
 * error): never 2, which a container's HEALTHCHECK reserves. /v2/health/ready needs no
 * token; the details (version, devices, workers, queue) come from /v1/health when the
 * token lets them. Short timeouts, inside a HEALTHCHECK's usual 5 s. */
int kcli_cmd_health(kcli_args *a)
{
    khttp_request q = {.method = "GET",
                       .base_url = a->url,
                       .path = "/v2/health/ready",
                       .ca_file = a->ca_file,
                       .timeout_seconds = 4};
    khttp_response r;
    char error[1024];
    if (!khttp_do(&q, &r, error, sizeof error)) {
        fprintf(stderr, "kiln: %s is not reachable: %s\n", a->url, error);
        return KCLI_EXIT_RUNTIME;
    }
    cJSON *ready_doc = r.status == 200 ? cJSON_ParseWithLength(r.body, r.body_length) : NULL;
    bool ready = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ready_doc, "ready"));
    if (!ready) {
        if (r.status == 200)
            fprintf(stderr, "kiln: %s is not ready (stopping)\n", a->url);
        else
            kcli_print_error(&r);
        cJSON_Delete(ready_doc);
        khttp_response_free(&r);
        return KCLI_EXIT_RUNTIME;
    }
    khttp_response_free(&r);
    q.path = "/v1/health";
    q.token = a->token;
    cJSON *doc = NULL;
    if (khttp_do(&q, &r, error, sizeof error)) {
        if (r.status == 200) doc = cJSON_ParseWithLength(r.body, r.body_length);
        khttp_response_free(&r);
    }
    if (a->local.json) {
        kcli_print_json(doc ? doc : ready_doc);
    } else if (!doc) {
        printf("%s ready\n", a->url); /* the details need the token */
    } else {
        const cJSON *workers = cJSON_GetObjectItemCaseSensitive(doc, "workers");
        char *devices = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(doc, "devices"));
        printf("kilnd %s at %s: %s, ready, up %.0f s, devices %s, workers %.0f busy of %.0f, "
               "queue %.0f of %.0f\n",
               kcli_string(doc, "version"), a->url, kcli_string(doc, "status"),
               kcli_number(doc, "uptime_seconds", 0), devices ? devices : "?",
               kcli_number(workers, "busy", 0), kcli_number(workers, "total", 0),
               kcli_number(doc, "queue_depth", 0), kcli_number(doc, "queue_capacity", 0));
        free(devices);
    }
    cJSON_Delete(doc);
    cJSON_Delete(ready_doc);
    return 0;
}
