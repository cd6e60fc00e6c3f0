/*
 * kn_test_server.h — a kilnd started in the test's own process, as the server tests of
 * issue 11 use it (tests/test_server_{cache,limits,protocol,access}.c): a temporary data
 * directory, the defaults with port 0 (a free port), no workers and quiet logs, changed as
 * the test needs before kn_test_server_start; kn_test_server_stop stops it and removes
 * the directory. Header-only because it uses Criterion's assertions.
 */
#ifndef KN_TEST_SERVER_H
#define KN_TEST_SERVER_H

#include "ksrv.h"

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct kn_test_server {
    char root[128];     /* the temporary directory */
    ksrv_config config; /* data_dir is root/data */
    ksrv_server *server;
} kn_test_server;

/* A new temporary directory and the test defaults in t->config. */
static __attribute__((unused)) void kn_test_server_config(kn_test_server *t)
{
    snprintf(t->root, sizeof t->root, "/tmp/kiln-test-XXXXXX");
    cr_assert_not_null(mkdtemp(t->root));
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

static int kn_test_server_remove(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Stops the server (when started) and removes the directory; safe to call twice. */
static __attribute__((unused)) void kn_test_server_stop(kn_test_server *t)
{
    ksrv_stop(t->server);
    t->server = NULL;
    if (t->root[0]) nftw(t->root, kn_test_server_remove, 16, FTW_DEPTH | FTW_PHYS);
    t->root[0] = '\0';
}

#endif
