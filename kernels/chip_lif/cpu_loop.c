/* The chip LIF op's time loop in C for the CPU: forward loop and reverse sweep of reference.py,
 * operation by operation in its order. Recurrence runs in the forward only, from the spike events
 * (the twin's per-step GEMM sums the same terms in another order); the recurrent reverse sweep
 * keeps the twin, whose per-step GEMMs of dense adjoints BLAS does better.
 *
 * Built at run time by kernels/native.py with -ffp-contract=off: no a*b+c is contracted into an
 * FMA, so with the same inputs and noise off the forward equals the twin bit for bit (the noise
 * is drawn here by its own generator: equal to the twin's in law, not sample by sample). Layout: time-major [T, B, N], contiguous; per-neuron vectors [N]. Steps
 * run in time order over all rows, so the [T, B, N] arrays stream through memory in order while
 * the [B, N] state stays in L2; the inner loops over n vectorise. Each function is defined for
 * float (_f32) and double (_f64). */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { ZERO, SUPERSPIKE, ATAN, SIGMOID, STRAIGHT_THROUGH, TRIANGULAR, SNNTORCH_SIGMOID,
       SNNTORCH_TRIANGULAR };

/* Counter-based Gaussian pairs: element i of a step whose keys are k[0..2] (from the run's seed
 * and the step: the noise of a step depends on (seed, step, element) only, so a run computed in
 * pieces equals the run computed whole). Two 32-bit hashes of the element's counter give two
 * uniforms; Box-Muller turns them into two independent normals, z0 for the membrane and z1 for
 * the readout. log, sin and cos are short polynomials (float accuracy) written out so the loop
 * over n vectorises: the draws cost a few ns per element, torch.randn about as much per draw. */
static inline uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

static inline float as_float(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* ln(u) for u in (0, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh((m-1)/(m+1)) */
static inline float log_unit(float u)
{
    uint32_t b;
    memcpy(&b, &u, sizeof b);
    float e = (float)((int32_t)(b >> 23) - 127);
    float m = as_float((b & 0x7fffffu) | 0x3f800000u);
    const int big = m > 1.41421356f;
    m = big ? m * 0.5f : m;
    e = big ? e + 1.0f : e;
    const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
    const float p = 1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
    return e * 0.69314718f + 2.0f * t * p;
}

static void normal_pairs(const uint32_t *k, int64_t i0, int64_t N, float *restrict z0,
                         float *restrict z1)
{
    for (int64_t n = 0; n < N; ++n) {
        const uint32_t x = mix32((uint32_t)(i0 + n) ^ k[0]);
        const uint32_t h1 = mix32(x + k[1]), h2 = mix32(x ^ k[2]);
        const float u1 = (float)((h1 >> 8) + 1) * 0x1p-24f;              /* (0, 1] */
        const float r = sqrtf(-2.0f * log_unit(u1));
        /* angle: quadrant from the top two bits, plus th in [-pi/4, pi/4) */
        const float th = ((float)((h2 >> 6) & 0xffffffu) * 0x1p-24f - 0.5f) * 1.57079633f;
        const float q = th * th;
        const float sn = th * (1.0f - q / 6 * (1.0f - q / 20 * (1.0f - q / 42 * (1.0f - q / 72))));
        const float cs = 1.0f - q / 2 * (1.0f - q / 12 * (1.0f - q / 30 * (1.0f - q / 56)));
        const uint32_t quad = h2 >> 30;
        const float c = quad == 0 ? cs : quad == 1 ? -sn : quad == 2 ? -cs : sn;
        const float s = quad == 0 ? sn : quad == 1 ? cs : quad == 2 ? -sn : -cs;
        z0[n] = r * c;
        z1[n] = r * s;
    }
}

#define DEFINE_LOOP(real, SUF, FLOOR, FABS, EXP)                                                  \
/* keys: [T, 3] noise keys per step (NULL: no noise); sigma_m: membrane noise (model units),       \
 * sigma_r: readout noise as read_ adds it (LSB when quantising, model units otherwise). x_inh may  \
 * be NULL. rec_e, rec_i: [N, N] recurrent weights, row = presynaptic neuron (NULL: none); z0:    \
 * [B, N] spikes before the run (NULL: none). Each step of a row runs as passes over n with the    \
 * options tested outside them, so every pass is a branch-free loop the compiler vectorises. vt,   \
 * nm, nr, xe, xi: [N] scratch. */                                                                 \
void chip_lif_fwd_##SUF(int64_t T, int64_t B, int64_t N, const real *restrict x_exc,               \
                        const real *restrict x_inh, const real *restrict v_leak,                   \
                        const real *restrict v_reset, const real *restrict v_th,                   \
                        const real *restrict a_mem, const real *restrict keep_e,                   \
                        const real *restrict keep_i, const int32_t *restrict ref_steps,            \
                        const real *restrict offset, const real *restrict offset_u, int spiking,   \
                        int refractory, int quantise, real unit, real zero, real inv_unit,         \
                        real code_min, real code_max, const uint32_t *restrict keys,               \
                        real sigma_m, real sigma_r, real *restrict v, real *restrict i_e,          \
                        real *restrict i_i, int32_t *restrict ref, real *restrict z_out,           \
                        real *restrict u_out, uint8_t *restrict free_out, real *restrict vt,       \
                        float *restrict nm, float *restrict nr, const real *restrict rec_e,        \
                        const real *restrict rec_i, const real *restrict z0,                       \
                        real *restrict xe, real *restrict xi)                                      \
{                                                                                                  \
    const int has_inh = x_inh || rec_i;                                                            \
    for (int64_t t = 0; t < T; ++t) {                                                              \
        for (int64_t b = 0; b < B; ++b) {                                                          \
            real *restrict vb = v + b * N, *restrict ieb = i_e + b * N;                            \
            real *restrict iib = i_i + b * N;                                                      \
            int32_t *restrict rb = ref + b * N;                                                    \
            const int64_t o = (t * B + b) * N;                                                     \
            real *restrict u = u_out + o;                                                          \
            if (keys) normal_pairs(keys + 3 * t, b * N, N, nm, nr);                                \
            const real *restrict x_e = x_exc + o, *restrict x_i = x_inh ? x_inh + o : 0;           \
            if (rec_e) {                                                                           \
                /* the previous step's spikes through the recurrent synapses: a sum of the rows  \
                 * of the fired neurons (twin: x + z[t-1] @ W^T, the product first) */            \
                const real *restrict zp = t ? z_out + o - B * N : (z0 ? z0 + b * N : 0);           \
                for (int64_t n = 0; n < N; ++n) xe[n] = xi[n] = 0;                                 \
                for (int64_t k = 0; zp && k < N; ++k) {                                            \
                    if (zp[k] == 0) continue;                                                      \
                    const real *restrict we = rec_e + k * N, *restrict wi = rec_i + k * N;         \
                    for (int64_t n = 0; n < N; ++n) {                                              \
                        xe[n] = xe[n] + zp[k] * we[n];                                             \
                        xi[n] = xi[n] + zp[k] * wi[n];                                             \
                    }                                                                              \
                }                                                                                  \
                for (int64_t n = 0; n < N; ++n) xe[n] = x_e[n] + xe[n];                            \
                if (x_i)                                                                           \
                    for (int64_t n = 0; n < N; ++n) xi[n] = x_i[n] + xi[n];                        \
                x_e = xe;                                                                          \
                x_i = xi;                                                                          \
            }                                                                                      \
            if (has_inh) {                                                                         \
                for (int64_t n = 0; n < N; ++n)                                                    \
                    vt[n] = vb[n] + ((v_leak[n] - vb[n]) + (ieb[n] - iib[n])) * a_mem[n];          \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n)                                                    \
                    vt[n] = vb[n] + ((v_leak[n] - vb[n]) + ieb[n]) * a_mem[n];                     \
            }                                                                                      \
            if (keys && sigma_m != 0)                                                              \
                for (int64_t n = 0; n < N; ++n) vt[n] = vt[n] + (real)nm[n] * sigma_m;             \
            for (int64_t n = 0; n < N; ++n) ieb[n] = ieb[n] * keep_e[n] + x_e[n];                  \
            if (has_inh)                                                                           \
                for (int64_t n = 0; n < N; ++n) iib[n] = iib[n] * keep_i[n] + x_i[n];              \
            if (refractory) {                                                                      \
                for (int64_t n = 0; n < N; ++n) {                                                  \
                    const int held = rb[n] > 0;                                                    \
                    vt[n] = held ? v_reset[n] : vt[n];                                             \
                    free_out[o + n] = (uint8_t)!held;                                              \
                }                                                                                  \
            }                                                                                      \
            if (quantise) {                                                                        \
                for (int64_t n = 0; n < N; ++n) u[n] = (vt[n] * unit + zero) + offset[n];          \
                if (keys && sigma_r != 0)                                                          \
                    for (int64_t n = 0; n < N; ++n) u[n] = u[n] + (real)nr[n] * sigma_r;           \
                for (int64_t n = 0; n < N; ++n) {                                                  \
                    real c = FLOOR(u[n] + (real)0.5);                                              \
                    c = c < code_min ? code_min : c;                                               \
                    c = c > code_max ? code_max : c;                                               \
                    u[n] = (c - zero) * inv_unit;                                                  \
                }                                                                                  \
            } else {                                                                               \
                for (int64_t n = 0; n < N; ++n) u[n] = vt[n] + offset_u[n];                        \
                if (keys && sigma_r != 0)                                                          \
                    for (int64_t n = 0; n < N; ++n) u[n] = u[n] + (real)nr[n] * sigma_r;           \
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
