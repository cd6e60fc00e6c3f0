/*
 * alloc.c — the caching allocator behind every tensor's storage, tensor handle and
 * graph node. A steady training loop asks for the same sizes every step; keeping freed
 * blocks in per-size-class free lists means it stops calling malloc (and stops taking
 * page faults on large buffers) after the first step.
 *
 * Size classes: multiples of 64 bytes up to 4 KiB, then four classes per power of two
 * (so at most 25% of a block is slack). Blocks are 64-byte aligned.
 * KN_ALLOC_CACHE=0 in the environment (and sanitizer builds) turns caching off, so
 * AddressSanitizer sees every use after free.
 */
#include "kn_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SMALL_LIMIT 4096
#define SMALL_STEP 64
#define NUM_CLASSES (SMALL_LIMIT / SMALL_STEP + 4 * 52 + 1)

typedef struct free_block {
    struct free_block *next;
} free_block;

static pthread_mutex_t alloc_lock = PTHREAD_MUTEX_INITIALIZER;
static free_block *free_lists[NUM_CLASSES];
static kn_alloc_stats stats;
static int cache_enabled = -1; /* -1: not decided yet */
static uint64_t cache_limit = (uint64_t)8 << 30;

static int decide_caching(void)
{
#if defined(KN_SANITIZE)
    return 0;
#else
    const char *env = getenv("KN_ALLOC_CACHE");
    if (env && strcmp(env, "0") == 0) return 0;
    const char *limit = getenv("KN_ALLOC_CACHE_LIMIT_MB");
    if (limit && atoll(limit) > 0) cache_limit = (uint64_t)atoll(limit) << 20;
    return 1;
#endif
}

/* Rounds nbytes up to its size class and returns the class index. */
static int size_class(size_t nbytes, size_t *rounded)
{
    if (nbytes == 0) nbytes = 1;
    if (nbytes <= SMALL_LIMIT) {
        size_t r = (nbytes + SMALL_STEP - 1) / SMALL_STEP;
        *rounded = r * SMALL_STEP;
        return (int)r - 1;
    }
    int log2 = 63 - __builtin_clzll((unsigned long long)nbytes); /* 2^log2 <= nbytes */
    size_t step = ((size_t)1 << log2) / 4;
    size_t r = (nbytes + step - 1) / step * step;
    if (r == ((size_t)1 << (log2 + 1))) { /* rounded up to the next power of two */
        *rounded = r;
        return SMALL_LIMIT / SMALL_STEP + (log2 + 1 - 12) * 4;
    }
    *rounded = r;
    size_t sub = (r - ((size_t)1 << log2)) / step; /* 1..3 */
    return SMALL_LIMIT / SMALL_STEP + (log2 - 12) * 4 + (int)sub;
}

void *kn__alloc(size_t nbytes)
{
    size_t rounded;
    int cls = size_class(nbytes, &rounded);
    if (cls >= NUM_CLASSES || rounded < nbytes) return NULL;
    pthread_mutex_lock(&alloc_lock);
    if (cache_enabled < 0) cache_enabled = decide_caching();
    free_block *block = free_lists[cls];
    if (block) {
        free_lists[cls] = block->next;
        stats.cache_hits++;
        stats.bytes_cached -= rounded;
        stats.bytes_in_use += rounded;
        pthread_mutex_unlock(&alloc_lock);
        return block;
    }
    stats.system_allocs++;
    pthread_mutex_unlock(&alloc_lock);
    void *ptr = aligned_alloc(64, rounded);
    if (!ptr) {
        kn_empty_cache();
        ptr = aligned_alloc(64, rounded);
        if (!ptr) return NULL;
    }
    pthread_mutex_lock(&alloc_lock);
    stats.bytes_in_use += rounded;
    pthread_mutex_unlock(&alloc_lock);
    return ptr;
}

void kn__free(void *ptr, size_t nbytes)
{
    if (!ptr) return;
    size_t rounded;
    int cls = size_class(nbytes, &rounded);
    pthread_mutex_lock(&alloc_lock);
    stats.bytes_in_use -= rounded;
    if (cache_enabled > 0 && stats.bytes_cached + rounded <= cache_limit) {
        free_block *block = ptr;
        block->next = free_lists[cls];
        free_lists[cls] = block;
        stats.bytes_cached += rounded;
        pthread_mutex_unlock(&alloc_lock);
        return;
    }
    pthread_mutex_unlock(&alloc_lock);
    free(ptr);
}

void kn_empty_cache(void)
{
    pthread_mutex_lock(&alloc_lock);
    for (int i = 0; i < NUM_CLASSES; i++) {
        free_block *block = free_lists[i];
        while (block) {
            free_block *next = block->next;
            free(block);
            block = next;
        }
        free_lists[i] = NULL;
    }
    stats.bytes_cached = 0;
    pthread_mutex_unlock(&alloc_lock);
}

kn_alloc_stats kn_get_alloc_stats(void)
{
    pthread_mutex_lock(&alloc_lock);
    kn_alloc_stats copy = stats;
    pthread_mutex_unlock(&alloc_lock);
    return copy;
}

kn_storage *kn__storage_new(size_t nbytes, kn_device device)
{
    kn_storage *s = kn__alloc(sizeof *s);
    if (!s) return kn__error_null(KN_ERR_MEMORY, "out of memory allocating a storage");
    if (device.type != KN_DEVICE_CPU) { /* the CUDA module's caching allocator */
        s->data = kn__device_alloc(device, nbytes);
        if (!s->data) {
            kn__free(s, sizeof *s);
            return NULL;
        }
    } else {
        s->data = kn__alloc(nbytes);
        if (!s->data) {
            kn__free(s, sizeof *s);
            return kn__error_null(KN_ERR_MEMORY, "out of memory allocating %zu bytes", nbytes);
        }
    }
    s->nbytes = nbytes;
    s->refcount = 1;
    s->device = device;
    return s;
}

void kn__storage_release(kn_storage *s)
{
    if (!s) return;
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    if (s->device.type != KN_DEVICE_CPU)
        kn__device_free(s->device, s->data, s->nbytes);
    else
        kn__free(s->data, s->nbytes);
    kn__free(s, sizeof *s);
}
