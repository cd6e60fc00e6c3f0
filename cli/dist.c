/*
 * dist.c — `kiln train JOB.json --processes N`: one job across N processes.
 *
 * The launcher (kcli_train_launch) checks the job for N processes and the hosts
 * (--hostfile, or this machine with a slot per core or GPU) before anything starts, then
 * runs mpirun with this same program training the same job; Ctrl-C asks every rank to
 * stop after the same step and save what --out asks for (a second one ends them at once).
 *
 * Each rank is `kiln train` started by mpirun (kcli_rank_*): it joins the communicator
 * (MPI, or NCCL on its own GPU: cuda:<local rank>), trains its shard with the others
 * (core/dist/dist_ddp.c), and only rank 0 evaluates, prints progress and the summary, writes
 * files and emits events. SIGUSR1 (which mpirun passes on to every rank) stops the run
 * after an agreed step with a checkpoint, SIGUSR2 without one: what kilnd sends for a
 * pause and a cancel. A rank that fails takes the others down (kn_dist_abort) with its
 * exit status, after its message on stderr.
 */
#define _GNU_SOURCE
#include "kcli.h"

#include "kn_dist.h"

#include <cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOST_TIMEOUT_MS 3000

/* ---- the launcher ------------------------------------------------------------------------ */

static volatile pid_t launched_pid;
static volatile int launch_interrupts;

/* Ctrl-C: the first asks the ranks to stop and save (SIGUSR1, which mpirun forwards),
 * the second ends the job (mpirun kills the ranks on SIGTERM). */
static void on_launcher_sigint(int sig)
{
    (void)sig;
    if (launched_pid <= 0) return;
    kill(launched_pid, launch_interrupts++ == 0 ? SIGUSR1 : SIGTERM);
}

/* The checks a run on `processes` ranks needs that the spec alone cannot make. */
static int check_job(const char *job_path, const kcli_options *options, bool *on_gpus)
{
    kapi_errors errors = {0};
    size_t size = 0;
    char *text = kapi_read_file(job_path, &size, &errors);
    kapi_job_parse_options parse = {.allow_paths = true};
    kapi_job_spec *spec = text ? kapi_job_spec_parse(text, size, parse, &errors) : NULL;
    free(text);
    int rc = 0;
    if (spec) {
        if (spec->distributed.processes > 0 && spec->distributed.processes != options->processes)
            fprintf(stderr, "note: --processes %d replaces the job's distributed.processes (%d)\n",
                    options->processes, spec->distributed.processes);
        spec->distributed.processes = options->processes;
        if (!spec->distributed.devices[0]) snprintf(spec->distributed.devices, 8, "cpu");
        kapi_job_check_distributed(spec, &errors);
        *on_gpus = !strcmp(spec->distributed.devices, "cuda");
    }
    if (errors.count) {
        kcli_print_errors(&errors);
        rc = text || spec ? KCLI_EXIT_SPEC : KCLI_EXIT_RUNTIME;
    }
    kapi_errors_free(&errors);
    kapi_job_spec_free(spec);
    return rc;
}

/* The hosts: the hostfile's, checked, or this machine with a slot per core or GPU. */
static int choose_hosts(const kcli_options *options, bool on_gpus, kapi_hosts *hosts,
                        bool *oversubscribe)
{
    char error[700];
    *oversubscribe = false;
    if (options->hostfile) {
        if (kapi_hosts_load(options->hostfile, hosts, HOST_TIMEOUT_MS, error, sizeof error) !=
            KAPI_HOSTS_OK) {
            fprintf(stderr, "--hostfile: %s\n", error);
            return KCLI_EXIT_SPEC;
        }
        if (options->processes > hosts->slots) {
            fprintf(stderr, "--processes %d: the hostfile %s has %d slot%s\n", options->processes,
                    options->hostfile, hosts->slots, hosts->slots == 1 ? "" : "s");
            kapi_hosts_free(hosts);
            return KCLI_EXIT_SPEC;
        }
        return 0;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int slots = on_gpus ? kn_cuda_device_count() : (int)(cores > 0 ? cores : 1);
    if (on_gpus && options->processes > slots) {
        fprintf(stderr,
                "distributed.devices: cuda puts one process on each GPU: %d processes need %d "
                "GPUs, this machine has %d (%s)\n",
                options->processes, options->processes, slots, kn_cuda_status());
        return KCLI_EXIT_SPEC;
    }
    if (options->processes > slots) {
        fprintf(stderr,
                "note: %d processes on %d cores: they share the cores (mpirun --oversubscribe)\n",
                options->processes, slots);
        *oversubscribe = true;
    }
    kapi_hosts_local(slots, hosts);
    return 0;
}

/* The rank's command line: this program's train with the launcher's options less
 * --processes and --hostfile (the number arguments in text[2]). */
static void rank_program(const char **program, char text[2][24], const char *self,
                         const char *job_path, const kcli_options *options)
{
    int count = 0;
    program[count++] = self;
    program[count++] = "train";
    program[count++] = job_path;
    if (options->events)
        program[count++] = "--events";
    else if (options->json)
        program[count++] = "--json";
    if (options->quiet) program[count++] = "--quiet";
    if (options->out_dir) {
        program[count++] = "--out";
        program[count++] = options->out_dir;
    }
    if (options->threads) {
        snprintf(text[0], sizeof text[0], "%d", options->threads);
        program[count++] = "--threads";
        program[count++] = text[0];
    }
    snprintf(text[1], sizeof text[1], "%lld", (long long)options->log_every);
    program[count++] = "--log-every";
    program[count++] = text[1];
    program[count] = NULL;
}

int kcli_train_launch(const char *job_path, const kcli_options *options)
{
    if (!kn_dist_built()) {
        fprintf(stderr, "--processes: %s\n", kn_dist_unavailable());
        return KCLI_EXIT_RUNTIME;
    }
    bool on_gpus = false, oversubscribe = false;
    int rc = check_job(job_path, options, &on_gpus);
    kapi_hosts hosts = {0};
    if (rc == 0) rc = choose_hosts(options, on_gpus, &hosts, &oversubscribe);
    if (rc != 0) return rc;

    /* a hostfile of our own for the default (this machine, its slots) */
    char own_hostfile[] = "/tmp/kiln-hosts-XXXXXX";
    const char *hostfile = options->hostfile;
    if (!hostfile) {
        int fd = mkstemp(own_hostfile);
        char error[600];
        if (fd < 0 || (close(fd), !kapi_hosts_write(&hosts, own_hostfile, error, sizeof error))) {
            fprintf(stderr, "error: writing a hostfile in /tmp: %s\n", strerror(errno));
            kapi_hosts_free(&hosts);
            return KCLI_EXIT_RUNTIME;
        }
        hostfile = own_hostfile;
    }
    /* each rank's threads: a share of the cores of its host, unless told */
    if (!options->threads && !getenv("KILN_NUM_THREADS")) {
        int per_host = (options->processes + hosts.count - 1) / hosts.count;
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        char threads[24];
        snprintf(threads, sizeof threads, "%ld", cores / per_host > 1 ? cores / per_host : 1);
        setenv("KILN_NUM_THREADS", threads, 1);
    }
    if (isatty(STDERR_FILENO)) setenv("KILN_PROGRESS_TTY", "1", 1);
    kapi_hosts_free(&hosts);

    /* this program again as a rank: train the same job with the options that were given,
     * less the launcher's own (built from what was parsed, however it was spelled) */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    const char *program[16];
    char numbers[2][24];
    rank_program(program, numbers, n > 0 ? self : "kiln", job_path, options);
    static const char *const exported[] = {
        "KILN_NUM_THREADS", "KILN_PROGRESS_TTY", "OPENBLAS_NUM_THREADS", "KILN_CUDA_MODULE",
        "ASAN_OPTIONS",     "LSAN_OPTIONS",      "UBSAN_OPTIONS",        NULL};
    kapi_launch launch = {.mpirun = kn_dist_mpirun(),
                          .processes = options->processes,
                          .hostfile = hostfile,
                          .oversubscribe = oversubscribe,
                          .export_env = exported,
                          .program = program};
    char **args = kapi_mpirun_argv(&launch);
    if (!args) {
        if (!options->hostfile) unlink(own_hostfile);
        return KCLI_EXIT_RUNTIME;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* its own process group: a Ctrl-C reaches this launcher only, which decides;
         * and it dies with the launcher */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        execvp(args[0], args);
        fprintf(stderr, "error: cannot run %s: %s (install openmpi-bin, or set KILN_MPIRUN)\n",
                args[0], strerror(errno));
        _exit(127);
    }
    kapi_argv_free(args);
    if (pid < 0) {
        fprintf(stderr, "error: fork: %s\n", strerror(errno));
        if (!options->hostfile) unlink(own_hostfile);
        return KCLI_EXIT_RUNTIME;
    }
    launched_pid = pid;
    struct sigaction sa = {.sa_handler = on_launcher_sigint}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    launched_pid = 0;
    if (!options->hostfile) unlink(own_hostfile);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    rc = WEXITSTATUS(status);
    if (rc == 0 && launch_interrupts) rc = 130; /* stopped and saved, as one process would */
    return rc;
}

/* ---- a rank ------------------------------------------------------------------------------- */

static volatile int *rank_stop;

/* SIGUSR1: stop with a checkpoint (kilnd's pause, the launcher's Ctrl-C); SIGUSR2: stop
 * without one (a cancel). */
static void on_rank_signal(int sig)
{
    if (rank_stop) *rank_stop = sig == SIGUSR2 ? KCLI_STOP_CANCEL : KCLI_STOP_SAVE;
}

bool kcli_rank_device(const kapi_job_spec *spec, kn_device *device)
{
    if (!kn_dist_launched() || strcmp(spec->distributed.devices, "cuda") != 0) return false;
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    *device = (kn_device){KN_DEVICE_CUDA, local ? atoi(local) : 0};
    return true;
}

/* {"event": "ranks", "backend", "ranks": [{"rank", "host", "pid", "device"}...]} from
 * rank 0, gathered from every rank. */
static int print_ranks(kcli_rank *r, const kcli_job *job)
{
    typedef struct {
        int pid;
        char host[64], device[32];
    } whereabouts;
    whereabouts mine = {.pid = (int)getpid()};
    snprintf(mine.host, sizeof mine.host, "%s", kn_dist_host(r->dist));
    kn_device_str(job->device, mine.device, sizeof mine.device);
    whereabouts *all = calloc((size_t)r->world, sizeof *all);
    if (!all || kn_dist_allgather(r->dist, &mine, all, sizeof mine) != KN_OK) {
        fprintf(stderr, "error: %s\n", all ? kn_last_error() : "out of memory");
        free(all);
        return KCLI_EXIT_RUNTIME;
    }
    if (r->rank == 0) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "event", "ranks");
        cJSON_AddStringToObject(o, "backend", kn_dist_backend(r->dist));
        cJSON *ranks = cJSON_AddArrayToObject(o, "ranks");
        for (int i = 0; i < r->world; i++) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "rank", i);
            cJSON_AddStringToObject(x, "host", all[i].host);
            cJSON_AddNumberToObject(x, "pid", all[i].pid);
            cJSON_AddStringToObject(x, "device", all[i].device);
            cJSON_AddItemToArray(ranks, x);
        }
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (text) printf("%s\n", text);
        free(text);
        fflush(stdout);
    }
    free(all);
    return 0;
}

int kcli_rank_join(kcli_rank *r, kcli_job *job, kcli_options *options, volatile int *stop)
{
    memset(r, 0, sizeof *r);
    /* an orphan rank would train on for nobody: it goes with whoever started it */
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) raise(SIGKILL);
    r->dist = kn_dist_init(job->device);
    if (!r->dist) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        return KCLI_EXIT_RUNTIME;
    }
    r->rank = kn_dist_rank(r->dist);
    r->world = kn_dist_world_size(r->dist);
    int asked = job->spec->distributed.processes;
    if (asked > 0 && asked != r->world) {
        fprintf(stderr, "error: distributed.processes is %d but mpirun started %d processes\n",
                asked, r->world);
        return KCLI_EXIT_SPEC;
    }
    job->spec->distributed.processes = r->world;
    kapi_errors errors = {0};
    if (!kapi_job_check_distributed(job->spec, &errors)) {
        kcli_print_errors(&errors);
        kapi_errors_free(&errors);
        return KCLI_EXIT_SPEC;
    }
    kapi_errors_free(&errors);
    job->spec->train.dist = r->dist;
    if (!options->threads && !getenv("KILN_NUM_THREADS")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN) / kn_dist_local_size(r->dist);
        kn_set_num_threads(cores > 1 ? (int)cores : 1);
    }
    if (getenv("KILN_PROGRESS_TTY")) options->tty = true;
    bool events = options->events;
    /* rank 0 speaks for the job */
    if (r->rank != 0) {
        options->quiet = true;
        options->json = options->events = false;
    }
    rank_stop = stop;
    struct sigaction sa = {.sa_handler = on_rank_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    /* where every rank runs, said by rank 0 (only rank 0 writes on stdout, so that its
     * events reach the launcher whole): kilnd shows and supervises them */
    return events ? print_ranks(r, job) : 0;
}

int kcli_rank_agree_stop(kcli_rank *r, int stop)
{
    /* rank 0's reason decides what every rank does next (a save is a collective) */
    int reason = stop;
    if (kn_dist_broadcast(r->dist, &reason, sizeof reason, 0) != KN_OK) return KCLI_STOP_CANCEL;
    return reason ? reason : KCLI_STOP_CANCEL;
}

void kcli_rank_leave(kcli_rank *r, int rc)
{
    if (!r->dist) return;
    if (rc != 0 && rc != 130) {
        /* the others would wait for this rank forever: end the job with its status */
        fprintf(stderr, "kiln: rank %d of %d failed (exit status %d)\n", r->rank, r->world, rc);
        kn_dist_abort(r->dist, rc);
    }
    kn_dist_free(r->dist);
    rank_stop = NULL;
    memset(r, 0, sizeof *r);
}
