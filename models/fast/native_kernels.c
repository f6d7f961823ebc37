/* Fused CPU loops for the attention window and filterbank and for the LSTM gate algebra; built and
 * called by models/fast/native.py. The loops themselves are in native_kernels_body.h, compiled once per
 * floating type below (functions named *_f32 and *_f64).
 *
 * Each function does in one or two passes over memory what the PyTorch path in models/attention.py
 * and models/lstm.py does in eight to twenty whole-tensor ops. The arithmetic is the same,
 * expression for expression, so results agree to a few ulp (exp and tanh come from glibc's vector
 * variants). Pointers are contiguous row-major buffers owned by the caller. Single-threaded.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

/* glibc declares its vector exp/tanh (libmvec) only under -ffast-math, which would also let the
 * compiler reassociate the factored exponent (P - a) r (P + a - 2 mu) r that keeps rows exact far
 * from the image. Declare them here and build without -ffast-math. */
#if defined(__GNUC__) && !defined(__FAST_MATH__) && defined(__x86_64__)
float expf(float) __attribute__((simd("notinbranch")));
float tanhf(float) __attribute__((simd("notinbranch")));
double exp(double) __attribute__((simd("notinbranch")));
double tanh(double) __attribute__((simd("notinbranch")));
#endif

#define CHUNK 256 /* pixels per vector-exp batch; a multiple of 16 */
#define LANES 16 /* short rows done side by side, one per vector lane */
#define LANES_MAX_SIZE 64 /* rows up to this many pixels go through the lanes */
#if defined(__AVX512F__) && LANES == 16 && LANES_MAX_SIZE % 16 == 0
#include <immintrin.h>
#define HAVE_TRANSPOSE16_F32 1 /* float rows leave the lanes buffer through 16 x 16 register transposes */

/* r[i] = row i of a 16 x 16 block -> r[i] = column i (unpack pairs of rows, then pairs of pairs,
 * then 128- and 256-bit quarters across registers). */
static inline void transpose16_f32(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
}

/* u . v for float rows, in one vector accumulator (masked loads at the end) and a tree sum. */
static inline float dot_avx512_f32(const float *u, const float *v, int64_t len) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t a = 0; a < len; a += 16) {
        const int64_t left = len - a;
        const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, u + a), _mm512_maskz_loadu_ps(m, v + a)));
    }
    return _mm512_reduce_add_ps(acc);
}

/* dst (cols, rows) = src (rows, cols) transposed, in 16 x 16 register blocks. */
static void transpose_avx512_f32(const float *src, float *dst, int64_t rows, int64_t cols) {
    for (int64_t y0 = 0; y0 < rows; y0 += 16)
        for (int64_t a0 = 0; a0 < cols; a0 += 16) {
            const int64_t ny = rows - y0 < 16 ? rows - y0 : 16, na = cols - a0 < 16 ? cols - a0 : 16;
            const __mmask16 ma = (__mmask16)((1u << na) - 1), my = (__mmask16)((1u << ny) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < ny ? _mm512_maskz_loadu_ps(ma, src + (y0 + i) * cols + a0) : _mm512_setzero_ps();
            transpose16_f32(r);
            for (int j = 0; j < na; j++) _mm512_mask_storeu_ps(dst + (a0 + j) * rows + y0, my, r[j]);
        }
}
#endif
#define MIN(x, y) ((x) < (y) ? (x) : (y)) /* not fmin/fmax: they stay libm calls without -ffast-math */
#define MAX(x, y) ((x) > (y) ? (x) : (y))
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))

#define T float
#define FN(name) name##_f32
#define EXP expf
#define TANH tanhf
#define RINT rintf
#define SQRT sqrtf
#ifdef HAVE_TRANSPOSE16_F32
#define TRANSPOSE16 transpose16_f32
#define DOT dot_avx512_f32
#define TRANSPOSE_IMAGE transpose_avx512_f32
#endif
#include "native_kernels_body.h"
#include "native_draw_body.h"
#undef TRANSPOSE16
#undef DOT
#undef TRANSPOSE_IMAGE
#undef T
#undef FN
#undef EXP
#undef TANH
#undef RINT
#undef SQRT

#define T double
#define FN(name) name##_f64
#define EXP exp
#define TANH tanh
#define RINT rint
#define SQRT sqrt
#include "native_kernels_body.h"
#include "native_draw_body.h"
