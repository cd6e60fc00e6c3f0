/*
 * kclient.h — what the kiln command's files share beyond kcli.h: the parsed arguments of
 * any command (kiln.c parses them with getopt_long from one table of options), and the
 * client commands that drive a running kilnd (client.c: requests and errors; client_jobs.c,
 * client_models.c, client_data.c: the commands).
 *
 * Client exit codes: 0 success, 1 a runtime error (no server, a job that failed or was
 * canceled), 2 a usage error or a request the server refused as invalid (4xx).
 */
#ifndef KCLIENT_H
#define KCLIENT_H

#include "kcli.h"
#include "khttp.h"

#include <cJSON.h>
#include <stdbool.h>

/* Files of `kiln upload`, by role (client_data.c). */
enum {
    KCLI_TRAIN_INPUTS,
    KCLI_TRAIN_LABELS,
    KCLI_TEST_INPUTS,
    KCLI_TEST_LABELS,
    KCLI_TRAIN_CSV,
    KCLI_TEST_CSV,
    KCLI_TRAIN_TEXT, /* a language model's text (issue 12) */
    KCLI_UPLOAD_FILES
};

typedef struct kcli_args {
    const char *command;
    const char *positional[4];
    int n_positional;
    kcli_options local; /* --json, --quiet, --out, --input, --limit, --threads, --log-every */
    /* client commands */
    const char *url;     /* --url, else $KILN_URL, else http://127.0.0.1:8080 */
    char token[512];     /* --token-file FILE, else $KILN_TOKEN */
    const char *ca_file; /* --cacert FILE, else $KILN_CACERT: a private CA for https */
    bool follow, validate_only, force, remove, read_stdin, softmax, lenient;
    const char *state, *output, *format, *version, *strip_prefix, *names;
    long long priority, step, after, max_points;
    const char *files[KCLI_UPLOAD_FILES];
} kcli_args;

/* ---- requests (client.c) -------------------------------------------------------------- */
/* One request to a->url with a's token; prints a connection error ("kiln: URL: why") and
 * returns false when no answer came. body_file streams a file. */
bool kcli_request(const kcli_args *a, const char *method, const char *path, const char *body,
                  const char *body_file, khttp_response *response);
/* The answer as JSON when its status is want (or any 2xx when want is 0); otherwise
 * prints the error and sets *rc (2 for 4xx, 1 otherwise). NULL either way on failure. */
cJSON *kcli_expect(const kcli_args *a, const char *method, const char *path, const char *body,
                   int want, int *rc);
/* Prints an error answer as "kiln: STATUS code" then "path: message" lines; returns the
 * exit code (2 for a 4xx, 1 otherwise). */
int kcli_print_error(const khttp_response *response);
/* Percent-encodes text into out; prints a usage error and returns false when too long. */
bool kcli_escape(const char *text, char *out, size_t size);
/* Prints o (compact) on stdout. */
void kcli_print_json(const cJSON *o);
/* A number from o or its "progress" object; fallback when absent. */
double kcli_number(const cJSON *o, const char *name, double fallback);
/* A string member, "" when absent. */
const char *kcli_string(const cJSON *o, const char *name);
/* "kiln CMD: message" and a pointer to --help; returns 2. */
int kcli_usage_error(const kcli_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A whole file (or stdin for "-") into memory, NUL-terminated; NULL after printing why. */
char *kcli_read_all(const char *path, size_t *size);

/* ---- the commands ------------------------------------------------------------------------ */
int kcli_cmd_submit(kcli_args *a);
int kcli_cmd_jobs(kcli_args *a);
int kcli_cmd_job(kcli_args *a);
int kcli_cmd_cancel(kcli_args *a); /* and pause, resume: a->command says which */
int kcli_cmd_logs(kcli_args *a);
int kcli_cmd_weights(kcli_args *a);
int kcli_cmd_metrics(kcli_args *a);
int kcli_cmd_models(kcli_args *a);
int kcli_cmd_create_model(kcli_args *a);
int kcli_cmd_delete_model(kcli_args *a);
int kcli_cmd_versions(kcli_args *a);
int kcli_cmd_delete_version(kcli_args *a);
int kcli_cmd_alias(kcli_args *a);
int kcli_cmd_upload_weights(kcli_args *a);
int kcli_cmd_infer(kcli_args *a);
int kcli_cmd_upload(kcli_args *a);
int kcli_cmd_datasets(kcli_args *a);
int kcli_cmd_delete_dataset(kcli_args *a);
int kcli_cmd_health(kcli_args *a);

#endif
