/*
 * kstore_impl.h — private to the store's C files: the handle, its cache of prepared statements,
 * transactions with their synchronous level, and the small helpers every file uses.
 */
#ifndef KSTORE_IMPL_H
#define KSTORE_IMPL_H

#include "kstore.h"

#include <sqlite3.h>

/* Every cached statement has an id; the SQL text lives at its call site. */
enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    /* catalog.c */
    ST_MODEL_PUT,
    ST_MODEL_GET,
    ST_MODEL_LIST,
    ST_MODEL_DELETE,
    ST_DATASET_CREATE,
    ST_DATASET_EXISTS,
    ST_DATASET_ADD_FILE,
    ST_DATASET_GET,
    ST_DATASET_FILES,
    ST_DATASET_LIST,
    ST_DATASET_DELETE,
    ST_CHECKPOINT_ADD,
    ST_CHECKPOINT_LIST,
    ST_CHECKPOINT_LATEST,
    ST_CHECKPOINT_DELETE,
    ST_MODEL_VERSIONS,
    /* jobs.c */
    ST_JOB_BY_ID,
    ST_JOB_BY_SUBMISSION,
    ST_JOB_INSERT,
    ST_JOB_SEQ,
    ST_JOB_LIST_ALL,
    ST_JOB_LIST_STATE,
    ST_JOB_COUNT,
    ST_JOB_NEXT_QUEUED,
    ST_JOB_CLAIM,
    ST_JOB_PROGRESS,
    ST_JOB_SET_STATE,
    ST_JOB_FINISH,
    ST_JOB_FLAGS,
    ST_JOB_SET_DISTRIBUTED,
    /* metrics.c */
    ST_METRIC_PUT,
    ST_METRIC_QUERY,
    ST_METRIC_NAMES,
    /* registry.c */
    ST_VERSION_ADD,
    ST_VERSION_GET,
    ST_VERSION_LIST,
    ST_VERSION_DELETE,
    ST_ALIAS_SET,
    ST_ALIAS_GET,
    ST_ALIAS_LIST,
    ST_ALIAS_DELETE,
    ST_MODEL_JOBS,
    ST_LOG_APPEND,
    ST_LOG_QUERY,
    ST_COUNT
};

enum { SYNC_NORMAL = 1, SYNC_FULL = 2 };

struct kstore {
    sqlite3 *db;
    int sync; /* the connection's current PRAGMA synchronous */
    sqlite3_stmt *stmts[ST_COUNT];
    char error[512];
};

/* The cached statement id (prepared on first use), reset and with cleared bindings;
 * NULL with the error set. Callers sqlite3_reset() it when done so no read transaction
 * stays open between calls. */
sqlite3_stmt *kstore__stmt(kstore *s, int id, const char *sql);
/* Records "what: <sqlite message>" and maps the SQLite code to a status. */
kstore_status kstore__db_fail(kstore *s, const char *what);
void kstore__set_error(kstore *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets PRAGMA synchronous when it differs (only between transactions). */
kstore_status kstore__sync(kstore *s, int level);
/* BEGIN IMMEDIATE at the given synchronous level; commit; rollback (never fails). */
kstore_status kstore__begin(kstore *s, int sync);
kstore_status kstore__commit(kstore *s);
void kstore__rollback(kstore *s);
/* Runs a statement that returns no rows to completion and resets it. */
kstore_status kstore__run(kstore *s, sqlite3_stmt *st, const char *what);

double kstore__now(void);
void kstore__copy(char *dst, size_t cap, const char *src);  /* NULL copies "" */
char *kstore__dup_column(sqlite3_stmt *st, int col);        /* NULL for SQL NULL */
const char *kstore__column_text(sqlite3_stmt *st, int col); /* "" for SQL NULL */
/* Grows *items (of size bytes each, *cap of them) to hold n + 1, zeroing what it adds;
 * false when out of memory (*items untouched). For list results. */
bool kstore__grow(void **items, int *cap, int n, size_t size);
/* Names longer than the fixed fields of kstore.h are refused rather than truncated. */
kstore_status kstore__check_name(kstore *s, const char *what, const char *name, size_t cap);

#endif
