/*
 * kn_cpu_gather.h — raw CPU kernels that move elements: by an int64 index (row
 * selection for index_select and embedding, gather, and their scatter-add backwards;
 * indices are assumed already checked to be in range), and the blocked copy that makes
 * a strided tensor contiguous.
 */
#ifndef KN_CPU_GATHER_H
#define KN_CPU_GATHER_H

#include <stddef.h>
#include <stdint.h>

/* in is contiguous [outer, in_size, inner], out contiguous [outer, n, inner]:
 * out[o, j, :] = in[o, index[j], :]. Elements are elem_size bytes (any dtype). */
void kn_cpu_index_select(size_t elem_size, void *out, const void *in, const int64_t *index,
                         int64_t n, int64_t outer, int64_t in_size, int64_t inner);

/* The backward of index_select (float32, contiguous):
 * grad_in[o, index[j], :] += grad_out[o, j, :]. */
void kn_cpu_index_add(float *grad_in, const float *grad_out, const int64_t *index, int64_t n,
                      int64_t outer, int64_t in_size, int64_t inner);

/* torch.gather over shape (the index's shape, rank >= 1): out (contiguous) at position p
 * is in at p's coordinates with coordinate dim replaced by index[p] (index contiguous).
 * in_strides are the input's element strides. */
void kn_cpu_gather(size_t elem_size, const int64_t *shape, int ndim, int dim, void *out,
                   const void *in, const int64_t *in_strides, const int64_t *index);

/* The backward of gather (float32): grad_in (strides in_strides) at p's coordinates
 * with dim replaced by index[p] += grad_out at p (strides grad_strides). */
void kn_cpu_scatter_add(const int64_t *shape, int ndim, int dim, float *grad_in,
                        const int64_t *in_strides, const float *grad_out,
                        const int64_t *grad_strides, const int64_t *index);

/* A contiguous copy (out) of a strided tensor; transposing copies (the last dim strided,
 * another unit-stride) go tile by tile so both sides stay in cache. */
void kn_cpu_copy_to_contiguous(const int64_t *shape, int ndim, size_t elem_size, void *out,
                               const void *in, const int64_t *in_strides);

#endif
