/*
 * routes_v1.h — helpers shared by the v1 route files (routes_v1*.c).
 */
#ifndef KSRV_ROUTES_V1_H
#define KSRV_ROUTES_V1_H

#include "ksrv.h"

#include "kapi.h"

/* 400 (or status) with {"error": {"code", "message", "path", "details": [...]}}; paths
 * get prefix ("model") in front. */
void ksrv_respond_validation(ksrv_response *response, int status, const char *code,
                             const kapi_errors *errors, const char *prefix);
/* Optional query parameters; false after a 400 response when present and invalid. */
bool ksrv_query_int(const ksrv_request *request, ksrv_response *response, const char *name,
                    long long min, long long max, long long *out);
bool ksrv_query_bool(const ksrv_request *request, ksrv_response *response, const char *name,
                     bool *out);

/* 1 (with the job's id) when match takes a queued, running or paused job, 0 when it
 * takes none, -1 on a store error. */
int ksrv_active_job_find(kstore *store, bool (*match)(const kstore_job *job, void *context),
                         void *context, char job_id[40]);

/* delete_op(store, context): a dataset's or a model's delete, which must work on a full
 * disk: when the disk refuses it, the space reserve is given up and it runs again, so
 * delete_op must leave nothing behind when it fails. */
kstore_status ksrv_store_delete(ksrv_server *server, kstore *store,
                                kstore_status (*delete_op)(kstore *store, void *context),
                                void *context);

/* 1 (with the job's id) when a queued, running or paused job names this model or
 * dataset, 0 when none, -1 on a store error. */
int ksrv_active_job_using(kstore *store, const char *model, const char *dataset, char job_id[40]);

/* The files of a dataset's split ("train", "test") as a data source, the CSV target
 * columns as data names them (NULL: "label"); out->present false when the split has no
 * files. Returns NULL, or an error code with message when the files cannot be used:
 * "invalid_data" (a format training cannot read), "dataset_incomplete" (half of an
 * inputs/labels pair), "internal" (a path too long). */
const char *ksrv_dataset_source(ksrv_server *server, const kstore_dataset *ds, const char *split,
                                const kapi_data_spec *data, kapi_data_source *out, char *message,
                                size_t size);

#endif
