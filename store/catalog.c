/*
 * catalog.c — the named things jobs refer to: models (their normalised specs), datasets
 * and their files (metadata and relative paths; the bytes live under the data
 * directory), a job's checkpoints, and a model's versions (its succeeded jobs).
 */
#define _GNU_SOURCE
#include "kstore_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- models ------------------------------------------------------------------------ */

kstore_status kstore_model_put(kstore *store, const char *name, const char *spec_json,
                               int64_t parameter_count)
{
    kstore *s = store;
    kstore_status status = kstore__check_name(s, "a model's name", name, 128);
    if (status) return status;
    if (!spec_json) {
        kstore__set_error(s, "model %s has no spec", name);
        return KSTORE_ERROR;
    }
    if ((status = kstore__sync(s, SYNC_FULL))) return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_MODEL_PUT,
                                    "INSERT INTO models (name, spec_json, parameter_count,"
                                    " created_at) VALUES (?, ?, ?, ?)");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, spec_json, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, parameter_count);
    sqlite3_bind_double(st, 4, kstore__now());
    status = kstore__run(s, st, "storing a model");
    if (status == KSTORE_CONFLICT) kstore__set_error(s, "a model named '%s' exists already", name);
    return status;
}

static bool row_to_model(sqlite3_stmt *st, kstore_model *out)
{
    memset(out, 0, sizeof *out);
    kstore__copy(out->name, sizeof out->name, kstore__column_text(st, 0));
    out->spec_json = strdup(kstore__column_text(st, 1));
    out->parameter_count = sqlite3_column_int64(st, 2);
    out->created_at = sqlite3_column_double(st, 3);
    return out->spec_json != NULL;
}

kstore_status kstore_model_get(kstore *store, const char *name, kstore_model *out)
{
    kstore *s = store;
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = kstore__stmt(s, ST_MODEL_GET,
                                    "SELECT name, spec_json, parameter_count, created_at"
                                    " FROM models WHERE name = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, name ? name : "", -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    kstore_status status = KSTORE_OK;
    if (rc == SQLITE_ROW && !row_to_model(st, out)) {
        kstore__set_error(s, "out of memory reading a model");
        status = KSTORE_ERROR;
    } else if (rc == SQLITE_DONE) {
        kstore__set_error(s, "no model named '%s'", name ? name : "");
        status = KSTORE_NOT_FOUND;
    } else if (rc != SQLITE_ROW) {
        status = kstore__db_fail(s, "reading a model");
    }
    sqlite3_reset(st);
    return status;
}

kstore_status kstore_model_list(kstore *store, kstore_model **out, int *count)
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_MODEL_LIST,
                                    "SELECT name, spec_json, parameter_count, created_at"
                                    " FROM models ORDER BY name");
    if (!st) return KSTORE_ERROR;
    kstore_model *models = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&models, &cap, n, sizeof *models) ||
            !row_to_model(st, &models[n])) {
            kstore__set_error(s, "out of memory listing models");
            status = KSTORE_ERROR;
            break;
        }
        n++;
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing models");
    sqlite3_reset(st);
    if (status) {
        kstore_model_list_free(models, n);
        return status;
    }
    *out = models;
    *count = n;
    return KSTORE_OK;
}

/* Deletes the row called name from a catalog table (what: "model", "dataset"), committed
 * with a full sync; KSTORE_NOT_FOUND naming it when there is none. */
static kstore_status delete_named(kstore *s, int statement, const char *sql, const char *what,
                                  const char *name)
{
    kstore_status status = kstore__sync(s, SYNC_FULL);
    if (status) return status;
    sqlite3_stmt *st = kstore__stmt(s, statement, sql);
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, name ? name : "", -1, SQLITE_TRANSIENT);
    char doing[64];
    snprintf(doing, sizeof doing, "deleting a %s", what);
    if ((status = kstore__run(s, st, doing))) return status;
    if (sqlite3_changes(s->db) == 0) {
        kstore__set_error(s, "no %s named '%s'", what, name ? name : "");
        return KSTORE_NOT_FOUND;
    }
    return KSTORE_OK;
}

kstore_status kstore_model_delete(kstore *store, const char *name)
{
    return delete_named(store, ST_MODEL_DELETE, "DELETE FROM models WHERE name = ?", "model", name);
}

void kstore_model_free(kstore_model *model)
{
    if (model) {
        free(model->spec_json);
        model->spec_json = NULL;
    }
}

void kstore_model_list_free(kstore_model *models, int count)
{
    if (!models) return;
    for (int i = 0; i < count; i++) kstore_model_free(&models[i]);
    free(models);
}

/* ---- datasets ---------------------------------------------------------------------- */

kstore_status kstore_dataset_create(kstore *store, const char *name, const char *description)
{
    kstore *s = store;
    kstore_status status = kstore__check_name(s, "a dataset's name", name, 128);
    if (status || (status = kstore__sync(s, SYNC_FULL))) return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_DATASET_CREATE,
                                    "INSERT INTO datasets (name, description, created_at)"
                                    " VALUES (?, ?, ?)");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    if (description) sqlite3_bind_text(st, 2, description, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 3, kstore__now());
    status = kstore__run(s, st, "creating a dataset");
    if (status == KSTORE_CONFLICT)
        kstore__set_error(s, "a dataset named '%s' exists already", name);
    return status;
}

/* Both kstore_dataset_add_file*: create says whether a missing dataset is made. */
static kstore_status add_file(kstore *s, const char *name, const kstore_dataset_file *file,
                              bool create)
{
    kstore_status status = kstore__check_name(s, "a dataset's name", name, 128);
    if (status || (status = kstore__begin(s, SYNC_FULL))) return status;
    if (status) return status;
    /* The existence check and the write share one transaction, so a concurrent delete
     * cannot leave a file row behind (the foreign key would refuse it too). */
    sqlite3_stmt *st = kstore__stmt(s, ST_DATASET_EXISTS, "SELECT 1 FROM datasets WHERE name = ?");
    if (!st) {
        kstore__rollback(s);
        return KSTORE_ERROR;
    }
    sqlite3_bind_text(st, 1, name ? name : "", -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    status = rc == SQLITE_ROW    ? KSTORE_OK
             : rc == SQLITE_DONE ? KSTORE_NOT_FOUND
                                 : kstore__db_fail(s, "reading a dataset");
    sqlite3_reset(st);
    if (status == KSTORE_NOT_FOUND && create) {
        st = kstore__stmt(s, ST_DATASET_CREATE,
                          "INSERT INTO datasets (name, description, created_at)"
                          " VALUES (?, ?, ?)");
        if (!st) {
            kstore__rollback(s);
            return KSTORE_ERROR;
        }
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, "", -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 3, kstore__now());
        status = kstore__run(s, st, "creating a dataset");
    }
    if (status == KSTORE_NOT_FOUND) kstore__set_error(s, "no dataset named '%s'", name ? name : "");
    if (status) {
        kstore__rollback(s);
        return status;
    }
    st = kstore__stmt(s, ST_DATASET_ADD_FILE,
                      "INSERT OR REPLACE INTO dataset_files"
                      " (dataset, role, format, path, bytes, samples) VALUES (?, ?, ?, ?, ?, ?)");
    if (!st) {
        kstore__rollback(s);
        return KSTORE_ERROR;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, file->role, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, file->format, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, file->path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, file->bytes);
    sqlite3_bind_int64(st, 6, file->samples);
    if ((status = kstore__run(s, st, "adding a dataset file")) || (status = kstore__commit(s))) {
        kstore__rollback(s);
        return status;
    }
    return KSTORE_OK;
}

kstore_status kstore_dataset_add_file(kstore *store, const char *name,
                                      const kstore_dataset_file *file)
{
    return add_file(store, name, file, false);
}

kstore_status kstore_dataset_add_file_creating(kstore *store, const char *name,
                                               const kstore_dataset_file *file)
{
    return add_file(store, name, file, true);
}

static kstore_status load_files(kstore *s, kstore_dataset *d)
{
    sqlite3_stmt *st = kstore__stmt(s, ST_DATASET_FILES,
                                    "SELECT role, format, path, bytes, samples"
                                    " FROM dataset_files WHERE dataset = ? ORDER BY role");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, d->name, -1, SQLITE_TRANSIENT);
    int cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&d->files, &cap, d->n_files, sizeof *d->files)) {
            kstore__set_error(s, "out of memory reading dataset files");
            status = KSTORE_ERROR;
            break;
        }
        kstore_dataset_file *f = &d->files[d->n_files++];
        kstore__copy(f->role, sizeof f->role, kstore__column_text(st, 0));
        kstore__copy(f->format, sizeof f->format, kstore__column_text(st, 1));
        kstore__copy(f->path, sizeof f->path, kstore__column_text(st, 2));
        f->bytes = sqlite3_column_int64(st, 3);
        f->samples = sqlite3_column_int64(st, 4);
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "reading dataset files");
    sqlite3_reset(st);
    return status;
}

/* Reads the dataset row the statement st is on. */
static kstore_status row_to_dataset(kstore *s, sqlite3_stmt *st, kstore_dataset *out)
{
    memset(out, 0, sizeof *out);
    kstore__copy(out->name, sizeof out->name, kstore__column_text(st, 0));
    if (sqlite3_column_type(st, 1) != SQLITE_NULL &&
        !(out->description = strdup(kstore__column_text(st, 1)))) {
        kstore__set_error(s, "out of memory reading a dataset");
        return KSTORE_ERROR;
    }
    out->created_at = sqlite3_column_double(st, 2);
    return KSTORE_OK;
}

kstore_status kstore_dataset_get(kstore *store, const char *name, kstore_dataset *out)
{
    kstore *s = store;
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = kstore__stmt(s, ST_DATASET_GET,
                                    "SELECT name, description, created_at FROM datasets"
                                    " WHERE name = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, name ? name : "", -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    kstore_status status;
    if (rc == SQLITE_ROW) {
        status = row_to_dataset(s, st, out);
    } else if (rc == SQLITE_DONE) {
        kstore__set_error(s, "no dataset named '%s'", name ? name : "");
        status = KSTORE_NOT_FOUND;
    } else {
        status = kstore__db_fail(s, "reading a dataset");
    }
    sqlite3_reset(st);
    if (!status) status = load_files(s, out);
    if (status) kstore_dataset_free(out);
    return status;
}

kstore_status kstore_dataset_list(kstore *store, kstore_dataset **out, int *count)
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_DATASET_LIST,
                                    "SELECT name, description, created_at FROM datasets"
                                    " ORDER BY name");
    if (!st) return KSTORE_ERROR;
    kstore_dataset *list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&list, &cap, n, sizeof *list)) {
            kstore__set_error(s, "out of memory listing datasets");
            status = KSTORE_ERROR;
            break;
        }
        if ((status = row_to_dataset(s, st, &list[n++]))) break;
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing datasets");
    sqlite3_reset(st);
    /* Files are read after the list statement is reset: one statement at a time. */
    for (int i = 0; !status && i < n; i++) status = load_files(s, &list[i]);
    if (status) {
        kstore_dataset_list_free(list, n);
        return status;
    }
    *out = list;
    *count = n;
    return KSTORE_OK;
}

kstore_status kstore_dataset_delete(kstore *store, const char *name)
{
    /* its files go by cascade */
    return delete_named(store, ST_DATASET_DELETE, "DELETE FROM datasets WHERE name = ?", "dataset",
                        name);
}

void kstore_dataset_free(kstore_dataset *dataset)
{
    if (!dataset) return;
    free(dataset->description);
    free(dataset->files);
    dataset->description = NULL;
    dataset->files = NULL;
    dataset->n_files = 0;
}

void kstore_dataset_list_free(kstore_dataset *datasets, int count)
{
    if (!datasets) return;
    for (int i = 0; i < count; i++) kstore_dataset_free(&datasets[i]);
    free(datasets);
}

/* ---- checkpoints and versions ------------------------------------------------------- */

kstore_status kstore_checkpoint_add(kstore *store, const kstore_checkpoint *checkpoint)
{
    kstore *s = store;
    kstore_status status = kstore__sync(s, SYNC_FULL);
    if (status) return status;
    /* Re-adding a (job, kind, step) replaces it: a resumed job may checkpoint a step
     * again. */
    sqlite3_stmt *st = kstore__stmt(s, ST_CHECKPOINT_ADD,
                                    "INSERT OR REPLACE INTO checkpoints"
                                    " (job_id, kind, step, path, bytes, created_at)"
                                    " VALUES (?, ?, ?, ?, ?, ?)");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, checkpoint->job_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, checkpoint->kind[0] ? checkpoint->kind : "checkpoint", -1,
                      SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, checkpoint->step);
    sqlite3_bind_text(st, 4, checkpoint->path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, checkpoint->bytes);
    sqlite3_bind_double(st, 6, checkpoint->created_at > 0 ? checkpoint->created_at : kstore__now());
    return kstore__run(s, st, "adding a checkpoint");
}

kstore_status kstore_checkpoint_delete(kstore *store, const char *job_id, const char *kind,
                                       int64_t step)
{
    kstore *s = store;
    kstore_status status = kstore__sync(s, SYNC_FULL);
    if (status) return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_CHECKPOINT_DELETE,
                                    "DELETE FROM checkpoints WHERE job_id = ? AND kind = ?"
                                    " AND step = ?");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, kind ? kind : "checkpoint", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, step);
    status = kstore__run(s, st, "deleting a checkpoint");
    if (status == KSTORE_OK && sqlite3_changes(s->db) == 0) {
        kstore__set_error(s, "job %s has no %s at step %lld", job_id, kind ? kind : "checkpoint",
                          (long long)step);
        return KSTORE_NOT_FOUND;
    }
    return status;
}

#define CHECKPOINT_COLUMNS "job_id, kind, step, path, bytes, created_at"

static void row_to_checkpoint(sqlite3_stmt *st, kstore_checkpoint *out)
{
    memset(out, 0, sizeof *out);
    kstore__copy(out->job_id, sizeof out->job_id, kstore__column_text(st, 0));
    kstore__copy(out->kind, sizeof out->kind, kstore__column_text(st, 1));
    out->step = sqlite3_column_int64(st, 2);
    kstore__copy(out->path, sizeof out->path, kstore__column_text(st, 3));
    out->bytes = sqlite3_column_int64(st, 4);
    out->created_at = sqlite3_column_double(st, 5);
}

kstore_status kstore_checkpoint_list(kstore *store, const char *job_id, kstore_checkpoint **out,
                                     int *count)
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_CHECKPOINT_LIST,
                                    "SELECT " CHECKPOINT_COLUMNS " FROM checkpoints"
                                    " WHERE job_id = ? ORDER BY step, kind");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, job_id ? job_id : "", -1, SQLITE_TRANSIENT);
    kstore_checkpoint *list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&list, &cap, n, sizeof *list)) {
            kstore__set_error(s, "out of memory listing checkpoints");
            status = KSTORE_ERROR;
            break;
        }
        row_to_checkpoint(st, &list[n++]);
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing checkpoints");
    sqlite3_reset(st);
    if (status) {
        free(list);
        return status;
    }
    *out = list;
    *count = n;
    return KSTORE_OK;
}

kstore_status kstore_checkpoint_latest(kstore *store, const char *job_id, const char *kind,
                                       kstore_checkpoint *out)
{
    kstore *s = store;
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = kstore__stmt(s, ST_CHECKPOINT_LATEST,
                                    "SELECT " CHECKPOINT_COLUMNS " FROM checkpoints"
                                    " WHERE job_id = ? AND kind = ? ORDER BY step DESC LIMIT 1");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, job_id ? job_id : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, kind ? kind : "checkpoint", -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    kstore_status status = KSTORE_OK;
    if (rc == SQLITE_ROW) {
        row_to_checkpoint(st, out);
    } else if (rc == SQLITE_DONE) {
        kstore__set_error(s, "job %s has no %s", job_id ? job_id : "", kind ? kind : "checkpoint");
        status = KSTORE_NOT_FOUND;
    } else {
        status = kstore__db_fail(s, "reading a checkpoint");
    }
    sqlite3_reset(st);
    return status;
}

kstore_status kstore_model_versions(kstore *store, const char *model_name, char (**job_ids)[40],
                                    int *count)
{
    kstore *s = store;
    *job_ids = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_MODEL_VERSIONS,
                                    "SELECT id FROM jobs WHERE model_name = ?"
                                    " AND state = 'succeeded' ORDER BY finished_at DESC, seq DESC");
    if (!st) return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, model_name ? model_name : "", -1, SQLITE_TRANSIENT);
    char(*ids)[40] = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!kstore__grow((void **)&ids, &cap, n, sizeof *ids)) {
            kstore__set_error(s, "out of memory listing model versions");
            status = KSTORE_ERROR;
            break;
        }
        kstore__copy(ids[n++], 40, kstore__column_text(st, 0));
    }
    if (!status && rc != SQLITE_DONE) status = kstore__db_fail(s, "listing model versions");
    sqlite3_reset(st);
    if (status) {
        free(ids);
        return status;
    }
    *job_ids = ids;
    *count = n;
    return KSTORE_OK;
}
