/*
 * dist_mpi.c — the communicator (kn_dist.h): MPI between the processes of a distributed
 * run (Open MPI, started by mpirun), and for a CUDA device an NCCL communicator from the
 * CUDA module, bootstrapped over MPI.
 *
 * MPI is initialised with MPI_THREAD_FUNNELED: only the thread that trains calls it (the
 * engine's worker threads never do). Errors come back as values (MPI_ERRORS_RETURN on
 * the job's communicator) with MPI's own text. Nonblocking collectives progress only
 * inside MPI calls: the data-parallel reducer (dist_ddp.c) tests its requests between
 * the nodes of the backward pass so that they advance while the gradients are computed.
 *
 * Without MPI at build time the same functions exist and refuse, saying what to install.
 */
#include "kn_internal.h"
#include "kn_cuda.h"
#include "kn_dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef KN_MPIRUN
#define KN_MPIRUN "mpirun"
#endif

bool kn_dist_launched(void)
{
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    if (!size) size = getenv("PMIX_SIZE");
    if (!size) size = getenv("PMI_SIZE");
    return size && atoi(size) >= 1;
}

const char *kn_dist_mpirun(void)
{
    const char *env = getenv("KILN_MPIRUN");
    return env && env[0] ? env : KN_MPIRUN;
}

#if KN_HAVE_MPI
#include <mpi.h>

struct kn_dist {
    MPI_Comm comm; /* a duplicate of MPI_COMM_WORLD, errors returned */
    int rank, size, local_rank, local_size;
    char host[MPI_MAX_PROCESSOR_NAME + 1];
    kn_device device;
    const kn_cuda_nccl *nccl; /* CUDA runs */
    void *nccl_comm;
    bool aborting;
};

typedef enum { REQ_MPI, REQ_NCCL } request_kind;

struct kn_dist_request {
    request_kind kind;
    kn_dist *dist;
    MPI_Request mpi;
    void *nccl; /* the module's handle */
    const char *what;
};

static bool we_initialised; /* MPI_Init was ours: kn_dist_free finalizes */

bool kn_dist_built(void)
{
    return true;
}

const char *kn_dist_unavailable(void)
{
    if (!kn_dist_launched())
        return "this process was not started by mpirun: run `kiln train JOB.json --processes N`, "
               "or submit the job with \"distributed\": {\"processes\": N} to kilnd";
    return NULL;
}

/* MPI's message for code, after "op: ". */
static kn_status mpi_error(int code, const char *op)
{
    char text[MPI_MAX_ERROR_STRING] = "";
    int n = 0;
    MPI_Error_string(code, text, &n);
    return kn__error(KN_ERR_DIST, "%s: MPI error: %s", op, text);
}

static const kn_cuda_nccl *nccl_table(kn_device device)
{
    char name[32];
    kn_device_str(device, name, sizeof name);
    if (!kn_device_available(device))
        return kn__error_null(KN_ERR_DEVICE, "distributed: device %s is not available (%s)", name,
                              kn_cuda_status());
    const kn__cuda_module *m = kn__cuda(device, "distributed");
    if (!m) return NULL;
    const kn_cuda_nccl *t = m->nccl;
    if (!t)
        return kn__error_null(KN_ERR_DIST,
                              "distributed: the CUDA module has no NCCL table matching this "
                              "build (" KN_CUDA_NCCL_SYMBOL ")");
    const char *why = t->available();
    if (why) return kn__error_null(KN_ERR_DIST, "distributed: %s", why);
    return t;
}

/* The NCCL communicator: rank 0's id reaches everyone over MPI. */
static kn_status init_nccl(kn_dist *d)
{
    d->nccl = nccl_table(d->device);
    if (!d->nccl) return kn_last_status();
    unsigned char id[KN_CUDA_NCCL_ID_BYTES] = {0};
    const char *error = d->rank == 0 ? d->nccl->unique_id(id) : NULL;
    /* every rank learns whether rank 0 got an id, so none waits in the init alone */
    int ok = error == NULL, all_ok = 0;
    int rc = MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, d->comm);
    if (rc != MPI_SUCCESS) return mpi_error(rc, "distributed: NCCL bootstrap");
    if (!all_ok)
        return kn__error(KN_ERR_DIST, "distributed: NCCL bootstrap: %s",
                         error ? error : "rank 0 could not make the NCCL id");
    if ((rc = MPI_Bcast(id, sizeof id, MPI_BYTE, 0, d->comm)) != MPI_SUCCESS)
        return mpi_error(rc, "distributed: NCCL bootstrap");
    error = d->nccl->comm_init(d->device.index, id, d->size, d->rank, &d->nccl_comm);
    if (error) return kn__error(KN_ERR_DIST, "distributed: %s", error);
    return KN_OK;
}

kn_dist *kn_dist_init(kn_device device)
{
    const char *why = kn_dist_unavailable();
    if (why) return kn__error_null(KN_ERR_DIST, "distributed: %s", why);
    if (device.type != KN_DEVICE_CPU && device.type != KN_DEVICE_CUDA)
        return kn__error_null(KN_ERR_DEVICE, "distributed: unsupported device");
    int initialised = 0, rc;
    MPI_Initialized(&initialised);
    if (!initialised) {
        int provided = 0;
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return kn__error_null(KN_ERR_DIST, "distributed: MPI_Init failed");
        we_initialised = true;
    }
    kn_dist *d = calloc(1, sizeof *d);
    if (!d) return kn__error_null(KN_ERR_MEMORY, "distributed: out of memory");
    d->device = device;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    rc = MPI_Comm_dup(MPI_COMM_WORLD, &d->comm);
    if (rc != MPI_SUCCESS) {
        free(d);
        mpi_error(rc, "distributed: MPI_Comm_dup");
        return NULL;
    }
    MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(d->comm, &d->rank);
    MPI_Comm_size(d->comm, &d->size);
    MPI_Comm local;
    if (MPI_Comm_split_type(d->comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &local) ==
        MPI_SUCCESS) {
        MPI_Comm_rank(local, &d->local_rank);
        MPI_Comm_size(local, &d->local_size);
        MPI_Comm_free(&local);
    } else {
        d->local_rank = d->rank;
        d->local_size = d->size;
    }
    int n = 0;
    MPI_Get_processor_name(d->host, &n);
    if (device.type == KN_DEVICE_CUDA && init_nccl(d) != KN_OK) {
        /* refused the same way on every rank, or the others are told by kn_dist_abort */
        char message[512];
        snprintf(message, sizeof message, "%s", kn_last_error());
        kn_status st = kn_last_status();
        kn_dist_free(d);
        kn__error(st, "%s", message);
        return NULL;
    }
    return d;
}

void kn_dist_free(kn_dist *d)
{
    if (!d) return;
    if (d->nccl && d->nccl_comm) d->nccl->comm_free(d->nccl_comm, d->aborting);
    MPI_Comm_free(&d->comm);
    free(d);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (we_initialised && !finalized) MPI_Finalize();
    we_initialised = false;
}

void kn_dist_abort(kn_dist *d, int exit_code)
{
    fflush(stdout);
    fflush(stderr);
    if (d) d->aborting = true;
    MPI_Abort(d ? d->comm : MPI_COMM_WORLD, exit_code);
    exit(exit_code); /* MPI_Abort does not return; this keeps the promise if it did */
}

int kn_dist_rank(const kn_dist *d)
{
    return d ? d->rank : 0;
}
int kn_dist_world_size(const kn_dist *d)
{
    return d ? d->size : 1;
}
int kn_dist_local_rank(const kn_dist *d)
{
    return d ? d->local_rank : 0;
}
int kn_dist_local_size(const kn_dist *d)
{
    return d ? d->local_size : 1;
}
const char *kn_dist_host(const kn_dist *d)
{
    return d ? d->host : "";
}
kn_device kn_dist_device(const kn_dist *d)
{
    return d ? d->device : kn_cpu();
}
const char *kn_dist_backend(const kn_dist *d)
{
    return d && d->nccl ? "nccl" : "mpi";
}

/* ---- host collectives ------------------------------------------------------------------ */

kn_status kn_dist_broadcast(kn_dist *d, void *buffer, size_t bytes, int root)
{
    if (!d || (!buffer && bytes)) return kn__error(KN_ERR_NULL, "distributed broadcast: NULL");
    if (bytes > (size_t)INT32_MAX)
        return kn__error(KN_ERR_VALUE, "distributed broadcast: %zu bytes is too many", bytes);
    int rc = MPI_Bcast(buffer, (int)bytes, MPI_BYTE, root, d->comm);
    return rc == MPI_SUCCESS ? KN_OK : mpi_error(rc, "distributed broadcast");
}

kn_status kn_dist_allreduce_f64(kn_dist *d, double *values, int count)
{
    if (!d || (!values && count)) return kn__error(KN_ERR_NULL, "distributed all-reduce: NULL");
    int rc = MPI_Allreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM, d->comm);
    return rc == MPI_SUCCESS ? KN_OK : mpi_error(rc, "distributed all-reduce");
}

kn_status kn_dist_allgather(kn_dist *d, const void *mine, void *all, size_t bytes)
{
    if (!d || !all || (!mine && bytes)) return kn__error(KN_ERR_NULL, "distributed gather: NULL");
    if (bytes > (size_t)INT32_MAX)
        return kn__error(KN_ERR_VALUE, "distributed gather: %zu bytes is too many", bytes);
    int rc = MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, d->comm);
    return rc == MPI_SUCCESS ? KN_OK : mpi_error(rc, "distributed gather");
}

kn_status kn_dist_barrier(kn_dist *d)
{
    if (!d) return kn__error(KN_ERR_NULL, "distributed barrier: NULL");
    int rc = MPI_Barrier(d->comm);
    return rc == MPI_SUCCESS ? KN_OK : mpi_error(rc, "distributed barrier");
}

static kn_dist_request *new_request(kn_dist *d, request_kind kind, const char *what)
{
    kn_dist_request *r = calloc(1, sizeof *r);
    if (!r) return kn__error_null(KN_ERR_MEMORY, "%s: out of memory", what);
    r->kind = kind;
    r->dist = d;
    r->mpi = MPI_REQUEST_NULL;
    r->what = what;
    return r;
}

kn_dist_request *kn_dist_allreduce_f64_start(kn_dist *d, double *values, int count)
{
    if (!d || (!values && count))
        return kn__error_null(KN_ERR_NULL, "distributed all-reduce: NULL");
    kn_dist_request *r = new_request(d, REQ_MPI, "distributed all-reduce");
    if (!r) return NULL;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM, d->comm, &r->mpi);
    if (rc != MPI_SUCCESS) {
        free(r);
        mpi_error(rc, "distributed all-reduce");
        return NULL;
    }
    return r;
}

/* ---- tensor collectives ---------------------------------------------------------------- */

static kn_status check_tensor(const kn_dist *d, const kn_tensor *t, const char *op)
{
    if (!d || !t) return kn__error(KN_ERR_NULL, "%s: NULL", op);
    if (t->dtype != KN_FLOAT32 || !kn_is_contiguous(t))
        return kn__error(KN_ERR_DTYPE, "%s: expected a contiguous float32 tensor, got %s %s", op,
                         kn_dtype_name(t->dtype), kn__shape(t));
    if (!kn_device_equal(t->device, d->device)) {
        char a[32], b[32];
        return kn__error(KN_ERR_DEVICE, "%s: the tensor is on %s, the communicator on %s", op,
                         kn_device_str(t->device, a, sizeof a),
                         kn_device_str(d->device, b, sizeof b));
    }
    if (kn_numel(t) > INT32_MAX)
        return kn__error(KN_ERR_VALUE, "%s: %lld elements is too many for one call", op,
                         (long long)kn_numel(t));
    return KN_OK;
}

kn_status kn_dist_broadcast_tensor(kn_dist *d, kn_tensor *t, int root)
{
    const char *op = "distributed broadcast";
    kn_status st = check_tensor(d, t, op);
    if (st != KN_OK) return st;
    size_t bytes = (size_t)kn_numel(t) * sizeof(float);
    if (d->nccl) {
        const char *error =
            d->nccl->broadcast(d->nccl_comm, d->device.index, kn__data_ptr(t), bytes, root);
        return error ? kn__error(KN_ERR_DIST, "%s", error) : KN_OK;
    }
    int rc = MPI_Bcast(kn__data_ptr(t), (int)kn_numel(t), MPI_FLOAT, root, d->comm);
    return rc == MPI_SUCCESS ? KN_OK : mpi_error(rc, op);
}

kn_dist_request *kn_dist_allreduce_start(kn_dist *d, kn_tensor *t)
{
    const char *op = "distributed all-reduce";
    if (check_tensor(d, t, op) != KN_OK) return NULL;
    kn_dist_request *r = new_request(d, d->nccl ? REQ_NCCL : REQ_MPI, op);
    if (!r) return NULL;
    if (d->nccl) {
        const char *error = d->nccl->allreduce_start(d->nccl_comm, d->device.index, kn__data_ptr(t),
                                                     (size_t)kn_numel(t), &r->nccl);
        if (error) {
            free(r);
            return kn__error_null(KN_ERR_DIST, "%s", error);
        }
        return r;
    }
    int rc = MPI_Iallreduce(MPI_IN_PLACE, kn__data_ptr(t), (int)kn_numel(t), MPI_FLOAT, MPI_SUM,
                            d->comm, &r->mpi);
    if (rc != MPI_SUCCESS) {
        free(r);
        mpi_error(rc, op);
        return NULL;
    }
    return r;
}

kn_status kn_dist_test(kn_dist_request *r, bool *done)
{
    *done = true;
    if (!r) return KN_OK;
    if (r->kind == REQ_NCCL) {
        const char *error = r->dist->nccl->allreduce_query(r->nccl, done);
        return error ? kn__error(KN_ERR_DIST, "%s", error) : KN_OK;
    }
    int flag = 0;
    int rc = MPI_Test(&r->mpi, &flag, MPI_STATUS_IGNORE);
    *done = flag != 0;
    return rc == MPI_SUCCESS ? KN_OK : mpi_error(rc, r->what);
}

kn_status kn_dist_wait(kn_dist_request *r)
{
    if (!r) return KN_OK;
    kn_status st = KN_OK;
    if (r->kind == REQ_NCCL) {
        const char *error = r->dist->nccl->allreduce_finish(r->dist->device.index, r->nccl);
        if (error) st = kn__error(KN_ERR_DIST, "%s", error);
    } else {
        int rc = MPI_Wait(&r->mpi, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) st = mpi_error(rc, r->what);
    }
    free(r);
    return st;
}

#else /* built without MPI */

static const char *const NO_MPI =
    "this build of Kiln has no MPI (Open MPI's libopenmpi-dev was not found when it was "
    "configured): install libopenmpi-dev and openmpi-bin (scripts/install-deps.sh) and "
    "rebuild to train across processes";

bool kn_dist_built(void)
{
    return false;
}
const char *kn_dist_unavailable(void)
{
    return NO_MPI;
}
kn_dist *kn_dist_init(kn_device device)
{
    (void)device;
    return kn__error_null(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
void kn_dist_free(kn_dist *d)
{
    (void)d;
}
void kn_dist_abort(kn_dist *d, int exit_code)
{
    (void)d;
    exit(exit_code);
}
int kn_dist_rank(const kn_dist *d)
{
    (void)d;
    return 0;
}
int kn_dist_world_size(const kn_dist *d)
{
    (void)d;
    return 1;
}
int kn_dist_local_rank(const kn_dist *d)
{
    (void)d;
    return 0;
}
int kn_dist_local_size(const kn_dist *d)
{
    (void)d;
    return 1;
}
const char *kn_dist_host(const kn_dist *d)
{
    (void)d;
    return "";
}
kn_device kn_dist_device(const kn_dist *d)
{
    (void)d;
    return kn_cpu();
}
const char *kn_dist_backend(const kn_dist *d)
{
    (void)d;
    return "none";
}
kn_status kn_dist_broadcast(kn_dist *d, void *b, size_t n, int root)
{
    (void)d, (void)b, (void)n, (void)root;
    return kn__error(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
kn_status kn_dist_allreduce_f64(kn_dist *d, double *v, int n)
{
    (void)d, (void)v, (void)n;
    return kn__error(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
kn_status kn_dist_allgather(kn_dist *d, const void *m, void *a, size_t n)
{
    (void)d, (void)m, (void)a, (void)n;
    return kn__error(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
kn_status kn_dist_barrier(kn_dist *d)
{
    (void)d;
    return kn__error(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
kn_dist_request *kn_dist_allreduce_f64_start(kn_dist *d, double *v, int n)
{
    (void)d, (void)v, (void)n;
    return kn__error_null(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
kn_status kn_dist_broadcast_tensor(kn_dist *d, kn_tensor *t, int root)
{
    (void)d, (void)t, (void)root;
    return kn__error(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
kn_dist_request *kn_dist_allreduce_start(kn_dist *d, kn_tensor *t)
{
    (void)d, (void)t;
    return kn__error_null(KN_ERR_DIST, "distributed: %s", NO_MPI);
}
kn_status kn_dist_test(kn_dist_request *r, bool *done)
{
    (void)r;
    *done = true;
    return KN_OK;
}
kn_status kn_dist_wait(kn_dist_request *r)
{
    (void)r;
    return KN_OK;
}
#endif
