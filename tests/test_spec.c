/*
 * test_spec.c — the JSON contract (api/): every broken spec in tests/specs/invalid gets
 * exactly the errors in its .expected sidecar; every spec in tests/specs/valid and the
 * examples parse; shapes and parameter counts match PyTorch's (numbers printed by
 * torch 1.13 for the same nn.Sequential); data files load, gzipped or not; and mutated
 * documents never crash the parsers.
 *
 * Files named model-*.json are model specs; job-*.json are job specs as the server reads
 * them (no local paths), cli-*.json as the CLI reads them (paths allowed). To add a
 * case, write NAME.json and run this test with KAPI_WRITE_EXPECTED=1 once: it writes the
 * missing NAME.expected, which must then be read and checked by hand.
 */
#include "kapi.h"
#include "kn_layer.h"
#include "kn_test.h"

#include <cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static char *slurp(const char *path, size_t *size)
{
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    *size = fread(text, 1, (size_t)n, f);
    text[*size] = '\0';
    fclose(f);
    return text;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the *.json files in dir; caller frees each and the array. */
static char **list_json(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    char **names = NULL;
    int n = 0;
    struct dirent *entry;
    while ((entry = readdir(d))) {
        size_t len = strlen(entry->d_name);
        if (len < 6 || strcmp(entry->d_name + len - 5, ".json") != 0) continue;
        names = realloc(names, sizeof *names * (size_t)(n + 1));
        names[n++] = strdup(entry->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, compare_names);
    *count = n;
    return names;
}

/* Parses a file as its name says; returns whether it was valid, errors filled. */
static bool parse_named(const char *name, const char *text, size_t size, kapi_errors *errors)
{
    if (strncmp(name, "model-", 6) == 0) {
        kapi_model_spec *spec = kapi_model_spec_parse(text, size, errors);
        kapi_model_spec_free(spec);
        return spec != NULL;
    }
    kapi_job_parse_options options = {.allow_paths = strncmp(name, "cli-", 4) == 0};
    cr_assert(options.allow_paths || strncmp(name, "job-", 4) == 0,
              "%s: spec files are named model-*, job-* or cli-*", name);
    kapi_job_spec *job = kapi_job_spec_parse(text, size, options, errors);
    kapi_job_spec_free(job);
    return job != NULL;
}

/* text with "{layer types}" replaced by the layer table's spec types ("linear, conv2d,
 * ..."), so that adding a layer does not rewrite every message that lists them. malloc'd. */
static char *with_layer_types(const char *text)
{
    char list[2048] = "";
    size_t used = 0;
    for (int i = 0; i < KN_MODULE_KIND_COUNT; i++) {
        const kn_layer_type *row = kn_layer_at(i);
        if (row->flags & KN_LAYER_CONTAINER) continue;
        used +=
            (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", row->name);
    }
    const char *key = "{layer types}";
    size_t size = strlen(text) + 1;
    for (const char *p = strstr(text, key); p; p = strstr(p + 1, key)) size += used;
    char *out = malloc(size), *o = out;
    for (const char *p = text; *p;) {
        if (strncmp(p, key, strlen(key)) == 0) {
            o += sprintf(o, "%s", list);
            p += strlen(key);
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

Test(spec, every_invalid_spec_gets_its_exact_errors)
{
    const char *dir = KILN_SOURCE_DIR "/tests/specs/invalid";
    int count;
    char **names = list_json(dir, &count);
    cr_assert_geq(count, 40, "the table holds %d broken specs", count);
    bool write = getenv("KAPI_WRITE_EXPECTED") != NULL;
    for (int i = 0; i < count; i++) {
        char path[512], expected_path[512];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        snprintf(expected_path, sizeof expected_path, "%s/%.*s.expected", dir,
                 (int)strlen(names[i]) - 5, names[i]);
        size_t size;
        char *text = slurp(path, &size);
        cr_assert_not_null(text, "%s", path);
        kapi_errors errors = {0};
        bool valid = parse_named(names[i], text, size, &errors);
        cr_assert_not(valid, "%s parsed although it is in the invalid table", names[i]);
        cr_assert_gt(errors.count, 0, "%s: no errors", names[i]);
        char *got = kapi_errors_to_text(&errors);
        size_t expected_size;
        char *expected = slurp(expected_path, &expected_size);
        if (!expected && write) {
            FILE *f = fopen(expected_path, "w");
            fprintf(f, "%s\n", got);
            fclose(f);
        } else {
            cr_assert_not_null(expected, "%s has no .expected; it reports:\n%s", names[i], got);
            while (expected_size && expected[expected_size - 1] == '\n')
                expected[--expected_size] = '\0';
            char *literal = expected;
            expected = with_layer_types(literal);
            free(literal);
            cr_expect_str_eq(got, expected, "%s:\n got:\n%s\n expected:\n%s", names[i], got,
                             expected);
        }
        free(expected);
        free(got);
        kapi_errors_free(&errors);
        free(text);
        free(names[i]);
    }
    free(names);
}

Test(spec, every_valid_spec_and_example_parses)
{
    const char *dirs[] = {KILN_SOURCE_DIR "/tests/specs/valid", KILN_SOURCE_DIR "/examples"};
    int total = 0;
    for (int k = 0; k < 2; k++) {
        int count;
        char **names = list_json(dirs[k], &count);
        for (int i = 0; i < count; i++) {
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dirs[k], names[i]);
            size_t size;
            char *text = slurp(path, &size);
            kapi_errors errors = {0};
            /* examples are CLI jobs: they name local files */
            const char *as = k == 1 ? "cli-example" : names[i];
            bool valid = parse_named(as, text, size, &errors);
            char *report = kapi_errors_to_text(&errors);
            cr_expect(valid, "%s: %s", names[i], report);
            free(report);
            kapi_errors_free(&errors);
            free(text);
            free(names[i]);
            total++;
        }
        free(names);
    }
    cr_assert_geq(total, 10);
}

static kapi_model_spec *parse_file(const char *relative)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", KILN_SOURCE_DIR, relative);
    size_t size;
    char *text = slurp(path, &size);
    cr_assert_not_null(text, "%s", path);
    kapi_errors errors = {0};
    kapi_model_spec *spec = kapi_model_spec_parse(text, size, &errors);
    char *report = kapi_errors_to_text(&errors);
    cr_assert_not_null(spec, "%s: %s", relative, report);
    free(report);
    kapi_errors_free(&errors);
    free(text);
    return spec;
}

static void expect_shape(const int64_t *shape, int ndim, const char *want, const char *what)
{
    char got[96];
    kn_shape_str(shape, ndim, got, sizeof got);
    cr_expect_str_eq(got, want, "%s: %s, expected %s", what, got, want);
}

Test(spec, fmnist_cnn_shapes_and_parameters_match_torch)
{
    kapi_model_spec *spec = parse_file("tests/specs/valid/model-fmnist-cnn.json");
    cr_assert_str_eq(spec->name, "fmnist-cnn");
    cr_assert_eq(spec->n_layers, 10);
    const char *shapes[] = {"[16, 28, 28]", "[16, 28, 28]", "[16, 14, 14]", "[32, 14, 14]",
                            "[32, 14, 14]", "[32, 7, 7]",   "[1568]",       "[128]",
                            "[128]",        "[10]"};
    const int64_t params[] = {160, 0, 0, 4640, 0, 0, 0, 200832, 0, 1290};
    for (int i = 0; i < 10; i++) {
        expect_shape(spec->layers[i].out_shape, spec->layers[i].out_ndim, shapes[i], "layer");
        cr_expect_eq(spec->layers[i].parameter_count, params[i], "layer %d", i);
    }
    cr_assert_eq(spec->parameter_count, 206922); /* sum(p.numel()) in torch */
    cr_assert_eq(spec->layers[3].options.conv2d.in_channels, 16);
    cr_assert_eq(spec->layers[7].options.linear.in_features, 1568);
    cr_assert_eq(spec->layers[2].options.max_pool2d.stride[0], 2,
                 "stride defaults to the kernel size");
    expect_shape(spec->output_shape, spec->output_ndim, "[10]", "output");
    /* weights + grads + 2 Adam states, input and 2x each activation, float32 */
    int64_t acts = 784 + 2 * (12544 * 2 + 3136 + 6272 * 2 + 1568 * 2 + 128 * 2 + 10);
    cr_assert_eq(kapi_model_training_memory(spec, 64, KN_OPTIM_ADAM),
                 4 * 206922 * 4 + 4 * 64 * acts);
    cr_assert_eq(kapi_model_training_memory(spec, 64, KN_OPTIM_SGD),
                 4 * 206922 * 3 + 4 * 64 * acts);
    char *summary = kapi_model_spec_summary_json(spec, 64);
    cJSON *json = cJSON_Parse(summary);
    cr_assert_not_null(json, "%s", summary);
    cr_expect(cJSON_IsTrue(cJSON_GetObjectItem(json, "valid")));
    cr_expect_eq(cJSON_GetObjectItem(json, "parameter_count")->valuedouble, 206922);
    cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(json, "layers")), 10);
    cr_expect_gt(cJSON_GetObjectItem(json, "training_memory_bytes")->valuedouble, 0);
    cJSON_Delete(json);
    free(summary);
    kapi_model_spec_free(spec);
}

Test(spec, other_models_match_torch)
{
    kapi_model_spec *spec = parse_file("tests/specs/valid/model-fmnist-mlp.json");
    cr_expect_eq(spec->parameter_count, 235146);
    kapi_model_spec_free(spec);

    /* every image layer, shapes as torch printed them */
    spec = parse_file("tests/specs/valid/model-image-zoo.json");
    const char *zoo[] = {"[8, 32, 16]", "[8, 32, 16]", "[8, 32, 16]", "[16, 28, 14]", "[16, 15, 8]",
                         "[16, 8, 4]",  "[16, 8, 4]",  "[16, 2, 3]",  "[96]",         "[96]",
                         "[96]",        "[32]",        "[32]",        "[32]",         "[32]",
                         "[10]",        "[10]"};
    cr_assert_eq(spec->n_layers, 17);
    for (int i = 0; i < 17; i++)
        expect_shape(spec->layers[i].out_shape, spec->layers[i].out_ndim, zoo[i], "zoo layer");
    cr_expect_eq(spec->parameter_count, 4466);
    cr_expect_eq(spec->layers[9].options.batch_norm.num_features, 96);
    cr_expect(!spec->layers[5].options.avg_pool2d.count_include_pad);
    cr_expect_eq(spec->layers[6].options.gelu.approximate, KN_GELU_TANH);
    kapi_model_spec_free(spec);

    spec = parse_file("tests/specs/valid/model-sequence.json");
    const char *seq[] = {"[16, 32]", "[16, 32]", "[16, 64]", "[16, 64]", "[1024]", "[4]", "[4]"};
    for (int i = 0; i < 7; i++)
        expect_shape(spec->layers[i].out_shape, spec->layers[i].out_ndim, seq[i], "seq layer");
    cr_expect_eq(spec->parameter_count, 10436);
    cr_expect_str_eq(spec->name, "model", "the default name");
    kapi_model_spec_free(spec);

    spec = parse_file("tests/specs/valid/model-conv1d-ish.json");
    cr_expect_eq(spec->parameter_count, 90);
    kapi_model_spec_free(spec);
}

Test(spec, built_model_matches_the_spec)
{
    kn_scope_begin();
    kapi_model_spec *spec = parse_file("tests/specs/valid/model-fmnist-cnn.json");
    kn_generator *gen = kn_generator_new(0);
    kn_module *model = kapi_model_build(spec, gen);
    cr_assert_not_null(model, "%s", kn_last_error());
    cr_expect_eq(kn_module_parameter_count(model), spec->parameter_count);
    int count;
    kn_named_tensor *state = kn_module_state_dict(model, &count);
    cr_assert_eq(count, 8);
    cr_expect_str_eq(state[0].name, "0.weight");
    cr_expect_str_eq(state[7].name, "9.bias");
    free(state);
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 1, 28, 28), KN_FLOAT32);
    kn_tensor *y = kn_module_forward(model, x);
    cr_assert_not_null(y, "%s", kn_last_error());
    KN_ASSERT_SHAPE(y, ((int64_t[]){2, 10}), 2);
    kn_module_free(model);
    kn_generator_free(gen);
    kapi_model_spec_free(spec);

    spec = parse_file("tests/specs/valid/model-image-zoo.json");
    model = kapi_model_build(spec, NULL);
    cr_assert_not_null(model, "%s", kn_last_error());
    cr_expect_eq(kn_module_parameter_count(model), 4466);
    kn_module_free(model);
    kapi_model_spec_free(spec);
    kn_scope_end();
}

static kapi_job_spec *parse_job(const char *relative, bool allow_paths)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", KILN_SOURCE_DIR, relative);
    size_t size;
    char *text = slurp(path, &size);
    cr_assert_not_null(text, "%s", path);
    kapi_errors errors = {0};
    kapi_job_spec *job =
        kapi_job_spec_parse(text, size, (kapi_job_parse_options){allow_paths}, &errors);
    char *report = kapi_errors_to_text(&errors);
    cr_assert_not_null(job, "%s: %s", relative, report);
    free(report);
    kapi_errors_free(&errors);
    free(text);
    return job;
}

Test(spec, init_weights_and_run_name)
{
    kapi_job_spec *job = parse_job("tests/specs/valid/job-init-weights-version.json", false);
    cr_expect_str_eq(job->init_version, "production");
    cr_expect_str_eq(job->init_job, "");
    cr_expect_str_eq(job->init_weights, "");
    cr_expect_str_eq(job->run_name, "lr 0.01 baseline (\xc3\xa9)");
    kapi_job_spec_free(job);
    job = parse_job("tests/specs/valid/job-init-weights-job.json", false);
    cr_expect_str_eq(job->init_job, "job_0123456789abcdef");
    cr_expect_str_eq(job->init_version, "");
    cr_expect_str_eq(job->run_name, "");
    kapi_job_spec_free(job);
}

Test(spec, job_fields_land_in_the_train_config)
{
    kapi_job_spec *job = parse_job("tests/specs/valid/job-server.json", false);
    const kn_train_config *c = &job->train;
    cr_expect_str_eq(job->model_name, "fmnist-cnn");
    cr_expect_null(job->model);
    cr_expect_str_eq(job->data.dataset, "fmnist");
    cr_expect_float_eq(job->data.validation_split, 0.1, 0);
    cr_expect_float_eq(job->data.scale, 1.0 / 255, 1e-15);
    cr_expect_eq(job->data.channels, 1);
    cr_expect_float_eq(job->data.mean[0], 0.2860, 0);
    cr_expect_float_eq(job->data.std[0], 0.3530, 0);
    cr_expect_eq(c->loss, KN_LOSS_CROSS_ENTROPY);
    cr_expect_float_eq(c->label_smoothing, 0.1, 0);
    cr_expect_eq(c->optimizer.kind, KN_OPTIM_ADAMW);
    cr_expect_float_eq(c->optimizer.lr, 0.002, 0);
    cr_expect_float_eq(c->optimizer.beta1, 0.8, 0);
    cr_expect_float_eq(c->optimizer.beta2, 0.99, 0);
    cr_expect_float_eq(c->optimizer.eps, 1e-7, 0);
    cr_expect_float_eq(c->optimizer.weight_decay, 0.05, 0);
    cr_expect(c->optimizer.amsgrad);
    cr_expect_eq(c->lr_schedule.kind, KN_LR_COSINE);
    cr_expect_eq(c->lr_schedule.t_max, 1000);
    cr_expect_float_eq(c->lr_schedule.eta_min, 1e-5, 0);
    cr_expect_eq(c->lr_schedule.warmup_steps, 100);
    cr_expect_float_eq(c->lr_schedule.warmup_start_factor, 0.1, 0);
    cr_expect_eq(c->batch_size, 128);
    cr_expect_eq(c->max_steps, 1000);
    cr_expect_eq(c->seed, 42);
    cr_expect_not(c->shuffle);
    cr_expect(c->drop_last);
    cr_expect_str_eq(job->device, "cuda:1");
    cr_expect(job->allow_tf32);
    cr_expect_eq(c->eval_every_steps, 200);
    cr_expect_eq(c->eval_batch_size, 500);
    cr_expect_eq(c->checkpoint_every_steps, 250);
    cr_expect_float_eq(c->grad_clip_norm, 1.0, 0);
    cr_expect(c->skip_non_finite);
    cr_expect_eq(c->early_stopping_patience, 3);
    cr_expect_float_eq(c->early_stopping_min_delta, 0.001, 0);
    cr_expect_str_eq(job->submission_id, "sub-0001");
    kapi_job_spec_free(job);

    job = parse_job("tests/specs/valid/cli-csv-sgd.json", true);
    c = &job->train;
    cr_expect_eq(job->data.train.format, KAPI_FORMAT_CSV);
    cr_expect_str_eq(job->data.train.inputs_path, "iris.csv");
    cr_expect_str_eq(job->data.train.label_column, "species");
    cr_expect_eq(job->data.test.format, KAPI_FORMAT_NPY);
    cr_expect_str_eq(job->data.test.labels_path, "y.npy");
    cr_expect_eq(c->loss, KN_LOSS_NLL);
    cr_expect_eq(c->optimizer.kind, KN_OPTIM_SGD);
    cr_expect(c->optimizer.nesterov);
    cr_expect_float_eq(c->optimizer.momentum, 0.9, 0);
    cr_expect_eq(c->lr_schedule.kind, KN_LR_STEP);
    cr_expect_eq(c->lr_schedule.step_size, 30);
    cr_expect_float_eq(c->lr_schedule.gamma, 0.5, 0);
    cr_expect_eq(c->epochs, 3);
    cr_expect_eq(c->max_steps, 0);
    cr_expect_str_eq(job->device, "auto");
    cr_expect_str_eq(job->resume_from, "ckpt/step-100.safetensors");
    kapi_job_spec_free(job);

    job = parse_job("tests/specs/valid/cli-rmsprop.json", true);
    c = &job->train;
    cr_expect_eq(c->loss, KN_LOSS_BCE_WITH_LOGITS);
    cr_expect_eq(c->optimizer.kind, KN_OPTIM_RMSPROP);
    cr_expect_float_eq(c->optimizer.alpha, 0.9, 0);
    cr_expect(c->optimizer.centered);
    cr_expect_float_eq(c->optimizer.weight_decay, 0.01, 0);
    cr_expect_eq(c->optimizer.weight_decay_params, KN_DECAY_MATRICES);
    cr_expect_eq(c->lr_schedule.warmup_steps, 10);
    cr_expect_str_eq(job->init_weights, "torch.safetensors");
    kapi_job_spec_free(job);
}

Test(spec, job_defaults_are_torchs)
{
    kapi_job_spec *job = parse_job("tests/specs/valid/job-minimal.json", false);
    const kn_train_config *c = &job->train;
    cr_assert_not_null(job->model);
    cr_expect_eq(job->model->parameter_count, 15);
    cr_expect_eq(c->loss, KN_LOSS_CROSS_ENTROPY);
    cr_expect_eq(c->optimizer.kind, KN_OPTIM_ADAM);
    cr_expect_float_eq(c->optimizer.lr, 1e-3, 0);
    cr_expect_float_eq(c->optimizer.beta1, 0.9, 0);
    cr_expect_float_eq(c->optimizer.beta2, 0.999, 0);
    cr_expect_float_eq(c->optimizer.eps, 1e-8, 0);
    cr_expect_float_eq(c->optimizer.weight_decay, 0, 0);
    cr_expect_eq(c->optimizer.weight_decay_params, KN_DECAY_ALL);
    cr_expect_eq(c->lr_schedule.kind, KN_LR_CONSTANT);
    cr_expect_eq(c->batch_size, 64);
    cr_expect_eq(c->epochs, 1);
    cr_expect_eq(c->max_steps, 0);
    cr_expect_eq(c->seed, 0);
    cr_expect(c->shuffle);
    cr_expect_not(c->drop_last);
    cr_expect_eq(c->eval_batch_size, 1000);
    cr_expect_str_eq(job->device, "cpu");
    cr_expect_not(job->allow_tf32, "TF32 is opt-in, as in torch");
    cr_expect_float_eq(job->data.scale, 1, 0);
    kapi_job_spec_free(job);

    /* per-optimizer defaults, as torch.optim */
    const char *docs[] = {
        "{\"model\": \"m\", \"data\": {\"dataset\": \"d\"}, \"optimizer\": {\"type\": \"adamw\"}}",
        "{\"model\": \"m\", \"data\": {\"dataset\": \"d\"}, \"optimizer\": {\"type\": \"sgd\"}}",
        "{\"model\": \"m\", \"data\": {\"dataset\": \"d\"}, \"optimizer\": {\"type\": "
        "\"rmsprop\"}}",
        "{\"model\": \"m\", \"data\": {\"dataset\": \"d\"}, \"lr_schedule\": {\"type\": \"step\", "
        "\"step_size\": 5}}"};
    kapi_errors errors = {0};
    kapi_job_spec *j[4];
    for (int i = 0; i < 4; i++) {
        j[i] = kapi_job_spec_parse(docs[i], strlen(docs[i]), (kapi_job_parse_options){0}, &errors);
        cr_assert_not_null(j[i], "%s", errors.count ? errors.items[0].message : "");
    }
    cr_expect_float_eq(j[0]->train.optimizer.weight_decay, 0.01, 0);
    cr_expect_float_eq(j[0]->train.optimizer.lr, 1e-3, 0);
    cr_expect_float_eq(j[1]->train.optimizer.lr, 0.01, 0);
    cr_expect_float_eq(j[1]->train.optimizer.momentum, 0, 0);
    cr_expect_float_eq(j[2]->train.optimizer.lr, 0.01, 0);
    cr_expect_float_eq(j[2]->train.optimizer.alpha, 0.99, 0);
    cr_expect_float_eq(j[2]->train.optimizer.eps, 1e-8, 0);
    cr_expect_float_eq(j[3]->train.lr_schedule.gamma, 0.1, 0);
    cr_expect_float_eq(j[3]->train.lr_schedule.warmup_start_factor, 1.0 / 3, 0);
    for (int i = 0; i < 4; i++) kapi_job_spec_free(j[i]);
}

Test(spec, examples_load_fashion_mnist_test_set)
{
    const char *t10k = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    if (access(t10k, R_OK) != 0) cr_skip_test("Fashion-MNIST is not installed");
    kn_scope_begin();
    const char *examples[] = {"examples/fmnist-mlp.json", "examples/fmnist-cnn.json"};
    const int64_t params[] = {235146, 206922};
    for (int k = 0; k < 2; k++) {
        kapi_job_spec *job = parse_job(examples[k], true);
        cr_assert_not_null(job->model);
        cr_expect_eq(job->model->parameter_count, params[k]);
        cr_expect_eq(job->train.optimizer.kind, KN_OPTIM_ADAM);
        cr_expect_float_eq(job->train.optimizer.lr, 1e-3, 0);
        cr_expect_eq(job->train.batch_size, 64);
        cr_expect_eq(job->train.epochs, 1);
        cr_expect_float_eq(job->data.scale, 1.0 / 255, 1e-15);
        if (k == 1) {
            kapi_errors errors = {0};
            kn_dataset *test = kapi_load_data_source(&job->data.test, &errors);
            cr_assert_not_null(test, "%s", errors.count ? errors.items[0].message : "");
            cr_expect_eq(test->count, 10000);
            cr_expect_eq(test->num_classes, 10);
            cr_assert(kapi_dataset_fit_model(test, job->model, "data.test", &errors));
            KN_ASSERT_SHAPE(test->inputs, ((int64_t[]){10000, 1, 28, 28}), 4);
            kn_dataset_free(test);
            kapi_errors_free(&errors);
        }
        kapi_job_spec_free(job);
    }
    kn_scope_end();
}

/* examples/fmnist-resnet.json: a graph spec whose modules carry torch's nested names
 * (bench/fmnist/torch_fmnist.py's ResNet loads them strictly), trained as the other
 * examples are; runs without the dataset (the model and the recipe only). */
Test(spec, resnet_example_is_the_torch_module)
{
    kn_scope_begin();
    kapi_job_spec *job = parse_job("examples/fmnist-resnet.json", true);
    cr_assert_not_null(job->model);
    cr_assert(job->model->graph);
    cr_expect_eq(job->model->parameter_count, 22042);
    cr_expect_eq(job->train.optimizer.kind, KN_OPTIM_ADAM);
    cr_expect_float_eq(job->train.optimizer.lr, 1e-3, 0);
    cr_expect_eq(job->train.batch_size, 64);
    cr_expect_eq(job->train.epochs, 2);
    kn_generator *gen = kn_generator_new(0);
    kn_module *m = kapi_model_build(job->model, gen);
    cr_assert_not_null(m, "%s", kn_last_error());
    int n;
    kn_named_tensor *state = kn_module_state_dict(m, &n);
    /* stem conv + bn (weight, bias, 3 buffers), 3 blocks of 2 convs and 2 bns, fc */
    cr_assert_eq(n, 1 + 5 + 3 * (2 + 2 * 5) + 2);
    cr_expect_str_eq(state[0].name, "stem.conv.weight");
    cr_expect_str_eq(state[6].name, "layers.0.conv1.weight");
    cr_expect_str_eq(state[n - 3].name, "layers.2.bn2.num_batches_tracked");
    cr_expect_str_eq(state[n - 2].name, "fc.weight");
    KN_ASSERT_SHAPE(state[n - 2].tensor, ((int64_t[]){10, 784}), 2);
    free(state);
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 1, 28, 28), KN_FLOAT32);
    kn_tensor *y = kn_module_forward(m, x);
    cr_assert_not_null(y, "%s", kn_last_error());
    KN_ASSERT_SHAPE(y, ((int64_t[]){2, 10}), 2);
    kn_module_free(m);
    kn_generator_free(gen);
    kapi_job_spec_free(job);
    kn_scope_end();
}

/* A temporary directory for file tests. */
static void temp_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/kapi-test-%d-%s", KILN_BINARY_DIR, (int)getpid(), name);
}

Test(spec, read_file_gunzips_and_names_the_file)
{
    char plain[512], gz[512], bad[512];
    temp_path(plain, sizeof plain, "plain.txt");
    temp_path(gz, sizeof gz, "two-members.gz");
    temp_path(bad, sizeof bad, "truncated.gz");
    FILE *f = fopen(plain, "wb");
    fputs("hello", f);
    fclose(f);
    /* two gzip members back to back, as `cat a.gz b.gz` makes */
    gzFile z = gzopen(gz, "wb");
    gzputs(z, "hello ");
    gzclose(z);
    z = gzopen(gz, "ab");
    for (int i = 0; i < 10000; i++) gzputs(z, "0123456789");
    gzclose(z);
    size_t size;
    char *gz_bytes = slurp(gz, &size);
    f = fopen(bad, "wb");
    fwrite(gz_bytes, 1, size / 2, f);
    fclose(f);
    free(gz_bytes);

    kapi_errors errors = {0};
    char *text = kapi_read_file(plain, &size, &errors);
    cr_assert_not_null(text);
    cr_expect_eq(size, 5);
    cr_expect_eq(memcmp(text, "hello", 5), 0);
    free(text);
    text = kapi_read_file(gz, &size, &errors);
    cr_assert_not_null(text, "%s", errors.count ? errors.items[0].message : "");
    cr_expect_eq(size, 6 + 100000);
    cr_expect_eq(memcmp(text, "hello 0123", 10), 0);
    free(text);
    cr_assert_eq(errors.count, 0);
    cr_expect_null(kapi_read_file(bad, &size, &errors));
    cr_assert_eq(errors.count, 1);
    cr_expect_str_eq(errors.items[0].path, bad);
    cr_expect_str_eq(errors.items[0].message,
                     "corrupt or truncated gzip data (unexpected end of the file)");
    cr_expect_null(kapi_read_file("/nonexistent/x.gz", &size, &errors));
    cr_assert_eq(errors.count, 2);
    cr_expect_str_eq(errors.items[1].path, "/nonexistent/x.gz");
    cr_expect_str_eq(errors.items[1].message, "cannot open: No such file or directory");
    kapi_errors_free(&errors);
    remove(plain);
    remove(gz);
    remove(bad);
}

Test(spec, load_data_source_reports_a_bad_file)
{
    kn_scope_begin();
    char csv[512];
    temp_path(csv, sizeof csv, "data.csv");
    FILE *f = fopen(csv, "w");
    fputs("a,label,b\n1,0,2\n3,1,4\n5,2,6\n", f);
    fclose(f);
    kapi_data_source source = {.present = true, .format = KAPI_FORMAT_CSV};
    snprintf(source.inputs_path, sizeof source.inputs_path, "%s", csv);
    snprintf(source.label_column, sizeof source.label_column, "label");
    kapi_errors errors = {0};
    kn_dataset *ds = kapi_load_data_source(&source, &errors);
    cr_assert_not_null(ds, "%s", errors.count ? errors.items[0].message : "");
    cr_expect_eq(ds->count, 3);
    KN_ASSERT_CLOSE(ds->inputs, {1, 2, 3, 4, 5, 6});
    /* a model with 3 outputs takes labels 0..2; one with 2 does not */
    const char *spec_text = "{\"input_shape\": [2], \"layers\": [{\"type\": \"linear\", "
                            "\"out_features\": 2}]}";
    kapi_model_spec *spec = kapi_model_spec_parse(spec_text, strlen(spec_text), &errors);
    cr_assert_not_null(spec);
    cr_expect_not(kapi_dataset_fit_model(ds, spec, "data.train", &errors));
    cr_assert_eq(errors.count, 1);
    cr_expect_str_eq(errors.items[0].path, "data.train");
    cr_expect_str_eq(errors.items[0].message, "labels go up to 2 but the model outputs 2 classes");
    kapi_model_spec_free(spec);
    kn_dataset_free(ds);
    kapi_errors_free(&errors);

    source.format = KAPI_FORMAT_IDX;
    snprintf(source.labels_path, sizeof source.labels_path, "%s", csv);
    cr_expect_null(kapi_load_data_source(&source, &errors));
    cr_assert_eq(errors.count, 1);
    cr_expect_str_eq(errors.items[0].path, csv, "the error names the file");
    kapi_errors_free(&errors);
    remove(csv);
    kn_scope_end();
}

Test(spec, errors_render_as_json_bodies)
{
    const char *text = "{\"input_shape\": [4], \"layers\": [{\"type\": \"relu\", \"inplace\": 1}]}";
    kapi_errors errors = {0};
    cr_assert_null(kapi_model_spec_parse(text, strlen(text), &errors));
    char *body = kapi_errors_to_json(&errors, "invalid_spec");
    cJSON *json = cJSON_Parse(body);
    cJSON *error = cJSON_GetObjectItem(json, "error");
    cr_expect_str_eq(cJSON_GetObjectItem(error, "code")->valuestring, "invalid_spec");
    cr_expect_str_eq(cJSON_GetObjectItem(error, "message")->valuestring,
                     "layers[0].inplace: expected true or false, got 1");
    cJSON *detail = cJSON_GetArrayItem(cJSON_GetObjectItem(error, "details"), 0);
    cr_expect_str_eq(cJSON_GetObjectItem(detail, "path")->valuestring, "layers[0].inplace");
    cJSON_Delete(json);
    free(body);
    kapi_errors_free(&errors);
}

/* Deterministic mutations of valid documents: truncations, byte flips, insertions.
 * None may crash or leak (ASan checks); each either parses or reports errors. */
Test(spec, mutated_documents_never_crash)
{
    const char *files[] = {"tests/specs/valid/model-image-zoo.json",
                           "tests/specs/valid/job-server.json",
                           "tests/specs/valid/cli-csv-sgd.json"};
    const char alphabet[] = "{}[]\",:0-9.eE tfn\\\x01\xff";
    uint32_t state = 12345;
    for (int k = 0; k < 3; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", KILN_SOURCE_DIR, files[k]);
        size_t size;
        char *text = slurp(path, &size);
        char *copy = malloc(size + 1);
        for (int round = 0; round < 1500; round++) {
            memcpy(copy, text, size);
            size_t n = size;
            for (int m = 0; m < 1 + round % 3; m++) {
                state = state * 1664525u + 1013904223u;
                size_t at = (state >> 8) % n;
                state = state * 1664525u + 1013904223u;
                char c = alphabet[(state >> 8) % (sizeof alphabet - 1)];
                if (round % 7 == 0)
                    n = at + 1; /* truncate */
                else
                    copy[at] = c;
            }
            kapi_errors errors = {0};
            bool valid = parse_named(k == 0   ? "model-"
                                     : k == 1 ? "job-"
                                              : "cli-",
                                     copy, n, &errors);
            cr_assert(valid || errors.count > 0);
            kapi_errors_free(&errors);
        }
        free(copy);
        free(text);
    }
}

/* Integers above 10^15 keep every digit through JSON: cJSON's own number printing
 * rounds one in five of them to 15 significant digits (a drawn seed that then did not
 * repeat its generation). */
Test(spec, large_integers_keep_every_digit_in_json)
{
    const int64_t values[] = {
        0, 1, 999999999999999LL, 6089867188184006LL, 9007199254740991LL, -9007199254740991LL};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "seed", kapi_json_integer(values[i]));
        char *text = cJSON_PrintUnformatted(o);
        cJSON *back = cJSON_Parse(text);
        cr_assert_not_null(back, "%s", text);
        const cJSON *seed = cJSON_GetObjectItemCaseSensitive(back, "seed");
        cr_assert(cJSON_IsNumber(seed), "%s", text);
        cr_assert_eq((int64_t)seed->valuedouble, values[i], "%s", text);
        free(text);
        cJSON_Delete(back);
        cJSON_Delete(o);
    }
}
