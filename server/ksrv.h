/*
 * ksrv.h — the inside of kilnd, shared by its files: configuration, the server object,
 * requests and responses as handlers see them, the route handlers, the job workers
 * and the inference model cache.
 *
 * Threads: libmicrohttpd's internal thread pool runs the handlers (they never train or
 * block on training); each worker thread owns a device context and runs one job at a
 * time; every thread talks to SQLite through its own kstore handle (ksrv_thread_store).
 */
#ifndef KSRV_H
#define KSRV_H

#include "kstore.h"

#include <cJSON.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KSRV_VERSION "0.1.0"

/* ---- configuration (flags and KILND_* environment variables) ------------------------ */
typedef struct ksrv_config {
    char listen_address[64];    /* --listen / KILND_LISTEN, default 127.0.0.1 */
    int port;                   /* --port / KILND_PORT, default 8080; 0 picks a free one */
    char data_dir[512];         /* --data-dir / KILND_DATA_DIR, default ./data */
    int workers;                /* --workers / KILND_WORKERS, default 1 */
    char devices[128];          /* --devices / KILND_DEVICES: "cpu", "cuda:0,cuda:1", ... */
    int http_threads;           /* --http-threads, default 8 */
    size_t max_body_bytes;      /* --max-body-bytes: JSON bodies, default 16 MiB */
    size_t max_upload_bytes;    /* --max-upload-bytes: dataset files, default 2 GiB */
    int queue_capacity;         /* --queue-capacity: queued jobs before 503, default 1000 */
    char log_level[16];         /* --log-level: error, warn, info (default), debug */
    char token_file[512];       /* --token-file: 0600 file with the bearer token */
    char allowed_origins[1024]; /* --allowed-origins: comma-separated extra origins */
    int threads_per_worker;     /* --threads-per-worker: most engine threads a job uses */
    int checkpoint_every_steps; /* default for jobs that do not say, 0: 500 */
    size_t max_job_memory;      /* --max-job-memory: bytes one job may use; 0: 80% of RAM */
    int model_cache_entries;    /* --model-cache-entries: loaded inference versions, default 4 */
    size_t model_cache_bytes;   /* --model-cache-bytes: their parameters, default 1 GiB */
    int max_connections;        /* --max-connections: open HTTP connections, default 1024 */
    int max_connections_per_ip; /* --max-connections-per-ip: default 64, 0: no limit */
    int header_timeout;         /* --header-timeout: seconds to send a request's headers (10) */
    int idle_timeout;           /* --idle-timeout: seconds a connection may stay silent (120) */
    char allowed_hosts[1024];   /* --allowed-hosts: extra Host names (wildcard listens) */
    bool insecure_no_token;     /* --insecure-no-token: serve a non-loopback address openly */
    char hostfile[512];         /* --hostfile: where distributed jobs run (Open MPI's format) */
    char kiln_path[512];        /* --kiln: the program of a distributed job's ranks */
} ksrv_config;

void ksrv_config_defaults(ksrv_config *config);
/* Environment first, then flags; NULL or a malloc'd message naming the bad flag. An
 * "--help" sets *show_help. */
char *ksrv_config_parse(ksrv_config *config, int argc, char **argv, bool *show_help);

/* ---- logging ----------------------------------------------------------------------- */
typedef enum { KSRV_LOG_ERROR, KSRV_LOG_WARN, KSRV_LOG_INFO, KSRV_LOG_DEBUG } ksrv_log_level;
void ksrv_log_set_level(const char *name);
void ksrv_log(ksrv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the server ------------------------------------------------------------------ */
typedef struct ksrv_workers ksrv_workers;
typedef struct ksrv_model_cache ksrv_model_cache;
typedef struct ksrv_conn_guard ksrv_conn_guard;
typedef struct ksrv_dist ksrv_dist;

/* Counters for GET /metrics (atomics; read without locks). */
typedef struct ksrv_stats {
    pthread_mutex_t lock;
    /* requests by route pattern and status: a small open table */
    struct {
        char route[64];
        int status;
        uint64_t count;
    } requests[256];
    int n_requests;
    /* inference latency histogram (seconds): le 0.001 .. 10, +Inf */
    uint64_t infer_buckets[12];
    uint64_t infer_count;
    double infer_sum;
    /* forward passes of the inference batcher and the requests they served: the mean
     * batch is their ratio */
    uint64_t infer_batches, infer_batched_requests;
    /* connections cut for sending their headers too slowly (server/conn_guard.c) */
    uint64_t header_timeouts;
} ksrv_stats;

typedef struct ksrv_server {
    ksrv_config config;
    char db_path[600];
    char token[256]; /* "" when no token file */
    int port;        /* the bound port */
    struct MHD_Daemon *daemon;
    ksrv_workers *workers;
    ksrv_model_cache *models;
    ksrv_stats stats;
    double started_at;
    int64_t job_memory_limit; /* bytes one job may use (job_memory.h) */
    ksrv_dist *dist;          /* distributed jobs: hosts, the ranks' program (dist_launch.h) */
    volatile int stopping;
    ksrv_conn_guard *guard; /* the header deadline of the HTTP connections */
} ksrv_server;

/* Starts everything (store migrated, running jobs requeued, workers, HTTP). NULL with
 * *error (malloc'd) on failure. */
ksrv_server *ksrv_start(const ksrv_config *config, char **error);
/* Stops accepting, asks workers to checkpoint and stop (within ~10 s), frees all. */
void ksrv_stop(ksrv_server *server);

/* This thread's store handle, opened on first use (NULL on failure, logged). */
kstore *ksrv_thread_store(ksrv_server *server);

/* ---- requests and responses --------------------------------------------------------- */
#define KSRV_MAX_PARAMS 4

typedef struct ksrv_request {
    const char *method;
    const char *path; /* without the query */
    struct MHD_Connection *connection;
    const char *body; /* NUL-terminated JSON body (NULL when none) */
    size_t body_length;
    const char *upload_path; /* streamed uploads: the temporary file holding the body */
    size_t upload_bytes;
    const char *route; /* the route pattern that matched, for logs and metrics */
    int n_params;
    char params[KSRV_MAX_PARAMS][160]; /* {name}/{id} path segments, in order */
} ksrv_request;

typedef struct ksrv_response {
    int status;
    char *body;                              /* malloc'd, owned by the response */
    size_t body_length;                      /* bytes of body; 0 means strlen(body) (JSON text) */
    const char *content_type;                /* default application/json */
    char *file_path;                         /* stream this file instead of body (malloc'd) */
    char header_name[64], header_value[256]; /* one extra header (Retry-After, ...) */
    bool varies_by_encoding; /* the body depends on Accept-Encoding: say so to caches */
    /* A strong validator of a body that never changes (a finished job's metrics), quotes
     * included: sent as ETag with Cache-Control: no-cache, so a browser asks again with
     * If-None-Match and gets 304 without the body. Empty: neither header. */
    char etag[24];
    /* A libmicrohttpd response the handler built itself (event streams, embedded
     * files): queued as it is, with status and the headers above; http.c destroys it. */
    struct MHD_Response *prepared;
} ksrv_response;

/* Query parameter (NULL when absent). */
const char *ksrv_query(const ksrv_request *request, const char *name);
/* Sets a JSON body from a cJSON tree (takes and frees it). */
void ksrv_respond_json(ksrv_response *response, int status, cJSON *body);
/* {"error": {"code", "message", "path"?}} — the v1 error body. */
void ksrv_respond_error(ksrv_response *response, int status, const char *code, const char *path,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The same body (path may be NULL), for an answer that adds its own fields to the error
 * object (*error: "state", "jobs", ...); the caller owns it (ksrv_respond_json takes it). */
cJSON *ksrv_error_json(cJSON **error, const char *code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* {"error": "..."} — the Open Inference Protocol's error body (v2 routes). */
void ksrv_respond_v2_error(ksrv_response *response, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Parses the body as a JSON object (rejecting duplicate keys); on failure responds 400
 * with the syntax error's position and returns NULL. */
cJSON *ksrv_parse_body(const ksrv_request *request, ksrv_response *response);

/* ---- route handlers (server/routes_*.c, server/inference.c) -------------------------- */
typedef void (*ksrv_handler)(ksrv_server *server, ksrv_request *request, ksrv_response *response);

void ksrv_handle_health(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_prometheus(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_create(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_list(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_get(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_delete(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_datasets_create(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_datasets_list(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_datasets_get(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_datasets_delete(ksrv_server *, ksrv_request *, ksrv_response *);
/* PUT /v1/datasets/{name}/files/{role}?format=idx — a streamed upload (upload_path). */
void ksrv_handle_datasets_upload(ksrv_server *, ksrv_request *, ksrv_response *);
/* GET /v1/datasets/{name}/samples?split=test&offset=0&limit=16 (server/routes_samples.c):
 * a page of samples as stored, from parsed splits cached in memory (a small bound). */
void ksrv_handle_datasets_samples(ksrv_server *, ksrv_request *, ksrv_response *);
/* Frees the parsed splits cached by the samples route (ksrv_stop). */
void ksrv_samples_cache_clear(void);
void ksrv_handle_jobs_create(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_list(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_get(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_cancel(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_pause(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_resume(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_metrics(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_checkpoints(ksrv_server *, ksrv_request *, ksrv_response *);
/* GET /v1/jobs/{id}/checkpoints/{step} and /v1/jobs/{id}/weights: safetensors files */
void ksrv_handle_jobs_checkpoint_download(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_jobs_weights(ksrv_server *, ksrv_request *, ksrv_response *);
/* GET /v1/jobs/{id}/events: server-sent events (server/events.c) */
void ksrv_handle_jobs_events(ksrv_server *, ksrv_request *, ksrv_response *);
/* POST /v1/models/{name}[/versions/{version}]/generate (server/generate.c, issue 12) */
void ksrv_handle_models_generate(ksrv_server *, ksrv_request *, ksrv_response *);
/* The embedded dashboard (server/routes_web.c): GET / and GET /ui/{file} */
void ksrv_handle_web_index(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_web_asset(ksrv_server *, ksrv_request *, ksrv_response *);
/* Open Inference Protocol v2 */
void ksrv_handle_v2_live(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_v2_ready(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_v2_model(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_v2_model_ready(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_v2_infer(ksrv_server *, ksrv_request *, ksrv_response *);

/* ---- workers (server/worker.c) ------------------------------------------------------ */
/* Starts config.workers threads, each owning one device from config.devices (cycled). */
ksrv_workers *ksrv_workers_start(ksrv_server *server, char **error);
/* Wakes an idle worker: a job was queued or resumed. */
void ksrv_workers_notify(ksrv_workers *workers);
/* Asks running jobs to checkpoint and stop (they stay "running" in the store and are
 * requeued at the next start), joins the threads within timeout_seconds, frees. */
void ksrv_workers_stop(ksrv_workers *workers, double timeout_seconds);
/* For /v1/health: devices and how many workers are busy. */
int ksrv_workers_busy(ksrv_workers *workers);

/* ---- the inference cache (server/inference.c) ---------------------------------------- */
ksrv_model_cache *ksrv_model_cache_new(ksrv_server *server);
void ksrv_model_cache_free(ksrv_model_cache *cache);
typedef struct ksrv_model_cache_stats {
    int entries;               /* loaded versions now (over the bounds only while in use) */
    size_t bytes;              /* their parameters and buffers */
    uint64_t loads, evictions; /* since the start */
} ksrv_model_cache_stats;
ksrv_model_cache_stats ksrv_model_cache_get_stats(ksrv_model_cache *cache);
/* ---- generation (issue 12) ---- */
/* A version of a model held from the inference cache (loaded when missing) until
 * ksrv_model_release: its module (eval mode, shared: forwards without grad only), spec and
 * tokenizer (NULL: not a text model). */
typedef struct ksrv_held_model {
    char version[64];
    struct kn_module *module;
    const struct kapi_model_spec *spec;
    const struct kapi_tokenizer *tokenizer;
    void *entry;
} ksrv_held_model;
/* 0, or the HTTP status (404: no such model, version or alias; 500) with message. version
 * (a version, a job id or an alias: ksrv_resolve_version) NULL: the model's default. */
int ksrv_model_hold(ksrv_server *server, kstore *store, const char *model, const char *version,
                    ksrv_held_model *out, char *message, size_t size);
void ksrv_model_release(ksrv_server *server, ksrv_held_model *held);

/* ---- finished jobs' metrics responses (server/metrics_cache.c) ------------------------ */
/* The cached body for key, shared: *data and *size stay valid until the returned handle
 * is given to ksrv_metrics_cache_release; etag gets its entity tag. NULL when not cached. */
void *ksrv_metrics_cache_acquire(const char *key, const char **data, size_t *size, char etag[24]);
void ksrv_metrics_cache_release(void *handle);
/* Keeps a copy of body under key with its entity tag (see ksrv_response.etag). */
void ksrv_metrics_cache_put(const char *key, const char *body, size_t size, const char *etag);
void ksrv_metrics_cache_clear(void); /* ksrv_stop: frees everything */
/* Drops a job's cached answers (its keys start with "<job_id>|"): the job was deleted. */
void ksrv_metrics_cache_forget(const char *job_id);

/* ---- files under the data directory ---------------------------------------------------- */
/* data_dir + "/" + relative, into out (size bytes); false when it does not fit. */
bool ksrv_data_path(const ksrv_server *server, const char *relative, char *out, size_t size);

#endif
