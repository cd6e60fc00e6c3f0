/*
 * nccl.cu — the module's NCCL table, kn_cuda_nccl_v1 (kn_cuda_nccl.h): communicators
 * between the devices of a distributed run, broadcasts on the device's stream, and
 * all-reduces on a second stream per device so that they overlap the backward pass.
 *
 * Built with NCCL when CMake finds it beside the toolkit (KN_HAVE_NCCL); otherwise the
 * table is there and every entry says that NCCL is missing, so core/dist/dist_mpi.c can tell
 * the user why a distributed GPU run is refused.
 */
#include "kn_cuda_internal.h"
#include "kn_cuda_nccl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if KN_HAVE_NCCL
#include <nccl.h>

static_assert(NCCL_UNIQUE_ID_BYTES == KN_CUDA_NCCL_ID_BYTES, "NCCL id size");

#define MAX_DEVICES 64

/* The second stream of each device, made on first use. */
static cudaStream_t comm_streams[MAX_DEVICES];
static pthread_mutex_t comm_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *nccl_check(ncclResult_t r, const char *op)
{
    if (r == ncclSuccess) return NULL;
    return kn_cuda_fail("%s: NCCL error %d: %s", op, (int)r, ncclGetErrorString(r));
}

/* Makes device current and gives its compute stream and its communication stream. */
static const char *streams(int device, const char *op, cudaStream_t *compute, cudaStream_t *comm)
{
    const char *error = kn_cuda_enter(device, op, compute, NULL);
    if (error) return error;
    if (device >= MAX_DEVICES) return kn_cuda_fail("%s: cuda:%d: too many devices", op, device);
    pthread_mutex_lock(&comm_lock);
    if (!comm_streams[device])
        error = kn_cuda_check(
            cudaStreamCreateWithFlags(&comm_streams[device], cudaStreamNonBlocking), op);
    *comm = comm_streams[device];
    pthread_mutex_unlock(&comm_lock);
    return error;
}

static const char *available(void)
{
    return NULL;
}

static const char *unique_id(void *id_out)
{
    ncclUniqueId id;
    const char *error = nccl_check(ncclGetUniqueId(&id), "nccl unique id");
    if (!error) memcpy(id_out, &id, sizeof id);
    return error;
}

static const char *comm_init(int device, const void *id, int nranks, int rank, void **comm_out)
{
    *comm_out = NULL;
    const char *error = kn_cuda_enter(device, "nccl init", NULL, NULL);
    if (error) return error;
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclComm_t comm;
    if ((error = nccl_check(ncclCommInitRank(&comm, nranks, uid, rank), "nccl init"))) return error;
    *comm_out = (void *)comm;
    return NULL;
}

static void comm_free(void *comm, bool abort)
{
    if (!comm) return;
    if (abort)
        ncclCommAbort((ncclComm_t)comm);
    else
        ncclCommDestroy((ncclComm_t)comm);
}

static const char *broadcast(void *comm, int device, void *data, size_t bytes, int root)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "nccl broadcast", &stream, NULL);
    if (error) return error;
    return nccl_check(ncclBroadcast(data, data, bytes, ncclChar, root, (ncclComm_t)comm, stream),
                      "nccl broadcast");
}

/* What allreduce_start hands out: the event the reduction records when it is done. */
typedef struct pending {
    cudaEvent_t done;
} pending;

static const char *allreduce_start(void *comm, int device, float *data, size_t count,
                                   void **handle_out)
{
    *handle_out = NULL;
    cudaStream_t compute = NULL, side = NULL;
    const char *error = streams(device, "nccl all-reduce", &compute, &side);
    if (error) return error;
    pending *p = (pending *)calloc(1, sizeof *p);
    cudaEvent_t ready;
    if (!p) return kn_cuda_fail("nccl all-reduce: out of memory");
    if ((error = kn_cuda_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming),
                               "nccl all-reduce"))) {
        free(p);
        return error;
    }
    /* the gradients were copied into the bucket on the compute stream: wait for them */
    error = kn_cuda_check(cudaEventRecord(ready, compute), "nccl all-reduce");
    if (!error) error = kn_cuda_check(cudaStreamWaitEvent(side, ready, 0), "nccl all-reduce");
    cudaEventDestroy(ready); /* released once the recorded work has passed */
    if (!error)
        error =
            nccl_check(ncclAllReduce(data, data, count, ncclFloat, ncclSum, (ncclComm_t)comm, side),
                       "nccl all-reduce");
    if (!error)
        error = kn_cuda_check(cudaEventCreateWithFlags(&p->done, cudaEventDisableTiming),
                              "nccl all-reduce");
    if (!error) error = kn_cuda_check(cudaEventRecord(p->done, side), "nccl all-reduce");
    if (error) {
        if (p->done) cudaEventDestroy(p->done);
        free(p);
        return error;
    }
    *handle_out = p;
    return NULL;
}

static const char *allreduce_query(void *handle, bool *done)
{
    pending *p = (pending *)handle;
    cudaError_t e = cudaEventQuery(p->done);
    *done = e == cudaSuccess;
    if (e == cudaErrorNotReady) {
        cudaGetLastError();
        return NULL;
    }
    return kn_cuda_check(e, "nccl all-reduce");
}

static const char *allreduce_finish(int device, void *handle)
{
    pending *p = (pending *)handle;
    if (!p) return NULL;
    cudaStream_t compute;
    const char *error = kn_cuda_enter(device, "nccl all-reduce", &compute, NULL);
    if (!error) error = kn_cuda_check(cudaStreamWaitEvent(compute, p->done, 0), "nccl all-reduce");
    cudaEventDestroy(p->done);
    free(p);
    return error;
}

#else /* no NCCL: the table says so */

static const char *const MISSING =
    "this CUDA module was built without NCCL (nccl.h and libnccl were not found beside the "
    "CUDA toolkit when it was configured): distributed GPU training needs it";

static const char *available(void)
{
    return MISSING;
}
static const char *unique_id(void *)
{
    return MISSING;
}
static const char *comm_init(int, const void *, int, int, void **comm_out)
{
    *comm_out = NULL;
    return MISSING;
}
static void comm_free(void *, bool) {}
static const char *broadcast(void *, int, void *, size_t, int)
{
    return MISSING;
}
static const char *allreduce_start(void *, int, float *, size_t, void **handle_out)
{
    *handle_out = NULL;
    return MISSING;
}
static const char *allreduce_query(void *, bool *done)
{
    *done = true;
    return MISSING;
}
static const char *allreduce_finish(int, void *)
{
    return MISSING;
}
#endif

static const kn_cuda_nccl nccl_table = {
    KN_CUDA_NCCL_ABI, sizeof(kn_cuda_nccl), available,       unique_id,        comm_init, comm_free,
    broadcast,        allreduce_start,      allreduce_query, allreduce_finish,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_nccl *kn_cuda_nccl_v1(void)
{
    return &nccl_table;
}
