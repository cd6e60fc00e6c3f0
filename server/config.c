/*
 * config.c — kilnd's configuration: defaults, then KILND_* environment variables, then
 * command-line flags (so a flag always wins). Every value is checked here; a bad one is
 * reported by name and kilnd refuses to start rather than guess.
 */
#include "ksrv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ksrv_config_defaults(ksrv_config *config)
{
    memset(config, 0, sizeof *config);
    snprintf(config->listen_address, sizeof config->listen_address, "127.0.0.1");
    config->port = 8080;
    snprintf(config->data_dir, sizeof config->data_dir, "./data");
    config->workers = 1;
    snprintf(config->devices, sizeof config->devices, "cpu");
    config->http_threads = 8; /* event streams hold a thread up to 0.1 s per poll */
    config->max_body_bytes = (size_t)16 << 20;
    config->max_upload_bytes = (size_t)2 << 30;
    config->queue_capacity = 1000;
    snprintf(config->log_level, sizeof config->log_level, "info");
    config->threads_per_worker = 0; /* 0: an equal share of the cores among running jobs */
    config->checkpoint_every_steps = 500;
    config->model_cache_entries = 4;
    config->model_cache_bytes = (size_t)1 << 30;
    config->max_connections = 1024;
    /* one address may hold this many: a flood from one client leaves the rest room */
    config->max_connections_per_ip = 64;
    config->header_timeout = 10;
    config->idle_timeout = 120;
}

static char *format_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format_error(const char *fmt, ...)
{
    char *message = malloc(512);
    if (!message) return NULL;
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, 512, fmt, args);
    va_end(args);
    return message;
}

typedef enum { OPT_STRING, OPT_INT, OPT_SIZE, OPT_BOOL } option_type;

typedef struct option {
    const char *flag, *env;
    option_type type;
    size_t offset, size; /* string: buffer size */
    long long min, max;
} option;

#define STR(f, e, field)                                                                           \
    {                                                                                              \
        f, e, OPT_STRING, offsetof(ksrv_config, field), sizeof(((ksrv_config *)0)->field), 0, 0    \
    }
#define INT(f, e, field, lo, hi)                                                                   \
    {                                                                                              \
        f, e, OPT_INT, offsetof(ksrv_config, field), 0, lo, hi                                     \
    }
#define SIZE(f, e, field, lo)                                                                      \
    {                                                                                              \
        f, e, OPT_SIZE, offsetof(ksrv_config, field), 0, lo, 0                                     \
    }
/* a switch: "--flag" alone is true; "--flag=false" and the variable take true/false/1/0 */
#define BOOL(f, e, field)                                                                          \
    {                                                                                              \
        f, e, OPT_BOOL, offsetof(ksrv_config, field), 0, 0, 0                                      \
    }

static const option OPTIONS[] = {
    STR("--listen", "KILND_LISTEN", listen_address),
    INT("--port", "KILND_PORT", port, 0, 65535),
    STR("--data-dir", "KILND_DATA_DIR", data_dir),
    INT("--workers", "KILND_WORKERS", workers, 0, 256),
    STR("--devices", "KILND_DEVICES", devices),
    INT("--http-threads", "KILND_HTTP_THREADS", http_threads, 1, 256),
    SIZE("--max-body-bytes", "KILND_MAX_BODY_BYTES", max_body_bytes, 1024),
    SIZE("--max-upload-bytes", "KILND_MAX_UPLOAD_BYTES", max_upload_bytes, 1024),
    INT("--queue-capacity", "KILND_QUEUE_CAPACITY", queue_capacity, 1, 100000000),
    STR("--log-level", "KILND_LOG_LEVEL", log_level),
    STR("--token-file", "KILND_TOKEN_FILE", token_file),
    STR("--allowed-origins", "KILND_ALLOWED_ORIGINS", allowed_origins),
    INT("--threads-per-worker", "KILND_THREADS_PER_WORKER", threads_per_worker, 0, 4096),
    INT("--checkpoint-every-steps", "KILND_CHECKPOINT_EVERY_STEPS", checkpoint_every_steps, 1,
        1000000000),
    SIZE("--max-job-memory", "KILND_MAX_JOB_MEMORY", max_job_memory, 0),
    INT("--model-cache-entries", "KILND_MODEL_CACHE_ENTRIES", model_cache_entries, 1, 100000),
    SIZE("--model-cache-bytes", "KILND_MODEL_CACHE_BYTES", model_cache_bytes, 1024),
    INT("--max-connections", "KILND_MAX_CONNECTIONS", max_connections, 16, 1000000),
    INT("--max-connections-per-ip", "KILND_MAX_CONNECTIONS_PER_IP", max_connections_per_ip, 0,
        1000000),
    INT("--header-timeout", "KILND_HEADER_TIMEOUT", header_timeout, 1, 3600),
    INT("--idle-timeout", "KILND_IDLE_TIMEOUT", idle_timeout, 1, 86400),
    STR("--allowed-hosts", "KILND_ALLOWED_HOSTS", allowed_hosts),
    BOOL("--insecure-no-token", "KILND_INSECURE_NO_TOKEN", insecure_no_token),
    STR("--hostfile", "KILND_HOSTFILE", hostfile),
    STR("--kiln", "KILND_KILN", kiln_path),
};
#define N_OPTIONS (sizeof OPTIONS / sizeof OPTIONS[0])

/* Sizes accept a K/M/G suffix (powers of 1024): --max-upload-bytes 4G. */
static bool parse_size(const char *text, unsigned long long *out)
{
    if (!text[0] || text[0] == '-') return false;
    errno = 0;
    char *end;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || end == text) return false;
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10, end++;
    else if (*end == 'M' || *end == 'm')
        shift = 20, end++;
    else if (*end == 'G' || *end == 'g')
        shift = 30, end++;
    if (*end) return false;
    if (shift && value > (~0ULL >> shift)) return false;
    *out = value << shift;
    return true;
}

static char *apply(ksrv_config *config, const option *o, const char *name, const char *value)
{
    char *field = (char *)config + o->offset;
    if (o->type == OPT_STRING) {
        if (strlen(value) >= o->size)
            return format_error("%s: value too long (at most %zu characters)", name, o->size - 1);
        memcpy(field, value, strlen(value) + 1);
        return NULL;
    }
    if (o->type == OPT_BOOL) {
        bool on = !strcmp(value, "true") || !strcmp(value, "1");
        if (!on && strcmp(value, "false") && strcmp(value, "0"))
            return format_error("%s: expected true or false, got \"%s\"", name, value);
        *(bool *)field = on;
        return NULL;
    }
    if (o->type == OPT_SIZE) {
        unsigned long long size;
        if (!parse_size(value, &size) || size < (unsigned long long)o->min)
            return format_error("%s: expected a byte count of at least %lld (K/M/G suffixes "
                                "allowed), got \"%s\"",
                                name, o->min, value);
        *(size_t *)field = (size_t)size;
        return NULL;
    }
    errno = 0;
    char *end;
    long long number = strtoll(value, &end, 10);
    if (errno || end == value || *end || number < o->min || number > o->max)
        return format_error("%s: expected an integer in [%lld, %lld], got \"%s\"", name, o->min,
                            o->max, value);
    *(int *)field = (int)number;
    return NULL;
}

static char *check(const ksrv_config *config)
{
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    bool known = false;
    for (int i = 0; i < 4; i++) known |= !strcmp(config->log_level, levels[i]);
    if (!known)
        return format_error("--log-level: expected error, warn, info or debug, got \"%s\"",
                            config->log_level);
    if (!config->listen_address[0]) return format_error("--listen: empty address");
    if (!config->data_dir[0]) return format_error("--data-dir: empty path");
    if (!config->devices[0]) return format_error("--devices: empty list");
    return NULL;
}

char *ksrv_config_parse(ksrv_config *config, int argc, char **argv, bool *show_help)
{
    *show_help = false;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const char *value = getenv(OPTIONS[i].env);
        if (!value) continue;
        char *error = apply(config, &OPTIONS[i], OPTIONS[i].env, value);
        if (error) return error;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            *show_help = true;
            return NULL;
        }
        const char *eq = strchr(arg, '=');
        size_t name_length = eq ? (size_t)(eq - arg) : strlen(arg);
        const option *o = NULL;
        for (size_t k = 0; k < N_OPTIONS && !o; k++)
            if (strlen(OPTIONS[k].flag) == name_length &&
                !strncmp(OPTIONS[k].flag, arg, name_length))
                o = &OPTIONS[k];
        if (!o) return format_error("unknown option \"%s\" (see --help)", arg);
        const char *value = eq ? eq + 1 : NULL;
        if (!value && o->type == OPT_BOOL) value = "true"; /* a switch takes no value */
        if (!value) {
            if (i + 1 >= argc) return format_error("%s needs a value", o->flag);
            value = argv[++i];
        }
        char *error = apply(config, o, o->flag, value);
        if (error) return error;
    }
    return check(config);
}
