/*
 * Memory bandwidth of this machine, as the ceiling for memory-bound LLM decode.
 *
 * Two kernels over buffers far larger than the last-level cache (default 1 GiB in all;
 * this machine's L3 is 32 MiB), split evenly over T OpenMP threads (default 2, the
 * benchmark's thread count), each thread first-touching its own part:
 *   read:  sum a uint64 buffer of BYTES bytes (a streaming read, like decode reading
 *          the weights); bytes counted = BYTES
 *   triad: a[i] = b[i] + s * c[i] over three double arrays of BYTES/4 bytes each
 *          (STREAM's triad); bytes counted = 3 * BYTES/4, as STREAM counts them
 *          (the write-allocate read of a[] is not counted)
 * Each kernel runs once to warm up, then ITERS times (default 10); the best time is
 * reported, as STREAM does. GB = 1e9 bytes. Prints one JSON object;
 * "bandwidth_gb_s" is the read figure.
 *
 *   gcc -O3 -march=native -fopenmp -o target/bench/bandwidth bench/peers/bandwidth.c
 *   target/bench/bandwidth [THREADS [BYTES [ITERS]]]
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t bytes = argc > 2 ? strtoull(argv[2], NULL, 10) : (size_t)1 << 30;
    int iters = argc > 3 ? atoi(argv[3]) : 10;
    if (threads < 1 || iters < 1 || bytes < ((size_t)1 << 20)) {
        fprintf(stderr, "usage: bandwidth [THREADS [BYTES>=1MiB [ITERS]]]\n");
        return 2;
    }
    omp_set_num_threads(threads);

    /* read */
    size_t n = bytes / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(64, n * sizeof(uint64_t));
    if (!buf) { perror("aligned_alloc"); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i;
    double best_read = 1e30;
    uint64_t check = 0;
    for (int it = 0; it <= iters; it++) {
        uint64_t sum = 0;
        double t0 = now();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i++) sum += buf[i];
        double t = now() - t0;
        check += sum;
        if (it > 0 && t < best_read) best_read = t;
    }
    free(buf);

    /* triad */
    size_t m = bytes / 4 / sizeof(double);
    double *a = aligned_alloc(64, m * sizeof(double));
    double *b = aligned_alloc(64, m * sizeof(double));
    double *c = aligned_alloc(64, m * sizeof(double));
    if (!a || !b || !c) { perror("aligned_alloc"); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < m; i++) { a[i] = 0.0; b[i] = 1.0; c[i] = 2.0; }
    double best_triad = 1e30;
    const double s = 3.0;
    for (int it = 0; it <= iters; it++) {
        double t0 = now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < m; i++) a[i] = b[i] + s * c[i];
        double t = now() - t0;
        if (it > 0 && t < best_triad) best_triad = t;
    }
    if (a[m / 2] != 7.0) { fprintf(stderr, "triad check failed\n"); return 1; }
    free(a); free(b); free(c);

    double read_gb_s = (double)(n * sizeof(uint64_t)) / best_read / 1e9;
    double triad_gb_s = 3.0 * (double)(m * sizeof(double)) / best_triad / 1e9;
    printf("{\"bandwidth_gb_s\":%.2f,\"read_gb_s\":%.2f,\"triad_gb_s\":%.2f,"
           "\"threads\":%d,\"buffer_bytes\":%zu,\"iterations\":%d,\"checksum\":%llu}\n",
           read_gb_s, read_gb_s, triad_gb_s, threads, bytes, iters,
           (unsigned long long)(check & 0xffff));
    return 0;
}
