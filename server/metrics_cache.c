/*
 * metrics_cache.c — finished jobs' metric responses, kept ready to send. Once a job is
 * succeeded, failed or canceled its series never change, and dashboards ask for the
 * same long series again and again: formatting 10,000 points costs milliseconds, a copy
 * of the finished text microseconds. A small LRU, process-wide, bounded in entries and
 * bytes; keys carry the job id and every query parameter that shapes the body.
 */
#include "ksrv.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_ENTRIES 32
#define CACHE_MAX_BYTES ((size_t)64 << 20)

typedef struct entry {
    char *key;
    char *body;
    size_t size;
    uint64_t used; /* LRU clock */
} entry;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static entry entries[CACHE_ENTRIES];
static size_t cached_bytes;
static uint64_t clock_now;

char *ksrv_metrics_cache_get(const char *key, size_t *size)
{
    char *copy = NULL;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++) {
        if (!entries[i].key || strcmp(entries[i].key, key) != 0) continue;
        entries[i].used = ++clock_now;
        copy = malloc(entries[i].size + 1);
        if (copy) memcpy(copy, entries[i].body, entries[i].size + 1);
        *size = entries[i].size;
        break;
    }
    pthread_mutex_unlock(&cache_lock);
    return copy;
}

static void drop(entry *e)
{
    cached_bytes -= e->size;
    free(e->key);
    free(e->body);
    memset(e, 0, sizeof *e);
}

void ksrv_metrics_cache_put(const char *key, const char *body, size_t size)
{
    if (size > CACHE_MAX_BYTES / 4) return; /* one huge series would evict everything */
    char *key_copy = strdup(key), *body_copy = malloc(size + 1);
    if (!key_copy || !body_copy) {
        free(key_copy);
        free(body_copy);
        return;
    }
    memcpy(body_copy, body, size);
    body_copy[size] = '\0';
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++)
        if (entries[i].key && strcmp(entries[i].key, key) == 0) drop(&entries[i]);
    for (;;) {
        int free_slot = -1, oldest = -1;
        for (int i = 0; i < CACHE_ENTRIES; i++) {
            if (!entries[i].key) {
                if (free_slot < 0) free_slot = i;
            } else if (oldest < 0 || entries[i].used < entries[oldest].used) {
                oldest = i;
            }
        }
        if (free_slot >= 0 && cached_bytes + size <= CACHE_MAX_BYTES) {
            entries[free_slot] = (entry){key_copy, body_copy, size, ++clock_now};
            cached_bytes += size;
            break;
        }
        drop(&entries[oldest]);
    }
    pthread_mutex_unlock(&cache_lock);
}

void ksrv_metrics_cache_clear(void)
{
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++)
        if (entries[i].key) drop(&entries[i]);
    pthread_mutex_unlock(&cache_lock);
}
