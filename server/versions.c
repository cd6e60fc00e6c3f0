/*
 * versions.c — what a version or alias of a model names: the rules for their names, the
 * resolution of "production" or "job_..." or nothing (the default) into one version, and
 * the spec and weights file a version is served or warm-started with.
 *
 * The default version is the alias "default" when the model has one; otherwise its newest
 * succeeded job, as before versions could be uploaded (an upload never changes what a
 * model serves by itself: point an alias at it), or, for a model with uploads only, its
 * newest upload.
 */
#include "ksrv_http.h"
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool ksrv_valid_version_name(const char *name)
{
    /* a model's name rules, shorter, and two prefixes kept for other things */
    return name && strlen(name) <= KSRV_VERSION_NAME_MAX && name[0] != '-' &&
           strncmp(name, "job_", 4) != 0 && ksrv_valid_name(name);
}

/* Why nothing was found for model: it does not exist (NO_MODEL, "unknown model"), or it
 * does and what was asked is missing (NO_VERSION, with the caller's message kept), or
 * the store failed. */
static ksrv_resolve_status nothing_for(kstore *store, const char *model, char *message, size_t size)
{
    kstore_model m;
    kstore_status s = kstore_model_get(store, model, &m);
    kstore_model_free(&m);
    if (s == KSTORE_OK) return KSRV_NO_VERSION;
    /* a model known by its jobs only (their specs inline) exists too */
    kstore_version *list = NULL;
    int n = 0;
    if (s == KSTORE_NOT_FOUND && kstore_version_list(store, model, &list, &n) == KSTORE_OK) {
        kstore_version_list_free(list, n);
        if (n > 0) return KSRV_NO_VERSION;
    }
    if (s == KSTORE_NOT_FOUND) {
        snprintf(message, size, "unknown model \"%s\"", model);
        return KSRV_NO_MODEL;
    }
    snprintf(message, size, "reading model %s: %s", model, kstore_last_error(store));
    return KSRV_RESOLVE_ERROR;
}

/* The default without an alias, or NO_MODEL / NO_VERSION. */
static ksrv_resolve_status newest(kstore *store, const char *model, kstore_version *out,
                                  char *message, size_t size)
{
    kstore_version *list = NULL;
    int n = 0;
    if (kstore_version_list(store, model, &list, &n) != KSTORE_OK) {
        snprintf(message, size, "reading the versions of %s: %s", model, kstore_last_error(store));
        return KSRV_RESOLVE_ERROR;
    }
    if (n > 0) {
        /* the newest succeeded job; a model with uploads only serves its newest upload */
        int pick = 0;
        for (int i = n - 1; i >= 0; i--)
            if (list[i].from_job) pick = i;
        *out = list[pick];
        for (int i = 0; i < n; i++)
            if (i != pick) kstore_version_free(&list[i]);
        free(list);
        return KSRV_RESOLVED;
    }
    free(list);
    snprintf(message, size,
             "model \"%s\" has no version yet: no job of it has succeeded and no weights "
             "were uploaded",
             model);
    return nothing_for(store, model, message, size);
}

ksrv_resolve_status ksrv_resolve_version(kstore *store, const char *model, const char *given,
                                         kstore_version *out, char alias[64], char *message,
                                         size_t size)
{
    memset(out, 0, sizeof *out);
    alias[0] = '\0';
    message[0] = '\0';
    const char *name = given && given[0] ? given : NULL;
    kstore_alias a;
    kstore_status s = kstore_alias_get(store, model, name ? name : "default", &a);
    if (s == KSTORE_OK) {
        snprintf(alias, 64, "%s", a.alias);
        name = a.version;
    } else if (s != KSTORE_NOT_FOUND) {
        snprintf(message, size, "reading the aliases of %s: %s", model, kstore_last_error(store));
        return KSRV_RESOLVE_ERROR;
    }
    if (!name) return newest(store, model, out, message, size);
    s = kstore_version_get(store, model, name, out);
    if (s == KSTORE_OK) return KSRV_RESOLVED;
    if (s != KSTORE_NOT_FOUND) {
        snprintf(message, size, "reading version %s of %s: %s", name, model,
                 kstore_last_error(store));
        return KSRV_RESOLVE_ERROR;
    }
    if (alias[0])
        snprintf(message, size, "alias \"%s\" of model \"%s\" names version \"%s\", which is gone",
                 alias, model, name);
    else
        snprintf(message, size,
                 "unknown version \"%s\" of model \"%s\" (not an alias, an uploaded version "
                 "or a succeeded job of it)",
                 name, model);
    return nothing_for(store, model, message, size);
}

/* The model spec a job trained: inline, or the stored model it named. */
static kapi_model_spec *job_spec(kstore *store, const char *job_id, char *message, size_t size)
{
    kstore_job job;
    memset(&job, 0, sizeof job);
    if (kstore_job_get(store, job_id, &job) != KSTORE_OK) {
        snprintf(message, size, "unknown version \"%s\"", job_id);
        return NULL;
    }
    kapi_errors errors = {0};
    kapi_job_parse_options options = {.allow_paths = false};
    kapi_job_spec *spec =
        job.spec_json ? kapi_job_spec_parse(job.spec_json, strlen(job.spec_json), options, &errors)
                      : NULL;
    kapi_model_spec *model = NULL;
    if (spec && spec->model) {
        model = spec->model;
        spec->model = NULL; /* taken over */
    } else if (spec) {
        kstore_model m;
        memset(&m, 0, sizeof m);
        if (kstore_model_get(store, job.model_name, &m) == KSTORE_OK)
            model = kapi_model_spec_parse(m.spec_json, strlen(m.spec_json), &errors);
        kstore_model_free(&m);
    }
    if (!model) snprintf(message, size, "the model spec of version %s cannot be read", job_id);
    kapi_errors_free(&errors);
    kapi_job_spec_free(spec);
    kstore_job_free(&job);
    return model;
}

kapi_model_spec *ksrv_version_spec(ksrv_server *server, kstore *store,
                                   const kstore_version *version, char *path, size_t path_size,
                                   char *message, size_t size)
{
    if (!version->path[0] || !ksrv_data_path(server, version->path, path, path_size)) {
        snprintf(message, size, "version %s has no final weights", version->version);
        return NULL;
    }
    if (version->from_job) return job_spec(store, version->version, message, size);
    kstore_model m;
    memset(&m, 0, sizeof m);
    kapi_model_spec *spec = NULL;
    if (kstore_model_get(store, version->model, &m) == KSTORE_OK) {
        kapi_errors errors = {0};
        spec = kapi_model_spec_parse(m.spec_json, strlen(m.spec_json), &errors);
        kapi_errors_free(&errors);
    }
    kstore_model_free(&m);
    if (!spec) snprintf(message, size, "the spec of model %s cannot be read", version->model);
    return spec;
}

bool ksrv_specs_share_weights(const kapi_model_spec *a, const kapi_model_spec *b, char *why,
                              size_t size)
{
    if (a->n_layers != b->n_layers) {
        snprintf(why, size, "%d layers, the job's model has %d", a->n_layers, b->n_layers);
        return false;
    }
    for (int i = 0; i < a->n_layers; i++) {
        const kapi_layer_spec *x = &a->layers[i], *y = &b->layers[i];
        /* same kind and shapes: a bias, an affine transform or running statistics that one
         * has and the other lacks change the parameter or buffer count */
        bool same = x->kind == y->kind && x->parameter_count == y->parameter_count &&
                    x->buffer_bytes == y->buffer_bytes && x->in_ndim == y->in_ndim &&
                    x->out_ndim == y->out_ndim;
        for (int d = 0; same && d < x->in_ndim; d++) same = x->in_shape[d] == y->in_shape[d];
        for (int d = 0; same && d < x->out_ndim; d++) same = x->out_shape[d] == y->out_shape[d];
        if (!same) {
            char xs[64], ys[64];
            snprintf(why, size, "layer %d is %s %s, the job's model has %s %s", i, x->type,
                     kn_shape_str(x->out_shape, x->out_ndim, xs, sizeof xs), y->type,
                     kn_shape_str(y->out_shape, y->out_ndim, ys, sizeof ys));
            return false;
        }
    }
    return true;
}
