/*
 * test_store.c — the SQLite store: opening and migrating (twice, and refusing a newer
 * schema), models, datasets and their files, jobs (idempotent submission, listing with
 * a state filter and cursor pages, claim order, claims that take only the jobs whose
 * requested device a worker accepts (or no worker does), the migration that backfills the
 * requested device of older jobs, concurrent claims from two handles,
 * every transition legal and illegal, requeue at start-up, flags, progress), metric
 * series (replace not duplicate, after_step, downsampling properties, NaN and inf),
 * checkpoints and model versions (succeeded jobs and uploads), aliases, deleting a model
 * with everything of it, and jobs' log lines (numbered per job, capped). Each test uses its own
 * temporary directory.
 */
#define _GNU_SOURCE
#include "kstore.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char dir[64];
static char db_path[128];
static kstore *S;

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/kstore_test_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db_path, sizeof db_path, "%s/kiln.db", dir);
    char *error = NULL;
    S = kstore_open(db_path, &error);
    cr_assert_not_null(S, "open: %s", error ? error : "?");
}

static void teardown(void)
{
    kstore_close(S);
    S = NULL;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[512];
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                unlink(path);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

TestSuite(store, .init = setup, .fini = teardown);

/* One integer from a SQL query on a separate raw connection. */
static int64_t raw_int(const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void raw_exec(const char *sql)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
}

/* ---- opening ------------------------------------------------------------------------ */

Test(store, open_migrate_twice)
{
    int version = kstore_schema_version(S);
    cr_assert_geq(version, 3);
    cr_assert_eq(raw_int("SELECT count(*) FROM schema_migrations"), version);
    kstore_close(S);
    char *error = NULL;
    S = kstore_open(db_path, &error); /* the second open applies nothing */
    cr_assert_not_null(S, "%s", error ? error : "");
    cr_assert_eq(kstore_schema_version(S), version);
    cr_assert_eq(raw_int("SELECT count(*) FROM schema_migrations"), version);
    /* Two handles on the file at once are fine too. */
    kstore *other = kstore_open(db_path, &error);
    cr_assert_not_null(other, "%s", error ? error : "");
    cr_assert_eq(kstore_schema_version(other), version);
    kstore_close(other);
}

Test(store, wal_mode)
{
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

Test(store, refuses_newer_schema)
{
    raw_exec("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)");
    char *error = NULL;
    kstore *s = kstore_open(db_path, &error);
    cr_assert_null(s);
    cr_assert_not_null(error);
    cr_assert_not_null(strstr(error, "newer"), "%s", error);
    free(error);
}

Test(store, open_bad_path)
{
    teardown(); /* S closed; reopen somewhere impossible */
    char *error = NULL;
    kstore *s = kstore_open("/nonexistent-dir/kiln.db", &error);
    cr_assert_null(s);
    cr_assert_not_null(error);
    cr_assert_not_null(strstr(error, "/nonexistent-dir/kiln.db"), "%s", error);
    free(error);
    setup();
}

/* ---- models and datasets ------------------------------------------------------------ */

Test(store, models_crud)
{
    cr_assert_eq(kstore_model_put(S, "mlp", "{\"layers\":[]}", 1234), KSTORE_OK);
    cr_assert_eq(kstore_model_put(S, "cnn", "{\"layers\":[1]}", 99), KSTORE_OK);
    cr_assert_eq(kstore_model_put(S, "mlp", "{}", 1), KSTORE_CONFLICT);
    cr_assert_not_null(strstr(kstore_last_error(S), "mlp"));

    kstore_model m;
    cr_assert_eq(kstore_model_get(S, "mlp", &m), KSTORE_OK);
    cr_assert_str_eq(m.name, "mlp");
    cr_assert_str_eq(m.spec_json, "{\"layers\":[]}");
    cr_assert_eq(m.parameter_count, 1234);
    cr_assert_gt(m.created_at, 1.6e9);
    kstore_model_free(&m);
    cr_assert_eq(kstore_model_get(S, "nope", &m), KSTORE_NOT_FOUND);
    cr_assert_not_null(strstr(kstore_last_error(S), "nope"));

    kstore_model *list;
    int n;
    cr_assert_eq(kstore_model_list(S, &list, &n), KSTORE_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(list[0].name, "cnn"); /* by name */
    cr_assert_str_eq(list[1].name, "mlp");
    kstore_model_list_free(list, n);

    cr_assert_eq(kstore_model_delete(S, "mlp"), KSTORE_OK);
    cr_assert_eq(kstore_model_delete(S, "mlp"), KSTORE_NOT_FOUND);
    cr_assert_eq(kstore_model_get(S, "mlp", &m), KSTORE_NOT_FOUND);
    char long_name[200];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    cr_assert_eq(kstore_model_put(S, long_name, "{}", 1), KSTORE_ERROR);
}

static kstore_dataset_file file_of(const char *role, const char *format, const char *path,
                                   int64_t bytes, int64_t samples)
{
    kstore_dataset_file f = {.bytes = bytes, .samples = samples};
    snprintf(f.role, sizeof f.role, "%s", role);
    snprintf(f.format, sizeof f.format, "%s", format);
    snprintf(f.path, sizeof f.path, "%s", path);
    return f;
}

Test(store, datasets_with_files)
{
    cr_assert_eq(kstore_dataset_create(S, "fmnist", "Fashion-MNIST"), KSTORE_OK);
    cr_assert_eq(kstore_dataset_create(S, "fmnist", NULL), KSTORE_CONFLICT);
    cr_assert_eq(kstore_dataset_create(S, "blobs", NULL), KSTORE_OK);
    kstore_dataset_file f1 = file_of("train_images", "idx", "datasets/fmnist/ti", 100, 60000);
    kstore_dataset_file f2 = file_of("train_labels", "idx", "datasets/fmnist/tl", 10, 60000);
    kstore_dataset_file f3 = file_of("train_images", "idx", "datasets/fmnist/ti2", 200, 50000);
    cr_assert_eq(kstore_dataset_add_file(S, "fmnist", &f1), KSTORE_OK);
    cr_assert_eq(kstore_dataset_add_file(S, "fmnist", &f2), KSTORE_OK);
    cr_assert_eq(kstore_dataset_add_file(S, "fmnist", &f3), KSTORE_OK); /* replaces the role */
    cr_assert_eq(kstore_dataset_add_file(S, "missing", &f1), KSTORE_NOT_FOUND);

    kstore_dataset d;
    cr_assert_eq(kstore_dataset_get(S, "fmnist", &d), KSTORE_OK);
    cr_assert_str_eq(d.description, "Fashion-MNIST");
    cr_assert_eq(d.n_files, 2);
    cr_assert_str_eq(d.files[0].role, "train_images");
    cr_assert_str_eq(d.files[0].path, "datasets/fmnist/ti2");
    cr_assert_eq(d.files[0].bytes, 200);
    cr_assert_eq(d.files[0].samples, 50000);
    cr_assert_str_eq(d.files[1].role, "train_labels");
    cr_assert_str_eq(d.files[1].format, "idx");
    kstore_dataset_free(&d);

    kstore_dataset *list;
    int n;
    cr_assert_eq(kstore_dataset_list(S, &list, &n), KSTORE_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(list[0].name, "blobs");
    cr_assert_null(list[0].description);
    cr_assert_eq(list[0].n_files, 0);
    cr_assert_eq(list[1].n_files, 2);
    kstore_dataset_list_free(list, n);

    cr_assert_eq(kstore_dataset_delete(S, "fmnist"), KSTORE_OK);
    cr_assert_eq(kstore_dataset_get(S, "fmnist", &d), KSTORE_NOT_FOUND);
    cr_assert_eq(kstore_dataset_delete(S, "fmnist"), KSTORE_NOT_FOUND);
    cr_assert_eq(raw_int("SELECT count(*) FROM dataset_files"), 0); /* cascaded */
}

/* ---- jobs --------------------------------------------------------------------------- */

static void new_job(kstore *s, int priority, const char *submission, kstore_job *out)
{
    bool created;
    cr_assert_eq(kstore_job_create(s, "{\"epochs\":1}", "mlp", "blobs", submission, "cpu", priority,
                                   100, out, &created),
                 KSTORE_OK, "%s", kstore_last_error(s));
}

Test(store, job_create_and_idempotent_submission)
{
    kstore_job a, b, c;
    bool created;
    cr_assert_eq(
        kstore_job_create(S, "{\"x\":1}", "mlp", "blobs", "sub-1", "", 3, 500, &a, &created),
        KSTORE_OK);
    cr_assert(created);
    cr_assert_eq(strlen(a.id), 20);
    cr_assert_eq(strncmp(a.id, "job_", 4), 0);
    cr_assert_eq(strspn(a.id + 4, "0123456789abcdef"), 16);
    cr_assert_eq(a.state, KSTORE_JOB_QUEUED);
    cr_assert_eq(a.priority, 3);
    cr_assert_str_eq(a.model_name, "mlp");
    cr_assert_str_eq(a.dataset_name, "blobs");
    cr_assert_str_eq(a.submission_id, "sub-1");
    cr_assert_str_eq(a.spec_json, "{\"x\":1}");
    cr_assert_eq(a.total_steps, 500);
    cr_assert_gt(a.created_at, 1.6e9);
    cr_assert_eq(a.started_at, 0);
    cr_assert_eq(a.finished_at, 0);
    cr_assert_eq(a.eta_seconds, -1);
    cr_assert_eq(a.error_step, -1);
    cr_assert_null(a.error_message);
    cr_assert_null(a.latest_metrics_json);

    /* The retry returns the same job and creates nothing. */
    cr_assert_eq(
        kstore_job_create(S, "{\"x\":1}", "mlp", "blobs", "sub-1", "", 3, 500, &b, &created),
        KSTORE_OK);
    cr_assert_not(created);
    cr_assert_str_eq(b.id, a.id);
    cr_assert_eq(kstore_job_count(S, KSTORE_JOB_QUEUED), 1);
    /* Without a submission id every create is a new job. */
    cr_assert_eq(kstore_job_create(S, "{}", "mlp", "blobs", NULL, NULL, 0, 0, &c, &created),
                 KSTORE_OK);
    cr_assert(created);
    cr_assert_str_neq(c.id, a.id);
    cr_assert_str_eq(c.submission_id, "");
    cr_assert_eq(kstore_job_create(S, "{}", "mlp", "blobs", "", NULL, 0, 0, NULL, NULL), KSTORE_OK);
    cr_assert_eq(kstore_job_count(S, KSTORE_JOB_QUEUED), 3);

    kstore_job g;
    cr_assert_eq(kstore_job_get(S, a.id, &g), KSTORE_OK);
    cr_assert_str_eq(g.spec_json, a.spec_json);
    kstore_job_free(&g);
    cr_assert_eq(kstore_job_get(S, "job_0000000000000000", &g), KSTORE_NOT_FOUND);
    kstore_job_free(&a);
    kstore_job_free(&b);
    kstore_job_free(&c);
}

Test(store, job_list_filter_and_pages)
{
    char ids[7][40];
    for (int i = 0; i < 7; i++) {
        kstore_job j;
        new_job(S, 0, NULL, &j);
        snprintf(ids[i], sizeof ids[i], "%s", j.id);
        kstore_job_free(&j);
    }
    /* ids[1] and ids[4] become paused */
    cr_assert_eq(kstore_job_pause(S, ids[1], NULL), KSTORE_OK);
    cr_assert_eq(kstore_job_pause(S, ids[4], NULL), KSTORE_OK);

    char cursor[40] = "";
    int seen = 0, pages = 0;
    do {
        kstore_job *list;
        int n;
        cr_assert_eq(kstore_job_list(S, NULL, pages ? cursor : NULL, 3, &list, &n, cursor),
                     KSTORE_OK);
        cr_assert_leq(n, 3);
        for (int i = 0; i < n; i++, seen++)
            cr_assert_str_eq(list[i].id, ids[6 - seen]); /* newest first */
        kstore_job_list_free(list, n);
        pages++;
        cr_assert_leq(pages, 3);
    } while (cursor[0]);
    cr_assert_eq(seen, 7);
    cr_assert_eq(pages, 3);

    kstore_job_state paused = KSTORE_JOB_PAUSED;
    kstore_job *list;
    int n;
    cr_assert_eq(kstore_job_list(S, &paused, NULL, 10, &list, &n, cursor), KSTORE_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(list[0].id, ids[4]);
    cr_assert_str_eq(list[1].id, ids[1]);
    cr_assert_str_eq(cursor, "");
    kstore_job_list_free(list, n);
    cr_assert_eq(kstore_job_list(S, &paused, NULL, 1, &list, &n, cursor), KSTORE_OK);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(cursor, ids[4]);
    kstore_job_list_free(list, n);
    cr_assert_eq(kstore_job_list(S, &paused, cursor, 1, &list, &n, cursor), KSTORE_OK);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(list[0].id, ids[1]);
    cr_assert_str_eq(cursor, "");
    kstore_job_list_free(list, n);

    cr_assert_eq(kstore_job_list(S, NULL, "job_ffffffffffffffff", 3, &list, &n, cursor),
                 KSTORE_NOT_FOUND);
    cr_assert_null(list);
    cr_assert_eq(kstore_job_count(S, KSTORE_JOB_PAUSED), 2);
    cr_assert_eq(kstore_job_count(S, KSTORE_JOB_QUEUED), 5);
}

Test(store, claim_order)
{
    const int priorities[] = {0, 5, 0, 5, 1};
    char ids[5][40];
    for (int i = 0; i < 5; i++) {
        kstore_job j;
        new_job(S, priorities[i], NULL, &j);
        snprintf(ids[i], sizeof ids[i], "%s", j.id);
        kstore_job_free(&j);
    }
    const int expect[] = {1, 3, 4, 0, 2}; /* priority, then age */
    for (int i = 0; i < 5; i++) {
        kstore_job j;
        cr_assert_eq(kstore_job_claim(S, "cpu:0", NULL, &j), KSTORE_OK);
        cr_assert_str_eq(j.id, ids[expect[i]]);
        cr_assert_eq(j.state, KSTORE_JOB_RUNNING);
        cr_assert_str_eq(j.device, "cpu:0");
        cr_assert_gt(j.started_at, 0);
        kstore_job_free(&j);
    }
    kstore_job j;
    cr_assert_eq(kstore_job_claim(S, "cpu:0", NULL, &j), KSTORE_NOT_FOUND);
}

/* ---- claims by requested device ---------------------------------------------------- */

/* A queued job asking for device (as the spec's "device"); its id into id. */
static void device_job(const char *device, int priority, char id[40])
{
    kstore_job j;
    cr_assert_eq(kstore_job_create(S, "{}", "mlp", "blobs", NULL, device, priority, 1, &j, NULL),
                 KSTORE_OK, "%s", kstore_last_error(S));
    snprintf(id, 40, "%s", j.id);
    kstore_job_free(&j);
}

/* Claims with filter and checks that it took job id. */
static void claim_expect(const kstore_claim_filter *filter, const char *id)
{
    kstore_job j;
    cr_assert_eq(kstore_job_claim(S, "w", filter, &j), KSTORE_OK, "%s", kstore_last_error(S));
    cr_assert_str_eq(j.id, id, "took %s (asked for %s), expected %s", j.id, j.requested_device, id);
    kstore_job_free(&j);
}

static kstore_job_state state_of(const char *id)
{
    kstore_job j;
    cr_assert_eq(kstore_job_get(S, id, &j), KSTORE_OK);
    kstore_job_state state = j.state;
    kstore_job_free(&j);
    return state;
}

Test(store, requested_device_as_created)
{
    static const char *const CASES[][2] = {
        {NULL, "cpu"},         {"", "cpu"},           {"cpu", "cpu"},       {"auto", "auto"},
        {"cuda", "cuda"},      {"cuda:0", "cuda:0"},  {"cuda:1", "cuda:1"}, {"cuda:10", "cuda:10"},
        {"cuda:01", "cuda:1"}, {"cuda:00", "cuda:0"}, {"cuda:x", "cuda:x"}, {"cuda:", "cuda:"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        char id[40];
        device_job(CASES[i][0], 0, id);
        kstore_job j;
        cr_assert_eq(kstore_job_get(S, id, &j), KSTORE_OK);
        cr_assert_str_eq(j.requested_device, CASES[i][1], "device %s", CASES[i][0]);
        /* device keeps what was given until a claim records the worker's */
        cr_assert_str_eq(j.device, CASES[i][0] ? CASES[i][0] : "");
        kstore_job_free(&j);
    }
}

Test(store, claim_takes_only_accepted_devices)
{
    char cpu[40], gpu0[40], unset[40], any[40], gpu1[40], cuda[40];
    device_job("cpu", 0, cpu);
    device_job("cuda:0", 5, gpu0);
    device_job("", 1, unset); /* the spec's default: cpu */
    device_job("auto", 9, any);
    device_job("cuda:1", 3, gpu1);
    device_job("cuda", 9, cuda);

    /* A CPU worker: the best of its own jobs, in priority then age order, skipping the
     * better ones asked for elsewhere. */
    const char *cpu_only[] = {"cpu"};
    kstore_claim_filter f = {cpu_only, 1, NULL, 0};
    claim_expect(&f, unset);
    claim_expect(&f, cpu);
    kstore_job j;
    cr_assert_eq(kstore_job_claim(S, "w", &f, &j), KSTORE_NOT_FOUND);
    cr_assert_not_null(strstr(kstore_last_error(S), "no queued job"), "%s", kstore_last_error(S));
    cr_assert_eq(kstore_job_count(S, KSTORE_JOB_QUEUED), 4); /* the GPU jobs are untouched */
    cr_assert_eq(state_of(gpu0), KSTORE_JOB_QUEUED);
    cr_assert_eq(state_of(any), KSTORE_JOB_QUEUED);

    /* A cuda:0 worker of a pool with a CPU worker: auto and cuda (priority 9, auto first
     * by age), then its own; cuda:1 is in no worker's list, so it takes that too. */
    const char *gpu_accepts[] = {"cuda:0", "cuda", "auto"};
    const char *pool[] = {"cpu", "cuda:0", "cuda", "auto"};
    kstore_claim_filter g = {gpu_accepts, 3, pool, 4};
    claim_expect(&g, any);
    claim_expect(&g, cuda);
    claim_expect(&g, gpu0);
    claim_expect(&g, gpu1);
    cr_assert_eq(kstore_job_claim(S, "w", &g, &j), KSTORE_NOT_FOUND);
    cr_assert_eq(kstore_job_count(S, KSTORE_JOB_QUEUED), 0);
}

Test(store, claim_filter_pool_and_any)
{
    char cpu[40], gpu1[40], odd[40];
    device_job("cpu", 0, cpu);
    device_job("cuda:1", 0, gpu1);
    device_job("we\"ird\\", 0, odd); /* quoted into the JSON list the SQL reads */

    /* A worker of a pool that serves cpu and cuda:1: the other job is nobody's, so its
     * claim takes it while the cpu and cuda:1 jobs stay for their workers. */
    const char *mine[] = {"cuda:0"};
    const char *pool[] = {"cpu", "cuda:0", "cuda:1"};
    kstore_claim_filter f = {mine, 1, pool, 3};
    claim_expect(&f, odd);
    kstore_job j;
    cr_assert_eq(kstore_job_claim(S, "w", &f, &j), KSTORE_NOT_FOUND);

    /* Names that need quoting match as written. */
    char odd2[40];
    device_job("we\"ird\\", 0, odd2);
    const char *weird[] = {"we\"ird\\"};
    kstore_claim_filter w = {weird, 1, NULL, 0};
    claim_expect(&w, odd2);

    /* No accept list: any job, whatever the pool says. */
    kstore_claim_filter any = {NULL, 0, pool, 3};
    claim_expect(&any, cpu);
    claim_expect(&any, gpu1);
    cr_assert_eq(kstore_job_claim(S, "w", &any, &j), KSTORE_NOT_FOUND);
}

/* The schema as migrations 1 to 3 made it (a released step never changes), to test the
 * later steps on a database from before them. */
static const char *const SCHEMA_V3 =
    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
    "  applied_at REAL NOT NULL);"
    "INSERT INTO schema_migrations VALUES (1, 'models and datasets', 0),"
    "  (2, 'jobs', 0), (3, 'metrics and checkpoints', 0);"
    "CREATE TABLE models (name TEXT PRIMARY KEY, spec_json TEXT NOT NULL,"
    "  parameter_count INTEGER NOT NULL, created_at REAL NOT NULL);"
    "CREATE TABLE datasets (name TEXT PRIMARY KEY, description TEXT, created_at REAL NOT NULL);"
    "CREATE TABLE dataset_files ("
    "  dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE, role TEXT NOT NULL,"
    "  format TEXT NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL,"
    "  samples INTEGER NOT NULL, PRIMARY KEY (dataset, role)) WITHOUT ROWID;"
    "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
    "  state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'paused', 'succeeded',"
    "                                       'failed', 'canceled')),"
    "  priority INTEGER NOT NULL DEFAULT 0, model_name TEXT NOT NULL DEFAULT '',"
    "  dataset_name TEXT NOT NULL DEFAULT '', submission_id TEXT, spec_json TEXT NOT NULL,"
    "  device TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, started_at REAL,"
    "  finished_at REAL, updated_at REAL NOT NULL, step INTEGER NOT NULL DEFAULT 0,"
    "  total_steps INTEGER NOT NULL DEFAULT 0, epoch INTEGER NOT NULL DEFAULT 0,"
    "  samples_per_second REAL NOT NULL DEFAULT 0, eta_seconds REAL NOT NULL DEFAULT -1,"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0, pause_requested INTEGER NOT NULL DEFAULT 0,"
    "  error_code TEXT NOT NULL DEFAULT '', error_message TEXT,"
    "  error_step INTEGER NOT NULL DEFAULT -1, latest_metrics_json TEXT);"
    "CREATE UNIQUE INDEX jobs_submission ON jobs(submission_id) WHERE submission_id IS NOT NULL;"
    "CREATE INDEX jobs_queue ON jobs(state, priority DESC, seq);"
    "CREATE INDEX jobs_state_seq ON jobs(state, seq);"
    "CREATE INDEX jobs_model ON jobs(model_name, state);"
    "CREATE TABLE metrics (job_id TEXT NOT NULL, name TEXT NOT NULL, step INTEGER NOT NULL,"
    "  wall_time REAL NOT NULL, value REAL, special INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (job_id, name, step)) WITHOUT ROWID;"
    "CREATE TABLE checkpoints (job_id TEXT NOT NULL, kind TEXT NOT NULL,"
    "  step INTEGER NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL,"
    "  created_at REAL NOT NULL, PRIMARY KEY (job_id, kind, step)) WITHOUT ROWID;";

Test(store, migration_backfills_requested_device)
{
    kstore_close(S);
    S = NULL;
    char path[160];
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s%s", db_path, suffixes[i]);
        unlink(path);
    }
    /* What each job's spec asked for, and what the step must make of it. */
    static const char *const JOBS[][3] = {
        {"job_a", "{\"model\": \"m\", \"device\": \"cuda:0\"}", "cuda:0"},
        {"job_b", "{\"model\": \"m\"}", "cpu"},
        {"job_c", "{\"device\": \"\"}", "cpu"},
        {"job_d", "{\"device\": \"auto\"}", "auto"},
        {"job_e", "{\"device\": \"cuda:01\"}", "cuda:1"},
        {"job_f", "not json", "cpu"},
        {"job_g", "{\"device\": 3}", "cpu"},
        {"job_h", "[\"device\", \"cuda\"]", "cpu"},
        {"job_i", "{\"data\": {\"device\": \"cuda\"}, \"device\": \"cuda\"}", "cuda"},
    };
    const int n_jobs = (int)(sizeof JOBS / sizeof JOBS[0]);
    raw_exec(SCHEMA_V3);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "INSERT INTO jobs (id, state, spec_json, device, created_at,"
                                    " updated_at) VALUES (?, 'queued', ?, 'cpu', 1, 1)",
                                    -1, &st, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    for (int i = 0; i < n_jobs; i++) {
        sqlite3_bind_text(st, 1, JOBS[i][0], -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, JOBS[i][1], -1, SQLITE_STATIC);
        cr_assert_eq(sqlite3_step(st), SQLITE_DONE, "%s", sqlite3_errmsg(db));
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    /* job_i was claimed before the upgrade: the worker's device is not what it asked */
    cr_assert_eq(sqlite3_exec(db,
                              "UPDATE jobs SET state = 'running', device = 'cuda:0'"
                              " WHERE id = 'job_i'",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);

    char *error = NULL;
    S = kstore_open(db_path, &error);
    cr_assert_not_null(S, "open: %s", error ? error : "?");
    cr_assert_geq(kstore_schema_version(S), 4);
    for (int i = 0; i < n_jobs; i++) {
        kstore_job j;
        cr_assert_eq(kstore_job_get(S, JOBS[i][0], &j), KSTORE_OK);
        cr_assert_str_eq(j.requested_device, JOBS[i][2], "%s: %s", JOBS[i][0], JOBS[i][1]);
        kstore_job_free(&j);
    }
    cr_assert_eq(raw_int("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_queue_device'"), 1);
    cr_assert_eq(raw_int("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_queue'"), 0);
    /* and the later steps on the same old file: the registry's tables */
    cr_assert_eq(raw_int("SELECT count(*) FROM sqlite_master WHERE name IN"
                         " ('model_versions', 'model_aliases', 'job_logs')"),
                 3);

    /* The claims use the backfilled column: a cuda:0 worker next to a CPU one gets job_a
     * (and job_d, auto; job_e is cuda:1, which no worker of this pool owns). */
    const char *mine[] = {"cuda:0", "cuda", "auto"};
    const char *pool[] = {"cpu", "cuda:0", "cuda", "auto"};
    kstore_claim_filter f = {mine, 3, pool, 4};
    claim_expect(&f, "job_a");
    claim_expect(&f, "job_d");
    claim_expect(&f, "job_e");
    kstore_job j;
    cr_assert_eq(kstore_job_claim(S, "w", &f, &j), KSTORE_NOT_FOUND);
}

/* A database at schema 5 (main's registry and job logs, before the distributed jobs'
 * column) takes step 6 when opened: its jobs stay, with no distributed_json, and the
 * column then holds what the supervisor writes. */
Test(store, migration_adds_distributed_column_to_v5)
{
    kstore_job j;
    new_job(S, 0, NULL, &j);
    char id[40];
    snprintf(id, sizeof id, "%s", j.id);
    kstore_job_free(&j);
    cr_assert_eq(kstore_schema_version(S), 6);
    kstore_close(S);
    S = NULL;
    /* back to version 5 as a server without distributed jobs left it */
    raw_exec("ALTER TABLE jobs DROP COLUMN distributed_json;"
             "DELETE FROM schema_migrations WHERE version = 6;");
    cr_assert_eq(raw_int("SELECT max(version) FROM schema_migrations"), 5);
    cr_assert_eq(raw_int("SELECT count(*) FROM pragma_table_info('jobs')"
                         " WHERE name = 'distributed_json'"),
                 0);

    char *error = NULL;
    S = kstore_open(db_path, &error);
    cr_assert_not_null(S, "open: %s", error ? error : "?");
    cr_assert_eq(kstore_schema_version(S), 6);
    cr_assert_eq(raw_int("SELECT count(*) FROM schema_migrations WHERE version = 6"), 1);
    cr_assert_eq(kstore_job_get(S, id, &j), KSTORE_OK);
    cr_assert_null(j.distributed_json);
    kstore_job_free(&j);
    cr_assert_eq(kstore_job_set_distributed(S, id, "{\"world_size\":2}"), KSTORE_OK);
    cr_assert_eq(kstore_job_get(S, id, &j), KSTORE_OK);
    cr_assert_str_eq(j.distributed_json, "{\"world_size\":2}");
    kstore_job_free(&j);
}

#define CONCURRENT_JOBS 120

typedef struct {
    char ids[CONCURRENT_JOBS][40];
    int n;
    int busy;
} claimer;

static void *claim_all(void *arg)
{
    claimer *c = arg;
    char *error = NULL;
    kstore *s = kstore_open(db_path, &error); /* its own handle, as a worker has */
    if (!s) {
        free(error);
        return NULL;
    }
    for (int tries = 0; tries < 10 * CONCURRENT_JOBS; tries++) {
        kstore_job j;
        kstore_status st = kstore_job_claim(s, "cpu", NULL, &j);
        if (st == KSTORE_NOT_FOUND) break;
        if (st == KSTORE_BUSY) {
            c->busy++;
            continue;
        }
        if (st != KSTORE_OK) break;
        snprintf(c->ids[c->n++], 40, "%s", j.id);
        kstore_job_free(&j);
    }
    kstore_close(s);
    return NULL;
}

Test(store, concurrent_claims_never_share_a_job)
{
    for (int i = 0; i < CONCURRENT_JOBS; i++) {
        kstore_job j;
        new_job(S, i % 3, NULL, &j);
        kstore_job_free(&j);
    }
    static claimer a, b;
    pthread_t ta, tb;
    pthread_create(&ta, NULL, claim_all, &a);
    pthread_create(&tb, NULL, claim_all, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert_eq(a.n + b.n, CONCURRENT_JOBS, "%d + %d (busy %d, %d)", a.n, b.n, a.busy, b.busy);
    for (int i = 0; i < a.n; i++)
        for (int k = 0; k < b.n; k++) cr_assert_str_neq(a.ids[i], b.ids[k]);
    cr_assert_eq(kstore_job_count(S, KSTORE_JOB_RUNNING), CONCURRENT_JOBS);
}

/* The base states a transition is tried from. */
typedef enum {
    B_QUEUED,
    B_RUNNING,
    B_RUNNING_CANCEL,
    B_RUNNING_PAUSE,
    B_PAUSED,
    B_SUCCEEDED,
    B_FAILED,
    B_CANCELED,
    B_COUNT
} base;
typedef enum { O_CANCEL, O_PAUSE, O_RESUME, O_SET_PAUSED, O_FINISH, O_COUNT } op;

/* A job in base state b; no other job is queued afterwards. */
static void job_in(base b, char id[40])
{
    kstore_job j;
    new_job(S, 0, NULL, &j);
    snprintf(id, 40, "%s", j.id);
    kstore_job_free(&j);
    if (b == B_QUEUED) return;
    if (b == B_PAUSED) {
        cr_assert_eq(kstore_job_pause(S, id, NULL), KSTORE_OK);
        return;
    }
    cr_assert_eq(kstore_job_claim(S, "cpu", NULL, &j), KSTORE_OK);
    cr_assert_str_eq(j.id, id);
    kstore_job_free(&j);
    if (b == B_RUNNING_CANCEL) cr_assert_eq(kstore_job_cancel(S, id, NULL), KSTORE_OK);
    if (b == B_RUNNING_PAUSE) cr_assert_eq(kstore_job_pause(S, id, NULL), KSTORE_OK);
    if (b == B_SUCCEEDED)
        cr_assert_eq(kstore_job_finish(S, id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1), KSTORE_OK);
    if (b == B_FAILED)
        cr_assert_eq(kstore_job_finish(S, id, KSTORE_JOB_FAILED, "data_error", "bad", 3),
                     KSTORE_OK);
    if (b == B_CANCELED)
        cr_assert_eq(kstore_job_finish(S, id, KSTORE_JOB_CANCELED, NULL, NULL, -1), KSTORE_OK);
}

typedef struct {
    kstore_status status;
    kstore_job_state state; /* after */
    int cancel, pause;      /* flags after */
} outcome;

#define OK(st, c, p)                                                                               \
    {                                                                                              \
        KSTORE_OK, KSTORE_JOB_##st, c, p                                                           \
    }
#define NO(st, c, p)                                                                               \
    {                                                                                              \
        KSTORE_CONFLICT, KSTORE_JOB_##st, c, p                                                     \
    }

/* Every op from every base state: [base][op]; the ops in order are cancel, pause,
 * resume, set_paused and finish(succeeded). */
static const outcome TABLE[B_COUNT][O_COUNT] = {
    [B_QUEUED] = {OK(CANCELED, 0, 0), OK(PAUSED, 0, 0), NO(QUEUED, 0, 0), NO(QUEUED, 0, 0),
                  NO(QUEUED, 0, 0)},
    [B_RUNNING] = {OK(RUNNING, 1, 0), OK(RUNNING, 0, 1), NO(RUNNING, 0, 0), OK(PAUSED, 0, 0),
                   OK(SUCCEEDED, 0, 0)},
    /* a pending cancel: pausing is refused and the worker's pause becomes the cancel */
    [B_RUNNING_CANCEL] = {OK(RUNNING, 1, 0), NO(RUNNING, 1, 0), NO(RUNNING, 1, 0),
                          OK(CANCELED, 0, 0), OK(SUCCEEDED, 0, 0)},
    /* a pending pause: cancel replaces it, resume withdraws it */
    [B_RUNNING_PAUSE] = {OK(RUNNING, 1, 0), OK(RUNNING, 0, 1), OK(RUNNING, 0, 0), OK(PAUSED, 0, 0),
                         OK(SUCCEEDED, 0, 0)},
    [B_PAUSED] = {OK(CANCELED, 0, 0), NO(PAUSED, 0, 0), OK(QUEUED, 0, 0), NO(PAUSED, 0, 0),
                  NO(PAUSED, 0, 0)},
    [B_SUCCEEDED] = {NO(SUCCEEDED, 0, 0), NO(SUCCEEDED, 0, 0), NO(SUCCEEDED, 0, 0),
                     NO(SUCCEEDED, 0, 0), NO(SUCCEEDED, 0, 0)},
    [B_FAILED] = {NO(FAILED, 0, 0), NO(FAILED, 0, 0), NO(FAILED, 0, 0), NO(FAILED, 0, 0),
                  NO(FAILED, 0, 0)},
    [B_CANCELED] = {NO(CANCELED, 0, 0), NO(CANCELED, 0, 0), NO(CANCELED, 0, 0), NO(CANCELED, 0, 0),
                    NO(CANCELED, 0, 0)},
};

Test(store, every_transition)
{
    static const char *const OP_NAMES[] = {"cancel", "pause", "resume", "set_paused", "finish"};
    for (int b = 0; b < B_COUNT; b++) {
        for (int o = 0; o < O_COUNT; o++) {
            char id[40];
            job_in((base)b, id);
            kstore_job before;
            cr_assert_eq(kstore_job_get(S, id, &before), KSTORE_OK);
            kstore_job out = {0};
            kstore_status st;
            switch ((op)o) {
            case O_CANCEL:
                st = kstore_job_cancel(S, id, &out);
                break;
            case O_PAUSE:
                st = kstore_job_pause(S, id, &out);
                break;
            case O_RESUME:
                st = kstore_job_resume(S, id, &out);
                break;
            case O_SET_PAUSED:
                st = kstore_job_set_paused(S, id);
                break;
            default:
                st = kstore_job_finish(S, id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1);
                break;
            }
            const outcome *want = &TABLE[b][o];
            cr_assert_eq(st, want->status, "base %d, %s: status %d (%s)", b, OP_NAMES[o], st,
                         kstore_last_error(S));
            if (st == KSTORE_CONFLICT) {
                /* the message names the state the job is in */
                cr_assert_not_null(
                    strstr(kstore_last_error(S), kstore_job_state_name(before.state)), "%s",
                    kstore_last_error(S));
                cr_assert_null(out.spec_json);
            } else if (o <= O_RESUME) {
                cr_assert_eq(out.state, want->state, "base %d, %s", b, OP_NAMES[o]);
            }
            kstore_job after;
            cr_assert_eq(kstore_job_get(S, id, &after), KSTORE_OK);
            cr_assert_eq(after.state, want->state, "base %d, %s: state %s", b, OP_NAMES[o],
                         kstore_job_state_name(after.state));
            cr_assert_eq(after.cancel_requested, want->cancel, "base %d, %s", b, OP_NAMES[o]);
            cr_assert_eq(after.pause_requested, want->pause, "base %d, %s", b, OP_NAMES[o]);
            bool terminal = after.state == KSTORE_JOB_SUCCEEDED ||
                            after.state == KSTORE_JOB_FAILED || after.state == KSTORE_JOB_CANCELED;
            cr_assert_eq(after.finished_at > 0, terminal);
            /* leave nothing queued or running for the next job_in's claim */
            if (after.state == KSTORE_JOB_QUEUED)
                cr_assert_eq(kstore_job_cancel(S, id, NULL), KSTORE_OK);
            if (after.state == KSTORE_JOB_RUNNING)
                cr_assert_eq(kstore_job_finish(S, id, KSTORE_JOB_CANCELED, NULL, NULL, -1),
                             KSTORE_OK);
            kstore_job_free(&before);
            kstore_job_free(&out);
            kstore_job_free(&after);
        }
    }
    cr_assert_eq(kstore_job_cancel(S, "job_nope", NULL), KSTORE_NOT_FOUND);
    char id[40];
    job_in(B_RUNNING, id);
    cr_assert_eq(kstore_job_finish(S, id, KSTORE_JOB_RUNNING, NULL, NULL, -1), KSTORE_ERROR);
}

Test(store, finish_failed_keeps_the_error)
{
    char id[40];
    job_in(B_RUNNING, id);
    cr_assert_eq(
        kstore_job_finish(S, id, KSTORE_JOB_FAILED, "non_finite_loss", "loss became NaN", 42),
        KSTORE_OK);
    kstore_job j;
    cr_assert_eq(kstore_job_get(S, id, &j), KSTORE_OK);
    cr_assert_eq(j.state, KSTORE_JOB_FAILED);
    cr_assert_str_eq(j.error_code, "non_finite_loss");
    cr_assert_str_eq(j.error_message, "loss became NaN");
    cr_assert_eq(j.error_step, 42);
    kstore_job_free(&j);
}

Test(store, progress_and_flags)
{
    char id[40];
    job_in(B_QUEUED, id);
    cr_assert_eq(kstore_job_progress(S, id, 1, 0, 10, 1, 1, NULL), KSTORE_CONFLICT);
    cr_assert_not_null(strstr(kstore_last_error(S), "queued"));
    kstore_job j;
    cr_assert_eq(kstore_job_claim(S, "cpu", NULL, &j), KSTORE_OK);
    kstore_job_free(&j);
    cr_assert_eq(kstore_job_progress(S, id, 7, 1, 100, 250.5, 12.0, "{\"loss\":0.5}"), KSTORE_OK);
    cr_assert_eq(kstore_job_progress(S, id, 8, 1, 100, 251.0, 11.0, NULL), KSTORE_OK);
    cr_assert_eq(kstore_job_get(S, id, &j), KSTORE_OK);
    cr_assert_eq(j.step, 8);
    cr_assert_eq(j.epoch, 1);
    cr_assert_eq(j.total_steps, 100);
    cr_assert_float_eq(j.samples_per_second, 251.0, 1e-9);
    cr_assert_float_eq(j.eta_seconds, 11.0, 1e-9);
    cr_assert_str_eq(j.latest_metrics_json, "{\"loss\":0.5}"); /* NULL kept the last */
    kstore_job_free(&j);
    cr_assert_eq(kstore_job_progress(S, "job_nope", 1, 0, 1, 0, 0, NULL), KSTORE_NOT_FOUND);

    bool cancel, pause;
    cr_assert_eq(kstore_job_flags(S, id, &cancel, &pause), KSTORE_OK);
    cr_assert(!cancel && !pause);
    cr_assert_eq(kstore_job_pause(S, id, NULL), KSTORE_OK);
    cr_assert_eq(kstore_job_flags(S, id, &cancel, &pause), KSTORE_OK);
    cr_assert(!cancel && pause);
    cr_assert_eq(kstore_job_cancel(S, id, NULL), KSTORE_OK); /* cancel overrides pause */
    cr_assert_eq(kstore_job_flags(S, id, &cancel, &pause), KSTORE_OK);
    cr_assert(cancel && !pause);
    cr_assert_eq(kstore_job_flags(S, "job_nope", &cancel, &pause), KSTORE_NOT_FOUND);
}

Test(store, requeue_running)
{
    char plain[40], canceling[40], pausing[40], queued[40], done[40];
    job_in(B_RUNNING, plain);
    job_in(B_RUNNING_CANCEL, canceling);
    job_in(B_RUNNING_PAUSE, pausing);
    job_in(B_SUCCEEDED, done);
    job_in(B_QUEUED, queued);
    cr_assert_eq(kstore_job_progress(S, plain, 30, 1, 100, 1, 1, NULL), KSTORE_OK);
    cr_assert_eq(kstore_job_requeue_running(S), 3);
    cr_assert_eq(kstore_job_requeue_running(S), 0);
    const struct {
        const char *id;
        kstore_job_state state;
    } want[] = {{plain, KSTORE_JOB_QUEUED},
                {canceling, KSTORE_JOB_CANCELED},
                {pausing, KSTORE_JOB_PAUSED},
                {done, KSTORE_JOB_SUCCEEDED},
                {queued, KSTORE_JOB_QUEUED}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        kstore_job j;
        cr_assert_eq(kstore_job_get(S, want[i].id, &j), KSTORE_OK);
        cr_assert_eq(j.state, want[i].state, "%zu: %s", i, kstore_job_state_name(j.state));
        cr_assert(!j.cancel_requested && !j.pause_requested);
        if (i == 0) cr_assert_eq(j.step, 30); /* progress is kept: it resumes from its checkpoint */
        kstore_job_free(&j);
    }
    /* The requeued job is older than the queued one: it is claimed first. */
    kstore_job j;
    cr_assert_eq(kstore_job_claim(S, "cpu", NULL, &j), KSTORE_OK);
    cr_assert_str_eq(j.id, plain);
    kstore_job_free(&j);
}

Test(store, state_names)
{
    for (int i = 0; i <= KSTORE_JOB_CANCELED; i++) {
        kstore_job_state st;
        cr_assert(kstore_job_state_parse(kstore_job_state_name((kstore_job_state)i), &st));
        cr_assert_eq((int)st, i);
    }
    kstore_job_state st;
    cr_assert_not(kstore_job_state_parse("done", &st));
    cr_assert_str_eq(kstore_job_state_name(KSTORE_JOB_PAUSED), "paused");
}

/* ---- metrics ------------------------------------------------------------------------ */

static void append(const char *job, const char *name, int64_t from, int64_t to, double offset)
{
    kstore_metric_point pts[64];
    int n = 0;
    for (int64_t step = from; step <= to; step++)
        pts[n++] = (kstore_metric_point){step, 1.7e9 + (double)step, (double)step + offset};
    cr_assert_eq(kstore_metrics_append(S, job, name, pts, n), KSTORE_OK, "%s",
                 kstore_last_error(S));
}

Test(store, metrics_replace_not_duplicate)
{
    append("job_a", "loss", 1, 5, 0.0);
    append("job_a", "loss", 3, 7, 0.5); /* a resumed job re-reports 3..5 */
    append("job_a", "val_accuracy", 5, 5, 0.0);
    append("job_b", "loss", 1, 2, 0.0);
    kstore_metric_point *p;
    int n;
    cr_assert_eq(kstore_metrics_query(S, "job_a", "loss", -1, 0, &p, &n), KSTORE_OK);
    cr_assert_eq(n, 7);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(p[i].step, i + 1);
        cr_assert_float_eq(p[i].value, (double)(i + 1) + (i + 1 >= 3 ? 0.5 : 0.0), 1e-12);
        cr_assert_float_eq(p[i].wall_time, 1.7e9 + (double)(i + 1), 1e-3);
    }
    free(p);
    cr_assert_eq(raw_int("SELECT count(*) FROM metrics WHERE job_id = 'job_a' AND name = 'loss'"),
                 7);

    cr_assert_eq(kstore_metrics_query(S, "job_a", "loss", 4, 0, &p, &n), KSTORE_OK);
    cr_assert_eq(n, 3);
    cr_assert_eq(p[0].step, 5);
    cr_assert_eq(p[2].step, 7);
    free(p);
    cr_assert_eq(kstore_metrics_query(S, "job_a", "loss", 7, 0, &p, &n), KSTORE_OK);
    cr_assert_eq(n, 0);
    free(p);
    cr_assert_eq(kstore_metrics_query(S, "job_x", "loss", -1, 0, &p, &n), KSTORE_OK);
    cr_assert_eq(n, 0);
    free(p);

    char **names;
    cr_assert_eq(kstore_metrics_names(S, "job_a", &names, &n), KSTORE_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(names[0], "loss");
    cr_assert_str_eq(names[1], "val_accuracy");
    kstore_strings_free(names, n);
    cr_assert_eq(kstore_metrics_append(S, "job_a", "loss", NULL, 0), KSTORE_OK);
}

Test(store, metrics_non_finite_round_trip)
{
    const double values[] = {NAN, INFINITY, -INFINITY, 0.0, -0.0, 1e308, DBL_MIN, -2.5};
    const int n_values = (int)(sizeof values / sizeof values[0]);
    kstore_metric_point pts[8];
    for (int i = 0; i < n_values; i++) pts[i] = (kstore_metric_point){i, 1.7e9, values[i]};
    cr_assert_eq(kstore_metrics_append(S, "job_n", "loss", pts, n_values), KSTORE_OK);
    kstore_metric_point *p;
    int n;
    cr_assert_eq(kstore_metrics_query(S, "job_n", "loss", -1, 0, &p, &n), KSTORE_OK);
    cr_assert_eq(n, n_values);
    cr_assert(isnan(p[0].value));
    cr_assert(isinf(p[1].value) && p[1].value > 0);
    cr_assert(isinf(p[2].value) && p[2].value < 0);
    for (int i = 3; i < n_values; i++) cr_assert_eq(p[i].value, values[i], "%d: %g", i, p[i].value);
    free(p);
    /* Replacing a NaN by a finite value clears the marker. */
    pts[0].value = 1.25;
    cr_assert_eq(kstore_metrics_append(S, "job_n", "loss", pts, 1), KSTORE_OK);
    cr_assert_eq(kstore_metrics_query(S, "job_n", "loss", -1, 0, &p, &n), KSTORE_OK);
    cr_assert_eq(p[0].value, 1.25);
    free(p);
}

/* A deterministic bumpy series with a few spikes. */
static double series_value(int64_t i)
{
    uint64_t h = (uint64_t)i * 0x9E3779B97F4A7C15ull;
    double noise = (double)(h >> 40) / (double)(1ull << 24);
    return 2.0 * exp(-(double)i / 3000.0) + 0.3 * sin((double)i / 50.0) + noise * 0.1;
}

static bool has_point(const kstore_metric_point *p, int n, int64_t step, double value)
{
    for (int i = 0; i < n; i++)
        if (p[i].step == step) return p[i].value == value || (isnan(value) && isnan(p[i].value));
    return false;
}

Test(store, metrics_downsampling)
{
    enum { N = 10000 };
    kstore_metric_point *pts = malloc(N * sizeof *pts);
    for (int i = 0; i < N; i++)
        pts[i] = (kstore_metric_point){i, 1.7e9 + i * 0.01, series_value(i)};
    pts[4321].value = 50.0; /* a spike must survive */
    cr_assert_eq(kstore_metrics_append(S, "job_d", "loss", pts, N), KSTORE_OK);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kstore_metric_point *p;
    int n;
    cr_assert_eq(kstore_metrics_query(S, "job_d", "loss", -1, 0, &p, &n), KSTORE_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(n, N);
    free(p);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6;
    cr_log_info("10,000 points read in %.2f ms", ms);
    cr_assert_lt(ms, 1000.0);

    const int budgets[] = {1, 2, 3, 4, 7, 100, 501, 9999, 10000, 20000};
    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        int max_points = budgets[b];
        cr_assert_eq(kstore_metrics_query(S, "job_d", "loss", -1, max_points, &p, &n), KSTORE_OK);
        cr_assert_leq(n, max_points, "max_points %d gave %d", max_points, n);
        if (max_points >= N) {
            cr_assert_eq(n, N);
            free(p);
            continue;
        }
        cr_assert_eq(p[n - 1].step, N - 1); /* the last is always there */
        if (max_points >= 2) cr_assert_eq(p[0].step, 0);
        for (int i = 0; i < n; i++) {
            cr_assert_eq(p[i].value, pts[p[i].step].value); /* only original points */
            if (i) cr_assert_gt(p[i].step, p[i - 1].step);  /* in step order, no repeats */
        }
        /* Each bucket's min and max is present (the documented bucketing). */
        int64_t m = N - 2, buckets = (max_points - 2) / 2;
        for (int64_t k = 0; max_points >= 4 && k < buckets; k++) {
            int64_t lo = 1 + k * m / buckets, hi = 1 + (k + 1) * m / buckets;
            int64_t imin = lo, imax = lo;
            for (int64_t i = lo; i < hi; i++) {
                if (pts[i].value < pts[imin].value) imin = i;
                if (pts[i].value > pts[imax].value) imax = i;
            }
            cr_assert(has_point(p, n, imin, pts[imin].value), "bucket %ld min", (long)k);
            cr_assert(has_point(p, n, imax, pts[imax].value), "bucket %ld max", (long)k);
        }
        if (max_points >= 4)
            cr_assert(has_point(p, n, 4321, 50.0), "the spike at max_points %d", max_points);
        free(p);
    }

    /* after_step and max_points together: only the tail, downsampled. */
    cr_assert_eq(kstore_metrics_query(S, "job_d", "loss", 8999, 50, &p, &n), KSTORE_OK);
    cr_assert_leq(n, 50);
    cr_assert_eq(p[0].step, 9000);
    cr_assert_eq(p[n - 1].step, N - 1);
    free(p);

    /* A NaN in a bucket shows in the downsampled series. */
    pts[7000].value = NAN;
    cr_assert_eq(kstore_metrics_append(S, "job_d", "loss", &pts[7000], 1), KSTORE_OK);
    cr_assert_eq(kstore_metrics_query(S, "job_d", "loss", -1, 100, &p, &n), KSTORE_OK);
    cr_assert(has_point(p, n, 7000, NAN));
    free(p);
    free(pts);
}

/* ---- checkpoints and versions -------------------------------------------------------- */

static kstore_checkpoint ckpt(const char *job, int64_t step, const char *kind, int64_t bytes)
{
    kstore_checkpoint c = {.step = step, .bytes = bytes};
    snprintf(c.job_id, sizeof c.job_id, "%s", job);
    snprintf(c.kind, sizeof c.kind, "%s", kind);
    snprintf(c.path, sizeof c.path, "jobs/%s/%s-%ld.safetensors", job, kind, (long)step);
    return c;
}

Test(store, checkpoints)
{
    kstore_checkpoint c;
    cr_assert_eq(kstore_checkpoint_latest(S, "job_c", "checkpoint", &c), KSTORE_NOT_FOUND);
    kstore_checkpoint a = ckpt("job_c", 100, "checkpoint", 10);
    kstore_checkpoint b = ckpt("job_c", 200, "checkpoint", 20);
    kstore_checkpoint b2 = ckpt("job_c", 200, "checkpoint", 21);
    kstore_checkpoint f = ckpt("job_c", 300, "final", 30);
    kstore_checkpoint other = ckpt("job_o", 900, "checkpoint", 1);
    cr_assert_eq(kstore_checkpoint_add(S, &a), KSTORE_OK);
    cr_assert_eq(kstore_checkpoint_add(S, &f), KSTORE_OK);
    cr_assert_eq(kstore_checkpoint_add(S, &b), KSTORE_OK);
    cr_assert_eq(kstore_checkpoint_add(S, &b2), KSTORE_OK); /* same step again: replaced */
    cr_assert_eq(kstore_checkpoint_add(S, &other), KSTORE_OK);

    kstore_checkpoint *list;
    int n;
    cr_assert_eq(kstore_checkpoint_list(S, "job_c", &list, &n), KSTORE_OK);
    cr_assert_eq(n, 3);
    cr_assert_eq(list[0].step, 100);
    cr_assert_eq(list[1].step, 200);
    cr_assert_eq(list[1].bytes, 21);
    cr_assert_str_eq(list[2].kind, "final");
    cr_assert_gt(list[2].created_at, 1.6e9);
    free(list);

    cr_assert_eq(kstore_checkpoint_latest(S, "job_c", "checkpoint", &c), KSTORE_OK);
    cr_assert_eq(c.step, 200);
    cr_assert_str_eq(c.path, "jobs/job_c/checkpoint-200.safetensors");
    cr_assert_eq(kstore_checkpoint_latest(S, "job_c", "final", &c), KSTORE_OK);
    cr_assert_eq(c.step, 300);
}

Test(store, model_versions)
{
    char ids[4][40];
    const char *models[] = {"m", "m", "m", "other"};
    for (int i = 0; i < 4; i++) {
        kstore_job j;
        cr_assert_eq(kstore_job_create(S, "{}", models[i], "d", NULL, NULL, 0, 1, &j, NULL),
                     KSTORE_OK);
        snprintf(ids[i], 40, "%s", j.id);
        kstore_job_free(&j);
        cr_assert_eq(kstore_job_claim(S, "cpu", NULL, &j), KSTORE_OK);
        cr_assert_str_eq(j.id, ids[i]);
        kstore_job_free(&j);
        kstore_job_state end = i == 2 ? KSTORE_JOB_FAILED : KSTORE_JOB_SUCCEEDED;
        cr_assert_eq(kstore_job_finish(S, ids[i], end, "x", "y", 1), KSTORE_OK);
    }
    char(*versions)[40];
    int n;
    cr_assert_eq(kstore_model_versions(S, "m", &versions, &n), KSTORE_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(versions[0], ids[1]); /* newest first */
    cr_assert_str_eq(versions[1], ids[0]);
    free(versions);
    cr_assert_eq(kstore_model_versions(S, "none", &versions, &n), KSTORE_OK);
    cr_assert_eq(n, 0);
    free(versions);
}

/* ---- versions, aliases, a model's deletion, job logs (registry.c) -------------------------- */

/* A succeeded job of model with a final checkpoint of bytes at path; its id into id. */
static void succeeded_job(const char *model, const char *path, int64_t bytes, char id[40])
{
    kstore_job j;
    cr_assert_eq(kstore_job_create(S, "{}", model, "d", NULL, NULL, 0, 1, &j, NULL), KSTORE_OK);
    snprintf(id, 40, "%s", j.id);
    kstore_job_free(&j);
    cr_assert_eq(kstore_job_claim(S, "cpu", NULL, &j), KSTORE_OK);
    kstore_job_free(&j);
    kstore_checkpoint c = {.step = 1, .bytes = bytes, .kind = "final"};
    snprintf(c.job_id, sizeof c.job_id, "%s", id);
    snprintf(c.path, sizeof c.path, "%s", path);
    cr_assert_eq(kstore_checkpoint_add(S, &c), KSTORE_OK);
    cr_assert_eq(kstore_job_finish(S, id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1), KSTORE_OK);
}

Test(store, versions_both_kinds_newest_first)
{
    cr_assert_eq(kstore_model_put(S, "m", "{}", 10), KSTORE_OK);
    char job[40];
    succeeded_job("m", "jobs/x/model.safetensors", 123, job);
    kstore_version v = {.model = "m", .version = "torch-1", .path = "models/m/torch-1", .bytes = 7};
    v.info_json = "{\"strict\": true}";
    cr_assert_eq(kstore_version_add(S, &v), KSTORE_OK);
    cr_assert_eq(kstore_version_add(S, &v), KSTORE_CONFLICT, "names are unique per model");
    kstore_version other = {.model = "nope", .version = "v", .path = "p"};
    cr_assert_eq(kstore_version_add(S, &other), KSTORE_NOT_FOUND);
    cr_assert(strstr(kstore_last_error(S), "nope"), "%s", kstore_last_error(S));

    kstore_version *list;
    int n;
    cr_assert_eq(kstore_version_list(S, "m", &list, &n), KSTORE_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(list[0].version, "torch-1"); /* uploaded after the job finished */
    cr_assert(!list[0].from_job);
    cr_assert_str_eq(list[0].info_json, "{\"strict\": true}");
    cr_assert_str_eq(list[1].version, job);
    cr_assert(list[1].from_job);
    cr_assert_str_eq(list[1].path, "jobs/x/model.safetensors");
    cr_assert_eq(list[1].bytes, 123);
    kstore_version_list_free(list, n);

    kstore_version got;
    cr_assert_eq(kstore_version_get(S, "m", job, &got), KSTORE_OK);
    cr_assert(got.from_job);
    kstore_version_free(&got);
    cr_assert_eq(kstore_version_get(S, "m", "torch-2", &got), KSTORE_NOT_FOUND);
    cr_assert_eq(kstore_version_get(S, "other", job, &got), KSTORE_NOT_FOUND,
                 "a job is a version of its own model only");
    cr_assert_eq(kstore_version_delete(S, "m", job), KSTORE_NOT_FOUND, "jobs are not uploads");
    cr_assert_eq(kstore_version_delete(S, "m", "torch-1"), KSTORE_OK);
    cr_assert_eq(kstore_version_get(S, "m", "torch-1", &got), KSTORE_NOT_FOUND);
}

Test(store, aliases_set_move_delete)
{
    cr_assert_eq(kstore_model_put(S, "m", "{}", 10), KSTORE_OK);
    cr_assert_eq(kstore_alias_set(S, "m", "production", "v1"), KSTORE_OK);
    cr_assert_eq(kstore_alias_set(S, "m", "default", "v1"), KSTORE_OK);
    cr_assert_eq(kstore_alias_set(S, "m", "production", "v2"), KSTORE_OK); /* moved */
    cr_assert_eq(kstore_alias_set(S, "nope", "production", "v2"), KSTORE_NOT_FOUND);
    kstore_alias a;
    cr_assert_eq(kstore_alias_get(S, "m", "production", &a), KSTORE_OK);
    cr_assert_str_eq(a.version, "v2");
    cr_assert_gt(a.updated_at, 0);
    kstore_alias *list;
    int n;
    cr_assert_eq(kstore_alias_list(S, "m", &list, &n), KSTORE_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(list[0].alias, "default");
    cr_assert_str_eq(list[1].alias, "production");
    free(list);
    cr_assert_eq(kstore_alias_delete(S, "m", "production"), KSTORE_OK);
    cr_assert_eq(kstore_alias_delete(S, "m", "production"), KSTORE_NOT_FOUND);
    cr_assert_eq(kstore_alias_get(S, "m", "production", &a), KSTORE_NOT_FOUND);
    /* a plain delete of the model takes its aliases along (foreign key cascade) */
    cr_assert_eq(kstore_model_delete(S, "m"), KSTORE_OK);
    cr_assert_eq(raw_int("SELECT count(*) FROM model_aliases"), 0);
}

Test(store, model_delete_all_takes_everything)
{
    cr_assert_eq(kstore_model_put(S, "m", "{}", 10), KSTORE_OK);
    cr_assert_eq(kstore_model_put(S, "keep", "{}", 10), KSTORE_OK);
    char a[40], b[40], kept[40];
    succeeded_job("m", "jobs/a/model.safetensors", 1, a);
    succeeded_job("m", "jobs/b/model.safetensors", 1, b);
    succeeded_job("keep", "jobs/k/model.safetensors", 1, kept);
    kstore_metric_point p = {.step = 1, .wall_time = 1, .value = 0.5};
    cr_assert_eq(kstore_metrics_append(S, a, "loss", &p, 1), KSTORE_OK);
    cr_assert_eq(kstore_metrics_append(S, kept, "loss", &p, 1), KSTORE_OK);
    cr_assert_eq(kstore_job_log_append(S, a, "info", "hello", 0, NULL), KSTORE_OK);
    kstore_version v = {.model = "m", .version = "up", .path = "models/m/up.safetensors"};
    cr_assert_eq(kstore_version_add(S, &v), KSTORE_OK);
    cr_assert_eq(kstore_alias_set(S, "m", "production", "up"), KSTORE_OK);

    kstore_job_ref *refs;
    int n_refs;
    cr_assert_eq(kstore_model_jobs(S, "m", &refs, &n_refs), KSTORE_OK);
    cr_assert_eq(n_refs, 2);
    cr_assert_str_eq(refs[0].id, b); /* newest first */
    cr_assert_eq(refs[0].state, KSTORE_JOB_SUCCEEDED);
    free(refs);

    /* a queued job of the model blocks it */
    kstore_job q;
    cr_assert_eq(kstore_job_create(S, "{}", "m", "d", NULL, NULL, 0, 1, &q, NULL), KSTORE_OK);
    char **jobs, **paths;
    int n_jobs, n_paths;
    cr_assert_eq(kstore_model_delete_all(S, "m", &jobs, &n_jobs, &paths, &n_paths),
                 KSTORE_CONFLICT);
    cr_assert(strstr(kstore_last_error(S), q.id), "%s", kstore_last_error(S));
    cr_assert_eq(raw_int("SELECT count(*) FROM jobs WHERE model_name = 'm'"), 3, "nothing went");
    cr_assert_eq(kstore_job_cancel(S, q.id, NULL), KSTORE_OK);
    kstore_job_free(&q);

    cr_assert_eq(kstore_model_delete_all(S, "m", &jobs, &n_jobs, &paths, &n_paths), KSTORE_OK);
    cr_assert_eq(n_jobs, 3);
    cr_assert_eq(n_paths, 1);
    cr_assert_str_eq(paths[0], "models/m/up.safetensors");
    kstore_strings_free(jobs, n_jobs);
    kstore_strings_free(paths, n_paths);
    cr_assert_eq(raw_int("SELECT count(*) FROM jobs"), 1);
    cr_assert_eq(raw_int("SELECT count(*) FROM metrics"), 1);
    cr_assert_eq(raw_int("SELECT count(*) FROM checkpoints"), 1);
    cr_assert_eq(raw_int("SELECT count(*) FROM job_logs"), 0);
    cr_assert_eq(raw_int("SELECT count(*) FROM model_versions"), 0);
    cr_assert_eq(raw_int("SELECT count(*) FROM model_aliases"), 0);
    cr_assert_eq(raw_int("SELECT count(*) FROM models"), 1);
    cr_assert_eq(kstore_model_delete_all(S, "m", &jobs, &n_jobs, &paths, &n_paths),
                 KSTORE_NOT_FOUND);
}

Test(store, job_log_numbered_and_capped)
{
    int64_t seq = -1;
    cr_assert_eq(kstore_job_log_append(S, "job_a", "info", "one", 3, &seq), KSTORE_OK);
    cr_assert_eq(seq, 1);
    cr_assert_eq(kstore_job_log_append(S, "job_b", "info", "other job", 3, &seq), KSTORE_OK);
    cr_assert_eq(seq, 1, "numbered per job");
    cr_assert_eq(kstore_job_log_append(S, "job_a", "info", "two", 3, &seq), KSTORE_OK);
    cr_assert_eq(kstore_job_log_append(S, "job_a", "info", "three", 3, &seq), KSTORE_OK);
    cr_assert_eq(seq, 3);
    cr_assert_eq(kstore_job_log_append(S, "job_a", "info", "dropped", 3, &seq), KSTORE_OK);
    cr_assert_eq(seq, 0, "info lines past the cap are dropped");
    cr_assert_eq(kstore_job_log_append(S, "job_a", "error", "kept", 3, &seq), KSTORE_OK);
    cr_assert_eq(seq, 4, "errors are always kept");
    cr_assert_eq(kstore_job_log_append(S, "", "info", "x", 0, &seq), KSTORE_ERROR);

    kstore_log_line *lines;
    int n;
    cr_assert_eq(kstore_job_log_query(S, "job_a", 0, 0, &lines, &n), KSTORE_OK);
    cr_assert_eq(n, 4);
    cr_assert_str_eq(lines[0].message, "one");
    cr_assert_str_eq(lines[3].message, "kept");
    cr_assert_str_eq(lines[3].level, "error");
    cr_assert_gt(lines[0].time, 1e9);
    kstore_job_log_free(lines, n);
    cr_assert_eq(kstore_job_log_query(S, "job_a", 2, 1, &lines, &n), KSTORE_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(lines[0].seq, 3);
    kstore_job_log_free(lines, n);
}
