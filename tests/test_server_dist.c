/*
 * test_server_dist.c — kilnd's distributed jobs ("distributed": {"processes": 2}): two
 * ranks of `kiln train` through mpirun on this machine (the tests skip, saying so,
 * without it), supervised by the daemon:
 *
 *   - a job trains, rank 0's metrics land in the store, the job's JSON shows the world
 *     size and each rank's host, pid and samples/s;
 *   - a rank killed mid-run fails the job with that rank and its signal, or restarts it
 *     from its last checkpoint (max_restarts; the restart is counted);
 *   - cancel reaches every rank; pause checkpoints and resume continues from there;
 *   - kill -9 of kilnd leaves no rank running, and the next kilnd resumes the job;
 *   - bad requests are refused before anything starts, naming the field (more processes
 *     than slots, a batch that does not divide, GPUs that are not there), and a hostfile
 *     host that cannot be reached keeps kilnd from starting.
 */
#include "dist_harness.h"
#include "server_harness.h"

#include <signal.h>

static harness H;
static char hostfile[400];

static void setup(void)
{
    memset(&H, 0, sizeof H);
    h_make_root(&H);
}

static void teardown(void)
{
    h_cleanup(&H);
}

TestSuite(server_dist, .init = setup, .fini = teardown, .timeout = 240);

/* kilnd with a hostfile of 2 slots on this machine, the data set and the model. */
static void start_with_data(void)
{
    d_require_mpirun();
    snprintf(hostfile, sizeof hostfile, "%s/hosts", H.files_dir);
    FILE *f = fopen(hostfile, "w");
    cr_assert_not_null(f);
    fputs("localhost slots=2\n", f);
    fclose(f);
    const char *extra[] = {"--hostfile", hostfile, "--kiln", KILN_BINARY_DIR "/kiln", NULL};
    h_start(&H, extra);
    d_write_dataset(H.files_dir, 1024, 21);
    cJSON_Delete(h_json(&H, "POST", "/v1/datasets", "{\"name\": \"toy\"}", 201));
    char x[400], y[400];
    snprintf(x, sizeof x, "%s/x.npy", H.files_dir);
    snprintf(y, sizeof y, "%s/y.npy", H.files_dir);
    khttp_response r = h_request_full(&H, "PUT", "/v1/datasets/toy/files/train_inputs?format=npy",
                                      NULL, 0, x, NULL, NULL);
    cr_assert_eq(r.status, 201, "%s", r.body);
    khttp_response_free(&r);
    r = h_request_full(&H, "PUT", "/v1/datasets/toy/files/train_labels?format=npy", NULL, 0, y,
                       NULL, NULL);
    cr_assert_eq(r.status, 201, "%s", r.body);
    khttp_response_free(&r);
    /* small, so that the tests stay quick under the sanitizers and a loaded machine; the
     * runs that a test interrupts are long enough never to end on their own */
    cJSON_Delete(h_json(&H, "POST", "/v1/models",
                        "{\"name\": \"wide\", \"input_shape\": [64], \"layers\": ["
                        "{\"type\": \"flatten\"}, {\"type\": \"linear\", \"out_features\": 128},"
                        " {\"type\": \"relu\"}, {\"type\": \"linear\", \"out_features\": 4}]}",
                        201));
}

/* Submits a job of `steps` steps on 2 processes (extra: more "distributed" fields). */
static void submit(const char *extra_distributed, int steps, char *id, size_t size)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"model\": \"wide\", \"data\": {\"dataset\": \"toy\", \"validation_split\": 0.125},"
             " \"optimizer\": {\"type\": \"adam\", \"lr\": 0.001}, \"batch_size\": 64,"
             " \"max_steps\": %d, \"checkpoint_every_steps\": 20, \"validation\": "
             "{\"every_steps\": 40}, \"distributed\": {\"processes\": 2%s}}",
             steps, extra_distributed);
    cJSON *created = h_json(&H, "POST", "/v1/jobs", body, 202);
    snprintf(id, size, "%s", h_string(created, "id"));
    cJSON_Delete(created);
}

static cJSON *get_job(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    return h_json(&H, "GET", path, NULL, 200);
}

/* Waits until the job is running at step >= step with its ranks known; fills pids. */
static void wait_running(const char *id, int64_t step, int pids[2])
{
    for (double t0 = h_now();;) {
        cJSON *job = get_job(id);
        const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(job, "distributed"), "ranks");
        bool known = cJSON_GetArraySize(ranks) == 2;
        for (int r = 0; known && r < 2; r++) {
            pids[r] = (int)h_number(cJSON_GetArrayItem(ranks, r), "pid");
            known = pids[r] > 0;
        }
        bool there = !strcmp(h_string(job, "state"), "running") && h_number(job, "step") >= step;
        char *text = cJSON_PrintUnformatted(job);
        cJSON_Delete(job);
        if (known && there) {
            free(text);
            return;
        }
        if (h_now() - t0 > 120)
            cr_assert_fail("job %s never reached step %lld: %s", id, (long long)step, text);
        free(text);
        usleep(30000);
    }
}

/* Every pid gone within the timeout. */
static bool all_gone(const int *pids, int n, double timeout)
{
    for (double t0 = h_now(); h_now() - t0 < timeout; usleep(50000)) {
        bool any = false;
        for (int i = 0; i < n; i++) any |= pids[i] > 0 && kill(pids[i], 0) == 0;
        if (!any) return true;
    }
    return false;
}

/* The ranks' log, for a failing assertion's message and the sanitizer reports. */
static char *ranks_log(const char *id)
{
    char path[600];
    snprintf(path, sizeof path, "%s/jobs/%s/dist/ranks.log", H.data_dir, id);
    size_t size = 0;
    char *text = h_slurp(path, &size);
    if (text) d_pass_sanitizers("ranks", text);
    return text ? text : strdup("");
}

Test(server_dist, job_trains_on_two_ranks_and_reports_them)
{
    start_with_data();
    char id[64];
    submit("", 120, id, sizeof id);
    cJSON *job = h_wait_job(&H, id, 180);
    char *log = ranks_log(id);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s\n%s", cJSON_PrintUnformatted(job),
                     log);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(job, "distributed");
    cr_assert_eq(h_number(d, "world_size"), 2);
    cr_assert_eq(h_number(d, "restarts"), 0);
    cr_assert_str_eq(h_string(d, "backend"), "mpi");
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(d, "ranks");
    cr_assert_eq(cJSON_GetArraySize(ranks), 2);
    for (int r = 0; r < 2; r++) {
        const cJSON *x = cJSON_GetArrayItem(ranks, r);
        cr_assert_eq(h_number(x, "rank"), r);
        cr_assert_gt(h_number(x, "pid"), 0);
        cr_assert_gt(h_number(x, "samples_per_second"), 0);
        cr_assert(h_string(x, "host")[0]);
    }
    cr_assert_eq(h_number(job, "step"), 120);
    cJSON_Delete(job);
    /* rank 0's metrics, every step of the loss and the validations */
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/metrics?names=loss,val_accuracy", id);
    cJSON *metrics = h_json(&H, "GET", path, NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(h_series(metrics, "loss")), 120);
    /* every 40 steps and at every epoch's end (14 batches) */
    const cJSON *val = h_series(metrics, "val_accuracy");
    cr_assert_geq(cJSON_GetArraySize(val), 120 / 14);
    const cJSON *last = cJSON_GetArrayItem(val, cJSON_GetArraySize(val) - 1);
    cr_assert_eq(cJSON_GetArrayItem(last, 0)->valuedouble, 120);
    cJSON_Delete(metrics);
    /* the final weights, written by rank 0, recorded and served */
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", id);
    khttp_response w = h_request(&H, "GET", path, NULL);
    cr_assert_eq(w.status, 200);
    cr_assert_gt(w.body_length, 1000);
    khttp_response_free(&w);
    free(log);
}

Test(server_dist, a_killed_rank_fails_the_job)
{
    start_with_data();
    char id[64];
    int pids[2];
    submit("", 1000000, id, sizeof id);
    wait_running(id, 5, pids);
    cr_assert_eq(kill(pids[1], SIGKILL), 0);
    cJSON *job = h_wait_job(&H, id, 60);
    char *log = ranks_log(id);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(job, "error");
    cr_assert_str_eq(h_string(job, "state"), "failed", "%s", log);
    cr_assert_str_eq(h_string(error, "code"), "rank_failed");
    char want[128];
    snprintf(want, sizeof want, "rank 1 of 2 (pid %d on ", pids[1]);
    cr_assert(strstr(h_string(error, "message"), want), "%s", h_string(error, "message"));
    cr_assert(strstr(h_string(error, "message"), "killed by signal 9"), "%s",
              h_string(error, "message"));
    cr_assert(all_gone(pids, 2, 10), "a rank outlived the failed job");
    cJSON_Delete(job);
    free(log);
}

/* Cancels a running job and waits until it is canceled. */
static void cancel_and_wait(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    cJSON_Delete(h_json(&H, "POST", path, NULL, 200));
    cJSON *job = h_wait_job(&H, id, 60);
    cr_assert_str_eq(h_string(job, "state"), "canceled");
    cJSON_Delete(job);
}

/* Waits until the job runs again (after a relaunch) past step; returns its JSON. */
static cJSON *wait_relaunched(const char *id, const int old[2], int64_t step)
{
    for (double t0 = h_now();; usleep(30000)) {
        int pids[2];
        wait_running(id, step, pids);
        if (pids[0] != old[0] && pids[1] != old[1]) return get_job(id);
        cr_assert(h_now() - t0 < 120, "job %s was not relaunched", id);
    }
}

/* A rank's own error (a loss gone to NaN): the job fails with its code and message. */
Test(server_dist, a_rank_error_fails_the_job_with_its_message)
{
    start_with_data();
    cJSON *created = h_json(&H, "POST", "/v1/jobs",
                            "{\"model\": \"wide\", \"data\": {\"dataset\": \"toy\"}, "
                            "\"optimizer\": {\"type\": \"sgd\", \"lr\": 1e30}, \"batch_size\": 64,"
                            " \"max_steps\": 1000, \"distributed\": {\"processes\": 2}}",
                            202);
    char id[64];
    snprintf(id, sizeof id, "%s", h_string(created, "id"));
    cJSON_Delete(created);
    cJSON *job = h_wait_job(&H, id, 120);
    char *log = ranks_log(id);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(job, "error");
    cr_assert_str_eq(h_string(job, "state"), "failed", "%s", log);
    cr_assert_str_eq(h_string(error, "code"), "non_finite_loss", "%s", h_string(error, "message"));
    const char *message = h_string(error, "message");
    cr_assert(strstr(message, "of 2 (pid ") && strstr(message, "exited with status 1: step ") &&
                  strstr(message, ": loss is "),
              "%s", message);
    cr_assert_gt(h_number(error, "step"), 0);
    cJSON_Delete(job);
    free(log);
}

Test(server_dist, a_killed_rank_restarts_from_the_last_checkpoint)
{
    start_with_data();
    char id[64];
    int pids[2];
    submit(", \"max_restarts\": 1", 1000000, id, sizeof id);
    wait_running(id, 30, pids); /* the checkpoint of step 20 is there */
    cr_assert_eq(kill(pids[1], SIGKILL), 0);
    cr_assert(all_gone(pids, 2, 15), "the other rank outlived the killed one");
    cJSON *job = wait_relaunched(id, pids, 25);
    char *log = ranks_log(id);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(job, "distributed");
    cr_assert_eq(h_number(d, "restarts"), 1, "%s", log);
    cr_assert(strstr(log, "---- restart 1 of 1: rank 1 of 2"), "%s", log);
    cr_assert(strstr(log, "resuming from step "), "%s", log);
    cJSON_Delete(job);
    free(log);
    cancel_and_wait(id);
}

Test(server_dist, cancel_and_pause_reach_every_rank)
{
    start_with_data();
    char id[64], path[128];
    int pids[2];
    submit("", 1000000, id, sizeof id);
    wait_running(id, 5, pids);
    /* pause: every rank stops after the same step, rank 0 checkpoints it */
    snprintf(path, sizeof path, "/v1/jobs/%s/pause", id);
    cJSON_Delete(h_json(&H, "POST", path, NULL, 200));
    for (double t0 = h_now();; usleep(50000)) {
        cJSON *job = get_job(id);
        bool paused = !strcmp(h_string(job, "state"), "paused");
        cJSON_Delete(job);
        if (paused) break;
        cr_assert(h_now() - t0 < 60, "not paused");
    }
    cr_assert(all_gone(pids, 2, 10), "a rank outlived the pause");
    cJSON *job = get_job(id);
    int64_t paused_at = (int64_t)h_number(job, "step");
    cJSON_Delete(job);
    snprintf(path, sizeof path, "/v1/jobs/%s/checkpoints", id);
    cJSON *list = h_json(&H, "GET", path, NULL, 200);
    bool found = false;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(list, "checkpoints")) found |=
        (int64_t)h_number(c, "step") == paused_at;
    cJSON_Delete(list);
    cr_assert(found, "no checkpoint at the paused step %lld", (long long)paused_at);
    /* resume: new ranks continue from it; then cancel them */
    snprintf(path, sizeof path, "/v1/jobs/%s/resume", id);
    cJSON_Delete(h_json(&H, "POST", path, NULL, 200));
    wait_running(id, paused_at + 5, pids);
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    cJSON_Delete(h_json(&H, "POST", path, NULL, 200));
    job = h_wait_job(&H, id, 60);
    char *log = ranks_log(id);
    cr_assert_str_eq(h_string(job, "state"), "canceled", "%s", log);
    cr_assert(strstr(log, "resuming from step "), "%s", log);
    cr_assert(all_gone(pids, 2, 10), "a rank outlived the cancel");
    cJSON_Delete(job);
    free(log);
}

Test(server_dist, kill_9_of_kilnd_leaves_no_rank_and_the_job_resumes)
{
    start_with_data();
    char id[64];
    int pids[2];
    submit("", 1000000, id, sizeof id);
    wait_running(id, 30, pids); /* the checkpoint of step 20 is there */
    kill(H.pid, SIGKILL);
    waitpid(H.pid, NULL, 0);
    H.pid = 0;
    cr_assert(all_gone(pids, 2, 15), "ranks %d and %d outlived kilnd", pids[0], pids[1]);
    const char *extra[] = {"--hostfile", hostfile, "--kiln", KILN_BINARY_DIR "/kiln", NULL};
    h_start(&H, extra);
    cJSON *job = wait_relaunched(id, pids, 25);
    char *log = ranks_log(id);
    cr_assert(strstr(log, "resuming from step "), "%s", log);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(job, "distributed");
    cr_assert_eq(h_number(d, "restarts"), 0, "a kilnd restart is not a rank's failure");
    cJSON_Delete(job);
    free(log);
    cancel_and_wait(id);
}

static void assert_refused(const char *body, const char *path, const char *text)
{
    khttp_response r = h_request(&H, "POST", "/v1/jobs", body);
    cr_assert_eq(r.status, 400, "%s: %d %s", body, r.status, r.body);
    cJSON *doc = cJSON_Parse(r.body);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    cr_assert_str_eq(h_string(error, "path"), path, "%s", r.body);
    cr_assert(strstr(h_string(error, "message"), text), "%s", r.body);
    cJSON_Delete(doc);
    khttp_response_free(&r);
}

Test(server_dist, bad_requests_are_refused_before_anything_starts)
{
    start_with_data();
    assert_refused("{\"model\": \"wide\", \"data\": {\"dataset\": \"toy\"}, \"batch_size\": 64,"
                   " \"distributed\": {\"processes\": 3}}",
                   "batch_size", "does not divide by distributed.processes (3)");
    assert_refused("{\"model\": \"wide\", \"data\": {\"dataset\": \"toy\"}, \"batch_size\": 60,"
                   " \"distributed\": {\"processes\": 3}}",
                   "distributed.processes", "3 processes, but this server has 2 slots");
    if (kn_cuda_device_count() < 2)
        assert_refused("{\"model\": \"wide\", \"data\": {\"dataset\": \"toy\"}, \"batch_size\": 64,"
                       " \"device\": \"cuda\", \"distributed\": {\"processes\": 2}}",
                       "distributed.devices", "2 processes need 2 GPUs");
    cJSON *jobs = h_json(&H, "GET", "/v1/jobs", NULL, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(jobs, "jobs")), 0);
    cJSON_Delete(jobs);

    /* a host that cannot be reached: kilnd does not start, and says which */
    h_signal_wait(&H, SIGTERM);
    FILE *f = fopen(hostfile, "w");
    fputs("localhost slots=2\nno-such-node.invalid slots=8\n", f);
    fclose(f);
    char kilnd[600], command[2048], *output = NULL;
    snprintf(kilnd, sizeof kilnd, "%s/kilnd", KILN_BINARY_DIR);
    snprintf(command, sizeof command, "%s --port 0 --data-dir %s --hostfile %s 2>&1", kilnd,
             H.data_dir, hostfile);
    int status = d_run(command, &output);
    cr_assert_neq(status, 0, "%s", output);
    cr_assert(strstr(output, "line 2: host no-such-node.invalid is not reachable"), "%s", output);
    free(output);
}
