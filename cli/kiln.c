/*
 * kiln.c — the `kiln` command line: one table of commands (local ones that train, eval,
 * predict and validate; client ones that drive a running kilnd), one table of options,
 * and getopt_long over the options a command takes, so `--state=running`, `--state
 * running` and options before or after arguments all work. `kiln --help` lists the
 * commands; `kiln COMMAND --help` (or `kiln help COMMAND`) prints that command's help.
 * Exit codes: 0 success, 1 runtime error, 2 usage or spec error.
 */
#include "kclient.h"
#include "kn_dist.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if KN_SANITIZE
/* Sanitized builds: Open MPI's libraries keep allocations until exit by design and have no
 * frame pointers, so a leak report's stack stops at the libc frame that allocated unless
 * the whole stack is unwound; with it, tests/lsan-mpi.supp tells MPI's leaks from ours. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0";
}
#endif

/* ---- options ----------------------------------------------------------------------------- */
enum {
    OPT_HELP = 'h',
    OPT_OUTPUT = 'o',
    OPT_FOLLOW = 'f',
    OPT_QUIET = 'q',
    OPT_JSON = 256,
    OPT_OUT,
    OPT_INPUT,
    OPT_LIMIT,
    OPT_THREADS,
    OPT_LOG_EVERY,
    OPT_URL,
    OPT_TOKEN_FILE,
    OPT_CACERT,
    OPT_STATE,
    OPT_PRIORITY,
    OPT_VALIDATE_ONLY,
    OPT_FORCE,
    OPT_DELETE,
    OPT_STEP,
    OPT_AFTER,
    OPT_NAMES,
    OPT_MAX_POINTS,
    OPT_VERSION,
    OPT_STDIN,
    OPT_FORMAT,
    OPT_SOFTMAX,
    OPT_STRIP_PREFIX,
    OPT_NO_STRICT,
    OPT_PROCESSES,
    OPT_HOSTFILE,
    OPT_EVENTS,
    /* generate (issue 12): --prompt .. --seed are kcli_options.generate_values[0..4] */
    OPT_GENERATE_FIRST,
    OPT_GREEDY = OPT_GENERATE_FIRST + 5,
    OPT_NO_CACHE,
    OPT_FILE_FIRST, /* the upload files: OPT_FILE_FIRST + KCLI_TRAIN_INPUTS, ... */
};

typedef struct option_spec {
    const char *name;
    int has_arg;
    int id;
    const char *value; /* the argument's name in the help, NULL for flags */
    const char *help;
} option_spec;

static const option_spec OPTIONS[] = {
    {"json", no_argument, OPT_JSON, NULL, "machine-readable output: JSON on stdout"},
    {"quiet", no_argument, OPT_QUIET, NULL, "no progress output"},
    {"out", required_argument, OPT_OUT, "DIR",
     "write checkpoints, the final weights (DIR/model.safetensors) and checkpoint"},
    {"input", required_argument, OPT_INPUT, "FILE", "inputs in the job's data format"},
    {"limit", required_argument, OPT_LIMIT, "N", "at most N items"},
    {"threads", required_argument, OPT_THREADS, "N",
     "CPU threads (default: $KILN_NUM_THREADS, else every core)"},
    {"log-every", required_argument, OPT_LOG_EVERY, "N",
     "a progress line every N steps when not on a terminal (default 100)"},
    {"processes", required_argument, OPT_PROCESSES, "N",
     "N processes through mpirun, data-parallel (one GPU each on cuda)"},
    {"hostfile", required_argument, OPT_HOSTFILE, "F",
     "with --processes: the machines, Open MPI's format (default: this one)"},
    {"events", no_argument, OPT_EVENTS, NULL, "--json plus one object per step and checkpoint"},
    {"url", required_argument, OPT_URL, "URL",
     "kilnd's address (default $KILN_URL, else http://127.0.0.1:8080; https works)"},
    {"token-file", required_argument, OPT_TOKEN_FILE, "FILE",
     "the bearer token (default: $KILN_TOKEN)"},
    {"cacert", required_argument, OPT_CACERT, "FILE",
     "PEM certificates to trust for https (default: $KILN_CACERT, else the system's)"},
    {"follow", no_argument, OPT_FOLLOW, NULL, "keep showing what happens until the job ends"},
    {"state", required_argument, OPT_STATE, "S",
     "queued, running, paused, succeeded, failed or canceled"},
    {"priority", required_argument, OPT_PRIORITY, "N", "higher runs first (default 0)"},
    {"validate-only", no_argument, OPT_VALIDATE_ONLY, NULL,
     "check it as the server would, change nothing"},
    {"force", no_argument, OPT_FORCE, NULL, "delete what depends on it too"},
    {"delete", no_argument, OPT_DELETE, NULL, "delete the alias"},
    {"step", required_argument, OPT_STEP, "N", "the checkpoint at step N, not the final weights"},
    {"after", required_argument, OPT_AFTER, "N", "only lines after line N"},
    {"names", required_argument, OPT_NAMES, "A,B", "only these series (default: all)"},
    {"max-points", required_argument, OPT_MAX_POINTS, "N", "downsample each series to N points"},
    {"version", required_argument, OPT_VERSION, "V",
     "a version or alias (default: the model's default version)"},
    {"stdin", no_argument, OPT_STDIN, NULL, "read the inputs from standard input"},
    {"format", required_argument, OPT_FORMAT, "F",
     "the inputs' format: json, csv, npy or idx (default: from the file)"},
    {"softmax", no_argument, OPT_SOFTMAX, NULL, "probabilities instead of raw outputs"},
    {"strip-prefix", required_argument, OPT_STRIP_PREFIX, "P",
     "take P off every name (\"net.\" for a PyTorch wrapper module)"},
    {"no-strict", no_argument, OPT_NO_STRICT, NULL,
     "load what matches; list missing and unexpected names"},
    {"train-inputs", required_argument, OPT_FILE_FIRST + KCLI_TRAIN_INPUTS, "FILE",
     "training inputs: IDX (plain or gzip) or NPY [N, ...]"},
    {"train-images", required_argument, OPT_FILE_FIRST + KCLI_TRAIN_INPUTS, "FILE",
     "the same as --train-inputs"},
    {"train-labels", required_argument, OPT_FILE_FIRST + KCLI_TRAIN_LABELS, "FILE",
     "training labels or targets: IDX or NPY [N] (or [N, K])"},
    {"train-targets", required_argument, OPT_FILE_FIRST + KCLI_TRAIN_LABELS, "FILE",
     "the same as --train-labels"},
    {"test-inputs", required_argument, OPT_FILE_FIRST + KCLI_TEST_INPUTS, "FILE", "test inputs"},
    {"test-images", required_argument, OPT_FILE_FIRST + KCLI_TEST_INPUTS, "FILE",
     "the same as --test-inputs"},
    {"test-labels", required_argument, OPT_FILE_FIRST + KCLI_TEST_LABELS, "FILE",
     "test labels or targets"},
    {"test-targets", required_argument, OPT_FILE_FIRST + KCLI_TEST_LABELS, "FILE",
     "the same as --test-labels"},
    {"train-csv", required_argument, OPT_FILE_FIRST + KCLI_TRAIN_CSV, "FILE",
     "training table: CSV with a header (a label column, or target columns)"},
    {"test-csv", required_argument, OPT_FILE_FIRST + KCLI_TEST_CSV, "FILE", "test table"},
    {"train-text", required_argument, OPT_FILE_FIRST + KCLI_TRAIN_TEXT, "FILE",
     "a language model's text: UTF-8 or any bytes, plain or gzip"},
    {"prompt", required_argument, OPT_GENERATE_FIRST, "TEXT", "the text to continue"},
    {"max-new-tokens", required_argument, OPT_GENERATE_FIRST + 1, "N",
     "tokens to generate (default 200)"},
    {"temperature", required_argument, OPT_GENERATE_FIRST + 2, "T",
     "divides the logits before sampling (default 1)"},
    {"top-k", required_argument, OPT_GENERATE_FIRST + 3, "K", "sample among the K most likely"},
    {"seed", required_argument, OPT_GENERATE_FIRST + 4, "S",
     "the sampling seed (default: drawn, and printed)"},
    {"greedy", no_argument, OPT_GREEDY, NULL, "the most likely token each time (no sampling)"},
    {"no-cache", no_argument, OPT_NO_CACHE, NULL,
     "recompute the context for each token (no key/value cache; the same tokens)"},
    {"output", required_argument, OPT_OUTPUT, "FILE", "where to write it"},
    {"help", no_argument, OPT_HELP, NULL, "this help"},
};
#define N_OPTIONS ((int)(sizeof OPTIONS / sizeof OPTIONS[0]))

static const char CLIENT_OPTIONS[] = "url token-file cacert json";
static const char UPLOAD_FILES[] = "train-inputs train-images train-labels train-targets "
                                   "test-inputs test-images test-labels test-targets train-csv "
                                   "test-csv train-text";

/* ---- commands ---------------------------------------------------------------------------- */
static int run_train(kcli_args *a);
static int run_eval(kcli_args *a);
static int run_predict(kcli_args *a);
static int run_validate(kcli_args *a);
static int run_generate(kcli_args *a);

typedef struct command {
    const char *name;
    const char *arguments; /* as in the usage line */
    int min_args, max_args;
    bool client;         /* takes --url and --token-file */
    const char *options; /* space-separated long names (besides help) */
    int (*run)(kcli_args *a);
    const char *summary;
    const char *details; /* more lines for its --help, or NULL */
} command;

static const command COMMANDS[] = {
    {"train", "JOB.json", 1, 1, false, "json quiet out threads log-every processes hostfile events",
     run_train, "train a model as the job says",
     "--processes N runs N processes through mpirun, data-parallel: MPI between CPU\n"
     "processes, NCCL between GPUs with \"distributed\": {\"devices\": \"cuda\"}. --hostfile F\n"
     "names the machines (HOST slots=N lines); default this machine, a slot per core."},
    {"eval", "CHECKPOINT JOB.json", 2, 2, false, "json threads", run_eval,
     "loss and the task's metrics of weights on the job's test data", NULL},
    {"predict", "CHECKPOINT JOB.json", 2, 2, false, "json input limit threads", run_predict,
     "classes and probabilities, labels, or values for each raw input",
     "Inputs: --input FILE in the job's data format (labels optional: a CSV without its\n"
     "label column, an NPY of inputs alone), else the job's test inputs. They are raw, like\n"
     "the training data: the preprocessing stored in CHECKPOINT is applied to them."},
    {"validate", "MODEL_OR_JOB.json", 1, 1, false, "json", run_validate,
     "check a spec; parameter count and training memory estimate", NULL},
    {"generate", "CHECKPOINT JOB.json", 2, 2, false,
     "json threads prompt max-new-tokens temperature top-k seed greedy no-cache", run_generate,
     "text from a text model's weights, as POST /v1/models/NAME/generate",
     "CHECKPOINT is the final weights of a text job run by kilnd (kiln weights ID -o\n"
     "FILE): its metadata holds the tokenizer. The text is printed as it is made; --json\n"
     "prints the server's answer instead."},
    {"submit", "JOB.json", 1, 1, true, "follow priority validate-only", kcli_cmd_submit,
     "POST a job (model inline or by name, data by dataset name)",
     "With --follow, a progress bar until the job ends: exit 0 succeeded, 1 failed or "
     "canceled."},
    {"jobs", "", 0, 0, true, "state limit", kcli_cmd_jobs, "list jobs, newest first", NULL},
    {"job", "ID", 1, 1, true, "", kcli_cmd_job, "one job: state, progress, metrics, error", NULL},
    {"cancel", "ID", 1, 1, true, "", kcli_cmd_cancel, "cancel a job", NULL},
    {"pause", "ID", 1, 1, true, "", kcli_cmd_cancel, "pause a job (it checkpoints)", NULL},
    {"resume", "ID", 1, 1, true, "", kcli_cmd_cancel, "resume a paused job", NULL},
    {"logs", "ID", 1, 1, true, "follow after", kcli_cmd_logs,
     "a job's log: start, device, evaluations, checkpoints, warnings, the end",
     "With --follow, new lines as they are written, until the job ends."},
    {"metrics", "ID", 1, 1, true, "names max-points", kcli_cmd_metrics,
     "a job's metric series as \"name step value\" lines", NULL},
    {"weights", "ID", 1, 1, true, "output step", kcli_cmd_weights,
     "download a job's final weights (or a checkpoint) as safetensors",
     "-o FILE is required. An interrupted download continues where it stopped when run "
     "again (FILE.part holds what came)."},
    {"models", "[NAME]", 0, 1, true, "", kcli_cmd_models,
     "list models, or show one with its versions and aliases", NULL},
    {"create-model", "MODEL.json", 1, 1, true, "validate-only", kcli_cmd_create_model,
     "store a model spec under its name", NULL},
    {"delete-model", "NAME", 1, 1, true, "force", kcli_cmd_delete_model,
     "delete a model (--force: with its jobs, versions and aliases)", NULL},
    {"versions", "MODEL", 1, 1, true, "", kcli_cmd_versions,
     "a model's versions: succeeded jobs and uploaded weights", NULL},
    {"delete-version", "MODEL VERSION", 2, 2, true, "force", kcli_cmd_delete_version,
     "delete an uploaded version (--force: and the aliases naming it)", NULL},
    {"alias", "MODEL [ALIAS [VERSION]]", 1, 3, true, "delete", kcli_cmd_alias,
     "list, show, set or delete a model's aliases",
     "kiln alias MODEL lists; kiln alias MODEL ALIAS shows; kiln alias MODEL ALIAS VERSION\n"
     "points ALIAS at VERSION (a version, a job id or another alias); --delete removes it.\n"
     "The alias \"default\" is what /v2/models/MODEL/infer serves."},
    {"upload-weights", "MODEL VERSION FILE", 3, 3, true, "strip-prefix no-strict",
     kcli_cmd_upload_weights, "upload safetensors weights as a version of a model",
     "The names must match the model's state_dict (PyTorch's); --strip-prefix maps names\n"
     "saved from a wrapper module."},
    {"infer", "MODEL [FILE]", 1, 2, true, "version stdin format softmax", kcli_cmd_infer,
     "run inputs through a served model",
     "FILE (or --stdin) holds one input per row: JSON (a list of rows, or a whole v2\n"
     "request), CSV (a header is skipped; a \"label\" column is left out), NPY or IDX.\n"
     "Prints one line per input: its index, the argmax, then the outputs."},
    {"upload", "NAME", 1, 1, true, UPLOAD_FILES, kcli_cmd_upload,
     "create dataset NAME (if needed) and stream its files",
     "Inputs and labels: IDX (plain or gzip) or NPY, e.g. --train-inputs x.npy\n"
     "--train-labels y.npy [--test-inputs ... --test-labels ...]; or tables: --train-csv F\n"
     "[--test-csv F]; or a language model's text: --train-text F. Formats are recognised\n"
     "from the files."},
    {"datasets", "[NAME]", 0, 1, true, "", kcli_cmd_datasets,
     "list datasets, or show one with its files", NULL},
    {"delete-dataset", "NAME", 1, 1, true, "", kcli_cmd_delete_dataset, "delete a dataset", NULL},
    {"health", "", 0, 0, true, "", kcli_cmd_health, "is kilnd ready? its state, devices and queue",
     "GET /v2/health/ready, which needs no token (the details need it): exit 0 ready, 1\n"
     "stopping or unreachable, never 2 (a container's HEALTHCHECK runs it)."},
};
#define N_COMMANDS ((int)(sizeof COMMANDS / sizeof COMMANDS[0]))

static const command *find_command(const char *name)
{
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(COMMANDS[i].name, name)) return &COMMANDS[i];
    return NULL;
}

/* Whether the space-separated list names option. */
static bool listed(const char *list, const char *option)
{
    size_t n = strlen(option);
    for (const char *p = list; (p = strstr(p, option)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return true;
    return false;
}

static bool takes(const command *c, const char *option)
{
    return !strcmp(option, "help") || listed(c->options, option) ||
           (c->client && listed(CLIENT_OPTIONS, option));
}

static void print_usage_line(FILE *out, const command *c)
{
    fprintf(out, "usage: kiln %s%s%s [options]\n", c->name, c->arguments[0] ? " " : "",
            c->arguments);
}

static void print_command_help(const command *c)
{
    print_usage_line(stdout, c);
    printf("\n%s.\n", c->summary);
    if (c->details) printf("%s\n", c->details);
    printf("\noptions:\n");
    for (int i = 0; i < N_OPTIONS; i++) {
        const option_spec *o = &OPTIONS[i];
        if (!takes(c, o->name)) continue;
        char left[64];
        char shorthand[8] = "    ";
        if (o->id < 256) snprintf(shorthand, sizeof shorthand, "-%c, ", o->id);
        snprintf(left, sizeof left, "%s--%s%s%s", shorthand, o->name, o->value ? " " : "",
                 o->value ? o->value : "");
        printf("  %-30s %s\n", left, o->help);
    }
}

static void print_help(void)
{
    printf("usage: kiln <command> [options]   (kiln <command> --help for its options)\n");
    const char *groups[2] = {"commands that run here:", "commands for a running kilnd:"};
    for (int g = 0; g < 2; g++) {
        printf("\n%s\n", groups[g]);
        for (int i = 0; i < N_COMMANDS; i++) {
            const command *c = &COMMANDS[i];
            if (c->client != (g == 1)) continue;
            char left[64];
            snprintf(left, sizeof left, "%s %s", c->name, c->arguments);
            printf("  %-34s %s\n", left, c->summary);
        }
    }
    printf("\nclient commands take --url URL (default $KILN_URL, else http://127.0.0.1:8080;\n"
           "https and proxies from http_proxy/https_proxy work), --token-file FILE (default\n"
           "$KILN_TOKEN), --cacert FILE (a private CA) and --json.\n"
           "A CHECKPOINT is a checkpoint or weights file (safetensors) written by kiln train\n"
           "--out or downloaded with kiln weights, or a PyTorch state_dict saved with\n"
           "safetensors.torch.save_file.\n"
           "Exit codes: 0 success, 1 runtime error, 2 invalid arguments or spec.\n");
}

/* ---- parsing ------------------------------------------------------------------------------ */
static bool parse_integer(const char *text, long long min, long long *out)
{
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (!text[0] || *end || v < min) return false;
    *out = v;
    return true;
}

static bool read_token(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return false;
    }
    size_t n = fread(out, 1, size - 1, f);
    fclose(f);
    out[n] = '\0';
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ')) out[--n] = 0;
    return true;
}

/* One option into a; returns 0, or an exit code after printing why. */
static int take_option(kcli_args *a, const option_spec *o, const char *value)
{
    long long v = 0;
    bool integer_ok = true;
    switch (o->id) {
    case OPT_JSON:
        a->local.json = true;
        break;
    case OPT_QUIET:
        a->local.quiet = true;
        break;
    case OPT_OUT:
        a->local.out_dir = value;
        break;
    case OPT_INPUT:
        a->local.input = value;
        break;
    case OPT_LIMIT:
        if ((integer_ok = parse_integer(value, 0, &v))) a->local.limit = v;
        break;
    case OPT_THREADS:
        if ((integer_ok = parse_integer(value, 0, &v) && v < 100000)) a->local.threads = (int)v;
        break;
    case OPT_LOG_EVERY:
        if ((integer_ok = parse_integer(value, 0, &v))) a->local.log_every = v;
        break;
    case OPT_PROCESSES:
        if (!parse_integer(value, 1, &v) || v > KAPI_MAX_PROCESSES)
            return kcli_usage_error(a, "--processes: expected an integer from 1 to %d, got \"%s\"",
                                    KAPI_MAX_PROCESSES, value);
        a->local.processes = (int)v;
        break;
    case OPT_HOSTFILE:
        a->local.hostfile = value;
        break;
    case OPT_EVENTS:
        a->local.json = a->local.events = true;
        break;
    case OPT_URL:
        a->url = value;
        break;
    case OPT_CACERT:
        a->ca_file = value;
        break;
    case OPT_TOKEN_FILE:
        if (!read_token(value, a->token, sizeof a->token)) return KCLI_EXIT_RUNTIME;
        break;
    case OPT_FOLLOW:
        a->follow = true;
        break;
    case OPT_STATE:
        a->state = value;
        break;
    case OPT_PRIORITY:
        integer_ok = parse_integer(value, -1000000, &a->priority);
        break;
    case OPT_VALIDATE_ONLY:
        a->validate_only = true;
        break;
    case OPT_FORCE:
        a->force = true;
        break;
    case OPT_DELETE:
        a->remove = true;
        break;
    case OPT_STEP:
        integer_ok = parse_integer(value, 0, &a->step);
        break;
    case OPT_AFTER:
        integer_ok = parse_integer(value, 0, &a->after);
        break;
    case OPT_NAMES:
        a->names = value;
        break;
    case OPT_MAX_POINTS:
        integer_ok = parse_integer(value, 1, &a->max_points);
        break;
    case OPT_VERSION:
        a->version = value;
        break;
    case OPT_STDIN:
        a->read_stdin = true;
        break;
    case OPT_FORMAT:
        a->format = value;
        break;
    case OPT_SOFTMAX:
        a->softmax = true;
        break;
    case OPT_STRIP_PREFIX:
        a->strip_prefix = value;
        break;
    case OPT_NO_STRICT:
        a->lenient = true;
        break;
    case OPT_OUTPUT:
        a->output = value;
        break;
    case OPT_GREEDY:
        a->local.greedy = true;
        break;
    case OPT_NO_CACHE:
        a->local.no_cache = true;
        break;
    default:
        if (o->id >= OPT_GENERATE_FIRST && o->id < OPT_GREEDY) {
            a->local.generate_values[o->id - OPT_GENERATE_FIRST] = value;
            break;
        }
        if (o->id >= OPT_FILE_FIRST && o->id < OPT_FILE_FIRST + KCLI_UPLOAD_FILES) {
            a->files[o->id - OPT_FILE_FIRST] = value;
            break;
        }
        return kcli_usage_error(a, "option --%s is not handled", o->name);
    }
    if (!integer_ok && o->id == OPT_PROCESSES)
        return kcli_usage_error(a, "--processes: expected an integer from 1 to %d, got \"%s\"",
                                KAPI_MAX_PROCESSES, value);
    if (!integer_ok)
        return kcli_usage_error(a, "--%s: expected an integer%s, got \"%s\"", o->name,
                                o->id == OPT_PRIORITY ? "" : " >= 0", value);
    return 0;
}

/* getopt_long's value for the long option specs[i]: above any short option's character */
#define LONG_BASE 1000

/* Parses argv (argv[0] the command) with getopt_long; 0, or an exit code (-1: help shown). */
static int parse(const command *c, int argc, char **argv, kcli_args *a)
{
    struct option longs[N_OPTIONS + 1];
    const option_spec *specs[N_OPTIONS];
    int n = 0;
    char shorts[32] = ":"; /* leading ':' : a missing value is reported as ':' */
    for (int i = 0; i < N_OPTIONS; i++) {
        if (!takes(c, OPTIONS[i].name)) continue;
        specs[n] = &OPTIONS[i];
        longs[n] = (struct option){OPTIONS[i].name, OPTIONS[i].has_arg, NULL, LONG_BASE + n};
        if (OPTIONS[i].id < 256 && !strchr(shorts, OPTIONS[i].id)) {
            size_t k = strlen(shorts);
            shorts[k] = (char)OPTIONS[i].id;
            if (OPTIONS[i].has_arg) shorts[++k] = ':';
            shorts[k + 1] = '\0';
        }
        n++;
    }
    longs[n] = (struct option){0, 0, 0, 0};
    optind = 1;
    opterr = 0;
    for (;;) {
        int index = -1;
        int got = getopt_long(argc, argv, shorts, longs, &index);
        if (got == -1) break;
        const option_spec *o = NULL;
        if (got >= LONG_BASE && got < LONG_BASE + n) {
            o = specs[got - LONG_BASE];
        } else if (got != '?' && got != ':') {
            for (int i = 0; i < n && !o; i++)
                if (specs[i]->id == got) o = specs[i];
        }
        if (got == ':') return kcli_usage_error(a, "%s needs a value", argv[optind - 1]);
        if (!o) {
            if (optopt > 0 && optopt < 256)
                return kcli_usage_error(a, "unknown option -%c", optopt);
            return kcli_usage_error(a, "unknown option %s", argv[optind - 1]);
        }
        if (o->id == OPT_HELP) {
            print_command_help(c);
            return -1;
        }
        int rc = take_option(a, o, optarg);
        if (rc) return rc;
    }
    for (int i = optind; i < argc; i++) {
        if (c->max_args == 0)
            return kcli_usage_error(a, "unexpected argument %s: %s takes no argument", argv[i],
                                    c->name);
        if (a->n_positional == 4 || a->n_positional >= c->max_args)
            return kcli_usage_error(a, "unexpected argument %s", argv[i]);
        a->positional[a->n_positional++] = argv[i];
    }
    if (a->n_positional < c->min_args) return kcli_usage_error(a, "expected %s", c->arguments);
    return 0;
}

/* ---- local commands ------------------------------------------------------------------------ */
static void set_threads(const kcli_args *a)
{
    int threads = a->local.threads;
    if (threads == 0 && getenv("KILN_NUM_THREADS")) threads = atoi(getenv("KILN_NUM_THREADS"));
    if (threads > 0) kn_set_num_threads(threads);
}

static int run_train(kcli_args *a)
{
    if (a->local.hostfile && !a->local.processes)
        return kcli_usage_error(a, "--hostfile needs --processes N");
    if (a->local.processes && kn_dist_launched())
        return kcli_usage_error(a, "--processes: this process is already a rank of an mpirun job");
    /* the launcher only waits: its ranks take the threads (dist.c) */
    if (a->local.processes) return kcli_train_launch(a->positional[0], &a->local);
    set_threads(a);
    return kcli_train(a->positional[0], &a->local);
}

static int run_eval(kcli_args *a)
{
    set_threads(a);
    return kcli_eval(a->positional[0], a->positional[1], &a->local);
}

static int run_predict(kcli_args *a)
{
    set_threads(a);
    return kcli_predict(a->positional[0], a->positional[1], &a->local);
}

static int run_validate(kcli_args *a)
{
    return kcli_validate(a->positional[0], &a->local);
}

static int run_generate(kcli_args *a)
{
    set_threads(a);
    return kcli_generate(a->positional[0], a->positional[1], &a->local);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_help();
        return KCLI_EXIT_SPEC;
    }
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help")) {
        print_help();
        return 0;
    }
    if (!strcmp(name, "--version")) {
        printf("kiln %s\n", KN_VERSION);
        return 0;
    }
    if (!strcmp(name, "help")) {
        const command *c = argc > 2 ? find_command(argv[2]) : NULL;
        if (c)
            print_command_help(c);
        else
            print_help();
        return argc > 2 && !c ? KCLI_EXIT_SPEC : 0;
    }
    const command *c = find_command(name);
    if (!c) {
        fprintf(stderr, "kiln: unknown command \"%s\"\nrun `kiln --help` for the commands\n", name);
        return KCLI_EXIT_SPEC;
    }
    kcli_args a = {.command = c->name, .local = {.log_every = 100}};
    int rc = parse(c, argc - 1, argv + 1, &a);
    if (rc) return rc < 0 ? 0 : rc;
    if (c->client) {
        const char *env = getenv("KILN_URL");
        if (!a.url) a.url = env && env[0] ? env : "http://127.0.0.1:8080";
        if (!a.ca_file && getenv("KILN_CACERT") && getenv("KILN_CACERT")[0])
            a.ca_file = getenv("KILN_CACERT");
        if (!a.token[0] && getenv("KILN_TOKEN"))
            snprintf(a.token, sizeof a.token, "%s", getenv("KILN_TOKEN"));
    }
    return c->run(&a);
}
