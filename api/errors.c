/*
 * errors.c — the validation error list every parser fills: one entry per problem with
 * the JSON path it concerns, and its renderings as text (CLI) and JSON (HTTP bodies).
 */
#include "kapi_internal.h"

#include <cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kapi_errors_add(kapi_errors *errors, const char *path, const char *fmt, ...)
{
    if (!errors) return;
    if (errors->count == errors->capacity) {
        int capacity = errors->capacity ? errors->capacity * 2 : 8;
        kapi_error *grown = realloc(errors->items, sizeof(kapi_error) * (size_t)capacity);
        if (!grown) return; /* out of memory: the earlier errors still stand */
        errors->items = grown;
        errors->capacity = capacity;
    }
    kapi_error *e = &errors->items[errors->count++];
    snprintf(e->path, sizeof e->path, "%s", path ? path : "");
    va_list args;
    va_start(args, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, args);
    va_end(args);
    /* both may have been cut short; JSON bodies must stay valid UTF-8 */
    kapi__utf8_trim(e->path);
    kapi__utf8_trim(e->message);
}

void kapi_errors_free(kapi_errors *errors)
{
    if (!errors) return;
    free(errors->items);
    errors->items = NULL;
    errors->count = errors->capacity = 0;
}

char *kapi_errors_to_text(const kapi_errors *errors)
{
    size_t size = 1;
    for (int i = 0; i < errors->count; i++)
        size += strlen(errors->items[i].path) + strlen(errors->items[i].message) + 3;
    char *text = malloc(size);
    if (!text) return NULL;
    size_t used = 0;
    text[0] = '\0';
    for (int i = 0; i < errors->count; i++) {
        const kapi_error *e = &errors->items[i];
        used += (size_t)snprintf(text + used, size - used, "%s%s%s%s", i ? "\n" : "", e->path,
                                 e->path[0] ? ": " : "", e->message);
    }
    return text;
}

char *kapi_errors_to_json(const kapi_errors *errors, const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *error = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(error, "code", code);
    char first[sizeof(kapi_error) + 2] = "invalid request"; /* "path: message" */
    if (errors->count > 0) {
        const kapi_error *e = &errors->items[0];
        snprintf(first, sizeof first, "%s%s%s", e->path, e->path[0] ? ": " : "", e->message);
    }
    cJSON_AddStringToObject(error, "message", first);
    cJSON *details = cJSON_AddArrayToObject(error, "details");
    for (int i = 0; i < errors->count; i++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "path", errors->items[i].path);
        cJSON_AddStringToObject(item, "message", errors->items[i].message);
        cJSON_AddItemToArray(details, item);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}
