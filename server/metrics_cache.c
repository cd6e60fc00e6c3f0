/*
 * metrics_cache.c — finished jobs' metric responses, kept ready to send. Once a job is
 * succeeded, failed or canceled its series never change, and dashboards ask for the
 * same long series again and again: formatting 10,000 points costs milliseconds, a copy
 * of the finished text microseconds. A small LRU, process-wide, bounded in entries and
 * bytes; keys carry the job id and every query parameter that shapes the body.
 */
#include "ksrv.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_ENTRIES 32
#define CACHE_MAX_BYTES ((size_t)64 << 20)

/* A body shared by the cache and the responses being sent from it: freed when the
 * last of them lets go, so a hit costs no copy of a body that may be 100s of KB. */
typedef struct blob {
    int references;
    size_t size;
    char data[];
} blob;

typedef struct entry {
    char *key;
    blob *body;
    char etag[24];
    uint64_t used; /* LRU clock */
} entry;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static entry entries[CACHE_ENTRIES];
static size_t cached_bytes;
static uint64_t clock_now;

void ksrv_metrics_cache_release(void *handle)
{
    blob *b = handle;
    if (b && __atomic_sub_fetch(&b->references, 1, __ATOMIC_ACQ_REL) == 0) free(b);
}

void *ksrv_metrics_cache_acquire(const char *key, const char **data, size_t *size, char etag[24])
{
    blob *found = NULL;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++) {
        if (!entries[i].key || strcmp(entries[i].key, key) != 0) continue;
        entries[i].used = ++clock_now;
        found = entries[i].body;
        __atomic_add_fetch(&found->references, 1, __ATOMIC_ACQ_REL);
        *data = found->data;
        *size = found->size;
        memcpy(etag, entries[i].etag, sizeof entries[i].etag);
        break;
    }
    pthread_mutex_unlock(&cache_lock);
    return found;
}

static void drop(entry *e)
{
    cached_bytes -= e->body->size;
    free(e->key);
    ksrv_metrics_cache_release(e->body);
    memset(e, 0, sizeof *e);
}

void ksrv_metrics_cache_put(const char *key, const char *body, size_t size, const char *etag)
{
    if (size > CACHE_MAX_BYTES / 4) return; /* one huge series would evict everything */
    char *key_copy = strdup(key);
    blob *copy = malloc(sizeof(blob) + size + 1);
    if (!key_copy || !copy) {
        free(key_copy);
        free(copy);
        return;
    }
    copy->references = 1; /* the cache's */
    copy->size = size;
    memcpy(copy->data, body, size);
    copy->data[size] = '\0';
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
            entries[free_slot] = (entry){.key = key_copy, .body = copy, .used = ++clock_now};
            snprintf(entries[free_slot].etag, sizeof entries[free_slot].etag, "%s", etag);
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

void ksrv_metrics_cache_forget(const char *job_id)
{
    size_t n = strlen(job_id);
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_ENTRIES; i++)
        if (entries[i].key && !strncmp(entries[i].key, job_id, n) && entries[i].key[n] == '|')
            drop(&entries[i]);
    pthread_mutex_unlock(&cache_lock);
}
