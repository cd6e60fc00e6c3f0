/*
 * registry.h — a model's versions and aliases as the server sees them (server/versions.c),
 * shared by the registry routes (routes_v1_models.c), inference (inference.c) and the job
 * runner (init_weights): names, resolving a version or alias, loading a version's spec
 * and weights, and a job's own log (server/job_log.c).
 *
 * A version is a succeeded job of the model (its id) or a weights file uploaded under a
 * name. An alias names one version; the v2 routes and "init_weights" take an alias
 * wherever they take a version. The default version is the alias "default" when set,
 * else the newest succeeded job (the newest upload for a model with uploads only).
 */
#ifndef KSRV_REGISTRY_H
#define KSRV_REGISTRY_H

#include "ksrv.h"

#include "kapi.h"

#include <stdarg.h>

/* Uploaded versions and aliases share one namespace per model: 1-63 characters of
 * [A-Za-z0-9._-], not starting with '.' or '-', and not with "job_" (jobs' ids are
 * versions already). */
#define KSRV_VERSION_NAME_MAX 63
bool ksrv_valid_version_name(const char *name);

/* How a resolution ended. */
typedef enum {
    KSRV_RESOLVED,
    KSRV_NO_MODEL,   /* no such model (and no job of that name either) */
    KSRV_NO_VERSION, /* the model exists; the version or alias does not, or it has none */
    KSRV_RESOLVE_ERROR,
} ksrv_resolve_status;

/* The version that `given` names for model (NULL or "": the default), into *out (free
 * with kstore_version_free); alias gets the alias it went through ("" when none).
 * message (any status but RESOLVED) says what was missing. */
ksrv_resolve_status ksrv_resolve_version(kstore *store, const char *model, const char *given,
                                         kstore_version *out, char alias[64], char *message,
                                         size_t size);

/* The model spec a version runs with and the absolute path of its weights: a job's own
 * spec (inline, or the stored model it named), an upload's the stored model's. NULL with
 * message. The caller frees the spec. */
kapi_model_spec *ksrv_version_spec(ksrv_server *server, kstore *store,
                                   const kstore_version *version, char *path, size_t path_size,
                                   char *message, size_t size);

/* Whether weights trained for spec a load into spec b: the same layers, kinds, shapes and
 * parameters (what the state dicts' names and shapes follow from). False with why. */
bool ksrv_specs_share_weights(const kapi_model_spec *a, const kapi_model_spec *b, char *why,
                              size_t size);

/* Forgets cached inference models of (model, version), or of every version of model
 * when version is NULL (server/inference.c): a deleted version's name may come back. */
void ksrv_model_cache_forget(ksrv_model_cache *cache, const char *model, const char *version);

/* ---- a job's own log (server/job_log.c) ---------------------------------------------- */
typedef enum { KSRV_JOB_INFO, KSRV_JOB_WARN, KSRV_JOB_ERROR } ksrv_job_level;

/* Appends a line to the job's log (GET /v1/jobs/{id}/logs) and to kilnd's own log at the
 * same level. Never fails the caller: a line the store cannot take is dropped (kilnd's
 * log says so). Past KSRV_JOB_LOG_MAX_INFO lines a job's info lines are dropped, with one
 * warning saying so. */
#define KSRV_JOB_LOG_MAX_INFO 10000
void ksrv_job_log(kstore *store, const char *job_id, ksrv_job_level level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* GET /v1/jobs/{id}/logs[?after=SEQ&limit=N | ?follow=true] */
void ksrv_handle_jobs_logs(ksrv_server *, ksrv_request *, ksrv_response *);

/* The registry routes (server/routes_v1_models.c). */
void ksrv_handle_models_versions(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_version_get(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_version_delete(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_weights_upload(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_weights_download(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_aliases(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_alias_get(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_alias_put(ksrv_server *, ksrv_request *, ksrv_response *);
void ksrv_handle_models_alias_delete(ksrv_server *, ksrv_request *, ksrv_response *);
/* Adds "versions", "aliases" and "default_version" to a model's JSON (GET /v1/models/{name});
 * with brief, only counts and the default (the list). */
void ksrv_model_registry_json(kstore *store, const char *model, cJSON *o, bool brief);

#endif
