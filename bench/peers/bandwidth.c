/*
 * Memory bandwidth of this machine, as the ceiling for memory-bound LLM decode.
 *
 * Kernels over buffers far larger than the last-level cache (1 GiB by default; this
 * machine's L3 is 32 MiB), split evenly over T OpenMP threads (default 2, the benchmark's
 * thread count), each thread first-touching its own part:
 *   read:  sum a 1 GiB buffer; each thread reads its half as 4 interleaved sequential
 *          streams with 64-byte vector loads (GCC vector extensions, so any -march works).
 *          Bytes counted = the buffer. Measured twice: on transparent huge pages
 *          (madvise(MADV_HUGEPAGE)) -> "read_gb_s", and on 4 KiB pages
 *          (MADV_NOHUGEPAGE) -> "read_4k_pages_gb_s". On this VM the hardware prefetchers
 *          do noticeably better on huge pages (one sequential stream per core: ~33 vs
 *          ~23 GB/s); several streams per thread narrow the gap.
 *   triad: a[i] = b[i] + s * c[i] over three double arrays of 256 MiB each on huge pages
 *          (STREAM's triad); bytes counted = 3 arrays, as STREAM counts them (the
 *          write-allocate read of a[] is not counted).
 * Each kernel runs once to warm up, then ITERS times (default 10); the best time is
 * reported, as STREAM does. GB = 1e9 bytes. Prints one JSON object; "bandwidth_gb_s" is
 * the best read figure, the limit for decode, which streams the weights once per token.
 *
 *   gcc -O3 -march=native -fopenmp -o target/bench/bandwidth bench/peers/bandwidth.c
 *   target/bench/bandwidth [THREADS [BYTES [ITERS]]]
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define STREAMS 4
#define HUGE_PAGE ((size_t)2 << 20)

typedef uint64_t v8u64 __attribute__((vector_size(64)));

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* BYTES (a multiple of 2 MiB) aligned to 2 MiB, with or without transparent huge pages. */
static void *alloc(size_t bytes, int huge) {
    void *p = aligned_alloc(HUGE_PAGE, bytes);
    if (!p) {
        perror("aligned_alloc");
        exit(1);
    }
    madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE); /* advisory; errors ignored */
    return p;
}

/* Best time over ITERS of reading BYTES with T threads; the checksum keeps the reads alive. */
static double read_gb_s(size_t bytes, int huge, int iters, uint64_t *checksum) {
    size_t n = bytes / sizeof(v8u64);
    v8u64 *buf = alloc(bytes, huge);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        v8u64 x = {i, i, i, i, i, i, i, i};
        buf[i] = x;
    }
    double best = 1e30;
    for (int it = 0; it <= iters; it++) {
        uint64_t total = 0;
        double t0 = now();
#pragma omp parallel reduction(+ : total)
        {
            size_t per = n / omp_get_num_threads();
            size_t lo = per * omp_get_thread_num(), len = per / STREAMS;
            v8u64 acc[STREAMS];
            memset(acc, 0, sizeof acc);
            for (size_t i = 0; i < len; i++)
                for (int s = 0; s < STREAMS; s++) acc[s] += buf[lo + s * len + i];
            for (int s = 0; s < STREAMS; s++)
                for (int k = 0; k < 8; k++) total += acc[s][k];
        }
        double t = now() - t0;
        *checksum += total;
        if (it > 0 && t < best) best = t;
    }
    free(buf);
    return (double)bytes / best / 1e9;
}

static double triad_gb_s(size_t bytes, int iters) {
    size_t m = bytes / 4 / sizeof(double);
    double *a = alloc(m * sizeof(double), 1);
    double *b = alloc(m * sizeof(double), 1);
    double *c = alloc(m * sizeof(double), 1);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < m; i++) {
        a[i] = 0.0;
        b[i] = 1.0;
        c[i] = 2.0;
    }
    double best = 1e30;
    const double s = 3.0;
    for (int it = 0; it <= iters; it++) {
        double t0 = now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < m; i++) a[i] = b[i] + s * c[i];
        double t = now() - t0;
        if (it > 0 && t < best) best = t;
    }
    if (a[m / 2] != 7.0) {
        fprintf(stderr, "triad check failed\n");
        exit(1);
    }
    free(a);
    free(b);
    free(c);
    return 3.0 * (double)(m * sizeof(double)) / best / 1e9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t bytes = argc > 2 ? strtoull(argv[2], NULL, 10) : (size_t)1 << 30;
    int iters = argc > 3 ? atoi(argv[3]) : 10;
    /* Whole huge pages, and whole vectors for every stream of every thread. */
    size_t quantum = HUGE_PAGE * (size_t)(threads > 0 ? threads : 1);
    bytes = bytes / quantum * quantum;
    if (threads < 1 || iters < 1 || bytes == 0) {
        fprintf(stderr, "usage: bandwidth [THREADS [BYTES >= 2 MiB x THREADS [ITERS]]]\n");
        return 2;
    }
    omp_set_num_threads(threads);

    uint64_t checksum = 0;
    double read_huge = read_gb_s(bytes, 1, iters, &checksum);
    double read_4k = read_gb_s(bytes, 0, iters, &checksum);
    double triad = triad_gb_s(bytes, iters);
    double best = read_huge > read_4k ? read_huge : read_4k;
    printf("{\"bandwidth_gb_s\":%.2f,\"read_gb_s\":%.2f,\"read_4k_pages_gb_s\":%.2f,"
           "\"triad_gb_s\":%.2f,\"threads\":%d,\"buffer_bytes\":%zu,\"iterations\":%d,"
           "\"checksum\":%llu}\n",
           best, read_huge, read_4k, triad, threads, bytes, iters,
           (unsigned long long)(checksum & 0xffff));
    return 0;
}
