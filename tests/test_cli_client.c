/*
 * test_cli_client.c — the `kiln` command as users run it (the built binary, against the
 * built kilnd on a free loopback port, tests/server_harness.h):
 *   options_and_help:  getopt_long everywhere (--state=running and --state running, options
 *                      after arguments), each command's --help, unknown options, missing
 *                      values and arguments answered with exit 2.
 *   registry_round_trip: upload (CSV, and NPY inputs and labels), create-model, submit
 *                      --follow with a run name, jobs, job, logs (and --follow), metrics,
 *                      weights -o (and resuming a cut download), upload-weights, alias,
 *                      versions, infer from CSV, NPY on --stdin and JSON rows, delete-model
 *                      refused then --force.
 *   https_and_proxies: `--url https://...` through a TLS-terminating proxy with --cacert, a
 *                      wrong certificate refused, and http_proxy honoured (tests/http_proxies.py).
 *   keep_alive:        the client library reuses one connection for many requests.
 */
#include "server_harness.h"

#include "kn_test.h"

#include <criterion/criterion.h>
#include <math.h>

static harness H;
static pid_t proxy_pid;

static void teardown(void)
{
    if (proxy_pid > 0) {
        kill(proxy_pid, SIGKILL);
        waitpid(proxy_pid, NULL, 0);
        proxy_pid = 0;
    }
    h_cleanup(&H);
}

TestSuite(cli, .fini = teardown, .timeout = 300);

static const char MODEL[] = "{\"name\": \"blobs\", \"input_shape\": [4], \"layers\": ["
                            "{\"type\": \"linear\", \"out_features\": 16}, {\"type\": \"relu\"},"
                            " {\"type\": \"linear\", \"out_features\": 3}]}";

/* Runs `KILN_URL=<the server> ENV kiln ARGS`; output (stdout and stderr) into out;
 * returns the exit status. */
static int kiln(const char *env, const char *args, char *out, size_t size)
{
    char command[4096];
    snprintf(command, sizeof command, "KILN_URL=%s %s %s/kiln %s 2>&1",
             H.url[0] ? H.url : "http://127.0.0.1:1", env ? env : "", KILN_BINARY_DIR, args);
    return h_run(command, out, size);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

/* ---- options -------------------------------------------------------------------------------- */
Test(cli, options_and_help)
{
    static char out[65536];
    cr_assert_eq(kiln(NULL, "--help", out, sizeof out), 0);
    cr_assert(strstr(out, "upload-weights") && strstr(out, "infer MODEL"), "%s", out);
    const char *commands[] = {"train", "submit", "jobs",   "logs",   "weights",       "infer",
                              "alias", "upload", "models", "health", "upload-weights"};
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        char args[128];
        snprintf(args, sizeof args, "%s --help", commands[i]);
        cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s: %s", args, out);
        char usage[64];
        snprintf(usage, sizeof usage, "usage: kiln %s", commands[i]);
        cr_assert(strstr(out, usage) && strstr(out, "--help"), "%s: %s", args, out);
    }
    cr_assert_eq(kiln(NULL, "help logs", out, sizeof out), 0);
    cr_assert(strstr(out, "--follow"), "%s", out);
    cr_assert_eq(kiln(NULL, "jobs --help", out, sizeof out), 0);
    cr_assert(strstr(out, "--state S") && !strstr(out, "--follow"), "only its options: %s", out);

    /* refusals: exit 2 naming the problem */
    static const struct {
        const char *args, *says;
    } BAD[] = {
        {"jobs --bogus", "unknown option --bogus"},
        {"jobs --state", "--state needs a value"},
        {"jobs extra", "unexpected argument extra"},
        {"logs", "expected ID"},
        {"weights job_1", "-o FILE is required"},
        {"train --threads=many x.json", "--threads: expected an integer"},
        {"infer blobs", "give a FILE of inputs or --stdin"},
        {"submit --priority=high job.json", "--priority: expected an integer"},
        {"nonsense", "unknown command"},
        {"upload d --train-csv a.csv --train-inputs x.npy", "one kind, not several"},
        {"upload d --train-text t.txt --train-csv a.csv", "one kind, not several"},
        {"upload d", "or a text (--train-text F)"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        cr_assert_eq(kiln(NULL, BAD[i].args, out, sizeof out), 2, "%s: %s", BAD[i].args, out);
        cr_assert(strstr(out, BAD[i].says), "%s: %s", BAD[i].args, out);
    }
    /* --state=running and --state running both parse (no server: exit 1, not 2) */
    cr_assert_eq(kiln(NULL, "jobs --state=running --url http://127.0.0.1:1", out, sizeof out), 1,
                 "%s", out);
    cr_assert(strstr(out, "127.0.0.1:1"), "%s", out);
    cr_assert_eq(kiln(NULL, "jobs --url http://127.0.0.1:1 --state running", out, sizeof out), 1,
                 "%s", out);
}

/* ---- the whole registry from the command line ------------------------------------------------ */
Test(cli, registry_round_trip)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    static char out[1 << 20];
    char args[2048], train[512], test[512], x_npy[512], y_npy[512], model[512], job[512];
    snprintf(train, sizeof train, "%s/train.csv", H.files_dir);
    snprintf(test, sizeof test, "%s/test.csv", H.files_dir);
    h_write_blobs_csv(train, 1, 300);
    h_write_blobs_csv(test, 2, 90);
    snprintf(args, sizeof args, "upload blobs --train-csv %s --test-csv=%s", train, test);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "train: ") && strstr(out, "300 samples"), "%s", out);

    /* NPY inputs and labels */
    static float x[90 * H_BLOB_FEATURES];
    static int64_t y[90];
    for (int i = 0; i < 90; i++) y[i] = h_blob(2, i, x + i * H_BLOB_FEATURES);
    snprintf(x_npy, sizeof x_npy, "%s/x.npy", H.files_dir);
    snprintf(y_npy, sizeof y_npy, "%s/y.npy", H.files_dir);
    cr_assert(kn_test_write_npy(x_npy, "<f4", (int64_t[]){90, H_BLOB_FEATURES}, 2, x));
    cr_assert(kn_test_write_npy(y_npy, "<i8", (int64_t[]){90}, 1, y));
    snprintf(args, sizeof args, "upload blobs-npy --train-inputs %s --train-labels %s", x_npy,
             y_npy);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "train_inputs") && strstr(out, "(npy"), "%s", out);
    cr_assert_eq(kiln(NULL, "datasets blobs-npy", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "train_labels") && strstr(out, "npy"), "%s", out);

    snprintf(model, sizeof model, "%s/model.json", H.files_dir);
    write_text(model, MODEL);
    snprintf(args, sizeof args, "create-model %s", model);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    snprintf(job, sizeof job, "%s/job.json", H.files_dir);
    write_text(job, "{\"model\": \"blobs\", \"name\": \"cli run\", \"data\": {\"dataset\": "
                    "\"blobs\"}, \"optimizer\": {\"type\": \"adam\", \"lr\": 0.02}, "
                    "\"batch_size\": 30, \"epochs\": 4}");
    snprintf(args, sizeof args, "submit %s --follow", job);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    char id[64] = "";
    cr_assert_eq(sscanf(out, "%63s", id), 1);
    cr_assert(!strncmp(id, "job_", 4) && strstr(out, "succeeded"), "%s", out);

    cr_assert_eq(kiln(NULL, "jobs --state=succeeded", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, id) && strstr(out, "cli run"), "%s", out);
    cr_assert_eq(kiln(NULL, "jobs --state=bogus", out, sizeof out), 2, "%s", out);
    snprintf(args, sizeof args, "job %s", id);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "recipe    adam lr 0.02, batch size 30, 4 epochs"), "%s", out);
    snprintf(args, sizeof args, "logs %s", id);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "info  started on cpu") && strstr(out, "succeeded at step 40"), "%s",
              out);
    snprintf(args, sizeof args, "logs %s --follow --after 2", id);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(!strstr(out, "queued:") && strstr(out, "succeeded at step 40"), "%s", out);
    snprintf(args, sizeof args, "metrics %s --names=loss,test_accuracy --max-points 5", id);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "\nloss\t40\t") && strstr(out, "\ntest_accuracy\t"), "%s", out);

    /* weights, and a cut download resumed */
    char weights[512], again[512], part[600];
    snprintf(weights, sizeof weights, "%s/w.safetensors", H.files_dir);
    snprintf(again, sizeof again, "%s/again.safetensors", H.files_dir);
    snprintf(part, sizeof part, "%s.part", again);
    snprintf(args, sizeof args, "weights %s -o %s", id, weights);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    size_t size = 0;
    char *whole = h_slurp(weights, &size);
    cr_assert(whole && size > 100);
    FILE *f = fopen(part, "wb");
    fwrite(whole, 1, size / 2, f);
    fclose(f);
    snprintf(args, sizeof args, "weights %s --output=%s", id, again);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "were already there"), "resumed: %s", out);
    size_t size2 = 0;
    char *resumed = h_slurp(again, &size2);
    cr_assert(resumed && size2 == size && !memcmp(resumed, whole, size), "the same bytes");
    cr_assert_neq(access(part, F_OK), 0, "the part is renamed");
    free(whole);
    free(resumed);

    /* a version from the file, an alias, inference through it */
    snprintf(args, sizeof args, "upload-weights blobs v1 %s", weights);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert_eq(kiln(NULL, "alias blobs production v1", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "production -> v1"), "%s", out);
    snprintf(args, sizeof args, "alias blobs production %s", id);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "(was v1)"), "%s", out);
    cr_assert_eq(kiln(NULL, "alias blobs", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "production -> job_"), "%s", out);
    cr_assert_eq(kiln(NULL, "alias blobs nope nothing", out, sizeof out), 2, "%s", out);
    cr_assert_eq(kiln(NULL, "versions blobs", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "v1 ") && strstr(out, "production (default)"), "%s", out);
    cr_assert_eq(kiln(NULL, "models", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "blobs") && strstr(out, "production"), "%s", out);

    snprintf(args, sizeof args, "infer blobs %s --version production", test);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    int correct = 0, lines = 0;
    for (char *save = NULL, *line = strtok_r(out, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        int index, arg;
        cr_assert_eq(sscanf(line, "%d\t%d", &index, &arg), 2, "%s", line);
        float xi[H_BLOB_FEATURES];
        correct += arg == h_blob(2, index, xi);
        lines++;
    }
    cr_assert_eq(lines, 90);
    cr_assert_geq(correct, 81, "accuracy %d/90 through the alias", correct);
    snprintf(args, sizeof args, "infer blobs --stdin --softmax --json < %s", x_npy);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "\"model_version\":\"job_"), "the newest job is the default: %s", out);
    cr_assert(strstr(out, "\"data\":[0.99"), "probabilities: %s", out);
    char rows[512];
    snprintf(rows, sizeof rows, "%s/rows.json", H.files_dir);
    write_text(rows, "[[2, 0, 0, 1], [0, 2, 0, -1]]");
    snprintf(args, sizeof args, "infer blobs %s --version=v1", rows);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "\n0\t0\t") && strstr(out, "\n1\t1\t"), "%s", out);
    write_text(rows, "[[2, 0, 0]]");
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "row 0: expected 4 numbers"), "%s", out);

    /* deleting: refused while it has jobs and versions, then everything */
    cr_assert_eq(kiln(NULL, "delete-model blobs", out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "model_not_empty") && strstr(out, id), "%s", out);
    cr_assert_eq(kiln(NULL, "delete-model blobs --force", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "with 1 job") && strstr(out, "1 uploaded version"), "%s", out);
    snprintf(args, sizeof args, "job %s", id);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 2, "%s", out);
}

/* ---- https and proxies ------------------------------------------------------------------------
 */

/* Starts tests/http_proxies.py MODE ...; returns its port. */
static int start_proxy(const char *const *args, const char *log)
{
    char port_file[512], script[512];
    snprintf(port_file, sizeof port_file, "%s/proxy.port", H.root);
    snprintf(script, sizeof script, "%s/tests/http_proxies.py", KILN_SOURCE_DIR);
    unlink(port_file);
    const char *argv[12] = {"/usr/bin/python3", script, args[0], port_file, log};
    int argc = 5;
    for (int i = 1; args[i]; i++) argv[argc++] = args[i];
    argv[argc] = NULL;
    fflush(NULL);
    proxy_pid = fork();
    cr_assert_geq(proxy_pid, 0);
    if (proxy_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (double t0 = h_now(); h_now() - t0 < 20; usleep(50000)) {
        size_t size;
        char *text = h_slurp(port_file, &size);
        if (text) {
            int port = atoi(text);
            free(text);
            return port;
        }
    }
    cr_assert_fail("the proxy did not start");
    return 0;
}

static void stop_proxy(void)
{
    kill(proxy_pid, SIGKILL);
    waitpid(proxy_pid, NULL, 0);
    proxy_pid = 0;
}

Test(cli, https_and_proxies)
{
    if (access("/usr/bin/python3", X_OK) != 0 || access("/usr/bin/openssl", X_OK) != 0) {
        printf("cli.https_and_proxies: skipped (needs /usr/bin/python3 and /usr/bin/openssl)\n");
        return;
    }
    /* the proxy's address is this kilnd's too: the Host it forwards names it */
    int tls_port = h_free_port();
    char origin[64];
    snprintf(origin, sizeof origin, "https://127.0.0.1:%d", tls_port);
    h_start(&H, (const char *const[]){"--log-level", "warn", "--allowed-origins", origin, NULL});
    static char out[65536];
    char cert[512], key[512], other[512], other_key[512], log[512], command[2048], port[16];
    snprintf(cert, sizeof cert, "%s/cert.pem", H.root);
    snprintf(key, sizeof key, "%s/key.pem", H.root);
    snprintf(other, sizeof other, "%s/other.pem", H.root);
    snprintf(other_key, sizeof other_key, "%s/other-key.pem", H.root);
    snprintf(log, sizeof log, "%s/proxy.log", H.root);
    for (int i = 0; i < 2; i++) {
        snprintf(command, sizeof command,
                 "/usr/bin/openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
                 "-addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s >/dev/null 2>&1",
                 i ? other_key : key, i ? other : cert);
        cr_assert_eq(system(command), 0, "openssl could not make a certificate");
    }
    char listen[16];
    snprintf(port, sizeof port, "%d", H.port);
    snprintf(listen, sizeof listen, "%d", tls_port);
    int tls = start_proxy((const char *const[]){"tls", cert, key, port, listen, NULL}, log);

    /* kilnd behind a TLS-terminating proxy: https with the proxy's CA */
    char args[1024];
    snprintf(args, sizeof args, "health --url https://127.0.0.1:%d --cacert %s", tls, cert);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "kilnd ") && strstr(out, ": ok"), "%s", out);
    char env[600];
    snprintf(env, sizeof env, "KILN_CACERT=%s", cert);
    snprintf(args, sizeof args, "jobs --url=https://127.0.0.1:%d/", tls);
    cr_assert_eq(kiln(env, args, out, sizeof out), 0, "%s", out);
    /* a certificate nobody vouches for is refused */
    snprintf(args, sizeof args, "health --url https://127.0.0.1:%d --cacert %s", tls, other);
    cr_assert_eq(kiln(NULL, args, out, sizeof out), 1, "%s", out);
    cr_assert(strcasestr(out, "certificate") || strcasestr(out, "SSL"), "%s", out);
    stop_proxy();
    size_t size;
    char *text = h_slurp(log, &size);
    cr_assert(text && strstr(text, "tls connection"), "%s", text ? text : "no log");
    free(text);

    /* http_proxy is honoured */
    unlink(log);
    int forward = start_proxy((const char *const[]){"forward", NULL}, log);
    snprintf(env, sizeof env, "http_proxy=http://127.0.0.1:%d no_proxy= NO_PROXY=", forward);
    cr_assert_eq(kiln(env, "health", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "kilnd ") && strstr(out, ": ok"), "the details came too: %s", out);
    text = h_slurp(log, &size);
    cr_assert(text && strstr(text, "proxied GET http://127.0.0.1:") &&
                  strstr(text, "/v2/health/ready") && strstr(text, "/v1/health"),
              "%s", text ? text : "the proxy saw nothing");
    free(text);
}

/* ---- keep-alive -------------------------------------------------------------------------------
 */
Test(cli, keep_alive)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    long before = khttp_connections_opened();
    for (int i = 0; i < 20; i++) cJSON_Delete(h_json(&H, "GET", "/v1/health", NULL, 200));
    long opened = khttp_connections_opened() - before;
    cr_assert_leq(opened, 1, "20 requests opened %ld connections", opened);
}
