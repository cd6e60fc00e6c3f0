/*
 * generate.c — `kiln generate CHECKPOINT JOB.json --prompt TEXT`: what POST
 * /v1/models/{name}/generate does, locally (issue 12). The model is the job's, the
 * weights and the tokenizer the CHECKPOINT's (a text model's final weights, with
 * kiln.tokenizer in their metadata: kilnd's GET /v1/jobs/ID/weights). The options make
 * the same request the server reads (kapi_generate_request_parse), so the errors name
 * the same fields; the text is printed as the tokens are made (--json: the server's
 * answer, one object).
 */
#include "kcli.h"
#include "kapi_text.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct printer {
    const kapi_tokenizer *tokenizer;
    kapi_text_decoder decoder;
    bool quiet;
} printer;

static kn_status print_token(void *context, int64_t token, int64_t index)
{
    (void)index;
    printer *p = context;
    char piece[16];
    if (!p->quiet && kapi_text_decoder_push(&p->decoder, p->tokenizer, token, piece) > 0) {
        fputs(piece, stdout);
        fflush(stdout);
    }
    return KN_OK;
}

/* The request the options make, as POST .../generate's body (malloc'd): values that read
 * as numbers become JSON numbers, so a bad one is named by its field as the server does. */
static char *request_json(const kcli_options *options)
{
    static const char *const FIELDS[5] = {"prompt", "max_new_tokens", "temperature", "top_k",
                                          "seed"};
    cJSON *o = cJSON_CreateObject();
    for (int k = 0; o && k < 5; k++) {
        const char *v = options->generate_values[k];
        if (!v) continue;
        char *end = NULL;
        double number = strtod(v, &end);
        if (k > 0 && v[0] && !*end)
            cJSON_AddNumberToObject(o, FIELDS[k], number);
        else
            cJSON_AddStringToObject(o, FIELDS[k], v);
    }
    if (o && options->greedy) cJSON_AddFalseToObject(o, "do_sample");
    if (o && options->no_cache) cJSON_AddFalseToObject(o, "use_cache");
    char *json = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return json;
}

int kcli_generate(const char *checkpoint, const char *job_path, const kcli_options *options)
{
    kapi_generate_request request = {0};
    kapi_errors errors = {0};
    kapi_tokenizer *tokenizer = NULL;
    int64_t *prompt = NULL, *out = NULL;
    kcli_job job;
    memset(&job, 0, sizeof job);
    char *body = request_json(options);
    bool parsed = body && kapi_generate_request_parse(body, strlen(body), &request, &errors);
    free(body);
    if (!parsed) {
        if (errors.count)
            kcli_print_errors(&errors);
        else
            fprintf(stderr, "kiln: out of memory\n");
        kapi_errors_free(&errors);
        return KCLI_EXIT_SPEC;
    }
    int rc = kcli_job_open(&job, job_path, false, false);
    if (rc != 0) goto done;
    if (job.model_spec->input_ndim != 1 || job.model_spec->output_ndim != 2) {
        fprintf(stderr, "kiln: the job's model is not a language model (input [block_size] "
                        "token ids, output [block_size, vocabulary] logits)\n");
        rc = KCLI_EXIT_SPEC;
        goto done;
    }
    bool found = false;
    tokenizer = kapi_load_tokenizer(checkpoint, checkpoint, &found, &errors);
    if (!tokenizer) {
        if (found || errors.count)
            kcli_print_errors(&errors);
        else
            fprintf(stderr,
                    "kiln: %s is not a text model's weights (no " KAPI_META_TOKENIZER
                    " in its metadata): generate needs the final weights of a job trained on "
                    "a text (kilnd: GET /v1/jobs/ID/weights)\n",
                    checkpoint);
        rc = found || errors.count ? KCLI_EXIT_SPEC : KCLI_EXIT_RUNTIME;
        goto done;
    }
    if (kn_module_load_weights(job.model, checkpoint, true) != KN_OK) {
        fprintf(stderr, "error: %s\n", kn_last_error());
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    kn_module_train(job.model, false);
    int64_t n_prompt = 0;
    prompt =
        kapi_tokenize(tokenizer, request.prompt, request.prompt_size, &n_prompt, "prompt", &errors);
    if (!prompt) {
        kcli_print_errors(&errors);
        rc = KCLI_EXIT_SPEC;
        goto done;
    }
    if (!request.seed_given) request.seed = (uint64_t)time(NULL);
    kn_generate_options o = {.max_new_tokens = request.max_new_tokens,
                             .do_sample = request.do_sample,
                             .temperature = request.temperature,
                             .top_k = request.top_k,
                             .seed = request.seed,
                             .block_size = job.model_spec->input_shape[0],
                             .no_cache = !request.use_cache};
    out = malloc(sizeof(int64_t) * (size_t)(o.max_new_tokens + 1));
    printer p = {.tokenizer = tokenizer, .quiet = options->json};
    kn_generate_callbacks cb = {.context = &p, .on_token = print_token};
    int64_t count = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kn_status st =
        out ? kn_generate(job.model, prompt, n_prompt, &o, &cb, out, &count) : KN_ERR_MEMORY;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (st != KN_OK) {
        fprintf(stderr, "\nerror: %s\n", out ? kn_last_error() : "out of memory");
        rc = KCLI_EXIT_RUNTIME;
        goto done;
    }
    if (options->json) {
        char *text = kapi_detokenize(tokenizer, out, count, NULL, "tokens", &errors);
        cJSON *o_json = cJSON_CreateObject();
        cJSON_AddStringToObject(o_json, "text", text ? text : "");
        cJSON *tokens = cJSON_AddArrayToObject(o_json, "tokens");
        for (int64_t i = 0; i < count; i++)
            cJSON_AddItemToArray(tokens, cJSON_CreateNumber((double)out[i]));
        cJSON_AddNumberToObject(o_json, "prompt_tokens", (double)n_prompt);
        cJSON_AddItemToObject(o_json, "seed", kapi_json_integer((int64_t)request.seed));
        cJSON_AddNumberToObject(o_json, "seconds", seconds);
        cJSON_AddNumberToObject(o_json, "tokens_per_second",
                                seconds > 0 ? (double)count / seconds : 0);
        char *json = cJSON_PrintUnformatted(o_json);
        if (json) printf("%s\n", json);
        free(json);
        free(text);
        cJSON_Delete(o_json);
    } else {
        char piece[16];
        if (kapi_text_decoder_finish(&p.decoder, piece) > 0) fputs(piece, stdout);
        printf("\n");
        if (!options->quiet)
            fprintf(stderr, "%lld tokens in %.2f s (%.0f tokens/s), seed %llu\n", (long long)count,
                    seconds, seconds > 0 ? (double)count / seconds : 0,
                    (unsigned long long)request.seed);
    }
done:
    free(prompt);
    free(out);
    kapi_tokenizer_free(tokenizer);
    kapi_generate_request_free(&request);
    kapi_errors_free(&errors);
    kcli_job_close(&job);
    return rc;
}
