/*
 * test_server_http.c — kilnd's HTTP side driven over real sockets: a server started
 * in-process on 127.0.0.1 (port 0, a temporary data directory, no workers) and the raw
 * client of tests/support/kn_test_http.h. Health, models, dataset uploads (IDX, gzip),
 * job submission and its idempotent retry, 404/405/413, the bearer token, Host/Origin
 * checks and strict JSON.
 */
#define _GNU_SOURCE
#include "job_memory.h"
#include "ksrv.h"
#include "kn_test_http.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char data_dir[128];
static ksrv_server *server;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void config_for_test(ksrv_config *config)
{
    ksrv_config_defaults(config);
    snprintf(data_dir, sizeof data_dir, "/tmp/kilnd-http-XXXXXX");
    cr_assert_not_null(mkdtemp(data_dir));
    snprintf(config->data_dir, sizeof config->data_dir, "%s/data", data_dir);
    config->port = 0;
    config->workers = 0;
    config->http_threads = 2;
    config->max_body_bytes = 64 * 1024;
    config->max_upload_bytes = 1 << 20;
    snprintf(config->log_level, sizeof config->log_level, "error");
}

static void start(ksrv_config *config)
{
    char *error = NULL;
    server = ksrv_start(config, &error);
    cr_assert_not_null(server, "ksrv_start: %s", error ? error : "?");
    cr_assert_gt(server->port, 0);
}

static void setup(void)
{
    ksrv_config config;
    config_for_test(&config);
    start(&config);
}

static void teardown(void)
{
    ksrv_stop(server);
    server = NULL;
    nftw(data_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- requests (tests/support/kn_test_http.h) ------------------------------------------ */
typedef kn_test_reply reply;

static void reply_free(reply *r)
{
    kn_test_reply_free(r);
}

/* One request on a fresh connection ("Connection: close"); extra is raw header lines. */
static reply http(const char *method, const char *path, const char *extra, const void *body,
                  size_t length)
{
    return kn_test_http(server->port, method, path, extra, body, length);
}

static reply get(const char *path)
{
    return http("GET", path, NULL, NULL, 0);
}

static reply post(const char *path, const char *json)
{
    return http("POST", path, NULL, json, strlen(json));
}

static cJSON *json_of(const reply *r)
{
    cJSON *j = cJSON_Parse(r->body);
    cr_assert_not_null(j, "not JSON: %s", r->body);
    return j;
}

static const char *error_code(cJSON *j)
{
    const cJSON *e = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "code");
    return cJSON_IsString(e) ? e->valuestring : "";
}

static void expect_error(reply r, int status, const char *code)
{
    cr_expect_eq(r.status, status, "status %d, wanted %d: %s", r.status, status, r.body);
    cJSON *j = json_of(&r);
    cr_expect_str_eq(error_code(j), code, "body: %s", r.body);
    cr_expect(cJSON_IsString(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message")));
    cJSON_Delete(j);
    reply_free(&r);
}

static const char *MODEL =
    "{\"name\": \"mlp\", \"input_shape\": [1, 4, 4], \"layers\": [{\"type\": \"flatten\"},"
    " {\"type\": \"linear\", \"out_features\": 8}, {\"type\": \"relu\"},"
    " {\"type\": \"linear\", \"out_features\": 3}]}";

/* ---- tests ------------------------------------------------------------------------ */
TestSuite(http, .init = setup, .fini = teardown, .timeout = 60);

Test(http, health)
{
    reply r = get("/v1/health");
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_expect(strstr(r.head, "application/json"));
    cJSON *j = json_of(&r);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "status")->valuestring, "ok");
    cr_expect_str_eq(cJSON_GetObjectItem(j, "version")->valuestring, KSRV_VERSION);
    cr_expect_eq(cJSON_GetObjectItem(j, "queue_depth")->valueint, 0);
    cJSON_Delete(j);
    reply_free(&r);
    r = get("/metrics");
    cr_expect_eq(r.status, 200);
    cr_expect(strstr(r.body, "kilnd_http_requests_total{route=\"/v1/health\",status=\"200\"} 1"),
              "%s", r.body);
    cr_expect(strstr(r.body, "kilnd_queue_depth 0"));
    reply_free(&r);
}

Test(http, models)
{
    char url[64];
    reply r = post("/v1/models?validate_only=true", MODEL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cJSON *j = json_of(&r);
    cr_expect(cJSON_IsTrue(cJSON_GetObjectItem(j, "valid")));
    cr_expect_eq(cJSON_GetObjectItem(j, "parameter_count")->valueint, 16 * 8 + 8 + 8 * 3 + 3);
    cr_expect(cJSON_GetObjectItem(j, "training_memory_bytes")->valuedouble > 0);
    cJSON_Delete(j);
    reply_free(&r);
    r = get("/v1/models"); /* validate_only stored nothing */
    cr_expect(strstr(r.body, "\"models\":[]"), "%s", r.body);
    reply_free(&r);

    r = post("/v1/models", MODEL);
    cr_expect_eq(r.status, 201, "%s", r.body);
    reply_free(&r);
    expect_error(post("/v1/models", MODEL), 409, "already_exists");
    r = get("/v1/models/mlp");
    cr_expect_eq(r.status, 200);
    j = json_of(&r);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "name")->valuestring, "mlp");
    cr_expect(cJSON_IsObject(cJSON_GetObjectItem(j, "spec")));
    cJSON_Delete(j);
    reply_free(&r);
    r = get("/v1/models");
    cr_expect(strstr(r.body, "\"name\":\"mlp\""), "%s", r.body);
    reply_free(&r);

    /* an invalid spec: 400 with the field path */
    r = post("/v1/models", "{\"name\": \"bad\", \"input_shape\": [4], \"layers\": "
                           "[{\"type\": \"linear\", \"out_features\": -2}]}");
    cr_expect_eq(r.status, 400);
    j = json_of(&r);
    cr_expect_str_eq(error_code(j), "invalid_spec");
    const cJSON *path = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "path");
    cr_expect(cJSON_IsString(path) && strstr(path->valuestring, "layers[0]"), "%s", r.body);
    cJSON_Delete(j);
    reply_free(&r);

    snprintf(url, sizeof url, "/v1/models/mlp");
    r = http("DELETE", url, NULL, NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    reply_free(&r);
    expect_error(get(url), 404, "not_found");
    expect_error(http("DELETE", url, NULL, NULL, 0), 404, "not_found");
}

/* A gzip'd IDX file of n 4x4 ubyte images (labels: n ubytes) in memory. */
static unsigned char *idx_gz(int n, bool labels, size_t *size)
{
    size_t raw_size = labels ? 8 + (size_t)n : 16 + (size_t)n * 16;
    unsigned char *raw = calloc(1, raw_size);
    raw[2] = 0x08;
    raw[3] = labels ? 1 : 3;
    raw[7] = (unsigned char)n;
    if (!labels) raw[11] = 4, raw[15] = 4;
    for (size_t i = labels ? 8 : 16; i < raw_size; i++)
        raw[i] = (unsigned char)(i % (labels ? 3 : 251));
    z_stream z = {0};
    cr_assert_eq(deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t capacity = deflateBound(&z, raw_size);
    unsigned char *out = malloc(capacity);
    z.next_in = raw, z.avail_in = (uInt)raw_size, z.next_out = out, z.avail_out = (uInt)capacity;
    cr_assert_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
    *size = z.total_out;
    deflateEnd(&z);
    free(raw);
    return out;
}

static void upload_fixture(const char *dataset)
{
    char url[128];
    size_t size;
    unsigned char *images = idx_gz(12, false, &size);
    snprintf(url, sizeof url, "/v1/datasets/%s/files/train_images", dataset);
    reply r = http("PUT", url, NULL, images, size);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cJSON *j = json_of(&r);
    cr_expect_eq(cJSON_GetObjectItem(j, "samples")->valueint, 12);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "format")->valuestring, "idx");
    cr_expect(cJSON_IsTrue(cJSON_GetObjectItem(j, "gzip")));
    cJSON_Delete(j);
    reply_free(&r);
    free(images);
    unsigned char *labels = idx_gz(12, true, &size);
    snprintf(url, sizeof url, "/v1/datasets/%s/files/train_labels", dataset);
    r = http("POST", url, NULL, labels, size); /* curl --data-binary posts */
    cr_assert_eq(r.status, 201, "%s", r.body);
    reply_free(&r);
    free(labels);
}

Test(http, datasets)
{
    reply r = post("/v1/datasets", "{\"name\": \"tiny\", \"description\": \"made by a test\"}");
    cr_expect_eq(r.status, 201, "%s", r.body);
    reply_free(&r);
    expect_error(post("/v1/datasets", "{\"name\": \"tiny\"}"), 409, "already_exists");
    expect_error(post("/v1/datasets", "{\"name\": \"../etc\"}"), 400, "invalid_value");
    expect_error(post("/v1/datasets", "{\"name\": \"x\", \"path\": \"/etc\"}"), 400,
                 "unknown_field");
    upload_fixture("tiny");
    r = get("/v1/datasets/tiny");
    cr_expect_eq(r.status, 200);
    cJSON *j = json_of(&r);
    cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "files")), 2, "%s", r.body);
    cr_expect_null(strstr(r.body, data_dir), "no server path is shown: %s", r.body);
    cJSON_Delete(j);
    reply_free(&r);

    /* a truncated IDX, an unknown role, an empty body, a bad format */
    unsigned char bad[20] = {0, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 4, 1, 2, 3, 4};
    expect_error(http("PUT", "/v1/datasets/tiny/files/test_images", NULL, bad, sizeof bad), 400,
                 "invalid_data");
    expect_error(http("PUT", "/v1/datasets/tiny/files/weights", NULL, bad, sizeof bad), 400,
                 "invalid_role");
    expect_error(http("PUT", "/v1/datasets/tiny/files/test_images", NULL, "", 0), 400,
                 "missing_body");
    expect_error(
        http("PUT", "/v1/datasets/tiny/files/test_images?format=zip", NULL, bad, sizeof bad), 400,
        "invalid_query");
    /* inline JSON arrays, and their errors */
    r = post("/v1/datasets/inline/files/test", "{\"inputs\": [[1, 2], [3, 4], [5, 6]], "
                                               "\"labels\": [0, 1, 1]}");
    cr_expect_eq(r.status, 201, "%s", r.body);
    reply_free(&r);
    expect_error(post("/v1/datasets/inline/files/test", "{\"inputs\": [[1, 2], [3]], "
                                                        "\"labels\": [0, 1]}"),
                 400, "invalid_data");
    expect_error(post("/v1/datasets/inline/files/test", "{\"inputs\": [[1]], \"labels\": [\"a\"]}"),
                 400, "invalid_data");
    /* regression and multi-label targets: any finite numbers, or rows of them */
    r = post("/v1/datasets/inline/files/train", "{\"inputs\": [[1], [2]], \"labels\": [-1.5, 68]}");
    cr_expect_eq(r.status, 201, "%s", r.body);
    reply_free(&r);
    r = post("/v1/datasets/inline/files/train",
             "{\"inputs\": [[1], [2]], \"labels\": [[0, 1, 1], [1, 0, 0]]}");
    cr_expect_eq(r.status, 201, "%s", r.body);
    reply_free(&r);
    r = post("/v1/datasets/inline/files/train",
             "{\"inputs\": [[1], [2]], \"labels\": [[0, 1], [1]]}");
    cr_expect(strstr(r.body, "labels[1]: expected a row of 2 finite numbers"), "%s", r.body);
    expect_error(r, 400, "invalid_data");
    /* a missing value in a CSV: refused at upload, naming the sample, line and feature */
    const char *csv = "a,b,label\n1,2,0\nnan,3,1\n";
    r = http("PUT", "/v1/datasets/holes/files/train", NULL, csv, strlen(csv));
    cr_expect_eq(r.status, 400, "%s", r.body);
    cr_expect(strstr(r.body, "sample 1 (line 3) has nan at feature 0"), "%s", r.body);
    reply_free(&r);

    r = http("DELETE", "/v1/datasets/tiny", NULL, NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    reply_free(&r);
    expect_error(get("/v1/datasets/tiny"), 404, "not_found");
}

Test(http, jobs)
{
    reply r = post("/v1/models", MODEL);
    cr_assert_eq(r.status, 201, "%s", r.body);
    reply_free(&r);
    upload_fixture("tiny");
    const char *job = "{\"model\": \"mlp\", \"data\": {\"dataset\": \"tiny\"}, \"batch_size\": 4,"
                      " \"epochs\": 2, \"submission_id\": \"once\"}";
    r = post("/v1/jobs", job);
    cr_assert_eq(r.status, 202, "%s", r.body);
    cJSON *j = json_of(&r);
    char id[64];
    snprintf(id, sizeof id, "%s", cJSON_GetObjectItem(j, "id")->valuestring);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "state")->valuestring, "queued");
    cJSON_Delete(j);
    reply_free(&r);
    r = post("/v1/jobs", job); /* the retried submit is the same job */
    cr_expect_eq(r.status, 200, "%s", r.body);
    j = json_of(&r);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "id")->valuestring, id);
    cJSON_Delete(j);
    reply_free(&r);

    char url[128];
    snprintf(url, sizeof url, "/v1/jobs/%s", id);
    r = get(url);
    cr_expect_eq(r.status, 200);
    j = json_of(&r);
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "progress"), "total_steps")->valueint,
                 6);
    cJSON_Delete(j);
    reply_free(&r);
    r = get("/v1/jobs?state=queued&limit=10");
    cr_expect(strstr(r.body, id), "%s", r.body);
    reply_free(&r);
    expect_error(get("/v1/jobs?state=sleeping"), 400, "invalid_query");
    snprintf(url, sizeof url, "/v1/jobs/%s/metrics?names=loss", id);
    r = get(url);
    cr_expect_eq(r.status, 200);
    cr_expect(strstr(r.body, "\"loss\":[]"), "%s", r.body);
    reply_free(&r);
    expect_error(http("DELETE", "/v1/models/mlp", NULL, NULL, 0), 409, "model_in_use");

    snprintf(url, sizeof url, "/v1/jobs/%s/resume", id);
    r = http("POST", url, NULL, NULL, 0);
    cr_expect_eq(r.status, 409, "%s", r.body);
    cr_expect(strstr(r.body, "\"state\":\"queued\""), "%s", r.body);
    reply_free(&r);
    snprintf(url, sizeof url, "/v1/jobs/%s/cancel", id);
    r = http("POST", url, NULL, NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    cr_expect(strstr(r.body, "\"state\":\"canceled\""), "%s", r.body);
    reply_free(&r);
    snprintf(url, sizeof url, "/v1/jobs/%s/weights", id);
    expect_error(get(url), 404, "no_weights");

    expect_error(post("/v1/jobs", "{\"model\": \"nope\", \"data\": {\"dataset\": \"tiny\"}}"), 404,
                 "model_not_found");
    expect_error(post("/v1/jobs", "{\"model\": \"mlp\", \"data\": {\"dataset\": \"nope\"}}"), 404,
                 "dataset_not_found");
    expect_error(post("/v1/jobs", "{\"model\": \"mlp\", \"data\": {\"train\": {\"format\": \"csv\","
                                  " \"path\": \"/etc/passwd\"}}}"),
                 400, "invalid_spec");
    expect_error(get("/v1/jobs/job_0000000000000000"), 404, "not_found");
}

Test(http, routing_errors)
{
    expect_error(get("/v1/nothing"), 404, "not_found");
    expect_error(get("/v1/jobs/x/y/z"), 404, "not_found");
    reply r = http("PUT", "/v1/health", NULL, NULL, 0);
    cr_expect_eq(r.status, 405);
    cr_expect(strstr(r.head, "Allow: GET"), "%s", r.head);
    reply_free(&r);
    /* over max_body_bytes (64 KiB here): 413, said before or after reading */
    size_t big = 100 * 1024;
    char *body = malloc(big);
    memset(body, ' ', big);
    body[0] = '{', body[big - 1] = '}';
    expect_error(http("POST", "/v1/models", NULL, body, big), 413, "body_too_large");
    free(body);
    size_t huge = 2 << 20; /* over max_upload_bytes */
    body = calloc(1, huge);
    expect_error(http("PUT", "/v1/datasets/d/files/train_images", NULL, body, huge), 413,
                 "body_too_large");
    free(body);
    r = get("/v1/health"); /* still serving */
    cr_expect_eq(r.status, 200);
    reply_free(&r);
}

Test(http, strict_json)
{
    reply r = post("/v1/models", "{\"name\": \"a\",\n \"input_shape\": [4,, 2]}");
    cr_expect_eq(r.status, 400);
    cJSON *j = json_of(&r);
    cr_expect_str_eq(error_code(j), "malformed_json");
    const cJSON *e = cJSON_GetObjectItem(j, "error");
    cr_expect_eq(cJSON_GetObjectItem(e, "offset")->valueint, 33, "%s", r.body);
    cr_expect_eq(cJSON_GetObjectItem(e, "line")->valueint, 2);
    cJSON_Delete(j);
    reply_free(&r);
    r = post("/v1/models",
             "{\"name\": \"a\", \"layers\": [{\"type\": \"relu\", \"type\": \"relu\"}]}");
    cr_expect_eq(r.status, 400);
    j = json_of(&r);
    cr_expect_str_eq(error_code(j), "duplicate_key");
    cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "path")->valuestring,
                     "layers[0].type");
    cJSON_Delete(j);
    reply_free(&r);
    expect_error(post("/v1/models", "{} trailing"), 400, "malformed_json");
    expect_error(post("/v1/models", "[1, 2]"), 400, "invalid_body");
    expect_error(post("/v1/models", ""), 400, "missing_body");
    expect_error(post("/v1/jobs", "{\"Model\": \"x\"}"), 400, "invalid_spec"); /* case-sensitive */
}

Test(http, host_and_origin)
{
    char extra[256];
    expect_error(http("GET", "/v1/health", "Host: evil.example:80\r\n", NULL, 0), 403,
                 "forbidden_host");
    snprintf(extra, sizeof extra, "Host: localhost:%d\r\n", server->port);
    reply r = http("GET", "/v1/health", extra, NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    reply_free(&r);
    expect_error(http("GET", "/v1/health", "Origin: http://evil.example\r\n", NULL, 0), 403,
                 "forbidden_origin");
    snprintf(extra, sizeof extra, "Origin: http://127.0.0.1:%d\r\n", server->port);
    r = http("GET", "/v1/health", extra, NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    reply_free(&r);
}

Test(http, allowed_origins, .init = NULL, .fini = teardown)
{
    ksrv_config config;
    config_for_test(&config);
    snprintf(config.allowed_origins, sizeof config.allowed_origins,
             "http://dash.local:3000, https://ops.example");
    start(&config);
    reply r = http("GET", "/v1/health", "Origin: http://dash.local:3000\r\n", NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    cr_expect(strstr(r.head, "Access-Control-Allow-Origin: http://dash.local:3000"), "%s", r.head);
    reply_free(&r);
    r = http("GET", "/v1/health", "Host: ops.example\r\n", NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    reply_free(&r);
    expect_error(http("GET", "/v1/health", "Origin: http://dash.local:3001\r\n", NULL, 0), 403,
                 "forbidden_origin");
}

static void write_token(const char *path, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "s3cret-token-0123\n", 18), 18);
    close(fd);
    chmod(path, mode);
}

Test(http, token, .init = NULL, .fini = teardown)
{
    ksrv_config config;
    config_for_test(&config);
    snprintf(config.token_file, sizeof config.token_file, "%s/token", data_dir);
    write_token(config.token_file, 0644);
    char *error = NULL;
    cr_expect_null(ksrv_start(&config, &error), "a 0644 token file is refused");
    cr_expect(error && strstr(error, "chmod 600"), "%s", error ? error : "");
    free(error);
    write_token(config.token_file, 0600);
    start(&config);

    expect_error(get("/v1/health"), 401, "unauthorized");
    expect_error(http("GET", "/v1/health", "Authorization: Bearer s3cret-token-012X\r\n", NULL, 0),
                 401, "unauthorized");
    expect_error(http("GET", "/v1/health", "Authorization: Bearer s3cret\r\n", NULL, 0), 401,
                 "unauthorized");
    reply r = http("GET", "/v1/health", "Authorization: Bearer s3cret-token-0123\r\n", NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    reply_free(&r);
    r = get("/v2/health/live"); /* open without a token */
    cr_expect_neq(r.status, 401, "%s", r.body);
    reply_free(&r);
}

Test(config, flags_and_environment)
{
    ksrv_config config;
    ksrv_config_defaults(&config);
    setenv("KILND_WORKERS", "3", 1);
    setenv("KILND_PORT", "9000", 1);
    char *argv[] = {"kilnd", "--port",           "9001", "--max-body-bytes=2M", "--log-level",
                    "debug", "--max-job-memory", "3G"};
    bool help = false;
    char *error = ksrv_config_parse(&config, 8, argv, &help);
    unsetenv("KILND_WORKERS");
    unsetenv("KILND_PORT");
    cr_assert_null(error, "%s", error);
    cr_expect_eq(config.workers, 3);
    cr_expect_eq(config.port, 9001);
    cr_expect_eq(config.max_body_bytes, (size_t)2 << 20);
    cr_expect_eq(config.max_job_memory, (size_t)3 << 30);
    cr_expect_eq(ksrv_job_memory_limit(&config), (int64_t)3 << 30, "the flag is the limit");
    config.max_job_memory = 0; /* unset: most of what the machine has, and never nothing */
    cr_expect_gt(ksrv_job_memory_limit(&config), (int64_t)64 << 20);
    cr_expect_str_eq(config.log_level, "debug");
    char *bad[] = {"kilnd", "--port", "70000"};
    error = ksrv_config_parse(&config, 3, bad, &help);
    cr_expect(error && strstr(error, "--port"));
    free(error);
    char *unknown[] = {"kilnd", "--prot", "1"};
    error = ksrv_config_parse(&config, 3, unknown, &help);
    cr_expect(error && strstr(error, "--prot"));
    free(error);
    char *h[] = {"kilnd", "--help"};
    cr_expect_null(ksrv_config_parse(&config, 2, h, &help));
    cr_expect(help);
}
