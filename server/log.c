/*
 * log.c — kilnd's log: one line per event on stderr, "TIME LEVEL message", filtered by
 * --log-level. Each line is formatted in full and written with one write(2): Linux keeps
 * a single write to a pipe (up to PIPE_BUF), a terminal or a regular file whole, so lines
 * from the HTTP threads and the workers never interleave, and no lock is held across the
 * system call (at info level every request logs a line; a lock there made the HTTP
 * threads queue behind each other's writes). Nothing is buffered: a line is on its way
 * before the event's answer, even if kilnd is killed right after.
 */
#include "ksrv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int current_level = KSRV_LOG_INFO;

void ksrv_log_set_level(const char *name)
{
    if (!name) return;
    if (!strcmp(name, "error"))
        current_level = KSRV_LOG_ERROR;
    else if (!strcmp(name, "warn"))
        current_level = KSRV_LOG_WARN;
    else if (!strcmp(name, "info"))
        current_level = KSRV_LOG_INFO;
    else if (!strcmp(name, "debug"))
        current_level = KSRV_LOG_DEBUG;
}

/* "YYYY-MM-DDTHH:MM:SS" of seconds, cached per thread: a busy thread logs many lines a
 * second, and gmtime_r + strftime cost more than the rest of the line. */
static const char *stamp_of(time_t seconds)
{
    static __thread time_t cached_seconds = -1;
    static __thread char cached[32];
    if (seconds != cached_seconds) {
        struct tm tm;
        gmtime_r(&seconds, &tm);
        strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_seconds = seconds;
    }
    return cached;
}

void ksrv_log(ksrv_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if ((int)level > current_level) return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char line[2100];
    int head = snprintf(line, sizeof line, "%s.%03ldZ %-5s ", stamp_of(now.tv_sec),
                        now.tv_nsec / 1000000, names[level]);
    va_list args;
    va_start(args, fmt);
    int body = vsnprintf(line + head, sizeof line - (size_t)head - 1, fmt, args);
    va_end(args);
    size_t length = (size_t)head + (body < 0 ? 0 : (size_t)body);
    if (length > sizeof line - 2) length = sizeof line - 2; /* cut: the line still ends */
    line[length++] = '\n';
    for (size_t done = 0; done < length;) {
        ssize_t n = write(STDERR_FILENO, line + done, length - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break; /* nowhere to log to: nothing else to do */
        done += (size_t)n;
    }
}
