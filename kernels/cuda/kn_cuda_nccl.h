/*
 * kn_cuda_nccl.h — the CUDA module's NCCL table, kn_cuda_nccl_v1: the collectives of a
 * distributed run between CUDA devices, one device per process (core/dist/dist_mpi.c makes
 * the communicator, bootstrapped over MPI, and calls these).
 *
 * Streams. Broadcasts run on the device's stream, in order with everything else. An
 * all-reduce started with allreduce_start runs on a second stream of the device that
 * first waits for the work queued so far on the first, so the reduction of one bucket of
 * gradients overlaps the backward pass that computes the next; allreduce_finish makes
 * the device's stream wait for it (the host does not wait) and frees the handle.
 *
 * As everywhere in the module: pointers are device pointers, and every function that can
 * fail returns NULL or a message naming the operation and the NCCL or CUDA error.
 * A module built without NCCL has the table, and available() says so.
 */
#ifndef KN_CUDA_NCCL_H
#define KN_CUDA_NCCL_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KN_CUDA_NCCL_ABI 1
#define KN_CUDA_NCCL_SYMBOL "kn_cuda_nccl_v1"
#define KN_CUDA_NCCL_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

typedef struct kn_cuda_nccl {
    int abi;     /* KN_CUDA_NCCL_ABI */
    size_t size; /* sizeof(kn_cuda_nccl) as the module was built */

    /* NULL when NCCL is built in; else why not ("built without NCCL ..."). */
    const char *(*available)(void);
    /* Rank 0 makes the id (KN_CUDA_NCCL_ID_BYTES bytes), every rank gets it over MPI. */
    const char *(*unique_id)(void *id_out);
    /* Joins the communicator of nranks on device (a collective over the ranks). */
    const char *(*comm_init)(int device, const void *id, int nranks, int rank, void **comm_out);
    /* Frees it; abort true when a peer may be gone (ncclCommAbort does not wait). */
    void (*comm_free)(void *comm, bool abort);

    /* Broadcast of bytes from root's buffer into everyone's, on the device's stream. */
    const char *(*broadcast)(void *comm, int device, void *data, size_t bytes, int root);
    /* Sum of count floats in place, on the module's second stream (see above). */
    const char *(*allreduce_start)(void *comm, int device, float *data, size_t count,
                                   void **handle_out);
    /* Whether the all-reduce has finished on the device (never waits). */
    const char *(*allreduce_query)(void *handle, bool *done);
    /* The device's stream waits for it; frees the handle (NULL-safe). */
    const char *(*allreduce_finish)(int device, void *handle);
} kn_cuda_nccl;

typedef const kn_cuda_nccl *(*kn_cuda_nccl_fn)(void);

const kn_cuda_nccl *kn_cuda_nccl_v1(void);

#ifdef __cplusplus
}
#endif
#endif
