/*
 * kn_dist.h — the communicator between the processes of one distributed job: who this
 * process is (rank, world size, host), and the collectives data-parallel training needs.
 *
 * Two backends behind one interface, as PyTorch's torch.distributed has them: MPI (Open
 * MPI) between CPU processes, and NCCL between CUDA devices, one per process, its
 * communicator bootstrapped over MPI (rank 0 makes the NCCL id, MPI broadcasts it). MPI
 * starts the processes (mpirun) and always carries the small host-side collectives
 * (flags, statistics, random states); tensors go through the backend of the device the
 * communicator was made for. NCCL lives in the CUDA module (kernels/cuda/nccl.cu),
 * loaded at run time like the rest of CUDA, so these binaries run without a GPU.
 *
 * A build without MPI, or a process not started by mpirun, refuses with a message that
 * says what is missing (kn_dist_unavailable). Collectives must be called by every rank
 * in the same order; they return KN_OK or an error naming the operation. A rank whose
 * peer died does not always get an error back from MPI: a job whose rank fails calls
 * kn_dist_abort, which takes every rank down, so no rank waits forever.
 *
 * Ownership: kn_dist_init returns a communicator the caller frees with kn_dist_free
 * (which finalizes MPI: one communicator per process). A request from a *_start call is
 * owned by the caller until kn_dist_wait, which frees it.
 */
#ifndef KN_DIST_H
#define KN_DIST_H

#include "kn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kn_dist kn_dist;
typedef struct kn_dist_request kn_dist_request;

/* NULL when distributed runs are possible in this process (MPI built in and the process
 * started by mpirun); otherwise why not, as a sentence. */
const char *kn_dist_unavailable(void);
/* Whether this build has MPI (the communicator) at all. */
bool kn_dist_built(void);
/* Whether this process was started by mpirun (Open MPI's or PMIx's environment). */
bool kn_dist_launched(void);
/* The mpirun this build found ($KILN_MPIRUN overrides it). Borrowed. */
const char *kn_dist_mpirun(void);

/* Joins the job: initialises MPI (once per process) and, for a CUDA device, an NCCL
 * communicator on it. NULL with the error set: no MPI, not under mpirun, NCCL missing
 * or failing. */
kn_dist *kn_dist_init(kn_device device);
void kn_dist_free(kn_dist *dist); /* NULL-safe; finalizes MPI */

int kn_dist_rank(const kn_dist *dist);
int kn_dist_world_size(const kn_dist *dist);
int kn_dist_local_rank(const kn_dist *dist); /* among the ranks on this host */
int kn_dist_local_size(const kn_dist *dist);
const char *kn_dist_host(const kn_dist *dist); /* this rank's host name; borrowed */
kn_device kn_dist_device(const kn_dist *dist);
const char *kn_dist_backend(const kn_dist *dist); /* "mpi" or "nccl" */

/* ---- host collectives (MPI, blocking) ---- */
kn_status kn_dist_broadcast(kn_dist *dist, void *buffer, size_t bytes, int root);
kn_status kn_dist_allreduce_f64(kn_dist *dist, double *values, int count); /* sum, in place */
/* all gets every rank's `bytes` bytes, rank order: world_size x bytes. */
kn_status kn_dist_allgather(kn_dist *dist, const void *mine, void *all, size_t bytes);
kn_status kn_dist_barrier(kn_dist *dist);
/* Starts a sum of count doubles in place; the buffer must stay until kn_dist_wait. */
kn_dist_request *kn_dist_allreduce_f64_start(kn_dist *dist, double *values, int count);

/* ---- tensor collectives (the device's backend) ----
 * t: contiguous float32 on the communicator's device. A broadcast is complete when it
 * returns as far as later work on the device is concerned. */
kn_status kn_dist_broadcast_tensor(kn_dist *dist, kn_tensor *t, int root);
/* Starts summing t over the ranks, in place. Until kn_dist_wait, t must not be touched. */
kn_dist_request *kn_dist_allreduce_start(kn_dist *dist, kn_tensor *t);

/* ---- requests ---- */
/* Lets the request progress (MPI advances nonblocking collectives when tested); *done
 * says whether it is complete. */
kn_status kn_dist_test(kn_dist_request *request, bool *done);
/* Completes the request and frees it (NULL-safe: KN_OK). For NCCL, "complete" means
 * that work queued on the device after this call sees the result. */
kn_status kn_dist_wait(kn_dist_request *request);

/* Ends every rank of the job at once (MPI_Abort) with exit_code: for a rank that failed
 * and must not leave the others waiting. Does not return. */
void kn_dist_abort(kn_dist *dist, int exit_code) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif
#endif
