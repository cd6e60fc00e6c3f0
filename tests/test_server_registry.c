/*
 * test_server_registry.c — kilnd's model registry and job logs over real HTTP (the built
 * daemon on a free loopback port, tests/server_harness.h):
 *   versions_aliases_default: a model's versions are its succeeded jobs and uploads; the
 *                    default is the newest job (or, with uploads only, the newest upload)
 *                    until the alias "default" says otherwise; v2
 *                    routes serve aliases; aliases move, resolve through each other, are
 *                    refused for missing versions and bad or taken names, and are deleted.
 *   upload_weights:  safetensors uploads checked against the spec: strict, a wrapper's
 *                    prefix (refused with a hint, then ?strip_prefix=), ?strict=false
 *                    listing missing and unexpected keys, shape mismatches, junk, the
 *                    upload cap, immutable names, deleting a version (and its aliases),
 *                    and a name deleted and uploaded again serving the new weights.
 *   delete_model:    409 naming the jobs and versions; 409 model_in_use while a job runs;
 *                    ?force=true deletes jobs, metrics, versions, aliases and files.
 *   init_weights:    warm starts from an alias (pinned at submission) and from a job; the
 *                    wrong version, a failed job, another model's weights are refused.
 *   job_logs:        a job's lines (queued, started, evaluations, checkpoints, the end),
 *                    pages, text, ?follow=true as server-sent events with Last-Event-ID,
 *                    and a failed job's error with its step.
 *   torch_upload_alias_finetune: PyTorch-written weights (names under "net.") uploaded,
 *                    served under an alias with torch's logits, fine-tuned by a job, and
 *                    the job's weights loaded back into torch strictly (skips without
 *                    /usr/bin/python3 and torch).
 * The data: 4 features, 3 Gaussian blobs, as CSV.
 */
#include "server_harness.h"

#include "kn_safetensors.h"

#include <criterion/criterion.h>
#include <math.h>

static harness H;

static void teardown(void)
{
    h_cleanup(&H);
}

TestSuite(server_registry, .fini = teardown, .timeout = 300);

#define N_TRAIN 300
#define N_TEST 90
#define FEATURES H_BLOB_FEATURES
#define CLASSES H_BLOB_CLASSES

static const char MODEL[] = "{\"name\": \"blobs\", \"input_shape\": [4], \"layers\": ["
                            "{\"type\": \"linear\", \"out_features\": 16}, {\"type\": \"relu\"},"
                            " {\"type\": \"linear\", \"out_features\": 3}]}";

/* Starts kilnd with extra flags, uploads the blobs dataset and stores the model. */
static void start(const char *const *extra)
{
    h_start(&H, extra);
    cJSON_Delete(h_json(&H, "POST", "/v1/datasets", "{\"name\": \"blobs\"}", 201));
    const char *roles[2] = {"train", "test"};
    for (int i = 0; i < 2; i++) {
        char file[512], path[256];
        snprintf(file, sizeof file, "%s/%s.csv", H.files_dir, roles[i]);
        h_write_blobs_csv(file, (uint32_t)i + 1, i ? N_TEST : N_TRAIN);
        snprintf(path, sizeof path, "/v1/datasets/blobs/files/%s?format=csv", roles[i]);
        khttp_response r = h_request_full(&H, "PUT", path, NULL, 0, file, NULL, NULL);
        cr_assert(r.status == 200 || r.status == 201, "PUT %s: %d %s", path, r.status, r.body);
        khttp_response_free(&r);
    }
    cJSON_Delete(h_json(&H, "POST", "/v1/models", MODEL, 201));
}

/* Submits a job (extra: more fields) and waits for it; returns the job (caller deletes). */
static cJSON *run_job(const char *extra, const char *want_state, char id[64])
{
    /* the recipe, with extra's fields replacing its own */
    cJSON *spec = cJSON_Parse("{\"model\": \"blobs\", \"data\": {\"dataset\": \"blobs\"},"
                              " \"optimizer\": {\"type\": \"adam\", \"lr\": 0.02},"
                              " \"batch_size\": 30, \"epochs\": 3, \"seed\": 5}");
    char wrapped[2048];
    snprintf(wrapped, sizeof wrapped, "{\"_\": 0%s}", extra ? extra : "");
    cJSON *more = cJSON_Parse(wrapped);
    cr_assert_not_null(more, "%s", wrapped);
    for (cJSON *c = more->child->next; c; c = c->next) {
        cJSON_DeleteItemFromObjectCaseSensitive(spec, c->string);
        cJSON_AddItemToObject(spec, c->string, cJSON_Duplicate(c, true));
    }
    cJSON_Delete(more);
    char *body = cJSON_PrintUnformatted(spec);
    cJSON_Delete(spec);
    cJSON *doc = h_json(&H, "POST", "/v1/jobs", body, 202);
    free(body);
    snprintf(id, 64, "%s", h_string(doc, "id"));
    cJSON_Delete(doc);
    cJSON *job = h_wait_job(&H, id, 120);
    cr_assert_str_eq(h_string(job, "state"), want_state, "job %s", id);
    return job;
}

static void succeed(const char *extra, char id[64])
{
    cJSON_Delete(run_job(extra, "succeeded", id));
}

/* The v2 outputs of path for n inputs x (n x FEATURES) into out; the served version
 * into version (may be NULL). */
static void infer(const char *path, int n, const float *x, float *out, char *version)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *input = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "inputs"), input);
    cJSON_AddStringToObject(input, "name", "input");
    const int shape[2] = {n, FEATURES};
    cJSON_AddItemToObject(input, "shape", cJSON_CreateIntArray(shape, 2));
    cJSON_AddStringToObject(input, "datatype", "FP32");
    cJSON_AddItemToObject(input, "data", cJSON_CreateFloatArray(x, n * FEATURES));
    char *body = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    cJSON *doc = h_json(&H, "POST", path, body, 200);
    free(body);
    cJSON *data = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "outputs"), 0), "data");
    cr_assert_eq(cJSON_GetArraySize(data), n * CLASSES);
    for (int i = 0; i < n * CLASSES; i++) out[i] = (float)cJSON_GetArrayItem(data, i)->valuedouble;
    if (version) snprintf(version, 64, "%s", h_string(doc, "model_version"));
    cJSON_Delete(doc);
}

/* The version the default infer route serves. */
static void served(const char *path, char version[64])
{
    float x[FEATURES], out[CLASSES];
    h_blob(9, 0, x);
    infer(path, 1, x, out, version);
}

/* A request that must answer status with v1 error code. */
static void expect_error(const char *method, const char *path, const char *body, int status,
                         const char *code)
{
    cJSON *doc = h_json(&H, method, path, body, status);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    cr_assert_str_eq(h_string(error, "code"), code, "%s %s", method, path);
    cr_assert(h_string(error, "message")[0], "%s %s: no message", method, path);
    cJSON_Delete(doc);
}

/* PUT a file as version `name` of blobs (query: "" or "?strict=false"...). */
static khttp_response upload(const char *name, const char *query, const char *file)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/models/blobs/versions/%s/weights%s", name, query);
    return h_request_full(&H, "PUT", path, NULL, 0, file, NULL, NULL);
}

static void download(const char *path, const char *file)
{
    khttp_request wr = {.method = "GET", .base_url = H.url, .path = path, .out_file = file};
    khttp_response resp;
    char error[256];
    cr_assert(khttp_do(&wr, &resp, error, sizeof error), "%s", error);
    cr_assert_eq(resp.status, 200, "GET %s", path);
    khttp_response_free(&resp);
}

/* Rewrites a weights file: names get prefix, `drop` (if any) is left out, `extra` added
 * as a [2] tensor, and with `scale` every tensor is multiplied by it. */
static void rewrite(const char *from, const char *to, const char *prefix, const char *drop,
                    const char *extra, float scale)
{
    kn_scope_begin();
    kn_safetensors *file = kn_safetensors_load(from);
    cr_assert_not_null(file, "%s", kn_last_error());
    const char *names[16];
    kn_tensor *tensors[16];
    char buffers[16][128];
    int n = 0;
    for (int i = 0; i < file->count && n < 15; i++) {
        if (drop && !strcmp(file->entries[i].name, drop)) continue;
        snprintf(buffers[n], sizeof buffers[n], "%s%s", prefix, file->entries[i].name);
        names[n] = buffers[n];
        tensors[n] = kn_mul_scalar(file->entries[i].tensor, scale);
        n++;
    }
    if (extra) {
        names[n] = extra;
        tensors[n++] = kn_ones(KN_SHAPE(2), KN_FLOAT32);
    }
    cr_assert_eq(kn_safetensors_save(to, names, tensors, n, NULL, 0), KN_OK, "%s", kn_last_error());
    kn_safetensors_free(file);
    kn_scope_end();
}

static const cJSON *find_version(const cJSON *model, const char *version)
{
    const cJSON *v;
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(model, "versions"))
    {
        if (!strcmp(h_string(v, "version"), version)) return v;
    }
    return NULL;
}

/* Queues a job that would run for hours (extra: more fields); its id into id. */
static void long_job(const char *extra, char id[64])
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"model\": \"blobs\", \"data\": {\"dataset\": \"blobs\"}, \"max_steps\": "
             "100000000%s}",
             extra);
    cJSON *doc = h_json(&H, "POST", "/v1/jobs", body, 202);
    snprintf(id, 64, "%s", h_string(doc, "id"));
    cJSON_Delete(doc);
}

static void cancel_and_wait(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    cJSON_Delete(h_json(&H, "POST", path, NULL, 200));
    cJSON_Delete(h_wait_job(&H, id, 60));
}

/* ---- versions, aliases, the default ------------------------------------------------------ */
Test(server_registry, versions_aliases_default)
{
    start((const char *const[]){"--log-level", "warn", NULL});
    char a[64], b[64], version[64];
    succeed(NULL, a);
    served("/v2/models/blobs/infer", version);
    cr_assert_str_eq(version, a);
    succeed(", \"seed\": 6", b);
    served("/v2/models/blobs/infer", version);
    cr_assert_str_eq(version, b, "without aliases the newest version is the default");

    /* "default" pins what the model serves; a newer job no longer replaces it */
    char body[128], path[256];
    snprintf(body, sizeof body, "{\"version\": \"%s\"}", a);
    cJSON *alias = h_json(&H, "PUT", "/v1/models/blobs/aliases/default", body, 201);
    cr_assert_str_eq(h_string(alias, "version"), a);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(alias, "previous")));
    cJSON_Delete(alias);
    served("/v2/models/blobs/infer", version);
    cr_assert_str_eq(version, a);
    char c[64];
    succeed(", \"seed\": 7", c);
    served("/v2/models/blobs/infer", version);
    cr_assert_str_eq(version, a, "a new job does not change what alias default serves");

    /* production -> b; an alias given as the version resolves to its version */
    snprintf(body, sizeof body, "{\"version\": \"%s\"}", b);
    cJSON_Delete(h_json(&H, "PUT", "/v1/models/blobs/aliases/production", body, 201));
    cJSON_Delete(h_json(&H, "PUT", "/v1/models/blobs/aliases/staging",
                        "{\"version\": \"production\"}", 201));
    alias = h_json(&H, "GET", "/v1/models/blobs/aliases/staging", NULL, 200);
    cr_assert_str_eq(h_string(alias, "version"), b);
    cJSON_Delete(alias);
    served("/v2/models/blobs/versions/production/infer", version);
    cr_assert_str_eq(version, b);
    snprintf(path, sizeof path, "/v2/models/blobs/versions/%s/infer", c);
    served(path, version);
    cr_assert_str_eq(version, c, "a job id is a version too");
    /* moving it answers 200 with the previous version */
    snprintf(body, sizeof body, "{\"version\": \"%s\"}", c);
    alias = h_json(&H, "PUT", "/v1/models/blobs/aliases/production", body, 200);
    cr_assert_str_eq(h_string(alias, "previous"), b);
    cJSON_Delete(alias);
    served("/v2/models/blobs/versions/production/infer", version);
    cr_assert_str_eq(version, c);

    /* the model says it all */
    cJSON *model = h_json(&H, "GET", "/v1/models/blobs", NULL, 200);
    cr_assert_str_eq(h_string(model, "default_version"), a);
    const cJSON *aliases = cJSON_GetObjectItemCaseSensitive(model, "aliases");
    cr_assert_str_eq(h_string(aliases, "production"), c);
    cr_assert_str_eq(h_string(aliases, "default"), a);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(model, "versions")), 3);
    const cJSON *va = find_version(model, a);
    cr_assert_not_null(va);
    cr_assert_str_eq(h_string(va, "kind"), "job");
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(va, "default")));
    cJSON_Delete(model);
    cJSON *list = h_json(&H, "GET", "/v1/models", NULL, 200);
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(list, "models"), 0);
    cr_assert_eq(h_number(first, "version_count"), 3);
    cJSON_Delete(list);
    cJSON *meta = h_json(&H, "GET", "/v2/models/blobs", NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(meta, "versions")), 3);
    cJSON_Delete(meta);
    cJSON *one = h_json(&H, "GET", "/v1/models/blobs/versions/production", NULL, 200);
    cr_assert_str_eq(h_string(one, "version"), c);
    cr_assert_str_eq(h_string(one, "resolved_from"), "production");
    cJSON_Delete(one);

    /* refusals */
    expect_error("PUT", "/v1/models/blobs/aliases/x", "{\"version\": \"nope\"}", 404,
                 "version_not_found");
    expect_error("PUT", "/v1/models/blobs/aliases/job_x", "{\"version\": \"production\"}", 400,
                 "invalid_value");
    expect_error("PUT", "/v1/models/blobs/aliases/x", "{\"version\": 3}", 400, "invalid_value");
    expect_error("PUT", "/v1/models/blobs/aliases/x", "{\"version\": \"production\", \"y\": 1}",
                 400, "invalid_value");
    expect_error("PUT", "/v1/models/nope/aliases/x", "{\"version\": \"production\"}", 404,
                 "not_found");
    expect_error("GET", "/v1/models/blobs/aliases/nope", NULL, 404, "not_found");
    khttp_response r = h_request(&H, "POST", "/v2/models/blobs/versions/nope/infer", "{}");
    cr_assert_eq(r.status, 404);
    cr_assert(strstr(r.body, "unknown version"), "%s", r.body);
    khttp_response_free(&r);

    /* deleting default: the newest version is served again */
    cJSON_Delete(h_json(&H, "DELETE", "/v1/models/blobs/aliases/default", NULL, 200));
    expect_error("DELETE", "/v1/models/blobs/aliases/default", NULL, 404, "not_found");
    served("/v2/models/blobs/infer", version);
    cr_assert_str_eq(version, c);
    cJSON *names = h_json(&H, "GET", "/v1/models/blobs/aliases", NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(names, "aliases")), 2);
    cJSON_Delete(names);
}

/* ---- uploading weights --------------------------------------------------------------------- */
Test(server_registry, upload_weights)
{
    start((const char *const[]){"--log-level", "warn", "--max-upload-bytes", "60000", NULL});
    char job[64], path[256];
    succeed(NULL, job);
    char original[512], file[512];
    snprintf(original, sizeof original, "%s/job.safetensors", H.files_dir);
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", job);
    download(path, original);

    /* the job's own weights, uploaded: the same outputs */
    khttp_response r = upload("copy", "", original);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cJSON *doc = cJSON_Parse(r.body);
    cr_assert_str_eq(h_string(doc, "kind"), "upload");
    cr_assert_str_eq(h_string(doc, "weights_url"), "/v1/models/blobs/versions/copy/weights");
    cJSON_Delete(doc);
    khttp_response_free(&r);
    float x[10 * FEATURES], want[10 * CLASSES], got[10 * CLASSES];
    for (int i = 0; i < 10; i++) h_blob(11, i, x + i * FEATURES);
    snprintf(path, sizeof path, "/v2/models/blobs/versions/%s/infer", job);
    infer(path, 10, x, want, NULL);
    infer("/v2/models/blobs/versions/copy/infer", 10, x, got, NULL);
    for (int i = 0; i < 10 * CLASSES; i++) cr_assert_float_eq(got[i], want[i], 1e-6);
    char version[64];
    served("/v2/models/blobs/infer", version);
    cr_assert_str_eq(version, job, "an upload does not replace the newest job by itself");
    r = upload("copy", "", original);
    cr_assert_eq(r.status, 409, "versions are immutable: %s", r.body);
    khttp_response_free(&r);

    /* a wrapper's names: refused with a hint, then mapped */
    snprintf(file, sizeof file, "%s/prefixed.safetensors", H.files_dir);
    rewrite(original, file, "net.", NULL, NULL, 1);
    r = upload("wrapped", "", file);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert(strstr(r.body, "weights_mismatch") && strstr(r.body, "strip_prefix=net."), "%s",
              r.body);
    doc = cJSON_Parse(r.body);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(error, "missing_keys")), 4);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(error, "unexpected_keys")), 4);
    cJSON_Delete(doc);
    khttp_response_free(&r);
    r = upload("wrapped", "?strip_prefix=net.", file);
    cr_assert_eq(r.status, 201, "%s", r.body);
    khttp_response_free(&r);
    infer("/v2/models/blobs/versions/wrapped/infer", 10, x, got, NULL);
    for (int i = 0; i < 10 * CLASSES; i++) cr_assert_float_eq(got[i], want[i], 1e-6);
    /* the stored file is under Kiln's names: it loads strictly */
    snprintf(file, sizeof file, "%s/wrapped-back.safetensors", H.files_dir);
    download("/v1/models/blobs/versions/wrapped/weights", file);
    kn_safetensors *back = kn_safetensors_load(file);
    cr_assert_not_null(back);
    cr_assert_not_null(kn_safetensors_get(back, "0.weight"));
    cr_assert_null(kn_safetensors_get(back, "net.0.weight"));
    kn_safetensors_free(back);

    /* missing and unexpected keys: refused strictly, listed when not */
    snprintf(file, sizeof file, "%s/partial.safetensors", H.files_dir);
    rewrite(original, file, "", "2.bias", "head.extra", 1);
    r = upload("partial", "", file);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert(strstr(r.body, "2.bias") && strstr(r.body, "head.extra"), "%s", r.body);
    khttp_response_free(&r);
    r = upload("partial", "?strict=false", file);
    cr_assert_eq(r.status, 201, "%s", r.body);
    doc = cJSON_Parse(r.body);
    const cJSON *info = cJSON_GetObjectItemCaseSensitive(doc, "upload");
    cr_assert_str_eq(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(info, "missing_keys"), 0)->valuestring,
        "2.bias");
    cr_assert_str_eq(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(info, "unexpected_keys"), 0)
            ->valuestring,
        "head.extra");
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(info, "strict")));
    cJSON_Delete(doc);
    khttp_response_free(&r);

    /* shapes must agree even when not strict; junk and oversized bodies are refused */
    kn_scope_begin();
    const char *names[] = {"0.weight"};
    kn_tensor *wrong[] = {kn_zeros(KN_SHAPE(16, 5), KN_FLOAT32)};
    snprintf(file, sizeof file, "%s/wrong.safetensors", H.files_dir);
    cr_assert_eq(kn_safetensors_save(file, names, wrong, 1, NULL, 0), KN_OK);
    kn_scope_end();
    r = upload("wrong", "?strict=false", file);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert(strstr(r.body, "0.weight") && strstr(r.body, "weights_mismatch"), "%s", r.body);
    khttp_response_free(&r);
    snprintf(file, sizeof file, "%s/train.csv", H.files_dir);
    r = upload("junk", "", file);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert(strstr(r.body, "invalid_weights") && !strstr(r.body, "/tmp/"),
              "the temporary file's path stays private: %s", r.body);
    khttp_response_free(&r);
    snprintf(file, sizeof file, "%s/big.bin", H.files_dir);
    FILE *f = fopen(file, "w");
    for (int i = 0; i < 70000; i++) fputc('x', f);
    fclose(f);
    r = upload("big", "", file);
    cr_assert_eq(r.status, 413, "%s", r.body);
    khttp_response_free(&r);
    expect_error("PUT", "/v1/models/blobs/versions/job_1/weights", NULL, 400, "invalid_value");
    expect_error("PUT", "/v1/models/blobs/versions/x/weights?strip_prefix=", NULL, 400,
                 "invalid_query");
    expect_error("PUT", "/v1/models/nope/versions/x/weights", NULL, 404, "not_found");
    cJSON_Delete(
        h_json(&H, "PUT", "/v1/models/blobs/aliases/live", "{\"version\": \"copy\"}", 201));
    r = upload("live", "", original);
    cr_assert_eq(r.status, 409, "a version cannot take an alias's name: %s", r.body);
    khttp_response_free(&r);
    expect_error("PUT", "/v1/models/blobs/aliases/copy", "{\"version\": \"wrapped\"}", 409,
                 "conflict");

    /* deleting: an alias holds it; force drops the alias; a job is not deletable here */
    expect_error("DELETE", "/v1/models/blobs/versions/copy", NULL, 409, "version_has_aliases");
    doc = h_json(&H, "DELETE", "/v1/models/blobs/versions/copy?force=true", NULL, 200);
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "aliases_deleted"), 0)
                         ->valuestring,
                     "live");
    cJSON_Delete(doc);
    expect_error("GET", "/v1/models/blobs/aliases/live", NULL, 404, "not_found");
    snprintf(path, sizeof path, "/v1/models/blobs/versions/%s", job);
    expect_error("DELETE", path, NULL, 409, "version_is_job");

    /* a name deleted and uploaded again serves the new weights (the cache forgot it) */
    infer("/v2/models/blobs/versions/wrapped/infer", 10, x, got, NULL);
    cJSON_Delete(h_json(&H, "DELETE", "/v1/models/blobs/versions/wrapped", NULL, 200));
    snprintf(file, sizeof file, "%s/halved.safetensors", H.files_dir);
    rewrite(original, file, "", NULL, NULL, 0.5f);
    r = upload("wrapped", "", file);
    cr_assert_eq(r.status, 201, "%s", r.body);
    khttp_response_free(&r);
    float again[10 * CLASSES];
    infer("/v2/models/blobs/versions/wrapped/infer", 10, x, again, NULL);
    double differ = 0;
    for (int i = 0; i < 10 * CLASSES; i++) differ += fabs(again[i] - got[i]);
    cr_assert_gt(differ, 1e-3, "the re-uploaded version serves its own weights");
}

/* ---- deleting a model -------------------------------------------------------------------- */
Test(server_registry, delete_model)
{
    start((const char *const[]){"--log-level", "warn", NULL});
    char a[64], b[64], path[256], folder[512];
    succeed(NULL, a);
    succeed(", \"seed\": 9", b);
    char original[512];
    snprintf(original, sizeof original, "%s/a.safetensors", H.files_dir);
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", a);
    download(path, original);
    khttp_response r = upload("v1", "", original);
    cr_assert_eq(r.status, 201, "%s", r.body);
    khttp_response_free(&r);
    cJSON_Delete(
        h_json(&H, "PUT", "/v1/models/blobs/aliases/production", "{\"version\": \"v1\"}", 201));

    cJSON *doc = h_json(&H, "DELETE", "/v1/models/blobs", NULL, 409);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    cr_assert_str_eq(h_string(error, "code"), "model_not_empty");
    const char *message = h_string(error, "message");
    cr_assert(strstr(message, a) && strstr(message, b) && strstr(message, "v1") &&
                  strstr(message, "force=true"),
              "%s", message);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(error, "jobs")), 2);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(error, "versions")), 1);
    cJSON_Delete(doc);
    char version[64];
    served("/v2/models/blobs/infer", version); /* nothing was deleted */
    cr_assert_str_eq(version, b);

    /* a job that has not finished blocks even ?force=true */
    char running[64];
    long_job("", running);
    expect_error("DELETE", "/v1/models/blobs?force=true", NULL, 409, "model_in_use");
    cancel_and_wait(running);

    /* metrics of a finished job are cached: the delete must forget them */
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics", a);
    cJSON_Delete(h_json(&H, "GET", path, NULL, 200));
    doc = h_json(&H, "DELETE", "/v1/models/blobs?force=true", NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "jobs")), 3);
    cr_assert_eq(h_number(doc, "versions"), 1);
    cJSON_Delete(doc);
    expect_error("GET", path, NULL, 404, "not_found");
    snprintf(path, sizeof path, "/v1/jobs/%s", b);
    expect_error("GET", path, NULL, 404, "not_found");
    expect_error("GET", "/v1/models/blobs", NULL, 404, "not_found");
    r = h_request(&H, "POST", "/v2/models/blobs/infer", "{}");
    cr_assert_eq(r.status, 404, "%s", r.body);
    khttp_response_free(&r);
    snprintf(folder, sizeof folder, "%s/jobs/%s", H.data_dir, a);
    cr_assert_neq(access(folder, F_OK), 0, "%s is gone", folder);
    snprintf(folder, sizeof folder, "%s/models/blobs", H.data_dir);
    cr_assert_neq(access(folder, F_OK), 0, "%s is gone", folder);

    /* the name can be used again, from scratch */
    cJSON_Delete(h_json(&H, "POST", "/v1/models", MODEL, 201));
    cJSON *model = h_json(&H, "GET", "/v1/models/blobs", NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(model, "versions")), 0);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(model, "aliases")), 0);
    cJSON_Delete(model);
    expect_error("DELETE", "/v1/models/blobs?force=perhaps", NULL, 400, "invalid_query");
    cJSON_Delete(h_json(&H, "DELETE", "/v1/models/blobs", NULL, 200));
}

/* ---- warm starts ----------------------------------------------------------------------- */

/* The first loss point of a job. */
static double first_loss(const char *id)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss", id);
    cJSON *doc = h_json(&H, "GET", path, NULL, 200);
    const cJSON *points = h_series(doc, "loss");
    cr_assert_gt(cJSON_GetArraySize(points), 0);
    double loss = cJSON_GetArrayItem(cJSON_GetArrayItem(points, 0), 2)->valuedouble;
    cJSON_Delete(doc);
    return loss;
}

Test(server_registry, init_weights)
{
    start((const char *const[]){"--log-level", "warn", NULL});
    char base[64], warm[64], from_job[64];
    succeed(", \"epochs\": 8", base);
    double cold = first_loss(base);
    char body[256];
    snprintf(body, sizeof body, "{\"version\": \"%s\"}", base);
    cJSON_Delete(h_json(&H, "PUT", "/v1/models/blobs/aliases/production", body, 201));

    cJSON *job = run_job(", \"epochs\": 1, \"init_weights\": {\"version\": \"production\"}",
                         "succeeded", warm);
    /* pinned: the stored spec names the version the alias named at submission */
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s", warm);
    cJSON *full = h_json(&H, "GET", path, NULL, 200);
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(full, "spec"), "init_weights");
    cr_assert_str_eq(h_string(init, "version"), base);
    cr_assert_str_eq(h_string(init, "alias"), "production");
    cJSON_Delete(full);
    cJSON_Delete(job);
    double warm_loss = first_loss(warm);
    cr_assert_lt(warm_loss, cold * 0.5, "a warm start begins where %s ended: %g vs cold %g", base,
                 warm_loss, cold);
    snprintf(body, sizeof body, ", \"epochs\": 1, \"init_weights\": {\"job\": \"%s\"}", base);
    succeed(body, from_job);
    cr_assert_lt(first_loss(from_job), cold * 0.5);
    snprintf(path, sizeof path, "/v1/jobs/%s/logs?format=text", from_job);
    khttp_response r = h_request(&H, "GET", path, NULL);
    cr_assert(strstr(r.body, "initial weights: job"), "%s", r.body);
    khttp_response_free(&r);

    /* refusals at submission, naming the field */
    static const struct {
        const char *init;
        int status;
        const char *field;
    } BAD[] = {
        {"{\"version\": \"nope\"}", 404, "init_weights.version"},
        {"{\"job\": \"job_0123456789abcdef\"}", 404, "init_weights.job"},
        {"{\"job\": \"x\"}", 400, "init_weights.job"},
        {"{\"version\": \"production\", \"job\": \"job_0123456789abcdef\"}", 400, "init_weights"},
        {"{\"versions\": \"production\"}", 400, "init_weights.versions"},
        {"\"/etc/passwd\"", 400, "init_weights"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        char spec[512];
        snprintf(spec, sizeof spec,
                 "{\"model\": \"blobs\", \"data\": {\"dataset\": \"blobs\"}, \"init_weights\": "
                 "%s}",
                 BAD[i].init);
        cJSON *doc = h_json(&H, "POST", "/v1/jobs", spec, BAD[i].status);
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
        cr_assert_str_eq(h_string(error, "path"), BAD[i].field, "%s", BAD[i].init);
        cJSON_Delete(doc);
    }
    /* a failed job has no weights; another model's weights do not fit */
    char failed[64];
    cJSON_Delete(run_job(", \"optimizer\": {\"type\": \"sgd\", \"lr\": 1e30}", "failed", failed));
    char spec[512];
    snprintf(spec, sizeof spec,
             "{\"model\": \"blobs\", \"data\": {\"dataset\": \"blobs\"}, \"init_weights\": "
             "{\"job\": \"%s\"}}",
             failed);
    cJSON *doc = h_json(&H, "POST", "/v1/jobs", spec, 400);
    cr_assert(
        strstr(h_string(cJSON_GetObjectItemCaseSensitive(doc, "error"), "message"), "failed"));
    cJSON_Delete(doc);
    snprintf(spec, sizeof spec,
             "{\"model\": {\"name\": \"wide\", \"input_shape\": [4], \"layers\": [{\"type\": "
             "\"linear\", \"out_features\": 32}, {\"type\": \"relu\"}, {\"type\": \"linear\", "
             "\"out_features\": 3}]}, \"data\": {\"dataset\": \"blobs\"}, \"init_weights\": "
             "{\"job\": \"%s\"}}",
             base);
    doc = h_json(&H, "POST", "/v1/jobs?validate_only=true", spec, 400);
    cr_assert(strstr(h_string(cJSON_GetObjectItemCaseSensitive(doc, "error"), "message"),
                     "another model"));
    cJSON_Delete(doc);
    /* a version a queued job starts from cannot be deleted */
    char original[512];
    snprintf(original, sizeof original, "%s/base.safetensors", H.files_dir);
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", base);
    download(path, original);
    r = upload("v1", "", original);
    cr_assert_eq(r.status, 201, "%s", r.body);
    khttp_response_free(&r);
    char holder[64];
    long_job(", \"init_weights\": {\"version\": \"v1\"}", holder);
    expect_error("DELETE", "/v1/models/blobs/versions/v1", NULL, 409, "version_in_use");
    cancel_and_wait(holder);
    cJSON_Delete(h_json(&H, "DELETE", "/v1/models/blobs/versions/v1", NULL, 200));
}

/* ---- job logs ------------------------------------------------------------------------------ */
Test(server_registry, job_logs)
{
    start((const char *const[]){"--log-level", "warn", NULL});
    char id[64], path[256];
    succeed(", \"name\": \"blobs baseline\", \"checkpoint_every_steps\": 10, "
            "\"validation\": {\"every_steps\": 10}",
            id);
    snprintf(path, sizeof path, "/v1/jobs/%s/logs", id);
    cJSON *doc = h_json(&H, "GET", path, NULL, 200);
    cr_assert_str_eq(h_string(doc, "state"), "succeeded");
    const cJSON *lines = cJSON_GetObjectItemCaseSensitive(doc, "lines");
    int n = cJSON_GetArraySize(lines);
    cr_assert_geq(n, 6);
    static const char *const EXPECTED[] = {"queued: model blobs",   "started on cpu",
                                           "evaluation at step 10", "checkpoint at step 10",
                                           "evaluation at step 20", "succeeded at step"};
    int at = 0;
    const cJSON *line;
    double previous_seq = 0;
    cJSON_ArrayForEach(line, lines)
    {
        cr_assert_gt(h_number(line, "seq"), previous_seq);
        previous_seq = h_number(line, "seq");
        cr_assert_str_eq(h_string(line, "level"), "info", "%s", h_string(line, "message"));
        if (at < 6 && strstr(h_string(line, "message"), EXPECTED[at])) at++;
    }
    cr_assert_eq(at, 6, "the lines in order; missing \"%s\"", at < 6 ? EXPECTED[at] : "");
    cr_assert(strstr(h_string(cJSON_GetArrayItem(lines, 0), "message"), "blobs baseline"));
    cJSON_Delete(doc);

    /* pages */
    snprintf(path, sizeof path, "/v1/jobs/%s/logs?after=2&limit=2", id);
    doc = h_json(&H, "GET", path, NULL, 200);
    lines = cJSON_GetObjectItemCaseSensitive(doc, "lines");
    cr_assert_eq(cJSON_GetArraySize(lines), 2);
    cr_assert_eq(h_number(cJSON_GetArrayItem(lines, 0), "seq"), 3);
    cr_assert_eq(h_number(doc, "next_after"), 4);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "more")));
    cJSON_Delete(doc);
    snprintf(path, sizeof path, "/v1/jobs/%s/logs?format=text", id);
    khttp_response r = h_request(&H, "GET", path, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.content_type, "text/plain"), "%s", r.content_type);
    cr_assert(strstr(r.body, "Z info  queued: model blobs"), "%s", r.body);
    khttp_response_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s/logs?after=-1", id);
    expect_error("GET", path, NULL, 400, "invalid_query");
    snprintf(path, sizeof path, "/v1/jobs/%s/logs?format=xml", id);
    expect_error("GET", path, NULL, 400, "invalid_query");
    expect_error("GET", "/v1/jobs/job_0123456789abcdef/logs", NULL, 404, "not_found");

    /* following a job from its submission: every line as an event, then end */
    cJSON *queued = h_json(&H, "POST", "/v1/jobs",
                           "{\"model\": \"blobs\", \"data\": {\"dataset\": \"blobs\"}, "
                           "\"epochs\": 2, \"batch_size\": 30}",
                           202);
    char live[64];
    snprintf(live, sizeof live, "%s", h_string(queued, "id"));
    cJSON_Delete(queued);
    snprintf(path, sizeof path, "/v1/jobs/%s/logs?follow=true", live);
    r = h_request(&H, "GET", path, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.content_type, "text/event-stream"), "%s", r.content_type);
    cr_assert(strstr(r.body, "id: 1\nevent: log\ndata: {\"seq\":1,"), "%s", r.body);
    cr_assert(strstr(r.body, "started on cpu") && strstr(r.body, "succeeded at step"), "%s",
              r.body);
    const char *end = strstr(r.body, "event: end\ndata: {\"state\":\"succeeded\"}");
    cr_assert_not_null(end, "%s", r.body);
    cr_assert_null(strstr(end, "event: log"), "the end comes last");
    khttp_response_free(&r);
    /* a reconnect resumes after Last-Event-ID */
    r = h_request_full(&H, "GET", path, NULL, 0, NULL, "Last-Event-ID: 3\r\n", NULL);
    cr_assert_null(strstr(r.body, "\"seq\":3,"), "%s", r.body);
    cr_assert(strstr(r.body, "id: 4\nevent: log\ndata: {\"seq\":4,"), "%s", r.body);
    khttp_response_free(&r);

    /* a failed job: the error with its step */
    char failed[64];
    cJSON_Delete(run_job(", \"optimizer\": {\"type\": \"sgd\", \"lr\": 1e30}", "failed", failed));
    snprintf(path, sizeof path, "/v1/jobs/%s/logs", failed);
    doc = h_json(&H, "GET", path, NULL, 200);
    lines = cJSON_GetObjectItemCaseSensitive(doc, "lines");
    const cJSON *last = cJSON_GetArrayItem(lines, cJSON_GetArraySize(lines) - 1);
    cr_assert_str_eq(h_string(last, "level"), "error");
    cr_assert(strstr(h_string(last, "message"), "failed at step") &&
                  strstr(h_string(last, "message"), "non_finite_loss"),
              "%s", h_string(last, "message"));
    cJSON_Delete(doc);

    /* the run name and the recipe travel with the job */
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    doc = h_json(&H, "GET", path, NULL, 200);
    cr_assert_str_eq(h_string(doc, "name"), "blobs baseline");
    const cJSON *hp = cJSON_GetObjectItemCaseSensitive(doc, "hyperparameters");
    cr_assert_str_eq(h_string(hp, "optimizer"), "adam");
    cr_assert_float_eq(h_number(hp, "lr"), 0.02, 1e-12);
    cr_assert_eq(h_number(hp, "batch_size"), 30);
    cr_assert_eq(h_number(hp, "epochs"), 3);
    cJSON_Delete(doc);
    expect_error("POST", "/v1/jobs",
                 "{\"model\": \"blobs\", \"data\": {\"dataset\": \"blobs\"}, \"name\": \"\"}", 400,
                 "invalid_spec");
}

/* ---- PyTorch in, PyTorch out ---------------------------------------------------------------- */

/* Runs tests/torch_registry.py; its stdout into out. Returns the exit status. */
static int torch_script(const char *command, const char *weights, const char *io, char *out,
                        size_t size)
{
    char line[2048];
    snprintf(line, sizeof line, "/usr/bin/python3 %s/tests/torch_registry.py %s %s %s",
             KILN_SOURCE_DIR, command, weights, io);
    return h_run(line, out, size);
}

Test(server_registry, torch_upload_alias_finetune)
{
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("server_registry.torch_upload_alias_finetune: skipped (no /usr/bin/python3 with "
               "torch)\n");
        return;
    }
    start((const char *const[]){"--log-level", "warn", NULL});
    char weights[512], io[512], out[65536];
    snprintf(weights, sizeof weights, "%s/torch.safetensors", H.files_dir);
    snprintf(io, sizeof io, "%s/io.json", H.files_dir);
    cr_assert_eq(torch_script("make", weights, io, out, sizeof out), 0, "%s", out);
    size_t size;
    char *text = h_slurp(io, &size);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(doc, "inputs");
    const cJSON *logits = cJSON_GetObjectItemCaseSensitive(doc, "logits");
    int n = cJSON_GetArraySize(inputs) / FEATURES;
    cr_assert_eq(n, 8);
    float x[8 * FEATURES], got[8 * CLASSES];
    for (int i = 0; i < n * FEATURES; i++) x[i] = (float)cJSON_GetArrayItem(inputs, i)->valuedouble;

    /* the names are net.0.weight, ...: strict refuses them, strip_prefix maps them */
    khttp_response r = upload("torch-v1", "", weights);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert(strstr(r.body, "strip_prefix=net."), "%s", r.body);
    khttp_response_free(&r);
    r = upload("torch-v1", "?strip_prefix=net.", weights);
    cr_assert_eq(r.status, 201, "%s", r.body);
    khttp_response_free(&r);
    char version[64];
    served("/v2/models/blobs/infer", version);
    cr_assert_str_eq(version, "torch-v1", "a model with uploads only serves its newest upload");
    cJSON_Delete(h_json(&H, "PUT", "/v1/models/blobs/aliases/production",
                        "{\"version\": \"torch-v1\"}", 201));
    infer("/v2/models/blobs/versions/production/infer", n, x, got, version);
    cr_assert_str_eq(version, "torch-v1");
    float before[8 * CLASSES];
    for (int i = 0; i < n * CLASSES; i++) {
        before[i] = (float)cJSON_GetArrayItem(logits, i)->valuedouble;
        cr_assert_float_eq(got[i], before[i], 1e-5, "logit %d: kilnd %g, torch %g", i, got[i],
                           before[i]);
    }
    cJSON_Delete(doc);

    /* fine-tuned from the alias, then back into torch.nn.Sequential strictly */
    char job[64], path[256];
    succeed(", \"epochs\": 2, \"init_weights\": {\"version\": \"production\"}", job);
    snprintf(weights, sizeof weights, "%s/tuned.safetensors", H.files_dir);
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", job);
    download(path, weights);
    cr_assert_eq(torch_script("check", weights, io, out, sizeof out), 0, "%s", out);
    cJSON *torch_logits = cJSON_Parse(out);
    cr_assert(cJSON_IsArray(torch_logits), "%s", out);
    snprintf(path, sizeof path, "/v2/models/blobs/versions/%s/infer", job);
    infer(path, n, x, got, NULL);
    double moved = 0;
    for (int i = 0; i < n * CLASSES; i++) {
        double t = cJSON_GetArrayItem(torch_logits, i)->valuedouble;
        cr_assert_float_eq(got[i], t, 1e-4, "logit %d: kilnd %g, torch %g", i, got[i], t);
        moved += fabs(t - before[i]);
    }
    cr_assert_gt(moved, 1e-2, "the job trained the uploaded weights further");
    cJSON_Delete(torch_logits);
}
