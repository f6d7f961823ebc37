/* DRAW's per-step work between its matrix products (models/fast/draw_sequence.py), for one floating
 * type T; native_kernels.c includes this after native_kernels_body.h, once per type.
 *
 * A training step of DRAW is T steps of four small GEMMs each way plus a few hundred tiny
 * operations (the write, the error image, the read, the LSTM gates, the latent sample). Here each
 * run of tiny operations between two GEMMs is one call, forward and backward, so a step costs four
 * of these calls beside its GEMMs. Notation as in models/draw.py: D_t = [h^dec_t, 1] W_dec holds,
 * in column blocks, the decoder recurrence and encoder input of step t+1, the read window of step
 * t+1, and the write window and patch of step t; E_t = [h^enc_t, 1] W_enc holds mu_t, log sigma_t
 * and the encoder recurrence of step t+1. Strided arguments (ld*) are row strides in elements. */

/* Gather rows[b * ld + j] for j < 5 into out (B, 5). */
static void FN(gather5)(const T *rows, int64_t ld, T *out, int64_t batch) {
    for (int64_t b = 0; b < batch; b++)
        for (int j = 0; j < 5; j++) out[5 * b + j] = rows[b * ld + j];
}

/* t (n, W) = Fy X for one image channel X (H, W): rows of X summed with weights, no reduction. */
static void FN(fy_times)(const T *fy, const T *x, T *t, int64_t n, int64_t h, int64_t w) {
    for (int64_t i = 0; i < n; i++) {
        T *row = t + i * w;
        _Pragma("omp simd")
        for (int64_t a = 0; a < w; a++) row[a] = 0;
        for (int64_t y = 0; y < h; y++) {
            const T f = fy[i * h + y];
            const T *xr = x + y * w;
            _Pragma("omp simd")
            for (int64_t a = 0; a < w; a++) row[a] += f * xr[a];
        }
    }
}

/* acc (W) = row y of Fy^T M = sum_i Fy[i, y] M[i] for M (n, W). */
static inline void FN(fyt_row)(const T *fy, const T *m, T *acc, int64_t n, int64_t h, int64_t w, int64_t y) {
    _Pragma("omp simd")
    for (int64_t a = 0; a < w; a++) acc[a] = 0;
    for (int64_t i = 0; i < n; i++) {
        const T f = fy[i * h + y];
        const T *mr = m + i * w;
        _Pragma("omp simd")
        for (int64_t a = 0; a < w; a++) acc[a] += f * mr[a];
    }
}

/* Write: canvas (C, H, W) += Fy^T P Fx / gamma for one example, P (C, n, n). */
static void FN(write_one)(T *canvas, const T *p, const T *fx, const T *fy, T gamma, int64_t c, int64_t n,
                          int64_t h, int64_t w) {
    T pf[n * w];
    for (int64_t ch = 0; ch < c; ch++) {
        const T *pc = p + ch * n * n;
        T *cv = canvas + ch * h * w;
        FN(fy_times)(pc, fx, pf, n, n, w); /* pf = P Fx: the same row sums as Fy X */
        for (int64_t y = 0; y < h; y++) { /* canvas row y += sum_i Fy[i, y] pf[i] / gamma */
            T acc[w];
            FN(fyt_row)(fy, pf, acc, n, h, w, y);
            T *cr = cv + y * w;
            _Pragma("omp simd")
            for (int64_t a = 0; a < w; a++) cr[a] += acc[a] / gamma;
        }
    }
}

/* u . v in sixteen partial sums and a pairwise tree (no serial chain through the lanes), or the
 * including file's vector version. */
static inline T FN(dot)(const T *u, const T *v, int64_t len) {
#ifdef DOT
    return DOT(u, v, len);
#else
    T acc[16] = {0};
    int64_t a = 0;
    for (; a + 16 <= len; a += 16) {
        _Pragma("omp simd")
        for (int l = 0; l < 16; l++) acc[l] += u[a + l] * v[a + l];
    }
    for (int l = 0; a + l < len; l++) acc[l] += u[a + l] * v[a + l];
    for (int half = 8; half; half >>= 1)
        for (int l = 0; l < half; l++) acc[l] += acc[l + half];
    return acc[0];
#endif
}

/* dst (cols, rows) = src (rows, cols) transposed (register blocks where the including file has them). */
static void FN(transpose)(const T *src, T *dst, int64_t rows, int64_t cols) {
#ifdef TRANSPOSE_IMAGE
    TRANSPOSE_IMAGE(src, dst, rows, cols);
#else
    for (int64_t y = 0; y < rows; y++)
        for (int64_t a = 0; a < cols; a++) dst[a * rows + y] = src[y * cols + a];
#endif
}

/* out[i] += sum_a q[i, a] m_t[a] for i < n: rows q (n, W), m_t (W, H) -> out (n, H). */
static void FN(rows_times)(const T *q, const T *m_t, T *out, int64_t n, int64_t w, int64_t h) {
    for (int64_t i = 0; i < n; i++) {
        T *o = out + i * h;
        for (int64_t a = 0; a < w; a++) {
            const T qa = q[i * w + a];
            const T *mr = m_t + a * h;
            _Pragma("omp simd")
            for (int64_t y = 0; y < h; y++) o[y] += qa * mr[y];
        }
    }
}

/* Between D_t and the next step's encoder GEMM: the write of step t (when do_write), then, when
 * do_read, s_t = sigmoid(c_t), x^_{t+1} = x - s_t and the read r_{t+1} = gamma Fy [x, x^] Fx^T.
 * Saves the windows' raw params, values and filterbanks, the patch, and s_t for the backward.
 * Does rows b0..b1-1 of the batch (pointers are to the whole batch), so callers can split it. */
static void FN(canvas_forward_rows)(const T *x, T *canvas, T *sig, const T *d, int64_t ldd, int64_t col_read,
                             int64_t col_write, int64_t col_patch, int do_write, int do_read, T *wparams, T *wv,
                             T *wfx, T *wfy, T *patch, T *rparams, T *rv, T *rfx, T *rfy, T *r, int64_t b0,
                             int64_t b1, int64_t c, int64_t h, int64_t w, int64_t rn, int64_t wn,
                             const FN(window_consts) *rk, const FN(window_consts) *wk) {
    const int64_t pixels = c * h * w, pn = c * wn * wn, rlen = 2 * c * rn * rn, batch = b1 - b0;
    x += b0 * pixels, canvas += b0 * pixels, sig += b0 * pixels, d += b0 * ldd, r += b0 * rlen;
    wparams += 5 * b0, wv += 5 * b0, wfx += b0 * wn * w, wfy += b0 * wn * h, patch += b0 * pn;
    rparams += 5 * b0, rv += 5 * b0, rfx += b0 * rn * w, rfy += b0 * rn * h;
    if (do_write) {
        FN(gather5)(d + col_write, ldd, wparams, batch);
        FN(window_forward)(wparams, wv, wfx, wfy, batch, wn, h, w, wk);
        for (int64_t b = 0; b < batch; b++) {
            memcpy(patch + b * pn, d + b * ldd + col_patch, (size_t)pn * sizeof(T));
            FN(write_one)(canvas + b * pixels, patch + b * pn, wfx + b * wn * w, wfy + b * wn * h, wv[5 * b + 4], c,
                          wn, h, w);
        }
    }
    if (!do_read) return;
    FN(gather5)(d + col_read, ldd, rparams, batch);
    FN(window_forward)(rparams, rv, rfx, rfy, batch, rn, h, w, rk);
    T xhat[pixels], t[rn * w];
    for (int64_t b = 0; b < batch; b++) {
        const T *cb = canvas + b * pixels, *xb = x + b * pixels, *fx = rfx + b * rn * w, *fy = rfy + b * rn * h;
        T *sb = sig + b * pixels, *rb = r + b * rlen;
        _Pragma("omp simd")
        for (int64_t p = 0; p < pixels; p++) {
            sb[p] = (T)1 / ((T)1 + EXP(-cb[p]));
            xhat[p] = xb[p] - sb[p];
        }
        const T gamma = rv[5 * b + 4];
        for (int64_t k = 0; k < 2 * c; k++) { /* channels of x, then of x^ (torch.cat([x, x_hat], 1)) */
            FN(fy_times)(fy, k < c ? xb + k * h * w : xhat + (k - c) * h * w, t, rn, h, w);
            for (int64_t i = 0; i < rn; i++)
                for (int64_t j = 0; j < rn; j++) rb[(k * rn + i) * rn + j] = FN(dot)(t + i * w, fx + j * w, w) * gamma;
        }
    }
}

/* Scatter dparams (B, 5) into rows[b * ld + j]. */
static void FN(scatter5)(const T *dparams, T *rows, int64_t ld, int64_t batch) {
    for (int64_t b = 0; b < batch; b++)
        for (int j = 0; j < 5; j++) rows[b * ld + j] = dparams[5 * b + j];
}

/* Gradient of draw_canvas_forward, in reverse: the read of step t+1 (dr (B, 2C n n) in; adds the
 * error image's share to dcanvas, the gradient for c_t), then the write of step t (dcanvas in).
 * The window and patch gradients go to their column blocks of g, the gradient of D_t. x_t is x
 * with each channel transposed (B, C, W, H). scratch holds B (10 + n (H + W)) elements for the
 * largest n. Rows b0..b1-1 of the batch, as the forward. The gradients of Fy are formed against transposed images (rows_times), so every
 * inner loop runs along an image row with no reduction. */
static void FN(canvas_backward_rows)(const T *x, const T *x_t, const T *sig, T *dcanvas, const T *dr, T *g, int64_t ldg,
                              int64_t col_read, int64_t col_write, int64_t col_patch, int do_write, int do_read,
                              const T *wparams, const T *wv, const T *wfx, const T *wfy, const T *patch,
                              const T *rparams, const T *rv, const T *rfx, const T *rfy, T *scratch, int64_t b0,
                              int64_t b1, int64_t c, int64_t h, int64_t w, int64_t rn, int64_t wn,
                              const FN(window_consts) *rk, const FN(window_consts) *wk) {
    const int64_t pixels = c * h * w, pn = c * wn * wn, rlen = 2 * c * rn * rn, batch = b1 - b0;
    const int64_t nmax = rn > wn ? rn : wn;
    x += b0 * pixels, x_t += b0 * pixels, sig += b0 * pixels, dcanvas += b0 * pixels, dr += b0 * rlen;
    g += b0 * ldg, scratch += b0 * (10 + nmax * (w + h));
    wparams += 5 * b0, wv += 5 * b0, wfx += b0 * wn * w, wfy += b0 * wn * h, patch += b0 * pn;
    rparams += 5 * b0, rv += 5 * b0, rfx += b0 * rn * w, rfy += b0 * rn * h;
    T *dv = scratch, *dparams = scratch + 5 * batch, *dfx = scratch + 10 * batch, *dfy = dfx + batch * nmax * w;
    T img_t[h * w];
    if (do_read) {
        T xhat[pixels], t[rn * w], dt[rn * w], dg[rn * rn];
        for (int64_t b = 0; b < batch; b++) {
            const T *xb = x + b * pixels, *sb = sig + b * pixels, *fx = rfx + b * rn * w, *fy = rfy + b * rn * h;
            const T *drb = dr + b * rlen;
            T *dcb = dcanvas + b * pixels, *dfxb = dfx + b * rn * w, *dfyb = dfy + b * rn * h;
            _Pragma("omp simd")
            for (int64_t p = 0; p < pixels; p++) xhat[p] = xb[p] - sb[p];
            memset(dfxb, 0, (size_t)(rn * w) * sizeof(T));
            memset(dfyb, 0, (size_t)(rn * h) * sizeof(T));
            const T gamma = rv[5 * b + 4];
            T dgamma = 0;
            for (int64_t k = 0; k < 2 * c; k++) {
                const T *xk = k < c ? xb + k * h * w : xhat + (k - c) * h * w, *xk_t = img_t;
                if (k < c)
                    xk_t = x_t + b * pixels + k * h * w;
                else
                    FN(transpose)(xk, img_t, h, w);
                FN(fy_times)(fy, xk, t, rn, h, w);
                for (int64_t i = 0; i < rn; i++)
                    for (int64_t j = 0; j < rn; j++) {
                        const T drv = drb[(k * rn + i) * rn + j];
                        dgamma += drv * FN(dot)(t + i * w, fx + j * w, w);
                        dg[i * rn + j] = drv * gamma;
                    }
                for (int64_t i = 0; i < rn; i++) { /* dt = dG Fx; dFx += dG^T t */
                    T *dti = dt + i * w;
                    _Pragma("omp simd")
                    for (int64_t a = 0; a < w; a++) dti[a] = 0;
                    for (int64_t j = 0; j < rn; j++) {
                        const T v = dg[i * rn + j];
                        const T *fr = fx + j * w, *ti = t + i * w;
                        T *dfr = dfxb + j * w;
                        _Pragma("omp simd")
                        for (int64_t a = 0; a < w; a++) {
                            dti[a] += v * fr[a];
                            dfr[a] += v * ti[a];
                        }
                    }
                }
                FN(rows_times)(dt, xk_t, dfyb, rn, w, h); /* dFy += dt X^T */
                if (k < c) continue;
                T *dck = dcb + (k - c) * h * w; /* x^ = x - sigmoid(c): dc -= (Fy^T dt) s (1 - s) */
                const T *sk = sb + (k - c) * h * w;
                for (int64_t y = 0; y < h; y++) {
                    T acc[w];
                    FN(fyt_row)(fy, dt, acc, rn, h, w, y);
                    const T *sr = sk + y * w;
                    T *dcr = dck + y * w;
                    _Pragma("omp simd")
                    for (int64_t a = 0; a < w; a++) dcr[a] -= acc[a] * (sr[a] * ((T)1 - sr[a]));
                }
            }
            for (int j = 0; j < 4; j++) dv[5 * b + j] = 0;
            dv[5 * b + 4] = dgamma;
        }
        FN(window_backward)(rparams, rv, rfx, rfy, dv, dfx, dfy, dparams, batch, rn, h, w, rk);
        FN(scatter5)(dparams, g + col_read, ldg, batch);
    }
    if (!do_write) return;
    T a_[wn * w], q[wn * w];
    for (int64_t b = 0; b < batch; b++) {
        const T *fx = wfx + b * wn * w, *fy = wfy + b * wn * h, *pb = patch + b * pn, *ub = dcanvas + b * pixels;
        T *dfxb = dfx + b * wn * w, *dfyb = dfy + b * wn * h, *dpb = g + b * ldg + col_patch;
        memset(dfxb, 0, (size_t)(wn * w) * sizeof(T));
        memset(dfyb, 0, (size_t)(wn * h) * sizeof(T));
        const T gamma = wv[5 * b + 4], inv = (T)1 / gamma;
        T dgamma = 0;
        for (int64_t ch = 0; ch < c; ch++) {
            const T *u = ub + ch * h * w, *p = pb + ch * wn * wn;
            T *dp = dpb + ch * wn * wn;
            FN(fy_times)(fy, u, a_, wn, h, w); /* A = Fy U */
            for (int64_t i = 0; i < wn; i++)
                for (int64_t j = 0; j < wn; j++) {
                    const T dpv = FN(dot)(a_ + i * w, fx + j * w, w) / gamma; /* dP = Fy U Fx^T / gamma */
                    dp[i * wn + j] = dpv;
                    dgamma -= p[i * wn + j] * dpv;
                }
            for (int64_t i = 0; i < wn; i++) { /* Q = P Fx / gamma; dFx[j] += sum_i P[i, j] A[i] / gamma */
                T *qi = q + i * w;
                _Pragma("omp simd")
                for (int64_t a = 0; a < w; a++) qi[a] = 0;
                for (int64_t j = 0; j < wn; j++) {
                    const T pij = p[i * wn + j] * inv;
                    const T *fr = fx + j * w, *ai = a_ + i * w;
                    T *dfr = dfxb + j * w;
                    _Pragma("omp simd")
                    for (int64_t a = 0; a < w; a++) {
                        qi[a] += pij * fr[a];
                        dfr[a] += pij * ai[a];
                    }
                }
            }
            FN(transpose)(u, img_t, h, w);
            FN(rows_times)(q, img_t, dfyb, wn, w, h); /* dFy += Q U^T */
        }
        for (int j = 0; j < 4; j++) dv[5 * b + j] = 0;
        dv[5 * b + 4] = dgamma * inv;
    }
    FN(window_backward)(wparams, wv, wfx, wfy, dv, dfx, dfy, dparams, batch, wn, h, w, wk);
    FN(scatter5)(dparams, g + col_write, ldg, batch);
}

/* The batch in `threads` contiguous parts at once (OpenMP: the runtime PyTorch already loaded, see
 * models/fast/native.py), else in one piece; every row's arithmetic is the same either way. */
#ifdef _OPENMP
#define SPLIT_ROWS(call_rows)                                                                        \
    if (threads > 1 && b1 - b0 >= 16) {                                                              \
        _Pragma("omp parallel for num_threads(threads) schedule(static, 1)")                         \
        for (int part = 0; part < threads; part++) {                                                 \
            const int64_t lo = b0 + (b1 - b0) * part / threads, hi = b0 + (b1 - b0) * (part + 1) / threads; \
            call_rows(lo, hi);                                                                       \
        }                                                                                            \
        return;                                                                                      \
    }
#else
#define SPLIT_ROWS(call_rows)
#endif

void FN(draw_canvas_forward)(const T *x, T *canvas, T *sig, const T *d, int64_t ldd, int64_t col_read,
                             int64_t col_write, int64_t col_patch, int do_write, int do_read, T *wparams, T *wv,
                             T *wfx, T *wfy, T *patch, T *rparams, T *rv, T *rfx, T *rfy, T *r, int64_t b0,
                             int64_t b1, int64_t c, int64_t h, int64_t w, int64_t rn, int64_t wn,
                             const FN(window_consts) *rk, const FN(window_consts) *wk, int threads) {
#define CALL_ROWS(lo, hi)                                                                                       \
    FN(canvas_forward_rows)(x, canvas, sig, d, ldd, col_read, col_write, col_patch, do_write, do_read, wparams, wv, \
                            wfx, wfy, patch, rparams, rv, rfx, rfy, r, lo, hi, c, h, w, rn, wn, rk, wk)
    SPLIT_ROWS(CALL_ROWS)
    CALL_ROWS(b0, b1);
#undef CALL_ROWS
}

void FN(draw_canvas_backward)(const T *x, const T *x_t, const T *sig, T *dcanvas, const T *dr, T *g, int64_t ldg,
                              int64_t col_read, int64_t col_write, int64_t col_patch, int do_write, int do_read,
                              const T *wparams, const T *wv, const T *wfx, const T *wfy, const T *patch,
                              const T *rparams, const T *rv, const T *rfx, const T *rfy, T *scratch, int64_t b0,
                              int64_t b1, int64_t c, int64_t h, int64_t w, int64_t rn, int64_t wn,
                              const FN(window_consts) *rk, const FN(window_consts) *wk, int threads) {
#define CALL_ROWS(lo, hi)                                                                                       \
    FN(canvas_backward_rows)(x, x_t, sig, dcanvas, dr, g, ldg, col_read, col_write, col_patch, do_write, do_read,  \
                             wparams, wv, wfx, wfy, patch, rparams, rv, rfx, rfy, scratch, lo, hi, c, h, w, rn, wn, \
                             rk, wk)
    SPLIT_ROWS(CALL_ROWS)
    CALL_ROWS(b0, b1);
#undef CALL_ROWS
}
#undef SPLIT_ROWS

/* z = mu + exp(log sigma) eps from E_t's first two blocks; mu, log sigma and z out, (B, Z) each. */
void FN(draw_latent_forward)(const T *e, int64_t lde, const T *eps, T *mu, T *log_sigma, T *z, int64_t batch,
                             int64_t zs) {
    for (int64_t b = 0; b < batch; b++) {
        const T *m = e + b * lde, *ls = m + zs, *ep = eps + b * zs;
        T *mo = mu + b * zs, *lo = log_sigma + b * zs, *zo = z + b * zs;
        _Pragma("omp simd")
        for (int64_t j = 0; j < zs; j++) {
            mo[j] = m[j];
            lo[j] = ls[j];
            zo[j] = m[j] + EXP(ls[j]) * ep[j];
        }
    }
}

/* Gradient of E_t's mu and log sigma blocks (into g, stride ldg): the outside gradients dmu, dls
 * plus the sample's, dz (B, Z) being z's whole gradient. */
void FN(draw_latent_backward)(const T *dz, const T *dmu, const T *dls, const T *log_sigma, const T *eps, T *g,
                              int64_t ldg, int64_t batch, int64_t zs) {
    for (int64_t b = 0; b < batch; b++) {
        const T *dzb = dz + b * zs, *dmb = dmu + b * zs, *dlb = dls + b * zs, *lb = log_sigma + b * zs;
        const T *eb = eps + b * zs;
        T *gm = g + b * ldg, *gl = gm + zs;
        _Pragma("omp simd")
        for (int64_t j = 0; j < zs; j++) {
            gm[j] = dmb[j] + dzb[j];
            gl[j] = dlb[j] + dzb[j] * eb[j] * EXP(lb[j]);
        }
    }
}
