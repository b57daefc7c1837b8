/* The chip LIF op's time loop in C for the CPU: forward loop and reverse sweep of reference.py,
 * operation by operation in its order, without recurrence (the recurrent layers keep the twin).
 *
 * Built at run time by kernels/native.py with -ffp-contract=off: no a*b+c is contracted into an
 * FMA, so with the same inputs (noise drawn by the host, as the twin draws it) the forward equals
 * the twin bit for bit. Layout: time-major [T, B, N], contiguous; per-neuron vectors [N]. Steps
 * run in time order over all rows, so the [T, B, N] arrays stream through memory in order while
 * the [B, N] state stays in L2; the inner loops over n vectorise. Each function is defined for
 * float (_f32) and double (_f64). */
#include <math.h>
#include <stdint.h>

enum { ZERO, SUPERSPIKE, ATAN, SIGMOID, STRAIGHT_THROUGH, TRIANGULAR, SNNTORCH_SIGMOID,
       SNNTORCH_TRIANGULAR };

#define DEFINE_LOOP(real, SUF, FLOOR, FABS, EXP)                                                  \
/* noise_m: membrane noise already times sigma (twin: randn(...).mul_(sigma_m)); noise_r: readout \
 * noise as read_ adds it (LSB when quantising, model units otherwise). Either may be NULL, and     \
 * x_inh (no inhibitory current). Each step of a row runs as passes over n with the options        \
 * tested outside them, so every pass is a branch-free loop the compiler vectorises. */            \
void chip_lif_fwd_##SUF(int64_t T, int64_t B, int64_t N, const real *restrict x_exc,               \
                        const real *restrict x_inh, const real *restrict v_leak,                   \
                        const real *restrict v_reset, const real *restrict v_th,                   \
                        const real *restrict a_mem, const real *restrict keep_e,                   \
                        const real *restrict keep_i, const int32_t *restrict ref_steps,            \
                        const real *restrict offset, const real *restrict offset_u, int spiking,   \
                        int refractory, int quantise, real unit, real zero, real inv_unit,         \
                        real code_min, real code_max, const real *restrict noise_m,                \
                        const real *restrict noise_r, real *restrict v, real *restrict i_e,        \
                        real *restrict i_i, int32_t *restrict ref, real *restrict z_out,           \
                        real *restrict u_out, uint8_t *restrict free_out, real *restrict vt)       \
{                                                                                                  \
    for (int64_t t = 0; t < T; ++t) {                                                              \
        for (int64_t b = 0; b < B; ++b) {                                                          \
            real *restrict vb = v + b * N, *restrict ieb = i_e + b * N;                            \
            real *restrict iib = i_i + b * N;                                                      \
            int32_t *restrict rb = ref + b * N;                                                    \
            const int64_t o = (t * B + b) * N;                                                     \
            real *restrict u = u_out + o;                                                          \
            if (x_inh) {                                                                           \
                for (int64_t n = 0; n < N; ++n)                                                    \
                    vt[n] = vb[n] + ((v_leak[n] - vb[n]) + (ieb[n] - iib[n])) * a_mem[n];          \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n)                                                    \
                    vt[n] = vb[n] + ((v_leak[n] - vb[n]) + ieb[n]) * a_mem[n];                     \
            }                                                                                      \
            if (noise_m)                                                                           \
                for (int64_t n = 0; n < N; ++n) vt[n] = vt[n] + noise_m[o + n];                    \
            for (int64_t n = 0; n < N; ++n) ieb[n] = ieb[n] * keep_e[n] + x_exc[o + n];            \
            if (x_inh)                                                                             \
                for (int64_t n = 0; n < N; ++n) iib[n] = iib[n] * keep_i[n] + x_inh[o + n];        \
            if (refractory) {                                                                      \
                for (int64_t n = 0; n < N; ++n) {                                                  \
                    const int held = rb[n] > 0;                                                    \
                    vt[n] = held ? v_reset[n] : vt[n];                                             \
                    free_out[o + n] = (uint8_t)!held;                                              \
                }                                                                                  \
            }                                                                                      \
            if (quantise) {                                                                        \
                for (int64_t n = 0; n < N; ++n) u[n] = (vt[n] * unit + zero) + offset[n];          \
                if (noise_r)                                                                       \
                    for (int64_t n = 0; n < N; ++n) u[n] = u[n] + noise_r[o + n];                  \
                for (int64_t n = 0; n < N; ++n) {                                                  \
                    real c = FLOOR(u[n] + (real)0.5);                                              \
                    c = c < code_min ? code_min : c;                                               \
                    c = c > code_max ? code_max : c;                                               \
                    u[n] = (c - zero) * inv_unit;                                                  \
                }                                                                                  \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n) u[n] = vt[n] + offset_u[n];                        \
                if (noise_r)                                                                       \
                    for (int64_t n = 0; n < N; ++n) u[n] = u[n] + noise_r[o + n];                  \
            }                                                                                      \
            if (!spiking) {                                                                        \
                for (int64_t n = 0; n < N; ++n) vb[n] = vt[n];                                     \
                continue;                                                                          \
            }                                                                                      \
            if (refractory) {                                                                      \
                for (int64_t n = 0; n < N; ++n) {                                                  \
                    const int z = (vt[n] > v_th[n]) & free_out[o + n];                             \
                    z_out[o + n] = (real)z;                                                        \
                    vb[n] = z ? v_reset[n] : vt[n];                                                \
                    const int32_t r = rb[n] > 0 ? rb[n] - 1 : 0;                                   \
                    rb[n] = z ? ref_steps[n] : r;                                                  \
                }                                                                                  \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n) {                                                  \
                    const int z = vt[n] > v_th[n];                                                 \
                    z_out[o + n] = (real)z;                                                        \
                    vb[n] = z ? v_reset[n] : vt[n];                                                \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* s <- the surrogate `kind` at s (the ops of kernels/surrogate grad_, in their order). */        \
static void surrogate_##SUF(int kind, real alpha, int64_t N, real *restrict s)                     \
{                                                                                                  \
    const real k_atan = (real)(1.5707963267948966 * alpha), half = (real)(alpha / 2);              \
    switch (kind) {                                                                                \
    case SUPERSPIKE:                                                                               \
        for (int64_t n = 0; n < N; ++n) {                                                          \
            const real a = FABS(s[n]) * alpha + (real)1;                                           \
            s[n] = (real)1 / (a * a);                                                              \
        }                                                                                          \
        break;                                                                                     \
    case ATAN:                                                                                     \
        for (int64_t n = 0; n < N; ++n) {                                                          \
            const real a = s[n] * k_atan;                                                          \
            s[n] = (real)1 / (a * a + (real)1) * half;                                             \
        }                                                                                          \
        break;                                                                                     \
    case SIGMOID:                                                                                  \
        for (int64_t n = 0; n < N; ++n) {                                                          \
            const real a = (real)1 / ((real)1 + EXP(-(s[n] * alpha)));                             \
            s[n] = a * ((real)1 - a) * alpha;                                                      \
        }                                                                                          \
        break;                                                                                     \
    case STRAIGHT_THROUGH:                                                                         \
        for (int64_t n = 0; n < N; ++n) s[n] = (real)1;                                            \
        break;                                                                                     \
    case TRIANGULAR:                                                                               \
        for (int64_t n = 0; n < N; ++n) {                                                          \
            const real a = FABS(s[n]) * -alpha + (real)1;                                          \
            s[n] = (a < 0 ? (real)0 : a) * alpha;                                                  \
        }                                                                                          \
        break;                                                                                     \
    case SNNTORCH_SIGMOID:                                                                         \
        for (int64_t n = 0; n < N; ++n) {                                                          \
            const real e = EXP(-alpha * s[n]);                                                     \
            s[n] = alpha * e / ((e + 1) * (e + 1));                                                \
        }                                                                                          \
        break;                                                                                     \
    case SNNTORCH_TRIANGULAR:                                                                      \
        for (int64_t n = 0; n < N; ++n) s[n] = s[n] >= 0 ? -alpha : alpha;                         \
        break;                                                                                     \
    default:                                                                                       \
        for (int64_t n = 0; n < N; ++n) s[n] = (real)0;                                            \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Reverse sweep of the nominal model (reference.backward without recurrence). g_exc[T-1] and     \
 * g_inh[T-1] (g_inh NULL when mirrored) hold the final currents' cotangents on entry; lam_v the   \
 * final membrane's. On return lam_v holds dL/dv0 and g_last the adjoint g of step 0. g_z, g_u     \
 * may be NULL (no cotangent); free is NULL for the LI readout; g, s: [N] scratch. */              \
void chip_lif_bwd_##SUF(int64_t T, int64_t B, int64_t N, const real *restrict g_z,                 \
                        const real *restrict g_u, const real *restrict z,                          \
                        const real *restrict u, const uint8_t *restrict free,                      \
                        const real *restrict v_th, const real *restrict a_mem,                     \
                        const real *restrict keep_m, const real *restrict keep_e,                  \
                        const real *restrict keep_i, int kind, real alpha,                         \
                        real *restrict lam_v, real *restrict g_exc, real *restrict g_inh,          \
                        real *restrict g_last, real *restrict g, real *restrict s)                 \
{                                                                                                  \
    const int64_t BN = B * N;                                                                      \
    for (int64_t t = T - 1; t >= 0; --t) {                                                         \
        for (int64_t b = 0; b < B; ++b) {                                                          \
            real *restrict lv = lam_v + b * N;                                                     \
            const int64_t o = (t * B + b) * N;                                                     \
            if (g_u) {                                                                             \
                for (int64_t n = 0; n < N; ++n) g[n] = g_u[o + n];                                 \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n) g[n] = (real)0;                                    \
            }                                                                                      \
            if (free) {                                                                            \
                if (g_z) {                                                                         \
                    for (int64_t n = 0; n < N; ++n) s[n] = u[o + n] - v_th[n];                     \
                    surrogate_##SUF(kind, alpha, N, s);                                            \
                    for (int64_t n = 0; n < N; ++n) g[n] = g[n] + g_z[o + n] * s[n];               \
                }                                                                                  \
                for (int64_t n = 0; n < N; ++n) {                                                  \
                    const real h = g[n] + ((real)1 - z[o + n]) * lv[n];                            \
                    g[n] = h * (real)free[o + n];                                                  \
                }                                                                                  \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n) g[n] = g[n] + lv[n];                               \
            }                                                                                      \
            for (int64_t n = 0; n < N; ++n) lv[n] = g[n] * keep_m[n];                              \
            if (t == 0) {                                                                          \
                for (int64_t n = 0; n < N; ++n) g_last[b * N + n] = g[n];                          \
                continue;                                                                          \
            }                                                                                      \
            for (int64_t n = 0; n < N; ++n)                                                        \
                g_exc[o - BN + n] = g_exc[o + n] * keep_e[n] + g[n] * a_mem[n];                    \
            if (g_inh)                                                                             \
                for (int64_t n = 0; n < N; ++n)                                                    \
                    g_inh[o - BN + n] = g_inh[o + n] * keep_i[n] - g[n] * a_mem[n];                \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_LOOP(float, f32, floorf, fabsf, expf)
DEFINE_LOOP(double, f64, floor, fabs, exp)
