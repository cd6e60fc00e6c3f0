/*
 * test_server_generate.c — issue 12's acceptance over HTTP, with the built kilnd
 * (tests/server_harness.h): a text uploaded as a dataset's train_text (gzip), a small GPT
 * (token and position embeddings, a causal pre-norm transformer layer, a head without
 * bias) trained on it for a few hundred steps with its loss falling and val_loss,
 * val_perplexity and tokens_per_second reported, text generated with a seed (the same
 * seed gives the same text, with or without the key/value cache, also for a version
 * named explicitly), streamed as server-sent events that spell out the same text, and a
 * 4xx naming the field for each bad request: negative max_new_tokens, temperature <= 0
 * with sampling, top_k 0, an empty prompt, characters outside the vocabulary, a model
 * that is not a text model. The same GPT as a graph spec (wte, wpe, h.0, h.1, ln_f,
 * lm_head tied to wte) trains and generates too, also through an alias of its version.
 */
#include "server_harness.h"

#include <criterion/criterion.h>
#include <zlib.h>

static harness H;

static void teardown(void)
{
    h_cleanup(&H);
}

TestSuite(server_generate, .fini = teardown, .timeout = 300);

/* The built kiln with args (and --url for the client commands); its exit status, output
 * (stdout and stderr) in out. */
static int run_kiln(const char *args, char *out, size_t size)
{
    char command[4096];
    bool client = !strncmp(args, "upload", 6);
    snprintf(command, sizeof command, "%s/kiln %s%s%s 2>&1", KILN_BINARY_DIR, args,
             client ? " --url " : "", client ? H.url : "");
    return h_run(command, out, size);
}

static const char LINE[] = "to be, or not to be, that is the question.\n";

/* The training text, gzipped to a file; returns its path. */
static const char *write_text(void)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/input.txt.gz", H.files_dir);
    gzFile f = gzopen(path, "wb");
    cr_assert_not_null(f);
    for (int i = 0; i < 80; i++) gzputs(f, LINE);
    gzclose(f);
    return path;
}

#define GPT                                                                                        \
    "{\"name\": \"%s\", \"input_shape\": [16], \"layers\": ["                                      \
    "{\"type\": \"embedding\", \"num_embeddings\": %d, \"embedding_dim\": 32},"                    \
    "{\"type\": \"positional_embedding\", \"num_embeddings\": 16},"                                \
    "{\"type\": \"transformer_encoder_layer\", \"nhead\": 4, \"dim_feedforward\": 64,"             \
    " \"dropout\": 0, \"activation\": \"gelu\", \"norm_first\": true, \"is_causal\": true},"       \
    "{\"type\": \"layer_norm\"},"                                                                  \
    "{\"type\": \"linear\", \"in_features\": 32, \"out_features\": %d, \"bias\": false}]}"

/* nanoGPT's GPT as a graph spec (issue 12's graph specs): wte and wpe, two causal
 * pre-norm blocks h.0 and h.1, ln_f, and lm_head tied to wte.weight. */
#define GRAPH_GPT                                                                                  \
    "{\"name\": \"%s\", \"inputs\": [{\"name\": \"idx\", \"shape\": [16], \"dtype\": "             \
    "\"int64\"}], \"nodes\": ["                                                                    \
    "{\"name\": \"wte\", \"type\": \"embedding\", \"num_embeddings\": %d, \"embedding_dim\": 32}," \
    "{\"name\": \"wpe\", \"type\": \"positional_embedding\", \"num_embeddings\": 16},"             \
    "{\"name\": \"h.0\", \"type\": \"transformer_encoder_layer\", \"nhead\": 4, "                  \
    "\"dim_feedforward\": 64, \"dropout\": 0, \"activation\": \"gelu\", \"norm_first\": true, "    \
    "\"is_causal\": true},"                                                                        \
    "{\"name\": \"h.1\", \"type\": \"transformer_encoder_layer\", \"nhead\": 4, "                  \
    "\"dim_feedforward\": 64, \"dropout\": 0, \"activation\": \"gelu\", \"norm_first\": true, "    \
    "\"is_causal\": true},"                                                                        \
    "{\"name\": \"ln_f\", \"type\": \"layer_norm\"},"                                              \
    "{\"name\": \"lm_head\", \"type\": \"linear\", \"out_features\": %d, \"bias\": false, "        \
    "\"tie\": {\"weight\": \"wte.weight\"}}], \"outputs\": [\"lm_head\"]}"

static cJSON *train_model(const char *model, const char *tokenizer)
{
    char spec[4096];
    snprintf(spec, sizeof spec,
             "{\"model\": %s, \"data\": {\"dataset\": \"play\", \"tokenizer\": \"%s\","
             " \"validation_split\": 0.1}, \"optimizer\": {\"type\": \"adamw\", \"lr\": 0.003,"
             " \"betas\": [0.9, 0.99], \"weight_decay\": 0.1}, \"batch_size\": 12,"
             " \"max_steps\": 300, \"validation\": {\"every_steps\": 100}, \"seed\": 1}",
             model, tokenizer);
    cJSON *doc = h_json(&H, "POST", "/v1/jobs", spec, 202);
    char id[64];
    snprintf(id, sizeof id, "%s", h_string(doc, "id"));
    cJSON_Delete(doc);
    return h_wait_job(&H, id, 240);
}

static cJSON *train(const char *name, int vocab, const char *tokenizer)
{
    char model[1024];
    snprintf(model, sizeof model, GPT, name, vocab, vocab);
    return train_model(model, tokenizer);
}

/* POST generate; the answer's text (malloc'd) and, when asked, its document. */
static char *generate(const char *path, const char *body, cJSON **doc)
{
    cJSON *o = h_json(&H, "POST", path, body, 200);
    char *text = strdup(h_string(o, "text"));
    if (doc)
        *doc = o;
    else
        cJSON_Delete(o);
    return text;
}

/* A 4xx whose error names path and says what. */
static void expect_refused(const char *route, const char *body, int status, const char *path,
                           const char *what)
{
    khttp_response r = h_request(&H, "POST", route, body);
    cr_assert_eq(r.status, status, "%s: %d %s", body, r.status, r.body);
    cJSON *doc = cJSON_Parse(r.body);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
    cr_assert_str_eq(h_string(error, "path"), path, "%s", r.body);
    cr_assert(strstr(h_string(error, "message"), what), "%s: %s", body, r.body);
    cJSON_Delete(doc);
    khttp_response_free(&r);
}

Test(server_generate, a_gpt_trains_on_a_text_and_writes)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    const char *text = write_text();
    char args[2048], out[16384];
    snprintf(args, sizeof args, "upload play --train-text %s --json", text);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln upload: %s", out);
    cJSON *u = cJSON_Parse(out);
    cr_assert_not_null(u, "%s", out);
    cr_assert_str_eq(h_string(u, "role"), "train_text");
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(u, "gzip")));
    cr_assert_eq(h_number(u, "characters"), 80 * (double)strlen(LINE));
    int vocab = (int)h_number(u, "vocab_size");
    cr_assert_eq(vocab, 16); /* sorted(set("to be, or not ... question.\n")) */
    cJSON_Delete(u);

    cJSON *job = train("gpt", vocab, "chars");
    char *dump = cJSON_PrintUnformatted(job);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s", dump);
    free(dump);
    const char *id = h_string(job, "id");
    double first, loss = h_series_end(&H, id, "loss", &first);
    cr_assert_lt(loss, first / 3, "loss %g after %g", loss, first);
    double val = h_series_end(&H, id, "val_loss", NULL);
    cr_assert_lt(val, 0.5, "val_loss %g", val);
    double perplexity = h_series_end(&H, id, "val_perplexity", NULL);
    cr_assert_float_eq(perplexity, exp(val), 1e-6 * perplexity);
    const cJSON *latest = cJSON_GetObjectItemCaseSensitive(job, "metrics");
    cr_assert_gt(h_number(latest, "tokens_per_second"), 0);
    char version[64];
    snprintf(version, sizeof version, "%s", id);
    cJSON_Delete(job);

    /* the same seed gives the same text; the cache changes nothing but the cost */
    const char *body = "{\"prompt\": \"to be\", \"max_new_tokens\": 40, \"temperature\": 0.8, "
                       "\"top_k\": 5, \"seed\": 7}";
    cJSON *doc = NULL;
    char *a = generate("/v1/models/gpt/generate", body, &doc);
    cr_assert_eq(strlen(a), 40);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "tokens")), 40);
    cr_assert_eq(h_number(doc, "prompt_tokens"), 5);
    cr_assert_str_eq(h_string(doc, "version"), version);
    cJSON_Delete(doc);
    char *b = generate("/v1/models/gpt/generate", body, NULL);
    cr_assert_str_eq(a, b);
    char path[256];
    snprintf(path, sizeof path, "/v1/models/gpt/versions/%s/generate", version);
    char *c = generate(path,
                       "{\"prompt\": \"to be\", \"max_new_tokens\": 40, \"temperature\": 0.8, "
                       "\"top_k\": 5, \"seed\": 7, \"use_cache\": false}",
                       NULL);
    cr_assert_str_eq(a, c);
    /* the model learnt the text: greedy decoding continues it */
    char *greedy = generate("/v1/models/gpt/generate",
                            "{\"prompt\": \"to be, or not \", \"max_new_tokens\": 20, "
                            "\"do_sample\": false}",
                            NULL);
    cr_assert_str_eq(greedy, "to be, that is the q");
    /* a prompt longer than the window keeps its last 16 characters */
    char *long_prompt = generate("/v1/models/gpt/generate",
                                 "{\"prompt\": \"the question.\\nto be, or not to\", "
                                 "\"max_new_tokens\": 20, \"do_sample\": false}",
                                 NULL);
    char *window = generate("/v1/models/gpt/generate",
                            "{\"prompt\": \"to be, or not to\", \"max_new_tokens\": 20, "
                            "\"do_sample\": false}",
                            NULL);
    cr_assert_str_eq(long_prompt, window);
    free(window);

    /* streamed: token events that spell the same text, then done with the answer */
    khttp_response s =
        h_request(&H, "POST", "/v1/models/gpt/generate",
                  "{\"prompt\": \"to be\", \"max_new_tokens\": 40, \"temperature\": 0.8, "
                  "\"top_k\": 5, \"seed\": 7, \"stream\": true}");
    cr_assert_eq(s.status, 200, "%s", s.body);
    char streamed[256] = "";
    int events = 0;
    for (const char *p = strstr(s.body, "event: token\ndata: "); p;
         p = strstr(p + 1, "event: token\ndata: ")) {
        cJSON *e = cJSON_Parse(p + strlen("event: token\ndata: "));
        cr_assert_not_null(e);
        cr_assert_eq(h_number(e, "index"), events);
        strcat(streamed, h_string(e, "text"));
        cJSON_Delete(e);
        events++;
    }
    cr_assert_eq(events, 40);
    cr_assert_str_eq(streamed, a);
    const char *done = strstr(s.body, "event: done\ndata: ");
    cr_assert_not_null(done, "%s", s.body);
    cJSON *d = cJSON_Parse(done + strlen("event: done\ndata: "));
    cr_assert_str_eq(h_string(d, "text"), a);
    cJSON_Delete(d);
    khttp_response_free(&s);

    /* kiln generate with the job's weights gives the server's text */
    snprintf(path, sizeof path, "/v1/jobs/%s/weights", version);
    khttp_response w = h_request(&H, "GET", path, NULL);
    cr_assert_eq(w.status, 200);
    char weights[512], job_file[512];
    snprintf(weights, sizeof weights, "%s/gpt.safetensors", H.files_dir);
    snprintf(job_file, sizeof job_file, "%s/gpt.json", H.files_dir);
    FILE *f = fopen(weights, "wb");
    fwrite(w.body, 1, w.body_length, f);
    fclose(f);
    khttp_response_free(&w);
    f = fopen(job_file, "w");
    char model[1024];
    snprintf(model, sizeof model, GPT, "gpt", vocab, vocab);
    fprintf(f, "{\"model\": %s, \"data\": {\"dataset\": \"play\"}}", model);
    fclose(f);
    snprintf(args, sizeof args,
             "generate %s %s --prompt 'to be' --max-new-tokens 40 --temperature 0.8 --top-k 5 "
             "--seed 7 --json",
             weights, job_file);
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln generate: %s", out);
    cJSON *local = cJSON_Parse(out);
    cr_assert_not_null(local, "%s", out);
    cr_assert_str_eq(h_string(local, "text"), a);
    cJSON_Delete(local);
    snprintf(args, sizeof args, "generate %s %s --prompt 'to be' --top-k 0", weights, job_file);
    cr_assert_eq(run_kiln(args, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "top_k: expected a positive integer, got 0"), "%s", out);
    snprintf(args, sizeof args, "generate %s %s --prompt 'to be!'", weights, job_file);
    cr_assert_eq(run_kiln(args, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "prompt: '!' (U+0021) at byte 5 is not in the model's vocabulary"), "%s",
              out);

    /* a seed drawn by the server is given back, and repeats the text */
    cJSON *drawn = NULL;
    char *x =
        generate("/v1/models/gpt/generate", "{\"prompt\": \"t\", \"max_new_tokens\": 30}", &drawn);
    char again[128];
    snprintf(again, sizeof again, "{\"prompt\": \"t\", \"max_new_tokens\": 30, \"seed\": %.0f}",
             h_number(drawn, "seed"));
    char *y = generate("/v1/models/gpt/generate", again, NULL);
    cr_assert_str_eq(x, y);
    cJSON_Delete(drawn);

    /* every bad request is a 4xx naming its field */
    const char *route = "/v1/models/gpt/generate";
    expect_refused(route, "{\"prompt\": \"to\", \"max_new_tokens\": -1}", 400, "max_new_tokens",
                   "expected a non-negative integer, got -1");
    expect_refused(route, "{\"prompt\": \"to\", \"temperature\": 0}", 400, "temperature",
                   "expected a finite number > 0 when sampling");
    expect_refused(route, "{\"prompt\": \"to\", \"temperature\": -1}", 400, "temperature",
                   "when sampling");
    expect_refused(route, "{\"prompt\": \"to\", \"top_k\": 0}", 400, "top_k",
                   "expected a positive integer, got 0");
    expect_refused(route, "{\"prompt\": \"\"}", 400, "prompt", "expected a non-empty string");
    expect_refused(route, "{\"prompt\": \"to be! \\u00e9\"}", 400, "prompt",
                   "'!' (U+0021) at byte 5 is not in the model's vocabulary of 16 characters");
    expect_refused(route, "{\"prompt\": \"to\", \"stream\": 1}", 400, "stream", "");
    expect_refused(route, "{\"prompt\": \"to\", \"max_new_tokens\": 5", 400, "", "");
    expect_refused("/v1/models/nobody/generate", "{\"prompt\": \"to\"}", 404, "name",
                   "unknown model \"nobody\"");
    expect_refused("/v1/models/gpt/versions/job_nope/generate", "{\"prompt\": \"to\"}", 404,
                   "version", "unknown version \"job_nope\"");

    /* a model that is not a text model: trained on token matrices */
    cJSON_Delete(h_json(&H, "POST", "/v1/datasets", "{\"name\": \"rows\"}", 201));
    const char *rows = "{\"inputs\": [[1, 2], [3, 4], [5, 6], [7, 8]], \"labels\": [0, 1, 0, 1]}";
    cJSON_Delete(h_json(&H, "PUT", "/v1/datasets/rows/files/train", rows, 201));
    cJSON *mlp = h_json(&H, "POST", "/v1/jobs",
                        "{\"model\": {\"name\": \"mlp\", \"input_shape\": [2], \"layers\": "
                        "[{\"type\": \"linear\", \"out_features\": 2}]}, "
                        "\"data\": {\"dataset\": \"rows\"}, \"max_steps\": 2}",
                        202);
    cJSON *done_mlp = h_wait_job(&H, h_string(mlp, "id"), 60);
    cr_assert_str_eq(h_string(done_mlp, "state"), "succeeded");
    cJSON_Delete(done_mlp);
    cJSON_Delete(mlp);
    expect_refused("/v1/models/mlp/generate", "{\"prompt\": \"to\"}", 422, "name",
                   "is not a text model");

    free(a);
    free(b);
    free(c);
    free(greedy);
    free(long_prompt);
    free(x);
    free(y);
}

/* The GPT as a graph spec, with lm_head tied to wte (nanoGPT's model), trains on the text
 * through kilnd and generates from its weights with the key/value cache of its
 * transformer_encoder_layer nodes: greedy decoding continues the text, the cache gives the
 * recomputed context's text, and the version is found through an alias as well as its
 * job id (the registry's ksrv_resolve_version). */
Test(server_generate, a_graph_gpt_trains_and_generates)
{
    h_start(&H, (const char *const[]){"--log-level", "warn", NULL});
    char args[2048], out[4096];
    snprintf(args, sizeof args, "upload play --train-text %s", write_text());
    cr_assert_eq(run_kiln(args, out, sizeof out), 0, "kiln upload: %s", out);
    cr_assert(strstr(out, "3440 characters, 16 distinct"), "%s", out);
    char model[2048];
    snprintf(model, sizeof model, GRAPH_GPT, "graph-gpt", 16, 16);
    cJSON_Delete(h_json(&H, "POST", "/v1/models", model, 201)); /* stored: it takes aliases */
    cJSON *job = train_model("\"graph-gpt\"", "chars");
    char *dump = cJSON_PrintUnformatted(job);
    cr_assert_str_eq(h_string(job, "state"), "succeeded", "%s", dump);
    free(dump);
    char id[64];
    snprintf(id, sizeof id, "%s", h_string(job, "id"));
    double val = h_series_end(&H, id, "val_loss", NULL);
    cr_assert_lt(val, 0.5, "val_loss %g", val);
    cr_assert_float_eq(h_series_end(&H, id, "val_perplexity", NULL), exp(val), 1e-6 * exp(val));
    cJSON_Delete(job);

    char *greedy = generate("/v1/models/graph-gpt/generate",
                            "{\"prompt\": \"to be, or not \", \"max_new_tokens\": 20, "
                            "\"do_sample\": false}",
                            NULL);
    cr_assert_str_eq(greedy, "to be, that is the q");
    /* 60 characters from a window of 16: past it several times, cache or not */
    const char *sampled = "{\"prompt\": \"to be\", \"max_new_tokens\": 60, \"temperature\": 0.8, "
                          "\"seed\": 3%s}";
    char body[256];
    snprintf(body, sizeof body, sampled, "");
    char *cached = generate("/v1/models/graph-gpt/generate", body, NULL);
    snprintf(body, sizeof body, sampled, ", \"use_cache\": false");
    char *full = generate("/v1/models/graph-gpt/generate", body, NULL);
    cr_assert_eq(strlen(cached), 60);
    cr_assert_str_eq(cached, full);
    /* through an alias of the version */
    snprintf(body, sizeof body, "{\"version\": \"%s\"}", id);
    cJSON_Delete(h_json(&H, "PUT", "/v1/models/graph-gpt/aliases/best", body, 201));
    snprintf(body, sizeof body, sampled, "");
    cJSON *doc = NULL;
    char *aliased = generate("/v1/models/graph-gpt/versions/best/generate", body, &doc);
    cr_assert_str_eq(aliased, cached);
    cr_assert_str_eq(h_string(doc, "version"), id);
    cJSON_Delete(doc);
    expect_refused("/v1/models/graph-gpt/versions/worst/generate", "{\"prompt\": \"to\"}", 404,
                   "version", "unknown version \"worst\"");
    free(greedy);
    free(cached);
    free(full);
    free(aliased);
}
