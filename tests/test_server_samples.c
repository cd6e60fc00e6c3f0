/*
 * test_server_samples.c — GET /v1/datasets/{name}/samples over real sockets: a server
 * started in-process on 127.0.0.1 (port 0, a temporary data directory, no workers), a
 * tiny IDX pair uploaded through the upload route, then pages of samples (values as
 * stored, labels, the per-sample shape), the cache seeing a re-upload, and the errors
 * (bad split, limit and offset, unknown dataset, a dataset without that split).
 */
#define _GNU_SOURCE
#include "ksrv.h"
#include "ksrv_http.h"
#include "kn_test_http.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char data_dir[128];
static ksrv_server *server;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void setup(void)
{
    ksrv_config config;
    ksrv_config_defaults(&config);
    snprintf(data_dir, sizeof data_dir, "/tmp/kilnd-samples-XXXXXX");
    cr_assert_not_null(mkdtemp(data_dir));
    snprintf(config.data_dir, sizeof config.data_dir, "%s/data", data_dir);
    config.port = 0;
    config.workers = 0;
    config.http_threads = 2;
    snprintf(config.log_level, sizeof config.log_level, "error");
    char *error = NULL;
    server = ksrv_start(&config, &error);
    cr_assert_not_null(server, "ksrv_start: %s", error ? error : "?");
    cr_assert_gt(server->port, 0);
}

static void teardown(void)
{
    ksrv_stop(server);
    server = NULL;
    nftw(data_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- requests (tests/support/kn_test_http.h) ------------------------------------------ */
typedef kn_test_reply reply;

static reply http(const char *method, const char *path, const void *body, size_t length)
{
    return kn_test_http(server->port, method, path, NULL, body, length);
}

static cJSON *json_of(const reply *r)
{
    cJSON *j = cJSON_Parse(r->body);
    cr_assert_not_null(j, "not JSON: %s", r->body);
    return j;
}

static void expect_error(const char *path, int status, const char *code, const char *field)
{
    reply r = http("GET", path, NULL, 0);
    cr_expect_eq(r.status, status, "%s: status %d, wanted %d: %s", path, r.status, status, r.body);
    cr_expect(strstr(r.head, "application/json"), "%s", r.head);
    cJSON *j = json_of(&r);
    const cJSON *e = cJSON_GetObjectItem(j, "error");
    cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(e, "code")), code, "%s: %s", path,
                     r.body);
    cr_expect(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
    if (field)
        cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(e, "path")), field, "%s", r.body);
    cJSON_Delete(j);
    free(r.head);
}

/* An IDX file of n 3x2 ubyte images whose pixel k of image i is (base + 7i + k) % 256,
 * or of n labels i % 5. */
static unsigned char *idx(int n, bool labels, int base, size_t *size)
{
    *size = labels ? 8 + (size_t)n : 16 + (size_t)n * 6;
    unsigned char *raw = calloc(1, *size);
    raw[2] = 0x08;
    raw[3] = labels ? 1 : 3;
    raw[7] = (unsigned char)n;
    if (labels) {
        for (int i = 0; i < n; i++) raw[8 + i] = (unsigned char)(i % 5);
    } else {
        raw[11] = 3, raw[15] = 2;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 6; k++)
                raw[16 + i * 6 + k] = (unsigned char)((base + 7 * i + k) % 256);
    }
    return raw;
}

static void upload(const char *dataset, const char *role, int n, int base)
{
    char url[160];
    size_t size;
    unsigned char *bytes = idx(n, strstr(role, "labels") != NULL, base, &size);
    snprintf(url, sizeof url, "/v1/datasets/%s/files/%s?format=idx", dataset, role);
    reply r = http("PUT", url, bytes, size);
    cr_assert_eq(r.status, 201, "%s: %s", url, r.body);
    free(r.head);
    free(bytes);
}

static void check_page(const char *path, int offset, int count, int total, int base)
{
    reply r = http("GET", path, NULL, 0);
    cr_assert_eq(r.status, 200, "%s: %s", path, r.body);
    cJSON *j = json_of(&r);
    cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "dataset")), "tiny");
    cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "split")), "test");
    cr_expect_eq(cJSON_GetObjectItem(j, "total")->valueint, total, "%s", r.body);
    const cJSON *shape = cJSON_GetObjectItem(j, "shape");
    cr_assert_eq(cJSON_GetArraySize(shape), 2, "%s", r.body);
    cr_expect_eq(cJSON_GetArrayItem(shape, 0)->valueint, 3);
    cr_expect_eq(cJSON_GetArrayItem(shape, 1)->valueint, 2);
    const cJSON *samples = cJSON_GetObjectItem(j, "samples");
    cr_assert_eq(cJSON_GetArraySize(samples), count, "%s: %s", path, r.body);
    for (int s = 0; s < count; s++) {
        const cJSON *sample = cJSON_GetArrayItem(samples, s);
        int i = offset + s;
        cr_expect_eq(cJSON_GetObjectItem(sample, "index")->valueint, i);
        cr_expect_eq(cJSON_GetObjectItem(sample, "label")->valueint, i % 5);
        const cJSON *data = cJSON_GetObjectItem(sample, "data");
        cr_assert_eq(cJSON_GetArraySize(data), 6);
        for (int k = 0; k < 6; k++) /* unscaled: the stored bytes */
            cr_expect_eq(cJSON_GetArrayItem(data, k)->valuedouble, (base + 7 * i + k) % 256,
                         "sample %d value %d: %s", i, k, r.body);
    }
    cJSON_Delete(j);
    free(r.head);
}

TestSuite(samples, .init = setup, .fini = teardown, .timeout = 60);

Test(samples, pages)
{
    upload("tiny", "test_images", 40, 3);
    upload("tiny", "test_labels", 40, 0);
    check_page("/v1/datasets/tiny/samples", 0, 16, 40, 3); /* defaults: test, 0, 16 */
    check_page("/v1/datasets/tiny/samples?split=test&offset=30&limit=5", 30, 5, 40, 3);
    check_page("/v1/datasets/tiny/samples?split=test&offset=36&limit=256", 36, 4, 40, 3);
    check_page("/v1/datasets/tiny/samples?offset=40", 40, 0, 40, 3);
    check_page("/v1/datasets/tiny/samples?offset=1000000", 40, 0, 40, 3);
    /* cached: the same answer again, quickly */
    for (int i = 0; i < 20; i++)
        check_page("/v1/datasets/tiny/samples?offset=8&limit=2", 8, 2, 40, 3);
    /* a re-upload replaces what the cache held */
    upload("tiny", "test_images", 40, 100);
    check_page("/v1/datasets/tiny/samples?limit=3", 0, 3, 40, 100);
}

Test(samples, errors)
{
    expect_error("/v1/datasets/nothing/samples", 404, "not_found", NULL);
    expect_error("/v1/datasets/..x/samples", 404, "not_found", NULL);
    upload("tiny", "train_images", 10, 0);
    upload("tiny", "train_labels", 10, 0);
    expect_error("/v1/datasets/tiny/samples", 404, "split_not_found", "split");
    reply r = http("GET", "/v1/datasets/tiny/samples?split=train&limit=1", NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    cr_expect(strstr(r.body, "\"split\":\"train\",\"total\":10"), "%s", r.body);
    free(r.head);
    upload("tiny", "test_images", 10, 0); /* labels missing */
    expect_error("/v1/datasets/tiny/samples", 422, "dataset_incomplete", "split");
    expect_error("/v1/datasets/tiny/samples?split=validation", 400, "invalid_value", "split");
    expect_error("/v1/datasets/tiny/samples?split=train&limit=0", 400, "invalid_query", "limit");
    expect_error("/v1/datasets/tiny/samples?split=train&limit=257", 400, "invalid_query", "limit");
    expect_error("/v1/datasets/tiny/samples?split=train&limit=x", 400, "invalid_query", "limit");
    expect_error("/v1/datasets/tiny/samples?split=train&offset=-1", 400, "invalid_query", "offset");
    r = http("POST", "/v1/datasets/tiny/samples", "{}", 2);
    cr_expect_eq(r.status, 405, "%s", r.body);
    free(r.head);
}

/* Numbers in hand-written bodies: the shortest decimal that reads back as the same value,
 * a float when the value is exactly a float, a double otherwise. */
Test(server_text, shortest_numbers_read_back_exactly)
{
    char text[32];
    cr_assert_str_eq((ksrv_format_number(text, 0.1f), text), "0.1");
    cr_assert_str_eq((ksrv_format_number(text, 2.39263749f), text), "2.3926375");
    cr_assert_str_eq((ksrv_format_number(text, 1.0), text), "1");
    cr_assert_str_eq((ksrv_format_number(text, -3.5e-20f), text), "-3.5e-20");
    cr_assert_str_eq((ksrv_format_number(text, 1.0 / 3.0), text), "0.3333333333333333");
    cr_assert_str_eq((ksrv_format_number(text, 0.8408), text), "0.8408");
    cr_assert_str_eq((ksrv_format_number(text, 1e300), text), "1e+300");
    /* random floats and doubles over many magnitudes: exact round trip, never longer
     * than the 9 significant digits a float needs at most */
    uint32_t state = 12345;
    for (int i = 0; i < 20000; i++) {
        state = state * 1664525u + 1013904223u;
        float f = ldexpf((float)(state >> 8) / 16777216.0f, (int)(state % 80) - 40);
        if (i & 1) f = -f;
        int n = ksrv_format_number(text, f);
        cr_assert_eq(n, (int)strlen(text));
        cr_assert_eq(strtof(text, NULL), f, "%.9g printed as %s", (double)f, text);
        char nine[32];
        cr_assert_leq(n, snprintf(nine, sizeof nine, "%.9g", (double)f), "%s longer than %s", text,
                      nine);
        double d = (double)f + (double)f * 1e-12;
        ksrv_format_number(text, d);
        cr_assert_eq(strtod(text, NULL), d, "%.17g printed as %s", d, text);
    }
}
