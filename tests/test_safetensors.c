/*
 * test_safetensors.c — the safetensors reader and atomic writer: round trips, strided
 * tensors, a file written by Python (tests/golden/generate_safetensors.py), a Python
 * check of a Kiln-written file (tests/golden/check_safetensors.py, skipped without
 * torch), and every kind of malformed file.
 */
#include "kn_safetensors.h"
#include "kn_test.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A fresh folder under the build tree for this process's files. */
static const char *scratch(void)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/test_safetensors_tmp.%ld", KILN_BINARY_DIR, (long)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    return dir;
}

static void remove_scratch(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* The tensors check_safetensors.py expects. */
static kn_status save_reference(const char *path)
{
    kn_tensor *w = kn_from_floats((float[]){0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f}, KN_SHAPE(2, 3));
    kn_tensor *wt = kn_transpose(w, 0, 1); /* [3, 2], strided */
    kn_tensor *step = kn_from_int64s((int64_t[]){42}, (const int64_t[]){1}, 0);
    kn_tensor *c = kn_from_floats((float[]){-1.0f, 0.0f, 1e-30f, 3e38f}, KN_SHAPE(4));
    kn_tensor *labels = kn_from_int64s((int64_t[]){-5, 0, (int64_t)1 << 62}, KN_SHAPE(3));
    const char *names[] = {"c", "b.weight", "d.labels", "a.step"};
    kn_tensor *tensors[] = {c, wt, labels, step};
    kn_safetensors_meta meta[] = {{"epoch", "3"}, {"note", "tab\there \"q\" \\ \xc3\xa9"}};
    return kn_safetensors_save(path, names, tensors, 4, meta, 2);
}

Test(safetensors, round_trip)
{
    kn_scope_begin();
    const char *dir = scratch();
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(save_reference(path), KN_OK, "%s", kn_last_error());

    kn_safetensors *file = kn_safetensors_load(path);
    cr_assert_not_null(file, "%s", kn_last_error());
    cr_assert_eq(file->count, 4);
    /* written sorted by name, as the python library does */
    cr_assert_str_eq(file->entries[0].name, "a.step");
    cr_assert_str_eq(file->entries[3].name, "d.labels");
    kn_tensor *w = kn_safetensors_get(file, "b.weight");
    KN_ASSERT_SHAPE(w, KN_SHAPE(3, 2));
    KN_ASSERT_CLOSE(w, {0.5f, 3.5f, 1.5f, 4.5f, 2.5f, 5.5f});
    kn_tensor *step = kn_safetensors_get(file, "a.step");
    cr_assert_eq(step->ndim, 0);
    cr_assert_eq(step->dtype, KN_INT64);
    cr_assert_eq(kn_item_i64(step), 42);
    kn_tensor *labels = kn_safetensors_get(file, "d.labels");
    cr_assert_eq(kn_data_i64(labels)[2], (int64_t)1 << 62);
    float c[4];
    cr_assert_eq(kn_copy_to_floats(kn_safetensors_get(file, "c"), c), KN_OK);
    cr_assert(c[2] == 1e-30f && c[3] == 3e38f);
    cr_assert_null(kn_safetensors_get(file, "missing"));
    cr_assert_str_eq(kn_safetensors_get_meta(file, "epoch"), "3");
    cr_assert_str_eq(kn_safetensors_get_meta(file, "note"), "tab\there \"q\" \\ \xc3\xa9");
    cr_assert_null(kn_safetensors_get_meta(file, "nope"));
    kn_safetensors_free(file);

    /* header padded to 8 bytes; no temporary file left behind */
    FILE *f = fopen(path, "rb");
    uint64_t hlen = 0;
    cr_assert_eq(fread(&hlen, 8, 1, f), 1);
    char start[17] = {0};
    cr_assert_eq(fread(start, 16, 1, f), 1);
    fclose(f);
    cr_assert_eq(hlen % 8, 0);
    cr_assert_str_eq(start, "{\"__metadata__\":");
    DIR *d = opendir(dir);
    int files = 0;
    for (struct dirent *e; (e = readdir(d));) files += e->d_name[0] != '.';
    closedir(d);
    cr_assert_eq(files, 1);

    /* saving again replaces the file */
    kn_tensor *one = kn_ones(KN_SHAPE(2), KN_FLOAT32);
    cr_assert_eq(kn_safetensors_save(path, (const char *[]){"x"}, &one, 1, NULL, 0), KN_OK);
    file = kn_safetensors_load(path);
    cr_assert_not_null(file, "%s", kn_last_error());
    cr_assert_eq(file->count, 1);
    cr_assert_eq(file->metadata_count, 0);
    kn_safetensors_free(file);
    remove_scratch(dir);
    kn_scope_end();
}

Test(safetensors, empty_file_of_tensors_round_trips)
{
    kn_scope_begin();
    const char *dir = scratch();
    char path[600];
    snprintf(path, sizeof path, "%s/empty.safetensors", dir);
    cr_assert_eq(kn_safetensors_save(path, NULL, NULL, 0, NULL, 0), KN_OK, "%s", kn_last_error());
    kn_safetensors *file = kn_safetensors_load(path);
    cr_assert_not_null(file, "%s", kn_last_error());
    cr_assert_eq(file->count, 0);
    kn_safetensors_free(file);
    remove_scratch(dir);
    kn_scope_end();
}

Test(safetensors, reads_file_written_by_python)
{
    kn_scope_begin();
    kn_safetensors *file =
        kn_safetensors_load(KILN_SOURCE_DIR "/tests/golden/data/safetensors_from_python"
                                            ".safetensors");
    cr_assert_not_null(file, "%s", kn_last_error());
    cr_assert_eq(file->count, 9);
    KN_ASSERT_CLOSE(kn_safetensors_get(file, "weight"), {-0.5f, -0.25f, 0, 0.25f, 0.5f, 0.75f});
    KN_ASSERT_SHAPE(kn_safetensors_get(file, "weight"), KN_SHAPE(2, 3));
    KN_ASSERT_CLOSE(kn_safetensors_get(file, "double"), {1.5f, -2.25f, 0.001f});
    kn_tensor *half = kn_safetensors_get(file, "half");
    cr_assert_eq(half->dtype, KN_FLOAT32);
    float h[5];
    kn_copy_to_floats(half, h);
    cr_assert(h[0] == 1.0f && h[1] == -0.5f && h[2] == 65504.0f);
    cr_assert(h[3] == 5.960464477539063e-08f, "subnormal half: %g", h[3]);
    cr_assert(isinf(h[4]) && h[4] > 0);
    KN_ASSERT_CLOSE(kn_safetensors_get(file, "bf16"), {3.140625f, -9999220736.0f});
    kn_tensor *labels = kn_safetensors_get(file, "labels");
    cr_assert_eq(labels->dtype, KN_INT64);
    KN_ASSERT_CLOSE(labels, {0, 7, -3});
    kn_tensor *i32 = kn_safetensors_get(file, "i32");
    cr_assert_eq(i32->dtype, KN_INT64);
    cr_assert_eq(kn_data_i64(i32)[2], 2147483647);
    cr_assert_eq(kn_data_i64(i32)[3], -2147483648LL);
    KN_ASSERT_CLOSE(kn_safetensors_get(file, "bytes"), {0, 128, 255});
    kn_tensor *scalar = kn_safetensors_get(file, "scalar");
    cr_assert_eq(scalar->ndim, 0);
    cr_assert_eq(kn_item(scalar), 2.5f);
    KN_ASSERT_SHAPE(kn_safetensors_get(file, "empty"), KN_SHAPE(0, 3));
    cr_assert_str_eq(kn_safetensors_get_meta(file, "format"), "pt");
    cr_assert_str_eq(kn_safetensors_get_meta(file, "note"), "h\xc3\xa9llo \"quoted\"");
    kn_safetensors_free(file);
    kn_scope_end();
}

Test(safetensors, python_reads_kiln_file)
{
    if (access("/usr/bin/python3", X_OK) != 0) cr_skip_test("/usr/bin/python3 is not available");
    kn_scope_begin();
    const char *dir = scratch();
    char path[600], cmd[1400];
    snprintf(path, sizeof path, "%s/for_python.safetensors", dir);
    cr_assert_eq(save_reference(path), KN_OK, "%s", kn_last_error());
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/golden/check_safetensors.py' '%s'",
             KILN_SOURCE_DIR, path);
    int rc = system(cmd);
    remove_scratch(dir);
    kn_scope_end();
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) cr_skip_test("/usr/bin/python3 has no torch");
    cr_assert_eq(rc, 0, "check_safetensors.py failed (its message is above)");
}

/* ---- malformed files ------------------------------------------------------------------ */

/* Parses 8-byte length + header + data_size zero bytes; expects failure mentioning want. */
static void expect_bad(const char *header, size_t data_size, const char *want)
{
    size_t hlen = strlen(header);
    size_t size = 8 + hlen + data_size;
    unsigned char *b = calloc(1, size);
    uint64_t n = hlen;
    memcpy(b, &n, 8);
    memcpy(b + 8, header, hlen);
    kn_safetensors *file = kn_safetensors_parse(b, size);
    free(b);
    cr_assert_null(file, "parsed %s", header);
    cr_assert(strstr(kn_last_error(), want), "for %s: got '%s', expected it to mention '%s'",
              header, kn_last_error(), want);
}

Test(safetensors, malformed_headers_are_refused)
{
    kn_scope_begin();
    expect_bad("{", 0, "not valid JSON");
    expect_bad("[]", 0, "must be a JSON object");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8,
               "text after the header");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
               "tensor 'a' has data_offsets [0, 8] outside the 4 bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
               "tensor 'a' is F32 [3] = 12 bytes but its data_offsets [0, 8] span 8");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
               "data_offsets [8, 0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, "tensors 'a' [0, 8] and 'b' [4, 12] overlap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, "tensor 'a' appears twice");
    expect_bad("{\"a\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
               "tensor 'a' has dtype 'C64'");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
               "non-negative integer");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
               "expected an integer");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
               "tensor 'a' lacks \"shape\"");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"offsets\":[0,4]}}", 4,
               "tensor 'a' has unknown field 'offsets'");
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value of 'k' must be a string");
    expect_bad("{\"a\\q\":1}", 0, "bad escape");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
               "\"data_offsets\":[0,4]}}",
               4, "tensor 'a' is F32");

    unsigned char tiny[4] = {0};
    cr_assert_null(kn_safetensors_parse(tiny, sizeof tiny));
    cr_assert(strstr(kn_last_error(), "truncated"), "%s", kn_last_error());
    unsigned char big[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    cr_assert_null(kn_safetensors_parse(big, sizeof big));
    cr_assert(strstr(kn_last_error(), "header length 65535 exceeds the 8 bytes"), "%s",
              kn_last_error());
    kn_scope_end();
}

Test(safetensors, truncated_file_names_file_and_tensor)
{
    kn_scope_begin();
    const char *dir = scratch();
    char path[600];
    snprintf(path, sizeof path, "%s/cut.safetensors", dir);
    kn_tensor *t = kn_ones(KN_SHAPE(4), KN_FLOAT32);
    cr_assert_eq(kn_safetensors_save(path, (const char *[]){"w"}, &t, 1, NULL, 0), KN_OK);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size - 4), 0);
    cr_assert_null(kn_safetensors_load(path));
    cr_assert(strstr(kn_last_error(), path) && strstr(kn_last_error(), "tensor 'w'"), "%s",
              kn_last_error());

    char missing[700];
    snprintf(missing, sizeof missing, "%s/none.safetensors", dir);
    cr_assert_null(kn_safetensors_load(missing));
    cr_assert(strstr(kn_last_error(), missing) && strstr(kn_last_error(), "cannot open"), "%s",
              kn_last_error());
    remove_scratch(dir);
    kn_scope_end();
}

Test(safetensors, save_refuses_bad_arguments)
{
    kn_scope_begin();
    kn_tensor *t = kn_ones(KN_SHAPE(1), KN_FLOAT32);
    kn_tensor *two[] = {t, t};
    cr_assert_neq(kn_safetensors_save("/nonexistent-dir/x.safetensors", (const char *[]){"w"}, &t,
                                      1, NULL, 0),
                  KN_OK);
    cr_assert(strstr(kn_last_error(), "/nonexistent-dir/x.safetensors"), "%s", kn_last_error());
    cr_assert_neq(kn_safetensors_save("/tmp/x", (const char *[]){"w", "w"}, two, 2, NULL, 0),
                  KN_OK);
    cr_assert(strstr(kn_last_error(), "'w' appears twice"), "%s", kn_last_error());
    cr_assert_neq(kn_safetensors_save("/tmp/x", (const char *[]){"__metadata__"}, &t, 1, NULL, 0),
                  KN_OK);
    cr_assert(strstr(kn_last_error(), "reserved"), "%s", kn_last_error());
    kn_scope_end();
}
