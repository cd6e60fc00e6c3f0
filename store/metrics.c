/*
 * metrics.c — metric series: one row per (job, name, step), written with INSERT OR
 * REPLACE so a resumed job re-reporting a step replaces it; read in step order after a
 * given step, downsampled on request.
 *
 * Non-finite values: SQLite stores a NaN as NULL, so a point's value column holds
 * finite values only and the `special` column says what a non-finite one was
 * (0 finite, 1 NaN, 2 +inf, 3 -inf). Reading maps them back, so NaN and +-inf
 * round-trip exactly.
 *
 * Batches commit with synchronous=NORMAL: in WAL a crash may lose the last batches
 * (the trainer re-reports them after resuming from its checkpoint) but never corrupts.
 */
#include "kstore_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { SPECIAL_FINITE, SPECIAL_NAN, SPECIAL_POS_INF, SPECIAL_NEG_INF };

static int special_of(double v)
{
    if (isnan(v))
        return SPECIAL_NAN;
    if (isinf(v))
        return v > 0 ? SPECIAL_POS_INF : SPECIAL_NEG_INF;
    return SPECIAL_FINITE;
}

static double value_of(sqlite3_stmt *st, int value_col, int special_col)
{
    switch (sqlite3_column_int(st, special_col)) {
    case SPECIAL_NAN:
        return NAN;
    case SPECIAL_POS_INF:
        return INFINITY;
    case SPECIAL_NEG_INF:
        return -INFINITY;
    default:
        return sqlite3_column_double(st, value_col);
    }
}

kstore_status kstore_metrics_append(kstore *store, const char *job_id, const char *name,
                                    const kstore_metric_point *points, int count)
{
    kstore *s = store;
    if (count <= 0)
        return KSTORE_OK;
    if (!job_id || !name || !name[0]) {
        kstore__set_error(s, "a metric needs a job id and a name");
        return KSTORE_ERROR;
    }
    kstore_status status = kstore__begin(s, SYNC_NORMAL);
    if (status)
        return status;
    sqlite3_stmt *st = kstore__stmt(s, ST_METRIC_PUT,
                                    "INSERT OR REPLACE INTO metrics"
                                    " (job_id, name, step, wall_time, value, special)"
                                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    if (!st) {
        kstore__rollback(s);
        return KSTORE_ERROR;
    }
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    for (int i = 0; i < count; i++) {
        int special = special_of(points[i].value);
        sqlite3_bind_int64(st, 3, points[i].step);
        sqlite3_bind_double(st, 4, points[i].wall_time);
        if (special == SPECIAL_FINITE)
            sqlite3_bind_double(st, 5, points[i].value);
        else
            sqlite3_bind_null(st, 5);
        sqlite3_bind_int(st, 6, special);
        if ((status = kstore__run(s, st, "appending metrics"))) { /* run resets, bindings stay */
            kstore__rollback(s);
            return status;
        }
    }
    return kstore__commit(s);
}

/* Orders values for picking a bucket's extremes: NaN counts as the largest, so a
 * diverging run shows its NaN in the downsampled curve rather than hiding it. */
static bool less(double a, double b)
{
    if (isnan(a))
        return false;
    if (isnan(b))
        return true;
    return a < b;
}

/* Keeps points[0] and points[n-1]; the n-2 points between are cut into
 * (max_points-2)/2 contiguous buckets of near-equal size (bucket b holds interior
 * indices [b*m/B, (b+1)*m/B)), each contributing its min and max (one point when they
 * coincide) in step order. max_points 1 keeps only the last point, 2 or 3 the first
 * and last. Returns the new count; out must hold max_points. */
static int downsample(const kstore_metric_point *in, int n, int max_points,
                      kstore_metric_point *out)
{
    if (max_points == 1) {
        out[0] = in[n - 1];
        return 1;
    }
    int k = 0;
    out[k++] = in[0];
    int64_t m = n - 2;
    int64_t buckets = (max_points - 2) / 2;
    for (int64_t b = 0; b < buckets; b++) {
        int64_t lo = 1 + b * m / buckets, hi = 1 + (b + 1) * m / buckets;
        if (lo >= hi)
            continue;
        int64_t imin = lo, imax = lo;
        for (int64_t i = lo + 1; i < hi; i++) {
            if (less(in[i].value, in[imin].value))
                imin = i;
            if (less(in[imax].value, in[i].value))
                imax = i;
        }
        int64_t first = imin < imax ? imin : imax, second = imin < imax ? imax : imin;
        out[k++] = in[first];
        if (second != first)
            out[k++] = in[second];
    }
    out[k++] = in[n - 1];
    return k;
}

kstore_status kstore_metrics_query(kstore *store, const char *job_id, const char *name,
                                   int64_t after_step, int max_points,
                                   kstore_metric_point **out, int *count)
{
    kstore *s = store;
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_METRIC_QUERY,
                                    "SELECT step, wall_time, value, special FROM metrics"
                                    " WHERE job_id = ?1 AND name = ?2 AND step > ?3"
                                    " ORDER BY step");
    if (!st)
        return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, job_id ? job_id : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name ? name : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, after_step);
    kstore_metric_point *points = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            int grown = cap ? cap * 2 : 1024;
            kstore_metric_point *p = realloc(points, (size_t)grown * sizeof *p);
            if (!p) {
                kstore__set_error(s, "out of memory reading metrics");
                status = KSTORE_ERROR;
                break;
            }
            points = p;
            cap = grown;
        }
        points[n].step = sqlite3_column_int64(st, 0);
        points[n].wall_time = sqlite3_column_double(st, 1);
        points[n].value = value_of(st, 2, 3);
        n++;
    }
    if (!status && rc != SQLITE_DONE)
        status = kstore__db_fail(s, "reading metrics");
    sqlite3_reset(st);
    if (status) {
        free(points);
        return status;
    }
    if (max_points > 0 && n > max_points) {
        kstore_metric_point *small = malloc((size_t)max_points * sizeof *small);
        if (!small) {
            free(points);
            kstore__set_error(s, "out of memory downsampling metrics");
            return KSTORE_ERROR;
        }
        n = downsample(points, n, max_points, small);
        free(points);
        points = small;
    }
    *out = points;
    *count = n;
    return KSTORE_OK;
}

kstore_status kstore_metrics_names(kstore *store, const char *job_id, char ***names, int *count)
{
    kstore *s = store;
    *names = NULL;
    *count = 0;
    sqlite3_stmt *st = kstore__stmt(s, ST_METRIC_NAMES,
                                    "SELECT DISTINCT name FROM metrics WHERE job_id = ?"
                                    " ORDER BY name");
    if (!st)
        return KSTORE_ERROR;
    sqlite3_bind_text(st, 1, job_id ? job_id : "", -1, SQLITE_TRANSIENT);
    char **list = NULL;
    int n = 0, cap = 0, rc;
    kstore_status status = KSTORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            int grown = cap ? cap * 2 : 8;
            char **p = realloc(list, (size_t)grown * sizeof *p);
            if (!p) {
                status = KSTORE_ERROR;
                break;
            }
            list = p;
            cap = grown;
        }
        if (!(list[n] = kstore__dup_column(st, 0))) {
            status = KSTORE_ERROR;
            break;
        }
        n++;
    }
    if (status)
        kstore__set_error(s, "out of memory reading metric names");
    else if (rc != SQLITE_DONE)
        status = kstore__db_fail(s, "reading metric names");
    sqlite3_reset(st);
    if (status) {
        kstore_strings_free(list, n);
        return status;
    }
    *names = list;
    *count = n;
    return KSTORE_OK;
}
