/*
 * replay_main.c — the main() that stands in for libFuzzer in ordinary builds (gcc, and
 * the ./test.sh --asan build), so every fuzz target runs as a ctest test:
 *
 *   fuzz_<name> [-n MUTATIONS] [-s SEED] [-t SECONDS] CORPUS_DIR_OR_FILE...
 *
 * runs LLVMFuzzerTestOneInput on every corpus file (directories read in name order),
 * then on MUTATIONS mutants of them (default 5000, spread over the files; -n 0 replays
 * the files alone, e.g. a crash reproducer). Mutants come from a fixed seed, so a
 * failure happens again on the next run: byte flips, interesting bytes, truncations,
 * insertions, deletions, repeated chunks and splices with another corpus file, one to
 * four at a time.
 *
 * A crash, a failed FUZZ_CHECK, a sanitizer report, an input that runs longer than -t
 * seconds (default 10) or, under the sanitizers, makes one allocation over 2 GB (as
 * libFuzzer's -malloc_limit_mb) ends the run with the input saved to
 * ./fuzz-replay-crash (the path is printed) for libFuzzer or -n 0 to reproduce. The
 * summary names the slowest input.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MUTATIONS 5000
#define DEFAULT_TIME_LIMIT 10 /* seconds per input, ASan included */
#define MAX_MUTANT (1 << 20)  /* mutants never grow past this */
#define CRASH_FILE "fuzz-replay-crash"

typedef struct {
    char *path;
    uint8_t *data;
    size_t size;
} corpus_file;

typedef struct {
    corpus_file *files;
    int count, capacity;
} corpus;

/* The input being run, for the crash handlers. */
static const uint8_t *current;
static size_t current_size;
static const char *current_name;

/* Async-signal-safe: open, write and close only. */
static void save_current(void)
{
    static const char head[] = "\nfuzz replay: the failing input (";
    static const char tail[] = ") is saved in ./" CRASH_FILE "\n";
    if (!current) return;
    int fd = open(CRASH_FILE, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        size_t done = 0;
        while (done < current_size) {
            ssize_t n = write(fd, current + done, current_size - done);
            if (n <= 0) break;
            done += (size_t)n;
        }
        close(fd);
    }
    if (write(2, head, sizeof head - 1) < 0) return;
    if (write(2, current_name, strlen(current_name)) < 0) return;
    if (write(2, tail, sizeof tail - 1) < 0) return;
}

static void on_signal(int sig)
{
    save_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* One input running past -t seconds: a hang, as libFuzzer's -timeout reports it. */
static void on_alarm(int sig)
{
    static const char message[] = "\nfuzz replay: an input ran past the time limit (-t)\n";
    (void)sig;
    if (write(2, message, sizeof message - 1) < 0) _exit(1);
    save_current();
    _exit(1);
}

#if defined(__SANITIZE_ADDRESS__) || defined(KN_SANITIZE)
#define HAVE_SANITIZER 1
/* The sanitizers call this before they exit on a report. */
void __sanitizer_set_death_callback(void (*callback)(void));
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

/* libFuzzer's -malloc_limit_mb: one allocation this large from an input of a few KB is a
 * size taken from the input and not checked against it. */
#define MALLOC_LIMIT ((size_t)2048 << 20)

static void on_malloc(const volatile void *ptr, size_t size)
{
    static const char message[] = "\nfuzz replay: an input made one allocation of over 2 GB\n";
    (void)ptr;
    if (size <= MALLOC_LIMIT || !current) return;
    if (write(2, message, sizeof message - 1) < 0) _exit(1);
    save_current();
    _exit(1);
}

static void on_free(const volatile void *ptr)
{
    (void)ptr; /* the sanitizers install the malloc hook only with a free hook */
}
#endif

static void install_handlers(void)
{
    int signals[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++) signal(signals[i], on_signal);
    signal(SIGALRM, on_alarm);
#ifdef HAVE_SANITIZER
    __sanitizer_set_death_callback(save_current);
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
#endif
}

/* ---- the corpus --------------------------------------------------------------------- */

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t capacity = 4096, used = 0;
    uint8_t *data = malloc(capacity);
    while (data) {
        used += fread(data + used, 1, capacity - used, f);
        if (used < capacity) break;
        uint8_t *grown = realloc(data, capacity * 2);
        if (!grown) free(data);
        data = grown;
        capacity *= 2;
    }
    fclose(f);
    *size = used;
    return data;
}

static void add_file(corpus *c, const char *path)
{
    size_t size = 0;
    uint8_t *data = read_all(path, &size);
    if (!data) {
        fprintf(stderr, "fuzz replay: cannot read %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (c->count == c->capacity) {
        c->capacity = c->capacity ? 2 * c->capacity : 64;
        c->files = realloc(c->files, sizeof *c->files * (size_t)c->capacity);
        if (!c->files) exit(2);
    }
    c->files[c->count++] = (corpus_file){strdup(path), data, size};
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A file, or every regular file directly in a directory, in name order. */
static void add_path(corpus *c, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "fuzz replay: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (!S_ISDIR(st.st_mode)) {
        add_file(c, path);
        return;
    }
    DIR *dir = opendir(path);
    if (!dir) {
        fprintf(stderr, "fuzz replay: cannot list %s: %s\n", path, strerror(errno));
        exit(2);
    }
    char **names = NULL;
    int n = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        if (e->d_name[0] == '.') continue;
        names = realloc(names, sizeof *names * (size_t)(n + 1));
        if (!names) exit(2);
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        snprintf(names[n++], len, "%s/%s", path, e->d_name);
    }
    closedir(dir);
    qsort(names, (size_t)n, sizeof *names, by_name);
    for (int i = 0; i < n; i++) {
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) add_file(c, names[i]);
        free(names[i]);
    }
    free(names);
}

/* ---- mutations ---------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t next_random(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t below(size_t n)
{
    return n ? (size_t)(next_random() % n) : 0;
}

/* Bytes that tend to matter to parsers: bounds, signs, separators, digits. */
static uint8_t interesting_byte(void)
{
    static const uint8_t bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, '0', '1',  '9', '-',
                                    '+',  '.',  'e',  'E',  ',',  ':',  '"', '{',  '}', '[',
                                    ']',  '\\', '\n', '\r', ' ',  '(',  ')', '\'', 'n', 't'};
    return bytes[below(sizeof bytes)];
}

/* One mutation of buf (size *n, capacity MAX_MUTANT) in place. */
static void mutate_once(uint8_t *buf, size_t *n, const corpus *c)
{
    size_t size = *n;
    switch (below(8)) {
    case 0: /* flip a bit */
        if (size) buf[below(size)] ^= (uint8_t)(1u << below(8));
        break;
    case 1: /* an interesting byte */
        if (size) buf[below(size)] = interesting_byte();
        break;
    case 2: /* a random byte */
        if (size) buf[below(size)] = (uint8_t)next_random();
        break;
    case 3: /* truncate */
        *n = below(size + 1);
        break;
    case 4: { /* insert a few bytes */
        size_t count = 1 + below(4), at = below(size + 1);
        if (size + count > MAX_MUTANT) break;
        memmove(buf + at + count, buf + at, size - at);
        for (size_t i = 0; i < count; i++) buf[at + i] = interesting_byte();
        *n = size + count;
        break;
    }
    case 5: { /* delete a chunk */
        if (!size) break;
        size_t at = below(size), count = 1 + below(size - at < 16 ? size - at : 16);
        memmove(buf + at, buf + at + count, size - at - count);
        *n = size - count;
        break;
    }
    case 6: { /* repeat a chunk, up to a few times */
        if (!size) break;
        size_t at = below(size), count = 1 + below(size - at < 64 ? size - at : 64);
        size_t times = 1 + below(4);
        if (size + count * times > MAX_MUTANT) break;
        memmove(buf + at + count * times, buf + at, size - at);
        for (size_t t = 1; t <= times; t++) memcpy(buf + at + count * t, buf + at, count);
        *n = size + count * times;
        break;
    }
    case 7: { /* splice: our head, another file's tail */
        const corpus_file *other = &c->files[below((size_t)c->count)];
        size_t at = below(size + 1), from = below(other->size + 1);
        size_t count = other->size - from;
        if (at + count > MAX_MUTANT) count = MAX_MUTANT - at;
        memcpy(buf + at, other->data + from, count);
        *n = at + count;
        break;
    }
    }
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The slowest input so far, and the most one may take (-t, seconds). */
static unsigned time_limit = DEFAULT_TIME_LIMIT;
static double slowest;
static char slowest_name[600];

static void run_one(const uint8_t *data, size_t size, const char *name)
{
    /* a copy of exactly size bytes, so ASan sees any read past the end */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) exit(2);
    memcpy(copy, data, size);
    current = copy;
    current_size = size;
    current_name = name;
    double start = now();
    alarm(time_limit);
    LLVMFuzzerTestOneInput(copy, size);
    alarm(0);
    double took = now() - start;
    if (took > slowest) {
        slowest = took;
        snprintf(slowest_name, sizeof slowest_name, "%s", name);
    }
    current = NULL;
    free(copy);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fuzz_TARGET [-n MUTATIONS] [-s SEED] [-t SECONDS] CORPUS_DIR_OR_FILE...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long mutations = DEFAULT_MUTATIONS;
    unsigned long long seed = 1;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:t:")) != -1) {
        if (opt == 'n')
            mutations = strtol(optarg, NULL, 10);
        else if (opt == 't')
            time_limit = (unsigned)strtoul(optarg, NULL, 10);
        else if (opt == 's')
            seed = strtoull(optarg, NULL, 10);
        else
            usage();
    }
    if (optind >= argc || mutations < 0) usage();
    corpus c = {0};
    for (int i = optind; i < argc; i++) add_path(&c, argv[i]);
    if (c.count == 0) {
        fprintf(stderr, "fuzz replay: no corpus files\n");
        return 2;
    }
    install_handlers();
    double start = now();
    for (int i = 0; i < c.count; i++) run_one(c.files[i].data, c.files[i].size, c.files[i].path);
    uint8_t *buf = malloc(MAX_MUTANT);
    if (!buf) return 2;
    char name[600];
    rng_state = seed;
    for (long m = 0; m < mutations; m++) {
        const corpus_file *f = &c.files[m % c.count];
        size_t n = f->size < MAX_MUTANT ? f->size : MAX_MUTANT;
        memcpy(buf, f->data, n);
        int rounds = 1 + (int)below(4);
        for (int r = 0; r < rounds; r++) mutate_once(buf, &n, &c);
        snprintf(name, sizeof name, "mutant %ld of %s (seed %llu)", m, f->path, seed);
        run_one(buf, n, name);
    }
    printf("fuzz replay: %d corpus files and %ld mutants passed in %.2f s (slowest: %.3f s, "
           "%s)\n",
           c.count, mutations, now() - start, slowest, slowest_name);
    free(buf);
    for (int i = 0; i < c.count; i++) {
        free(c.files[i].path);
        free(c.files[i].data);
    }
    free(c.files);
    return 0;
}
