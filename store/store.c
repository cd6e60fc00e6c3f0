/*
 * store.c — opening a kstore: the SQLite connection and its pragmas (WAL, busy timeout,
 * foreign keys, synchronous), the versioned schema migrations, the prepared-statement
 * cache, transactions and error text.
 *
 * Threads: a handle is one SQLite connection opened with SQLITE_OPEN_NOMUTEX, so it
 * must be used by one thread at a time; each thread opens its own handle on the same
 * file. WAL lets readers run beside the one writer; writers wait up to the busy
 * timeout for each other.
 */
#define _GNU_SOURCE
#include "kstore_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUSY_TIMEOUT_MS 10000

/* Schema steps, applied in order inside one BEGIN IMMEDIATE each; a step never changes
 * once released: new needs get a new step. */
static const struct {
    int version;
    const char *description;
    const char *sql;
} MIGRATIONS[] = {
    {1, "models and datasets",
     "CREATE TABLE models ("
     "  name TEXT PRIMARY KEY,"
     "  spec_json TEXT NOT NULL,"
     "  parameter_count INTEGER NOT NULL,"
     "  created_at REAL NOT NULL);"
     "CREATE TABLE datasets ("
     "  name TEXT PRIMARY KEY,"
     "  description TEXT,"
     "  created_at REAL NOT NULL);"
     "CREATE TABLE dataset_files ("
     "  dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,"
     "  role TEXT NOT NULL,"
     "  format TEXT NOT NULL,"
     "  path TEXT NOT NULL,"
     "  bytes INTEGER NOT NULL,"
     "  samples INTEGER NOT NULL,"
     "  PRIMARY KEY (dataset, role)) WITHOUT ROWID;"},
    {2, "jobs",
     /* seq orders jobs by age (AUTOINCREMENT never reuses a value); the public id is
      * random. State is stored by name so the database reads plainly. */
     "CREATE TABLE jobs ("
     "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
     "  id TEXT NOT NULL UNIQUE,"
     "  state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'paused', 'succeeded',"
     "                                       'failed', 'canceled')),"
     "  priority INTEGER NOT NULL DEFAULT 0,"
     "  model_name TEXT NOT NULL DEFAULT '',"
     "  dataset_name TEXT NOT NULL DEFAULT '',"
     "  submission_id TEXT,"
     "  spec_json TEXT NOT NULL,"
     "  device TEXT NOT NULL DEFAULT '',"
     "  created_at REAL NOT NULL,"
     "  started_at REAL,"
     "  finished_at REAL,"
     "  updated_at REAL NOT NULL,"
     "  step INTEGER NOT NULL DEFAULT 0,"
     "  total_steps INTEGER NOT NULL DEFAULT 0,"
     "  epoch INTEGER NOT NULL DEFAULT 0,"
     "  samples_per_second REAL NOT NULL DEFAULT 0,"
     "  eta_seconds REAL NOT NULL DEFAULT -1,"
     "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
     "  pause_requested INTEGER NOT NULL DEFAULT 0,"
     "  error_code TEXT NOT NULL DEFAULT '',"
     "  error_message TEXT,"
     "  error_step INTEGER NOT NULL DEFAULT -1,"
     "  latest_metrics_json TEXT);"
     "CREATE UNIQUE INDEX jobs_submission ON jobs(submission_id)"
     "  WHERE submission_id IS NOT NULL;"
     "CREATE INDEX jobs_queue ON jobs(state, priority DESC, seq);"
     "CREATE INDEX jobs_state_seq ON jobs(state, seq);"
     "CREATE INDEX jobs_model ON jobs(model_name, state);"},
    {3, "metrics and checkpoints",
     /* value is NULL for non-finite points and special says which (SQLite stores NaN
      * as NULL): 0 finite, 1 NaN, 2 +inf, 3 -inf. */
     "CREATE TABLE metrics ("
     "  job_id TEXT NOT NULL,"
     "  name TEXT NOT NULL,"
     "  step INTEGER NOT NULL,"
     "  wall_time REAL NOT NULL,"
     "  value REAL,"
     "  special INTEGER NOT NULL DEFAULT 0,"
     "  PRIMARY KEY (job_id, name, step)) WITHOUT ROWID;"
     "CREATE TABLE checkpoints ("
     "  job_id TEXT NOT NULL,"
     "  kind TEXT NOT NULL,"
     "  step INTEGER NOT NULL,"
     "  path TEXT NOT NULL,"
     "  bytes INTEGER NOT NULL,"
     "  created_at REAL NOT NULL,"
     "  PRIMARY KEY (job_id, kind, step)) WITHOUT ROWID;"},
    {4, "jobs' requested device",
     /* The device a job asked for, apart from device (which a claim overwrites with the
      * worker's), so that a claim can pick only jobs meant for its worker in SQL. Old rows
      * take it from their spec as jobs.c's requested_device() would: no or an empty
      * "device" is "cpu", "cuda:01" is "cuda:1", anything else as written; a spec that is
      * not JSON stays "cpu" (json_extract would fail the whole step). The queue index
      * gains the column so the claim's filter reads it from the index, fetching only the
      * row it takes; it replaces jobs_queue, its prefix. */
     "ALTER TABLE jobs ADD COLUMN requested_device TEXT NOT NULL DEFAULT 'cpu';"
     "UPDATE jobs SET requested_device = json_extract(spec_json, '$.device')"
     "  WHERE CASE WHEN json_valid(spec_json)"
     "             THEN json_type(spec_json, '$.device') = 'text'"
     "                  AND json_extract(spec_json, '$.device') <> ''"
     "             ELSE 0 END;"
     "UPDATE jobs SET requested_device ="
     "    'cuda:' || coalesce(nullif(ltrim(substr(requested_device, 6), '0'), ''), '0')"
     "  WHERE requested_device GLOB 'cuda:0?*'"
     "    AND substr(requested_device, 6) NOT GLOB '*[^0-9]*';"
     "DROP INDEX jobs_queue;"
     "CREATE INDEX jobs_queue_device ON jobs(state, priority DESC, seq, requested_device);"},
    {5, "model versions, aliases and job logs",
     /* Uploaded weights (a job's version is the job itself) and aliases naming a version;
      * both go with their model (the server refuses to delete a model that has versions
      * unless asked to delete everything). A job's log lines are numbered per job. */
     "CREATE TABLE model_versions ("
     "  model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,"
     "  version TEXT NOT NULL,"
     "  path TEXT NOT NULL,"
     "  bytes INTEGER NOT NULL,"
     "  created_at REAL NOT NULL,"
     "  info_json TEXT,"
     "  PRIMARY KEY (model, version)) WITHOUT ROWID;"
     "CREATE TABLE model_aliases ("
     "  model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,"
     "  alias TEXT NOT NULL,"
     "  version TEXT NOT NULL,"
     "  updated_at REAL NOT NULL,"
     "  PRIMARY KEY (model, alias)) WITHOUT ROWID;"
     "CREATE TABLE job_logs ("
     "  job_id TEXT NOT NULL,"
     "  seq INTEGER NOT NULL,"
     "  time REAL NOT NULL,"
     "  level TEXT NOT NULL,"
     "  message TEXT NOT NULL,"
     "  PRIMARY KEY (job_id, seq)) WITHOUT ROWID;"},
    {6, "distributed jobs",
     /* A distributed job's processes as its supervisor last saw them (JSON: world size,
      * restarts, each rank's host, pid and samples/s); NULL for other jobs. */
     "ALTER TABLE jobs ADD COLUMN distributed_json TEXT;"},
};
#define N_MIGRATIONS ((int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]))

void kstore__set_error(kstore *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
}

kstore_status kstore__db_fail(kstore *s, const char *what)
{
    int rc = sqlite3_extended_errcode(s->db);
    kstore__set_error(s, "%s: %s", what, sqlite3_errmsg(s->db));
    /* an I/O error that was a full disk (growing the WAL index, say) is a full disk */
    int system_errno = sqlite3_system_errno(s->db);
    if ((rc & 0xff) == SQLITE_IOERR && (system_errno == ENOSPC || system_errno == EDQUOT))
        return KSTORE_FULL;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return KSTORE_BUSY;
    case SQLITE_CONSTRAINT:
        return KSTORE_CONFLICT;
    case SQLITE_FULL:
        return KSTORE_FULL;
    default:
        return KSTORE_ERROR;
    }
}

sqlite3_stmt *kstore__stmt(kstore *s, int id, const char *sql)
{
    sqlite3_stmt *st = s->stmts[id];
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return st;
    }
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        kstore__db_fail(s, "preparing a statement");
        return NULL;
    }
    s->stmts[id] = st;
    return st;
}

kstore_status kstore__run(kstore *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    kstore_status status = KSTORE_OK;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) status = kstore__db_fail(s, what);
    sqlite3_reset(st);
    return status;
}

kstore_status kstore__sync(kstore *s, int level)
{
    if (s->sync == level) return KSTORE_OK;
    const char *sql = level == SYNC_FULL ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL";
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return kstore__db_fail(s, "setting synchronous");
    s->sync = level;
    return KSTORE_OK;
}

kstore_status kstore__begin(kstore *s, int sync)
{
    kstore_status status = kstore__sync(s, sync);
    if (status) return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_BEGIN, "BEGIN IMMEDIATE");
    return st ? kstore__run(s, st, "beginning a transaction") : KSTORE_ERROR;
}

kstore_status kstore__commit(kstore *s)
{
    sqlite3_stmt *st = kstore__stmt(s, ST_COMMIT, "COMMIT");
    if (!st) {
        kstore__rollback(s);
        return KSTORE_ERROR;
    }
    kstore_status status = kstore__run(s, st, "committing");
    if (status) kstore__rollback(s);
    return status;
}

void kstore__rollback(kstore *s)
{
    if (sqlite3_get_autocommit(s->db))
        return; /* nothing open (SQLite may have rolled back already) */
    sqlite3_stmt *st = kstore__stmt(s, ST_ROLLBACK, "ROLLBACK");
    if (st) {
        sqlite3_step(st);
        sqlite3_reset(st);
    }
}

double kstore__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void kstore__copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

char *kstore__dup_column(sqlite3_stmt *st, int col)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL) return NULL;
    const char *text = (const char *)sqlite3_column_text(st, col);
    return strdup(text ? text : "");
}

const char *kstore__column_text(sqlite3_stmt *st, int col)
{
    const char *text = (const char *)sqlite3_column_text(st, col);
    return text ? text : "";
}

bool kstore__grow(void **items, int *cap, int n, size_t size)
{
    if (n < *cap) return true;
    int grown = *cap ? *cap * 2 : 16;
    void *p = realloc(*items, (size_t)grown * size);
    if (!p) return false;
    memset((char *)p + (size_t)*cap * size, 0, (size_t)(grown - *cap) * size);
    *items = p;
    *cap = grown;
    return true;
}

kstore_status kstore__check_name(kstore *s, const char *what, const char *name, size_t cap)
{
    if (!name || !name[0]) {
        kstore__set_error(s, "%s is empty", what);
        return KSTORE_ERROR;
    }
    if (strlen(name) >= cap) {
        kstore__set_error(s, "%s is longer than %zu bytes", what, cap - 1);
        return KSTORE_ERROR;
    }
    return KSTORE_OK;
}

/* ---- opening and migrating ---------------------------------------------------------- */

static int current_version(kstore *s)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(version), 0) FROM schema_migrations", -1,
                           &st, NULL) != SQLITE_OK) {
        kstore__db_fail(s, "reading the schema version");
        return -1;
    }
    int version = -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    else
        kstore__db_fail(s, "reading the schema version");
    sqlite3_finalize(st);
    return version;
}

static kstore_status exec(kstore *s, const char *sql, const char *what)
{
    return sqlite3_exec(s->db, sql, NULL, NULL, NULL) == SQLITE_OK ? KSTORE_OK
                                                                   : kstore__db_fail(s, what);
}

/* Each step runs in its own BEGIN IMMEDIATE and re-reads the version inside it, so two
 * handles opening a fresh file at once never apply a step twice. */
static kstore_status migrate(kstore *s)
{
    kstore_status status = exec(s,
                                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                "  version INTEGER PRIMARY KEY,"
                                "  description TEXT NOT NULL,"
                                "  applied_at REAL NOT NULL)",
                                "creating the migrations table");
    if (status) return status;
    for (;;) {
        if ((status = kstore__begin(s, SYNC_FULL))) return status;
        int version = current_version(s);
        if (version < 0) {
            kstore__rollback(s);
            return KSTORE_ERROR;
        }
        if (version > N_MIGRATIONS) {
            kstore__rollback(s);
            kstore__set_error(s,
                              "the database has schema version %d, newer than this build "
                              "knows (%d)",
                              version, N_MIGRATIONS);
            return KSTORE_ERROR;
        }
        if (version == N_MIGRATIONS) return kstore__commit(s);
        int i = version; /* MIGRATIONS[i] has version i + 1 */
        char what[160];
        snprintf(what, sizeof what, "schema migration %d (%s)", MIGRATIONS[i].version,
                 MIGRATIONS[i].description);
        if ((status = exec(s, MIGRATIONS[i].sql, what))) {
            kstore__rollback(s);
            return status;
        }
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(s->db, "INSERT INTO schema_migrations VALUES (?, ?, ?)", -1, &st,
                               NULL) != SQLITE_OK) {
            status = kstore__db_fail(s, what);
            kstore__rollback(s);
            return status;
        }
        sqlite3_bind_int(st, 1, MIGRATIONS[i].version);
        sqlite3_bind_text(st, 2, MIGRATIONS[i].description, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 3, kstore__now());
        status = sqlite3_step(st) == SQLITE_DONE ? KSTORE_OK : kstore__db_fail(s, what);
        sqlite3_finalize(st);
        if (status || (status = kstore__commit(s))) {
            kstore__rollback(s);
            return status;
        }
    }
}

static int journal_mode_cb(void *arg, int n, char **values, char **names)
{
    (void)names;
    if (n > 0 && values[0]) snprintf(arg, 16, "%s", values[0]);
    return 0;
}

static kstore_status configure(kstore *s)
{
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(s->db, 1);
    char mode[16] = "";
    if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL", journal_mode_cb, mode, NULL) != SQLITE_OK)
        return kstore__db_fail(s, "setting WAL mode");
    if (strcmp(mode, "wal") != 0) {
        kstore__set_error(s, "the database refused WAL mode (journal mode is %s)", mode);
        return KSTORE_ERROR;
    }
    s->sync = 0;
    kstore_status status = kstore__sync(s, SYNC_FULL);
    if (status) return status;
    return exec(s, "PRAGMA foreign_keys=ON", "enabling foreign keys");
}

kstore *kstore_open(const char *path, char **error)
{
    if (error) *error = NULL;
    if (!sqlite3_threadsafe()) {
        if (error) *error = strdup("SQLite was built without thread support");
        return NULL;
    }
    kstore *s = calloc(1, sizeof *s);
    if (!s) {
        if (error) *error = strdup("out of memory opening the store");
        return NULL;
    }
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        kstore__set_error(s, "opening %s: %s", path,
                          s->db ? sqlite3_errmsg(s->db) : "out of memory");
    } else if (configure(s) == KSTORE_OK && migrate(s) == KSTORE_OK) {
        return s;
    } else {
        char copy[sizeof s->error];
        snprintf(copy, sizeof copy, "%s", s->error);
        snprintf(s->error, sizeof s->error, "opening %.200s: %.300s", path, copy);
    }
    if (error) *error = strdup(s->error);
    kstore_close(s);
    return NULL;
}

void kstore_close(kstore *store)
{
    if (!store) return;
    for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(store->stmts[i]);
    sqlite3_close(store->db); /* every statement is finalized: this cannot be busy */
    free(store);
}

const char *kstore_last_error(const kstore *store)
{
    return store ? store->error : "no store";
}

int kstore_schema_version(kstore *store)
{
    return current_version(store);
}

void kstore_strings_free(char **strings, int count)
{
    if (!strings) return;
    for (int i = 0; i < count; i++) free(strings[i]);
    free(strings);
}
