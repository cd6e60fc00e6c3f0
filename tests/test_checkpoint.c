/*
 * test_checkpoint.c — checkpoints and weights files: round trips, metadata, errors that
 * name the file and the entry, and (when /usr/bin/python3 has torch) a checkpoint of a
 * small trained CNN parsed by hand in Python, loaded into the equivalent
 * torch.nn.Sequential with load_state_dict, giving the same logits within 1e-4.
 */
#include "kn_data.h"
#include "kn_nn.h"
#include "kn_safetensors.h"
#include "kn_test.h"
#include "kn_train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Conv2d(1,4,3,p1) ReLU MaxPool2d(2) Flatten Linear(64, 8) ReLU Linear(8, 3) on 8x8. */
static kn_module *small_cnn(uint64_t seed)
{
    kn_manual_seed(seed);
    kn_module *m = kn_sequential_new();
    kn_conv2d_args conv = {.padding = {1, 1}};
    kn_pool2d_args pool = {.kernel_size = {2, 2}};
    cr_assert_eq(kn_sequential_append(m, kn_conv2d_new(1, 4, (int[]){3, 3}, conv, true, NULL)),
                 KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_sequential_append(m, kn_relu_new()), KN_OK);
    cr_assert_eq(kn_sequential_append(m, kn_max_pool2d_new(pool)), KN_OK);
    cr_assert_eq(kn_sequential_append(m, kn_flatten_new(1, -1)), KN_OK);
    cr_assert_eq(kn_sequential_append(m, kn_linear_new(64, 8, true, NULL)), KN_OK);
    cr_assert_eq(kn_sequential_append(m, kn_relu_new()), KN_OK);
    cr_assert_eq(kn_sequential_append(m, kn_linear_new(8, 3, true, NULL)), KN_OK);
    return m;
}

static kn_dataset *images(int64_t n, uint64_t seed)
{
    kn_generator *gen = kn_generator_new(seed);
    kn_tensor *x = kn_rand(KN_SHAPE(n, 1, 8, 8), gen);
    kn_tensor *y = kn_zeros(KN_SHAPE(n), KN_INT64);
    float *xd = kn_data_f32(x);
    int64_t *yd = kn_data_i64(y);
    for (int64_t i = 0; i < n; i++) {
        yd[i] = i % 3;
        for (int j = 0; j < 8; j++) /* class c brightens row 2c */
            xd[i * 64 + 2 * yd[i] * 8 + j] += 1.0f;
    }
    kn_dataset *ds = kn_dataset_new(x, y);
    kn_generator_free(gen);
    cr_assert_not_null(ds, "%s", kn_last_error());
    return ds;
}

static void temp_path(char *path, size_t size, const char *suffix)
{
    snprintf(path, size, "/tmp/kiln_test_ckpt_%d_%s", (int)getpid(), suffix);
}

static kn_trainer *trained(kn_module *m, kn_dataset *ds)
{
    kn_train_config c = kn_train_config_defaults();
    c.batch_size = 16;
    c.max_steps = 5;
    c.seed = 1;
    kn_trainer *t = kn_trainer_new(m, &c);
    cr_assert_not_null(t, "%s", kn_last_error());
    cr_assert_eq(kn_trainer_run(t, ds, NULL, NULL, NULL), KN_OK, "%s", kn_last_error());
    return t;
}

Test(checkpoint, metadata_and_entries)
{
    kn_scope_begin();
    char path[256];
    temp_path(path, sizeof path, "meta.safetensors");
    kn_dataset *ds = images(48, 1);
    kn_module *m = small_cnn(0);
    kn_trainer *t = trained(m, ds);
    cr_assert_eq(kn_trainer_save_checkpoint(t, path), KN_OK, "%s", kn_last_error());
    kn_safetensors *f = kn_safetensors_load(path);
    cr_assert_not_null(f, "%s", kn_last_error());
    cr_assert_str_eq(kn_safetensors_get_meta(f, "step"), "5");
    cr_assert_str_eq(kn_safetensors_get_meta(f, "epoch"), "1");
    cr_assert_str_eq(kn_safetensors_get_meta(f, "batch_in_epoch"), "2");
    cr_assert_str_eq(kn_safetensors_get_meta(f, "seed"), "1");
    cr_assert_not_null(kn_safetensors_get_meta(f, "rng_state"));
    const char *names[] = {"0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"};
    for (int i = 0; i < 6; i++)
        cr_assert_not_null(kn_safetensors_get(f, names[i]), "%s missing", names[i]);
    bool has_optimizer = false;
    for (int i = 0; i < f->count; i++)
        has_optimizer |= strncmp(f->entries[i].name, "optimizer.", 10) == 0;
    cr_assert(has_optimizer, "no optimizer state in the checkpoint");
    kn_safetensors_free(f);

    /* a checkpoint loads into a fresh trainer, and weights alone into a fresh model */
    kn_module *m2 = small_cnn(42);
    kn_train_config c = kn_train_config_defaults();
    c.batch_size = 16;
    kn_trainer *t2 = kn_trainer_new(m2, &c);
    cr_assert_eq(kn_trainer_load_checkpoint(t2, path), KN_OK, "%s", kn_last_error());
    cr_assert_eq(kn_trainer_step(t2), 5);
    kn_module *m3 = small_cnn(43);
    cr_assert_eq(kn_module_load_weights(m3, path, true), KN_OK, "%s", kn_last_error());
    kn_tensor *x = kn_rand(KN_SHAPE(2, 1, 8, 8), NULL);
    kn_tensor *y1 = kn_module_forward(m, x), *y2 = kn_module_forward(m2, x),
              *y3 = kn_module_forward(m3, x);
    float a[6], b[6], d[6];
    kn_copy_to_floats(y1, a);
    kn_copy_to_floats(y2, b);
    kn_copy_to_floats(y3, d);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    cr_assert_eq(memcmp(a, d, sizeof a), 0);

    /* a different batch size cannot resume the same sequence */
    c.batch_size = 8;
    kn_trainer *t3 = kn_trainer_new(m3, &c);
    cr_assert_neq(kn_trainer_load_checkpoint(t3, path), KN_OK);
    cr_assert(strstr(kn_last_error(), "batch_size 16") != NULL, "%s", kn_last_error());
    kn_trainer_free(t3);
    kn_trainer_free(t2);
    kn_trainer_free(t);
    kn_module_free(m);
    kn_module_free(m2);
    kn_module_free(m3);
    kn_dataset_free(ds);
    unlink(path);
    kn_scope_end();
}

Test(checkpoint, weights_errors_name_the_entry)
{
    kn_scope_begin();
    char path[256];
    temp_path(path, sizeof path, "weights.safetensors");
    kn_module *m = small_cnn(0);
    cr_assert_eq(kn_module_save_weights(m, path), KN_OK, "%s", kn_last_error());
    /* a model whose last layer has another shape */
    kn_module *other = kn_sequential_new();
    kn_conv2d_args conv = {.padding = {1, 1}};
    kn_pool2d_args pool = {.kernel_size = {2, 2}};
    kn_sequential_append(other, kn_conv2d_new(1, 4, (int[]){3, 3}, conv, true, NULL));
    kn_sequential_append(other, kn_relu_new());
    kn_sequential_append(other, kn_max_pool2d_new(pool));
    kn_sequential_append(other, kn_flatten_new(1, -1));
    kn_sequential_append(other, kn_linear_new(64, 8, true, NULL));
    kn_sequential_append(other, kn_relu_new());
    kn_sequential_append(other, kn_linear_new(8, 5, true, NULL));
    cr_assert_neq(kn_module_load_weights(other, path, true), KN_OK);
    cr_assert(strstr(kn_last_error(), "6.weight") != NULL, "%s", kn_last_error());
    cr_assert(strstr(kn_last_error(), path) != NULL, "%s", kn_last_error());
    /* weights are not a checkpoint */
    kn_train_config c = kn_train_config_defaults();
    kn_trainer *t = kn_trainer_new(m, &c);
    cr_assert_neq(kn_trainer_load_checkpoint(t, path), KN_OK);
    cr_assert(strstr(kn_last_error(), "not a Kiln checkpoint") != NULL, "%s", kn_last_error());
    cr_assert_neq(kn_module_load_weights(m, "/nonexistent/w.safetensors", true), KN_OK);
    cr_assert(strstr(kn_last_error(), "/nonexistent/w.safetensors") != NULL, "%s", kn_last_error());
    kn_trainer_free(t);
    kn_module_free(m);
    kn_module_free(other);
    unlink(path);
    kn_scope_end();
}

static const char *PY_CHECK =
    "import json, struct, sys\n"
    "import numpy as np, torch\n"
    "def load(path):\n"
    "    raw = open(path, 'rb').read()\n"
    "    n = struct.unpack('<Q', raw[:8])[0]\n"
    "    header = json.loads(raw[8:8 + n])\n"
    "    out = {}\n"
    "    for name, e in header.items():\n"
    "        if name == '__metadata__':\n"
    "            continue\n"
    "        dt = {'F32': np.float32, 'I64': np.int64}[e['dtype']]\n"
    "        a, b = e['data_offsets']\n"
    "        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt).reshape(e['shape'])\n"
    "        out[name] = torch.from_numpy(arr.copy())\n"
    "    return out\n"
    "ckpt = load(sys.argv[1])\n"
    "io = load(sys.argv[2])\n"
    "state = {k: v for k, v in ckpt.items() if not k.startswith('optimizer.')}\n"
    "nn = torch.nn\n"
    "model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
    "                      nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))\n"
    "model.load_state_dict(state)\n"
    "model.eval()\n"
    "with torch.no_grad():\n"
    "    logits = model(io['inputs'])\n"
    "diff = (logits - io['logits']).abs().max().item()\n"
    "print('max abs difference', diff)\n"
    "sys.exit(0 if diff <= 1e-4 else 1)\n";

Test(checkpoint, loads_into_pytorch_with_the_same_logits)
{
    if (system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") != 0) {
        printf("checkpoint.loads_into_pytorch_with_the_same_logits: skipped "
               "(no /usr/bin/python3 with torch)\n");
        return;
    }
    kn_scope_begin();
    char ckpt[256], io[256], script[256];
    temp_path(ckpt, sizeof ckpt, "torch.safetensors");
    temp_path(io, sizeof io, "io.safetensors");
    temp_path(script, sizeof script, "check.py");
    kn_dataset *ds = images(64, 3);
    kn_module *m = small_cnn(0);
    kn_trainer *t = trained(m, ds);
    cr_assert_eq(kn_trainer_save_checkpoint(t, ckpt), KN_OK, "%s", kn_last_error());
    kn_module_train(m, false);
    kn_tensor *inputs = kn_narrow(ds->inputs, 0, 0, 32);
    kn_tensor *logits = kn_module_forward(m, inputs);
    cr_assert_not_null(logits, "%s", kn_last_error());
    const char *names[] = {"inputs", "logits"};
    kn_tensor *tensors[] = {inputs, kn_detach(logits)};
    cr_assert_eq(kn_safetensors_save(io, names, tensors, 2, NULL, 0), KN_OK, "%s", kn_last_error());
    FILE *f = fopen(script, "w");
    cr_assert_not_null(f);
    fputs(PY_CHECK, f);
    fclose(f);
    char command[1024];
    snprintf(command, sizeof command, "/usr/bin/python3 %s %s %s", script, ckpt, io);
    int rc = system(command);
    cr_assert_eq(rc, 0, "PyTorch's logits differ from Kiln's (or the script failed)");
    kn_trainer_free(t);
    kn_module_free(m);
    kn_dataset_free(ds);
    unlink(ckpt);
    unlink(io);
    unlink(script);
    kn_scope_end();
}
