/*
 * test_server_graph.c — graph models over HTTP, in-process on 127.0.0.1: a graph spec is
 * stored and validated (validate_only lists every node), and v2 inference serves it: the
 * metadata names every input and output with its datatype (INT64 for token indices),
 * a request gives several inputs by name in any order, INT64 inputs stay exact, outputs
 * can be chosen by name, and the values are the model's own (computed here through the
 * engine); a chain with an embedding first takes INT64 too. Bad requests get a 400
 * naming the input or output at fault; weights whose preprocessing does not fit the
 * model (several inputs) are refused when they load.
 */
#define _GNU_SOURCE
#include "kn_test_http.h"
#include "kn_test_server.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kn_test_server T;

static void start(void)
{
    kn_test_server_config(&T);
    kn_test_server_start(&T);
}

static void teardown(void)
{
    kn_test_server_stop(&T);
}

TestSuite(server_graph, .init = start, .fini = teardown, .timeout = 60);

static kn_test_reply request(const char *method, const char *path, const char *body)
{
    return kn_test_http(T.server->port, method, path, NULL, body, body ? strlen(body) : 0);
}

static cJSON *json_reply(const char *method, const char *path, const char *body, int status)
{
    kn_test_reply r = request(method, path, body);
    cr_assert_eq(r.status, status, "%s %s: %d %s", method, path, r.status, r.body);
    cJSON *doc = cJSON_ParseWithLength(r.body, r.body_length);
    cr_assert_not_null(doc, "%s", r.body);
    kn_test_reply_free(&r);
    return doc;
}

static void expect_v2_error(const char *path, const char *body, const char *fragment)
{
    kn_test_reply r = request("POST", path, body);
    cr_expect_eq(r.status, 400, "status %d: %s", r.status, r.body);
    cJSON *doc = cJSON_Parse(r.body);
    const cJSON *e = cJSON_GetObjectItem(doc, "error");
    cr_expect(cJSON_IsString(e) && strstr(e->valuestring, fragment), "\"%s\" lacks \"%s\"", r.body,
              fragment);
    cJSON_Delete(doc);
    kn_test_reply_free(&r);
}

/* tokens (int64 [5]) and features (float [3]) -> head [2], aux [4], last (int64 []) */
static const char TWO_INPUTS[] =
    "{\"name\": \"two\", \"inputs\": [{\"name\": \"tokens\", \"shape\": [5], \"dtype\": "
    "\"int64\"}, {\"name\": \"features\", \"shape\": [3]}],"
    " \"nodes\": ["
    "  {\"name\": \"embed\", \"type\": \"embedding\", \"input\": \"tokens\", \"num_embeddings\": "
    "50, \"embedding_dim\": 5},"
    "  {\"name\": \"last\", \"type\": \"select\", \"input\": \"tokens\", \"dim\": 1, \"index\": "
    "-1},"
    "  {\"name\": \"pooled\", \"type\": \"mean\", \"input\": \"embed\", \"dim\": 1},"
    "  {\"name\": \"both\", \"type\": \"concat\", \"inputs\": [\"pooled\", \"features\"], \"dim\": "
    "-1},"
    "  {\"name\": \"parts\", \"type\": \"chunk\", \"chunks\": 2, \"dim\": 1},"
    "  {\"name\": \"head\", \"type\": \"linear\", \"input\": \"parts:0\", \"out_features\": 2},"
    "  {\"name\": \"aux\", \"type\": \"identity\", \"input\": \"parts:1\"}],"
    " \"outputs\": [\"head\", \"aux\", \"last\"]}";

static const int64_t TOKENS[2][5] = {{1, 7, 7, 49, 3}, {0, 2, 4, 6, 8}};
static const float FEATURES[2][3] = {{0.5f, -1, 2}, {3, 0.25f, -0.75f}};

static const char INFER_BODY[] =
    "{\"id\": \"r1\", \"inputs\": ["
    "{\"name\": \"features\", \"shape\": [2, 3], \"datatype\": \"FP32\", \"data\": [0.5, -1, 2, "
    "3, 0.25, -0.75]},"
    "{\"name\": \"tokens\", \"shape\": [2, 5], \"datatype\": \"INT64\", \"data\": [[1, 7, 7, 49, "
    "3], [0, 2, 4, 6, 8]]}]}";

/* The model's own outputs for TOKENS and FEATURES, computed here. */
static void local_outputs(kn_tensor **outs)
{
    kn_module *m = kn_test_build_model(TWO_INPUTS, 3);
    kn_module_train(m, false);
    kn_tensor *x[2] = {kn_from_int64s(&TOKENS[0][0], KN_SHAPE(2, 5)),
                       kn_from_floats(&FEATURES[0][0], KN_SHAPE(2, 3))};
    int n = 0;
    cr_assert_eq(kn_module_forward_outputs(m, x, 2, outs, 3, &n), KN_OK, "%s", kn_last_error());
    for (int i = 0; i < n; i++) outs[i] = kn_detach(outs[i]);
    kn_module_free(m);
}

static const cJSON *output_named(const cJSON *doc, const char *name)
{
    const cJSON *o;
    cJSON_ArrayForEach(o, cJSON_GetObjectItem(doc, "outputs"))
    {
        if (!strcmp(cJSON_GetObjectItem(o, "name")->valuestring, name)) return o;
    }
    return NULL;
}

static void expect_output(const cJSON *doc, const char *name, const char *datatype,
                          const kn_tensor *want)
{
    const cJSON *o = output_named(doc, name);
    cr_assert_not_null(o, "no output %s", name);
    cr_expect_str_eq(cJSON_GetObjectItem(o, "datatype")->valuestring, datatype, "%s", name);
    const cJSON *shape = cJSON_GetObjectItem(o, "shape");
    cr_assert_eq(cJSON_GetArraySize(shape), want->ndim, "%s", name);
    for (int d = 0; d < want->ndim; d++)
        cr_expect_eq((int64_t)cJSON_GetArrayItem(shape, d)->valuedouble, want->shape[d]);
    const cJSON *data = cJSON_GetObjectItem(o, "data");
    cr_assert_eq(cJSON_GetArraySize(data), kn_numel(want), "%s", name);
    int64_t index[KN_MAX_DIMS] = {0};
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, data)
    {
        int64_t flat = i++;
        for (int d = want->ndim - 1; d >= 0; d--) {
            index[d] = flat % want->shape[d];
            flat /= want->shape[d];
        }
        double w = kn_get(want, index);
        cr_expect(fabs(v->valuedouble - w) <= 1e-6 * (1 + fabs(w)), "%s[%d]: %g, wanted %g", name,
                  i - 1, v->valuedouble, w);
    }
}

Test(server_graph, a_graph_model_is_validated_and_served_with_named_inputs_and_outputs)
{
    kn_scope_begin();
    cJSON *summary = json_reply("POST", "/v1/models?validate_only=true", TWO_INPUTS, 200);
    const cJSON *nodes = cJSON_GetObjectItem(summary, "nodes");
    cr_assert_eq(cJSON_GetArraySize(nodes), 7, "every node in the summary");
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(nodes, 4), "name")->valuestring,
                     "parts");
    cJSON_Delete(summary);
    cJSON_Delete(json_reply("POST", "/v1/models", TWO_INPUTS, 201));
    char id[40];
    kn_test_server_add_version(&T, "two", TWO_INPUTS, 3, id);

    cJSON *meta = json_reply("GET", "/v2/models/two", NULL, 200);
    const cJSON *inputs = cJSON_GetObjectItem(meta, "inputs");
    cr_assert_eq(cJSON_GetArraySize(inputs), 2);
    cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(inputs, 0), "name")->valuestring,
                     "tokens");
    cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(inputs, 0), "datatype")->valuestring,
                     "INT64");
    cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(inputs, 1), "datatype")->valuestring,
                     "FP32");
    const cJSON *outputs = cJSON_GetObjectItem(meta, "outputs");
    cr_assert_eq(cJSON_GetArraySize(outputs), 3);
    cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(outputs, 2), "name")->valuestring,
                     "last");
    cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(outputs, 2), "datatype")->valuestring,
                     "INT64");
    cJSON_Delete(meta);

    kn_tensor *want[3];
    local_outputs(want);
    cJSON *doc = json_reply("POST", "/v2/models/two/infer", INFER_BODY, 200);
    cr_expect_str_eq(cJSON_GetObjectItem(doc, "id")->valuestring, "r1");
    expect_output(doc, "head", "FP32", want[0]);
    expect_output(doc, "aux", "FP32", want[1]);
    expect_output(doc, "last", "INT64", want[2]);
    cJSON_Delete(doc);

    /* only the outputs asked for */
    char body[1024];
    snprintf(body, sizeof body, "{\"outputs\": [{\"name\": \"last\"}], %s", INFER_BODY + 1);
    doc = json_reply("POST", "/v2/models/two/infer", body, 200);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "outputs")), 1);
    expect_output(doc, "last", "INT64", want[2]);
    cJSON_Delete(doc);
    kn_scope_end();
}

Test(server_graph, bad_requests_name_the_input_or_output)
{
    cJSON_Delete(json_reply("POST", "/v1/models", TWO_INPUTS, 201));
    char id[40];
    kn_test_server_add_version(&T, "two", TWO_INPUTS, 3, id);
    const char *p = "/v2/models/two/infer";
    const char *features =
        "{\"name\": \"features\", \"shape\": [1, 3], \"datatype\": \"FP32\", \"data\": [1, 2, 3]}";
    char body[1024];
    snprintf(body, sizeof body,
             "{\"inputs\": [%s, {\"name\": \"tokens\", \"shape\": [1, 5], \"datatype\": "
             "\"FP32\", \"data\": [1, 2, 3, 4, 5]}]}",
             features);
    expect_v2_error(p, body,
                    "inputs[1].datatype: input \"tokens\" takes int64 indices: expected INT64 (or "
                    "another integer type), got FP32");
    snprintf(body, sizeof body, "{\"inputs\": [%s]}", features);
    expect_v2_error(p, body,
                    "inputs: expected an array of 2 input objects, one for each of the model's "
                    "inputs (tokens, features)");
    snprintf(body, sizeof body,
             "{\"inputs\": [%s, {\"name\": \"token\", \"shape\": [1, 5], \"datatype\": "
             "\"INT64\", \"data\": [1, 2, 3, 4, 5]}]}",
             features);
    expect_v2_error(p, body,
                    "inputs[1].name: expected one of the model's inputs (tokens, features), got "
                    "\"token\"");
    snprintf(body, sizeof body, "{\"inputs\": [%s, %s]}", features, features);
    expect_v2_error(p, body, "inputs[1].name: input \"features\" is given twice");
    snprintf(body, sizeof body,
             "{\"inputs\": [%s, {\"name\": \"tokens\", \"shape\": [2, 5], \"datatype\": "
             "\"INT64\", \"data\": [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]}]}",
             features);
    expect_v2_error(p, body, "inputs[1].shape: 2 samples, but the inputs before have 1");
    snprintf(body, sizeof body,
             "{\"inputs\": [%s, {\"name\": \"tokens\", \"shape\": [1, 5], \"datatype\": "
             "\"INT64\", \"data\": [1, 2, 3, 4, 1e17]}]}",
             features);
    expect_v2_error(p, body, "inputs[1].data[4]: 1e+17 is beyond the integers a JSON number");
    snprintf(body, sizeof body,
             "{\"outputs\": [{\"name\": \"logits\"}], \"inputs\": [%s, {\"name\": \"tokens\", "
             "\"shape\": [1, 5], \"datatype\": \"INT64\", \"data\": [1, 2, 3, 4, 5]}]}",
             features);
    expect_v2_error(p, body,
                    "outputs[0].name: expected one of the model's outputs (head, aux, last)");
    /* an index past the table of the embedding that reads the input is refused with the
     * request (not run, so it cannot fail the requests batched with it) */
    snprintf(body, sizeof body,
             "{\"inputs\": [%s, {\"name\": \"tokens\", \"shape\": [1, 5], \"datatype\": "
             "\"INT64\", \"data\": [1, 2, 3, 4, 50]}]}",
             features);
    expect_v2_error(p, body,
                    "inputs[1].data[4]: token 50 is outside the embedding's 50 rows (0 "
                    "to 49)");
}

/* A chain whose first layer is an embedding takes INT64 indices too (its input is int64). */
Test(server_graph, a_chain_with_an_embedding_takes_int64_indices)
{
    const char *spec =
        "{\"name\": \"emb\", \"input_shape\": [4], \"layers\": [{\"type\": \"embedding\", "
        "\"num_embeddings\": 10, \"embedding_dim\": 2}, {\"type\": \"flatten\"}, {\"type\": "
        "\"linear\", \"out_features\": 3}]}";
    cJSON_Delete(json_reply("POST", "/v1/models", spec, 201));
    char id[40];
    kn_test_server_add_version(&T, "emb", spec, 9, id);
    cJSON *meta = json_reply("GET", "/v2/models/emb", NULL, 200);
    const cJSON *in = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "inputs"), 0);
    cr_expect_str_eq(cJSON_GetObjectItem(in, "name")->valuestring, "input");
    cr_expect_str_eq(cJSON_GetObjectItem(in, "datatype")->valuestring, "INT64");
    cJSON_Delete(meta);
    cJSON *doc = json_reply("POST", "/v2/models/emb/infer",
                            "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 4], \"datatype\": "
                            "\"INT32\", \"data\": [1, 2, 3, 9]}]}",
                            200);
    const cJSON *out = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "outputs"), 0);
    cr_expect_str_eq(cJSON_GetObjectItem(out, "name")->valuestring, "output");
    cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(out, "data")), 3);
    cJSON_Delete(doc);
}

/* A job's preprocessing is of its one float32 input (a dataset feeds one): weights that
 * carry one for a model of several inputs are refused when the version loads, with a
 * message, rather than scaling the wrong input or the token indices. */
Test(server_graph, a_preprocessing_for_a_model_of_several_inputs_is_refused)
{
    cJSON_Delete(json_reply("POST", "/v1/models", TWO_INPUTS, 201));
    char id[40], path[700];
    kn_test_server_add_version(&T, "two", TWO_INPUTS, 3, id);
    snprintf(path, sizeof path, "%s/jobs/%s/model.safetensors", T.config.data_dir, id);
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(TWO_INPUTS, strlen(TWO_INPUTS), &errors);
    cr_assert_not_null(spec);
    kn_module *module = kn_test_build_model(TWO_INPUTS, 3);
    kapi_preprocessing scaled = {.scale = 0.5, .task = KN_TASK_CLASSIFICATION};
    cr_assert(kapi_save_weights(module, path, &scaled, spec, NULL, &errors), "%s",
              errors.count ? errors.items[0].message : "");
    kn_module_free(module);
    kapi_model_spec_free(spec);
    kn_test_reply r = request("POST", "/v2/models/two/infer", INFER_BODY);
    cr_expect_eq(r.status, 500, "status %d: %s", r.status, r.body);
    cr_expect(strstr(r.body, "preprocessing (kiln.preprocessing) is of one float32 input, but "
                             "the model has 2 inputs"),
              "%s", r.body);
    kn_test_reply_free(&r);
}
