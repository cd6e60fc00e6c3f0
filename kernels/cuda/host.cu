/*
 * host.cu — the module's host-side table, kn_cuda_host_v1 (kn_cuda_host.h): page-locked
 * host memory, events on a device's stream and copies that do not wait, for the
 * trainer's staging buffers; the graph entries are graph.cu's.
 */
#include "kn_cuda_graph_internal.h"
#include "kn_cuda_host.h"
#include "kn_cuda_internal.h"

static const char *host_alloc(size_t nbytes, void **out)
{
    *out = NULL;
    /* portable: page-locked for every device, whichever is current */
    return kn_cuda_check(cudaHostAlloc(out, nbytes ? nbytes : 1, cudaHostAllocPortable),
                         "pinned host alloc");
}

static void host_free(void *ptr)
{
    if (!ptr) return;
    cudaFreeHost(ptr);
    cudaGetLastError();
}

static const char *event_new(int device, void **out)
{
    *out = NULL;
    const char *error = kn_cuda_enter(device, "event", NULL, NULL);
    if (error) return error;
    cudaEvent_t event;
    if ((error = kn_cuda_check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "event")))
        return error;
    *out = (void *)event;
    return NULL;
}

static void event_free(void *event)
{
    if (!event) return;
    cudaEventDestroy((cudaEvent_t)event);
    cudaGetLastError();
}

static const char *event_record(int device, void *event)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "event record", &stream, NULL);
    if (error) return error;
    return kn_cuda_check(cudaEventRecord((cudaEvent_t)event, stream), "event record");
}

static const char *event_wait(void *event)
{
    return kn_cuda_check(cudaEventSynchronize((cudaEvent_t)event), "event wait");
}

static const char *copy_h2d_async(int device, void *dst, const void *src, size_t nbytes)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "async copy to cuda", &stream, NULL);
    if (error || nbytes == 0) return error;
    return kn_cuda_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream),
                         "async copy to cuda");
}

static const char *copy_d2h_async(int device, void *dst, const void *src, size_t nbytes)
{
    cudaStream_t stream;
    const char *error = kn_cuda_enter(device, "async copy to cpu", &stream, NULL);
    if (error || nbytes == 0) return error;
    return kn_cuda_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream),
                         "async copy to cpu");
}

static const kn_cuda_host host_table = {
    KN_CUDA_HOST_ABI,    sizeof(kn_cuda_host),
    host_alloc,          host_free,
    event_new,           event_free,
    event_record,        event_wait,
    copy_h2d_async,      copy_d2h_async,
    kn_cuda_pool_new,    kn_cuda_pool_free,
    kn_cuda_pool_stats,  kn_cuda_capture_begin,
    kn_cuda_capture_end, kn_cuda_graph_launch,
    kn_cuda_graph_free,
};

extern "C" __attribute__((visibility("default"))) const kn_cuda_host *kn_cuda_host_v1(void)
{
    return &host_table;
}
