/*
 * kiln_gpt.c — the Kiln side of bench/gpt: the character GPT of examples/chargpt.json,
 * trained with the example's recipe (nanoGPT's CPU shakespeare_char one) on the token
 * files bench/gpt/prepare.py wrote, exactly as bench/gpt/torch_gpt.py trains it in
 * PyTorch, for bench/gpt/run.sh to compare. Built as a bench target; never run by ctest.
 *
 * The model and recipe come from the example through the api layer (kapi_job_spec_parse,
 * kapi_model_build); only the vocabulary (wte's rows, lm_head's outputs) is set to the
 * corpus's, and the schedule's length to --iters, as torch_gpt.py does:
 *   model      wte + wpe, 4 causal pre-norm transformer_encoder_layer, ln_f, lm_head
 *              (no bias), initialised from a generator seeded with --seed: the values
 *              torch.manual_seed(seed) gives torch_gpt.py's CharGPT
 *   batches    12 windows of 64 tokens at starts next_u32 % (len(train) - 64) from a
 *              second generator seeded with --seed: torch.randint(len - 64, (12,),
 *              generator=torch.Generator().manual_seed(seed)) draws the same starts
 *              (torch 1.13's random_from_to takes one 32-bit mt19937 output modulo the
 *              range below 2^32, and Kiln's generator is torch's mt19937)
 *   step       forward [12, 64] -> logits [12, 64, V], cross-entropy over the 768
 *              positions, backward, clip_grad_norm_ to the example's grad_clip_norm,
 *              AdamW (decay on matrices only) at kn_lr_at(schedule, lr, it): 100 linear
 *              warmup steps from lr/101, then cosine to eta_min at the last iteration,
 *              which is nanoGPT's get_lr with lr_decay_iters = iters
 *   val loss   the mean cross-entropy over 240 windows of the val split at evenly
 *              spaced starts (torch_gpt.py's eval_starts), in eval mode
 *   generate   500 greedy tokens after the val split's first 32 tokens by kn_generate,
 *              window 64 (a context that would pass 64 tokens keeps its newest 32):
 *              with the key/value cache (one position a token, a refill after a drop)
 *              and without (each token recomputes its context); both must give the
 *              same tokens (generate_same_tokens), as torch_gpt.py's two paths do
 * Training time counts the steps only (drawing the batch, forward, loss, backward,
 * clipping, the optimizer step), as torch_gpt.py's does.
 *
 * Prints one JSON line with torch_gpt.py's fields ("impl": "kiln") and peak_rss_mb.
 *
 * usage: kiln_gpt DATA [--example FILE] [--iters N] [--threads N] [--seed N]
 */
#include "kapi.h"
#include "kn.h"
#include "kn_data.h"
#include "kn_nn.h"
#include "kn_optim.h"

#include <cJSON.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

enum { EVAL_WINDOWS = 240, GENERATE = 500, HEAD = 64, MAX_LOSSES = 1024 };

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kiln_gpt: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The bytes of a file (gzip inflated), NUL-terminated; exits naming the file. */
static char *read_all(const char *path, size_t *size)
{
    kapi_errors errors = {0};
    char *bytes = kapi_read_file(path, size, &errors);
    if (!bytes) die("%s", errors.count ? errors.items[0].message : path);
    kapi_errors_free(&errors);
    return bytes;
}

/* DATA/NAME.npy as a 1-D int64 tensor of token ids (the open scope's). */
static kn_tensor *read_tokens(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    size_t size;
    char *bytes = read_all(path, &size);
    kn_tensor *t = kn_parse_npy(bytes, size, true);
    free(bytes);
    if (!t) die("%s: %s", path, kn_last_error());
    return t;
}

static int64_t vocab_of(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    size_t size;
    char *text = read_all(path, &size);
    cJSON *meta = cJSON_ParseWithLength(text, size);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, "vocab_size");
    if (!cJSON_IsNumber(v) || v->valuedouble < 1)
        die("%s: no positive vocab_size (run bench/gpt/prepare.py)", path);
    int64_t vocab = (int64_t)v->valuedouble;
    cJSON_Delete(meta);
    free(text);
    return vocab;
}

/* Sets number field key of the example's model node `node` (exits when it is missing). */
static void set_node_number(cJSON *root, const char *example, const char *node, const char *key,
                            double value)
{
    const cJSON *nodes =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "nodes");
    const cJSON *n;
    cJSON_ArrayForEach(n, nodes)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(n, "name");
        if (cJSON_IsString(name) && !strcmp(name->valuestring, node) &&
            cJSON_GetObjectItemCaseSensitive(n, key)) {
            cJSON_ReplaceItemInObjectCaseSensitive((cJSON *)n, key, cJSON_CreateNumber(value));
            return;
        }
    }
    die("%s: no model node \"%s\" with \"%s\" (the bench sets it to the corpus's vocabulary)",
        example, node, key);
}

/* The example job with its vocabulary set to the corpus's. The caller frees it. */
static kapi_job_spec *load_example(const char *path, int64_t vocab)
{
    size_t size;
    char *text = read_all(path, &size);
    cJSON *root = cJSON_ParseWithLength(text, size);
    if (!root) die("%s: not JSON", path);
    set_node_number(root, path, "wte", "num_embeddings", (double)vocab);
    set_node_number(root, path, "lm_head", "out_features", (double)vocab);
    char *json = cJSON_PrintUnformatted(root);
    kapi_errors errors = {0};
    kapi_job_spec *job = kapi_job_spec_parse(
        json, strlen(json), (kapi_job_parse_options){.allow_paths = true}, &errors);
    if (!job) {
        char *all = kapi_errors_to_text(&errors);
        die("%s:\n%s", path, all);
    }
    if (!job->model || !job->model->graph || job->model->input_ndim != 1)
        die("%s: expected an inline graph model of one input [block] of token ids", path);
    kapi_errors_free(&errors);
    free(json);
    cJSON_Delete(root);
    free(text);
    return job;
}

/* x, y [n, block] int64 (the open scope's): the windows of tokens at starts[0..n) and
 * the tokens one position later (the targets). */
static void gather(const int64_t *tokens, const int64_t *starts, int64_t n, int64_t block,
                   kn_tensor **x, kn_tensor **y)
{
    *x = kn_empty(KN_SHAPE(n, block), KN_INT64);
    *y = kn_empty(KN_SHAPE(n, block), KN_INT64);
    int64_t *xd = kn_data_i64(*x), *yd = kn_data_i64(*y);
    for (int64_t i = 0; i < n; i++) {
        memcpy(xd + i * block, tokens + starts[i], sizeof *xd * (size_t)block);
        memcpy(yd + i * block, tokens + starts[i] + 1, sizeof *yd * (size_t)block);
    }
}

/* Cross-entropy of logits [n, T, V] against targets [n, T], over all n*T positions. */
static kn_tensor *lm_loss(kn_tensor *logits, kn_tensor *targets, kn_reduction reduction)
{
    int64_t v = logits->shape[2];
    return kn_cross_entropy(kn_reshape(logits, KN_SHAPE(-1, v)), kn_reshape(targets, KN_SHAPE(-1)),
                            reduction, KN_DEFAULT_IGNORE_INDEX, 0.0);
}

/* torch_gpt.py's val_loss: mean cross-entropy over EVAL_WINDOWS evenly spaced windows. */
static double val_loss(kn_module *m, kn_tensor *val, int64_t block, int64_t batch)
{
    int64_t last = val->shape[0] - block - 1, starts[EVAL_WINDOWS];
    for (int64_t i = 0; i < EVAL_WINDOWS; i++) starts[i] = i * last / (EVAL_WINDOWS - 1);
    kn_module_train(m, false);
    kn_no_grad_begin();
    double total = 0;
    for (int64_t i = 0; i < EVAL_WINDOWS; i += batch) {
        kn_scope_begin();
        int64_t n = EVAL_WINDOWS - i < batch ? EVAL_WINDOWS - i : batch;
        kn_tensor *x, *y;
        gather(kn_data_i64(val), starts + i, n, block, &x, &y);
        kn_tensor *loss = lm_loss(kn_module_forward(m, x), y, KN_REDUCTION_SUM);
        if (!loss) die("evaluation: %s", kn_last_error());
        total += kn_item(loss);
        kn_scope_end();
    }
    kn_no_grad_end();
    kn_module_train(m, true);
    return total / (double)(EVAL_WINDOWS * block);
}

/* count greedy tokens after the n_prompt tokens of prompt into out[0..count) with
 * kn_generate, Kiln's own generation (window block: a context that would pass it keeps
 * its newest block/2 tokens), with the key/value cache or recomputing each token's
 * context; returns the seconds taken. */
static double generate(kn_module *m, const int64_t *prompt, int64_t n_prompt, int64_t block,
                       bool cached, int64_t *out, int count)
{
    kn_generate_options o = {.max_new_tokens = count, .block_size = block, .no_cache = !cached};
    int64_t made = 0;
    kn_module_train(m, false);
    double start = now_seconds();
    kn_status st = kn_generate(m, prompt, n_prompt, &o, NULL, out, &made);
    double seconds = now_seconds() - start;
    kn_module_train(m, true);
    if (st != KN_OK || made != count)
        die("generation (%s the cache): %s", cached ? "with" : "without", kn_last_error());
    return seconds;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

static long parse_long(const char *opt, const char *s, long min)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || v < min) die("%s expects an integer >= %ld, got '%s'", opt, min, s);
    return v;
}

int main(int argc, char **argv)
{
    const char *example = "examples/chargpt.json";
    long iters = 2000, threads = 2, seed = 0;
    static const struct option options[] = {{"example", required_argument, NULL, 'e'},
                                            {"iters", required_argument, NULL, 'i'},
                                            {"threads", required_argument, NULL, 't'},
                                            {"seed", required_argument, NULL, 's'},
                                            {NULL, 0, NULL, 0}};
    for (int c; (c = getopt_long(argc, argv, "", options, NULL)) != -1;) {
        if (c == 'e')
            example = optarg;
        else if (c == 'i')
            iters = parse_long("--iters", optarg, 1);
        else if (c == 't')
            threads = parse_long("--threads", optarg, 1);
        else if (c == 's')
            seed = parse_long("--seed", optarg, 0);
        else
            die("usage: kiln_gpt DATA [--example FILE] [--iters N] [--threads N] [--seed N]");
    }
    if (optind != argc - 1)
        die("usage: kiln_gpt DATA [--example FILE] [--iters N] [--threads N] [--seed N]");
    const char *data = argv[optind];
    kn_set_num_threads((int)threads);
    kn_scope_begin();

    int64_t vocab = vocab_of(data);
    kn_tensor *train = read_tokens(data, "train"), *val = read_tokens(data, "val");
    kapi_job_spec *job = load_example(example, vocab);
    const int64_t block = job->model->input_shape[0], batch = job->train.batch_size;
    if (train->shape[0] <= block || val->shape[0] <= block + 1)
        die("%s: a split is shorter than one window of %lld tokens", data, (long long)block + 1);

    /* the model, initialised as torch.manual_seed(seed) initialises CharGPT */
    kn_generator *init = kn_generator_new((uint64_t)seed);
    kn_module *m = kapi_model_build(job->model, init);
    if (!m) die("%s: %s", example, kn_last_error());
    kn_module_train(m, true);
    int n_params;
    kn_named_tensor *named = kn_module_parameters(m, &n_params);
    kn_tensor **params = malloc(sizeof *params * (size_t)n_params);
    for (int i = 0; i < n_params; i++) params[i] = named[i].tensor;
    free(named);
    kn_optimizer *opt = kn_optimizer_new(params, n_params, job->train.optimizer);
    if (!opt) die("%s: %s", example, kn_last_error());
    /* nanoGPT decays to eta_min at the last iteration (lr_decay_iters = max_iters) */
    kn_lr_schedule schedule = job->train.lr_schedule;
    if (schedule.kind == KN_LR_COSINE) {
        int64_t rest = iters - schedule.warmup_steps;
        schedule.t_max = rest > 1 ? rest : 1;
    }
    const double lr = job->train.optimizer.lr, clip = job->train.grad_clip_norm;

    kn_generator *draws = kn_generator_new((uint64_t)seed);
    const int64_t high = train->shape[0] - block, *tokens = kn_data_i64(train);
    int64_t *starts = malloc(sizeof *starts * (size_t)batch);
    double seconds = 0, first_loss = 0, last_loss = 0, losses[MAX_LOSSES][2];
    int n_losses = 0;
    for (long it = 0; it < iters; it++) {
        double t0 = now_seconds();
        kn_scope_begin();
        kn_optimizer_set_lr(opt, kn_lr_at(&schedule, lr, it));
        for (int64_t b = 0; b < batch; b++)
            starts[b] = (int64_t)(kn_generator_next_u32(draws) % (uint64_t)high);
        kn_tensor *x, *y;
        gather(tokens, starts, batch, block, &x, &y);
        kn_tensor *loss = lm_loss(kn_module_forward(m, x), y, KN_REDUCTION_MEAN); /* [12, 64, V] */
        if (!loss) die("step %ld: %s", it, kn_last_error());
        kn_optimizer_zero_grad(opt);
        if (kn_backward(loss, NULL, false) != KN_OK) die("step %ld: %s", it, kn_last_error());
        if (clip > 0 && kn_clip_grad_norm(params, n_params, clip, NULL) != KN_OK)
            die("step %ld: %s", it, kn_last_error());
        if (kn_optimizer_step(opt) != KN_OK) die("step %ld: %s", it, kn_last_error());
        double value = kn_item(loss);
        kn_scope_end();
        seconds += now_seconds() - t0;
        if (it == 0) first_loss = value;
        last_loss = value;
        if ((it % 100 == 0 || it == iters - 1) && n_losses < MAX_LOSSES) {
            losses[n_losses][0] = (double)it;
            losses[n_losses++][1] = value;
        }
    }
    double vloss = val_loss(m, val, block, batch);

    /* a prompt of half a window: one token (often a space of an indented line) makes a
     * greedy model repeat it, which would test little */
    const int64_t *prompt = kn_data_i64(val), n_prompt = block / 2;
    int64_t plain[GENERATE], cached[GENERATE];
    double t_plain = generate(m, prompt, n_prompt, block, false, plain, GENERATE);
    double t_cache = generate(m, prompt, n_prompt, block, true, cached, GENERATE);
    bool same = memcmp(plain, cached, sizeof plain) == 0;

    double tokens_done = (double)iters * (double)batch * (double)block;
    printf("{\"impl\": \"kiln\", \"iters\": %ld, \"batch\": %lld, \"block\": %lld, "
           "\"threads\": %ld, \"vocab_size\": %lld, \"tokens_per_second\": %.6g, "
           "\"train_seconds\": %.6g, \"first_loss\": %.9g, \"last_loss\": %.9g, "
           "\"val_loss\": %.9g, \"generate_tokens\": %d, "
           "\"generate_tokens_per_second_cache\": %.6g, "
           "\"generate_tokens_per_second_no_cache\": %.6g, \"generate_same_tokens\": %s, "
           "\"generated_head\": [",
           iters, (long long)batch, (long long)block, threads, (long long)vocab,
           seconds > 0 ? tokens_done / seconds : 0.0, seconds, first_loss, last_loss, vloss,
           GENERATE, GENERATE / t_cache, GENERATE / t_plain, same ? "true" : "false");
    for (int i = 0; i < HEAD; i++) printf("%s%lld", i ? ", " : "", (long long)cached[i]);
    printf("], \"losses\": [");
    for (int i = 0; i < n_losses; i++)
        printf("%s[%d, %.9g]", i ? ", " : "", (int)losses[i][0], losses[i][1]);
    printf("], \"peak_rss_mb\": %.1f}\n", peak_rss_mb());

    free(starts);
    free(params);
    kn_optimizer_free(opt);
    kn_generator_free(draws);
    kn_generator_free(init);
    kn_module_free(m);
    kapi_job_spec_free(job);
    kn_scope_end();
    return 0;
}
