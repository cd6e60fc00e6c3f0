/*
 * kstore.h — Kiln's durable state in SQLite: models (with their versions and aliases),
 * datasets, jobs and their state machine, their log lines, metrics series and
 * checkpoints. Schema versioned with migrations.
 *
 * Threads: one kstore handle (one SQLite connection, opened without SQLite's mutex) per
 * thread; open as many as there are threads on the same file. A handle may move to
 * another thread but must never be used by two at once. WAL mode; job-state and
 * checkpoint commits use synchronous=FULL, metric batches and progress NORMAL.
 * Claiming a job uses BEGIN IMMEDIATE so two workers never take the same job.
 *
 * Errors: functions return KSTORE_OK or a code, with kstore_last_error(store) naming
 * what failed (valid until the next call on that handle). A name longer than its fixed
 * field below is refused with KSTORE_ERROR rather than truncated. Strings and arrays
 * returned to the caller are malloc'd and freed with the matching *_free / free().
 *
 * Schema: the table schema_migrations lists the versioned steps applied (store.c); an
 * open applies the missing ones and refuses a database newer than the build.
 */
#ifndef KSTORE_H
#define KSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KSTORE_OK = 0,
    KSTORE_NOT_FOUND,
    KSTORE_CONFLICT, /* duplicate name, illegal state transition */
    KSTORE_BUSY,     /* the database stayed locked past the timeout */
    KSTORE_ERROR,    /* anything else: I/O, corruption, out of memory */
    KSTORE_FULL,     /* the disk (or quota) is full: nothing was written */
} kstore_status;

typedef struct kstore kstore;

/* Opens (creating and migrating when needed) the database at path. NULL with *error
 * (malloc'd message, caller frees) on failure. */
kstore *kstore_open(const char *path, char **error);
void kstore_close(kstore *store);
const char *kstore_last_error(const kstore *store);
int kstore_schema_version(kstore *store);

/* ---- models ----------------------------------------------------------------------- */
typedef struct kstore_model {
    char name[128];
    char *spec_json; /* the normalised spec */
    int64_t parameter_count;
    double created_at; /* unix seconds */
} kstore_model;

kstore_status kstore_model_put(kstore *store, const char *name, const char *spec_json,
                               int64_t parameter_count); /* CONFLICT when it exists */
kstore_status kstore_model_get(kstore *store, const char *name, kstore_model *out);
kstore_status kstore_model_list(kstore *store, kstore_model **out, int *count);
kstore_status kstore_model_delete(kstore *store, const char *name);
void kstore_model_free(kstore_model *model); /* frees the strings inside, not model */
void kstore_model_list_free(kstore_model *models, int count);

/* ---- datasets ---------------------------------------------------------------------- */
/* A dataset is a named set of files (train_images, train_labels, test_images, ...,
 * or train_csv / test_csv ...) stored under the data directory; the store keeps the
 * metadata and the relative paths. */
typedef struct kstore_dataset_file {
    char role[64];   /* "train_images", "train_labels", "test_images", "test_labels",
                        "train", "test" (csv/npy/json) */
    char format[16]; /* "idx", "csv", "npy", "json" */
    char path[512];  /* relative to the data directory */
    int64_t bytes;
    int64_t samples; /* as parsed at upload, -1 if unknown */
} kstore_dataset_file;

typedef struct kstore_dataset {
    char name[128];
    char *description;
    double created_at;
    int n_files;
    kstore_dataset_file *files;
} kstore_dataset;

kstore_status kstore_dataset_create(kstore *store, const char *name, const char *description);
kstore_status kstore_dataset_add_file(kstore *store, const char *name,
                                      const kstore_dataset_file *file); /* replaces a role */
/* The same, creating the dataset (no description) in the same transaction when it does
 * not exist: a dataset made by an upload exists once its first file does, so an upload
 * that fails or is cut off by a crash leaves no empty dataset behind. */
kstore_status kstore_dataset_add_file_creating(kstore *store, const char *name,
                                               const kstore_dataset_file *file);
kstore_status kstore_dataset_get(kstore *store, const char *name, kstore_dataset *out);
kstore_status kstore_dataset_list(kstore *store, kstore_dataset **out, int *count);
kstore_status kstore_dataset_delete(kstore *store, const char *name);
void kstore_dataset_free(kstore_dataset *dataset);
void kstore_dataset_list_free(kstore_dataset *datasets, int count);

/* ---- jobs -------------------------------------------------------------------------- */
typedef enum {
    KSTORE_JOB_QUEUED,
    KSTORE_JOB_RUNNING,
    KSTORE_JOB_PAUSED,
    KSTORE_JOB_SUCCEEDED,
    KSTORE_JOB_FAILED,
    KSTORE_JOB_CANCELED,
} kstore_job_state;

const char *kstore_job_state_name(kstore_job_state state); /* "queued", ... */
bool kstore_job_state_parse(const char *name, kstore_job_state *out);

typedef struct kstore_job {
    char id[40]; /* "job_" + 16 hex digits */
    kstore_job_state state;
    int priority; /* higher first; FIFO within a priority */
    char model_name[128];
    char dataset_name[128];
    char submission_id[128];   /* "" when none */
    char *spec_json;           /* the job spec as submitted (normalised) */
    char device[32];           /* as created; once claimed, the claiming worker's */
    char requested_device[32]; /* what the job asked for: "cpu", "auto", "cuda", "cuda:N" */
    double created_at, started_at, finished_at, updated_at; /* 0 when not yet */
    int64_t step, total_steps, epoch;
    double samples_per_second;
    double eta_seconds; /* -1 unknown */
    bool cancel_requested, pause_requested;
    char error_code[48];       /* "" or invalid_spec, data_error, non_finite_loss, ... */
    char *error_message;       /* NULL when none */
    int64_t error_step;        /* -1 when none */
    char *latest_metrics_json; /* {"loss": x, "val_accuracy": y, ...} or NULL */
    char *distributed_json;    /* a distributed job's processes (kstore_job_set_distributed) */
} kstore_job;

/* Creates a queued job. With a submission_id that exists already, returns KSTORE_OK
 * and fills *out with the existing job (idempotent retry); *created says which. */
/* An existing submission_id returns that job whatever the other arguments: the retry
 * is assumed to carry the same spec. device is the spec's "device": it becomes both
 * device and requested_device, the latter as claims match it (NULL or "" is "cpu",
 * "cuda:01" is "cuda:1", anything else as written). */
kstore_status kstore_job_create(kstore *store, const char *spec_json, const char *model_name,
                                const char *dataset_name, const char *submission_id,
                                const char *device, int priority, int64_t total_steps,
                                kstore_job *out, bool *created);
kstore_status kstore_job_get(kstore *store, const char *id, kstore_job *out);
/* Filter by state (NULL: all), newest first, after a cursor (the id of the last job of
 * the previous page, or NULL), at most limit. *next_cursor gets the cursor for the next
 * page ("" when there is none; next_cursor may be the cursor's own buffer). limit <= 0
 * means 100, and at most 1000 are returned. A cursor that names no job: NOT_FOUND. */
kstore_status kstore_job_list(kstore *store, const kstore_job_state *state, const char *cursor,
                              int limit, kstore_job **out, int *count, char next_cursor[40]);
void kstore_job_free(kstore_job *job); /* frees the strings inside */
void kstore_job_list_free(kstore_job *jobs, int count);
int64_t kstore_job_count(kstore *store, kstore_job_state state); /* -1 on error */

/* Which queued jobs a claim may take, by their requested_device. A job is taken when
 * its requested device is in accepts, or when the list pool is given and it is not in
 * pool: pool is every requested device some worker of the claimer's pool is meant for
 * (accepts included), so a job meant for no worker (cuda:3 where no worker owns it) is
 * every worker's: it reaches one, which runs it or fails it, rather than waiting forever. */
typedef struct kstore_claim_filter {
    const char *const *accepts;
    int n_accepts; /* 0 (or accepts NULL): every job is taken */
    const char *const *pool;
    int n_pool; /* 0 (or pool NULL): only accepts are taken */
} kstore_claim_filter;

/* Atomically claims the best queued job (priority, then age) that filter takes, for a
 * worker on device: state becomes running, started_at set, device recorded. A NULL
 * filter takes any job. One BEGIN IMMEDIATE transaction: two claimers never take the
 * same job. KSTORE_NOT_FOUND when there is none; the others stay queued. */
kstore_status kstore_job_claim(kstore *store, const char *device, const kstore_claim_filter *filter,
                               kstore_job *out);
/* Progress of a running job (no state change; CONFLICT when not running).
 * latest_metrics_json NULL keeps the previous one. */
kstore_status kstore_job_progress(kstore *store, const char *id, int64_t step, int64_t epoch,
                                  int64_t total_steps, double samples_per_second,
                                  double eta_seconds, const char *latest_metrics_json);
/* State transitions; CONFLICT (with the current state in the message) when illegal:
 *   cancel: queued|paused -> canceled at once; running -> cancel_requested (the worker
 *           finishes it: kstore_job_finish(canceled)).
 *   pause:  queued -> paused; running -> pause_requested (the worker checkpoints and
 *           calls kstore_job_set_paused).
 *   resume: paused -> queued (its checkpoint makes it continue); running with a pending
 *           pause -> the pause request is withdrawn.
 *   set_paused (worker): running -> paused; with a cancel requested meanwhile -> canceled.
 * out may be NULL. */
kstore_status kstore_job_cancel(kstore *store, const char *id, kstore_job *out);
kstore_status kstore_job_pause(kstore *store, const char *id, kstore_job *out);
kstore_status kstore_job_resume(kstore *store, const char *id, kstore_job *out);
kstore_status kstore_job_set_paused(kstore *store, const char *id);
/* Terminal states from the worker: succeeded, failed (with code/message/step), canceled.
 * Only a running job finishes (CONFLICT otherwise); a non-terminal state is an ERROR. */
kstore_status kstore_job_finish(kstore *store, const char *id, kstore_job_state state,
                                const char *error_code, const char *error_message,
                                int64_t error_step);
/* At start-up: jobs left running by a crash or shutdown go back to queued (they resume
 * from their last checkpoint; step and progress are kept). One with a pending cancel
 * becomes canceled and one with a pending pause becomes paused. Returns how many jobs
 * left the running state, -1 on error. */
int kstore_job_requeue_running(kstore *store);
/* A distributed job's processes as its supervisor sees them (JSON text, NULL clears):
 * world size, restarts, each rank's host, pid and samples/s. Any state; NOT_FOUND when
 * there is no such job. */
kstore_status kstore_job_set_distributed(kstore *store, const char *id, const char *json);
/* Reads the flags a worker polls between steps. */
kstore_status kstore_job_flags(kstore *store, const char *id, bool *cancel_requested,
                               bool *pause_requested);

/* ---- metrics ----------------------------------------------------------------------- */
typedef struct kstore_metric_point {
    int64_t step;
    double wall_time; /* unix seconds */
    double value;     /* may be NaN or +-inf */
} kstore_metric_point;

/* Inserts points of one series; a (job, name, step) that exists is replaced, never
 * duplicated (a resumed job re-reporting a step). One transaction per call, committed
 * with synchronous=NORMAL. NaN and +-inf are stored faithfully (SQLite would turn NaN
 * into NULL: the value column is NULL and a marker column says which non-finite value
 * it was) and read back as such. */
kstore_status kstore_metrics_append(kstore *store, const char *job_id, const char *name,
                                    const kstore_metric_point *points, int count);
/* Points with step > after_step, ascending. When max_points > 0 and there are more,
 * downsamples keeping the first, the last, and each bucket's min and max (in step
 * order). *out malloc'd.
 * Downsampling: the points between the first and the last are cut into
 * B = (max_points - 2) / 2 contiguous buckets, bucket b holding interior indices
 * [b*m/B, (b+1)*m/B) of the m = count - 2; each gives its min and max (once when the
 * same point); NaN ranks above every value so a diverging run stays visible.
 * max_points 1 keeps only the last point, 2 and 3 the first and last. */
kstore_status kstore_metrics_query(kstore *store, const char *job_id, const char *name,
                                   int64_t after_step, int max_points, kstore_metric_point **out,
                                   int *count);
/* The names of a job's series (malloc'd array of malloc'd strings). */
kstore_status kstore_metrics_names(kstore *store, const char *job_id, char ***names, int *count);
void kstore_strings_free(char **strings, int count);

/* ---- checkpoints ------------------------------------------------------------------- */
typedef struct kstore_checkpoint {
    char job_id[40];
    int64_t step;
    char kind[16];  /* "checkpoint" or "final" (weights only) */
    char path[512]; /* relative to the data directory */
    int64_t bytes;
    double created_at;
} kstore_checkpoint;

/* A (job, kind, step) added again replaces the old row. created_at 0 means now. */
kstore_status kstore_checkpoint_add(kstore *store, const kstore_checkpoint *checkpoint);
kstore_status kstore_checkpoint_list(kstore *store, const char *job_id, kstore_checkpoint **out,
                                     int *count);
/* Forgets one checkpoint row (the caller removes the file). NOT_FOUND when absent. */
kstore_status kstore_checkpoint_delete(kstore *store, const char *job_id, const char *kind,
                                       int64_t step);
/* The newest checkpoint of a kind ("checkpoint" to resume, "final" for weights). */
kstore_status kstore_checkpoint_latest(kstore *store, const char *job_id, const char *kind,
                                       kstore_checkpoint *out);
/* Succeeded jobs of a model, newest (last finished) first: the inference "versions".
 * *job_ids malloc'd (free()). */
kstore_status kstore_model_versions(kstore *store, const char *model_name, char (**job_ids)[40],
                                    int *count);

/* ---- versions and aliases (registry.c) ---------------------------------------------- */
/* A version of a model: a succeeded job (version = the job's id, weights = its final
 * checkpoint) or a weights file uploaded under a name. */
typedef struct kstore_version {
    char model[128];
    char version[64];
    bool from_job;
    char path[512]; /* the weights, relative to the data directory ("" if a job has none) */
    int64_t bytes;
    double created_at; /* the upload, or the job's finish */
    char *info_json;   /* uploads: what the upload reported (JSON), or NULL */
} kstore_version;

/* Every version of a model, both kinds, newest first. */
kstore_status kstore_version_list(kstore *store, const char *model, kstore_version **out,
                                  int *count);
/* One version by name (a succeeded job's id or an uploaded name); NOT_FOUND when neither. */
kstore_status kstore_version_get(kstore *store, const char *model, const char *version,
                                 kstore_version *out);
/* Records an uploaded version (from_job ignored; created_at 0: now). CONFLICT when the
 * name is taken, NOT_FOUND when the model does not exist. */
kstore_status kstore_version_add(kstore *store, const kstore_version *version);
/* Forgets an uploaded version (the caller removes its file). NOT_FOUND when absent. */
kstore_status kstore_version_delete(kstore *store, const char *model, const char *version);
void kstore_version_free(kstore_version *version); /* the strings inside */
void kstore_version_list_free(kstore_version *versions, int count);

typedef struct kstore_alias {
    char model[128];
    char alias[64];
    char version[64];
    double updated_at;
} kstore_alias;

/* Points alias at version (created or moved); the caller checks that the version exists.
 * NOT_FOUND when the model does not exist. */
kstore_status kstore_alias_set(kstore *store, const char *model, const char *alias,
                               const char *version);
kstore_status kstore_alias_get(kstore *store, const char *model, const char *alias,
                               kstore_alias *out);
kstore_status kstore_alias_list(kstore *store, const char *model, kstore_alias **out,
                                int *count); /* by name; free() */
kstore_status kstore_alias_delete(kstore *store, const char *model, const char *alias);

/* Every job that names a model (any state), newest first; free(). */
typedef struct kstore_job_ref {
    char id[40];
    kstore_job_state state;
} kstore_job_ref;
kstore_status kstore_model_jobs(kstore *store, const char *model, kstore_job_ref **out, int *count);
/* Deletes a model with all of it in one transaction: its jobs with their metrics,
 * checkpoints and log lines, its versions and aliases. CONFLICT (naming the job) while a
 * job of it is queued, running or paused. *job_ids and *paths get the deleted jobs and
 * the uploaded versions' files, whose files the caller removes (kstore_strings_free). */
kstore_status kstore_model_delete_all(kstore *store, const char *model, char ***job_ids,
                                      int *n_jobs, char ***paths, int *n_paths);

/* ---- a job's own log (registry.c) ------------------------------------------------------ */
typedef struct kstore_log_line {
    int64_t seq;   /* 1, 2, ... per job */
    double time;   /* unix seconds */
    char level[8]; /* "info", "warn", "error" */
    char *message;
} kstore_log_line;

/* Appends a line. Once the job has max_info_lines lines (> 0), further "info" lines are
 * dropped (*seq 0); other levels are always kept. *seq (may be NULL) gets the number. */
kstore_status kstore_job_log_append(kstore *store, const char *job_id, const char *level,
                                    const char *message, int64_t max_info_lines, int64_t *seq);
/* Lines with seq > after_seq, ascending, at most limit (<= 0: 1000). */
kstore_status kstore_job_log_query(kstore *store, const char *job_id, int64_t after_seq, int limit,
                                   kstore_log_line **out, int *count);
void kstore_job_log_free(kstore_log_line *lines, int count);

#ifdef __cplusplus
}
#endif
#endif
