/* snntorch's neuron updates in C for the CPU: the forward loop and the reverse sweep of
 * reference.py for neurons without recurrence and with reset_delay=True (Leaky, Synaptic,
 * Lapicque as forward_pass runs them), operation by operation in its order. Built at run time by
 * kernels/native.py with -ffp-contract=off (no FMA), so results equal the twin's bit for bit,
 * hence stock snntorch's. Layout: [T, E] contiguous (E = elements of one step); the parameters are
 * expanded to [E]. Time outer, elements inner: every inner loop is branch-free and vectorises. */
#include <stdint.h>

enum { RESET_SUB, RESET_ZERO, RESET_NONE };

#define DEFINE_SNN(real, SUF)                                                                      \
/* mem [T, E] (and syn [T, E] for synaptic neurons) from x [T, E] and the state u0, i0 [E]. */    \
void snn_fwd_##SUF(int64_t T, int64_t E, const real *restrict x, const real *restrict u0,         \
                   const real *restrict i0, const real *restrict beta,                            \
                   const real *restrict alpha, const real *restrict theta, int synaptic,          \
                   int reset, int zero_pre, real *restrict mem, real *restrict syn)               \
{                                                                                                  \
    for (int64_t t = 0; t < T; ++t) {                                                              \
        const real *restrict U = t ? mem + (t - 1) * E : u0;                                       \
        const real *restrict xt = x + t * E;                                                       \
        real *restrict U1 = mem + t * E;                                                           \
        if (synaptic) {                                                                            \
            const real *restrict I = t ? syn + (t - 1) * E : i0;                                   \
            real *restrict I1 = syn + t * E;                                                       \
            for (int64_t e = 0; e < E; ++e) {                                                      \
                I1[e] = alpha[e] * I[e] + xt[e];                                                   \
                U1[e] = beta[e] * U[e] + I1[e];                                                    \
            }                                                                                      \
        } else if (zero_pre) {                                                                     \
            for (int64_t e = 0; e < E; ++e) {                                                      \
                const real keep = (real)1 - (real)(U[e] > theta[e]);                               \
                U1[e] = beta[e] * (keep * U[e]) + xt[e];                                           \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t e = 0; e < E; ++e) U1[e] = beta[e] * U[e] + xt[e];                        \
        }                                                                                          \
        if (reset == RESET_SUB) {                                                                  \
            for (int64_t e = 0; e < E; ++e) U1[e] = U1[e] - (U[e] > theta[e] ? theta[e] : 0);      \
        } else if (reset == RESET_ZERO && !zero_pre) {                                             \
            for (int64_t e = 0; e < E; ++e) U1[e] = U1[e] - (U[e] > theta[e] ? U1[e] : 0);         \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* The reverse sweep of the membrane / current adjoints (reference._sweep): g_x [T, E] and, when   \
 * g_u1 is given, dL/dU' [T, E]; lam_u, lam_i [E] (zero on entry) the adjoints of u0, i0 on       \
 * return. g_mem, g_fire, keep, g_syn, g_u1 may be NULL; tmp: [E] scratch. */                     \
void snn_bwd_##SUF(int64_t T, int64_t E, const real *restrict g_mem, const real *restrict g_fire, \
                   const real *restrict keep, const real *restrict g_syn,                         \
                   const real *restrict beta, const real *restrict alpha, int synaptic,           \
                   int zero_post, int zero_pre, real *restrict g_x, real *restrict g_u1,          \
                   real *restrict lam_u, real *restrict lam_i, real *restrict tmp)                \
{                                                                                                  \
    for (int64_t t = T - 1; t >= 0; --t) {                                                         \
        const int64_t o = t * E;                                                                   \
        real *restrict g_u = synaptic ? tmp : g_x + o;                                             \
        if (g_mem) {                                                                               \
            for (int64_t e = 0; e < E; ++e) g_u[e] = g_mem[o + e] + lam_u[e];                      \
        } else {                                                                                   \
            for (int64_t e = 0; e < E; ++e) g_u[e] = lam_u[e];                                     \
        }                                                                                          \
        if (g_fire)                                                                                \
            for (int64_t e = 0; e < E; ++e) g_u[e] = g_u[e] + g_fire[o + e];                       \
        if (zero_post)                                                                             \
            for (int64_t e = 0; e < E; ++e) g_u[e] = g_u[e] * keep[o + e];                         \
        if (g_u1)                                                                                  \
            for (int64_t e = 0; e < E; ++e) g_u1[o + e] = g_u[e];                                  \
        for (int64_t e = 0; e < E; ++e) lam_u[e] = g_u[e] * beta[e];                               \
        if (synaptic) {                                                                            \
            for (int64_t e = 0; e < E; ++e) {                                                      \
                real g_i = g_u[e] + lam_i[e];                                                      \
                if (g_syn) g_i = g_i + g_syn[o + e];                                               \
                g_x[o + e] = g_i;                                                                  \
                lam_i[e] = g_i * alpha[e];                                                         \
            }                                                                                      \
        } else if (zero_pre) {                                                                     \
            for (int64_t e = 0; e < E; ++e) lam_u[e] = lam_u[e] * keep[o + e];                     \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_SNN(float, f32)
DEFINE_SNN(double, f64)
