/*
 * registry.c — a model's versions and aliases, jobs' own log lines, and deleting a model
 * with everything of it.
 *
 * A version is either a succeeded job of the model (named by the job's id, its weights
 * the job's final checkpoint) or a weights file uploaded under a name (model_versions).
 * Both kinds are read through one UNION so that listing, the newest version and a look-up
 * by name treat them alike. An alias (model_aliases) names one version of its model;
 * both tables cascade from models, so a model's deletion takes them along.
 *
 * Log lines (job_logs) are numbered per job from 1 in one INSERT ... SELECT max(seq) + 1,
 * so concurrent writers (the worker, an HTTP thread recording a cancel request) never
 * take the same number; readers page with "after seq".
 */
#define _GNU_SOURCE
#include "kstore_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- versions ----------------------------------------------------------------------- */

/* Every version of model ?1, both kinds, newest first; ?2 NULL or one version's name. A
 * job's weights are its newest final checkpoint. */
#define VERSIONS_SQL                                                                               \
    "SELECT version, from_job, path, bytes, created_at, info_json FROM ("                          \
    " SELECT j.id AS version, 1 AS from_job, coalesce(c.path, '') AS path,"                        \
    "   coalesce(c.bytes, 0) AS bytes, coalesce(j.finished_at, 0) AS created_at,"                  \
    "   NULL AS info_json, j.seq AS tie"                                                           \
    " FROM jobs j LEFT JOIN checkpoints c ON c.job_id = j.id AND c.kind = 'final'"                 \
    "   AND c.step = (SELECT max(step) FROM checkpoints WHERE job_id = j.id AND kind = 'final')"   \
    " WHERE j.model_name = ?1 AND j.state = 'succeeded' AND (?2 IS NULL OR j.id = ?2)"             \
    " UNION ALL"                                                                                   \
    " SELECT version, 0, path, bytes, created_at, info_json, 0 FROM model_versions"                \
    " WHERE model = ?1 AND (?2 IS NULL OR version = ?2))"                                          \
    " ORDER BY created_at DESC, tie DESC, version DESC"

static bool row_to_version(sqlite3_stmt *st, const char *model, kstore_version *out)
{
    memset(out, 0, sizeof *out);
    kstore__copy(out->model, sizeof out->model, model);
    kstore__copy(out->version, sizeof out->version, kstore__column_text(st, 0));
    out->from_job = sqlite3_column_int(st, 1) != 0;
    kstore__copy(out->path, sizeof out->path, kstore__column_text(st, 2));
    out->bytes = sqlite3_column_int64(st, 3);
    out->created_at = sqlite3_column_double(st, 4);
    if (sqlite3_column_type(st, 5) == SQLITE_NULL) return true;
    out->info_json = strdup(kstore__column_text(st, 5));
    return out->info_json != NULL;
}

/* Runs VERSIONS_SQL for (model, version or NULL) into a list. */
static kstore_status query_versions(kstore *s, int statement, const char *model,
                                    const char *version, kstore_version **out, int *count)
{
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, statement, VERSIONS_SQL);
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model ? model : "", -1, SQLITE_TRANSIENT);
    if (version) sqlite3_bind_text(st, 2, version, -1, SQLITE_TRANSIENT);
    kstore_version *list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&list, &cap, n, sizeof *list) ||
            !row_to_version(st, model ? model : "", &list[n])) {
            kstore__set_error(s, "out of memory listing versions");
            status = KSTORE_ERROR;
            break;
        }
        n++;
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing versions");
    sqlite3_reset(st);
    if (status) {
        kstore_version_list_free(list, n);
        return status;
    }
    *out = list;
    *count = n;
    return KSTORE_OK;
}

kstore_status kstore_version_list(kstore *store, const char *model, kstore_version **out,
                                  int *count)
{
    return query_versions(store, ST_VERSION_LIST, model, NULL, out, count);
}

kstore_status kstore_version_get(kstore *store, const char *model, const char *version,
                                 kstore_version *out)
{
    memset(out, 0, sizeof *out);
    kstore_version *list = NULL;
    int n = 0;
    kstore_status status =
        query_versions(store, ST_VERSION_GET, model, version ? version : "", &list, &n);
    if (status) return status;
    if (n == 0) {
        kstore__set_error(store, "model '%s' has no version '%s'", model ? model : "",
                          version ? version : "");
        free(list);
        return KSTORE_NOT_FOUND;
    }
    *out = list[0];
    for (int i = 1; i < n; i++) kstore_version_free(&list[i]);
    free(list);
    return KSTORE_OK;
}

kstore_status kstore_version_add(kstore *store, const kstore_version *version)
{
    kstore *s = store;
    kstore_status status = kstore__check_name(s, "a model's name", version->model, 128);
    if (!status) status = kstore__check_name(s, "a version's name", version->version, 64);
    if (status || (status = kstore__sync(s, SYNC_FULL))) return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_VERSION_ADD,
                                    "INSERT INTO model_versions (model, version, path, bytes,"
                                    " created_at, info_json) VALUES (?, ?, ?, ?, ?, ?)");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, version->model, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, version->version, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, version->path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, version->bytes);
    sqlite3_bind_double(st, 5, version->created_at > 0 ? version->created_at : kstore__now());
    if (version->info_json) sqlite3_bind_text(st, 6, version->info_json, -1, SQLITE_TRANSIENT);
    status = kstore__run(s, st, "adding a version");
    if (status == KSTORE_CONFLICT) {
        /* the primary key, or the foreign key to models: say which */
        kstore_model m;
        kstore_status exists = kstore_model_get(s, version->model, &m);
        kstore_model_free(&m);
        if (exists == KSTORE_NOT_FOUND) {
            kstore__set_error(s, "no model named '%s'", version->model);
            return KSTORE_NOT_FOUND;
        }
        kstore__set_error(s, "model '%s' has a version '%s' already", version->model,
                          version->version);
    }
    return status;
}

kstore_status kstore_version_delete(kstore *store, const char *model, const char *version)
{
    kstore *s = store;
    kstore_status status = kstore__sync(s, SYNC_FULL);
    if (status) return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_VERSION_DELETE,
                                    "DELETE FROM model_versions WHERE model = ? AND version = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model ? model : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, version ? version : "", -1, SQLITE_TRANSIENT);
    if ((status = kstore__run(s, st, "deleting a version"))) return status;
    if (sqlite3_changes(s->db) == 0) {
        kstore__set_error(s, "model '%s' has no uploaded version '%s'", model ? model : "",
                          version ? version : "");
        return KSTORE_NOT_FOUND;
    }
    return KSTORE_OK;
}

void kstore_version_free(kstore_version *version)
{
    if (!version) return;
    free(version->info_json);
    version->info_json = NULL;
}

void kstore_version_list_free(kstore_version *versions, int count)
{
    if (!versions) return;
    for (int i = 0; i < count; i++) kstore_version_free(&versions[i]);
    free(versions);
}

/* ---- aliases ------------------------------------------------------------------------ */

kstore_status kstore_alias_set(kstore *store, const char *model, const char *alias,
                               const char *version)
{
    kstore *s = store;
    kstore_status status = kstore__check_name(s, "an alias", alias, 64);
    if (!status) status = kstore__check_name(s, "a version's name", version, 64);
    if (status || (status = kstore__sync(s, SYNC_FULL))) return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_ALIAS_SET,
                                    "INSERT INTO model_aliases (model, alias, version, updated_at)"
                                    " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (model, alias)"
                                    " DO UPDATE SET version = ?3, updated_at = ?4");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model ? model : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, alias, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, version, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 4, kstore__now());
    status = kstore__run(s, st, "setting an alias");
    if (status == KSTORE_CONFLICT) { /* only the foreign key can refuse it */
        kstore__set_error(s, "no model named '%s'", model ? model : "");
        return KSTORE_NOT_FOUND;
    }
    return status;
}

static void row_to_alias(sqlite3_stmt *st, kstore_alias *out)
{
    memset(out, 0, sizeof *out);
    kstore__copy(out->model, sizeof out->model, kstore__column_text(st, 0));
    kstore__copy(out->alias, sizeof out->alias, kstore__column_text(st, 1));
    kstore__copy(out->version, sizeof out->version, kstore__column_text(st, 2));
    out->updated_at = sqlite3_column_double(st, 3);
}

kstore_status kstore_alias_get(kstore *store, const char *model, const char *alias,
                               kstore_alias *out)
{
    kstore *s = store;
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = kstore__stmt(s, ST_ALIAS_GET,
                                    "SELECT model, alias, version, updated_at FROM model_aliases"
                                    " WHERE model = ? AND alias = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model ? model : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, alias ? alias : "", -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    kstore_status status = KSTORE_OK;
    if (rc == SQLITE_ROW) {
        row_to_alias(st, out);
    } else if (rc == SQLITE_DONE) {
        kstore__set_error(s, "model '%s' has no alias '%s'", model ? model : "",
                          alias ? alias : "");
        status = KSTORE_NOT_FOUND;
    } else {
        status = kstore__db_fail(s, "reading an alias");
    }
    sqlite3_reset(st);
    return status;
}

kstore_status kstore_alias_list(kstore *store, const char *model, kstore_alias **out, int *count)
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_ALIAS_LIST,
                                    "SELECT model, alias, version, updated_at FROM model_aliases"
                                    " WHERE model = ? ORDER BY alias");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model ? model : "", -1, SQLITE_TRANSIENT);
    kstore_alias *list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&list, &cap, n, sizeof *list)) {
            kstore__set_error(s, "out of memory listing aliases");
            status = KSTORE_ERROR;
            break;
        }
        row_to_alias(st, &list[n++]);
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing aliases");
    sqlite3_reset(st);
    if (status) {
        free(list);
        return status;
    }
    *out = list;
    *count = n;
    return KSTORE_OK;
}

kstore_status kstore_alias_delete(kstore *store, const char *model, const char *alias)
{
    kstore *s = store;
    kstore_status status = kstore__sync(s, SYNC_FULL);
    if (status) return status;
    sqlite3_stmt *st =
        kstore__stmt(s, ST_ALIAS_DELETE, "DELETE FROM model_aliases WHERE model = ? AND alias = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model ? model : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, alias ? alias : "", -1, SQLITE_TRANSIENT);
    if ((status = kstore__run(s, st, "deleting an alias"))) return status;
    if (sqlite3_changes(s->db) == 0) {
        kstore__set_error(s, "model '%s' has no alias '%s'", model ? model : "",
                          alias ? alias : "");
        return KSTORE_NOT_FOUND;
    }
    return KSTORE_OK;
}

/* ---- a model's jobs, and deleting it all ---------------------------------------------- */

kstore_status kstore_model_jobs(kstore *store, const char *model, kstore_job_ref **out, int *count)
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_MODEL_JOBS,
                                    "SELECT id, state FROM jobs WHERE model_name = ?"
                                    " ORDER BY seq DESC");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model ? model : "", -1, SQLITE_TRANSIENT);
    kstore_job_ref *list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&list, &cap, n, sizeof *list)) {
            kstore__set_error(s, "out of memory listing a model's jobs");
            status = KSTORE_ERROR;
            break;
        }
        kstore__copy(list[n].id, sizeof list[n].id, kstore__column_text(st, 0));
        kstore_job_state_parse(kstore__column_text(st, 1), &list[n].state);
        n++;
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing a model's jobs");
    sqlite3_reset(st);
    if (status) {
        free(list);
        return status;
    }
    *out = list;
    *count = n;
    return KSTORE_OK;
}

/* Collects column 0 of sql (bound to model) into a string list. */
static kstore_status collect(kstore *s, const char *sql, const char *model, char ***out, int *count)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return kstore__db_fail(s, "preparing a statement");
    sqlite3_bind_text(st, 1, model, -1, SQLITE_TRANSIENT);
    char **list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&list, &cap, n, sizeof *list) ||
            !(list[n] = strdup(kstore__column_text(st, 0)))) {
            kstore__set_error(s, "out of memory deleting a model");
            status = KSTORE_ERROR;
            break;
        }
        n++;
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "deleting a model");
    sqlite3_finalize(st);
    if (status) {
        kstore_strings_free(list, n);
        return status;
    }
    *out = list;
    *count = n;
    return KSTORE_OK;
}

kstore_status kstore_model_delete_all(kstore *store, const char *model, char ***job_ids,
                                      int *n_jobs, char ***paths, int *n_paths)
{
    kstore *s = store;
    *job_ids = *paths = NULL;
    *n_jobs = *n_paths = 0;
    kstore_status status = kstore__begin(s, SYNC_FULL);
    if (status) return status;
    char **active = NULL, **jobs = NULL, **files = NULL;
    int n_active = 0, n = 0, n_files = 0;
    /* inside the transaction: no job can start or be queued between check and delete */
    if ((status = collect(s,
                          "SELECT id FROM jobs WHERE model_name = ?"
                          " AND state IN ('queued', 'running', 'paused') ORDER BY seq",
                          model, &active, &n_active)))
        goto fail;
    if (n_active > 0) {
        kstore__set_error(s, "job %s of model '%s' has not finished (cancel it first)", active[0],
                          model);
        status = KSTORE_CONFLICT;
        goto fail;
    }
    if ((status = collect(s, "SELECT id FROM jobs WHERE model_name = ? ORDER BY seq", model, &jobs,
                          &n)) ||
        (status = collect(s, "SELECT path FROM model_versions WHERE model = ?", model, &files,
                          &n_files)))
        goto fail;
    static const char *const STEPS[] = {
        "DELETE FROM metrics WHERE job_id IN (SELECT id FROM jobs WHERE model_name = ?1)",
        "DELETE FROM checkpoints WHERE job_id IN (SELECT id FROM jobs WHERE model_name = ?1)",
        "DELETE FROM job_logs WHERE job_id IN (SELECT id FROM jobs WHERE model_name = ?1)",
        "DELETE FROM jobs WHERE model_name = ?1",
        "DELETE FROM models WHERE name = ?1", /* versions and aliases go by cascade */
    };
    for (size_t i = 0; i < sizeof STEPS / sizeof *STEPS; i++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(s->db, STEPS[i], -1, &st, NULL) != SQLITE_OK) {
            status = kstore__db_fail(s, "deleting a model");
            goto fail;
        }
        sqlite3_bind_text(st, 1, model, -1, SQLITE_TRANSIENT);
        int rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE) {
            status = kstore__db_fail(s, "deleting a model");
            goto fail;
        }
        if (i == 4 && sqlite3_changes(s->db) == 0) {
            kstore__set_error(s, "no model named '%s'", model);
            status = KSTORE_NOT_FOUND;
            goto fail;
        }
    }
    if ((status = kstore__commit(s))) goto fail;
    kstore_strings_free(active, n_active);
    *job_ids = jobs;
    *n_jobs = n;
    *paths = files;
    *n_paths = n_files;
    return KSTORE_OK;
fail:
    kstore__rollback(s);
    kstore_strings_free(active, n_active);
    kstore_strings_free(jobs, n);
    kstore_strings_free(files, n_files);
    return status;
}

/* ---- job logs ------------------------------------------------------------------------ */

kstore_status kstore_job_log_append(kstore *store, const char *job_id, const char *level,
                                    const char *message, int64_t max_info_lines, int64_t *seq)
{
    kstore *s = store;
    if (seq) *seq = 0;
    if (!job_id || !job_id[0] || !level || !message) {
        kstore__set_error(s, "a log line needs a job, a level and a message");
        return KSTORE_ERROR;
    }
    kstore_status status = kstore__sync(s, SYNC_NORMAL);
    if (status) return status;
    /* info lines past the cap are dropped in the same statement: no read-then-write race */
    sqlite3_stmt *st = kstore__stmt(
        s, ST_LOG_APPEND,
        "INSERT INTO job_logs (job_id, seq, time, level, message)"
        " SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3, ?4 FROM job_logs WHERE job_id = ?1"
        " HAVING ?3 <> 'info' OR ?5 <= 0 OR coalesce(max(seq), 0) < ?5"
        " RETURNING seq");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 2, kstore__now());
    sqlite3_bind_text(st, 3, level, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, message, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, max_info_lines);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (seq) *seq = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st);
    }
    status = rc == SQLITE_DONE ? KSTORE_OK : kstore__db_fail(s, "writing a log line");
    sqlite3_reset(st);
    return status;
}

kstore_status kstore_job_log_query(kstore *store, const char *job_id, int64_t after_seq, int limit,
                                   kstore_log_line **out, int *count)
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_LOG_QUERY,
                                    "SELECT seq, time, level, message FROM job_logs"
                                    " WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, job_id ? job_id : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, after_seq);
    sqlite3_bind_int(st, 3, limit > 0 ? limit : 1000);
    kstore_log_line *list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&list, &cap, n, sizeof *list) ||
            !(list[n].message = strdup(kstore__column_text(st, 3)))) {
            kstore__set_error(s, "out of memory reading a log");
            status = KSTORE_ERROR;
            break;
        }
        list[n].seq = sqlite3_column_int64(st, 0);
        list[n].time = sqlite3_column_double(st, 1);
        kstore__copy(list[n].level, sizeof list[n].level, kstore__column_text(st, 2));
        n++;
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "reading a log");
    sqlite3_reset(st);
    if (status) {
        kstore_job_log_free(list, n);
        return status;
    }
    *out = list;
    *count = n;
    return KSTORE_OK;
}

void kstore_job_log_free(kstore_log_line *lines, int count)
{
    if (!lines) return;
    for (int i = 0; i < count; i++) free(lines[i].message);
    free(lines);
}
