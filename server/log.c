/*
 * log.c — kilnd's log: one line per event on stderr, "TIME LEVEL message", filtered by
 * --log-level. Lines are written with one fprintf under a lock so that lines from the
 * HTTP threads and the workers never interleave.
 */
#include "ksrv.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static volatile int current_level = KSRV_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void ksrv_log_set_level(const char *name)
{
    if (!name) return;
    if (!strcmp(name, "error")) current_level = KSRV_LOG_ERROR;
    else if (!strcmp(name, "warn")) current_level = KSRV_LOG_WARN;
    else if (!strcmp(name, "info")) current_level = KSRV_LOG_INFO;
    else if (!strcmp(name, "debug")) current_level = KSRV_LOG_DEBUG;
}

void ksrv_log(ksrv_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if ((int)level > current_level) return;
    char message[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, now.tv_nsec / 1000000, names[level], message);
    pthread_mutex_unlock(&log_lock);
}
