/*
 * server.c — kilnd's lifetime: ksrv_start makes the data directory (0700) and its
 * folders, removes what a crash left in tmp/ (uploads cut off mid-way), keeps a space
 * reserve, migrates the store (kiln.db is 0600), requeues jobs a crash or shutdown left
 * running, loads the token and refuses a non-loopback address without one, starts the
 * workers, the model cache and the HTTP daemon; ksrv_stop undoes it in the reverse order
 * (HTTP first so no new job arrives while the workers checkpoint). Also the per-thread
 * store handles and paths under the data directory.
 */
#define _GNU_SOURCE /* asprintf */
#include "dist_launch.h"
#include "job_memory.h"
#include "ksrv_http.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How long ksrv_stop gives the workers to checkpoint: SIGTERM must exit within 10 s. */
#define STOP_TIMEOUT_SECONDS 8.0

bool ksrv_mkdirs(const char *path, mode_t mode)
{
    char buffer[600];
    if (snprintf(buffer, sizeof buffer, "%s", path) >= (int)sizeof buffer) return false;
    for (char *p = buffer + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buffer, mode) != 0 && errno != EEXIST) return false;
        *p = '/';
    }
    if (mkdir(buffer, mode) != 0 && errno != EEXIST) return false;
    struct stat st;
    return stat(buffer, &st) == 0 && S_ISDIR(st.st_mode);
}

void ksrv_remove_folder(const ksrv_server *server, const char *relative)
{
    char folder[600];
    if (!relative[0] || strstr(relative, "..") ||
        !ksrv_data_path(server, relative, folder, sizeof folder))
        return;
    DIR *dir = opendir(folder);
    if (!dir) return;
    for (struct dirent *e; (e = readdir(dir));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[900];
        snprintf(path, sizeof path, "%s/%s", folder, e->d_name);
        unlink(path);
    }
    closedir(dir);
    rmdir(folder);
}

bool ksrv_data_path(const ksrv_server *server, const char *relative, char *out, size_t size)
{
    int n = snprintf(out, size, "%s/%s", server->config.data_dir, relative);
    return n >= 0 && (size_t)n < size;
}

/* ---- the space reserve ---------------------------------------------------------------- */
/* SQLite needs room in its write-ahead log to commit anything, a delete included: on a
 * full disk, the API could not free space. kilnd keeps this much in a file of its own
 * and gives it up for a delete that the disk refused (ksrv_space_reserve_release). */
#define SPACE_RESERVE_BYTES (256 * 1024)
#define SPACE_RESERVE_NAME "space-reserve"

void ksrv_space_reserve_make(ksrv_server *server)
{
    char path[600];
    struct stat st;
    if (!ksrv_data_path(server, SPACE_RESERVE_NAME, path, sizeof path)) return;
    if (stat(path, &st) == 0 && st.st_blocks * 512 >= SPACE_RESERVE_BYTES) return;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return;
    /* allocated blocks, not a hole: a sparse file would give nothing back */
    int error = posix_fallocate(fd, 0, SPACE_RESERVE_BYTES);
    close(fd);
    if (error) {
        unlink(path); /* no room for it now: made again after a delete frees some */
        ksrv_log(KSRV_LOG_WARN, "cannot keep the %d KiB space reserve in %s: %s",
                 SPACE_RESERVE_BYTES / 1024, server->config.data_dir, strerror(error));
    }
}

bool ksrv_space_reserve_release(ksrv_server *server)
{
    char path[600];
    if (!ksrv_data_path(server, SPACE_RESERVE_NAME, path, sizeof path) || unlink(path) != 0)
        return false;
    ksrv_log(KSRV_LOG_WARN,
             "the data directory %s is full: its space reserve was given up "
             "so that a delete can commit",
             server->config.data_dir);
    return true;
}

/* Uploads a crash cut off mid-way leave their temporary files in tmp/: nothing else
 * writes there, and nothing is in flight before the daemon starts. */
static void clean_tmp(ksrv_server *server)
{
    char folder[600];
    if (!ksrv_data_path(server, "tmp", folder, sizeof folder)) return;
    DIR *dir = opendir(folder);
    if (!dir) return;
    int removed = 0;
    long long bytes = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || S_ISDIR(st.st_mode))
            continue;
        if (unlinkat(dirfd(dir), e->d_name, 0) == 0) {
            removed++;
            bytes += st.st_size;
        }
    }
    closedir(dir);
    if (removed)
        ksrv_log(KSRV_LOG_INFO, "removed %d temporary file%s (%.1f MB) left in tmp/ by a crash",
                 removed, removed == 1 ? "" : "s", (double)bytes / 1e6);
}

/* kiln.db (and the WAL files SQLite makes with its mode) readable by kilnd's user only,
 * also when an older kilnd created it with the umask's mode. */
static bool private_database(const char *db_path)
{
    int fd = open(db_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return false;
    bool ok = fchmod(fd, 0600) == 0;
    close(fd);
    static const char *const suffixes[] = {"-wal", "-shm"};
    for (int i = 0; i < 2; i++) {
        char path[640];
        snprintf(path, sizeof path, "%s%s", db_path, suffixes[i]);
        if (chmod(path, 0600) != 0 && errno != ENOENT) ok = false;
    }
    return ok;
}

/* ---- one store handle per thread ------------------------------------------------------ */
typedef struct thread_store {
    kstore *store;
    char db_path[600];
} thread_store;

static pthread_key_t store_key;
static pthread_once_t store_key_once = PTHREAD_ONCE_INIT;

static void thread_store_free(void *value)
{
    thread_store *ts = value;
    kstore_close(ts->store);
    free(ts);
}

static void make_store_key(void)
{
    pthread_key_create(&store_key, thread_store_free);
}

kstore *ksrv_thread_store(ksrv_server *server)
{
    pthread_once(&store_key_once, make_store_key);
    thread_store *ts = pthread_getspecific(store_key);
    /* a long-lived thread may have served an earlier server (tests start several) */
    if (ts && strcmp(ts->db_path, server->db_path) != 0) {
        pthread_setspecific(store_key, NULL);
        thread_store_free(ts);
        ts = NULL;
    }
    if (ts) return ts->store;
    ts = calloc(1, sizeof *ts);
    if (!ts) return NULL;
    char *error = NULL;
    ts->store = kstore_open(server->db_path, &error);
    if (!ts->store) {
        ksrv_log(KSRV_LOG_ERROR, "cannot open the store %s: %s", server->db_path,
                 error ? error : "unknown error");
        free(error);
        free(ts);
        return NULL;
    }
    snprintf(ts->db_path, sizeof ts->db_path, "%s", server->db_path);
    pthread_setspecific(store_key, ts);
    return ts->store;
}

/* ---- start and stop ------------------------------------------------------------------- */
static ksrv_server *start_failed(ksrv_server *server, char **error, char *message)
{
    if (error)
        *error = message;
    else
        free(message);
    ksrv_stop(server);
    return NULL;
}

static char *message(const char *fmt, const char *a, const char *b)
{
    char *text = NULL;
    if (asprintf(&text, fmt, a, b) < 0) text = NULL;
    return text;
}

ksrv_server *ksrv_start(const ksrv_config *config, char **error)
{
    if (error) *error = NULL;
    ksrv_server *server = calloc(1, sizeof *server);
    if (!server) return NULL;
    server->config = *config;
    pthread_mutex_init(&server->stats.lock, NULL);
    server->started_at = ksrv_now();
    ksrv_log_set_level(config->log_level);

    static const char *const folders[] = {"", "datasets", "jobs", "tmp"};
    for (size_t i = 0; i < sizeof folders / sizeof folders[0]; i++) {
        char path[600];
        if (!ksrv_data_path(server, folders[i], path, sizeof path) || !ksrv_mkdirs(path, 0700))
            return start_failed(
                server, error,
                message("cannot create the data directory %s: %s", path, strerror(errno)));
    }
    if (!ksrv_data_path(server, "kiln.db", server->db_path, sizeof server->db_path))
        return start_failed(server, error,
                            message("--data-dir %s: path too long%s", config->data_dir, ""));
    char *problem = NULL;
    if (!ksrv_auth_load(server, &problem)) return start_failed(server, error, problem);
    if ((problem = ksrv_auth_listen_check(config, server->token[0] != '\0')))
        return start_failed(server, error, problem);
    clean_tmp(server);
    ksrv_space_reserve_make(server);
    if (!private_database(server->db_path))
        return start_failed(
            server, error,
            message("cannot create %s with mode 0600: %s", server->db_path, strerror(errno)));

    /* opening migrates; a crash or shutdown may have left jobs running */
    kstore *store = kstore_open(server->db_path, &problem);
    if (!store) {
        char *text = message("cannot open the store %s: %s", server->db_path,
                             problem ? problem : "unknown error");
        free(problem);
        return start_failed(server, error, text);
    }
    int requeued = kstore_job_requeue_running(store);
    kstore_close(store);
    if (requeued > 0)
        ksrv_log(KSRV_LOG_INFO,
                 "%d job%s left running requeued: they resume from their "
                 "last checkpoint",
                 requeued, requeued == 1 ? "" : "s");

    server->job_memory_limit = ksrv_job_memory_limit(config);
    ksrv_log(KSRV_LOG_INFO, "a job may use %.1f GiB (%s); bigger ones are refused",
             (double)server->job_memory_limit / (1 << 30),
             config->max_job_memory ? "--max-job-memory" : "80% of this machine's memory");
    /* distributed jobs: an unreachable --hostfile host refuses the start */
    if ((problem = ksrv_dist_start(server))) return start_failed(server, error, problem);
    server->models = ksrv_model_cache_new(server);
    if (!server->models)
        return start_failed(server, error, message("cannot create the model cache%s%s", "", ""));
    if (config->workers > 0) {
        server->workers = ksrv_workers_start(server, &problem);
        if (!server->workers)
            return start_failed(
                server, error, problem ? problem : message("cannot start the workers%s%s", "", ""));
    }
    if (!ksrv_http_start(server, &problem)) return start_failed(server, error, problem);
    if (server->token[0] == '\0' && !ksrv_loopback_address(config->listen_address))
        ksrv_log(KSRV_LOG_WARN, "--insecure-no-token: anyone who can reach %s can drive kilnd",
                 config->listen_address);
    return server;
}

void ksrv_stop(ksrv_server *server)
{
    if (!server) return;
    server->stopping = 1;
    ksrv_http_stop(server);
    if (server->workers) ksrv_workers_stop(server->workers, STOP_TIMEOUT_SECONDS);
    server->workers = NULL;
    ksrv_dist_stop(server);
    if (server->models) ksrv_model_cache_free(server->models);
    ksrv_metrics_cache_clear();
    ksrv_samples_cache_clear();
    server->models = NULL;
    pthread_mutex_destroy(&server->stats.lock);
    /* this thread's handle (if it opened one) must not outlive the server's files */
    pthread_once(&store_key_once, make_store_key);
    thread_store *ts = pthread_getspecific(store_key);
    if (ts && !strcmp(ts->db_path, server->db_path)) {
        pthread_setspecific(store_key, NULL);
        thread_store_free(ts);
    }
    free(server);
}
