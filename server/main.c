/*
 * main.c — the kilnd executable: configuration from flags and KILND_* variables, the
 * server started, then a wait for SIGTERM/SIGINT, which stops it cleanly (running jobs
 * checkpoint and the process exits within 10 seconds).
 */
#include "ksrv.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static const char HELP[] =
    "usage: kilnd [options]\n"
    "\n"
    "Kiln's training server: models, datasets and jobs over HTTP/JSON, inference over the\n"
    "Open Inference Protocol v2. Every option also reads from its environment variable;\n"
    "a flag wins over the variable.\n"
    "\n"
    "  --listen ADDR              KILND_LISTEN             address to listen on (127.0.0.1)\n"
    "  --port N                   KILND_PORT               port, 0 picks a free one (8080)\n"
    "  --data-dir DIR             KILND_DATA_DIR           database and files (./data)\n"
    "  --workers N                KILND_WORKERS            training worker threads (1)\n"
    "  --devices LIST             KILND_DEVICES            devices, cycled over the workers:\n"
    "                                                      cpu, cuda:0,cuda:1 ... (cpu)\n"
    "  --http-threads N           KILND_HTTP_THREADS       HTTP thread pool size (8)\n"
    "  --max-body-bytes N         KILND_MAX_BODY_BYTES     JSON body limit, K/M/G ok (16M)\n"
    "  --max-upload-bytes N       KILND_MAX_UPLOAD_BYTES   dataset file limit (2G)\n"
    "  --queue-capacity N         KILND_QUEUE_CAPACITY     queued jobs before 503 (1000)\n"
    "  --log-level L              KILND_LOG_LEVEL          error, warn, info, debug (info)\n"
    "  --token-file FILE          KILND_TOKEN_FILE         0600 file holding the bearer token\n"
    "                                                      every route but /v2/health/* needs\n"
    "  --allowed-origins LIST     KILND_ALLOWED_ORIGINS    extra origins allowed to call, e.g.\n"
    "                                                      http://dash.local:3000\n"
    "  --threads-per-worker N     KILND_THREADS_PER_WORKER most cores a job uses (0: fair share)\n"
    "  --checkpoint-every-steps N KILND_CHECKPOINT_EVERY_STEPS  default checkpoint period (500)\n"
    "  --max-job-memory N         KILND_MAX_JOB_MEMORY     memory one job may use, K/M/G ok;\n"
    "                                                      bigger jobs are refused (0: 80% of\n"
    "                                                      RAM or of the container's limit)\n"
    "  --model-cache-entries N    KILND_MODEL_CACHE_ENTRIES  model versions inference keeps\n"
    "                                                      loaded (4)\n"
    "  --model-cache-bytes N      KILND_MODEL_CACHE_BYTES  and their parameters' bytes (1G)\n"
    "  --max-connections N        KILND_MAX_CONNECTIONS    open HTTP connections (1024)\n"
    "  --max-connections-per-ip N KILND_MAX_CONNECTIONS_PER_IP  from one address (64, 0: no\n"
    "                                                      limit; raise it behind a proxy)\n"
    "  --header-timeout S         KILND_HEADER_TIMEOUT     seconds a connection has to send a\n"
    "                                                      request's headers (10)\n"
    "  --idle-timeout S           KILND_IDLE_TIMEOUT       seconds a silent connection is kept\n"
    "                                                      (120)\n"
    "  --allowed-hosts LIST       KILND_ALLOWED_HOSTS      extra Host names that address this\n"
    "                                                      server: kiln.lan, kiln.lan:8080\n"
    "  --insecure-no-token        KILND_INSECURE_NO_TOKEN  serve an address other than loopback\n"
    "                                                      without --token-file (refused\n"
    "                                                      otherwise)\n"
    "  --hostfile FILE            KILND_HOSTFILE           machines for distributed jobs, Open\n"
    "                                                      MPI's format (HOST slots=N); checked\n"
    "                                                      at start (default: this machine, a\n"
    "                                                      slot per core, or per GPU)\n"
    "  --kiln PATH                KILND_KILN               the program distributed jobs' ranks\n"
    "                                                      run (default: kiln beside kilnd)\n"
    "  -h, --help                 this text\n"
    "\n"
    "On an address other than loopback (127.0.0.1, ::1) kilnd needs --token-file (a token of\n"
    "16 characters or more), or --insecure-no-token.\n";

static int stop_pipe[2] = {-1, -1};

static void on_stop_signal(int signal_number)
{
    unsigned char byte = (unsigned char)signal_number;
    int saved = errno;
    if (write(stop_pipe[1], &byte, 1) < 0) {
        /* nothing to do: a full pipe already holds a stop request */
    }
    errno = saved;
}

int main(int argc, char **argv)
{
    ksrv_config config;
    ksrv_config_defaults(&config);
    bool show_help = false;
    char *error = ksrv_config_parse(&config, argc, argv, &show_help);
    if (error) {
        fprintf(stderr, "kilnd: %s\n", error);
        free(error);
        return 2;
    }
    if (show_help) {
        fputs(HELP, stdout);
        return 0;
    }
    ksrv_log_set_level(config.log_level);
    /* everything kilnd writes (database, checkpoints, weights, uploads) is its user's
     * alone, whatever the umask it was started with */
    umask(077);
    /* each connection is a descriptor: a soft limit of 1024 (a common default) would stop
     * accepting before --max-connections */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }

    /* Threads made before main (OpenBLAS's) may take the signal, so a mask and sigwait
     * are not enough: the handler, whichever thread runs it, writes to a pipe that this
     * thread reads (write() is async-signal-safe). */
    if (pipe(stop_pipe) != 0) {
        perror("kilnd: pipe");
        return 1;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    ksrv_server *server = ksrv_start(&config, &error);
    if (!server) {
        fprintf(stderr, "kilnd: %s\n", error ? error : "cannot start");
        free(error);
        return 1;
    }
    ksrv_log(KSRV_LOG_INFO, "kilnd %s listening on http://%s:%d (data in %s)", KSRV_VERSION,
             config.listen_address, server->port, config.data_dir);
    unsigned char received = 0;
    while (read(stop_pipe[0], &received, 1) < 0 && errno == EINTR) {
    }
    ksrv_log(KSRV_LOG_INFO, "%s received: stopping", received == SIGTERM ? "SIGTERM" : "SIGINT");
    ksrv_stop(server);
    ksrv_log(KSRV_LOG_INFO, "kilnd stopped");
    return 0;
}
