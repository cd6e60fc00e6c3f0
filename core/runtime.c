/*
 * runtime.c — process-wide settings of the engine: how many threads its own pool and
 * OpenBLAS use.
 */
#include "kn_internal.h"

/* OpenBLAS's own setter; declared here so the engine needs no OpenBLAS header. */
void openblas_set_num_threads(int num_threads);

void kn_set_num_threads(int n)
{
    kn_cpu_set_num_threads(n);
    openblas_set_num_threads(kn_cpu_get_num_threads());
}

int kn_get_num_threads(void)
{
    return kn_cpu_get_num_threads();
}
