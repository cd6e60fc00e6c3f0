/*
 * test_browser_dashboard.c — the dashboard in a real browser, under ctest: starts kilnd
 * (one worker) on a free loopback port with a temporary data directory holding a
 * finished job of 100,000 metric points per series (written through kstore before
 * kilnd starts), then runs tests/browser/dashboard.test.mjs (playwright-core driving
 * Debian's chromium headless) against it. Screenshots go to KILN_BINARY_DIR/artifacts/.
 * A second, shorter case starts kilnd with --token-file (mode 0600) and runs the
 * script's token flow (KILN_DASHBOARD_TOKEN). Both stop kilnd cleanly and fail on any
 * sanitizer report in its log. Skips with a message when node, chromium or
 * tests/browser/node_modules is missing (scripts/install-web-deps.sh installs them).
 */
#include "server_harness.h"

#include "kstore.h"

#define BIG_POINTS 100000

static harness H;

static void teardown(void)
{
    h_cleanup(&H);
}

/* A succeeded job with BIG_POINTS points in each of loss, lr, val_loss, val_accuracy. */
static void write_big_job(const char *data_dir, char id[40])
{
    char path[600];
    cr_assert_eq(mkdir(data_dir, 0700), 0);
    snprintf(path, sizeof path, "%s/kiln.db", data_dir);
    char *error = NULL;
    kstore *store = kstore_open(path, &error);
    cr_assert_not_null(store, "kstore_open: %s", error ? error : "?");
    cr_assert_eq(kstore_model_put(store, "big",
                                  "{\"name\":\"big\",\"input_shape\":[4],\"layers\":"
                                  "[{\"type\":\"linear\",\"out_features\":2}]}", 10),
                 KSTORE_OK);
    kstore_job job;
    memset(&job, 0, sizeof job);
    bool created = false;
    cr_assert_eq(kstore_job_create(store, "{\"model\":\"big\",\"data\":{\"dataset\":\"none\"}}",
                                   "big", "none", NULL, "cpu", 0, BIG_POINTS, &job, &created),
                 KSTORE_OK);
    snprintf(id, 40, "%s", job.id);
    kstore_job_free(&job);
    cr_assert_eq(kstore_job_claim(store, "cpu", NULL, &job), KSTORE_OK);
    kstore_job_free(&job);
    kstore_metric_point *points = malloc(BIG_POINTS * sizeof *points);
    cr_assert_not_null(points);
    const char *names[4] = {"loss", "lr", "val_loss", "val_accuracy"};
    for (int s = 0; s < 4; s++) {
        for (int i = 0; i < BIG_POINTS; i++) {
            double t = (double)(i + 1) / BIG_POINTS;
            double noise = 0.05 * sin(i * 12.9898 + s) * sin(i * 0.37);
            points[i].step = i + 1;
            points[i].wall_time = 1.7e9 + i * 0.01;
            points[i].value = s == 1 ? 1e-3 * (0.5 + 0.5 * cos(3.14159 * t))
                              : s == 3 ? 1.0 - 0.9 * exp(-5 * t) + noise * 0.2
                                       : 2.3 * exp(-4 * t) + 0.05 + noise;
        }
        cr_assert_eq(kstore_metrics_append(store, id, names[s], points, BIG_POINTS), KSTORE_OK);
    }
    free(points);
    cr_assert_eq(kstore_job_progress(store, id, BIG_POINTS, 10, BIG_POINTS, 5000, 0,
                                     "{\"loss\":0.09,\"val_accuracy\":0.99}"),
                 KSTORE_OK);
    /* trained on two processes: the page shows the world size and each rank's rate */
    cr_assert_eq(kstore_job_set_distributed(
                     store, id,
                     "{\"processes\":2,\"world_size\":2,\"devices\":\"cpu\",\"backend\":\"mpi\","
                     "\"restarts\":1,\"max_restarts\":2,\"ranks\":[{\"rank\":0,\"host\":\"node1\","
                     "\"pid\":10,\"samples_per_second\":2500},{\"rank\":1,\"host\":\"node2\","
                     "\"pid\":11,\"samples_per_second\":2400}]}"),
                 KSTORE_OK);
    cr_assert_eq(kstore_job_finish(store, id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1), KSTORE_OK);
    kstore_close(store);
}

/* Skips the test when the browser side is missing. */
static void need_browser(void)
{
#ifdef KN_SANITIZE
    /* Under the sanitizers kilnd trains several times slower and the page's timings
     * (a curve that must grow while the job runs) turn into races with the machine's
     * load; the release suite runs these, and test_server_* cover kilnd under ASan. */
    if (!getenv("KILN_BROWSER_UNDER_SANITIZERS"))
        cr_skip_test("browser tests run in the release suite (set "
                     "KILN_BROWSER_UNDER_SANITIZERS=1 to run them here)");
#endif
    const char *chromium = getenv("KILN_CHROMIUM") ? getenv("KILN_CHROMIUM") : "/usr/bin/chromium";
    char modules[1024];
    snprintf(modules, sizeof modules, "%s/tests/browser/node_modules/playwright-core",
             KILN_SOURCE_DIR);
    if (system("command -v node >/dev/null 2>&1") != 0)
        cr_skip_test("node is not installed (scripts/install-web-deps.sh)");
    if (access(chromium, X_OK) != 0)
        cr_skip_test("%s is missing (scripts/install-web-deps.sh installs chromium)", chromium);
    if (access(modules, R_OK) != 0)
        cr_skip_test("%s is missing (npm ci in tests/browser)", modules);
}

/* Runs the script (env: extra environment, "" for none), echoing its output. */
static void run_script(const char *env, const char *big)
{
    char artifacts[1024], command[4096];
    snprintf(artifacts, sizeof artifacts, "%s/artifacts", KILN_BINARY_DIR);
    snprintf(command, sizeof command,
             "cd '%s/tests/browser' && %s timeout 200 node dashboard.test.mjs '%s' '%s' '%s' 2>&1",
             KILN_SOURCE_DIR, env, H.url, artifacts, big);
    fflush(NULL);
    FILE *p = popen(command, "r");
    cr_assert_not_null(p);
    char line[2048];
    while (fgets(line, sizeof line, p)) fputs(line, stderr); /* ctest shows it on failure */
    int status = pclose(p);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the browser test failed (status %d); kilnd's log: %s", status, H.log_path);
}

/* Stops kilnd with SIGTERM and fails on a sanitizer report in its log. */
static void stop_and_check_log(void)
{
    int status = h_signal_wait(&H, SIGTERM);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "kilnd exit status %d", status);
    FILE *f = fopen(H.log_path, "r");
    cr_assert_not_null(f);
    char line[4096];
    bool clean = true;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "Sanitizer") || strstr(line, "runtime error:")) clean = false;
    fclose(f);
    cr_expect(clean, "kilnd's log has a sanitizer report (%s)", H.log_path);
}

Test(browser, dashboard, .fini = teardown, .timeout = 240)
{
    need_browser();
    h_make_root(&H);
    char big[40];
    write_big_job(H.data_dir, big);
    const char *extra[] = {"--workers", "1", NULL};
    h_start(&H, extra);
    run_script("", big);
    stop_and_check_log();
}

Test(browser, token, .fini = teardown, .timeout = 120)
{
    need_browser();
    h_make_root(&H);
    char token_path[400];
    snprintf(token_path, sizeof token_path, "%s/token", H.root);
    snprintf(H.token, sizeof H.token, "kiln-browser-%d-%ld", (int)getpid(), (long)time(NULL));
    int fd = open(token_path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, H.token, strlen(H.token)), (ssize_t)strlen(H.token));
    close(fd);
    const char *extra[] = {"--workers", "1", "--token-file", token_path, NULL};
    h_start(&H, extra);
    char env[256];
    snprintf(env, sizeof env, "KILN_DASHBOARD_TOKEN='%s'", H.token);
    run_script(env, "");
    stop_and_check_log();
}
