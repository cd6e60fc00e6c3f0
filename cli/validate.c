/*
 * validate.c — `kiln validate`: a model or job spec checked as the server would check
 * it, with the parameter count, output shape, training memory estimate and layer table
 * (a graph's: its inputs, nodes and outputs), or the JSON summary with --json; errors as
 * "path: message" lines, exit 2.
 */
#include "kcli.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A graph's nodes: name, type, inputs, output shape(s), parameters (and ties). */
static void print_nodes(const kapi_model_spec *m)
{
    char shape[128], inputs[256];
    for (int i = 0; i < m->n_inputs; i++)
        printf("input %s: %s %s\n", m->values[i].name,
               kn_shape_str(m->values[i].shape, m->values[i].ndim, shape, sizeof shape),
               kn_dtype_name(m->values[i].dtype));
    printf("  %-28s %-20s %-24s %-18s %s\n", "node", "type", "inputs", "output shape",
           "parameters");
    for (int i = 0; i < m->n_layers; i++) {
        const kapi_layer_spec *l = &m->layers[i];
        size_t used = 0;
        inputs[0] = '\0';
        for (int k = 0; k < l->n_inputs && used < sizeof inputs; k++)
            used += (size_t)snprintf(inputs + used, sizeof inputs - used, "%s%s", k ? ", " : "",
                                     m->values[l->inputs[k]].name);
        const kapi_value_spec *out = &m->values[l->first_output];
        kn_shape_str(out->shape, out->ndim, shape, sizeof shape);
        if (l->n_outputs > 1)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), " x%d", l->n_outputs);
        printf("  %-28s %-20s %-24s %-18s %lld", l->name, l->type, inputs, shape,
               (long long)l->parameter_count);
        for (int t = 0; t < l->n_ties; t++)
            printf(" (%s is %s)", l->ties[t].parameter, l->ties[t].to);
        printf("\n");
    }
    for (int i = 0; i < m->n_outputs; i++) {
        const kapi_value_spec *out = &m->values[m->outputs[i]];
        printf("output %s: %s %s\n", out->name,
               kn_shape_str(out->shape, out->ndim, shape, sizeof shape), kn_dtype_name(out->dtype));
    }
}

static void print_layers(const kapi_model_spec *m)
{
    char shape[128];
    if (m->graph) {
        print_nodes(m);
        return;
    }
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
    /* a model spec has "layers" (a chain) or "nodes" (a graph) at the top; anything else
     * is read as a job */
    cJSON *doc = cJSON_ParseWithLength(text, size);
    bool is_model = doc && (cJSON_GetObjectItemCaseSensitive(doc, "layers") != NULL ||
                            cJSON_GetObjectItemCaseSensitive(doc, "nodes") != NULL);
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
