/*
 * routes_v1_models.c — a model's registry: its versions (succeeded jobs and uploaded
 * weights), uploading weights as a version, aliases naming versions, and deleting a
 * model (refused while it has jobs or versions, unless ?force=true deletes the lot).
 *
 * Uploads (PUT /v1/models/{name}/versions/{version}/weights) arrive as a temporary file
 * (http.c streams them, capped by --max-upload-bytes), are read as safetensors, matched
 * by name against the state dict of the model the spec builds (after ?strip_prefix=
 * takes a wrapper module's prefix off each name), checked strictly unless ?strict=false
 * (then missing entries keep their initial values and unexpected ones are dropped, both
 * listed in the answer; shapes and dtypes must always agree), and stored re-written
 * under Kiln's names, so the file a version serves loads strictly. Versions are
 * immutable: a name is uploaded once; delete it to use the name again.
 *
 * Uploaded versions and aliases share one namespace per model, and an alias may not be
 * deleted out from under nothing: a version with aliases is deleted only with
 * ?force=true (which drops them). Versions and aliases a queued, running or paused job
 * starts from ("init_weights") are refused deletion.
 */
#define _GNU_SOURCE
#include "ksrv_http.h"
#include "registry.h"
#include "routes_v1.h"

#include "kn_safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAMES_IN_MESSAGE 5 /* how many jobs or keys an error message names */

/* ---- JSON ---------------------------------------------------------------------------- */

static cJSON *version_json(const kstore_version *v, const kstore_alias *aliases, int n_aliases,
                           bool is_default)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", v->version);
    cJSON_AddStringToObject(o, "kind", v->from_job ? "job" : "upload");
    cJSON_AddNumberToObject(o, "created_at", v->created_at);
    cJSON_AddNumberToObject(o, "bytes", (double)v->bytes);
    cJSON_AddBoolToObject(o, "default", is_default);
    cJSON *names = cJSON_AddArrayToObject(o, "aliases");
    for (int i = 0; i < n_aliases; i++)
        if (!strcmp(aliases[i].version, v->version))
            cJSON_AddItemToArray(names, cJSON_CreateString(aliases[i].alias));
    char url[320];
    if (v->from_job)
        snprintf(url, sizeof url, "/v1/jobs/%s/weights", v->version);
    else
        snprintf(url, sizeof url, "/v1/models/%s/versions/%s/weights", v->model, v->version);
    cJSON_AddStringToObject(o, "weights_url", url);
    cJSON *info = v->info_json ? cJSON_Parse(v->info_json) : NULL;
    if (info) cJSON_AddItemToObject(o, "upload", info);
    return o;
}

void ksrv_model_registry_json(kstore *store, const char *model, cJSON *o, bool brief)
{
    kstore_version *versions = NULL, resolved;
    kstore_alias *aliases = NULL;
    int n_versions = 0, n_aliases = 0;
    if (kstore_version_list(store, model, &versions, &n_versions) != KSTORE_OK ||
        kstore_alias_list(store, model, &aliases, &n_aliases) != KSTORE_OK) {
        kstore_version_list_free(versions, n_versions);
        return; /* the model's own fields are still worth answering with */
    }
    char alias[64], message[256];
    bool has_default = ksrv_resolve_version(store, model, NULL, &resolved, alias, message,
                                            sizeof message) == KSRV_RESOLVED;
    cJSON_AddItemToObject(o, "default_version",
                          has_default ? cJSON_CreateString(resolved.version) : cJSON_CreateNull());
    cJSON *map = cJSON_AddObjectToObject(o, "aliases");
    for (int i = 0; i < n_aliases; i++)
        cJSON_AddStringToObject(map, aliases[i].alias, aliases[i].version);
    if (brief) {
        cJSON_AddNumberToObject(o, "version_count", n_versions);
    } else {
        cJSON *list = cJSON_AddArrayToObject(o, "versions");
        for (int i = 0; i < n_versions; i++)
            cJSON_AddItemToArray(
                list, version_json(&versions[i], aliases, n_aliases,
                                   has_default && !strcmp(resolved.version, versions[i].version)));
    }
    if (has_default) kstore_version_free(&resolved);
    kstore_version_list_free(versions, n_versions);
    free(aliases);
}

/* The model of the path, or a 404/500 response. */
static bool model_or_404(kstore *store, const char *name, ksrv_response *response)
{
    kstore_model m;
    kstore_status s = kstore_model_get(store, name, &m);
    kstore_model_free(&m);
    if (s == KSTORE_OK) return true;
    if (s == KSTORE_NOT_FOUND)
        ksrv_respond_error(response, 404, "not_found", NULL, "no model named \"%s\"", name);
    else
        ksrv_respond_store_error(response, store, s, "model");
    return false;
}

/* ---- active jobs that need a model, a version or an alias ------------------------------- */

/* What an active job's "init_weights" names: {"version": V} (of its own model) and
 * {"job": ID}; "" where absent. */
static void init_weights_of(const kstore_job *job, char version[64], char from_job[40],
                            char alias[64])
{
    version[0] = from_job[0] = alias[0] = '\0';
    cJSON *spec = job->spec_json ? cJSON_Parse(job->spec_json) : NULL;
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(spec, "init_weights");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(init, "version");
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(init, "job");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(init, "alias");
    if (cJSON_IsString(v)) snprintf(version, 64, "%s", v->valuestring);
    if (cJSON_IsString(j)) snprintf(from_job, 40, "%s", j->valuestring);
    if (cJSON_IsString(a)) snprintf(alias, 64, "%s", a->valuestring);
    cJSON_Delete(spec);
}

typedef struct dependency {
    const char *model;
    const char *version; /* NULL: any of the model's (a model delete) */
    char **model_jobs;   /* the model's jobs, for {"job": ...} from other models */
    int n_model_jobs;
} dependency;

static bool depends(const kstore_job *job, void *context)
{
    const dependency *d = context;
    char version[64], from_job[40], alias[64];
    init_weights_of(job, version, from_job, alias);
    bool own = !strcmp(job->model_name, d->model);
    if (!d->version) {
        if (own) return true;
        for (int i = 0; i < d->n_model_jobs; i++)
            if (!strcmp(from_job, d->model_jobs[i])) return true;
        return false;
    }
    return own && version[0] && !strcmp(version, d->version);
}

/* ---- DELETE /v1/models/{name}[?force=true] ------------------------------------------------ */

/* "a, b, c and 4 more" of names, into out. */
static void name_list(char *out, size_t size, char *const *names, int n)
{
    out[0] = '\0';
    size_t used = 0;
    for (int i = 0; i < n && i < NAMES_IN_MESSAGE; i++)
        used += (size_t)snprintf(out + used, used < size ? size - used : 0, "%s%s", i ? ", " : "",
                                 names[i]);
    if (n > NAMES_IN_MESSAGE && used < size)
        snprintf(out + used, size - used, " and %d more", n - NAMES_IN_MESSAGE);
}

/* Removes the files of a deleted model: its jobs' folders and its uploads' folder. */
static void remove_model_files(ksrv_server *server, const char *model, char **jobs, int n_jobs)
{
    char relative[300];
    for (int i = 0; i < n_jobs; i++) {
        snprintf(relative, sizeof relative, "jobs/%s", jobs[i]);
        ksrv_remove_folder(server, relative);
        ksrv_metrics_cache_forget(jobs[i]);
    }
    snprintf(relative, sizeof relative, "models/%s", model);
    if (ksrv_valid_name(model)) ksrv_remove_folder(server, relative);
    ksrv_model_cache_forget(server->models, model, NULL);
}

/* kstore_model_delete_all's arguments, for ksrv_store_delete */
typedef struct {
    const char *name;
    char **jobs, **paths;
    int n_jobs, n_paths;
} model_delete;

static kstore_status delete_model(kstore *store, void *context)
{
    model_delete *d = context;
    return kstore_model_delete_all(store, d->name, &d->jobs, &d->n_jobs, &d->paths, &d->n_paths);
}

void ksrv_handle_models_delete(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    bool force = false;
    if (!ksrv_query_bool(request, response, "force", &force)) return;
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    const char *name = request->params[0];
    if (!model_or_404(store, name, response)) return;
    kstore_job_ref *refs = NULL;
    kstore_version *versions = NULL;
    int n_refs = 0, n_versions = 0;
    char **jobs = NULL, **uploads = NULL;
    int n_uploads = 0;
    kstore_status s = kstore_model_jobs(store, name, &refs, &n_refs);
    if (s == KSTORE_OK) s = kstore_version_list(store, name, &versions, &n_versions);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "model");
        goto done;
    }
    jobs = calloc((size_t)n_refs + 1, sizeof *jobs);
    uploads = calloc((size_t)n_versions + 1, sizeof *uploads);
    if (!jobs || !uploads) {
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_refs; i++) jobs[i] = refs[i].id;
    for (int i = 0; i < n_versions; i++)
        if (!versions[i].from_job) uploads[n_uploads++] = versions[i].version;

    /* a job that has not finished needs the model (and maybe its weights) when it starts */
    dependency d = {.model = name, .model_jobs = jobs, .n_model_jobs = n_refs};
    char active[40] = "";
    int used = ksrv_active_job_find(store, depends, &d, active);
    if (used < 0) {
        ksrv_respond_store_error(response, store, KSTORE_ERROR, "model");
        goto done;
    }
    if (used) {
        ksrv_respond_error(response, 409, "model_in_use", NULL,
                           "model %s is needed by job %s, which has not finished (cancel it "
                           "first)",
                           name, active);
        goto done;
    }
    if (!force && (n_refs > 0 || n_uploads > 0)) {
        char job_names[400], upload_names[400];
        name_list(job_names, sizeof job_names, jobs, n_refs);
        name_list(upload_names, sizeof upload_names, uploads, n_uploads);
        cJSON *e;
        cJSON *root = ksrv_error_json(
            &e, "model_not_empty", NULL,
            "model %.127s has %d job%s%s%s%s and %d uploaded version%s%s%s%s: deleting it with "
            "?force=true deletes them too (their metrics, checkpoints and weights)",
            name, n_refs, n_refs == 1 ? "" : "s", n_refs ? " (" : "", job_names, n_refs ? ")" : "",
            n_uploads, n_uploads == 1 ? "" : "s", n_uploads ? " (" : "", upload_names,
            n_uploads ? ")" : "");
        cJSON *list = cJSON_AddArrayToObject(e, "jobs");
        for (int i = 0; i < n_refs; i++) cJSON_AddItemToArray(list, cJSON_CreateString(jobs[i]));
        list = cJSON_AddArrayToObject(e, "versions");
        for (int i = 0; i < n_uploads; i++)
            cJSON_AddItemToArray(list, cJSON_CreateString(uploads[i]));
        ksrv_respond_json(response, 409, root);
        goto done;
    }
    model_delete deleted = {.name = name};
    s = ksrv_store_delete(server, store, delete_model, &deleted);
    if (s == KSTORE_CONFLICT) { /* a job was queued meanwhile */
        ksrv_respond_error(response, 409, "model_in_use", NULL, "%s", kstore_last_error(store));
        goto done;
    }
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "model");
        goto done;
    }
    remove_model_files(server, name, deleted.jobs, deleted.n_jobs);
    ksrv_log(KSRV_LOG_INFO, "model %s deleted with %d jobs and %d uploaded versions", name,
             deleted.n_jobs, deleted.n_paths);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "deleted", name);
    cJSON *list = cJSON_AddArrayToObject(root, "jobs");
    for (int i = 0; i < deleted.n_jobs; i++)
        cJSON_AddItemToArray(list, cJSON_CreateString(deleted.jobs[i]));
    cJSON_AddNumberToObject(root, "versions", deleted.n_paths);
    ksrv_respond_json(response, 200, root);
    kstore_strings_free(deleted.jobs, deleted.n_jobs);
    kstore_strings_free(deleted.paths, deleted.n_paths);
done:
    free(jobs);
    free(uploads);
    free(refs);
    kstore_version_list_free(versions, n_versions);
}

/* ---- versions ----------------------------------------------------------------------- */

void ksrv_handle_models_versions(ksrv_server *server, ksrv_request *request,
                                 ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store || !model_or_404(store, request->params[0], response)) return;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", request->params[0]);
    ksrv_model_registry_json(store, request->params[0], root, false);
    ksrv_respond_json(response, 200, root);
}

/* The version (or alias) of the path into *v, or a 404/500 response. */
static bool version_or_404(kstore *store, ksrv_request *request, ksrv_response *response,
                           kstore_version *v, char alias[64])
{
    char message[512];
    ksrv_resolve_status s = ksrv_resolve_version(store, request->params[0], request->params[1], v,
                                                 alias, message, sizeof message);
    if (s == KSRV_RESOLVED) return true;
    if (s == KSRV_RESOLVE_ERROR)
        ksrv_respond_error(response, 500, "internal", NULL, "%s", message);
    else
        ksrv_respond_error(response, 404, "not_found", NULL, "%s", message);
    return false;
}

void ksrv_handle_models_version_get(ksrv_server *server, ksrv_request *request,
                                    ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    kstore_version v;
    char alias[64];
    if (!store || !version_or_404(store, request, response, &v, alias)) return;
    kstore_alias *aliases = NULL;
    int n = 0;
    kstore_alias_list(store, v.model, &aliases, &n);
    kstore_version def;
    char def_alias[64], message[256];
    bool is_default = ksrv_resolve_version(store, v.model, NULL, &def, def_alias, message,
                                           sizeof message) == KSRV_RESOLVED;
    cJSON *o = version_json(&v, aliases, n, is_default && !strcmp(def.version, v.version));
    if (is_default) kstore_version_free(&def);
    cJSON_AddStringToObject(o, "model", v.model);
    if (alias[0]) cJSON_AddStringToObject(o, "resolved_from", alias);
    ksrv_respond_json(response, 200, o);
    free(aliases);
    kstore_version_free(&v);
}

void ksrv_handle_models_weights_download(ksrv_server *server, ksrv_request *request,
                                         ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    kstore_version v;
    char alias[64];
    if (!store || !version_or_404(store, request, response, &v, alias)) return;
    char path[700];
    if (!v.path[0] || !ksrv_data_path(server, v.path, path, sizeof path)) {
        ksrv_respond_error(response, 404, "no_weights", NULL, "version %s has no weights",
                           v.version);
    } else {
        response->status = 200;
        response->file_path = strdup(path);
        response->content_type = "application/octet-stream";
        snprintf(response->header_name, sizeof response->header_name, "Content-Disposition");
        snprintf(response->header_value, sizeof response->header_value,
                 "attachment; filename=\"%.100s-%.63s.safetensors\"", v.model, v.version);
    }
    kstore_version_free(&v);
}

void ksrv_handle_models_version_delete(ksrv_server *server, ksrv_request *request,
                                       ksrv_response *response)
{
    bool force = false;
    if (!ksrv_query_bool(request, response, "force", &force)) return;
    kstore *store = ksrv_store_or_500(server, response);
    if (!store || !model_or_404(store, request->params[0], response)) return;
    const char *model = request->params[0], *name = request->params[1];
    kstore_version v;
    kstore_status s = kstore_version_get(store, model, name, &v);
    if (s == KSTORE_NOT_FOUND) {
        ksrv_respond_error(response, 404, "not_found", NULL,
                           "model %s has no version \"%s\" (aliases are deleted at "
                           "/v1/models/%s/aliases/NAME)",
                           model, name, model);
        return;
    }
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "version");
        return;
    }
    kstore_alias *aliases = NULL;
    int n_aliases = 0;
    if (v.from_job) {
        ksrv_respond_error(response, 409, "version_is_job", NULL,
                           "version %s is a job of model %s: its weights go with the job "
                           "(DELETE /v1/models/%s?force=true deletes the model's jobs)",
                           name, model, model);
        goto done;
    }
    dependency d = {.model = model, .version = name};
    char active[40] = "";
    int used = ksrv_active_job_find(store, depends, &d, active);
    if (used) {
        if (used < 0)
            ksrv_respond_store_error(response, store, KSTORE_ERROR, "version");
        else
            ksrv_respond_error(response, 409, "version_in_use", NULL,
                               "job %s, which has not finished, starts from version %s", active,
                               name);
        goto done;
    }
    if ((s = kstore_alias_list(store, model, &aliases, &n_aliases)) != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "aliases");
        goto done;
    }
    char *pointing[64];
    int n_pointing = 0;
    for (int i = 0; i < n_aliases && n_pointing < 64; i++)
        if (!strcmp(aliases[i].version, name)) pointing[n_pointing++] = aliases[i].alias;
    if (n_pointing > 0 && !force) {
        char names[400];
        name_list(names, sizeof names, pointing, n_pointing);
        ksrv_respond_error(response, 409, "version_has_aliases", NULL,
                           "version %s of model %s is named by alias%s %s: move %s first, or "
                           "delete with ?force=true to delete %s too",
                           name, model, n_pointing == 1 ? "" : "es", names,
                           n_pointing == 1 ? "it" : "them", n_pointing == 1 ? "it" : "them");
        goto done;
    }
    for (int i = 0; i < n_pointing; i++) kstore_alias_delete(store, model, pointing[i]);
    if ((s = kstore_version_delete(store, model, name)) != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "version");
        goto done;
    }
    char path[700];
    if (ksrv_data_path(server, v.path, path, sizeof path)) unlink(path);
    ksrv_model_cache_forget(server->models, model, name);
    ksrv_log(KSRV_LOG_INFO, "model %s: version %s deleted", model, name);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddStringToObject(root, "deleted", name);
    cJSON *list = cJSON_AddArrayToObject(root, "aliases_deleted");
    for (int i = 0; i < n_pointing; i++)
        cJSON_AddItemToArray(list, cJSON_CreateString(pointing[i]));
    ksrv_respond_json(response, 200, root);
done:
    free(aliases);
    kstore_version_free(&v);
}

/* ---- uploading weights ------------------------------------------------------------------ */

/* Whether name is free for a new version (for_alias false) or alias of model: never an
 * uploaded version's name, nor for a version an alias's. False with a 409 (or 500). */
static bool name_free(kstore *store, const char *model, const char *name, bool for_alias,
                      ksrv_response *response)
{
    kstore_version v;
    kstore_status s = kstore_version_get(store, model, name, &v);
    kstore_version_free(&v);
    if (s == KSTORE_OK && for_alias) {
        ksrv_respond_error(response, 409, "conflict", NULL,
                           "model %s has a version named \"%s\": an alias cannot take its name",
                           model, name);
        return false;
    }
    if (s == KSTORE_OK) {
        ksrv_respond_error(response, 409, "already_exists", NULL,
                           "model %s has a version \"%s\" already (versions are immutable: "
                           "upload under a new name, or delete it first)",
                           model, name);
        return false;
    }
    if (s != KSTORE_NOT_FOUND) {
        ksrv_respond_store_error(response, store, s, "version");
        return false;
    }
    if (for_alias) return true;
    kstore_alias a;
    s = kstore_alias_get(store, model, name, &a);
    if (s == KSTORE_OK) {
        ksrv_respond_error(response, 409, "conflict", NULL,
                           "model %s has an alias named \"%s\": a version cannot take its name",
                           model, name);
        return false;
    }
    if (s != KSTORE_NOT_FOUND) {
        ksrv_respond_store_error(response, store, s, "alias");
        return false;
    }
    return true;
}

/* The names of an upload matched against the model's state dict. */
typedef struct matched {
    kn_named_tensor *entries; /* the file's tensors under the model's names, in file order */
    int n_entries;
    const char **missing; /* state dict names the file lacks (borrowed from the state dict) */
    int n_missing;
    const char **unexpected; /* the file's names (as written) the model does not have */
    int n_unexpected;
} matched;

static void matched_free(matched *m)
{
    free(m->entries);
    free(m->missing);
    free(m->unexpected);
}

static bool in_state(const kn_named_tensor *state, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(state[i].name, name)) return true;
    return false;
}

/* Maps the file's names (prefix stripped) onto the state dict; false when out of memory or a
 * name is too long (message set). A Kiln checkpoint's optimizer entries are ignored, as
 * kn_module_load_weights does. */
static bool match_names(const kn_safetensors *file, const char *prefix,
                        const kn_named_tensor *state, int n_state, matched *m, char *message,
                        size_t size)
{
    memset(m, 0, sizeof *m);
    size_t n_prefix = prefix ? strlen(prefix) : 0;
    m->entries = calloc((size_t)file->count + 1, sizeof *m->entries);
    m->unexpected = calloc((size_t)file->count + 1, sizeof *m->unexpected);
    m->missing = calloc((size_t)n_state + 1, sizeof *m->missing);
    if (!m->entries || !m->unexpected || !m->missing) {
        snprintf(message, size, "out of memory");
        return false;
    }
    for (int i = 0; i < file->count; i++) {
        const char *name = file->entries[i].name;
        if (!strncmp(name, "optimizer.", 10)) continue;
        const char *mapped = n_prefix && !strncmp(name, prefix, n_prefix) ? name + n_prefix : name;
        if (!in_state(state, n_state, mapped)) {
            m->unexpected[m->n_unexpected++] = name;
            continue;
        }
        kn_named_tensor *e = &m->entries[m->n_entries++];
        if (strlen(mapped) >= sizeof e->name) {
            snprintf(message, size, "tensor name too long: %.60s...", mapped);
            return false;
        }
        snprintf(e->name, sizeof e->name, "%s", mapped);
        e->tensor = file->entries[i].tensor;
    }
    for (int i = 0; i < n_state; i++) {
        bool given = false;
        for (int k = 0; k < m->n_entries && !given; k++)
            given = !strcmp(m->entries[k].name, state[i].name);
        if (!given) m->missing[m->n_missing++] = state[i].name;
    }
    return true;
}

/* A hint for names saved from a wrapper module: when every unexpected name has one first
 * component ("net.") and stripping it would leave model names, suggest it. */
static void prefix_hint(const matched *m, const kn_named_tensor *state, int n_state, char *out,
                        size_t size)
{
    out[0] = '\0';
    if (m->n_unexpected == 0) return;
    const char *dot = strchr(m->unexpected[0], '.');
    if (!dot) return;
    size_t n = (size_t)(dot - m->unexpected[0]) + 1;
    int fits = 0;
    for (int i = 0; i < m->n_unexpected; i++) {
        if (strncmp(m->unexpected[i], m->unexpected[0], n) != 0) return;
        fits += in_state(state, n_state, m->unexpected[i] + n);
    }
    if (fits > 0)
        snprintf(out, size,
                 "; the file's names look saved from a wrapper module: try ?strip_prefix=%.*s",
                 (int)n, m->unexpected[0]);
}

static cJSON *string_array(const char *const *names, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(names[i]));
    return a;
}

/* 400 weights_mismatch: the message names the first keys; every key is listed. */
static void respond_mismatch(ksrv_response *response, const matched *m, const char *hint)
{
    char missing[400], unexpected[400];
    name_list(missing, sizeof missing, (char *const *)m->missing, m->n_missing);
    name_list(unexpected, sizeof unexpected, (char *const *)m->unexpected, m->n_unexpected);
    cJSON *e;
    cJSON *root = ksrv_error_json(
        &e, "weights_mismatch", NULL,
        "the weights do not match the model: %d missing key%s%s%s%s, %d unexpected key%s%s%s%s"
        "%s (?strict=false loads what matches)",
        m->n_missing, m->n_missing == 1 ? "" : "s", m->n_missing ? " (" : "", missing,
        m->n_missing ? ")" : "", m->n_unexpected, m->n_unexpected == 1 ? "" : "s",
        m->n_unexpected ? " (" : "", unexpected, m->n_unexpected ? ")" : "", hint);
    cJSON_AddItemToObject(e, "missing_keys", string_array(m->missing, m->n_missing));
    cJSON_AddItemToObject(e, "unexpected_keys", string_array(m->unexpected, m->n_unexpected));
    ksrv_respond_json(response, 400, root);
}

/* The engine names the temporary file in its messages: say "the body" instead. */
static void engine_message(const char *upload_path, char *out, size_t size)
{
    const char *text = kn_last_error();
    const char *at = upload_path[0] ? strstr(text, upload_path) : NULL;
    if (at)
        snprintf(out, size, "%.*sthe body%s", (int)(at - text), text, at + strlen(upload_path));
    else
        snprintf(out, size, "%s", text);
}

/* Loads the upload into a module built from the model's spec; writes the checked weights
 * to target. False with the response set. */
static bool check_and_write(ksrv_request *request, ksrv_response *response,
                            const kapi_model_spec *spec, const char *prefix, bool strict,
                            const char *target, cJSON *info)
{
    char message[1024];
    kn_safetensors *file = kn_safetensors_load(request->upload_path);
    if (!file) {
        engine_message(request->upload_path, message, sizeof message);
        ksrv_respond_error(response, 400, "invalid_weights", NULL,
                           "the body is not a safetensors file Kiln can read: %s", message);
        return false;
    }
    kn_generator *gen = kn_generator_new(0); /* what the file does not give starts here */
    kn_module *module = gen ? kapi_model_build(spec, gen) : NULL;
    kn_generator_free(gen);
    int n_state = 0;
    kn_named_tensor *state = module ? kn_module_state_dict(module, &n_state) : NULL;
    matched m = {0};
    bool ok = false;
    if (!state) {
        ksrv_respond_error(response, 500, "internal", NULL, "building the model: %s",
                           kn_last_error());
    } else if (!match_names(file, prefix, state, n_state, &m, message, sizeof message)) {
        ksrv_respond_error(response, 400, "invalid_weights", NULL, "%s", message);
    } else if (m.n_entries == 0 && n_state > 0) {
        char hint[200];
        prefix_hint(&m, state, n_state, hint, sizeof hint);
        respond_mismatch(response, &m, hint);
    } else if (strict && (m.n_missing > 0 || m.n_unexpected > 0)) {
        char hint[200];
        prefix_hint(&m, state, n_state, hint, sizeof hint);
        respond_mismatch(response, &m, hint);
    } else if (kn_module_load_state_dict(module, m.entries, m.n_entries, false) != KN_OK) {
        /* shapes and dtypes must agree whatever strict says, as in torch */
        ksrv_respond_error(response, 400, "weights_mismatch", NULL,
                           "the weights do not fit the model: %s", kn_last_error());
    } else if (kn_module_save_weights(module, target) != KN_OK) {
        /* a full disk is a 507, as for any other write (safetensors_save leaves errno) */
        int error_number = errno;
        if (error_number == ENOSPC || error_number == EDQUOT)
            ksrv_respond_write_error(response, error_number, "the weights");
        else
            ksrv_respond_error(response, 500, "internal", NULL, "writing the weights: %s",
                               kn_last_error());
    } else {
        chmod(target, 0600); /* as checkpoints and a job's weights */
        cJSON_AddItemToObject(info, "missing_keys", string_array(m.missing, m.n_missing));
        cJSON_AddItemToObject(info, "unexpected_keys", string_array(m.unexpected, m.n_unexpected));
        cJSON_AddNumberToObject(info, "tensors", m.n_entries);
        ok = true;
    }
    matched_free(&m);
    free(state);
    kn_module_free(module);
    kn_safetensors_free(file);
    return ok;
}

void ksrv_handle_models_weights_upload(ksrv_server *server, ksrv_request *request,
                                       ksrv_response *response)
{
    const char *model = request->params[0], *name = request->params[1];
    bool strict = true;
    if (!ksrv_query_bool(request, response, "strict", &strict)) return;
    const char *prefix = ksrv_query(request, "strip_prefix");
    if (prefix && (!prefix[0] || strlen(prefix) > 120)) {
        ksrv_respond_error(response, 400, "invalid_query", "strip_prefix",
                           "query parameter strip_prefix: expected 1-120 characters such as "
                           "\"net.\"");
        return;
    }
    if (!ksrv_valid_version_name(name)) {
        ksrv_respond_error(response, 400, "invalid_value", "version",
                           "version: expected 1-%d characters of A-Z a-z 0-9 . _ - (not "
                           "starting with . or - or job_), got \"%.80s\"",
                           KSRV_VERSION_NAME_MAX, name);
        return;
    }
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) return;
    kstore_model m;
    kstore_status s = kstore_model_get(store, model, &m);
    if (s != KSTORE_OK) {
        if (s == KSTORE_NOT_FOUND)
            ksrv_respond_error(response, 404, "not_found", NULL,
                               "no model named \"%s\" (POST /v1/models first: the weights are "
                               "checked against its spec)",
                               model);
        else
            ksrv_respond_store_error(response, store, s, "model");
        return;
    }
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(m.spec_json, strlen(m.spec_json), &errors);
    kapi_errors_free(&errors);
    kstore_model_free(&m);
    cJSON *info = cJSON_CreateObject();
    char folder[600], target[700], relative[300];
    snprintf(relative, sizeof relative, "models/%.127s/%.63s.safetensors", model, name);
    if (!spec) {
        ksrv_respond_error(response, 500, "internal", NULL, "the spec of model %s cannot be read",
                           model);
    } else if (!name_free(store, model, name, false, response)) {
        /* 409 set */
    } else if (!ksrv_data_path(server, "models", folder, sizeof folder) ||
               snprintf(folder + strlen(folder), sizeof folder - strlen(folder), "/%s", model) <
                   0 ||
               !ksrv_mkdirs(folder, 0700) ||
               !ksrv_data_path(server, relative, target, sizeof target)) {
        ksrv_respond_write_error(response, errno, "the model's folder");
    } else {
        cJSON_AddBoolToObject(info, "strict", strict);
        cJSON_AddItemToObject(info, "strip_prefix",
                              prefix ? cJSON_CreateString(prefix) : cJSON_CreateNull());
        cJSON_AddNumberToObject(info, "uploaded_bytes", (double)request->upload_bytes);
        if (check_and_write(request, response, spec, prefix, strict, target, info)) {
            struct stat sb;
            kstore_version v = {.bytes = stat(target, &sb) == 0 ? sb.st_size : 0};
            snprintf(v.model, sizeof v.model, "%.127s", model);
            snprintf(v.version, sizeof v.version, "%.63s", name);
            snprintf(v.path, sizeof v.path, "%s", relative);
            v.info_json = cJSON_PrintUnformatted(info);
            s = v.info_json ? kstore_version_add(store, &v) : KSTORE_ERROR;
            if (s != KSTORE_OK) {
                unlink(target);
                if (s == KSTORE_CONFLICT)
                    ksrv_respond_error(response, 409, "already_exists", NULL, "%s",
                                       kstore_last_error(store));
                else
                    ksrv_respond_store_error(response, store, s, "version");
            } else {
                ksrv_model_cache_forget(server->models, model, name);
                ksrv_log(KSRV_LOG_INFO, "model %s: version %s uploaded (%lld bytes)", model, name,
                         (long long)v.bytes);
                kstore_version stored;
                if (kstore_version_get(store, model, name, &stored) == KSTORE_OK) {
                    cJSON *o = version_json(&stored, NULL, 0, false);
                    cJSON_AddStringToObject(o, "model", model);
                    ksrv_respond_json(response, 201, o);
                    kstore_version_free(&stored);
                } else {
                    ksrv_respond_store_error(response, store, KSTORE_ERROR, "version");
                }
            }
            free(v.info_json);
        }
    }
    cJSON_Delete(info);
    kapi_model_spec_free(spec);
}

/* ---- aliases ---------------------------------------------------------------------------- */

static cJSON *alias_json(const kstore_alias *a)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", a->model);
    cJSON_AddStringToObject(o, "alias", a->alias);
    cJSON_AddStringToObject(o, "version", a->version);
    cJSON_AddNumberToObject(o, "updated_at", a->updated_at);
    return o;
}

void ksrv_handle_models_aliases(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store || !model_or_404(store, request->params[0], response)) return;
    kstore_alias *list = NULL;
    int n = 0;
    kstore_status s = kstore_alias_list(store, request->params[0], &list, &n);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "aliases");
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", request->params[0]);
    cJSON *array = cJSON_AddArrayToObject(root, "aliases");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(array, alias_json(&list[i]));
    free(list);
    ksrv_respond_json(response, 200, root);
}

void ksrv_handle_models_alias_get(ksrv_server *server, ksrv_request *request,
                                  ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store || !model_or_404(store, request->params[0], response)) return;
    kstore_alias a;
    kstore_status s = kstore_alias_get(store, request->params[0], request->params[1], &a);
    if (s == KSTORE_NOT_FOUND)
        ksrv_respond_error(response, 404, "not_found", NULL, "model %s has no alias \"%s\"",
                           request->params[0], request->params[1]);
    else if (s != KSTORE_OK)
        ksrv_respond_store_error(response, store, s, "alias");
    else
        ksrv_respond_json(response, 200, alias_json(&a));
}

/* PUT /v1/models/{name}/aliases/{alias} {"version": "..."}: a version, or another alias
 * (which is resolved: the alias names that alias's version now). */
void ksrv_handle_models_alias_put(ksrv_server *server, ksrv_request *request,
                                  ksrv_response *response)
{
    const char *model = request->params[0], *alias = request->params[1];
    cJSON *body = ksrv_parse_body(request, response);
    if (!body) return;
    kstore *store = NULL;
    kstore_version v = {0};
    bool resolved = false;
    for (const cJSON *c = body->child; c; c = c->next)
        if (strcmp(c->string, "version") != 0) {
            ksrv_respond_error(response, 400, "invalid_value", c->string,
                               "%s: unknown field (the body is {\"version\": \"...\"})", c->string);
            goto done;
        }
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(body, "version");
    if (!cJSON_IsString(version) || !version->valuestring[0]) {
        ksrv_respond_error(response, 400, "invalid_value", "version",
                           "version: expected the name of a version (an uploaded version, a "
                           "succeeded job's id, or another alias)");
        goto done;
    }
    if (!ksrv_valid_version_name(alias)) {
        ksrv_respond_error(response, 400, "invalid_value", "alias",
                           "alias: expected 1-%d characters of A-Z a-z 0-9 . _ - (not "
                           "starting with . or - or job_), got \"%.80s\"",
                           KSRV_VERSION_NAME_MAX, alias);
        goto done;
    }
    store = ksrv_store_or_500(server, response);
    if (!store || !model_or_404(store, model, response) ||
        !name_free(store, model, alias, true, response))
        goto done;
    char through[64], message[512];
    ksrv_resolve_status rs = ksrv_resolve_version(store, model, version->valuestring, &v, through,
                                                  message, sizeof message);
    if (rs != KSRV_RESOLVED) {
        if (rs == KSRV_RESOLVE_ERROR)
            ksrv_respond_error(response, 500, "internal", NULL, "%s", message);
        else
            ksrv_respond_error(response, 404, "version_not_found", "version", "version: %s",
                               message);
        goto done;
    }
    resolved = true;
    kstore_alias before;
    bool existed = kstore_alias_get(store, model, alias, &before) == KSTORE_OK;
    kstore_status s = kstore_alias_set(store, model, alias, v.version);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "alias");
        goto done;
    }
    kstore_alias now;
    if (kstore_alias_get(store, model, alias, &now) != KSTORE_OK) {
        ksrv_respond_store_error(response, store, KSTORE_ERROR, "alias");
        goto done;
    }
    ksrv_log(KSRV_LOG_INFO, "model %s: alias %s -> %s%s%s", model, alias, v.version,
             existed ? " (was " : "", existed ? before.version : "");
    cJSON *o = alias_json(&now);
    cJSON_AddItemToObject(o, "previous",
                          existed ? cJSON_CreateString(before.version) : cJSON_CreateNull());
    ksrv_respond_json(response, existed ? 200 : 201, o);
done:
    if (resolved) kstore_version_free(&v);
    cJSON_Delete(body);
}

void ksrv_handle_models_alias_delete(ksrv_server *server, ksrv_request *request,
                                     ksrv_response *response)
{
    kstore *store = ksrv_store_or_500(server, response);
    if (!store || !model_or_404(store, request->params[0], response)) return;
    const char *model = request->params[0], *alias = request->params[1];
    kstore_alias a;
    kstore_status s = kstore_alias_get(store, model, alias, &a);
    if (s == KSTORE_NOT_FOUND) {
        ksrv_respond_error(response, 404, "not_found", NULL, "model %s has no alias \"%s\"", model,
                           alias);
        return;
    }
    if (s == KSTORE_OK) s = kstore_alias_delete(store, model, alias);
    if (s != KSTORE_OK) {
        ksrv_respond_store_error(response, store, s, "alias");
        return;
    }
    ksrv_log(KSRV_LOG_INFO, "model %s: alias %s deleted (it named %s)", model, alias, a.version);
    cJSON *o = alias_json(&a);
    cJSON_AddBoolToObject(o, "deleted", true);
    ksrv_respond_json(response, 200, o);
}
