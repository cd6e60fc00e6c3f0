/*
 * metrics.c — an evaluation's numbers as the task names them, for kilnd's metric series
 * and job JSON and for kiln's output: classification accuracy, precision, recall, f1 (and
 * the confusion matrix); regression mse, mae, r2; multilabel exact_match and f1 (and the
 * per-label F1).
 */
#include "kapi_internal.h"

#include <math.h>
#include <stdlib.h>

int kapi_eval_metrics(const kn_eval_result *r, kapi_metric out[KAPI_MAX_METRICS])
{
    int n = 0;
    switch (r->task) {
    case KN_TASK_CLASSIFICATION:
        out[n++] = (kapi_metric){"accuracy", r->accuracy};
        if (!isnan(r->f1)) {
            out[n++] = (kapi_metric){"precision", r->precision};
            out[n++] = (kapi_metric){"recall", r->recall};
            out[n++] = (kapi_metric){"f1", r->f1};
        }
        break;
    case KN_TASK_REGRESSION:
        out[n++] = (kapi_metric){"mse", r->mse};
        out[n++] = (kapi_metric){"mae", r->mae};
        out[n++] = (kapi_metric){"r2", r->r2};
        break;
    case KN_TASK_MULTILABEL:
        out[n++] = (kapi_metric){"exact_match", r->accuracy};
        out[n++] = (kapi_metric){"f1", r->f1};
        break;
    case KN_TASK_AUTO:
        break;
    }
    /* outputs that are not [N, K] get the loss only */
    int kept = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(out[i].value)) out[kept++] = out[i];
    return kept;
}

char *kapi_eval_details_json(const kn_eval_result *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "task", kn_task_name(r->task));
    cJSON_AddNumberToObject(o, "count", (double)r->count);
    cJSON_AddNumberToObject(o, "loss", r->loss);
    kapi_metric m[KAPI_MAX_METRICS];
    int n = kapi_eval_metrics(r, m);
    cJSON *metrics = cJSON_AddObjectToObject(o, "metrics");
    for (int i = 0; i < n; i++) cJSON_AddNumberToObject(metrics, m[i].name, m[i].value);
    if (r->confusion) {
        cJSON *rows = cJSON_AddArrayToObject(o, "confusion_matrix");
        for (int64_t i = 0; i < r->classes; i++) {
            cJSON *row = cJSON_CreateArray();
            for (int64_t j = 0; j < r->classes; j++)
                cJSON_AddItemToArray(row,
                                     cJSON_CreateNumber((double)r->confusion[i * r->classes + j]));
            cJSON_AddItemToArray(rows, row);
        }
    }
    if (r->label_f1) {
        cJSON *f1 = cJSON_AddArrayToObject(o, "label_f1");
        for (int64_t k = 0; k < r->classes; k++)
            cJSON_AddItemToArray(f1, cJSON_CreateNumber(r->label_f1[k]));
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}
