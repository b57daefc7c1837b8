/* The chip LIF op's time loop in C for the CPU: forward loop and reverse sweep of reference.py,
 * operation by operation in its order, without recurrence (the recurrent layers keep the twin).
 *
 * Built at run time by kernels/native.py with -ffp-contract=off: no a*b+c is contracted into an
 * FMA, so with the same inputs (noise drawn by the host, as the twin draws it) the forward equals
 * the twin bit for bit. Layout: time-major [T, B, N], contiguous; per-neuron vectors [N]. One row
 * b at a time runs all T steps, so its state ([N] per variable) stays in L1 and the inner loop
 * over n vectorises. Each function is defined for float (_f32) and double (_f64). */
#include <math.h>
#include <stdint.h>

enum { ZERO, SUPERSPIKE, ATAN, SIGMOID, STRAIGHT_THROUGH, TRIANGULAR, SNNTORCH_SIGMOID,
       SNNTORCH_TRIANGULAR };

#define DEFINE_LOOP(real, SUF, FLOOR, FABS, EXP)                                                  \
/* noise_m: membrane noise already times sigma (twin: randn(...).mul_(sigma_m)); noise_r: readout \
 * noise as read_ adds it (LSB when quantising, model units otherwise). Either may be NULL. */     \
void chip_lif_fwd_##SUF(int64_t T, int64_t B, int64_t N, const real *x_exc, const real *x_inh,     \
                        const real *v_leak, const real *v_reset, const real *v_th,                 \
                        const real *a_mem, const real *keep_e, const real *keep_i,                 \
                        const int32_t *ref_steps, const real *offset, const real *offset_u,        \
                        int spiking, int refractory, int has_inh, int quantise, real unit,         \
                        real zero, real inv_unit, real code_min, real code_max,                    \
                        const real *noise_m, const real *noise_r, real *v, real *i_e, real *i_i,   \
                        int32_t *ref, real *z_out, real *u_out, uint8_t *free_out)                 \
{                                                                                                  \
    for (int64_t b = 0; b < B; ++b) {                                                              \
        real *vb = v + b * N, *ieb = i_e + b * N, *iib = i_i + b * N;                              \
        int32_t *rb = ref + b * N;                                                                 \
        for (int64_t t = 0; t < T; ++t) {                                                          \
            const int64_t o = (t * B + b) * N;                                                     \
            for (int64_t n = 0; n < N; ++n) {                                                      \
                real drive = v_leak[n] - vb[n];                                                    \
                drive = has_inh ? drive + (ieb[n] - iib[n]) : drive + ieb[n];                      \
                drive = drive * a_mem[n];                                                          \
                real vt = vb[n] + drive;                                                           \
                if (noise_m) vt = vt + noise_m[o + n];                                             \
                ieb[n] = ieb[n] * keep_e[n] + x_exc[o + n];                                        \
                if (has_inh) iib[n] = iib[n] * keep_i[n] + (x_inh ? x_inh[o + n] : (real)0);       \
                int held = refractory && rb[n] > 0;                                                \
                vt = held ? v_reset[n] : vt;                                                       \
                int z = spiking && !held && vt > v_th[n];                                          \
                real u;                                                                            \
                if (quantise) {                                                                    \
                    real c = vt * unit;                                                            \
                    c = c + zero;                                                                  \
                    c = c + offset[n];                                                             \
                    if (noise_r) c = c + noise_r[o + n];                                           \
                    c = FLOOR(c + (real)0.5);                                                      \
                    c = c < code_min ? code_min : (c > code_max ? code_max : c);                   \
                    u = (c - zero) * inv_unit;                                                     \
                } else {                                                                           \
                    u = vt + offset_u[n];                                                          \
                    if (noise_r) u = u + noise_r[o + n];                                           \
                }                                                                                  \
                u_out[o + n] = u;                                                                  \
                if (!spiking) { vb[n] = vt; continue; }                                            \
                z_out[o + n] = (real)z;                                                            \
                if (refractory) free_out[o + n] = (uint8_t)!held;                                  \
                vb[n] = z ? v_reset[n] : vt;                                                       \
                if (refractory) {                                                                  \
                    int32_t r = rb[n] - 1;                                                         \
                    r = r < 0 ? 0 : r;                                                             \
                    rb[n] = z ? ref_steps[n] : r;                                                  \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
static inline real surrogate_##SUF(int kind, real alpha, real x)                                   \
{                                                                                                  \
    real s;                                                                                        \
    switch (kind) {                                                                                \
    case SUPERSPIKE: s = FABS(x) * alpha + (real)1; return (real)1 / (s * s);                      \
    case ATAN: s = x * (real)(1.5707963267948966 * alpha);                                         \
               return (real)1 / (s * s + (real)1) * (real)(alpha / 2);                             \
    case SIGMOID: s = (real)1 / ((real)1 + EXP(-(x * alpha)));                                     \
                  return s * ((real)1 - s) * alpha;                                                \
    case STRAIGHT_THROUGH: return (real)1;                                                         \
    case TRIANGULAR: s = FABS(x) * -alpha + (real)1; return (s < 0 ? (real)0 : s) * alpha;         \
    case SNNTORCH_SIGMOID: s = EXP(-alpha * x); return alpha * s / ((s + 1) * (s + 1));            \
    case SNNTORCH_TRIANGULAR: return x >= 0 ? -alpha : alpha;                                      \
    default: return (real)0;                                                                       \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* Reverse sweep of the nominal model (reference.backward without recurrence). g_exc[T-1] and     \
 * g_inh[T-1] (g_inh NULL when mirrored) hold the final currents' cotangents on entry; lam_v the   \
 * final membrane's. On return lam_v holds dL/dv0 and g_last the adjoint g of step 0. */           \
void chip_lif_bwd_##SUF(int64_t T, int64_t B, int64_t N, const real *g_z, const real *g_u,         \
                        const real *z, const real *u, const uint8_t *free, const real *v_th,       \
                        const real *a_mem, const real *keep_m, const real *keep_e,                 \
                        const real *keep_i, int spiking, int kind, real alpha, real *lam_v,        \
                        real *g_exc, real *g_inh, real *g_last)                                    \
{                                                                                                  \
    for (int64_t b = 0; b < B; ++b) {                                                              \
        real *lv = lam_v + b * N, *gl = g_last + b * N;                                            \
        for (int64_t t = T - 1; t >= 0; --t) {                                                     \
            const int64_t o = (t * B + b) * N;                                                     \
            for (int64_t n = 0; n < N; ++n) {                                                      \
                real g = g_u ? g_u[o + n] : (real)0;                                               \
                if (spiking) {                                                                     \
                    if (g_z) g = g + g_z[o + n] * surrogate_##SUF(kind, alpha, u[o + n] - v_th[n]);\
                    g = g + ((real)1 - z[o + n]) * lv[n];                                          \
                    g = g * (real)(free ? free[o + n] : 1);                                        \
                } else {                                                                           \
                    g = g + lv[n];                                                                 \
                }                                                                                  \
                lv[n] = g * keep_m[n];                                                             \
                if (t > 0) {                                                                       \
                    g_exc[o - B * N + n] = g_exc[o + n] * keep_e[n] + g * a_mem[n];                \
                    if (g_inh) g_inh[o - B * N + n] = g_inh[o + n] * keep_i[n] - g * a_mem[n];     \
                } else {                                                                           \
                    gl[n] = g;                                                                     \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_LOOP(float, f32, floorf, fabsf, expf)
DEFINE_LOOP(double, f64, floor, fabs, exp)
