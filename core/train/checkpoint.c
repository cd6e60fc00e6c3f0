/*
 * checkpoint.c — the trainer's checkpoints and a module's weights as safetensors files.
 * Model tensors go under PyTorch's state_dict names, so safetensors.torch.load_file gives
 * a dict that load_state_dict accepts (after dropping the "optimizer." entries of a
 * checkpoint); optimizer state goes under "optimizer.<name>"; the position of the run
 * (step, epoch, batch_in_epoch, seed), early-stopping state and the default generator's
 * state (hex) go into the metadata, so a resumed run continues the same sequence, dropout
 * masks included.
 */
#include "kn_internal.h"
#include "kn_safetensors.h"
#include "kn_train_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECKPOINT_FORMAT "kiln-checkpoint-1"
#define OPTIMIZER_PREFIX "optimizer."

/* ---- hex for the generator state ----------------------------------------------------- */

static char *hex_encode(const unsigned char *bytes, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char *out = malloc(2 * n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes exactly n bytes; false when the text is not 2n hex digits. */
static bool hex_decode(const char *text, unsigned char *out, size_t n)
{
    if (strlen(text) != 2 * n) return false;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

/* ---- weights ------------------------------------------------------------------------- */

/* Saves the state dict plus extra tensors. Tensors are copied to the CPU first. */
static kn_status save_state(const kn_module *model, const char *path,
                            const kn_optimizer_state_entry *extra, int n_extra,
                            const kn_safetensors_meta *meta, int n_meta)
{
    int n = 0;
    kn_named_tensor *state = kn_module_state_dict(model, &n);
    if (!state && n > 0) return kn__error(KN_ERR_MEMORY, "save %s: out of memory", path);
    int total = n + n_extra;
    const char **names = calloc(total > 0 ? (size_t)total : 1, sizeof *names);
    kn_tensor **tensors = calloc(total > 0 ? (size_t)total : 1, sizeof *tensors);
    char(*extra_names)[96] = calloc(n_extra > 0 ? (size_t)n_extra : 1, sizeof *extra_names);
    kn_status st = KN_OK;
    if (!names || !tensors || !extra_names)
        st = kn__error(KN_ERR_MEMORY, "save %s: out of memory", path);
    kn_scope_begin();
    for (int i = 0; st == KN_OK && i < total; i++) {
        kn_tensor *t;
        if (i < n) {
            names[i] = state[i].name;
            t = state[i].tensor;
        } else {
            snprintf(extra_names[i - n], sizeof extra_names[i - n], "%s%s", OPTIMIZER_PREFIX,
                     extra[i - n].name);
            names[i] = extra_names[i - n];
            t = extra[i - n].tensor;
        }
        tensors[i] = kn_detach(kn_to(t, kn_cpu()));
        if (!tensors[i]) st = kn_last_status() ? kn_last_status() : KN_ERR_NULL;
    }
    if (st == KN_OK) st = kn_safetensors_save(path, names, tensors, total, meta, n_meta);
    kn_scope_end();
    free(extra_names);
    free(tensors);
    free(names);
    free(state);
    return st;
}

kn_status kn_module_save_weights(const kn_module *model, const char *path)
{
    return kn_module_save_weights_meta(model, path, NULL, 0);
}

kn_status kn_module_save_weights_meta(const kn_module *model, const char *path,
                                      const kn_safetensors_meta *metadata, int count)
{
    if (!model || !path)
        return kn__error(KN_ERR_NULL, "kn_module_save_weights: model and path are required");
    if (count < 0 || (count > 0 && !metadata))
        return kn__error(KN_ERR_VALUE, "kn_module_save_weights: %d metadata entries", count);
    kn_safetensors_meta *meta = malloc(sizeof *meta * (size_t)(count + 1));
    if (!meta) return kn__error(KN_ERR_MEMORY, "kn_module_save_weights: out of memory");
    /* safetensors.torch.save_file writes this; some readers look for it */
    meta[0] = (kn_safetensors_meta){"format", "pt"};
    int n = 1;
    for (int i = 0; i < count; i++)
        if (strcmp(metadata[i].key, "format") != 0) meta[n++] = metadata[i];
    kn_status st = save_state(model, path, NULL, 0, meta, n);
    free(meta);
    return st;
}

/* Loads the model entries of an open file (those not under "optimizer."), or with
 * check_only only checks that they would load. */
static kn_status load_model_entries(kn_module *model, const kn_safetensors *file, const char *path,
                                    bool strict, bool check_only)
{
    kn_named_tensor *entries = calloc(file->count > 0 ? (size_t)file->count : 1, sizeof *entries);
    if (!entries) return kn__error(KN_ERR_MEMORY, "load %s: out of memory", path);
    int n = 0;
    for (int i = 0; i < file->count; i++) {
        const char *name = file->entries[i].name;
        if (strncmp(name, OPTIMIZER_PREFIX, strlen(OPTIMIZER_PREFIX)) == 0) continue;
        if (strlen(name) >= sizeof entries[n].name) {
            free(entries);
            return kn__error(KN_ERR_VALUE, "load %s: tensor name too long: %.60s...", path, name);
        }
        snprintf(entries[n].name, sizeof entries[n].name, "%s", name);
        entries[n].tensor = file->entries[i].tensor;
        n++;
    }
    kn_status st = check_only ? kn__module_check_state_dict(model, entries, n, strict)
                              : kn_module_load_state_dict(model, entries, n, strict);
    free(entries);
    if (st != KN_OK) {
        char message[512];
        snprintf(message, sizeof message, "%s", kn_last_error());
        return kn__error(st, "load %s: %s", path, message);
    }
    return KN_OK;
}

kn_status kn_module_load_weights(kn_module *model, const char *path, bool strict)
{
    if (!model || !path)
        return kn__error(KN_ERR_NULL, "kn_module_load_weights: model and path are required");
    kn_safetensors *file = kn_safetensors_load(path);
    if (!file) return kn_last_status() ? kn_last_status() : KN_ERR_VALUE;
    kn_status st = load_model_entries(model, file, path, strict, false);
    kn_safetensors_free(file);
    return st;
}

/* ---- checkpoints --------------------------------------------------------------------- */

/* The generator whose state a checkpoint keeps: the run's (config.generator), else the
 * process-wide default. */
static kn_generator *run_generator(const kn_trainer *t)
{
    return t->config.generator ? t->config.generator : kn_default_generator();
}

kn_status kn_trainer_save_checkpoint(kn_trainer *t, const char *path)
{
    if (!t || !path)
        return kn__error(KN_ERR_NULL, "kn_trainer_save_checkpoint: trainer and path are required");
    size_t state_size = kn_generator_state_size();
    unsigned char *state = malloc(state_size ? state_size : 1);
    if (!state) return kn__error(KN_ERR_MEMORY, "checkpoint %s: out of memory", path);
    kn_generator_get_state(run_generator(t), state);
    char *rng = hex_encode(state, state_size);
    free(state);
    if (!rng) return kn__error(KN_ERR_MEMORY, "checkpoint %s: out of memory", path);

    char step[32], epoch[32], batch[32], seed[32], skipped[32], batch_size[32], best[40], bad[32];
    snprintf(step, sizeof step, "%" PRId64, t->step);
    snprintf(epoch, sizeof epoch, "%" PRId64, t->epoch);
    snprintf(batch, sizeof batch, "%" PRId64, t->batch_in_epoch);
    snprintf(seed, sizeof seed, "%" PRIu64, t->config.seed);
    snprintf(skipped, sizeof skipped, "%" PRId64, t->skipped_steps);
    snprintf(batch_size, sizeof batch_size, "%" PRId64, t->config.batch_size);
    snprintf(best, sizeof best, "%.17g", t->best_val_loss); /* "inf" before any eval */
    snprintf(bad, sizeof bad, "%" PRId64, t->evals_without_improvement);
    const kn_safetensors_meta meta[] = {
        {"format", "pt"},
        {"kiln_format", CHECKPOINT_FORMAT},
        {"step", step},
        {"epoch", epoch},
        {"batch_in_epoch", batch},
        {"seed", seed},
        {"batch_size", batch_size},
        {"skipped_steps", skipped},
        {"best_val_loss", best},
        {"evals_without_improvement", bad},
        {"optimizer", (char *)kn_optimizer_kind_name(t->config.optimizer.kind)},
        {"rng_state", rng},
    };
    int n_opt = 0;
    kn_optimizer_state_entry *opt = kn_optimizer_state(t->optimizer, &n_opt);
    kn_status st = KN_OK;
    if (!opt && n_opt > 0)
        st = kn__error(KN_ERR_MEMORY, "checkpoint %s: out of memory", path);
    else
        st = save_state(t->model, path, opt, n_opt, meta, (int)(sizeof meta / sizeof *meta));
    free(opt);
    free(rng);
    return st;
}

/* Reads an integer metadata field; errors name the file and the key. */
static kn_status meta_int(const kn_safetensors *file, const char *path, const char *key,
                          int64_t *out)
{
    const char *text = kn_safetensors_get_meta(file, key);
    if (!text)
        return kn__error(KN_ERR_VALUE, "checkpoint %s: metadata \"%s\" is missing", path, key);
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < 0)
        return kn__error(KN_ERR_VALUE,
                         "checkpoint %s: metadata \"%s\": expected a "
                         "non-negative integer, got \"%.40s\"",
                         path, key, text);
    *out = v;
    return KN_OK;
}

static kn_status load_optimizer(kn_trainer *t, const kn_safetensors *file, const char *path)
{
    size_t prefix = strlen(OPTIMIZER_PREFIX);
    kn_optimizer_state_entry *entries =
        calloc(file->count > 0 ? (size_t)file->count : 1, sizeof *entries);
    if (!entries) return kn__error(KN_ERR_MEMORY, "checkpoint %s: out of memory", path);
    int n = 0;
    for (int i = 0; i < file->count; i++) {
        const char *name = file->entries[i].name;
        if (strncmp(name, OPTIMIZER_PREFIX, prefix) != 0) continue;
        if (strlen(name + prefix) >= sizeof entries[n].name) {
            free(entries);
            return kn__error(KN_ERR_VALUE,
                             "checkpoint %s: optimizer entry name too long: "
                             "%.60s",
                             path, name);
        }
        snprintf(entries[n].name, sizeof entries[n].name, "%s", name + prefix);
        entries[n].tensor = file->entries[i].tensor;
        n++;
    }
    kn_status st = kn_optimizer_load_state(t->optimizer, entries, n);
    free(entries);
    if (st != KN_OK) {
        char message[512];
        snprintf(message, sizeof message, "%s", kn_last_error());
        return kn__error(st, "checkpoint %s: optimizer state: %s", path, message);
    }
    return KN_OK;
}

kn_status kn_trainer_load_checkpoint(kn_trainer *t, const char *path)
{
    if (!t || !path)
        return kn__error(KN_ERR_NULL, "kn_trainer_load_checkpoint: trainer and path are required");
    kn_safetensors *file = kn_safetensors_load(path);
    if (!file) return kn_last_status() ? kn_last_status() : KN_ERR_VALUE;
    kn_status st = KN_OK;
    const char *format = kn_safetensors_get_meta(file, "kiln_format");
    const char *opt_kind = kn_safetensors_get_meta(file, "optimizer");
    const char *rng = kn_safetensors_get_meta(file, "rng_state");
    const char *best = kn_safetensors_get_meta(file, "best_val_loss");
    uint64_t seed = 0;
    int64_t step = 0, epoch = 0, batch = 0, skipped = 0, batch_size = 0, bad = 0;
    if (!format || strcmp(format, CHECKPOINT_FORMAT) != 0)
        st = kn__error(KN_ERR_VALUE,
                       "checkpoint %s: not a Kiln checkpoint (metadata "
                       "kiln_format is \"%s\", expected \"%s\"); weights alone load with "
                       "init_weights",
                       path, format ? format : "", CHECKPOINT_FORMAT);
    if (st == KN_OK) st = meta_int(file, path, "step", &step);
    if (st == KN_OK) st = meta_int(file, path, "epoch", &epoch);
    if (st == KN_OK) st = meta_int(file, path, "batch_in_epoch", &batch);
    if (st == KN_OK) {
        const char *text = kn_safetensors_get_meta(file, "seed");
        char *end = NULL;
        errno = 0;
        seed = text ? strtoull(text, &end, 10) : 0;
        if (!text || errno || end == text || *end)
            st = kn__error(KN_ERR_VALUE,
                           "checkpoint %s: metadata \"seed\": expected an "
                           "unsigned integer, got \"%.40s\"",
                           path, text ? text : "(missing)");
    }
    if (st == KN_OK) st = meta_int(file, path, "skipped_steps", &skipped);
    if (st == KN_OK) st = meta_int(file, path, "batch_size", &batch_size);
    if (st == KN_OK) st = meta_int(file, path, "evals_without_improvement", &bad);
    if (st == KN_OK && batch_size != t->config.batch_size)
        st = kn__error(KN_ERR_VALUE,
                       "checkpoint %s: taken with batch_size %lld, the job has "
                       "%lld; resuming needs the same batch size",
                       path, (long long)batch_size, (long long)t->config.batch_size);
    if (st == KN_OK && opt_kind &&
        strcmp(opt_kind, kn_optimizer_kind_name(t->config.optimizer.kind)) != 0)
        st = kn__error(KN_ERR_VALUE,
                       "checkpoint %s: optimizer state is for %s, the job uses "
                       "%s",
                       path, opt_kind, kn_optimizer_kind_name(t->config.optimizer.kind));
    size_t state_size = kn_generator_state_size();
    unsigned char *state = malloc(state_size ? state_size : 1);
    if (st == KN_OK && !state) st = kn__error(KN_ERR_MEMORY, "checkpoint %s: out of memory", path);
    if (st == KN_OK && (!rng || !hex_decode(rng, state, state_size)))
        st = kn__error(KN_ERR_VALUE,
                       "checkpoint %s: metadata \"rng_state\": expected %zu "
                       "hex digits",
                       path, 2 * state_size);
    /* Nothing is changed until everything has been read and checked: the generator
     * state and the model entries are checked first, and the optimizer's load, which
     * checks its own, comes before the model's, so that only running out of memory can
     * stop a load half done. */
    if (st == KN_OK) {
        kn_generator *scratch = kn_generator_new(0);
        st = scratch ? kn_generator_set_state(scratch, state, state_size) : kn_last_status();
        kn_generator_free(scratch);
        if (st != KN_OK) {
            char message[512];
            snprintf(message, sizeof message, "%s", kn_last_error());
            st = kn__error(st, "checkpoint %s: metadata \"rng_state\": %s", path, message);
        }
    }
    if (st == KN_OK) st = load_model_entries(t->model, file, path, true, true);
    if (st == KN_OK) st = load_optimizer(t, file, path);
    if (st == KN_OK) st = load_model_entries(t->model, file, path, true, false);
    if (st == KN_OK) st = kn_generator_set_state(run_generator(t), state, state_size);
    if (st == KN_OK) {
        t->step = step;
        t->epoch = epoch;
        t->batch_in_epoch = batch;
        t->config.seed = seed;
        t->skipped_steps = skipped;
        t->evals_without_improvement = bad;
        t->best_val_loss = best ? strtod(best, NULL) : INFINITY;
        if (isnan(t->best_val_loss)) t->best_val_loss = INFINITY;
    }
    free(state);
    kn_safetensors_free(file);
    return st;
}
