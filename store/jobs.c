/*
 * jobs.c — jobs and their state machine: creation (idempotent by submission_id, which a
 * partial UNIQUE index guards), reading and cursor-paginated listing, claiming the best
 * queued job under BEGIN IMMEDIATE (only jobs whose requested device the claimer's
 * filter takes: a worker claims the jobs meant for its device), progress, the
 * cancel/pause/resume/finish transitions and the start-up requeue of jobs a crash left
 * running.
 *
 * Every state change commits with synchronous=FULL; progress (no state change) commits
 * with NORMAL, as metric batches do.
 */
#define _GNU_SOURCE
#include "kstore_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define JOB_COLUMNS                                                                                \
    "id, state, priority, model_name, dataset_name, submission_id, spec_json, device, "            \
    "created_at, started_at, finished_at, updated_at, step, total_steps, epoch, "                  \
    "samples_per_second, eta_seconds, cancel_requested, pause_requested, error_code, "             \
    "error_message, error_step, latest_metrics_json, seq, requested_device, distributed_json"

#define LIST_DEFAULT_LIMIT 100
#define LIST_MAX_LIMIT 1000

static const char *const STATE_NAMES[] = {"queued",    "running", "paused",
                                          "succeeded", "failed",  "canceled"};

const char *kstore_job_state_name(kstore_job_state state)
{
    if ((int)state < 0 || state > KSTORE_JOB_CANCELED) return "unknown";
    return STATE_NAMES[state];
}

bool kstore_job_state_parse(const char *name, kstore_job_state *out)
{
    for (int i = 0; name && i <= KSTORE_JOB_CANCELED; i++) {
        if (strcmp(name, STATE_NAMES[i]) == 0) {
            *out = (kstore_job_state)i;
            return true;
        }
    }
    return false;
}

static bool is_terminal(kstore_job_state state)
{
    return state == KSTORE_JOB_SUCCEEDED || state == KSTORE_JOB_FAILED ||
           state == KSTORE_JOB_CANCELED;
}

static kstore_status bind_text_or_null(sqlite3_stmt *st, int i, const char *text)
{
    int rc = text && text[0] ? sqlite3_bind_text(st, i, text, -1, SQLITE_TRANSIENT)
                             : sqlite3_bind_null(st, i);
    return rc == SQLITE_OK ? KSTORE_OK : KSTORE_ERROR;
}

/* Fills *out from a row of JOB_COLUMNS; false when out of memory. */
static bool row_to_job(sqlite3_stmt *st, kstore_job *out)
{
    memset(out, 0, sizeof *out);
    kstore__copy(out->id, sizeof out->id, kstore__column_text(st, 0));
    kstore_job_state_parse(kstore__column_text(st, 1), &out->state);
    out->priority = sqlite3_column_int(st, 2);
    kstore__copy(out->model_name, sizeof out->model_name, kstore__column_text(st, 3));
    kstore__copy(out->dataset_name, sizeof out->dataset_name, kstore__column_text(st, 4));
    kstore__copy(out->submission_id, sizeof out->submission_id, kstore__column_text(st, 5));
    kstore__copy(out->device, sizeof out->device, kstore__column_text(st, 7));
    kstore__copy(out->requested_device, sizeof out->requested_device, kstore__column_text(st, 24));
    out->created_at = sqlite3_column_double(st, 8);
    out->started_at = sqlite3_column_double(st, 9); /* NULL reads as 0: "not yet" */
    out->finished_at = sqlite3_column_double(st, 10);
    out->updated_at = sqlite3_column_double(st, 11);
    out->step = sqlite3_column_int64(st, 12);
    out->total_steps = sqlite3_column_int64(st, 13);
    out->epoch = sqlite3_column_int64(st, 14);
    out->samples_per_second = sqlite3_column_double(st, 15);
    out->eta_seconds = sqlite3_column_double(st, 16);
    out->cancel_requested = sqlite3_column_int(st, 17) != 0;
    out->pause_requested = sqlite3_column_int(st, 18) != 0;
    kstore__copy(out->error_code, sizeof out->error_code, kstore__column_text(st, 19));
    out->error_step = sqlite3_column_int64(st, 21);
    out->spec_json = kstore__dup_column(st, 6);
    out->error_message = kstore__dup_column(st, 20);
    out->latest_metrics_json = kstore__dup_column(st, 22);
    out->distributed_json = kstore__dup_column(st, 25);
    if (!out->spec_json || (!out->error_message && sqlite3_column_type(st, 20) != SQLITE_NULL) ||
        (!out->latest_metrics_json && sqlite3_column_type(st, 22) != SQLITE_NULL) ||
        (!out->distributed_json && sqlite3_column_type(st, 25) != SQLITE_NULL)) {
        kstore_job_free(out);
        return false;
    }
    return true;
}

void kstore_job_free(kstore_job *job)
{
    if (!job) return;
    free(job->spec_json);
    free(job->error_message);
    free(job->latest_metrics_json);
    free(job->distributed_json);
    job->spec_json = job->error_message = job->latest_metrics_json = NULL;
    job->distributed_json = NULL;
}

void kstore_job_list_free(kstore_job *jobs, int count)
{
    if (!jobs) return;
    for (int i = 0; i < count; i++) kstore_job_free(&jobs[i]);
    free(jobs);
}

/* Reads the job with the given id (by_submission: submission_id) into *out. */
static kstore_status load_job(kstore *s, const char *key, bool by_submission, kstore_job *out)
{
    sqlite3_stmt *st =
        by_submission
            ? kstore__stmt(s, ST_JOB_BY_SUBMISSION,
                           "SELECT " JOB_COLUMNS " FROM jobs WHERE submission_id = ?")
            : kstore__stmt(s, ST_JOB_BY_ID, "SELECT " JOB_COLUMNS " FROM jobs WHERE id = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    kstore_status status = KSTORE_OK;
    if (rc == SQLITE_ROW) {
        if (!row_to_job(st, out)) {
            kstore__set_error(s, "out of memory reading job %s", key);
            status = KSTORE_ERROR;
        }
    } else if (rc == SQLITE_DONE) {
        kstore__set_error(s, "no job with %s '%s'", by_submission ? "submission_id" : "id", key);
        status = KSTORE_NOT_FOUND;
    } else {
        status = kstore__db_fail(s, "reading a job");
    }
    sqlite3_reset(st);
    return status;
}

kstore_status kstore_job_get(kstore *store, const char *id, kstore_job *out)
{
    memset(out, 0, sizeof *out);
    return load_job(store, id ? id : "", false, out);
}

/* A job's requested device as claims match it (the same rule as migration 4's backfill
 * in store.c): nothing is "cpu", the spec's default; "cuda:01", which the spec allows
 * and kn_device_parse reads as cuda:1, is "cuda:1", so the worker owning cuda:1 is the
 * one meant for it; anything else as written. */
static void requested_device(const char *device, char *out, size_t cap)
{
    if (!device || !device[0]) {
        kstore__copy(out, cap, "cpu");
        return;
    }
    const char *index = strncmp(device, "cuda:", 5) == 0 ? device + 5 : NULL;
    if (index && index[0] && strspn(index, "0123456789") == strlen(index)) {
        while (index[0] == '0' && index[1]) index++;
        snprintf(out, cap, "cuda:%s", index);
        return;
    }
    kstore__copy(out, cap, device);
}

static kstore_status new_job_id(kstore *s, char id[40])
{
    unsigned char bytes[8];
    size_t got = 0;
    while (got < sizeof bytes) {
        ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            kstore__set_error(s, "getrandom: %s", strerror(errno));
            return KSTORE_ERROR;
        }
        got += (size_t)n;
    }
    snprintf(id, 40, "job_%02x%02x%02x%02x%02x%02x%02x%02x", bytes[0], bytes[1], bytes[2], bytes[3],
             bytes[4], bytes[5], bytes[6], bytes[7]);
    return KSTORE_OK;
}

kstore_status kstore_job_create(kstore *store, const char *spec_json, const char *model_name,
                                const char *dataset_name, const char *submission_id,
                                const char *device, int priority, int64_t total_steps,
                                kstore_job *out, bool *created)
{
    kstore *s = store;
    kstore_job scratch;
    kstore_job *job = out ? out : &scratch;
    memset(job, 0, sizeof *job);
    if (created) *created = false;
    if (!spec_json) {
        kstore__set_error(s, "a job needs a spec");
        return KSTORE_ERROR;
    }
    if ((model_name && strlen(model_name) >= sizeof job->model_name) ||
        (dataset_name && strlen(dataset_name) >= sizeof job->dataset_name) ||
        (submission_id && strlen(submission_id) >= sizeof job->submission_id) ||
        (device && strlen(device) >= sizeof job->device)) {
        kstore__set_error(s, "a job's model, dataset, submission_id or device is too long");
        return KSTORE_ERROR;
    }
    kstore_status status = kstore__begin(s, SYNC_FULL);
    if (status) return status;
    if (submission_id && submission_id[0]) {
        status = load_job(s, submission_id, true, job);
        if (status == KSTORE_OK) { /* a retried submission: the job it made the first time */
            kstore__rollback(s);
            if (!out) kstore_job_free(job);
            return KSTORE_OK;
        }
        if (status != KSTORE_NOT_FOUND) goto fail;
    }
    char id[40], requested[sizeof job->requested_device];
    requested_device(device, requested, sizeof requested);
    double now = kstore__now();
    /* A collision of 64 random bits is all but impossible; retry anyway rather than fail. */
    for (int attempt = 0;; attempt++) {
        if ((status = new_job_id(s, id))) goto fail;
        sqlite3_stmt *st = kstore__stmt(
            s, ST_JOB_INSERT,
            "INSERT INTO jobs (id, state, priority, model_name, dataset_name, submission_id,"
            " spec_json, device, created_at, updated_at, total_steps, requested_device)"
            " VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)");
        if (!st) {
            status = KSTORE_ERROR;
            goto fail;
        }
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, priority);
        sqlite3_bind_text(st, 3, model_name ? model_name : "", -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, dataset_name ? dataset_name : "", -1, SQLITE_TRANSIENT);
        bind_text_or_null(st, 5, submission_id);
        sqlite3_bind_text(st, 6, spec_json, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 7, device ? device : "", -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(st, 8, now);
        sqlite3_bind_int64(st, 9, total_steps > 0 ? total_steps : 0);
        sqlite3_bind_text(st, 10, requested, -1, SQLITE_TRANSIENT);
        status = kstore__run(s, st, "creating a job");
        if (status != KSTORE_CONFLICT || attempt >= 3) break;
    }
    if (status || (status = load_job(s, id, false, job)) || (status = kstore__commit(s))) goto fail;
    if (created) *created = true;
    if (!out) kstore_job_free(job);
    return KSTORE_OK;
fail:
    kstore__rollback(s);
    kstore_job_free(job);
    return status;
}

kstore_status kstore_job_list(kstore *store, const kstore_job_state *state, const char *cursor,
                              int limit, kstore_job **out, int *count, char next_cursor[40])
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    char after[40] = ""; /* copied first: next_cursor may be the very buffer cursor is */
    if (cursor) kstore__copy(after, sizeof after, cursor);
    cursor = after;
    if (next_cursor) next_cursor[0] = '\0';
    if (limit <= 0) limit = LIST_DEFAULT_LIMIT;
    if (limit > LIST_MAX_LIMIT) limit = LIST_MAX_LIMIT;
    int64_t before = INT64_MAX;
    if (cursor[0]) {
        sqlite3_stmt *st = kstore__stmt(s, ST_JOB_SEQ, "SELECT seq FROM jobs WHERE id = ?");
        if (!st) return KSTORE_ERROR;
        sqlite3_bind_text(st, 1, cursor, -1, SQLITE_TRANSIENT);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) before = sqlite3_column_int64(st, 0);
        kstore_status status = rc == SQLITE_ROW    ? KSTORE_OK
                               : rc == SQLITE_DONE ? KSTORE_NOT_FOUND
                                                   : kstore__db_fail(s, "reading a cursor");
        sqlite3_reset(st);
        if (status == KSTORE_NOT_FOUND)
            kstore__set_error(s, "the cursor '%s' names no job", cursor);
        if (status) return status;
    }
    sqlite3_stmt *st =
        state ? kstore__stmt(s, ST_JOB_LIST_STATE,
                             "SELECT " JOB_COLUMNS " FROM jobs WHERE state = ?3 AND seq < ?1"
                             " ORDER BY seq DESC LIMIT ?2")
              : kstore__stmt(s, ST_JOB_LIST_ALL,
                             "SELECT " JOB_COLUMNS " FROM jobs WHERE seq < ?1"
                             " ORDER BY seq DESC LIMIT ?2");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_int64(st, 1, before);
    sqlite3_bind_int(st, 2, limit + 1); /* one more tells whether a next page exists */
    if (state) sqlite3_bind_text(st, 3, kstore_job_state_name(*state), -1, SQLITE_STATIC);
    kstore_job *jobs = calloc((size_t)limit, sizeof *jobs);
    if (!jobs) {
        sqlite3_reset(st);
        kstore__set_error(s, "out of memory listing jobs");
        return KSTORE_ERROR;
    }
    int n = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == limit) {
            if (next_cursor) kstore__copy(next_cursor, 40, jobs[n - 1].id);
            break;
        }
        if (!row_to_job(st, &jobs[n])) {
            kstore__set_error(s, "out of memory listing jobs");
            status = KSTORE_ERROR;
            break;
        }
        n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing jobs");
    sqlite3_reset(st);
    if (status) {
        kstore_job_list_free(jobs, n);
        if (next_cursor) next_cursor[0] = '\0';
        return status;
    }
    *out = jobs;
    *count = n;
    return KSTORE_OK;
}

int64_t kstore_job_count(kstore *store, kstore_job_state state)
{
    sqlite3_stmt *st =
        kstore__stmt(store, ST_JOB_COUNT, "SELECT count(*) FROM jobs WHERE state = ?");
    if (!st) return -1;
    sqlite3_bind_text(st, 1, kstore_job_state_name(state), -1, SQLITE_STATIC);
    int64_t n = -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    else
        kstore__db_fail(store, "counting jobs");
    sqlite3_reset(st);
    return n;
}

/* items (NULL entries skipped) as a JSON array of strings, malloc'd, for json_each():
 * one cached statement then serves lists of any length. *out NULL when there are none. */
static kstore_status json_strings(kstore *s, const char *const *items, int n, char **out)
{
    *out = NULL;
    if (!items || n <= 0) return KSTORE_OK;
    size_t cap = 3; /* "[", "]", NUL */
    for (int i = 0; i < n; i++) cap += 3 + (items[i] ? 6 * strlen(items[i]) : 0);
    char *json = malloc(cap);
    if (!json) {
        kstore__set_error(s, "out of memory claiming a job");
        return KSTORE_ERROR;
    }
    size_t len = 0;
    json[len++] = '[';
    for (int i = 0; i < n; i++) {
        if (!items[i]) continue;
        if (len > 1) json[len++] = ',';
        json[len++] = '"';
        for (const unsigned char *c = (const unsigned char *)items[i]; *c; c++) {
            if (*c == '"' || *c == '\\') {
                json[len++] = '\\';
                json[len++] = (char)*c;
            } else if (*c < 0x20) {
                len += (size_t)snprintf(json + len, cap - len, "\\u%04x", *c);
            } else {
                json[len++] = (char)*c;
            }
        }
        json[len++] = '"';
    }
    json[len++] = ']';
    json[len] = '\0';
    *out = json;
    return KSTORE_OK;
}

/* The id of the best queued job whose requested device is in accepts (a JSON array;
 * NULL: any job) or, with pool, not in pool. Inside the caller's transaction. */
static kstore_status select_next(kstore *s, const char *accepts, const char *pool, char id[40])
{
    /* jobs_queue_device (state, priority DESC, seq, requested_device) gives the order
     * and the device without reading the rows passed over. */
    sqlite3_stmt *st = kstore__stmt(
        s, ST_JOB_NEXT_QUEUED,
        "SELECT id FROM jobs WHERE state = 'queued'"
        " AND (?1 IS NULL OR requested_device IN (SELECT value FROM json_each(?1))"
        "      OR (?2 IS NOT NULL AND requested_device NOT IN (SELECT value FROM json_each(?2))))"
        " ORDER BY priority DESC, seq ASC LIMIT 1");
    if (!st) return KSTORE_ERROR;
    bind_text_or_null(st, 1, accepts);
    bind_text_or_null(st, 2, pool);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) kstore__copy(id, 40, kstore__column_text(st, 0));
    kstore_status status = rc == SQLITE_ROW    ? KSTORE_OK
                           : rc == SQLITE_DONE ? KSTORE_NOT_FOUND
                                               : kstore__db_fail(s, "finding a queued job");
    sqlite3_reset(st);
    if (status == KSTORE_NOT_FOUND)
        kstore__set_error(s, accepts ? "no queued job that this claim takes" : "no queued job");
    return status;
}

/* The id of the best queued job filter takes, inside the caller's transaction. */
static kstore_status next_queued(kstore *s, const kstore_claim_filter *filter, char id[40])
{
    char *accepts = NULL, *pool = NULL;
    kstore_status status = KSTORE_OK;
    if (filter) status = json_strings(s, filter->accepts, filter->n_accepts, &accepts);
    if (filter && !status) status = json_strings(s, filter->pool, filter->n_pool, &pool);
    if (!status) status = select_next(s, accepts, pool, id);
    free(accepts);
    free(pool);
    return status;
}

kstore_status kstore_job_claim(kstore *store, const char *device, const kstore_claim_filter *filter,
                               kstore_job *out)
{
    kstore *s = store;
    memset(out, 0, sizeof *out);
    /* BEGIN IMMEDIATE takes the write lock before reading, so the job read here cannot
     * be claimed by another connection before the UPDATE below. */
    kstore_status status = kstore__begin(s, SYNC_FULL);
    if (status) return status;
    char id[40] = "";
    if ((status = next_queued(s, filter, id))) {
        kstore__rollback(s);
        return status;
    }
    sqlite3_stmt *st = kstore__stmt(s, ST_JOB_CLAIM,
                                    "UPDATE jobs SET state = 'running', device = ?2,"
                                    " started_at = coalesce(started_at, ?3), updated_at = ?3,"
                                    " cancel_requested = 0, pause_requested = 0 WHERE id = ?1");
    if (!st) {
        kstore__rollback(s);
        return KSTORE_ERROR;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, device ? device : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 3, kstore__now());
    if ((status = kstore__run(s, st, "claiming a job")) || (status = load_job(s, id, false, out)) ||
        (status = kstore__commit(s))) {
        kstore__rollback(s);
        kstore_job_free(out);
        return status;
    }
    return KSTORE_OK;
}

kstore_status kstore_job_progress(kstore *store, const char *id, int64_t step, int64_t epoch,
                                  int64_t total_steps, double samples_per_second,
                                  double eta_seconds, const char *latest_metrics_json)
{
    kstore *s = store;
    kstore_status status = kstore__sync(s, SYNC_NORMAL);
    if (status) return status;
    sqlite3_stmt *st = kstore__stmt(
        s, ST_JOB_PROGRESS,
        "UPDATE jobs SET step = ?2, epoch = ?3, total_steps = ?4, samples_per_second = ?5,"
        " eta_seconds = ?6, latest_metrics_json = coalesce(?7, latest_metrics_json),"
        " updated_at = ?8 WHERE id = ?1 AND state = 'running'");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, step);
    sqlite3_bind_int64(st, 3, epoch);
    sqlite3_bind_int64(st, 4, total_steps);
    sqlite3_bind_double(st, 5, samples_per_second);
    sqlite3_bind_double(st, 6, eta_seconds);
    bind_text_or_null(st, 7, latest_metrics_json);
    sqlite3_bind_double(st, 8, kstore__now());
    if ((status = kstore__run(s, st, "recording progress"))) return status;
    if (sqlite3_changes(s->db) == 1) return KSTORE_OK;
    kstore_job job;
    status = kstore_job_get(s, id, &job);
    if (status) return status;
    kstore__set_error(s, "job %s is %s, not running: no progress to record", id,
                      kstore_job_state_name(job.state));
    kstore_job_free(&job);
    return KSTORE_CONFLICT;
}

kstore_status kstore_job_set_distributed(kstore *store, const char *id, const char *json)
{
    kstore *s = store;
    kstore_status status = kstore__sync(s, SYNC_NORMAL);
    if (status) return status;
    sqlite3_stmt *st =
        kstore__stmt(s, ST_JOB_SET_DISTRIBUTED,
                     "UPDATE jobs SET distributed_json = ?2, updated_at = ?3 WHERE id = ?1");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 2, json);
    sqlite3_bind_double(st, 3, kstore__now());
    if ((status = kstore__run(s, st, "recording the job's processes"))) return status;
    if (sqlite3_changes(s->db) == 1) return KSTORE_OK;
    kstore__set_error(s, "no job %s", id);
    return KSTORE_NOT_FOUND;
}

/* Sets state and flags; finished_at is set when the new state is terminal. Inside the
 * caller's transaction. */
static kstore_status set_state(kstore *s, const char *id, kstore_job_state state,
                               bool cancel_requested, bool pause_requested)
{
    sqlite3_stmt *st =
        kstore__stmt(s, ST_JOB_SET_STATE,
                     "UPDATE jobs SET state = ?2, cancel_requested = ?3, pause_requested = ?4,"
                     " updated_at = ?5, finished_at = coalesce(?6, finished_at) WHERE id = ?1");
    if (!st) return KSTORE_ERROR;
    double now = kstore__now();
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, kstore_job_state_name(state), -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, cancel_requested);
    sqlite3_bind_int(st, 4, pause_requested);
    sqlite3_bind_double(st, 5, now);
    if (is_terminal(state)) sqlite3_bind_double(st, 6, now);
    return kstore__run(s, st, "changing a job's state");
}

typedef enum { OP_CANCEL, OP_PAUSE, OP_RESUME, OP_SET_PAUSED } transition_op;

/* Decides op on the job as it is now (read inside the transaction): the new state and
 * flags, or CONFLICT with a message naming the current state. */
static kstore_status decide(kstore *s, transition_op op, const kstore_job *job,
                            kstore_job_state *state, bool *cancel, bool *pause)
{
    *state = job->state;
    *cancel = job->cancel_requested;
    *pause = job->pause_requested;
    const char *now = kstore_job_state_name(job->state);
    switch (op) {
    case OP_CANCEL:
        if (job->state == KSTORE_JOB_QUEUED || job->state == KSTORE_JOB_PAUSED) {
            *state = KSTORE_JOB_CANCELED;
            *cancel = *pause = false;
            return KSTORE_OK;
        }
        if (job->state == KSTORE_JOB_RUNNING) {
            *cancel = true; /* the worker stops and finishes it as canceled */
            *pause = false;
            return KSTORE_OK;
        }
        kstore__set_error(s,
                          "job %s is %s: only a queued, running or paused job can be "
                          "canceled",
                          job->id, now);
        return KSTORE_CONFLICT;
    case OP_PAUSE:
        if (job->state == KSTORE_JOB_QUEUED) {
            *state = KSTORE_JOB_PAUSED;
            return KSTORE_OK;
        }
        if (job->state == KSTORE_JOB_RUNNING && !job->cancel_requested) {
            *pause = true; /* the worker checkpoints and calls kstore_job_set_paused */
            return KSTORE_OK;
        }
        if (job->state == KSTORE_JOB_RUNNING)
            kstore__set_error(s, "job %s is running and being canceled: it cannot be paused",
                              job->id);
        else
            kstore__set_error(s, "job %s is %s: only a queued or running job can be paused",
                              job->id, now);
        return KSTORE_CONFLICT;
    case OP_RESUME:
        if (job->state == KSTORE_JOB_PAUSED) {
            *state = KSTORE_JOB_QUEUED;
            *pause = false;
            return KSTORE_OK;
        }
        if (job->state == KSTORE_JOB_RUNNING && job->pause_requested) {
            *pause = false; /* withdraws a pause the worker has not acted on yet */
            return KSTORE_OK;
        }
        kstore__set_error(s, "job %s is %s: only a paused job can be resumed", job->id, now);
        return KSTORE_CONFLICT;
    case OP_SET_PAUSED:
        if (job->state == KSTORE_JOB_RUNNING && job->cancel_requested) {
            *state = KSTORE_JOB_CANCELED; /* a cancel asked for meanwhile wins */
            *cancel = *pause = false;
            return KSTORE_OK;
        }
        if (job->state == KSTORE_JOB_RUNNING) {
            *state = KSTORE_JOB_PAUSED;
            *pause = false;
            return KSTORE_OK;
        }
        kstore__set_error(s, "job %s is %s: only a running job can become paused", job->id, now);
        return KSTORE_CONFLICT;
    }
    return KSTORE_ERROR;
}

static kstore_status transition(kstore *s, const char *id, transition_op op, kstore_job *out)
{
    kstore_job job;
    if (out) memset(out, 0, sizeof *out);
    kstore_status status = kstore__begin(s, SYNC_FULL);
    if (status) return status;
    if ((status = load_job(s, id ? id : "", false, &job))) {
        kstore__rollback(s);
        return status;
    }
    kstore_job_state state;
    bool cancel, pause;
    status = decide(s, op, &job, &state, &cancel, &pause);
    kstore_job_free(&job);
    if (status || (status = set_state(s, id, state, cancel, pause)) ||
        (out && (status = load_job(s, id, false, out))) || (status = kstore__commit(s))) {
        kstore__rollback(s);
        if (out) kstore_job_free(out);
        return status;
    }
    return KSTORE_OK;
}

kstore_status kstore_job_cancel(kstore *store, const char *id, kstore_job *out)
{
    return transition(store, id, OP_CANCEL, out);
}

kstore_status kstore_job_pause(kstore *store, const char *id, kstore_job *out)
{
    return transition(store, id, OP_PAUSE, out);
}

kstore_status kstore_job_resume(kstore *store, const char *id, kstore_job *out)
{
    return transition(store, id, OP_RESUME, out);
}

kstore_status kstore_job_set_paused(kstore *store, const char *id)
{
    return transition(store, id, OP_SET_PAUSED, NULL);
}

kstore_status kstore_job_finish(kstore *store, const char *id, kstore_job_state state,
                                const char *error_code, const char *error_message,
                                int64_t error_step)
{
    kstore *s = store;
    if (!is_terminal(state)) {
        kstore__set_error(s, "a job cannot finish as %s", kstore_job_state_name(state));
        return KSTORE_ERROR;
    }
    kstore_status status = kstore__begin(s, SYNC_FULL);
    if (status) return status;
    kstore_job job;
    if ((status = load_job(s, id ? id : "", false, &job))) {
        kstore__rollback(s);
        return status;
    }
    kstore_job_state current = job.state;
    kstore_job_free(&job);
    if (current != KSTORE_JOB_RUNNING) {
        kstore__rollback(s);
        kstore__set_error(s, "job %s is %s: only a running job can finish as %s", id,
                          kstore_job_state_name(current), kstore_job_state_name(state));
        return KSTORE_CONFLICT;
    }
    sqlite3_stmt *st = kstore__stmt(
        s, ST_JOB_FINISH,
        "UPDATE jobs SET state = ?2, finished_at = ?3, updated_at = ?3, eta_seconds = 0,"
        " cancel_requested = 0, pause_requested = 0, error_code = ?4, error_message = ?5,"
        " error_step = ?6 WHERE id = ?1");
    if (!st) {
        kstore__rollback(s);
        return KSTORE_ERROR;
    }
    bool failed = state == KSTORE_JOB_FAILED;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, kstore_job_state_name(state), -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, kstore__now());
    sqlite3_bind_text(st, 4, failed && error_code ? error_code : "", -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 5, failed ? error_message : NULL);
    sqlite3_bind_int64(st, 6, failed ? error_step : -1);
    if ((status = kstore__run(s, st, "finishing a job")) || (status = kstore__commit(s))) {
        kstore__rollback(s);
        return status;
    }
    return KSTORE_OK;
}

int kstore_job_requeue_running(kstore *store)
{
    kstore *s = store;
    /* A cancel or pause that was asked for before the stop is honoured rather than lost;
     * every other running job goes back to the queue. */
    static const char *const SQL[] = {
        "UPDATE jobs SET state = 'canceled', finished_at = ?1, updated_at = ?1,"
        " cancel_requested = 0, pause_requested = 0"
        " WHERE state = 'running' AND cancel_requested",
        "UPDATE jobs SET state = 'paused', updated_at = ?1, pause_requested = 0"
        " WHERE state = 'running' AND pause_requested",
        "UPDATE jobs SET state = 'queued', updated_at = ?1 WHERE state = 'running'",
    };
    if (kstore__begin(s, SYNC_FULL)) return -1;
    double now = kstore__now();
    int total = 0;
    for (size_t i = 0; i < sizeof SQL / sizeof SQL[0]; i++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(s->db, SQL[i], -1, &st, NULL) != SQLITE_OK) {
            kstore__db_fail(s, "requeueing running jobs");
            kstore__rollback(s);
            return -1;
        }
        sqlite3_bind_double(st, 1, now);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) kstore__db_fail(s, "requeueing running jobs");
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE) {
            kstore__rollback(s);
            return -1;
        }
        total += sqlite3_changes(s->db);
    }
    return kstore__commit(s) == KSTORE_OK ? total : -1;
}

kstore_status kstore_job_flags(kstore *store, const char *id, bool *cancel_requested,
                               bool *pause_requested)
{
    kstore *s = store;
    *cancel_requested = *pause_requested = false;
    sqlite3_stmt *st = kstore__stmt(
        s, ST_JOB_FLAGS, "SELECT cancel_requested, pause_requested FROM jobs WHERE id = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    kstore_status status = KSTORE_OK;
    if (rc == SQLITE_ROW) {
        *cancel_requested = sqlite3_column_int(st, 0) != 0;
        *pause_requested = sqlite3_column_int(st, 1) != 0;
    } else if (rc == SQLITE_DONE) {
        kstore__set_error(s, "no job with id '%s'", id);
        status = KSTORE_NOT_FOUND;
    } else {
        status = kstore__db_fail(s, "reading a job's flags");
    }
    sqlite3_reset(st);
    return status;
}
