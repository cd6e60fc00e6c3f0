/*
 * kn_test_server.h — a kilnd started in the test's own process, as the server tests of
 * issue 11 use it (tests/test_server_{cache,limits,protocol,access}.c): a temporary data
 * directory, the defaults with port 0 (a free port), no workers and quiet logs, changed as
 * the test needs before kn_test_server_start; kn_test_server_stop stops it and removes
 * the directory; kn_test_server_add_version leaves what a worker leaves of a succeeded
 * job (an inference version) without training. Header-only: it uses Criterion's assertions.
 */
#ifndef KN_TEST_SERVER_H
#define KN_TEST_SERVER_H

#include "kapi.h"
#include "kn_test.h"
#include "kn_test_spec.h"
#include "ksrv.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct kn_test_server {
    char root[128];     /* the temporary directory */
    ksrv_config config; /* data_dir is root/data */
    ksrv_server *server;
} kn_test_server;

/* A new temporary directory and the test defaults in t->config. */
static __attribute__((unused)) void kn_test_server_config(kn_test_server *t)
{
    cr_assert(kn_test_temp_dir("kiln-test", t->root, sizeof t->root), "mkdtemp in /tmp");
    ksrv_config_defaults(&t->config);
    snprintf(t->config.data_dir, sizeof t->config.data_dir, "%s/data", t->root);
    t->config.port = 0;
    t->config.workers = 0;
    t->config.http_threads = 4;
    snprintf(t->config.log_level, sizeof t->config.log_level, "error");
    t->server = NULL;
}

static __attribute__((unused)) void kn_test_server_start(kn_test_server *t)
{
    char *error = NULL;
    t->server = ksrv_start(&t->config, &error);
    cr_assert_not_null(t->server, "ksrv_start: %s", error ? error : "?");
    cr_assert_gt(t->server->port, 0);
}

/* Stops the server (when started) and removes the directory; safe to call twice. */
static __attribute__((unused)) void kn_test_server_stop(kn_test_server *t)
{
    ksrv_stop(t->server);
    t->server = NULL;
    kn_test_remove_dir(t->root);
    t->root[0] = '\0';
}

/* The module of a model spec (JSON text), initialised from seed. */
static __attribute__((unused)) kn_module *kn_test_build_model(const char *model_json, uint64_t seed)
{
    kapi_model_spec *model = kn_test_parse_model(model_json);
    kn_generator *gen = kn_generator_new(seed);
    kn_module *module = kapi_model_build(model, gen);
    kn_generator_free(gen);
    kapi_model_spec_free(model);
    cr_assert_not_null(module, "%s", kn_last_error());
    return module;
}

/* A succeeded job of the stored model model_name (whose spec is model_json), with weights
 * initialised from seed in jobs/<id>/model.safetensors, as a worker leaves it: an
 * inference version. Its id into id. */
static __attribute__((unused)) void kn_test_server_add_version(kn_test_server *t,
                                                               const char *model_name,
                                                               const char *model_json,
                                                               uint64_t seed, char id[40])
{
    kstore *store = ksrv_thread_store(t->server);
    cr_assert_not_null(store);
    char spec[256];
    snprintf(spec, sizeof spec, "{\"model\": \"%s\", \"data\": {\"dataset\": \"d\"}}", model_name);
    kstore_job job;
    bool created;
    cr_assert_eq(kstore_job_create(store, spec, model_name, "d", NULL, "cpu", 0, 1, &job, &created),
                 KSTORE_OK, "%s", kstore_last_error(store));
    kstore_job_free(&job);
    cr_assert_eq(kstore_job_claim(store, "cpu", NULL, &job), KSTORE_OK);
    memcpy(id, job.id, 40);
    kstore_job_free(&job);
    char folder[600], path[700];
    snprintf(folder, sizeof folder, "%s/jobs/%s", t->config.data_dir, id);
    mkdir(folder, 0700);
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    kn_module *module = kn_test_build_model(model_json, seed);
    cr_assert_eq(kn_module_save_weights(module, path), KN_OK, "%s", kn_last_error());
    kn_module_free(module);
    kstore_checkpoint c = {.step = 1, .bytes = 1};
    snprintf(c.job_id, sizeof c.job_id, "%s", id);
    snprintf(c.kind, sizeof c.kind, "final");
    snprintf(c.path, sizeof c.path, "jobs/%s/model.safetensors", id);
    cr_assert_eq(kstore_checkpoint_add(store, &c), KSTORE_OK);
    cr_assert_eq(kstore_job_finish(store, id, KSTORE_JOB_SUCCEEDED, NULL, NULL, -1), KSTORE_OK);
}

#endif
