/* The loops of native_kernels.c for one floating type T (that file defines T, FN, EXP, TANH, RINT,
 * SQRT, and TRANSPOSE16 where a register transpose for T exists, and includes this once per type).
 * Filterbank notation as in models/attention.py: a row is F[a] = exp(-d^2) / Z with d = (a - mu) r,
 * r = 1 / sqrt(2 sigma2), pixels a = 1..size. */

/* One filterbank row. The exponent is shifted by its maximum (at the pixel P nearest mu) in the
 * factored form (P - a) r (P + a - 2 mu) r, exactly 0 at the peak; clamped below at `cut`, and its
 * exp above at 1, which is exp(min(., 0)) (rounding can put the exponent above 0, its exact maximum,
 * where mu lies halfway between two pixels and sigma is tiny; a min inside the exp made GCC 12's
 * loop 8x slower on AMD Zen 2); weights that were clamped below are set to 0 after normalising (see
 * models/attention.py). Rows of up to CHUNK pixels are done in a buffer padded to whole vectors (no scalar remainder loops: the
 * models' rows are 28 to 100 pixels); longer rows in CHUNK-sized pieces. */
static void FN(row_forward)(T mu, T r, T *out, int64_t size, T cut, T threshold) {
    T buf[CHUNK];
    T p = RINT(mu);
    p = CLAMP(p, (T)1, (T)size);
    const T peak_r = p * r, shift = peak_r - (T)2 * mu * r;
    T sum = 0;
    for (int64_t a0 = 0; a0 < size; a0 += CHUNK) {
        const int len = size - a0 < CHUNK ? (int)(size - a0) : CHUNK;
        const int padded = (len + 15) & ~15;
        const T first = (T)(a0 + 1); /* pixels as int + float: AVX2 has no vector int64 -> float */
        _Pragma("omp simd")
        for (int a = 0; a < padded; a++) {
            const T pix_r = (first + (T)a) * r;
            buf[a] = MIN(EXP(MAX((peak_r - pix_r) * (pix_r + shift), cut)), (T)1); /* = exp(min(., 0)) */
        }
        _Pragma("omp simd reduction(+:sum)")
        for (int a = 0; a < padded; a++) sum += a < len ? buf[a] : (T)0;
        if (size <= CHUNK) { /* one piece: normalise in the buffer, then copy the row out */
            const T inv = (T)1 / sum;
            _Pragma("omp simd")
            for (int a = 0; a < padded; a++) {
                const T v = buf[a] * inv;
                buf[a] = v > threshold ? v : (T)0;
            }
            memcpy(out, buf, (size_t)len * sizeof(T));
            return;
        }
        memcpy(out + a0, buf, (size_t)len * sizeof(T));
    }
    const T inv = (T)1 / sum;
    _Pragma("omp simd")
    for (int64_t a = 0; a < size; a++) {
        const T v = out[a] * inv;
        out[a] = v > threshold ? v : (T)0;
    }
}

/* Short rows (the models' 28-pixel DRAW rows) LANES at a time, one row per vector lane: a row of
 * 28 pixels is too short for its own vector loops, whose fixed costs (horizontal sum, reciprocal,
 * remainder, call) then dominate. The same arithmetic as row_forward, except that the sum over
 * pixels is accumulated in pixel order. Pending rows wait in a lanes_t until it is full. */
typedef struct {
    int count;
    T mu[LANES], r[LANES];
    T *out[LANES];
} FN(lanes_t);

/* The transpose out of the lanes buffer: row l of the output is column l of tmp. */
static void FN(lanes_copy_out)(T tmp[][LANES], T *const *out, int count, int64_t size) {
#ifdef TRANSPOSE16 /* AVX-512, float: 16 x 16 blocks transposed in registers, masked stores at the end */
    for (int64_t a0 = 0; a0 < size; a0 += 16) { /* tmp has LANES_MAX_SIZE rows: a0 + 15 stays inside */
        __m512 r[16];
        for (int a = 0; a < 16; a++) r[a] = _mm512_loadu_ps(tmp[a0 + a]);
        TRANSPOSE16(r);
        const int64_t left = size - a0;
        const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (int l = 0; l < count; l++) _mm512_mask_storeu_ps(out[l] + a0, m, r[l]);
    }
#else
    for (int l = 0; l < count; l++) /* plain copies, no data-dependent branch */
        for (int64_t a = 0; a < size; a++) out[l][a] = tmp[a][l];
#endif
}

static void FN(lanes_flush)(FN(lanes_t) *q, int64_t size, T cut, T threshold) {
    T peak_r[LANES], shift[LANES], rr[LANES], sum[LANES], inv[LANES];
    T tmp[LANES_MAX_SIZE][LANES];
    for (int l = 0; l < LANES; l++) {
        const int j = l < q->count ? l : 0; /* idle lanes repeat row 0; their results are dropped */
        T p = RINT(q->mu[j]);
        p = CLAMP(p, (T)1, (T)size);
        rr[l] = q->r[j];
        peak_r[l] = p * rr[l];
        shift[l] = peak_r[l] - (T)2 * q->mu[j] * rr[l];
        sum[l] = 0;
    }
    for (int64_t a = 0; a < size; a++) {
        _Pragma("omp simd")
        for (int l = 0; l < LANES; l++) {
            const T pix_r = (T)(a + 1) * rr[l];
            const T e = MIN(EXP(MAX((peak_r[l] - pix_r) * (pix_r + shift[l]), cut)), (T)1);
            tmp[a][l] = e;
            sum[l] += e;
        }
    }
    _Pragma("omp simd")
    for (int l = 0; l < LANES; l++) inv[l] = (T)1 / sum[l];
    for (int64_t a = 0; a < size; a++) {
        _Pragma("omp simd")
        for (int l = 0; l < LANES; l++) {
            const T v = tmp[a][l] * inv[l];
            tmp[a][l] = v > threshold ? v : (T)0;
        }
    }
    FN(lanes_copy_out)(tmp, q->out, q->count, size);
    q->count = 0;
}

/* One row now (long rows) or queued in `q` (rows of at most LANES_MAX_SIZE pixels). */
static inline void FN(row_forward_queued)(FN(lanes_t) *q, T mu, T r, T *out, int64_t size, T cut, T threshold) {
    if (size > LANES_MAX_SIZE) {
        FN(row_forward)(mu, r, out, size, cut, threshold);
        return;
    }
    q->mu[q->count] = mu;
    q->r[q->count] = r;
    q->out[q->count] = out;
    if (++q->count == LANES) FN(lanes_flush)(q, size, cut, threshold);
}

/* Gradient of one row: S = F (G - sum_a G F); returns dL/dmu = 2 r sum_a S d and adds
 * sum_a S d^2 to *sdd (dL/dr = -(2 / r) sum over the rows of a window of that). */
static T FN(row_backward)(const T *grad, const T *f, T mu, T r, int64_t size, T *sdd) {
    const T mr = mu * r;
    T s = 0, sd = 0, sdd_row = 0;
    _Pragma("omp simd reduction(+:s)")
    for (int64_t a = 0; a < size; a++) s += grad[a] * f[a];
    _Pragma("omp simd reduction(+:sd, sdd_row)")
    for (int a = 0; a < (int)size; a++) { /* an int index: AVX2 has no vector int64 -> float */
        const T d = (T)(a + 1) * r - mr;
        const T sdv = (grad[a] * f[a] - f[a] * s) * d;
        sd += sdv;
        sdd_row += sdv * d;
    }
    *sdd += sdd_row;
    return (T)2 * r * sd;
}

void FN(rows_forward)(const T *mu, const T *r, T *f, int64_t batch, int64_t n, int64_t size, T cut, T threshold) {
    FN(lanes_t) q = {0};
    for (int64_t row = 0; row < batch * n; row++)
        FN(row_forward_queued)(&q, mu[row], r[row / n], f + row * size, size, cut, threshold);
    if (q.count) FN(lanes_flush)(&q, size, cut, threshold);
}

void FN(rows_backward)(const T *grad, const T *f, const T *mu, const T *r, T *grad_mu, T *grad_r,
                       int64_t batch, int64_t n, int64_t size) {
    for (int64_t b = 0; b < batch; b++) {
        T sdd = 0;
        for (int64_t i = 0; i < n; i++) {
            const int64_t row = b * n + i;
            grad_mu[row] = FN(row_backward)(grad + row * size, f + row * size, mu[row], r[b], size, &sdd);
        }
        grad_r[b] = (T)-2 * sdd / r[b];
    }
}

/* Window constants, in the order models/fast/native.py passes them. */
typedef struct {
    T sx, sy, sd;           /* (W + 1) / 2, (H + 1) / 2, (max(W, H) - 1) / max(n - 1, 1) */
    T log_max;              /* raw log-parameters are clamped to [-log_max, log_max] */
    T s2_min, s2_max;       /* sigma2 clamp */
    T delta_max;            /* |delta| clamp */
    T margin;               /* grid centres at most size + 1 + margin * sigma2 outside the image */
    T cut_x, thr_x, cut_y, thr_y;
} FN(window_consts);

/* Grid centre i (0-based) of one axis, before (raw) and after the clamp to the image's surroundings. */
static inline T FN(grid_centre)(T g, T delta, int64_t i, int64_t n) {
    return g + delta * (T)((double)(i + 1) - (double)n / 2.0 - 0.5);
}

/* params (B, 5) raw (g~X, g~Y, log sigma2, log delta~, log gamma) -> v (B, 5) = (gX, gY, sigma2,
 * delta, gamma) and the filterbanks fx (B, n, W), fy (B, n, H). */
void FN(window_forward)(const T *params, T *v, T *fx, T *fy, int64_t batch, int64_t n, int64_t h, int64_t w,
                        const FN(window_consts) *k) {
    for (int64_t b = 0; b < batch; b++) {
        const T *p = params + 5 * b;
        T *vb = v + 5 * b;
        vb[0] = (p[0] + (T)1) * k->sx;
        vb[1] = (p[1] + (T)1) * k->sy;
        vb[2] = EXP(CLAMP(p[2], -k->log_max, k->log_max));
        vb[3] = EXP(CLAMP(p[3], -k->log_max, k->log_max)) * k->sd;
        vb[4] = EXP(CLAMP(p[4], -k->log_max, k->log_max));
    }
    for (int axis = 0; axis < 2; axis++) {
        const int64_t size = axis ? h : w;
        const T cut = axis ? k->cut_y : k->cut_x, threshold = axis ? k->thr_y : k->thr_x;
        FN(lanes_t) q = {0};
        for (int64_t b = 0; b < batch; b++) {
            const T *vb = v + 5 * b;
            const T s2 = CLAMP(vb[2], k->s2_min, k->s2_max), delta = CLAMP(vb[3], -k->delta_max, k->delta_max);
            const T r = (T)1 / SQRT((T)2 * s2), far = k->margin * s2;
            const T g = vb[axis], lo = -(T)size - far, hi = (T)2 * (T)size + (T)1 + far;
            T *f = (axis ? fy : fx) + b * n * size;
            for (int64_t i = 0; i < n; i++) {
                const T mu = CLAMP(FN(grid_centre)(g, delta, i, n), lo, hi);
                FN(row_forward_queued)(&q, mu, r, f + i * size, size, cut, threshold);
            }
        }
        if (q.count) FN(lanes_flush)(&q, size, cut, threshold);
    }
}

/* Gradient of window_forward. dv, dfx, dfy may be NULL (no gradient reached that output). Each
 * clamp passes the gradient where its input is inside [lo, hi] (bounds included), as torch.clamp
 * does; the centres' clamp bounds depend on sigma2 (through `far`), so a clamped centre's gradient
 * goes to sigma2. */
void FN(window_backward)(const T *params, const T *v, const T *fx, const T *fy, const T *dv, const T *dfx,
                         const T *dfy, T *dparams, int64_t batch, int64_t n, int64_t h, int64_t w,
                         const FN(window_consts) *k) {
    for (int64_t b = 0; b < batch; b++) {
        const T *p = params + 5 * b, *vb = v + 5 * b;
        T dvb[5] = {0, 0, 0, 0, 0};
        if (dv)
            for (int j = 0; j < 5; j++) dvb[j] = dv[5 * b + j];
        const T s2 = CLAMP(vb[2], k->s2_min, k->s2_max), delta = CLAMP(vb[3], -k->delta_max, k->delta_max);
        const T r = (T)1 / SQRT((T)2 * s2), far = k->margin * s2;
        T ds2 = 0, ddelta = 0, sdd = 0;
        for (int axis = 0; axis < 2; axis++) {
            const T *df = axis ? dfy : dfx;
            if (!df) continue;
            const int64_t size = axis ? h : w;
            const T g = vb[axis], lo = -(T)size - far, hi = (T)2 * (T)size + (T)1 + far;
            const T *f = (axis ? fy : fx) + b * n * size;
            df += b * n * size;
            for (int64_t i = 0; i < n; i++) {
                const T raw = FN(grid_centre)(g, delta, i, n), mu = CLAMP(raw, lo, hi);
                const T dmu = FN(row_backward)(df + i * size, f + i * size, mu, r, size, &sdd);
                const T offset = (T)((double)(i + 1) - (double)n / 2.0 - 0.5);
                if (raw < lo) {
                    ds2 -= k->margin * dmu;
                } else if (raw > hi) {
                    ds2 += k->margin * dmu;
                } else {
                    dvb[axis] += dmu;
                    ddelta += offset * dmu;
                }
            }
        }
        ds2 += ((T)-2 * sdd / r) * (-r * r * r); /* dL/dr dr/ds2, r = (2 s2)^(-1/2) */
        if (vb[2] >= k->s2_min && vb[2] <= k->s2_max) dvb[2] += ds2;
        if (vb[3] >= -k->delta_max && vb[3] <= k->delta_max) dvb[3] += ddelta;
        T *dp = dparams + 5 * b;
        dp[0] = dvb[0] * k->sx;
        dp[1] = dvb[1] * k->sy;
        for (int j = 2; j < 5; j++)
            dp[j] = (p[j] >= -k->log_max && p[j] <= k->log_max) ? dvb[j] * vb[j] : (T)0;
    }
}

/* gates = a + b (B, 4k) in (i, f, g, o) order, b may be NULL -> act (B, 4k) = the activated
 * gates, c, tanh(c) (B, k) and h (B, k) with row stride ldh. Rows split over `threads` (OpenMP). */
void FN(lstm_forward_strided)(const T *ga, int64_t lda, const T *gb, int64_t ldb, const T *c_prev, T *act, T *c,
                              T *tc, T *h, int64_t ldh, int64_t batch, int64_t k, int threads) {
    _Pragma("omp parallel for num_threads(threads) if(threads > 1 && batch >= 16) schedule(static)")
    for (int64_t b = 0; b < batch; b++) {
        const T *a = ga + b * lda, *a2 = gb ? gb + b * ldb : 0, *cp = c_prev + b * k;
        T *ac = act + b * 4 * k, *cr = c + b * k, *tr = tc + b * k, *hr = h + b * ldh;
        if (a2) { /* the summed gates go through act, which the loop below overwrites in place */
            _Pragma("omp simd")
            for (int64_t j = 0; j < 4 * k; j++) ac[j] = a[j] + a2[j];
            a = ac;
        }
        _Pragma("omp simd")
        for (int64_t j = 0; j < k; j++) {
            const T i = (T)1 / ((T)1 + EXP(-a[j]));
            const T fg = (T)1 / ((T)1 + EXP(-a[k + j]));
            const T g = TANH(a[2 * k + j]);
            const T o = (T)1 / ((T)1 + EXP(-a[3 * k + j]));
            const T cn = i * g + fg * cp[j];
            const T t = TANH(cn);
            ac[j] = i;
            ac[k + j] = fg;
            ac[2 * k + j] = g;
            ac[3 * k + j] = o;
            cr[j] = cn;
            tr[j] = t;
            hr[j] = o * t;
        }
    }
}

void FN(lstm_forward)(const T *gates, const T *c_prev, T *act, T *c, T *tc, T *h, int64_t batch, int64_t k) {
    FN(lstm_forward_strided)(gates, 4 * k, 0, 0, c_prev, act, c, tc, h, k, batch, k, 1);
}

/* dh or dc may be NULL (no gradient reached that output); dc_prev may be NULL (not needed) and may
 * be dc itself. d gates go to da (row stride ld1) and, unless NULL, also to da2 (stride ld2). */
void FN(lstm_backward_strided)(const T *dh, const T *dc, const T *act, const T *c_prev, const T *tc, T *da,
                               int64_t ld1, T *da2, int64_t ld2, T *dc_prev, int64_t batch, int64_t k,
                               int threads) {
    _Pragma("omp parallel for num_threads(threads) if(threads > 1 && batch >= 16) schedule(static)")
    for (int64_t b = 0; b < batch; b++) {
        const T *ac = act + b * 4 * k, *cp = c_prev + b * k, *tr = tc + b * k;
        const T *dhr = dh ? dh + b * k : 0, *dcr = dc ? dc + b * k : 0;
        T *d = da + b * ld1, *d2 = da2 ? da2 + b * ld2 : 0, *dcp = dc_prev ? dc_prev + b * k : 0;
        _Pragma("omp simd")
        for (int64_t j = 0; j < k; j++) {
            const T i = ac[j], fg = ac[k + j], g = ac[2 * k + j], o = ac[3 * k + j], t = tr[j];
            const T dhv = dhr ? dhr[j] : (T)0;
            T dct = dhv * o * ((T)1 - t * t);
            if (dcr) dct += dcr[j];
            const T di = dct * g * (i * ((T)1 - i)), df = dct * cp[j] * (fg * ((T)1 - fg));
            const T dg = dct * i * ((T)1 - g * g), dout = dhv * t * (o * ((T)1 - o));
            d[j] = di;
            d[k + j] = df;
            d[2 * k + j] = dg;
            d[3 * k + j] = dout;
            if (d2) {
                d2[j] = di;
                d2[k + j] = df;
                d2[2 * k + j] = dg;
                d2[3 * k + j] = dout;
            }
            if (dcp) dcp[j] = dct * fg;
        }
    }
}

void FN(lstm_backward)(const T *dh, const T *dc, const T *act, const T *c_prev, const T *tc, T *da, T *dc_prev,
                       int64_t batch, int64_t k) {
    FN(lstm_backward_strided)(dh, dc, act, c_prev, tc, da, 4 * k, 0, 0, dc_prev, batch, k, 1);
}
