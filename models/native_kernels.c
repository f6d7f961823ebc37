/* Fused CPU loops for the attention filterbank and the LSTM gate algebra (see models/native.py).
 *
 * Each function does in one or two passes over memory what the PyTorch path in
 * models/attention.py and models/lstm.py does in eight to twelve whole-tensor ops; the
 * arithmetic is the same expression for expression, so results agree to a few ulp (exp and
 * tanh come from libm's vector variants). Pointers are contiguous row-major buffers owned by
 * the caller. Single-threaded.
 */

#include <math.h>
#include <stdint.h>

/* glibc declares its vector exp/tanh (libmvec) only under -ffast-math, which would also let the
 * compiler reassociate the factored exponent (P - a) r (P + a - 2 mu) r that keeps rows exact far
 * from the image. Declare them here and build without -ffast-math. */
#if defined(__GNUC__) && !defined(__FAST_MATH__) && defined(__x86_64__)
float expf(float) __attribute__((simd("notinbranch")));
float tanhf(float) __attribute__((simd("notinbranch")));
double exp(double) __attribute__((simd("notinbranch")));
double tanh(double) __attribute__((simd("notinbranch")));
#endif

#define CHUNK 256 /* pixels per exp batch; a multiple of 16 */

#define MAX(x, y) ((x) > (y) ? (x) : (y)) /* not fmax: that stays a libm call without -ffast-math */

#define DEFINE_KERNELS(T, SFX, EXP, TANH, RINT)                                                  \
                                                                                                      \
void rows_forward_##SFX(const T *mu, const T *r, T *f, int64_t batch, int64_t n, int64_t size,        \
                        T cut, T threshold) {                                                         \
    T buf[CHUNK];                                                                                     \
    for (int64_t row = 0; row < batch * n; row++) {                                                   \
        const T rr = r[row / n], m = mu[row];                                                         \
        T p = RINT(m);                                                                                \
        p = p < 1 ? 1 : (p > (T)size ? (T)size : p);                                                  \
        const T peak_r = p * rr, shift = peak_r - (T)2 * m * rr;                                      \
        T *out = f + row * size, sum = 0;                                                             \
        for (int64_t a0 = 0; a0 < size; a0 += CHUNK) {                                                \
            const int len = size - a0 < CHUNK ? (int)(size - a0) : CHUNK;                             \
            const int padded = (len + 15) & ~15; /* whole vectors: no scalar exp calls */            \
            _Pragma("omp simd")                                                                       \
            for (int a = 0; a < padded; a++) {                                                        \
                const T pix_r = (T)(a0 + a + 1) * rr;                                                 \
                buf[a] = a < len ? MAX((peak_r - pix_r) * (pix_r + shift), cut) : cut;               \
            }                                                                                         \
            _Pragma("omp simd")                                                                       \
            for (int a = 0; a < padded; a++) buf[a] = EXP(buf[a]);                                    \
            _Pragma("omp simd reduction(+:sum)")                                                      \
            for (int a = 0; a < len; a++) {                                                           \
                out[a0 + a] = buf[a];                                                                 \
                sum += buf[a];                                                                        \
            }                                                                                         \
        }                                                                                             \
        const T inv = (T)1 / sum;                                                                     \
        _Pragma("omp simd")                                                                           \
        for (int64_t a = 0; a < size; a++) {                                                          \
            const T v = out[a] * inv;                                                                 \
            out[a] = v > threshold ? v : (T)0;                                                        \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* S = F (G - sum_a G F), dmu = 2 r sum_a S d, dr = -(2 / r) sum_{i,a} S d^2, d = (a - mu) r. */    \
void rows_backward_##SFX(const T *grad, const T *f, const T *mu, const T *r, T *grad_mu, T *grad_r,  \
                         int64_t batch, int64_t n, int64_t size) {                       \
    for (int64_t b = 0; b < batch; b++) {                                                             \
        const T rr = r[b];                                                                            \
        T acc_r = 0;                                                                                  \
        for (int64_t i = 0; i < n; i++) {                                                             \
            const int64_t row = b * n + i;                                                            \
            const T *g = grad + row * size, *fr = f + row * size, mr = mu[row] * rr;                  \
            T s = 0, sd = 0, sdd = 0;                                                                 \
            _Pragma("omp simd reduction(+:s)")                                                        \
            for (int64_t a = 0; a < size; a++) s += g[a] * fr[a];                                     \
            _Pragma("omp simd reduction(+:sd, sdd)")                                                  \
            for (int64_t a = 0; a < size; a++) {                                                      \
                const T gf = g[a] * fr[a];                                                            \
                const T d = (T)(a + 1) * rr - mr;                                                     \
                const T sdv = (gf - fr[a] * s) * d;                                                   \
                sd += sdv;                                                                            \
                sdd += sdv * d;                                                                       \
            }                                                                                         \
            grad_mu[row] = (T)2 * rr * sd;                                                            \
            acc_r += sdd;                                                                             \
        }                                                                                             \
        grad_r[b] = (T)-2 * acc_r / rr;                                                               \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* gates (B, 4k) in (i, f, g, o) order -> act (B, 4k) = the activated gates, c, tanh(c), h (B, k). */\
void lstm_forward_##SFX(const T *gates, const T *c_prev, T *act, T *c, T *tc, T *h,                   \
                        int64_t batch, int64_t k) {                                      \
    for (int64_t b = 0; b < batch; b++) {                                                             \
        const T *a = gates + b * 4 * k, *cp = c_prev + b * k;                                         \
        T *ac = act + b * 4 * k, *cr = c + b * k, *tr = tc + b * k, *hr = h + b * k;                  \
        _Pragma("omp simd")                                                                           \
        for (int64_t j = 0; j < k; j++) {                                                             \
            const T i = (T)1 / ((T)1 + EXP(-a[j]));                                                   \
            const T fg = (T)1 / ((T)1 + EXP(-a[k + j]));                                              \
            const T g = TANH(a[2 * k + j]);                                                           \
            const T o = (T)1 / ((T)1 + EXP(-a[3 * k + j]));                                           \
            const T cn = i * g + fg * cp[j];                                                          \
            const T t = TANH(cn);                                                                     \
            ac[j] = i; ac[k + j] = fg; ac[2 * k + j] = g; ac[3 * k + j] = o;                          \
            cr[j] = cn; tr[j] = t; hr[j] = o * t;                                                     \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* dh or dc may be NULL (no gradient reached that output); dc_prev may be NULL (not needed). */      \
void lstm_backward_##SFX(const T *dh, const T *dc, const T *act, const T *c_prev, const T *tc,        \
                         T *da, T *dc_prev, int64_t batch, int64_t k) {                  \
    for (int64_t b = 0; b < batch; b++) {                                                             \
        const T *ac = act + b * 4 * k, *cp = c_prev + b * k, *tr = tc + b * k;                        \
        const T *dhr = dh ? dh + b * k : 0, *dcr = dc ? dc + b * k : 0;                               \
        T *d = da + b * 4 * k, *dcp = dc_prev ? dc_prev + b * k : 0;                                  \
        _Pragma("omp simd")                                                                           \
        for (int64_t j = 0; j < k; j++) {                                                             \
            const T i = ac[j], fg = ac[k + j], g = ac[2 * k + j], o = ac[3 * k + j], t = tr[j];       \
            const T dhv = dhr ? dhr[j] : (T)0;                                                        \
            T dct = dhv * o * ((T)1 - t * t);                                                         \
            if (dcr) dct += dcr[j];                                                                   \
            d[j] = dct * g * (i * ((T)1 - i));                                                        \
            d[k + j] = dct * cp[j] * (fg * ((T)1 - fg));                                              \
            d[2 * k + j] = dct * i * ((T)1 - g * g);                                                  \
            d[3 * k + j] = dhv * t * (o * ((T)1 - o));                                                \
            if (dcp) dcp[j] = dct * fg;                                                               \
        }                                                                                             \
    }                                                                                                 \
}

DEFINE_KERNELS(float, f32, expf, tanhf, rintf)
DEFINE_KERNELS(double, f64, exp, tanh, rint)
