/* Fused CPU loops for the attention window and filterbank and for the LSTM gate algebra; built and
 * called by models/native.py. The loops themselves are in native_kernels_body.h, compiled once per
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
#define MAX(x, y) ((x) > (y) ? (x) : (y)) /* not fmax: that stays a libm call without -ffast-math */
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))

#define T float
#define FN(name) name##_f32
#define EXP expf
#define TANH tanhf
#define RINT rintf
#define SQRT sqrtf
#include "native_kernels_body.h"
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
