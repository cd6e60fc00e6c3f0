/*
 * generate.c — POST /v1/models/{name}/generate and /v1/models/{name}/versions/{v}/generate
 * (issue 12): text from a text model (a version whose weights carry the tokenizer its job
 * trained with), nanoGPT's sampling with a key/value cache (core/nn/generate.c).
 *
 * The body is kapi_generate_request's ({"prompt", "max_new_tokens", "do_sample",
 * "temperature", "top_k", "seed", "stream", "use_cache"}); every mistake is a 400 naming
 * its field, a prompt character outside the model's vocabulary included, and a version
 * that is not a text model is a 422 naming it. Without "stream" the answer is
 *   {"model", "version", "text", "tokens": [...], "prompt_tokens", "seed", "seconds",
 *    "tokens_per_second"}
 * (the new text and tokens only; "seed" the one drawn when none was given, to repeat it).
 * With "stream": true it is server-sent events: one "token" event {"index", "token",
 * "text"} a token ("text" is what the token completes, valid UTF-8: a byte tokenizer's
 * character comes out with its last byte), then "done" with the whole answer above, or
 * "error" {"message"} if the model fails midway. The stream is a libmicrohttpd callback
 * response that makes one token per call on the calling MHD thread, so a client that goes
 * away stops the generation, and the cached version stays held until then.
 */
#include "ksrv_http.h"

#include "kapi_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef struct generation_run {
    ksrv_server *server;
    ksrv_held_model held;
    char model[160];
    kapi_generate_request request;
    kn_generation *generation;
    int64_t *tokens; /* made so far */
    int64_t count, prompt_tokens;
    kapi_text_decoder decoder;
    double started;
    /* stream: pending bytes not yet handed to MHD */
    char *pending;
    size_t pending_length, pending_sent;
    bool finished;
} generation_run;

static void run_free(generation_run *g)
{
    if (!g) return;
    kn_generation_free(g->generation);
    ksrv_model_release(g->server, &g->held);
    kapi_generate_request_free(&g->request);
    free(g->tokens);
    free(g->pending);
    free(g);
}

/* The final answer (also the stream's "done" event). */
static cJSON *answer_json(const generation_run *g)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", g->model);
    cJSON_AddStringToObject(o, "version", g->held.version);
    kapi_errors errors = {0};
    char *text = kapi_detokenize(g->held.tokenizer, g->tokens, g->count, NULL, "tokens", &errors);
    kapi_errors_free(&errors);
    cJSON_AddStringToObject(o, "text", text ? text : "");
    free(text);
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    for (int64_t i = 0; i < g->count; i++)
        cJSON_AddItemToArray(tokens, cJSON_CreateNumber((double)g->tokens[i]));
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)g->prompt_tokens);
    cJSON_AddItemToObject(o, "seed", kapi_json_integer((int64_t)g->request.seed));
    double seconds = ksrv_monotonic() - g->started;
    cJSON_AddNumberToObject(o, "seconds", seconds);
    cJSON_AddNumberToObject(o, "tokens_per_second", seconds > 0 ? (double)g->count / seconds : 0);
    return o;
}

/* Appends an event to the pending bytes. */
static bool add_event(generation_run *g, const char *event, cJSON *data)
{
    char *json = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);
    if (!json) return false;
    size_t need = strlen(event) + strlen(json) + 32;
    char *grown = realloc(g->pending, g->pending_length + need);
    if (!grown) {
        free(json);
        return false;
    }
    g->pending = grown;
    g->pending_length += (size_t)snprintf(g->pending + g->pending_length, need,
                                          "event: %s\ndata: %s\n\n", event, json);
    free(json);
    return true;
}

/* One token (or the end) as events; false when the stream is over. */
static bool stream_step(generation_run *g)
{
    if (g->finished) return false;
    if (kn_generation_remaining(g->generation) == 0) {
        g->finished = true;
        return add_event(g, "done", answer_json(g));
    }
    int64_t token = 0;
    kn_status st = kn_generation_next(g->generation, &token);
    g->tokens[g->count++] = token;
    char piece[16];
    int n = kapi_text_decoder_push(&g->decoder, g->held.tokenizer, token, piece);
    if (n < 0) piece[0] = 0;
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "index", (double)(g->count - 1));
    cJSON_AddNumberToObject(e, "token", (double)token);
    cJSON_AddStringToObject(e, "text", piece);
    bool ok = add_event(g, "token", e);
    if (st != KN_OK) {
        cJSON *err = cJSON_CreateObject();
        cJSON_AddStringToObject(err, "message", kn_last_error());
        g->finished = true;
        return add_event(g, "error", err) && ok;
    }
    return ok;
}

static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    generation_run *g = cls;
    while (g->pending_sent == g->pending_length) {
        g->pending_sent = g->pending_length = 0;
        if (!stream_step(g)) {
            if (g->pending_length == 0) return MHD_CONTENT_READER_END_OF_STREAM;
        }
    }
    size_t n = g->pending_length - g->pending_sent;
    if (n > max) n = max;
    memcpy(buf, g->pending + g->pending_sent, n);
    g->pending_sent += n;
    return (ssize_t)n;
}

static void free_stream(void *cls)
{
    run_free(cls);
}

void ksrv_handle_models_generate(ksrv_server *server, ksrv_request *request,
                                 ksrv_response *response)
{
    const char *model = request->params[0];
    const char *version = request->n_params > 1 ? request->params[1] : NULL;
    kapi_errors errors = {0};
    generation_run *g = calloc(1, sizeof *g);
    if (!g) {
        ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
        return;
    }
    g->server = server;
    g->started = ksrv_monotonic();
    snprintf(g->model, sizeof g->model, "%s", model);
    if (!kapi_generate_request_parse(request->body ? request->body : "",
                                     request->body ? request->body_length : 0, &g->request,
                                     &errors)) {
        ksrv_respond_error(response, 400, "invalid_request", errors.items[0].path, "%s: %s",
                           errors.items[0].path, errors.items[0].message);
        goto fail;
    }
    if (!g->request.seed_given &&
        getrandom(&g->request.seed, sizeof g->request.seed, 0) != sizeof g->request.seed)
        g->request.seed = (uint64_t)(ksrv_monotonic() * 1e9);
    g->request.seed &= ((uint64_t)1 << 53) - 1; /* a JSON number gives it back exactly */
    kstore *store = ksrv_store_or_500(server, response);
    if (!store) goto fail;
    char message[600];
    int status = ksrv_model_hold(server, store, model, version, &g->held, message, sizeof message);
    if (status) {
        ksrv_respond_error(response, status, status == 404 ? "not_found" : "internal",
                           version ? "version" : "name", "%s", message);
        goto fail;
    }
    const kapi_model_spec *spec = g->held.spec;
    if (!g->held.tokenizer || spec->input_ndim != 1 || spec->output_ndim != 2) {
        ksrv_respond_error(response, 422, "not_a_text_model", version ? "version" : "name",
                           "model %s version %s is not a text model: it was not trained on a "
                           "dataset's train_text (generate needs the tokenizer its weights "
                           "carry; v2 infer serves this model)",
                           model, g->held.version);
        goto fail;
    }
    int64_t n_prompt = 0;
    int64_t *prompt = kapi_tokenize(g->held.tokenizer, g->request.prompt, g->request.prompt_size,
                                    &n_prompt, "prompt", &errors);
    if (!prompt) {
        ksrv_respond_error(response, 400, "invalid_request", "prompt", "prompt: %s",
                           errors.items[0].message);
        goto fail;
    }
    g->prompt_tokens = n_prompt;
    kn_generate_options o = {.max_new_tokens = g->request.max_new_tokens,
                             .do_sample = g->request.do_sample,
                             .temperature = g->request.temperature,
                             .top_k = g->request.top_k,
                             .seed = g->request.seed,
                             .block_size = spec->input_shape[0],
                             .no_cache = !g->request.use_cache};
    g->tokens = malloc(sizeof(int64_t) * (size_t)(o.max_new_tokens + 1));
    g->generation = g->tokens ? kn_generation_new(g->held.module, prompt, n_prompt, &o) : NULL;
    free(prompt);
    if (!g->generation) {
        ksrv_respond_error(response, 500, "generation_failed", NULL, "generating: %s",
                           g->tokens ? kn_last_error() : "out of memory");
        goto fail;
    }
    if (g->request.stream) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, read_stream, g, free_stream);
        if (!r) {
            ksrv_respond_error(response, 500, "internal", NULL, "cannot create the stream");
            goto fail;
        }
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        response->status = 200;
        response->content_type = "text/event-stream";
        response->prepared = r;
        kapi_errors_free(&errors);
        return;
    }
    while (kn_generation_remaining(g->generation) > 0) {
        int64_t token = 0;
        kn_status st = kn_generation_next(g->generation, &token);
        g->tokens[g->count++] = token;
        if (st != KN_OK) {
            ksrv_respond_error(response, 500, "generation_failed", NULL,
                               "generating token %lld: %s", (long long)g->count, kn_last_error());
            goto fail;
        }
    }
    ksrv_respond_json(response, 200, answer_json(g));
fail:
    kapi_errors_free(&errors);
    run_free(g);
}
