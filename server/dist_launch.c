/*
 * dist_launch.c — kilnd's distributed jobs: N ranks of `kiln train` started by mpirun on
 * the hosts of --hostfile (default: this machine, a slot per core or per GPU), and the
 * worker thread that launched them supervising them to the end.
 *
 * The ranks read a spec written for them (jobs/<id>/dist/job.json: the job with its
 * model inline, its dataset's files by path, resume_from its latest checkpoint) and
 * write into the job's folder. Only rank 0 writes on stdout: a stream of JSON events
 * (kiln train --events) that drive the job runner's callbacks exactly as a local trainer
 * would (metrics, progress, checkpoints recorded in the store). (mpirun's --tag-output
 * would name each line's rank, but it tags the chunks it reads, cutting long lines.)
 * Every rank's stderr and mpirun's own lines go to jobs/<id>/dist/ranks.log, the last
 * of them kept for the failure message: a failing rank says "kiln: rank R of N failed
 * (exit status C)" after its error, and mpirun names a rank killed by a signal.
 *
 * Supervision:
 *   - cancel, pause and kilnd's shutdown reach every rank through mpirun, which forwards
 *     SIGUSR2 (stop) and SIGUSR1 (checkpoint, then stop) to all of them; the ranks agree
 *     on the step (core/dist/dist_ddp.c). Ranks that do not stop in time are killed (SIGTERM
 *     to mpirun, then SIGKILL to its process group);
 *   - a rank that dies takes the others with it (kn_dist_abort, or mpirun's own rule);
 *     the job fails with that rank's exit status or signal and its last message, or is
 *     relaunched from its last checkpoint while distributed.max_restarts allows (the
 *     restarts are counted in the job's "distributed" JSON);
 *   - mpirun dies with the thread that started it (PR_SET_PDEATHSIG) and each rank with
 *     its parent, so a kill -9 of kilnd leaves no rank training for nobody; at the next
 *     start the job is requeued and resumes from its checkpoint as any job does.
 */
#define _GNU_SOURCE
#include "dist_launch.h"
#include "ksrv_http.h"

#include "kn_dist.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HOST_TIMEOUT_MS 3000
#define FLAGS_POLL_SECONDS 0.25
#define STATE_WRITE_SECONDS 1.0
#define SHUTDOWN_GRACE_SECONDS 5.0 /* kilnd exits within 10 s of SIGTERM (server.c: 8 s) */
#define STOP_GRACE_SECONDS 30.0    /* a cancel or pause: the ranks finish their step */
#define KILL_GRACE_SECONDS 2.0
#define TAIL_LINES 6
#define LINE_MAX_BYTES 8192

struct ksrv_dist {
    kapi_hosts hosts; /* the hostfile's; count 0: this machine */
    char program[PATH_MAX];
    char unavailable[600]; /* why distributed jobs cannot run here, "" when they can */
};

/* ---- the server's side: hosts and programs ---------------------------------------------- */

/* Whether an executable named program is on PATH (or is a path that exists). */
static bool runnable(const char *program)
{
    if (strchr(program, '/')) return access(program, X_OK) == 0;
    const char *path = getenv("PATH");
    char candidate[PATH_MAX];
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        size_t n = strcspn(p, ":");
        if (n > 0 && snprintf(candidate, sizeof candidate, "%.*s/%s", (int)n, p, program) > 0 &&
            access(candidate, X_OK) == 0)
            return true;
        p += n + (p[n] == ':');
    }
    return false;
}

char *ksrv_dist_start(ksrv_server *server)
{
    ksrv_dist *d = calloc(1, sizeof *d);
    if (!d) return strdup("out of memory");
    const ksrv_config *c = &server->config;
    if (c->hostfile[0]) {
        char error[700];
        if (kapi_hosts_load(c->hostfile, &d->hosts, HOST_TIMEOUT_MS, error, sizeof error) !=
            KAPI_HOSTS_OK) {
            free(d);
            char *message = malloc(760);
            if (message) snprintf(message, 760, "--hostfile: %s", error);
            return message;
        }
    }
    if (c->kiln_path[0]) {
        snprintf(d->program, sizeof d->program, "%s", c->kiln_path);
    } else { /* kiln beside kilnd */
        ssize_t n = readlink("/proc/self/exe", d->program, sizeof d->program - 8);
        d->program[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(d->program, '/');
        if (slash)
            strcpy(slash + 1, "kiln");
        else
            snprintf(d->program, sizeof d->program, "kiln");
    }
    if (!kn_dist_built())
        snprintf(d->unavailable, sizeof d->unavailable, "%s", kn_dist_unavailable());
    else if (!runnable(kn_dist_mpirun()))
        snprintf(d->unavailable, sizeof d->unavailable,
                 "mpirun (%s) is not installed on this server (apt install openmpi-bin, or set "
                 "KILN_MPIRUN)",
                 kn_dist_mpirun());
    else if (access(d->program, X_OK) != 0)
        snprintf(d->unavailable, sizeof d->unavailable,
                 "the program of the ranks, %.400s, is not there (kilnd --kiln PATH)", d->program);
    if (d->unavailable[0])
        ksrv_log(KSRV_LOG_INFO, "distributed jobs unavailable: %s", d->unavailable);
    else
        ksrv_log(KSRV_LOG_INFO, "distributed jobs: %s, ranks run %s",
                 d->hosts.count ? d->hosts.path : "this machine", d->program);
    server->dist = d;
    return NULL;
}

void ksrv_dist_stop(ksrv_server *server)
{
    if (!server->dist) return;
    kapi_hosts_free(&server->dist->hosts);
    free(server->dist);
    server->dist = NULL;
}

static int cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* The slots of a job: the hostfile's, else this machine's cores or GPUs. */
static int slots_for(const ksrv_dist *d, bool on_gpus)
{
    if (d->hosts.count) return d->hosts.slots;
    return on_gpus ? kn_cuda_device_count() : cores();
}

static bool on_gpus(const kapi_job_spec *spec)
{
    return !strcmp(spec->distributed.devices, "cuda");
}

bool ksrv_dist_check(ksrv_server *server, const kapi_job_spec *spec, ksrv_response *response)
{
    const kapi_dist_spec *ds = &spec->distributed;
    if (ds->processes <= 0) return true;
    const ksrv_dist *d = server->dist;
    if (!d || d->unavailable[0]) {
        ksrv_respond_error(response, 400, "distributed_unavailable", "distributed",
                           "distributed: this server cannot run distributed jobs: %s",
                           d ? d->unavailable : "not started");
        return false;
    }
    bool gpus = on_gpus(spec);
    int slots = slots_for(d, gpus);
    /* GPUs of other machines are their business; this machine's are counted */
    int gpus_here = kn_cuda_device_count();
    if (gpus && (!d->hosts.count || kapi_hosts_all_local(&d->hosts)) && ds->processes > gpus_here) {
        ksrv_respond_error(response, 400, "invalid_spec", "distributed.devices",
                           "distributed.devices: \"cuda\" puts each process on a GPU of its "
                           "own; %d processes need %d GPUs, this server has %d (%s)",
                           ds->processes, ds->processes, gpus_here, kn_cuda_status());
        return false;
    }
    if (ds->processes > slots) {
        ksrv_respond_error(response, 400, "invalid_spec", "distributed.processes",
                           "distributed.processes: %d processes, but this server has %d slot%s "
                           "(%s)",
                           ds->processes, slots, slots == 1 ? "" : "s",
                           d->hosts.count ? "its --hostfile" : "one per core of this machine");
        return false;
    }
    return true;
}

/* ---- the ranks' spec ----------------------------------------------------------------------- */

static cJSON *source_json(const kapi_data_source *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (s->format == KAPI_FORMAT_CSV) {
        cJSON_AddStringToObject(o, "format", "csv");
        cJSON_AddStringToObject(o, "path", s->inputs_path);
        cJSON_AddStringToObject(o, "label_column", s->label_column);
    } else {
        bool idx = s->format == KAPI_FORMAT_IDX;
        cJSON_AddStringToObject(o, "format", idx ? "idx" : "npy");
        cJSON_AddStringToObject(o, idx ? "images" : "inputs", s->inputs_path);
        cJSON_AddStringToObject(o, "labels", s->labels_path);
    }
    return o;
}

cJSON *ksrv_dist_rank_spec(const char *job_spec_json, const char *model_json,
                           const kapi_data_source *train, const kapi_data_source *test,
                           int checkpoint_every_steps, char *error, size_t error_size)
{
    cJSON *spec = cJSON_Parse(job_spec_json);
    cJSON *data = spec ? cJSON_GetObjectItemCaseSensitive(spec, "data") : NULL;
    if (!cJSON_IsObject(data)) {
        snprintf(error, error_size, "the stored job spec is not an object with data");
        cJSON_Delete(spec);
        return NULL;
    }
    if (model_json) {
        cJSON *model = cJSON_Parse(model_json);
        if (!model) {
            snprintf(error, error_size, "the stored model's spec is not JSON");
            cJSON_Delete(spec);
            return NULL;
        }
        cJSON_ReplaceItemInObjectCaseSensitive(spec, "model", model);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(data, "dataset");
    cJSON_AddItemToObject(data, "train", source_json(train));
    if (test->present) cJSON_AddItemToObject(data, "test", source_json(test));
    if (!cJSON_GetObjectItemCaseSensitive(spec, "checkpoint_every_steps"))
        cJSON_AddNumberToObject(spec, "checkpoint_every_steps", checkpoint_every_steps);
    return spec;
}

/* ---- one launch ---------------------------------------------------------------------------- */

typedef struct rank_info {
    char host[64];
    int pid;
    double samples_per_second;
} rank_info;

typedef struct line_buffer {
    char data[LINE_MAX_BYTES];
    size_t used;
    int fd;
    bool is_stdout;
} line_buffer;

typedef struct launch {
    const ksrv_dist_job *job;
    ksrv_dist_result *result;
    const char *data_root; /* "<data dir>/", stripped from the ranks' messages */
    FILE *log;             /* jobs/<id>/dist/ranks.log */
    pid_t pid;
    int world;
    rank_info *ranks;
    char tail[TAIL_LINES * 2][400]; /* the last lines on stderr (the ranks' and mpirun's) */
    int n_tail;
    /* "kiln: rank R of N failed (exit status C)": the first such rank, and what it said
     * just before */
    int failed_rank, failed_status;
    char failed_words[400];
    bool summary, stopped;
    int64_t last_step, epoch;
    ksrv_dist_end requested; /* a stop asked of the ranks (SUCCEEDED: none) */
    double stop_sent_at, killed_at;
    bool dirty; /* the job's "distributed" JSON has news */
    char backend[16];
    int restarts, max_restarts;
    double communication_seconds;
} launch;

static void push_tail(char tail[][400], int *n, int capacity, const char *line)
{
    if (*n == capacity) {
        memmove(tail[0], tail[1], sizeof tail[0] * (size_t)(capacity - 1));
        (*n)--;
    }
    snprintf(tail[*n], sizeof tail[0], "%s", line);
    (*n)++;
}

/* The job's "distributed" JSON: what the dashboard and GET /v1/jobs/{id} show. */
static void write_state(launch *l)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return;
    const kapi_dist_spec *ds = &l->job->spec->distributed;
    cJSON_AddNumberToObject(o, "processes", ds->processes);
    cJSON_AddNumberToObject(o, "world_size", l->world);
    cJSON_AddStringToObject(o, "devices", ds->devices);
    if (l->backend[0]) cJSON_AddStringToObject(o, "backend", l->backend);
    cJSON_AddNumberToObject(o, "restarts", l->restarts);
    cJSON_AddNumberToObject(o, "max_restarts", l->max_restarts);
    cJSON_AddNumberToObject(o, "communication_seconds", l->communication_seconds);
    if (l->pid > 0) cJSON_AddNumberToObject(o, "mpirun_pid", l->pid);
    cJSON *ranks = cJSON_AddArrayToObject(o, "ranks");
    for (int r = 0; r < l->world; r++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "rank", r);
        if (l->ranks[r].host[0]) cJSON_AddStringToObject(x, "host", l->ranks[r].host);
        if (l->ranks[r].pid > 0) cJSON_AddNumberToObject(x, "pid", l->ranks[r].pid);
        cJSON_AddNumberToObject(x, "samples_per_second", l->ranks[r].samples_per_second);
        cJSON_AddItemToArray(ranks, x);
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text && kstore_job_set_distributed(l->job->store, l->job->job->id, text) != KSTORE_OK)
        ksrv_log(KSRV_LOG_WARN, "job %s: recording its processes: %s", l->job->job->id,
                 kstore_last_error(l->job->store));
    free(text);
    l->dirty = false;
}

static double number(const cJSON *o, const char *key, double fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsNumber(v)) return v->valuedouble;
    if (cJSON_IsString(v)) { /* non-finite numbers come as "NaN", "Infinity" */
        if (!strcmp(v->valuestring, "NaN")) return NAN;
        if (!strcmp(v->valuestring, "Infinity")) return INFINITY;
        if (!strcmp(v->valuestring, "-Infinity")) return -INFINITY;
    }
    return fallback;
}

static void on_step_event(launch *l, const cJSON *e)
{
    double sps[64];
    int world = l->world < 64 ? l->world : 64;
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(e, "rank_samples_per_second");
    for (int r = 0; r < world; r++) {
        const cJSON *v = cJSON_GetArrayItem(ranks, r);
        sps[r] = cJSON_IsNumber(v) ? v->valuedouble : 0;
        l->ranks[r].samples_per_second = sps[r];
    }
    l->communication_seconds = number(e, "communication_seconds", l->communication_seconds);
    kn_step_info info = {
        .step = (int64_t)number(e, "step", 0),
        .total_steps = (int64_t)number(e, "total_steps", 0),
        .epoch = (int64_t)number(e, "epoch", 0),
        .batch_in_epoch = (int64_t)number(e, "batch_in_epoch", 0),
        .batches_per_epoch = (int64_t)number(e, "batches_per_epoch", 0),
        .loss = number(e, "loss", NAN),
        .lr = number(e, "lr", 0),
        .samples_per_second = number(e, "samples_per_second", 0),
        .elapsed_seconds = number(e, "elapsed_seconds", 0),
        .skipped = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "skipped")),
        .world_size = world,
        .rank_samples_per_second = sps,
        .communication_seconds = l->communication_seconds,
    };
    l->last_step = info.step;
    l->epoch = info.epoch;
    l->dirty = true;
    const kn_train_callbacks *cb = l->job->callbacks;
    /* a stop the job runner asks for here is seen by this supervisor's own polling */
    if (cb->on_step) cb->on_step(cb->context, &info);
}

/* An evaluation as `kiln train --json` prints it (kcli_metrics_json: the loss and the
 * task's metrics under prefix) back into a result; what is absent is NaN. The task is
 * the one whose metrics are there (kapi_eval_metrics names them). */
static kn_eval_result eval_from_json(const cJSON *e, const char *prefix)
{
    char name[64];
#define METRIC(m) (snprintf(name, sizeof name, "%s%s", prefix, m), number(e, name, NAN))
    kn_eval_result r = {.step = (int64_t)number(e, "step", 0),
                        .epoch = (int64_t)number(e, "epoch", 0),
                        .loss = METRIC("loss"),
                        .count = (int64_t)number(e, "count", 0),
                        .precision = METRIC("precision"),
                        .recall = METRIC("recall"),
                        .f1 = METRIC("f1"),
                        .mse = METRIC("mse"),
                        .mae = METRIC("mae"),
                        .r2 = METRIC("r2")};
    double accuracy = METRIC("accuracy"), exact_match = METRIC("exact_match");
#undef METRIC
    r.task = !isnan(r.mse)         ? KN_TASK_REGRESSION
             : !isnan(exact_match) ? KN_TASK_MULTILABEL
                                   : KN_TASK_CLASSIFICATION;
    r.accuracy = r.task == KN_TASK_MULTILABEL ? exact_match : accuracy;
    return r;
}

/* One line of rank 0's stdout: a JSON event. */
static void on_event(launch *l, const char *text)
{
    cJSON *e = cJSON_Parse(text);
    const cJSON *kind = e ? cJSON_GetObjectItemCaseSensitive(e, "event") : NULL;
    if (!cJSON_IsString(kind)) {
        if (l->log) fprintf(l->log, "stdout: %s\n", text);
        cJSON_Delete(e);
        return;
    }
    const char *name = kind->valuestring;
    const kn_train_callbacks *cb = l->job->callbacks;
    if (!strcmp(name, "ranks")) {
        const cJSON *backend = cJSON_GetObjectItemCaseSensitive(e, "backend");
        if (cJSON_IsString(backend))
            snprintf(l->backend, sizeof l->backend, "%s", backend->valuestring);
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(e, "ranks"))
        {
            int r = (int)number(x, "rank", -1);
            if (r < 0 || r >= l->world) continue;
            const cJSON *host = cJSON_GetObjectItemCaseSensitive(x, "host");
            snprintf(l->ranks[r].host, sizeof l->ranks[r].host, "%s",
                     cJSON_IsString(host) ? host->valuestring : "");
            l->ranks[r].pid = (int)number(x, "pid", 0);
        }
        l->dirty = true;
    } else if (!strcmp(name, "step")) {
        on_step_event(l, e);
    } else if (!strcmp(name, "eval")) {
        kn_eval_result r = eval_from_json(e, "");
        if (cb->on_eval) cb->on_eval(cb->context, &r);
    } else if (!strcmp(name, "checkpoint")) {
        if (cb->on_checkpoint) cb->on_checkpoint(cb->context, NULL, (int64_t)number(e, "step", 0));
    } else if (!strcmp(name, "summary")) {
        ksrv_dist_result *res = l->result;
        l->summary = true;
        res->steps = (int64_t)number(e, "steps", (double)l->last_step);
        res->samples_per_second = number(e, "samples_per_second", 0);
        res->test = eval_from_json(e, "test_");
        res->test.step = res->steps;
        res->has_test = !isnan(res->test.loss);
        l->communication_seconds = number(e, "communication_seconds", l->communication_seconds);
        l->dirty = true;
    } else if (!strcmp(name, "stopped")) {
        l->stopped = true;
        l->last_step = (int64_t)number(e, "step", (double)l->last_step);
    }
    cJSON_Delete(e);
}

/* Whether a stderr line is Open MPI's own framing rather than something a rank said. */
static bool mpi_noise(const char *line)
{
    static const char *const framing[] = {"NOTE: invoking MPI_ABORT",
                                          "You may or may not see output",
                                          "Primary job",
                                          "a non-zero exit code",
                                          "Per user-direction",
                                          "the job to be terminated",
                                          "Process name:",
                                          "Exit code:",
                                          "SUMMARY: ",
                                          "exited on signal",
                                          "detected that one",
                                          NULL};
    if (!line[0] || strchr("-[*=#", line[0]) || !strncmp(line, "mpirun", 6) ||
        !strncmp(line, "MPI_ABORT", 9) || !strncmp(line, "  ", 2))
        return true;
    for (int i = 0; framing[i]; i++)
        if (strstr(line, framing[i])) return true;
    return false;
}

/* A line of stderr (the ranks' and mpirun's, merged). */
static void on_stderr(launch *l, const char *line)
{
    if (l->log) fprintf(l->log, "%s\n", line);
    int r = 0, n = 0, code = 0;
    if (sscanf(line, "kiln: rank %d of %d failed (exit status %d)", &r, &n, &code) == 3) {
        if (l->failed_rank < 0 && r >= 0 && r < l->world) {
            l->failed_rank = r;
            l->failed_status = code;
            /* its error, written just before (ranks write whole lines) */
            for (int i = l->n_tail - 1; i >= 0 && !l->failed_words[0]; i--)
                if (!mpi_noise(l->tail[i]) && strncmp(l->tail[i], "kiln: rank ", 11))
                    snprintf(l->failed_words, sizeof l->failed_words, "%s",
                             !strncmp(l->tail[i], "error: ", 7) ? l->tail[i] + 7 : l->tail[i]);
        }
        return;
    }
    push_tail(l->tail, &l->n_tail, TAIL_LINES * 2, line);
}

static void on_line(launch *l, const line_buffer *b, const char *line)
{
    if (b->is_stdout)
        on_event(l, line);
    else
        on_stderr(l, line);
}

/* Reads what is there; false at the end of the stream. */
static bool drain(launch *l, line_buffer *b)
{
    ssize_t n = read(b->fd, b->data + b->used, sizeof b->data - 1 - b->used);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) {
        if (b->used) { /* a last line without its newline */
            b->data[b->used] = '\0';
            on_line(l, b, b->data);
            b->used = 0;
        }
        return false;
    }
    b->used += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < b->used; i++) {
        if (b->data[i] != '\n') continue;
        b->data[i] = '\0';
        on_line(l, b, b->data + start);
        start = i + 1;
    }
    if (start == 0 && b->used == sizeof b->data - 1) { /* a line longer than the buffer */
        b->data[b->used] = '\0';
        on_line(l, b, b->data);
        b->used = 0;
    } else {
        memmove(b->data, b->data + start, b->used - start);
        b->used -= start;
    }
    return true;
}

/* ---- starting mpirun ----------------------------------------------------------------------- */

/* "<cwd>/path" for a relative path. */
static void absolute(const char *path, char *out, size_t size)
{
    char cwd[PATH_MAX] = "";
    if (path[0] == '/' || !getcwd(cwd, sizeof cwd)) {
        snprintf(out, size, "%s", path);
        return;
    }
    const char *rest = path[0] == '.' && path[1] == '/' ? path + 2 : path;
    size_t a = strlen(cwd), b = strlen(rest);
    if (a + 1 + b + 1 > size) { /* too long: left relative, which still works locally */
        snprintf(out, size, "%s", path);
        return;
    }
    memcpy(out, cwd, a);
    out[a] = '/';
    memcpy(out + a + 1, rest, b + 1);
}

/* The environment of mpirun: kilnd's, and the ranks' thread count. */
static char **rank_environment(int threads)
{
    extern char **environ;
    int n = 0;
    while (environ[n]) n++;
    char **env = calloc((size_t)n + 2, sizeof *env);
    if (!env) return NULL;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (strncmp(environ[i], "KILN_NUM_THREADS=", 17) != 0) env[k++] = environ[i];
    char *threads_var = malloc(40);
    if (!threads_var) {
        free(env);
        return NULL;
    }
    snprintf(threads_var, 40, "KILN_NUM_THREADS=%d", threads);
    env[k++] = threads_var;
    env[k] = NULL;
    return env;
}

/* Frees what rank_environment made (the other strings are the process's). */
static void free_environment(char **env)
{
    for (int i = 0; env && env[i]; i++)
        if (!strncmp(env[i], "KILN_NUM_THREADS=", 17)) free(env[i]);
    free(env);
}

/* Starts mpirun with its stdout and stderr on pipes; false with error set. */
static bool start(launch *l, const char *spec_path, const char *hostfile, const char *out_dir,
                  int *out_fd, int *err_fd, char *error, size_t size)
{
    const ksrv_dist_job *j = l->job;
    const ksrv_dist *d = j->server->dist;
    int processes = j->spec->distributed.processes;
    int hosts = d->hosts.count ? d->hosts.count : 1;
    int per_host = (processes + hosts - 1) / hosts;
    int threads = j->server->config.threads_per_worker > 0 ? j->server->config.threads_per_worker
                                                           : cores() / per_host;
    if (threads < 1) threads = 1;
    char threads_text[16];
    snprintf(threads_text, sizeof threads_text, "%d", threads);
    const char *program[] = {d->program, "train", spec_path,   "--events",   "--quiet",
                             "--out",    out_dir, "--threads", threads_text, NULL};
    static const char *const exported[] = {"KILN_NUM_THREADS", "KILN_CUDA_MODULE", "ASAN_OPTIONS",
                                           "LSAN_OPTIONS",     "UBSAN_OPTIONS",    NULL};
    kapi_launch launch_args = {.mpirun = kn_dist_mpirun(),
                               .processes = processes,
                               .hostfile = hostfile,
                               .export_env = exported,
                               .program = program};
    char **argv = kapi_mpirun_argv(&launch_args);
    char **env = rank_environment(threads);
    int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
    if (!argv || !env || pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
        snprintf(error, size, "starting mpirun: %s",
                 argv && env ? strerror(errno) : "out of memory");
        goto failed;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* only async-signal-safe calls from here to exec: kilnd has other threads */
        setpgid(0, 0);                    /* its own group: the last resort kills it whole */
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* mpirun ends its ranks when kilnd dies */
        if (getppid() != parent) _exit(127);
        dup2(out_pipe[1], 1);
        dup2(err_pipe[1], 2);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        /* kilnd's sockets and database stay kilnd's */
        for (int fd = 3; fd < 65536; fd++) close(fd);
        execve(argv[0], argv, env);
        static const char message[] = "mpirun: cannot be run\n";
        (void)!write(2, message, sizeof message - 1);
        _exit(127);
    }
    if (pid < 0) {
        snprintf(error, size, "starting mpirun: fork: %s", strerror(errno));
        goto failed;
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    *out_fd = out_pipe[0];
    *err_fd = err_pipe[0];
    l->pid = pid;
    kapi_argv_free(argv);
    free_environment(env);
    return true;
failed:
    for (int i = 0; i < 2; i++) {
        if (out_pipe[i] >= 0) close(out_pipe[i]);
        if (err_pipe[i] >= 0) close(err_pipe[i]);
    }
    kapi_argv_free(argv);
    free_environment(env);
    return false;
}

/* ---- supervising one launch ------------------------------------------------------------------ */

/* Asks the ranks to stop (once); what they do is up to the signal mpirun forwards. */
static void request_stop(launch *l, ksrv_dist_end why)
{
    if (l->requested != KSRV_DIST_SUCCEEDED) return;
    l->requested = why;
    l->stop_sent_at = ksrv_monotonic();
    kill(l->pid, why == KSRV_DIST_CANCELED ? SIGUSR2 : SIGUSR1);
    ksrv_log(KSRV_LOG_INFO, "job %s: asking its %d ranks to %s", l->job->job->id, l->world,
             why == KSRV_DIST_CANCELED ? "stop" : "checkpoint and stop");
}

/* Cancel, pause and shutdown, as the job runner's own polling sees them. */
static void poll_requests(launch *l)
{
    if (*l->job->stopping) {
        request_stop(l, KSRV_DIST_SHUTDOWN);
        return;
    }
    bool cancel = false, pause = false;
    if (kstore_job_flags(l->job->store, l->job->job->id, &cancel, &pause) != KSTORE_OK) return;
    if (cancel)
        request_stop(l, KSRV_DIST_CANCELED);
    else if (pause)
        request_stop(l, KSRV_DIST_PAUSED);
}

/* Ranks slow to stop are ended: mpirun first (it kills them), then its whole group. */
static void escalate(launch *l)
{
    if (l->requested == KSRV_DIST_SUCCEEDED) return;
    double grace = l->requested == KSRV_DIST_SHUTDOWN ? SHUTDOWN_GRACE_SECONDS : STOP_GRACE_SECONDS;
    double now = ksrv_monotonic();
    if (!l->killed_at && now - l->stop_sent_at > grace) {
        ksrv_log(KSRV_LOG_WARN, "job %s: ranks did not stop within %.0f s: ending them",
                 l->job->job->id, grace);
        kill(l->pid, SIGTERM);
        l->killed_at = now;
    } else if (l->killed_at && now - l->killed_at > KILL_GRACE_SECONDS) {
        kill(-l->pid, SIGKILL);
    }
}

/* Reads mpirun's output until it exits; returns its wait status. */
static int supervise(launch *l, int out_fd, int err_fd)
{
    line_buffer out = {.fd = out_fd, .is_stdout = true}, err = {.fd = err_fd};
    bool out_open = true, err_open = true;
    double last_poll = 0, last_write = 0, reaped_at = 0;
    int status = 0;
    bool reaped = false;
    while (!reaped || out_open || err_open) {
        struct pollfd fds[2];
        int n = 0;
        if (out_open) fds[n++] = (struct pollfd){.fd = out_fd, .events = POLLIN};
        if (err_open) fds[n++] = (struct pollfd){.fd = err_fd, .events = POLLIN};
        if (n > 0 && poll(fds, (nfds_t)n, 100) > 0) {
            for (int i = 0; i < n; i++) {
                if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                line_buffer *b = fds[i].fd == out_fd ? &out : &err;
                if (!drain(l, b)) {
                    if (b == &out)
                        out_open = false;
                    else
                        err_open = false;
                }
            }
        } else if (n == 0) {
            usleep(50000);
        }
        if (!reaped && waitpid(l->pid, &status, WNOHANG) == l->pid) {
            reaped = true; /* ranks may hold the pipes a moment more: they die with mpirun */
            reaped_at = ksrv_monotonic();
        }
        double now = ksrv_monotonic();
        if (!reaped && now - last_poll >= FLAGS_POLL_SECONDS) {
            last_poll = now;
            poll_requests(l);
            escalate(l);
        }
        if (l->dirty && now - last_write >= STATE_WRITE_SECONDS) {
            last_write = now;
            write_state(l);
        }
        if (reaped && now - reaped_at > 5) break; /* a pipe some orphan still holds */
    }
    close(out_fd);
    close(err_fd);
    if (l->dirty) write_state(l);
    return status;
}

/* ---- how it ended ------------------------------------------------------------------------------
 */

/* Copies text without the data directory's prefix (users know jobs/<id>/..., not where
 * the server keeps them). */
static void strip_root(char *out, size_t size, const char *text, const char *root)
{
    size_t n = strlen(root), used = 0;
    while (*text && used + 1 < size) {
        if (n && !strncmp(text, root, n)) {
            text += n;
            continue;
        }
        out[used++] = *text++;
    }
    out[used] = '\0';
}

/* The code of a rank's failure from what it said, as the job runner classifies its own. */
static const char *classify(const char *message)
{
    if (strstr(message, "loss is") || strstr(message, "not finite")) return "non_finite_loss";
    if (strstr(message, "out of memory")) return "out_of_memory";
    if (!strncmp(message, "data.", 5) || strstr(message, "dataset")) return "data_error";
    return "rank_failed";
}

static void fail(launch *l, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(launch *l, const char *code, const char *fmt, ...)
{
    char raw[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    ksrv_dist_result *res = l->result;
    res->end = KSRV_DIST_FAILED;
    strip_root(res->message, sizeof res->message, raw, l->data_root);
    snprintf(res->code, sizeof res->code, "%s", code);
    res->step = l->last_step > 0 ? l->last_step : -1;
}

/* Which rank failed and how, from mpirun's report and the ranks' own lines. */
static void explain_failure(launch *l, int status)
{
    int rank = -1, pid = 0, signal_number = 0, code = -1;
    char node[128] = "", signal_name[64] = "";
    for (int i = 0; i < l->n_tail; i++) {
        const char *t = l->tail[i], *at;
        int r, p, sig;
        if ((at = strstr(t, "process rank ")) &&
            sscanf(at, "process rank %d with PID %d on node %127s exited on signal %d (%63[^)])",
                   &r, &p, node, &sig, signal_name) >= 4)
            rank = r, pid = p, signal_number = sig;
        if ((at = strstr(t, "Process name: [[")) &&
            sscanf(at, "Process name: [[%*d,%*d],%d]", &r) == 1)
            rank = r;
        if ((at = strstr(t, "Exit code:")) && sscanf(at, "Exit code: %d", &r) == 1) code = r;
    }
    if (signal_number == 0 && l->failed_rank >= 0) /* it took the job down itself */
        rank = l->failed_rank, code = l->failed_status;
    if (code < 0 && WIFEXITED(status)) code = WEXITSTATUS(status);
    char where[200];
    if (rank >= 0 && rank < l->world) {
        const rank_info *ri = &l->ranks[rank];
        int shown = pid > 0 ? pid : ri->pid; /* Open MPI may say "PID 0" */
        const char *host = ri->host[0] ? ri->host : node;
        if (shown > 0)
            snprintf(where, sizeof where, "rank %d of %d (pid %d%s%s)", rank, l->world, shown,
                     host[0] ? " on " : "", host);
        else
            snprintf(where, sizeof where, "rank %d of %d", rank, l->world);
    } else {
        snprintf(where, sizeof where, "a rank of %d", l->world);
    }
    if (signal_number > 0) {
        fail(l, "rank_failed", "%s was killed by signal %d (%s)", where, signal_number,
             signal_name[0] ? signal_name : strsignal(signal_number));
        return;
    }
    if (WIFSIGNALED(status)) {
        fail(l, "rank_failed", "mpirun was killed by signal %d (%s)", WTERMSIG(status),
             strsignal(WTERMSIG(status)));
        return;
    }
    const char *words = l->failed_words;
    for (int i = l->n_tail - 1; i >= 0 && !words[0]; i--) /* else the last thing said */
        if (!mpi_noise(l->tail[i])) words = l->tail[i];
    if (!strncmp(words, "error: ", 7)) words += 7;
    if (code == 0 && !words[0]) words = "the ranks ended before finishing the job";
    fail(l, classify(words), "%s exited with status %d%s%s", where, code < 0 ? 1 : code,
         words[0] ? ": " : "", words);
    long long step; /* the trainer's errors name their step */
    if (sscanf(words, "step %lld:", &step) == 1) l->result->step = step;
}

/* ---- the run ------------------------------------------------------------------------------------
 */

/* jobs/<id>/dist/<name>, absolute. */
static bool dist_file(const ksrv_dist_job *j, const char *name, char *out, size_t size)
{
    char relative[256], path[PATH_MAX];
    snprintf(relative, sizeof relative, "jobs/%s/dist%s%s", j->job->id, name[0] ? "/" : "", name);
    if (!ksrv_data_path(j->server, relative, path, sizeof path)) return false;
    absolute(path, out, size);
    return strlen(out) + 1 < size;
}

/* Writes the ranks' spec with resume_from the job's latest checkpoint (if any). */
static bool write_spec(const ksrv_dist_job *j, const char *path, int64_t *resume_step, char *error,
                       size_t size)
{
    cJSON *spec = cJSON_Duplicate(j->rank_spec, true);
    if (!spec) {
        snprintf(error, size, "out of memory");
        return false;
    }
    kstore_checkpoint latest;
    *resume_step = 0;
    if (kstore_checkpoint_latest(j->store, j->job->id, "checkpoint", &latest) == KSTORE_OK) {
        char file[PATH_MAX], full[PATH_MAX];
        if (ksrv_data_path(j->server, latest.path, file, sizeof file)) {
            absolute(file, full, sizeof full);
            cJSON_AddStringToObject(spec, "resume_from", full);
            *resume_step = latest.step;
        }
    }
    char *text = cJSON_Print(spec);
    cJSON_Delete(spec);
    FILE *f = text ? fopen(path, "w") : NULL;
    bool ok = f && fputs(text, f) >= 0;
    if (f && fclose(f) != 0) ok = false;
    if (!ok)
        snprintf(error, size, "writing %s: %s", path, text ? strerror(errno) : "out of memory");
    free(text);
    return ok;
}

/* The hosts mpirun gets: the server's hostfile, or this machine with its slots. */
static bool write_hosts(const ksrv_dist_job *j, const char *path, char *error, size_t size)
{
    const ksrv_dist *d = j->server->dist;
    if (d->hosts.count) return kapi_hosts_write(&d->hosts, path, error, size);
    kapi_hosts local;
    kapi_hosts_local(slots_for(d, on_gpus(j->spec)), &local);
    bool ok = kapi_hosts_write(&local, path, error, size);
    kapi_hosts_free(&local);
    return ok;
}

/* Restarts are counted in the job's "distributed" JSON, which outlives kilnd. */
static int restarts_so_far(const kstore_job *job)
{
    cJSON *o = job->distributed_json ? cJSON_Parse(job->distributed_json) : NULL;
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, "restarts") : NULL;
    int n = cJSON_IsNumber(v) ? (int)v->valuedouble : 0;
    cJSON_Delete(o);
    return n;
}

/* Whether pid is a process of this job: its command line names the job's spec. */
static bool runs_spec(int pid, const char *spec_path)
{
    char path[64], cmdline[8192];
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    if (n <= 0) return false;
    for (ssize_t i = 0; i < n; i++)
        if (!cmdline[i]) cmdline[i] = ' ';
    cmdline[n] = '\0';
    return strstr(cmdline, spec_path) != NULL;
}

/* A kilnd killed with -9 takes its mpirun down (PR_SET_PDEATHSIG) and mpirun its ranks,
 * but that takes mpirun a second or two: before launching again, this machine's
 * processes of the job's last launch (their pids in its "distributed" JSON, checked
 * against their command lines) are ended, so two launches never train at once. */
static void end_leftovers(const kstore_job *job, const char *spec_path)
{
    cJSON *o = job->distributed_json ? cJSON_Parse(job->distributed_json) : NULL;
    if (!o) return;
    int pids[1 + 64], n = 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "mpirun_pid"), *x;
    if (cJSON_IsNumber(v)) pids[n++] = (int)v->valuedouble;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(o, "ranks"))
    {
        const cJSON *pid = cJSON_GetObjectItemCaseSensitive(x, "pid");
        const cJSON *host = cJSON_GetObjectItemCaseSensitive(x, "host");
        if (n < 65 && cJSON_IsNumber(pid) &&
            (!cJSON_IsString(host) || kapi_host_is_local(host->valuestring)))
            pids[n++] = (int)pid->valuedouble;
    }
    cJSON_Delete(o);
    bool any = false;
    for (int i = 0; i < n; i++)
        if (pids[i] > 1 && runs_spec(pids[i], spec_path)) {
            ksrv_log(KSRV_LOG_WARN, "job %s: ending process %d of its previous launch", job->id,
                     pids[i]);
            kill(pids[i], SIGKILL);
            any = true;
        }
    for (double t0 = ksrv_monotonic(); any && ksrv_monotonic() - t0 < 5;) {
        any = false;
        for (int i = 0; i < n; i++) any |= pids[i] > 1 && runs_spec(pids[i], spec_path);
        if (any) usleep(20000);
    }
}

/* One mpirun, start to end; false when it could not start (result says why). */
static bool launch_once(launch *l, const char *spec_path, const char *hosts_path,
                        const char *out_dir)
{
    char error[700];
    int out_fd = -1, err_fd = -1;
    if (!start(l, spec_path, hosts_path, out_dir, &out_fd, &err_fd, error, sizeof error)) {
        fail(l, "internal", "%s", error);
        return false;
    }
    ksrv_log(KSRV_LOG_INFO, "job %s: %d ranks started (mpirun pid %d)", l->job->job->id, l->world,
             (int)l->pid);
    int status = supervise(l, out_fd, err_fd);
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (clean && l->summary) {
        l->result->end = KSRV_DIST_SUCCEEDED;
    } else if (l->requested != KSRV_DIST_SUCCEEDED && (l->stopped || l->killed_at || clean)) {
        l->result->end = l->requested; /* stopped as asked (or ended for not stopping) */
        l->result->step = l->last_step;
    } else {
        explain_failure(l, status);
    }
    return true;
}

void ksrv_dist_run(const ksrv_dist_job *j, ksrv_dist_result *result)
{
    memset(result, 0, sizeof *result);
    result->step = -1;
    const kapi_dist_spec *ds = &j->spec->distributed;
    char root[PATH_MAX] = "", data[PATH_MAX];
    if (ksrv_data_path(j->server, "", data, sizeof data)) absolute(data, root, sizeof root);
    launch l = {.job = j,
                .result = result,
                .data_root = root,
                .world = ds->processes,
                .restarts = restarts_so_far(j->job),
                .max_restarts = ds->max_restarts};
    char dir[PATH_MAX], spec_path[PATH_MAX], hosts_path[PATH_MAX], log_path[PATH_MAX],
        out_dir[PATH_MAX], error[700] = "";
    l.ranks = calloc((size_t)l.world, sizeof *l.ranks);
    bool ok = l.ranks && dist_file(j, "", dir, sizeof dir) &&
              dist_file(j, "job.json", spec_path, sizeof spec_path) &&
              dist_file(j, "hosts", hosts_path, sizeof hosts_path) &&
              dist_file(j, "ranks.log", log_path, sizeof log_path);
    snprintf(out_dir, sizeof out_dir, "%.*s", (int)(strlen(dir) - 5), dir); /* jobs/<id> */
    if (!ok || (mkdir(dir, 0700) != 0 && errno != EEXIST)) {
        snprintf(result->code, sizeof result->code, "internal");
        snprintf(result->message, sizeof result->message, "%s",
                 l.ranks ? "cannot create the job's dist folder" : "out of memory");
        result->end = KSRV_DIST_FAILED;
        free(l.ranks);
        return;
    }
    l.log = fopen(log_path, "a");
    if (l.log) setvbuf(l.log, NULL, _IOLBF, 0);
    end_leftovers(j->job, spec_path);
    for (;;) {
        int64_t resume_step = 0;
        memset(l.ranks, 0, sizeof *l.ranks * (size_t)l.world);
        l.n_tail = 0;
        l.failed_rank = -1;
        l.failed_words[0] = '\0';
        l.summary = l.stopped = false;
        l.killed_at = 0;
        if (!write_hosts(j, hosts_path, error, sizeof error) ||
            !write_spec(j, spec_path, &resume_step, error, sizeof error)) {
            fail(&l, "internal", "%s", error);
            break;
        }
        l.last_step = resume_step;
        if (l.log && resume_step)
            fprintf(l.log, "---- %.3f: %d ranks, resuming from step %lld\n", ksrv_now(), l.world,
                    (long long)resume_step);
        else if (l.log)
            fprintf(l.log, "---- %.3f: %d ranks\n", ksrv_now(), l.world);
        write_state(&l);
        if (!launch_once(&l, spec_path, hosts_path, out_dir)) break;
        if (result->end != KSRV_DIST_FAILED || l.requested != KSRV_DIST_SUCCEEDED) break;
        if (l.restarts >= l.max_restarts || *j->stopping) break;
        l.restarts++;
        ksrv_log(KSRV_LOG_WARN, "job %s: %s; restart %d of %d from its last checkpoint", j->job->id,
                 result->message, l.restarts, l.max_restarts);
        if (l.log)
            fprintf(l.log, "---- restart %d of %d: %s\n", l.restarts, l.max_restarts,
                    result->message);
        memset(result, 0, sizeof *result);
        result->step = -1;
    }
    write_state(&l);
    if (l.log) fclose(l.log);
    free(l.ranks);
}
