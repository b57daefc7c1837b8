/* Spike events of a [M, K] matrix in one pass (kernels/events.py): the row offsets and column of
 * every nonzero, in row-major order, stopping as soon as more than `capacity` are found (the
 * caller then takes the dense product); and the products over them, written into the caller's
 * buffers (reused across calls: no fresh [M, N] output to page-fault in). It reads the matrix once; torch's count, then nonzero,
 * read it twice: A's input [25600 x 256], 1 thread, 20 vs 62 ms on the loaded 2-core machine.
 * Built by kernels/native.py. */
#include <stdint.h>

/* Returns the number of events (<= capacity), or -1 when there are more. offsets: [M + 1];
 * cols: [capacity]; all_ones: set to 1 when every nonzero equals 1 (0/1 spikes). */
#define DEFINE_EVENTS(real, SUF)                                                                   \
int64_t spike_events_##SUF(int64_t M, int64_t K, const real *restrict x, int64_t capacity,        \
                           int64_t *restrict offsets, int64_t *restrict cols,                     \
                           int32_t *restrict all_ones)                                            \
{                                                                                                  \
    int64_t nnz = 0;                                                                               \
    int ones = 1;                                                                                  \
    offsets[0] = 0;                                                                                \
    for (int64_t m = 0; m < M; ++m) {                                                              \
        const real *restrict row = x + m * K;                                                      \
        int any = 0;                                                                               \
        for (int64_t k = 0; k < K; ++k) any |= row[k] != 0;                                        \
        if (any) {                                                                                 \
            for (int64_t k = 0; k < K; ++k) {                                                      \
                if (row[k] != 0) {                                                                 \
                    if (nnz == capacity) return -1;                                                \
                    ones &= row[k] == 1;                                                           \
                    cols[nnz++] = k;                                                               \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        offsets[m + 1] = nnz;                                                                      \
    }                                                                                              \
    *all_ones = ones;                                                                              \
    return nnz;                                                                                    \
}                                                                                                  \
                                                                                                   \
/* out [M, N] = the sums of table rows [K, N] over each row's events (times their values when    \
 * given): the forward product, in event order, into a caller's buffer. */                        \
void events_product_##SUF(int64_t M, int64_t N, const int64_t *restrict offsets,                   \
                          const int64_t *restrict cols, const real *restrict values,              \
                          const real *restrict table, real *restrict out)                         \
{                                                                                                  \
    for (int64_t m = 0; m < M; ++m) {                                                              \
        real *restrict o = out + m * N;                                                            \
        for (int64_t n = 0; n < N; ++n) o[n] = 0;                                                  \
        for (int64_t j = offsets[m]; j < offsets[m + 1]; ++j) {                                    \
            const real *restrict w = table + cols[j] * N;                                          \
            if (values) {                                                                          \
                const real v = values[j];                                                          \
                for (int64_t n = 0; n < N; ++n) o[n] = o[n] + v * w[n];                            \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n) o[n] = o[n] + w[n];                                \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* out [K, N] (zero on entry) += the rows of g [M, N] over the events (m, k), times their values   \
 * when given: the weight gradient (transposed), each column's events in row order. */            \
void events_weight_grad_##SUF(int64_t M, int64_t N, const int64_t *restrict offsets,               \
                              const int64_t *restrict cols, const real *restrict values,          \
                              const real *restrict g, real *restrict out)                         \
{                                                                                                  \
    for (int64_t m = 0; m < M; ++m) {                                                              \
        const real *restrict gm = g + m * N;                                                       \
        for (int64_t j = offsets[m]; j < offsets[m + 1]; ++j) {                                    \
            real *restrict o = out + cols[j] * N;                                                  \
            if (values) {                                                                          \
                const real v = values[j];                                                          \
                for (int64_t n = 0; n < N; ++n) o[n] = o[n] + v * gm[n];                           \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n) o[n] = o[n] + gm[n];                               \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_EVENTS(float, f32)
DEFINE_EVENTS(double, f64)
