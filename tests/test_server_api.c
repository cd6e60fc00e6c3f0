/*
 * test_server_api.c — kilnd driven over real HTTP, as users and CI meet it: the built
 * daemon started on a free loopback port with a temporary data directory.
 *   end_to_end:      upload a dataset (IDX), create a model, submit, poll to success,
 *                    metrics, checkpoints, weights (checked against a local forward pass
 *                    of the same weights), v2 metadata and inference, idempotent submit.
 *   client_commands: `kiln upload`, `kiln submit --follow`, `kiln jobs`, `kiln cancel`.
 *   bad_requests:    a table of malformed, invalid, unauthorised and illegal requests,
 *                    each with its status and JSON error code; the daemon serves after.
 *   sigkill_resume:  kill -9 mid-training, restart on the same directory, the job
 *                    finishes with unique, increasing metric steps and its accuracy.
 *   sigterm_checkpoints_and_resumes: SIGTERM mid-training exits 0 within 10 s with a
 *                    checkpoint where the job was; after a restart it goes on from there.
 * The data: 8x8 images of 4 classes, class k bright in quadrant k, learnt in seconds.
 */
#include "server_harness.h"

#include "kapi.h"

#include <criterion/criterion.h>
#include <math.h>
#include <zlib.h>

static harness H;

static void teardown(void)
{
    h_cleanup(&H);
}

TestSuite(server_api, .fini = teardown, .timeout = 300);

#define SIDE 8
#define PIXELS (SIDE * SIDE)
#define N_TRAIN 512
#define N_TEST 128
#define SCALE 0.00392156862745098

static const char MODEL[] =
    "{\"name\": \"quads\", \"input_shape\": [1, 8, 8], \"layers\": [{\"type\": \"flatten\"},"
    " {\"type\": \"linear\", \"out_features\": 32}, {\"type\": \"relu\"},"
    " {\"type\": \"linear\", \"out_features\": 4}]}";

/* Sample i of a split: its label and pixels (deterministic). */
static int sample(uint32_t seed, int i, uint8_t *pixels)
{
    uint32_t s = seed * 2654435761u + (uint32_t)i * 40503u + 1;
    int label = i % 4;
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            s = s * 1664525u + 1013904223u;
            int quadrant = (y >= SIDE / 2) * 2 + (x >= SIDE / 2);
            pixels[y * SIDE + x] = (uint8_t)(quadrant == label ? 160 + (s >> 26) : (s >> 27));
        }
    return label;
}

/* The four IDX files under files/: train-images, train-labels, test-images, test-labels. */
static void write_dataset(harness *h)
{
    static uint8_t images[N_TRAIN * PIXELS], labels[N_TRAIN];
    const int counts[2] = {N_TRAIN, N_TEST};
    const char *names[2] = {"train", "test"};
    for (int split = 0; split < 2; split++) {
        for (int i = 0; i < counts[split]; i++)
            labels[i] = (uint8_t)sample((uint32_t)split + 7, i, images + i * PIXELS);
        char path[512];
        int32_t dims[3] = {counts[split], SIDE, SIDE};
        snprintf(path, sizeof path, "%s/%s-images", h->files_dir, names[split]);
        h_write_idx(path, images, 3, dims);
        snprintf(path, sizeof path, "%s/%s-labels", h->files_dir, names[split]);
        h_write_idx(path, labels, 1, dims);
    }
}

static void upload_dataset(harness *h, const char *name)
{
    char path[256], file[512];
    snprintf(path, sizeof path, "{\"name\": \"%s\"}", name);
    cJSON_Delete(h_json(h, "POST", "/v1/datasets", path, 201));
    const char *roles[4] = {"train_images", "train_labels", "test_images", "test_labels"};
    const char *files[4] = {"train-images", "train-labels", "test-images", "test-labels"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "/v1/datasets/%s/files/%s?format=idx", name, roles[i]);
        snprintf(file, sizeof file, "%s/%s", h->files_dir, files[i]);
        khttp_response r = h_request_full(h, "PUT", path, NULL, 0, file, NULL, NULL);
        cr_assert(r.status == 200 || r.status == 201, "PUT %s: %d %s %s", path, r.status, r.body,
                  r.content_type);
        khttp_response_free(&r);
    }
}

static char *job_spec(const char *dataset, const char *extra)
{
    char *text = malloc(1024);
    snprintf(text, 1024,
             "{\"model\": \"quads\", \"data\": {\"dataset\": \"%s\", \"scale\": %.17g},"
             " \"optimizer\": {\"type\": \"adam\", \"lr\": 0.01}, \"batch_size\": 32,"
             " \"seed\": 3%s}",
             dataset, SCALE, extra);
    return text;
}

/* Submits and returns the job id (static buffer per call site is the caller's). */
static void submit(harness *h, const char *spec, char id[64])
{
    cJSON *doc = h_json(h, "POST", "/v1/jobs", spec, 202);
    cr_assert_str_eq(h_string(doc, "state"), "queued");
    snprintf(id, 64, "%s", h_string(doc, "id"));
    cr_assert(id[0], "no job id");
    cJSON_Delete(doc);
}

/* An infer request body for test samples [first, first + n): raw pixels, as the training
 * data (the server applies the job's scale), or with preprocessed the model's inputs
 * (scaled) with "parameters": {"preprocessed": true}; the model's inputs into x. */
static char *infer_body(const char *input_name, int first, int n, float *x, int *labels,
                        bool preprocessed)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", "req-42");
    if (preprocessed)
        cJSON_AddBoolToObject(cJSON_AddObjectToObject(root, "parameters"), "preprocessed", true);
    cJSON *input = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "inputs"), input);
    cJSON_AddStringToObject(input, "name", input_name);
    const int shape[4] = {n, 1, SIDE, SIDE};
    cJSON_AddItemToObject(input, "shape", cJSON_CreateIntArray(shape, 4));
    cJSON_AddStringToObject(input, "datatype", "FP32");
    cJSON *data = cJSON_AddArrayToObject(input, "data");
    uint8_t pixels[PIXELS];
    for (int i = 0; i < n; i++) {
        labels[i] = sample(8, first + i, pixels);
        for (int p = 0; p < PIXELS; p++) {
            x[i * PIXELS + p] = (float)pixels[p] * (float)SCALE; /* as kn_dataset_normalize */
            cJSON_AddItemToArray(data,
                                 cJSON_CreateNumber(preprocessed ? x[i * PIXELS + p] : pixels[p]));
        }
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

/* Infers n test samples; returns the accuracy and fills logits (n x 4). */
static double infer_as(harness *h, const char *path, const char *input_name, int n, float *x,
                       float *logits, bool preprocessed)
{
    int labels[N_TEST];
    char *body = infer_body(input_name, 0, n, x, labels, preprocessed);
    cJSON *doc = h_json(h, "POST", path, body, 200);
    free(body);
    cr_assert_str_eq(h_string(doc, "id"), "req-42", "the request id is echoed");
    cJSON *out = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "outputs"), 0);
    cr_assert_not_null(out, "no outputs");
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(out, "shape");
    cr_assert_eq(cJSON_GetArraySize(shape), 2);
    cr_assert_eq(cJSON_GetArrayItem(shape, 0)->valueint, n);
    cr_assert_eq(cJSON_GetArrayItem(shape, 1)->valueint, 4);
    cr_assert_str_eq(h_string(out, "datatype"), "FP32");
    cJSON *data = cJSON_GetObjectItemCaseSensitive(out, "data");
    cr_assert_eq(cJSON_GetArraySize(data), n * 4);
    int correct = 0;
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int k = 0; k < 4; k++) {
            logits[i * 4 + k] = (float)cJSON_GetArrayItem(data, i * 4 + k)->valuedouble;
            if (logits[i * 4 + k] > logits[i * 4 + best]) best = k;
        }
        correct += best == labels[i];
    }
    cJSON_Delete(doc);
    return (double)correct / n;
}

/* Infers n raw test samples; returns the accuracy and fills logits (n x 4), x the model's
 * inputs. */
static double infer(harness *h, const char *path, const char *input_name, int n, float *x,
                    float *logits)
{
    return infer_as(h, path, input_name, n, x, logits, false);
}

/* Steps of series `name` must be unique and increasing; returns how many points. */
static int check_steps(const cJSON *points, int64_t *last_step)
{
    int64_t previous = -1;
    int count = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, points)
    {
        cr_assert_eq(cJSON_GetArraySize(p), 3, "a point is [step, wall_time, value]");
        int64_t step = (int64_t)cJSON_GetArrayItem(p, 0)->valuedouble;
        cr_assert_gt(step, previous, "steps not unique and increasing: %lld after %lld",
                     (long long)step, (long long)previous);
        previous = step;
        count++;
    }
    *last_step = previous;
    return count;
}

Test(server_api, end_to_end)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    write_dataset(&H);
    cJSON *health = h_json(&H, "GET", "/v1/health", NULL, 200);
    cr_assert(h_string(health, "status")[0], "health has a status");
    cJSON_Delete(health);

    upload_dataset(&H, "quads");
    cJSON *ds = h_json(&H, "GET", "/v1/datasets/quads", NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(ds, "files")), 4);
    cJSON_Delete(ds);

    cJSON *v = h_json(&H, "POST", "/v1/models?validate_only=true", MODEL, 200);
    cr_assert_eq(h_number(v, "parameter_count"), 64 * 32 + 32 + 32 * 4 + 4);
    cJSON_Delete(v);
    cJSON_Delete(h_json(&H, "GET", "/v1/models/quads", NULL, 404)); /* not stored */
    cJSON_Delete(h_json(&H, "POST", "/v1/models", MODEL, 201));
    cJSON *models = h_json(&H, "GET", "/v1/models", NULL, 200);
    char *listed = cJSON_PrintUnformatted(models);
    cr_assert(listed && strstr(listed, "\"quads\""), "GET /v1/models: %s", listed);
    free(listed);
    cJSON_Delete(models);

    char *spec = job_spec("quads", ", \"epochs\": 4, \"checkpoint_every_steps\": 16,"
                                   " \"submission_id\": \"e2e-1\"");
    char id[64], again[64];
    submit(&H, spec, id);
    /* the same submission_id: the same job, not a second one */
    cJSON *retry = h_json(&H, "POST", "/v1/jobs", spec, 200);
    snprintf(again, sizeof again, "%s", h_string(retry, "id"));
    cJSON_Delete(retry);
    free(spec);
    cr_assert_str_eq(again, id, "a retried submission_id gives the same job");

    cJSON *job = h_wait_job(&H, id, 120);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s", cJSON_PrintUnformatted(job));
    cr_assert_eq(h_number(job, "step"), 64);
    cr_assert_eq(h_number(job, "total_steps"), 64);
    cr_assert_str_eq(h_string(job, "requested_device"), "cpu", "no device in the spec: cpu");
    cr_assert_str_eq(h_string(job, "device"), "cpu");
    cJSON_Delete(job);

    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss", id);
    cJSON *m = h_json(&H, "GET", path, NULL, 200);
    int64_t last = 0;
    cr_assert_eq(check_steps(h_series(m, "loss"), &last), 64);
    cr_assert_eq(last, 64);
    cJSON_Delete(m);
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss&after_step=60", id);
    m = h_json(&H, "GET", path, NULL, 200);
    cr_assert_eq(check_steps(h_series(m, "loss"), &last), 4, "after_step=60: steps 61..64");
    cJSON_Delete(m);
    /* A finished job's answer is cached: the same bytes again, and gzip when asked. */
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss", id);
    khttp_response plain1 = h_request(&H, "GET", path, NULL);
    khttp_response plain2 = h_request(&H, "GET", path, NULL);
    cr_assert_eq(plain1.status, 200);
    cr_assert_eq(plain2.body_length, plain1.body_length);
    cr_assert_eq(memcmp(plain1.body, plain2.body, plain1.body_length), 0);
    khttp_request gz_request = {.method = "GET",
                                .base_url = H.url,
                                .path = path,
                                .token = H.token,
                                .extra_headers = "Accept-Encoding: gzip\r\n"};
    khttp_response gz = {0};
    char error[256]; /* also used by the downloads below */
    cr_assert(khttp_do(&gz_request, &gz, error, sizeof error), "%s", error);
    cr_assert_eq(gz.status, 200);
    cr_assert_lt(gz.body_length, plain1.body_length, "gzip body is not smaller");
    char *inflated = malloc(plain1.body_length + 1);
    uLongf inflated_length = (uLongf)plain1.body_length + 1;
    z_stream z = {0};
    cr_assert_eq(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *)gz.body;
    z.avail_in = (uInt)gz.body_length;
    z.next_out = (Bytef *)inflated;
    z.avail_out = (uInt)inflated_length;
    cr_assert_eq(inflate(&z, Z_FINISH), Z_STREAM_END);
    cr_assert_eq(z.total_out, plain1.body_length);
    cr_assert_eq(memcmp(inflated, plain1.body, plain1.body_length), 0);
    inflateEnd(&z);
    free(inflated);
    /* Final answers carry a validator per representation; asked again with it, 304 and no
     * body, whether the answer is cached or computed afresh */
    cr_assert(plain1.etag[0] == '"' && gz.etag[0] == '"', "etags: %s %s", plain1.etag, gz.etag);
    cr_assert_str_eq(plain2.etag, plain1.etag);
    cr_assert_str_neq(gz.etag, plain1.etag, "gzip and plain are different representations");
    char conditional[160];
    snprintf(conditional, sizeof conditional,
             "Accept-Encoding: gzip\r\nIf-None-Match: \"x\", W/%s\r\n", gz.etag);
    gz_request.extra_headers = conditional;
    khttp_response not_modified = {0};
    cr_assert(khttp_do(&gz_request, &not_modified, error, sizeof error), "%s", error);
    cr_assert_eq(not_modified.status, 304);
    cr_assert_eq(not_modified.body_length, 0);
    cr_assert_str_eq(not_modified.etag, gz.etag);
    khttp_response_free(&not_modified);
    snprintf(conditional, sizeof conditional, "If-None-Match: %s\r\n", gz.etag);
    gz_request.extra_headers = conditional; /* the gzip tag does not name the plain answer */
    cr_assert(khttp_do(&gz_request, &not_modified, error, sizeof error), "%s", error);
    cr_assert_eq(not_modified.status, 200);
    cr_assert_eq(not_modified.body_length, plain1.body_length);
    khttp_response_free(&not_modified);
    /* after_step=0 is the same series under a key not cached yet: formatted, then 304 */
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss&after_step=0", id);
    snprintf(conditional, sizeof conditional, "If-None-Match: %s\r\n", plain1.etag);
    cr_assert(khttp_do(&gz_request, &not_modified, error, sizeof error), "%s", error);
    cr_assert_eq(not_modified.status, 304);
    khttp_response_free(&not_modified);
    khttp_response_free(&gz);
    khttp_response_free(&plain1);
    khttp_response_free(&plain2);
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss&max_points=10", id);
    m = h_json(&H, "GET", path, NULL, 200);
    int kept = check_steps(h_series(m, "loss"), &last);
    cr_assert(kept <= 10 && kept >= 2 && last == 64, "max_points=10 kept %d, last %lld", kept,
              (long long)last);
    cJSON_Delete(m);
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics", id);
    m = h_json(&H, "GET", path, NULL, 200);
    const cJSON *acc = h_series(m, "test_accuracy");
    cr_assert_gt(cJSON_GetArraySize(acc), 0, "a test_accuracy series");
    double accuracy =
        cJSON_GetArrayItem(cJSON_GetArrayItem(acc, -1 + cJSON_GetArraySize(acc)), 2)->valuedouble;
    cr_assert_geq(accuracy, 0.95, "test accuracy %.3f", accuracy);
    cJSON_Delete(m);

    snprintf(path, sizeof path, "/v1/jobs/%s/checkpoints", id);
    cJSON *cks = h_json(&H, "GET", path, NULL, 200);
    cr_assert_not_null(cks);
    cJSON_Delete(cks);

    /* the final weights, downloaded and run locally */
    char weights[512];
    snprintf(weights, sizeof weights, "%s/weights.safetensors", H.files_dir);
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", id);
    khttp_request wr = {.method = "GET", .base_url = H.url, .path = path, .out_file = weights};
    khttp_response resp;
    cr_assert(khttp_do(&wr, &resp, error, sizeof error), "%s", error);
    cr_assert_eq(resp.status, 200);
    char weights_tag[64];
    snprintf(weights_tag, sizeof weights_tag, "%s", resp.etag);
    cr_assert(weights_tag[0] == '"', "a download has an ETag");
    khttp_response_free(&resp);
    /* an interrupted download resumes: a range is the file's tail, byte for byte */
    size_t weights_size = 0;
    char *whole = h_slurp(weights, &weights_size);
    cr_assert(whole && weights_size > 1000);
    khttp_request ranged = {.method = "GET",
                            .base_url = H.url,
                            .path = path,
                            .extra_headers = "Range: bytes=1000-\r\n"};
    cr_assert(khttp_do(&ranged, &resp, error, sizeof error), "%s", error);
    cr_assert_eq(resp.status, 206);
    cr_assert_eq(resp.body_length, weights_size - 1000);
    cr_assert_eq(memcmp(resp.body, whole + 1000, weights_size - 1000), 0);
    khttp_response_free(&resp);
    ranged.extra_headers = "Range: bytes=99999999-\r\n";
    cr_assert(khttp_do(&ranged, &resp, error, sizeof error), "%s", error);
    cr_assert_eq(resp.status, 416);
    khttp_response_free(&resp);
    char validator[128];
    snprintf(validator, sizeof validator, "If-None-Match: %s\r\n", weights_tag);
    ranged.extra_headers = validator; /* the client has it already */
    cr_assert(khttp_do(&ranged, &resp, error, sizeof error), "%s", error);
    cr_assert_eq(resp.status, 304);
    cr_assert_eq(resp.body_length, 0);
    khttp_response_free(&resp);
    free(whole);

    cJSON *meta = h_json(&H, "GET", "/v2/models/quads", NULL, 200);
    cJSON *in0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(meta, "inputs"), 0);
    char input_name[64];
    snprintf(input_name, sizeof input_name, "%s", h_string(in0, "name"));
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(in0, "shape");
    cr_assert_eq(cJSON_GetArraySize(shape), 4);
    cr_assert_eq(cJSON_GetArrayItem(shape, 0)->valueint, -1, "-1 for the batch");
    cr_assert_str_eq(h_string(in0, "datatype"), "FP32");
    cJSON_Delete(meta);
    cJSON_Delete(h_json(&H, "GET", "/v2/models/quads/ready", NULL, 200));

    static float x[N_TEST * PIXELS], logits[N_TEST * 4], logits_v[N_TEST * 4];
    double served = infer(&H, "/v2/models/quads/infer", input_name, 64, x, logits);
    cr_assert_geq(served, 0.95, "inference accuracy %.3f", served);
    snprintf(path, sizeof path, "/v2/models/quads/versions/%s/infer", id);
    infer(&H, path, input_name, 64, x, logits_v);
    for (int i = 0; i < 64 * 4; i++) cr_assert_float_eq(logits[i], logits_v[i], 1e-6);
    /* raw pixels scaled by the server (the job's scale, from the weights' metadata) are the
     * inputs a client that scales them itself sends with "preprocessed": true */
    infer_as(&H, path, input_name, 64, x, logits_v, true);
    for (int i = 0; i < 64 * 4; i++) cr_assert_float_eq(logits[i], logits_v[i], 0);

    kapi_errors errors = {0};
    kapi_model_spec *ms = kapi_model_spec_parse(MODEL, strlen(MODEL), &errors);
    cr_assert_not_null(ms);
    kn_module *model = kapi_model_build(ms, NULL);
    cr_assert_eq(kn_module_load_weights(model, weights, true), KN_OK, "%s", kn_last_error());
    kn_scope_begin();
    kn_no_grad_begin();
    kn_tensor *local = kn_module_forward(model, kn_from_floats(x, (int64_t[]){64, 1, 8, 8}, 4));
    cr_assert_not_null(local, "%s", kn_last_error());
    const float *lv = kn_data_f32(kn_contiguous(local));
    for (int i = 0; i < 64 * 4; i++)
        cr_assert_float_eq(logits[i], lv[i], 1e-4 + 1e-4 * fabsf(lv[i]),
                           "served logit %d is %g, local forward %g", i, logits[i], lv[i]);
    kn_no_grad_end();
    kn_scope_end();
    kn_module_free(model);
    kapi_model_spec_free(ms);
    kapi_errors_free(&errors);

    khttp_response prom = h_request(&H, "GET", "/metrics", NULL);
    cr_assert_eq(prom.status, 200);
    cr_assert(strstr(prom.content_type, "text/plain"), "Prometheus text, got %s",
              prom.content_type);
    khttp_response_free(&prom);

    cJSON *jobs = h_json(&H, "GET", "/v1/jobs?state=succeeded", NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(jobs, "jobs")), 1);
    cJSON_Delete(jobs);
}

/* ---- the kiln client commands ------------------------------------------------------- */
static int run_kiln(const char *args, char *out, size_t size)
{
    char command[4096];
    snprintf(command, sizeof command, "%s/kiln %s --url %s 2>&1", KILN_BINARY_DIR, args, H.url);
    return h_run(command, out, size);
}

Test(server_api, client_commands)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    write_dataset(&H);
    char args[2048], out[16384], path[512];
    snprintf(args, sizeof args,
             "upload quads --train-images %1$s/train-images --train-labels %1$s/train-labels "
             "--test-images %1$s/test-images --test-labels %1$s/test-labels",
             H.files_dir);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln upload: %s", out);
    cJSON_Delete(h_json(&H, "POST", "/v1/models", MODEL, 201));

    snprintf(path, sizeof path, "%s/job.json", H.files_dir);
    FILE *f = fopen(path, "w");
    char *spec = job_spec("quads", ", \"epochs\": 2");
    fputs(spec, f);
    fclose(f);
    free(spec);
    snprintf(args, sizeof args, "submit %s --follow", path);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln submit --follow: %s", out);
    cr_assert(strstr(out, "succeeded"), "%s", out);

    cr_assert_eq(run_kiln("jobs --state succeeded", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "job_") && strstr(out, "succeeded"), "kiln jobs: %s", out);

    /* a long job, canceled from the command line: --follow then exits 1 */
    snprintf(path, sizeof path, "%s/long.json", H.files_dir);
    f = fopen(path, "w");
    spec = job_spec("quads", ", \"max_steps\": 1000000");
    fputs(spec, f);
    fclose(f);
    free(spec);
    snprintf(args, sizeof args, "submit %s", path);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "%s", out);
    char id[64] = "";
    sscanf(out, "%63s", id);
    snprintf(args, sizeof args, "cancel %s", id);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln cancel: %s", out);
    cJSON *job = h_wait_job(&H, id, 60);
    cr_assert_str_eq(h_string(job, "state"), "canceled");
    cJSON_Delete(job);
    snprintf(args, sizeof args, "cancel %s", id);
    cr_assert_eq(run_kiln(args, out, sizeof out), 2, "canceling twice is a 409: %s", out);

    /* a rejected spec: exit 2 with the field path */
    snprintf(path, sizeof path, "%s/bad.json", H.files_dir);
    f = fopen(path, "w");
    fputs("{\"model\": \"quads\", \"data\": {\"dataset\": \"quads\"}, \"batch_size\": -1}", f);
    fclose(f);
    snprintf(args, sizeof args, "submit %s", path);
    cr_assert_eq(run_kiln(args, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "batch_size"), "the path is named: %s", out);
}

/* `kiln health` (the containers' HEALTHCHECK): no token needed even when kilnd has one,
 * exit 0 while kilnd is up, 1 (never 2, which HEALTHCHECK reserves) once it is gone. */
Test(server_api, health_command)
{
    h_make_root(&H);
    char token_path[400], out[4096];
    snprintf(token_path, sizeof token_path, "%s/token", H.root);
    int fd = open(token_path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "health-test-token\n", 18), 18);
    close(fd);
    h_start(&H, (const char *const[]){"--token-file", token_path, NULL});
    cr_assert_eq(run_kiln("health", out, sizeof out), 0, "kiln health: %s", out);
    cr_assert(strstr(out, "ready"), "%s", out);
    cr_assert_eq(run_kiln("jobs", out, sizeof out), 2, "the API still needs the token: %s", out);
    cr_assert_eq(run_kiln("health now", out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "takes no argument"), "%s", out);
    int status = h_signal_wait(&H, SIGTERM);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "kilnd exit status %d", status);
    cr_assert_eq(run_kiln("health", out, sizeof out), 1, "kiln health with kilnd stopped: %s", out);
    cr_assert(strstr(out, "not reachable"), "%s", out);
}

/* ---- bad requests ---------------------------------------------------------------------- */
typedef struct bad_request {
    const char *method, *path; /* "{J}" in path: a succeeded job's id */
    const char *body;          /* NULL: none; "@big": 70,000 bytes of JSON; "@file": junk */
    const char *headers;       /* extra header lines */
    const char *host;          /* Host header override */
    bool no_token;             /* send without the bearer token (or with headers' own) */
    int status;
    const char *code; /* v1: error.code; NULL with a v2 route: {"error": "..."} */
} bad_request;

#define INPUT_8x8(n_values) "{\"inputs\": [{\"name\": \"input\", \"shape\": " n_values

static const bad_request BAD[] = {
    /* bodies that are not the JSON object the route wants */
    {"POST", "/v1/models", "{\"name\": ", NULL, NULL, false, 400, "malformed_json"},
    {"POST", "/v1/models", "{\"name\": \"x\",}", NULL, NULL, false, 400, "malformed_json"},
    {"POST", "/v1/models", NULL, NULL, NULL, false, 400, "missing_body"},
    {"POST", "/v1/models", "[1, 2]", NULL, NULL, false, 400, "invalid_body"},
    {"POST", "/v1/models", "{\"name\": \"a\", \"name\": \"b\"}", NULL, NULL, false, 400,
     "duplicate_key"},
    {"POST", "/v1/models", "@big", NULL, NULL, false, 413, "body_too_large"},
    /* model specs: wrong types, unknown fields, bad values, a duplicate name */
    {"POST", "/v1/models", "{\"name\": \"x\", \"input_shape\": \"4\", \"layers\": []}", NULL, NULL,
     false, 400, "invalid_spec"},
    {"POST", "/v1/models",
     "{\"name\": \"x\", \"input_shape\": [4], \"layers\": [{\"type\": \"linear\", "
     "\"out_features\": 2}], \"colour\": 1}",
     NULL, NULL, false, 400, "invalid_spec"},
    {"POST", "/v1/models",
     "{\"name\": \"x\", \"input_shape\": [1, 8, 8], \"layers\": [{\"type\": \"conv2d\", "
     "\"out_channels\": 2, \"kernel_size\": -2}]}",
     NULL, NULL, false, 400, "invalid_spec"},
    {"POST", "/v1/models", MODEL, NULL, NULL, false, 409, "already_exists"},
    {"POST", "/v1/models?validate_only=maybe", MODEL, NULL, NULL, false, 400, "invalid_query"},
    /* job specs */
    {"POST", "/v1/jobs",
     "{\"model\": \"quads\", \"data\": {\"dataset\": \"quads\"}, "
     "\"batch_size\": \"64\"}",
     NULL, NULL, false, 400, "invalid_spec"},
    {"POST", "/v1/jobs",
     "{\"model\": \"quads\", \"data\": {\"dataset\": \"quads\"}, "
     "\"epochs\": 2, \"max_steps\": 10}",
     NULL, NULL, false, 400, "invalid_spec"},
    {"POST", "/v1/jobs",
     "{\"model\": \"quads\", \"data\": {\"train\": {\"format\": \"idx\", "
     "\"images\": \"/etc/passwd\", \"labels\": \"/etc/passwd\"}}}",
     NULL, NULL, false, 400, "invalid_spec"},
    {"POST", "/v1/jobs",
     "{\"model\": \"quads\", \"data\": {\"dataset\": \"quads\"}, "
     "\"bogus\": true}",
     NULL, NULL, false, 400, "invalid_spec"},
    {"POST", "/v1/jobs", "{\"model\": \"nope\", \"data\": {\"dataset\": \"quads\"}}", NULL, NULL,
     false, 404, "model_not_found"},
    {"POST", "/v1/jobs", "{\"model\": \"quads\", \"data\": {\"dataset\": \"nope\"}}", NULL, NULL,
     false, 404, "dataset_not_found"},
    /* unknown ids */
    {"GET", "/v1/jobs/job_0123456789abcdef", NULL, NULL, NULL, false, 404, "not_found"},
    {"GET", "/v1/models/nope", NULL, NULL, NULL, false, 404, "not_found"},
    {"GET", "/v1/datasets/nope", NULL, NULL, NULL, false, 404, "not_found"},
    {"GET", "/v1/jobs/{J}/checkpoints/999999", NULL, NULL, NULL, false, 404, "not_found"},
    {"POST", "/v1/jobs/job_0123456789abcdef/cancel", NULL, NULL, NULL, false, 404, "not_found"},
    /* illegal transitions of a succeeded job */
    {"POST", "/v1/jobs/{J}/cancel", NULL, NULL, NULL, false, 409, "illegal_transition"},
    {"POST", "/v1/jobs/{J}/pause", NULL, NULL, NULL, false, 409, "illegal_transition"},
    {"POST", "/v1/jobs/{J}/resume", NULL, NULL, NULL, false, 409, "illegal_transition"},
    /* query parameters */
    {"GET", "/v1/jobs?state=bogus", NULL, NULL, NULL, false, 400, "invalid_query"},
    {"GET", "/v1/jobs?limit=-1", NULL, NULL, NULL, false, 400, "invalid_query"},
    {"GET", "/v1/jobs/{J}/metrics?after_step=abc", NULL, NULL, NULL, false, 400, "invalid_query"},
    {"GET", "/v1/jobs/{J}/metrics?max_points=-5", NULL, NULL, NULL, false, 400, "invalid_query"},
    /* routes and methods */
    {"GET", "/v1/nothing", NULL, NULL, NULL, false, 404, "not_found"},
    {"DELETE", "/v1/jobs", NULL, NULL, NULL, false, 405, "method_not_allowed"},
    {"PUT", "/v1/models", "{}", NULL, NULL, false, 405, "method_not_allowed"},
    /* uploads */
    {"PUT", "/v1/datasets/quads/files/train_images?format=bogus", "@file", NULL, NULL, false, 400,
     "invalid_query"},
    {"PUT", "/v1/datasets/quads/files/bogus_role?format=idx", "@file", NULL, NULL, false, 400,
     "invalid_role"},
    {"PUT", "/v1/datasets/quads/files/train_images?format=idx", "@file", NULL, NULL, false, 400,
     "invalid_data"},
    {"POST", "/v1/datasets", "{\"name\": \"../etc\"}", NULL, NULL, false, 400, "invalid_value"},
    /* access: token, Host, Origin */
    {"GET", "/v1/jobs", NULL, NULL, NULL, true, 401, "unauthorized"},
    {"GET", "/v1/jobs", NULL, "Authorization: Bearer wrong-token\r\n", NULL, true, 401,
     "unauthorized"},
    {"GET", "/v1/health", NULL, NULL, "evil.example.com", false, 403, "forbidden_host"},
    {"GET", "/v1/health", NULL, "Origin: http://evil.example.com\r\n", NULL, false, 403,
     "forbidden_origin"},
    /* inference (v2 errors are {"error": "..."}) */
    {"POST", "/v2/models/quads/infer",
     INPUT_8x8("[1, 3, 8, 8], \"datatype\": \"FP32\", \"data\": [1, 2, 3]}]}"), NULL, NULL, false,
     400, NULL},
    {"POST", "/v2/models/quads/infer",
     INPUT_8x8("[2, 1, 8, 8], \"datatype\": \"FP32\", \"data\": [1, 2, 3]}]}"), NULL, NULL, false,
     400, NULL},
    {"POST", "/v2/models/quads/infer",
     INPUT_8x8("[1, 64], \"datatype\": \"BYTES\", \"data\": [\"a\"]}]}"), NULL, NULL, false, 400,
     NULL},
    {"POST", "/v2/models/quads/infer", "{\"inputs\": 5}", NULL, NULL, false, 400, NULL},
    {"POST", "/v2/models/quads/infer", "{\"inputs\": [", NULL, NULL, false, 400, NULL},
    {"POST", "/v2/models/nope/infer",
     INPUT_8x8("[1, 64], \"datatype\": \"FP32\", \"data\": [0]}]}"), NULL, NULL, false, 404, NULL},
    {"POST", "/v2/models/quads/versions/job_0123456789abcdef/infer",
     INPUT_8x8("[1, 64], \"datatype\": \"FP32\", \"data\": [0]}]}"), NULL, NULL, false, 404, NULL},
};

/* Checks one bad request; appends a line to failures when it is not answered as listed. */
static void check_bad(harness *h, const bad_request *b, const char *job_id, const char *junk,
                      char *failures, size_t size)
{
    char path[512];
    const char *at = strstr(b->path, "{J}");
    if (at)
        snprintf(path, sizeof path, "%.*s%s%s", (int)(at - b->path), b->path, job_id, at + 3);
    else
        snprintf(path, sizeof path, "%s", b->path);
    char *big = NULL;
    const char *body = b->body, *file = NULL;
    size_t length = body ? strlen(body) : 0;
    if (body && !strcmp(body, "@big")) {
        length = 70000;
        big = malloc(length + 1);
        memset(big, ' ', length);
        memcpy(big, "{\"name\": \"", 10);
        memset(big + 10, 'x', length - 20);
        memcpy(big + length - 10, "\"}        ", 10);
        big[length] = '\0';
        body = big;
    } else if (body && !strcmp(body, "@file")) {
        body = NULL;
        length = 0;
        file = junk;
    }
    char saved[sizeof h->token];
    snprintf(saved, sizeof saved, "%s", h->token);
    if (b->no_token) h->token[0] = '\0';
    khttp_response r = h_request_full(h, b->method, path, body, length, file, b->headers, b->host);
    snprintf(h->token, sizeof h->token, "%s", saved);
    free(big);
    cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    const char *problem = NULL;
    char got_code[64] = "";
    if (cJSON_IsObject(error)) snprintf(got_code, sizeof got_code, "%s", h_string(error, "code"));
    if (r.status != b->status)
        problem = "status";
    else if (!doc)
        problem = "body is not JSON";
    else if (!b->code && !(cJSON_IsString(error) && error->valuestring[0]))
        problem = "want {\"error\": \"message\"}";
    else if (b->code && (strcmp(got_code, b->code) != 0 || !h_string(error, "message")[0]))
        problem = "code or message";
    if (problem) {
        size_t n = strlen(failures);
        snprintf(failures + n, size - n, "  %s %s: %s: got %d %.200s (want %d %s)\n", b->method,
                 path, problem, r.status, r.body ? r.body : r.content_type, b->status,
                 b->code ? b->code : "v2 error");
    }
    cJSON_Delete(doc);
    khttp_response_free(&r);
}

Test(server_api, bad_requests)
{
    h_make_root(&H);
    char token_path[512];
    snprintf(token_path, sizeof token_path, "%s/token", H.root);
    int fd = open(token_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(fd >= 0 && write(fd, "s3cret-token-0123\n", 18) == 18);
    close(fd);
    snprintf(H.token, sizeof H.token, "s3cret-token-0123");
    h_start(&H, (const char *const[]){"--log-level", "error", "--token-file", token_path,
                                      "--max-body-bytes", "65536", NULL});
    write_dataset(&H);
    upload_dataset(&H, "quads");
    cJSON_Delete(h_json(&H, "POST", "/v1/models", MODEL, 201));
    char *spec = job_spec("quads", ", \"max_steps\": 4");
    char id[64];
    submit(&H, spec, id);
    free(spec);
    cJSON *job = h_wait_job(&H, id, 60);
    cr_assert_str_eq(h_string(job, "state"), "succeeded");
    cJSON_Delete(job);

    char junk[512];
    snprintf(junk, sizeof junk, "%s/junk", H.files_dir);
    FILE *f = fopen(junk, "w");
    fputs("this is not an IDX file\n", f);
    fclose(f);

    size_t n_bad = sizeof BAD / sizeof *BAD;
    cr_assert_geq(n_bad, 30);
    static char failures[65536];
    failures[0] = '\0';
    for (size_t i = 0; i < n_bad; i++) check_bad(&H, &BAD[i], id, junk, failures, sizeof failures);

    /* still serving, and the health routes need no token */
    cJSON_Delete(h_json(&H, "GET", "/v1/health", NULL, 200));
    H.token[0] = '\0';
    cJSON_Delete(h_json(&H, "GET", "/v2/health/live", NULL, 200));
    cJSON_Delete(h_json(&H, "GET", "/v2/health/ready", NULL, 200));
    snprintf(H.token, sizeof H.token, "s3cret-token-0123");
    static float x[N_TEST * PIXELS], logits[N_TEST * 4];
    infer(&H, "/v2/models/quads/infer", "input", 4, x, logits);
    cr_assert(!failures[0], "requests not answered as expected:\n%s", failures);
}

/* ---- kill -9 mid-training --------------------------------------------------------------- */
static const char BIG_MODEL[] =
    "{\"name\": \"quads\", \"input_shape\": [1, 8, 8], \"layers\": [{\"type\": \"flatten\"},"
    " {\"type\": \"linear\", \"out_features\": 256}, {\"type\": \"relu\"},"
    " {\"type\": \"linear\", \"out_features\": 256}, {\"type\": \"relu\"},"
    " {\"type\": \"linear\", \"out_features\": 4}]}";

Test(server_api, sigkill_resume)
{
    const int total = 1500;
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    write_dataset(&H);
    upload_dataset(&H, "quads");
    cJSON_Delete(h_json(&H, "POST", "/v1/models", BIG_MODEL, 201));
    char extra[256], id[64], queued[64], path[256];
    snprintf(extra, sizeof extra, ", \"max_steps\": %d, \"checkpoint_every_steps\": 20", total);
    char *spec = job_spec("quads", extra);
    submit(&H, spec, id);
    free(spec);
    spec = job_spec("quads", ", \"max_steps\": 10");
    submit(&H, spec, queued); /* one worker: this one waits in the queue */
    free(spec);

    /* wait until a few checkpoints are behind it, then kill -9 */
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    double step = 0;
    for (double t0 = h_now(); h_now() - t0 < 60; usleep(10000)) {
        cJSON *job = h_json(&H, "GET", path, NULL, 200);
        step = h_number(job, "step");
        cr_assert_str_neq(h_string(job, "state"), "succeeded",
                          "the job ended before the kill: make it longer");
        cJSON_Delete(job);
        if (step >= 90) break;
    }
    cr_assert_geq(step, 90, "the job did not get going");
    h_signal_wait(&H, SIGKILL);

    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    cJSON *job = h_json(&H, "GET", path, NULL, 200);
    printf("sigkill_resume: killed at step >= %.0f; after the restart: %s at step %.0f\n", step,
           h_string(job, "state"), h_number(job, "step"));
    cr_assert_str_neq(h_string(job, "state"), "succeeded", "the job ended before the kill");
    cr_assert_lt(h_number(job, "step"), total);
    cJSON_Delete(job);
    job = h_wait_job(&H, id, 240);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s", cJSON_PrintUnformatted(job));
    cr_assert_eq(h_number(job, "step"), total);
    cJSON_Delete(job);
    job = h_wait_job(&H, queued, 60);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "the queued job survived");
    cJSON_Delete(job);

    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss,test_accuracy", id);
    cJSON *m = h_json(&H, "GET", path, NULL, 200);
    int64_t last = 0;
    cr_assert_eq(check_steps(h_series(m, "loss"), &last), total, "one loss point per step");
    cr_assert_eq(last, total);
    const cJSON *acc = h_series(m, "test_accuracy");
    check_steps(acc, &last);
    double accuracy =
        cJSON_GetArrayItem(cJSON_GetArrayItem(acc, cJSON_GetArraySize(acc) - 1), 2)->valuedouble;
    cr_assert_geq(accuracy, 0.95, "test accuracy after the resume %.3f", accuracy);
    cJSON_Delete(m);
}

/* SIGTERM mid-training: kilnd checkpoints the running job where it is and exits cleanly
 * within 10 s; after a restart the job goes on from that step, not from its last
 * periodic checkpoint (there is none: they are 100,000 steps apart). */
Test(server_api, sigterm_checkpoints_and_resumes)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    write_dataset(&H);
    upload_dataset(&H, "quads");
    cJSON_Delete(h_json(&H, "POST", "/v1/models", BIG_MODEL, 201));
    char id[64], path[256];
    char *spec = job_spec("quads", ", \"max_steps\": 1000000, \"checkpoint_every_steps\": 100000");
    submit(&H, spec, id);
    free(spec);
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    double step = 0;
    for (double t0 = h_now(); h_now() - t0 < 60 && step < 50; usleep(10000)) {
        cJSON *job = h_json(&H, "GET", path, NULL, 200);
        step = h_number(job, "step");
        cJSON_Delete(job);
    }
    cr_assert_geq(step, 50, "the job did not get going");

    double t0 = h_now();
    int status = h_signal_wait(&H, SIGTERM);
    double seconds = h_now() - t0;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "kilnd's exit status %d", status);
    cr_assert_lt(seconds, 10.0, "SIGTERM took %.1f s (at most 10)", seconds);

    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    snprintf(path, sizeof path, "/v1/jobs/%s/checkpoints", id);
    cJSON *list = h_json(&H, "GET", path, NULL, 200);
    double checkpoint = -1;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(list, "checkpoints"))
    {
        if (!strcmp(h_string(c, "kind"), "checkpoint") && h_number(c, "step") > checkpoint)
            checkpoint = h_number(c, "step");
    }
    cJSON_Delete(list);
    cr_assert_geq(checkpoint, step, "no checkpoint at or after step %.0f (newest %.0f)", step,
                  checkpoint);
    /* it resumes from there: wait for progress past it, then stop it for good */
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    double resumed = 0;
    for (double t1 = h_now(); h_now() - t1 < 60 && resumed <= checkpoint + 5; usleep(10000)) {
        cJSON *job = h_json(&H, "GET", path, NULL, 200);
        resumed = h_number(job, "step");
        cJSON_Delete(job);
    }
    cr_assert_gt(resumed, checkpoint + 5, "the job did not go on after the restart");
    printf("sigterm: at step >= %.0f, exited in %.2f s, checkpoint at %.0f, on to %.0f\n", step,
           seconds, checkpoint, resumed);
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    cJSON_Delete(h_json(&H, "POST", path, NULL, 200));
    cJSON *job = h_wait_job(&H, id, 60);
    cr_assert_str_eq(h_string(job, "state"), "canceled");
    cJSON_Delete(job);
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss", id);
    cJSON *m = h_json(&H, "GET", path, NULL, 200);
    int64_t last = 0;
    int points = check_steps(h_series(m, "loss"), &last);
    cr_assert_eq(points, last, "steps 1..%lld each once, %d points", (long long)last, points);
    cJSON_Delete(m);
}
