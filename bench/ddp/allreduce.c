/*
 * bench/ddp/allreduce.c — the cost of summing a gradient over the ranks, for the cost
 * model of docs/scaling.md: MPI_Allreduce (in place, float, sum) of each size given, on
 * every rank started by mpirun, timed over enough repetitions. Rank 0 prints one JSON
 * line per size: {"bytes", "ranks", "seconds" (mean per all-reduce), "bus_gb_per_s"
 * (bytes x 2(N-1)/N / seconds, NCCL's "bus bandwidth": what each link carries)}.
 * Built and run by bench/ddp/run.sh:  mpirun -np 2 allreduce BYTES...
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    for (int a = 1; a < argc; a++) {
        long bytes = atol(argv[a]);
        int count = (int)(bytes / 4 > 0 ? bytes / 4 : 1);
        float *v = calloc((size_t)count, sizeof *v);
        if (!v) MPI_Abort(MPI_COMM_WORLD, 1);
        for (int i = 0; i < 5; i++) /* warm up the transport */
            MPI_Allreduce(MPI_IN_PLACE, v, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        int reps = 10;
        double elapsed = 0;
        for (;;) { /* at least 0.5 s of all-reduces, the same count on every rank */
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            for (int i = 0; i < reps; i++)
                MPI_Allreduce(MPI_IN_PLACE, v, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            elapsed = MPI_Wtime() - t0;
            MPI_Bcast(&elapsed, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
            if (elapsed > 0.5 || reps > 1000000) break;
            reps *= 4;
        }
        double t = elapsed / reps;
        if (rank == 0)
            printf("{\"bytes\": %ld, \"ranks\": %d, \"seconds\": %.9g, \"bus_gb_per_s\": %.4g}\n",
                   (long)count * 4, n, t, (double)count * 4 * 2 * (n - 1) / n / t / 1e9);
        free(v);
    }
    MPI_Finalize();
    return 0;
}
