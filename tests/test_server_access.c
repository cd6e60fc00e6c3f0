/*
 * test_server_access.c — who may drive kilnd (issue 11, item 9): no start on an address
 * other than loopback without a token (unless --insecure-no-token), the Host rule (address
 * literals and localhost with any port; a name only as the listen address or in
 * --allowed-hosts), tokens of at least 16 characters, and the modes of what kilnd writes (kiln.db and its WAL 0600, job
 * folders 0700, checkpoints and weights 0600) whatever the umask. Servers listen on
 * 127.0.0.1 only: the Host rule is checked on the function http.c calls.
 */
#define _GNU_SOURCE
#include "kn_test_http.h"
#include "kn_test_server.h"
#include "ksrv_http.h"

#include <arpa/inet.h>
#include <cJSON.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static kn_test_server T;

static void teardown(void)
{
    kn_test_server_stop(&T);
}

TestSuite(access, .fini = teardown, .timeout = 120);

static void refused_to_start(const char *listen, const char *fragment)
{
    kn_test_server_config(&T);
    snprintf(T.config.listen_address, sizeof T.config.listen_address, "%s", listen);
    char *error = NULL;
    ksrv_server *server = ksrv_start(&T.config, &error);
    cr_expect_null(server, "kilnd started on %s without a token", listen);
    cr_expect(error && strstr(error, fragment), "%s: %s", listen, error ? error : "(no error)");
    free(error);
    ksrv_stop(server);
    kn_test_server_stop(&T);
}

Test(access, no_token_no_start_beyond_loopback)
{
    refused_to_start("0.0.0.0", "--insecure-no-token");
    refused_to_start("::", "--token-file");
    refused_to_start("192.0.2.7", "--insecure-no-token");
    ksrv_config config;
    ksrv_config_defaults(&config);
    static const char *const loopback[] = {"127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"};
    for (int i = 0; i < 4; i++) {
        snprintf(config.listen_address, sizeof config.listen_address, "%s", loopback[i]);
        char *why = ksrv_auth_listen_check(&config, false);
        cr_expect_null(why, "%s is loopback: %s", loopback[i], why ? why : "");
        free(why);
    }
    snprintf(config.listen_address, sizeof config.listen_address, "0.0.0.0");
    char *why = ksrv_auth_listen_check(&config, true);
    cr_expect_null(why, "a token makes any address fine");
    free(why);
    config.insecure_no_token = true;
    why = ksrv_auth_listen_check(&config, false);
    cr_expect_null(why, "--insecure-no-token says so");
    free(why);
}

Test(access, insecure_no_token_is_a_switch)
{
    ksrv_config config;
    ksrv_config_defaults(&config);
    bool help;
    char *argv[] = {"kilnd", "--insecure-no-token", "--listen", "0.0.0.0"};
    cr_assert_null(ksrv_config_parse(&config, 4, argv, &help));
    cr_expect(config.insecure_no_token);
    cr_expect_str_eq(config.listen_address, "0.0.0.0");
    char *off[] = {"kilnd", "--insecure-no-token=false"};
    cr_assert_null(ksrv_config_parse(&config, 2, off, &help));
    cr_expect_not(config.insecure_no_token);
    setenv("KILND_INSECURE_NO_TOKEN", "1", 1);
    ksrv_config_defaults(&config);
    cr_assert_null(ksrv_config_parse(&config, 1, argv, &help));
    cr_expect(config.insecure_no_token);
    setenv("KILND_INSECURE_NO_TOKEN", "maybe", 1);
    char *error = ksrv_config_parse(&config, 1, argv, &help);
    unsetenv("KILND_INSECURE_NO_TOKEN");
    cr_expect(error && strstr(error, "KILND_INSECURE_NO_TOKEN"), "%s", error ? error : "");
    free(error);
    char *hosts[] = {"kilnd", "--allowed-hosts", "kiln.lan,ops.example:9000"};
    cr_assert_null(ksrv_config_parse(&config, 3, hosts, &help));
    cr_expect_str_eq(config.allowed_hosts, "kiln.lan,ops.example:9000");
}

/* The first IPv4 address of this machine other than loopback, or 127.0.0.1. */
static void machine_address(char *out, size_t size)
{
    snprintf(out, size, "127.0.0.1");
    struct ifaddrs *list = NULL;
    if (getifaddrs(&list) != 0) return;
    for (struct ifaddrs *i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        struct in_addr a = ((struct sockaddr_in *)i->ifa_addr)->sin_addr;
        if ((ntohl(a.s_addr) >> 24) == 127) continue;
        inet_ntop(AF_INET, &a, out, (socklen_t)size);
        break;
    }
    freeifaddrs(list);
}

Test(access, host_rule)
{
    /* a server as ksrv_start fills it for --listen 0.0.0.0 --port 8080: never started */
    ksrv_server *server = calloc(1, sizeof *server);
    ksrv_config_defaults(&server->config);
    snprintf(server->config.listen_address, sizeof server->config.listen_address, "0.0.0.0");
    snprintf(server->config.allowed_hosts, sizeof server->config.allowed_hosts,
             "kiln.lan, ops.example:9000");
    server->port = 8080;
    char address[64], host[96];
    machine_address(address, sizeof address);
    const struct {
        const char *host;
        bool allowed;
    } cases[] = {
        {"evil.com:8080", false}, /* DNS rebinding: the attacker's name, our port */
        {"evil.com", false},
        {"127.0.0.1:8080", true},
        {"localhost:8080", true},
        {"[::1]:8080", true},
        /* address literals and localhost with any port: `podman run -p 127.0.0.1:43343:8080`
         * sends Host 127.0.0.1:43343 to a kilnd on 8080 (this was a 403: container-test) */
        {"127.0.0.1:43343", true},
        {"LOCALHOST:9", true},
        {"[::1]:1", true},
        {"192.0.2.99:8080", true},
        {"[2001:db8::1]", true},
        {"[fe80::1%eth0]:80", true},
        {"127.1:8080", false}, /* not the dotted form a browser sends */
        {"localhost.evil.com:8080", false},
        {"127.0.0.1.evil.com", false},
        {"[evil.com]:80", false},
        {"[]:80", false},
        {"kiln.lan", true},
        {"KILN.lan:8080", true},
        {"ops.example:9000", true},
        {"ops.example:8080", false},
        {"ops.example", false},
        {"kiln.lan.evil.com:8080", false},
        {"[::1", false},
        {"kiln.lan:99999", false},
        {"127.0.0.1:99999", false},
        {"", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_expect_eq(ksrv_auth_host_allowed(server, cases[i].host), cases[i].allowed,
                     "Host \"%s\" should be %s", cases[i].host,
                     cases[i].allowed ? "allowed" : "refused");
    snprintf(host, sizeof host, "%s:8081", address);
    cr_expect(ksrv_auth_host_allowed(server, host), "this machine's %s", host);
    /* a name is ours only as the listen address or in --allowed-hosts */
    snprintf(server->config.listen_address, sizeof server->config.listen_address, "kiln.box");
    cr_expect(ksrv_auth_host_allowed(server, "kiln.box:8080"), "the listen name with our port");
    cr_expect_not(ksrv_auth_host_allowed(server, "kiln.box:8081"), "the listen name, another port");
    cr_expect(ksrv_auth_host_allowed(server, "kiln.lan:8080"), "--allowed-hosts still counts");
    free(server);
}

Test(access, allowed_hosts_over_http)
{
    kn_test_server_config(&T);
    snprintf(T.config.allowed_hosts, sizeof T.config.allowed_hosts, "kiln.lan");
    kn_test_server_start(&T);
    char extra[160];
    snprintf(extra, sizeof extra, "Host: kiln.lan:%d\r\nOrigin: http://kiln.lan:%d\r\n",
             T.server->port, T.server->port);
    kn_test_reply r = kn_test_http(T.server->port, "GET", "/v1/health", extra, NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    kn_test_reply_free(&r);
    snprintf(extra, sizeof extra, "Host: evil.com:%d\r\nOrigin: http://evil.com:%d\r\n",
             T.server->port, T.server->port);
    r = kn_test_http(T.server->port, "POST", "/v1/datasets", extra, "{\"name\": \"x\"}", 13);
    cr_expect_eq(r.status, 403, "%s", r.body);
    cr_expect(strstr(r.body, "forbidden_host"), "%s", r.body);
    cr_expect_null(strstr(r.head, "Access-Control-Allow-Origin"), "%s", r.head);
    kn_test_reply_free(&r);
}

static void write_token(const char *path, const char *token)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, token, strlen(token)), (ssize_t)strlen(token));
    close(fd);
}

Test(access, short_tokens_are_refused)
{
    kn_test_server_config(&T);
    snprintf(T.config.token_file, sizeof T.config.token_file, "%s/token", T.root);
    write_token(T.config.token_file, "fifteen-chars15\n");
    char *error = NULL;
    ksrv_server *server = ksrv_start(&T.config, &error);
    cr_expect_null(server, "a 15-character token was taken");
    cr_expect(error && strstr(error, "16 to 255 characters"), "%s", error ? error : "");
    free(error);
    ksrv_stop(server);
    write_token(T.config.token_file, "sixteen-chars-16\n");
    kn_test_server_start(&T);
    kn_test_reply r = kn_test_http(T.server->port, "GET", "/v1/health",
                                   "Authorization: Bearer sixteen-chars-16\r\n", NULL, 0);
    cr_expect_eq(r.status, 200, "%s", r.body);
    kn_test_reply_free(&r);
}

static void expect_mode(const char *path, mode_t mode)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s is missing", path);
    cr_expect_eq(st.st_mode & 0777, mode, "%s has mode %04o, wanted %04o", path,
                 (unsigned)(st.st_mode & 0777), (unsigned)mode);
}

Test(access, files_are_private_whatever_the_umask)
{
    mode_t before = umask(022); /* a usual umask: files 0644, folders 0755 */
    kn_test_server_config(&T);
    T.config.workers = 1;
    T.config.threads_per_worker = 1;
    kn_test_server_start(&T);
    const char *arrays = "{\"inputs\": [[1, 2], [3, 4], [5, 6], [7, 8]], \"labels\": [0, 1, 1, 0]}";
    kn_test_reply r = kn_test_http(T.server->port, "POST", "/v1/datasets/d/files/train", NULL,
                                   arrays, strlen(arrays));
    cr_assert_eq(r.status, 201, "%s", r.body);
    kn_test_reply_free(&r);
    const char *job = "{\"model\": {\"name\": \"m\", \"input_shape\": [2], \"layers\": [{\"type\": "
                      "\"linear\", \"out_features\": 2}]}, \"data\": {\"dataset\": \"d\"}, "
                      "\"batch_size\": 1, \"epochs\": 3, \"checkpoint_every_steps\": 4}";
    r = kn_test_http(T.server->port, "POST", "/v1/jobs", NULL, job, strlen(job));
    cr_assert_eq(r.status, 202, "%s", r.body);
    cJSON *doc = cJSON_Parse(r.body);
    char id[40], path[700];
    snprintf(id, sizeof id, "%s", cJSON_GetObjectItem(doc, "id")->valuestring);
    cJSON_Delete(doc);
    kn_test_reply_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    bool done = false;
    for (int i = 0; i < 600 && !done; i++) {
        r = kn_test_http(T.server->port, "GET", path, NULL, NULL, 0);
        done = strstr(r.body, "\"state\":\"succeeded\"") || strstr(r.body, "\"state\":\"failed\"");
        if (done) cr_assert(strstr(r.body, "succeeded"), "%s", r.body);
        kn_test_reply_free(&r);
        if (!done) usleep(50000);
    }
    cr_assert(done, "the job did not finish in 30 s");
    umask(before);
    const char *data = T.config.data_dir;
    snprintf(path, sizeof path, "%s/kiln.db", data);
    expect_mode(path, 0600);
    snprintf(path, sizeof path, "%s/kiln.db-wal", data);
    expect_mode(path, 0600);
    snprintf(path, sizeof path, "%s/jobs/%s", data, id);
    expect_mode(path, 0700);
    snprintf(path, sizeof path, "%s/jobs/%s/model.safetensors", data, id);
    expect_mode(path, 0600);
    snprintf(path, sizeof path, "%s/jobs/%s/checkpoint-8.safetensors", data, id);
    expect_mode(path, 0600);
    snprintf(path, sizeof path, "%s/datasets/d/train_inputs.npy", data);
    expect_mode(path, 0600);
}
