/*
 * test_server_protocol.c — the protocol's loose ends (issue 11, items 10-14), in-process on
 * 127.0.0.1: strings cut at NUL (\u0000 in a JSON body, %00 in a URL), a submission_id
 * reused with another spec (409), non-finite and misnamed inference inputs, HEAD on GET
 * routes, conflicting Content-Length headers, HTTP/1.1 without Host, answers that stay
 * UTF-8 whatever they echo, an out-of-range checkpoint step, libmicrohttpd's own errors
 * with the daemon still serving, and the Prometheus label job_id.
 */
#define _GNU_SOURCE
#include "kn_test_http.h"
#include "kn_test_server.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

static kn_test_server T;

static void start(void)
{
    kn_test_server_config(&T);
    kn_test_server_start(&T);
}

static void teardown(void)
{
    kn_test_server_stop(&T);
}

TestSuite(protocol, .init = start, .fini = teardown, .timeout = 60);

static kn_test_reply request(const char *method, const char *path, const char *extra,
                             const char *body)
{
    return kn_test_http(T.server->port, method, path, extra, body, body ? strlen(body) : 0);
}

/* Whether text is well-formed UTF-8, by the C library's own decoder (not kilnd's). */
static bool valid_utf8(const char *text, size_t length)
{
    cr_assert_not_null(setlocale(LC_CTYPE, "C.UTF-8"), "no C.UTF-8 locale");
    mbstate_t state;
    memset(&state, 0, sizeof state);
    for (size_t at = 0; at < length;) {
        size_t n = mbrtowc(NULL, text + at, length - at, &state);
        if (n == (size_t)-1 || n == (size_t)-2) return false;
        at += n ? n : 1;
    }
    return true;
}

/* The answer must have this status and a v1 error body of this code (and path, when
 * given), valid UTF-8. */
static void expect_error(kn_test_reply r, int status, const char *code, const char *path)
{
    cr_expect_eq(r.status, status, "status %d, wanted %d: %s", r.status, status, r.body);
    cr_expect(valid_utf8(r.body, r.body_length), "the body is not UTF-8: %s", r.body);
    cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
    const cJSON *e = cJSON_GetObjectItem(doc, "error");
    const cJSON *c = cJSON_GetObjectItem(e, "code"), *p = cJSON_GetObjectItem(e, "path");
    cr_expect(cJSON_IsString(c) && !strcmp(c->valuestring, code), "code, wanted %s: %s", code,
              r.body);
    if (path)
        cr_expect(cJSON_IsString(p) && !strcmp(p->valuestring, path), "path, wanted %s: %s", path,
                  r.body);
    cJSON_Delete(doc);
    kn_test_reply_free(&r);
}

static void expect_status(kn_test_reply r, int status)
{
    cr_expect_eq(r.status, status, "status %d, wanted %d: %s", r.status, status, r.body);
    kn_test_reply_free(&r);
}

#define MODEL(name)                                                                                \
    "{\"name\": \"" name "\", \"input_shape\": [2], \"layers\": [{\"type\": \"linear\", "          \
    "\"out_features\": 2}]}"

/* A model "victim" and a dataset "d" a job can train on. */
static void model_and_dataset(void)
{
    expect_status(request("POST", "/v1/models", NULL, MODEL("victim")), 201);
    expect_status(request("POST", "/v1/datasets/d/files/train", NULL,
                          "{\"inputs\": [[1, 2], [3, 4], [5, 6]], \"labels\": [0, 1, 1]}"),
                  201);
}

/* ---- 10: names and ids cut at NUL ---------------------------------------------------- */

Test(protocol, nul_in_json_strings_is_refused_with_its_path)
{
    model_and_dataset();
    expect_error(request("POST", "/v1/models", NULL, MODEL("a\\u0000b")), 400, "invalid_value",
                 "name");
    expect_status(request("GET", "/v1/models/a", NULL, NULL), 404);
    expect_error(
        request("POST", "/v1/jobs", NULL,
                "{\"model\": \"victim\\u0000zzz\", \"data\": {\"dataset\": \"d\"}, \"epochs\": 1}"),
        400, "invalid_value", "model");
    expect_error(request("POST", "/v1/jobs", NULL,
                         "{\"model\": \"victim\", \"data\": {\"dataset\": \"d\"}, "
                         "\"submission_id\": \"retry\\u0000-7\"}"),
                 400, "invalid_value", "submission_id");
    expect_error(request("POST", "/v1/jobs", NULL,
                         "{\"model\": \"victim\", \"data\": {\"dataset\": \"d\\u0000\"}}"),
                 400, "invalid_value", "data.dataset");
    expect_error(request("POST", "/v1/models", NULL,
                         "{\"name\": \"n\", \"input_shape\": [2], \"layers\": [{\"type\": "
                         "\"flatten\"}, {\"type\": \"linear\\u0000\", \"out_features\": 2}]}"),
                 400, "invalid_value", "layers[1].type");
    expect_error(request("POST", "/v1/datasets", NULL, "{\"name\": \"x\", \"a\\u0000\": 1}"), 400,
                 "invalid_value", NULL);
    /* an escaped backslash before u0000 is text, not a NUL */
    kn_test_reply r = request("POST", "/v1/datasets", NULL,
                              "{\"name\": \"dd\", \"description\": \"C:\\\\u0000\"}");
    cr_expect_eq(r.status, 201, "%s", r.body);
    cr_expect(strstr(r.body, "C:\\\\u0000"), "%s", r.body);
    kn_test_reply_free(&r);
    /* control characters in names were refused already */
    expect_error(request("POST", "/v1/datasets", NULL, "{\"name\": \"a\\u0001b\"}"), 400,
                 "invalid_value", "name");
    /* no job was made by any of these */
    r = request("GET", "/v1/jobs", NULL, NULL);
    cr_expect(strstr(r.body, "\"jobs\":[]"), "%s", r.body);
    kn_test_reply_free(&r);
}

Test(protocol, nul_in_urls_names_nothing)
{
    model_and_dataset();
    expect_status(request("GET", "/v1/models/victim", NULL, NULL), 200);
    expect_error(request("GET", "/v1/models/victim%00zzz", NULL, NULL), 404, "not_found", NULL);
    expect_error(request("DELETE", "/v1/models/victim%00", NULL, NULL), 404, "not_found", NULL);
    expect_status(request("GET", "/v1/models/victim", NULL, NULL), 200);
    expect_error(request("GET", "/v1/datasets/d%00x", NULL, NULL), 404, "not_found", NULL);
}

/* ---- 11: a submission_id reused with another spec ------------------------------------- */

static const char *text_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

Test(protocol, submission_id_with_another_spec_is_a_conflict)
{
    model_and_dataset();
    const char *spec = "{\"model\": \"victim\", \"data\": {\"dataset\": \"d\"}, \"epochs\": 1, "
                       "\"submission_id\": \"nightly-1\"}";
    kn_test_reply r = request("POST", "/v1/jobs", NULL, spec);
    cr_assert_eq(r.status, 202, "%s", r.body);
    cJSON *doc = cJSON_Parse(r.body);
    char id[64];
    snprintf(id, sizeof id, "%s", text_of(doc, "id"));
    cJSON_Delete(doc);
    kn_test_reply_free(&r);
    /* a retry, even with its keys in another order and other spacing, is the same job */
    r = request("POST", "/v1/jobs", NULL,
                "{\"submission_id\":\"nightly-1\",\"epochs\":1,\"data\":{\"dataset\":\"d\"},"
                "\"model\":\"victim\"}");
    cr_expect_eq(r.status, 200, "%s", r.body);
    cr_expect(strstr(r.body, id), "%s", r.body);
    kn_test_reply_free(&r);
    /* another spec under the same id */
    r = request("POST", "/v1/jobs", NULL,
                "{\"model\": \"victim\", \"data\": {\"dataset\": \"d\"}, \"epochs\": 2, "
                "\"submission_id\": \"nightly-1\"}");
    cr_expect_eq(r.status, 409, "%s", r.body);
    doc = cJSON_Parse(r.body);
    const cJSON *e = cJSON_GetObjectItem(doc, "error");
    cr_expect_str_eq(text_of(e, "code"), "conflict");
    cr_expect_str_eq(text_of(e, "job_id"), id);
    cr_expect(strstr(text_of(e, "message"), id), "%s", r.body);
    cJSON_Delete(doc);
    kn_test_reply_free(&r);
    r = request("GET", "/v1/jobs", NULL, NULL);
    const char *first = strstr(r.body, id);
    cr_expect(first && !strstr(first + 1, "\"id\":\"job_"), "a second job: %s", r.body);
    kn_test_reply_free(&r);
}

/* ---- 12: inference inputs --------------------------------------------------------------- */

static void expect_v2_error(const char *path, const char *body, const char *fragment)
{
    kn_test_reply r = request("POST", path, NULL, body);
    cr_expect_eq(r.status, 400, "status %d: %s", r.status, r.body);
    cJSON *doc = cJSON_Parse(r.body);
    const cJSON *e = cJSON_GetObjectItem(doc, "error");
    cr_expect(cJSON_IsString(e) && strstr(e->valuestring, fragment), "\"%s\" lacks \"%s\"", r.body,
              fragment);
    cJSON_Delete(doc);
    kn_test_reply_free(&r);
}

Test(protocol, inference_refuses_non_finite_and_misnamed_inputs)
{
    expect_status(request("POST", "/v1/models", NULL, MODEL("victim")), 201);
    char id[40];
    kn_test_server_add_version(&T, "victim", MODEL("victim"), 5, id);
    const char *p = "/v2/models/victim/infer";
    kn_test_reply r = request("POST", p, NULL,
                              "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 2], "
                              "\"datatype\": \"FP32\", \"data\": [1.5, -2]}]}");
    cr_expect_eq(r.status, 200, "%s", r.body);
    cr_expect_null(strstr(r.body, "null"), "%s", r.body);
    kn_test_reply_free(&r);
    expect_v2_error(p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 2], \"datatype\": "
                    "\"FP32\", \"data\": [1, 1e400]}]}",
                    "inputs[0].data[1]: an infinity is not a finite float32");
    expect_v2_error(p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 2], \"datatype\": "
                    "\"FP64\", \"data\": [1e39, 0]}]}",
                    "inputs[0].data[0]: a number is not a finite float32");
    expect_v2_error(p,
                    "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 2], \"datatype\": "
                    "\"INT64\", \"data\": [[1e39, 0]]}]}",
                    "not a finite float32");
    expect_v2_error(p,
                    "{\"inputs\": [{\"name\": \"pixels\", \"shape\": [1, 2], \"datatype\": "
                    "\"FP32\", \"data\": [1, 2]}]}",
                    "inputs[0].name: the model has one input, named \"input\", got \"pixels\"");
    expect_v2_error(p,
                    "{\"id\": \"r\\u00001\", \"inputs\": [{\"name\": \"input\", \"shape\": [1, 2], "
                    "\"datatype\": \"FP32\", \"data\": [1, 2]}]}",
                    "id: a string may not hold a NUL");
}

/* ---- 13: HTTP loose ends ------------------------------------------------------------------ */

Test(protocol, head_answers_on_get_routes)
{
    kn_test_reply r = request("HEAD", "/v1/health", NULL, NULL);
    cr_expect_eq(r.status, 200, "%s", r.head);
    cr_expect_eq(r.body_length, 0, "HEAD got a body: %s", r.body);
    cr_expect(strcasestr(r.head, "Content-Type: application/json"), "%s", r.head);
    kn_test_reply_free(&r);
    r = request("HEAD", "/v2/health/ready", NULL, NULL);
    cr_expect_eq(r.status, 200);
    cr_expect_eq(r.body_length, 0);
    kn_test_reply_free(&r);
    r = request("HEAD", "/v1/models/none", NULL, NULL);
    cr_expect_eq(r.status, 404);
    kn_test_reply_free(&r);
    r = request("PUT", "/v1/health", NULL, NULL);
    cr_expect_eq(r.status, 405);
    cr_expect(strstr(r.head, "Allow: GET, HEAD"), "%s", r.head);
    kn_test_reply_free(&r);
    r = request("HEAD", "/v1/models", NULL, NULL); /* HEAD where only POST and GET exist */
    cr_expect_eq(r.status, 200);
    kn_test_reply_free(&r);
}

Test(protocol, conflicting_lengths_and_missing_host)
{
    const char *body = "{\"name\": \"len\"}";
    /* kn_test_http sends Content-Length: 15; a second, different one */
    expect_error(request("POST", "/v1/datasets", "Content-Length: 4\r\n", body), 400,
                 "invalid_header", "Content-Length");
    expect_status(request("GET", "/v1/datasets/len", NULL, NULL), 404);
    /* the same value twice is one length */
    expect_status(request("POST", "/v1/datasets", "Content-Length: 15\r\n", body), 201);

    const char *no_host = "GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n";
    kn_test_reply r;
    cr_assert(kn_test_http_exchange(T.server->port, no_host, strlen(no_host), NULL, 0, &r));
    expect_error(r, 400, "missing_host", NULL);
    const char *old = "GET /v2/health/live HTTP/1.0\r\n\r\n"; /* HTTP/1.0 may omit it */
    cr_assert(kn_test_http_exchange(T.server->port, old, strlen(old), NULL, 0, &r));
    expect_status(r, 200);
}

Test(protocol, answers_stay_utf8)
{
    expect_error(request("GET", "/v1/models/%FF%FEx", NULL, NULL), 404, "not_found", NULL);
    expect_error(request("GET", "/v1/no/%C3%28", NULL, NULL), 404, "not_found", NULL);
    expect_error(request("GET", "/v1/health", "Host: \xff\xfe:1\r\n", NULL), 403, "forbidden_host",
                 NULL);
    expect_error(request("GET", "/v1/jobs?state=%E2%82", NULL, NULL), 400, "invalid_query",
                 "state");
    /* a body that is not UTF-8 is not JSON */
    kn_test_reply r = request("POST", "/v1/datasets", NULL, "{\"name\": \"caf\xe9\"}");
    cr_expect(strstr(r.body, "invalid UTF-8 at offset 13"), "%s", r.body);
    expect_error(r, 400, "malformed_json", NULL);
}

Test(protocol, checkpoint_step_out_of_range)
{
    expect_error(request("GET", "/v1/jobs/job_0000000000000000/checkpoints/99999999999999999999",
                         NULL, NULL),
                 400, "invalid_value", "step");
    expect_error(request("GET", "/v1/jobs/job_0000000000000000/checkpoints/-1", NULL, NULL), 400,
                 "invalid_value", "step");
    expect_error(request("GET", "/v1/jobs/job_0000000000000000/checkpoints/12", NULL, NULL), 404,
                 "not_found", NULL);
}

/* What libmicrohttpd answers itself (its bodies are fixed HTML in every version: no option
 * replaces them), with the daemon serving on. */
Test(protocol, library_errors_leave_the_daemon_serving)
{
    size_t big = 40 * 1024; /* over the 32 KiB a connection's headers may take */
    char *extra = malloc(big + 32);
    memcpy(extra, "X-Big: ", 7);
    memset(extra + 7, 'a', big);
    memcpy(extra + 7 + big, "\r\n", 3);
    kn_test_reply r = request("GET", "/v1/health", extra, NULL);
    cr_expect(r.status == 431 || r.status == 413, "a 40 KiB header: %d", r.status);
    kn_test_reply_free(&r);
    char *url = malloc(big + 32);
    memcpy(url, "/v1/models/", 11);
    memset(url + 11, 'b', big);
    url[11 + big] = '\0';
    r = request("GET", url, NULL, NULL);
    cr_expect(r.status == 414 || r.status == 431, "a 40 KiB URL: %d", r.status);
    kn_test_reply_free(&r);
    free(url);
    free(extra);
    char chunked[256];
    snprintf(chunked, sizeof chunked,
             "POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
             "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
             T.server->port);
    if (kn_test_http_exchange(T.server->port, chunked, strlen(chunked), NULL, 0, &r)) {
        cr_expect_eq(r.status, 400, "bad chunking: %d", r.status);
        kn_test_reply_free(&r);
    }
    expect_status(request("GET", "/v2/health/live", NULL, NULL), 200);
}

/* ---- 14: the Prometheus label --------------------------------------------------------------- */

Test(protocol, samples_per_second_label_is_job_id)
{
    kstore *store = ksrv_thread_store(T.server);
    kstore_job job;
    bool created;
    cr_assert_eq(kstore_job_create(store, "{\"model\": \"m\", \"data\": {\"dataset\": \"d\"}}", "m",
                                   "d", NULL, "cpu", 0, 10, &job, &created),
                 KSTORE_OK);
    kstore_job_free(&job);
    cr_assert_eq(kstore_job_claim(store, "cpu", NULL, &job), KSTORE_OK);
    cr_assert_eq(kstore_job_progress(store, job.id, 3, 0, 10, 1234.5, 2, NULL), KSTORE_OK);
    kn_test_reply r = request("GET", "/metrics", NULL, NULL);
    char line[160];
    snprintf(line, sizeof line, "kilnd_job_samples_per_second{job_id=\"%s\",device=\"cpu\"} 1234.5",
             job.id);
    cr_expect(strstr(r.body, line), "/metrics lacks %s:\n%s", line, r.body);
    cr_expect_null(strstr(r.body, "{job="), "a job label clashes with the scrape's: %s", r.body);
    kn_test_reply_free(&r);
    kstore_job_free(&job);
}
