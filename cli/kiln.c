/*
 * kiln.c — the `kiln` command line: argument parsing, --help, and `kiln validate`.
 * train, eval and predict are in commands.c; the job set-up in job.c; what is shown
 * while training in progress.c. Exit codes: 0 success, 1 runtime error, 2 usage or
 * spec error (printed as "path: message" lines).
 */
#include "kcli.h"
#include "kclient.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char USAGE[] =
    "usage: kiln <command> [options]\n"
    "\n"
    "commands:\n"
    "  train JOB.json [--json] [--out DIR]     train a model as the job says\n"
    "  eval CHECKPOINT JOB.json [--json]       loss and accuracy on the job's test data\n"
    "  predict CHECKPOINT JOB.json [--input FILE] [--limit N] [--json]\n"
    "                                          class probabilities and argmax for each\n"
    "                                          input (FILE in the job's data format;\n"
    "                                          default: the job's test inputs)\n"
    "  generate CHECKPOINT JOB.json --prompt TEXT [--max-new-tokens N] [--temperature T]\n"
    "           [--top-k K] [--seed S] [--greedy] [--no-cache] [--json]\n"
    "                                          text from a text model's weights (as POST\n"
    "                                          /v1/models/NAME/generate)\n"
    "  validate MODEL_OR_JOB.json [--json]     check a spec; print parameter count and\n"
    "                                          training memory estimate\n"
    "\n"
    "options:\n"
    "  --json          machine-readable output: one JSON object per line on stdout\n"
    "                  (train: one per evaluation and a final summary)\n"
    "  --out DIR       train: write checkpoints every checkpoint_every_steps, the final\n"
    "                  weights (DIR/model.safetensors) and checkpoint\n"
    "                  (DIR/checkpoint.safetensors)\n"
    "  --threads N     CPU threads (default: $KILN_NUM_THREADS, else every core)\n"
    "  --log-every N   progress line every N steps when not on a terminal (default 100)\n"
    "  --quiet         no progress output\n"
    "  -h, --help      this help;  --version  the version\n"
    "\n"
    "A CHECKPOINT is a checkpoint or weights file (safetensors) written by kiln train\n"
    "--out, or a PyTorch state_dict saved with safetensors.torch.save_file.\n"
    "Exit codes: 0 success, 1 runtime error, 2 invalid arguments or spec.\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "kiln: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nrun `kiln --help` for usage\n");
    return KCLI_EXIT_SPEC;
}

static bool parse_count(const char *text, int64_t *out)
{
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (!text[0] || *end || v < 0) return false;
    *out = v;
    return true;
}

static void print_layers(const kapi_model_spec *m)
{
    char shape[128];
    printf("  %-4s %-22s %-18s %s\n", "#", "layer", "output shape", "parameters");
    for (int i = 0; i < m->n_layers; i++) {
        const kapi_layer_spec *l = &m->layers[i];
        printf("  %-4d %-22s %-18s %lld\n", i, l->type,
               kn_shape_str(l->out_shape, l->out_ndim, shape, sizeof shape),
               (long long)l->parameter_count);
    }
}

static void print_memory(int64_t bytes)
{
    if (bytes >= (int64_t)1 << 30)
        printf("%.2f GiB", (double)bytes / (double)((int64_t)1 << 30));
    else if (bytes >= (int64_t)1 << 20)
        printf("%.1f MiB", (double)bytes / (double)((int64_t)1 << 20));
    else
        printf("%.1f KiB", (double)bytes / 1024.0);
}

int kcli_validate(const char *path, const kcli_options *options)
{
    kapi_errors errors = {0};
    size_t size = 0;
    char *text = kapi_read_file(path, &size, &errors);
    if (!text) {
        kcli_print_errors(&errors);
        kapi_errors_free(&errors);
        return KCLI_EXIT_RUNTIME;
    }
    /* a model spec has "layers" at the top; anything else is read as a job */
    cJSON *doc = cJSON_ParseWithLength(text, size);
    bool is_model = doc && cJSON_GetObjectItemCaseSensitive(doc, "layers") != NULL;
    cJSON_Delete(doc);
    kapi_model_spec *model = NULL;
    kapi_job_spec *job = NULL;
    if (is_model) {
        model = kapi_model_spec_parse(text, size, &errors);
    } else {
        kapi_job_parse_options parse = {.allow_paths = true};
        job = kapi_job_spec_parse(text, size, parse, &errors);
    }
    free(text);
    int rc = 0;
    if (!model && !job) {
        if (options->json) {
            char *body = kapi_errors_to_json(&errors, "invalid_spec");
            if (body) printf("%s\n", body);
            free(body);
        }
        kcli_print_errors(&errors);
        kapi_errors_free(&errors);
        return KCLI_EXIT_SPEC;
    }
    kapi_errors_free(&errors);
    const kapi_model_spec *m = model ? model : job->model;
    int64_t batch = job ? job->train.batch_size : 64;
    kn_optimizer_kind opt = job ? job->train.optimizer.kind : KN_OPTIM_ADAM;
    if (!m) {
        printf("valid job; its model \"%s\" is given by reference and was not checked here\n",
               job->model_name);
    } else if (options->json) {
        char *summary = kapi_model_spec_summary_json(m, batch);
        cJSON *o = summary ? cJSON_Parse(summary) : NULL;
        free(summary);
        if (o) {
            cJSON_AddStringToObject(o, "kind", job ? "job" : "model");
            char *out = cJSON_PrintUnformatted(o);
            if (out) printf("%s\n", out);
            free(out);
            cJSON_Delete(o);
        } else {
            rc = KCLI_EXIT_RUNTIME;
        }
    } else {
        char shape[128];
        printf("valid %s%s%s\n", job ? "job" : "model", m->name[0] ? ": " : "", m->name);
        printf("parameters: %lld\n", (long long)m->parameter_count);
        printf("output shape: %s\n",
               kn_shape_str(m->output_shape, m->output_ndim, shape, sizeof shape));
        printf("training memory estimate (batch %lld, %s): ", (long long)batch,
               kn_optimizer_kind_name(opt));
        print_memory(kapi_model_training_memory(m, batch, opt));
        printf("\n");
        print_layers(m);
    }
    kapi_model_spec_free(model);
    kapi_job_spec_free(job);
    return rc;
}

/* kiln generate's options (kcli_options.generate_values: the names of
 * KCLI_GENERATE_FLAGS). Advances *i past a value; false when a is not one of them. */
static bool generate_flag(const char *a, const char *value, kcli_options *options, int *i)
{
    if (!strcmp(a, "--greedy") || !strcmp(a, "--no-cache")) {
        *(!strcmp(a, "--greedy") ? &options->greedy : &options->no_cache) = true;
        return true;
    }
    for (int k = 0; k < 5; k++) {
        if (strcmp(a, KCLI_GENERATE_FLAGS[k]) != 0) continue;
        options->generate_values[k] = value ? value : "";
        if (value) (*i)++;
        return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    kcli_options options = {.log_every = 100};
    const char *positional[3] = {0};
    int n_positional = 0;
    if (argc > 1 && kcli_is_client_command(argv[1])) return kcli_client_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
            printf("%s\n%s", USAGE, KCLI_CLIENT_USAGE);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("kiln %s\n", KN_VERSION);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            options.json = true;
        } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            options.quiet = true;
        } else if (strcmp(a, "--out") == 0 || strcmp(a, "--input") == 0) {
            if (!has_value) return usage_error("%s needs a value", a);
            *(strcmp(a, "--out") == 0 ? &options.out_dir : &options.input) = argv[++i];
        } else if (strcmp(a, "--threads") == 0 || strcmp(a, "--log-every") == 0 ||
                   strcmp(a, "--limit") == 0) {
            int64_t v = 0;
            if (!has_value || !parse_count(argv[i + 1], &v))
                return usage_error("%s needs a non-negative integer", a);
            i++;
            if (strcmp(a, "--threads") == 0)
                options.threads = (int)v;
            else if (strcmp(a, "--log-every") == 0)
                options.log_every = v;
            else
                options.limit = v;
        } else if (generate_flag(a, has_value ? argv[i + 1] : NULL, &options, &i)) {
            continue;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option %s", a);
        } else if (n_positional < 3) {
            positional[n_positional++] = a;
        } else {
            return usage_error("unexpected argument %s", a);
        }
    }
    if (n_positional == 0) {
        fputs(USAGE, stderr);
        return KCLI_EXIT_SPEC;
    }
    if (options.threads == 0 && getenv("KILN_NUM_THREADS"))
        options.threads = atoi(getenv("KILN_NUM_THREADS"));
    if (options.threads > 0) kn_set_num_threads(options.threads);

    const char *command = positional[0];
    struct {
        const char *name;
        int args;
    } commands[] = {{"train", 1}, {"eval", 2}, {"predict", 2}, {"generate", 2}, {"validate", 1}};
    for (size_t c = 0; c < sizeof commands / sizeof *commands; c++) {
        if (strcmp(command, commands[c].name) != 0) continue;
        if (n_positional - 1 != commands[c].args)
            return usage_error(commands[c].args == 1 ? "%s takes one file"
                                                     : "%s takes CHECKPOINT JOB.json",
                               command);
        if (strcmp(command, "train") == 0) return kcli_train(positional[1], &options);
        if (strcmp(command, "eval") == 0) return kcli_eval(positional[1], positional[2], &options);
        if (strcmp(command, "predict") == 0)
            return kcli_predict(positional[1], positional[2], &options);
        if (strcmp(command, "generate") == 0)
            return kcli_generate(positional[1], positional[2], &options);
        return kcli_validate(positional[1], &options);
    }
    return usage_error("unknown command \"%s\"", command);
}
