/* Native CPU kernels for the DSA primitives: indexer score reduction, exact top-k, sparse attention.
 *
 * Why C: on CPU the sparse path is bound by memory traffic, not arithmetic. With torch ops,
 * sparse attention must first copy every selected K/V row into a buffer (32K queries x 2048 rows
 * x 1 KiB = 68 GB at L = 32K, at the ~10 GB/s a single core copies) before a matmul can read it
 * again, and `torch.topk` spends ~7 ns per score. Here each selected row is read once, straight
 * from the cache into the dot products, and the top-k is a radix select (three short passes).
 *
 * Plain C99 shaped for gcc's vectoriser (-O3 -march=native, `omp simd` loops): no intrinsics, so
 * it builds on any x86-64 or arm64 machine with a C compiler. Built and loaded by `native.py`.
 * Layouts are contiguous row-major; every function works on a range of rows so that callers can
 * split the work across threads (each call allocates its own scratch).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

/* ------------------------------------------------------------------------------------------ */
/* Indexer: scores of a [R, n] tile from its per-head logits (the matmul is done by the caller).
 *   out[r, col0 + j] = scale * sum_h w[r, h] * ReLU(logits[r, h, j]),  -inf where the key is in
 *   the future of the query (key col0 + j > pos0 + r) when causal.
 * Same order of operations as the reference: head-weighted sum first, then the scale. */
void dsa_index_reduce(const float *logits, i64 R, i64 H, i64 n, i64 ld_l, const float *w,
                      float scale, float *out, i64 ld_o, i64 col0, i64 pos0, int causal)
{
    for (i64 r = 0; r < R; r++) {
        float *o = out + r * ld_o + col0;
        i64 lim = n;
        if (causal) {
            i64 vis = pos0 + r + 1 - col0;  /* keys col0 .. pos0 + r are visible */
            lim = vis < 0 ? 0 : (vis < n ? vis : n);
        }
        const float *wr = w + r * H;
        for (i64 h = 0; h < H; h++) {
            const float *l = logits + (r * H + h) * ld_l;
            const float wh = wr[h];
            if (h == 0) {
#pragma omp simd
                for (i64 j = 0; j < lim; j++) o[j] = wh * (l[j] > 0.f ? l[j] : 0.f);
            } else {
#pragma omp simd
                for (i64 j = 0; j < lim; j++) o[j] += wh * (l[j] > 0.f ? l[j] : 0.f);
            }
        }
#pragma omp simd
        for (i64 j = 0; j < lim; j++) o[j] *= scale;
        for (i64 j = lim; j < n; j++) o[j] = -INFINITY;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Top-k per row with the reference's semantics: the k largest finite scores, ties at the
 * threshold to the lower index, -inf never selected, -1 padding; `ordered` sorts the chosen
 * slots by score (ties: lower index first), else in no particular order.
 *
 * Radix select on an order-preserving integer image of the floats, two passes over the row: a
 * histogram of the top 11 bits finds the bucket holding the k-th largest value; the second pass
 * emits every key above that bucket and collects the bucket's keys (in index order), which the
 * next 11 and last 10 bits then split exactly: those above the threshold and the first (lowest
 * index) `need` equal to it complete the set. Nothing is sorted unless `ordered`. */

static inline uint32_t fkey(float x)
{
    uint32_t u;
    x += 0.0f; /* -0.0 + 0.0 = +0.0: one key for both zeros, so they tie as in the reference */
    memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#define KEY_FINITE_MIN 0x00800000u /* keys below: -inf (0x007FFFFF) and negative NaNs */

/* Bucket of `shift`-bit digit where the m-th largest lies, among `keys` (filtered by prefix). */
static uint32_t select_digit(const uint32_t *keys, i64 n, int shift, uint32_t mask, uint32_t prefix,
                             uint32_t pmask, i64 *m)
{
    i64 hist[2048];
    memset(hist, 0, sizeof hist);
    for (i64 j = 0; j < n; j++)
        if ((keys[j] & pmask) == prefix) hist[(keys[j] >> shift) & mask]++;
    for (i64 b = (i64)mask; b >= 0; b--) {
        if (hist[b] >= *m) return (uint32_t)b;
        *m -= hist[b];
    }
    return 0; /* unreachable when m <= count */
}

/* Sort out[0..m) by score, highest first, keeping the current order among equal scores (a stable
 * LSD radix sort over the 4 bytes of the inverted key; a byte all keys share is skipped). The
 * caller's order is index-ascending within equal scores, so ties stay lower index first.
 * buf: room for 4 * m uint32. */
static void sort_by_score(const float *x, int32_t *out, i64 m, uint32_t *buf)
{
    uint32_t *key = buf, *key2 = buf + m, *pos = buf + 2 * m, *pos2 = buf + 3 * m;
    for (i64 i = 0; i < m; i++) key[i] = ~fkey(x[out[i]]), pos[i] = (uint32_t)out[i];
    for (int shift = 0; shift < 32; shift += 8) {
        i64 count[257] = {0};
        for (i64 i = 0; i < m; i++) count[((key[i] >> shift) & 255) + 1]++;
        if (count[((key[0] >> shift) & 255) + 1] == m) continue; /* one digit value: no-op pass */
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (i64 i = 0; i < m; i++) {
            const i64 at = count[(key[i] >> shift) & 255]++;
            key2[at] = key[i], pos2[at] = pos[i];
        }
        uint32_t *t = key; key = key2, key2 = t;
        t = pos, pos = pos2, pos2 = t;
    }
    for (i64 i = 0; i < m; i++) out[i] = (int32_t)pos[i];
}

static void topk_row(const float *x, i64 n, i64 k, int ordered, int32_t *out, uint32_t *cand)
{
    /* Four interleaved histograms: scores crowd into few buckets, and back-to-back increments of
     * one counter would wait on each other. */
    uint32_t part[4][2048];
    i64 hist[2048];
    memset(part, 0, sizeof part);
    i64 j = 0;
    for (; j + 4 <= n; j += 4)
        for (int p = 0; p < 4; p++) part[p][fkey(x[j + p]) >> 21]++;
    for (; j < n; j++) part[0][fkey(x[j]) >> 21]++;
    for (int b = 0; b < 2048; b++) hist[b] = (i64)part[0][b] + part[1][b] + part[2][b] + part[3][b];
    i64 finite = n;
    for (int b = 0; b < (int)(KEY_FINITE_MIN >> 21); b++) finite -= hist[b];
    const i64 m = k < finite ? k : finite;
    i64 got = 0;
    if (m == finite) { /* every finite score is selected */
        for (i64 j = 0; j < n; j++)
            if (fkey(x[j]) >= KEY_FINITE_MIN) out[got++] = (int32_t)j;
    } else if (m > 0) {
        i64 left = m;
        uint32_t b1 = 2047;
        for (; left > hist[b1]; b1--) left -= hist[b1];
        /* above bucket b1: selected; in it: candidates for the last `left` places */
        uint32_t *ckey = cand, *cidx = cand + n;
        i64 c = 0;
        for (i64 j = 0; j < n; j++) {
            const uint32_t u = fkey(x[j]);
            if ((u >> 21) > b1)
                out[got++] = (int32_t)j;
            else if ((u >> 21) == b1)
                ckey[c] = u, cidx[c++] = (uint32_t)j;
        }
        const uint32_t b2 = select_digit(ckey, c, 10, 2047, b1 << 21, 0xFFE00000u, &left);
        const uint32_t b3 = select_digit(ckey, c, 0, 1023, (b1 << 21) | (b2 << 10), 0xFFFFFC00u, &left);
        const uint32_t thr = (b1 << 21) | (b2 << 10) | b3;
        for (i64 i = 0; i < c; i++) /* left: keys equal to thr still needed, lowest index first */
            if (ckey[i] > thr || (ckey[i] == thr && left-- > 0)) out[got++] = (int32_t)cidx[i];
    }
    if (ordered && got > 1) sort_by_score(x, out, got, cand);
    for (i64 i = got; i < k; i++) out[i] = -1;
}

/* rows [r0, r1) of scores [*, ld] (first n columns used) -> out [*, k] int32. 0 or -1 (no memory) */
int dsa_topk_rows(const float *scores, i64 n, i64 ld, i64 k, int ordered, int32_t *out,
                  i64 r0, i64 r1)
{
    i64 room = 4 * (n > k ? n : k) + 4; /* candidates (2n) or the sort's buffers (4 * k) */
    uint32_t *cand = (uint32_t *)malloc((size_t)room * sizeof *cand);
    if (!cand) return -1;
    for (i64 r = r0; r < r1; r++) topk_row(scores + r * ld, n, k, ordered, out + r * k, cand);
    free(cand);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Sparse attention: for each query row s and KV head, softmax(scale * q . K[S_s]) V[S_s] over the
 * row's valid slots (0 <= idx < T; -1 and anything out of range is skipped), all query heads of
 * the KV head's group served by one read of each selected row. A row without a valid slot gives 0.
 * K/V may be fp32, bf16 or fp16 (converted per row into a small buffer); q and out are fp32. */

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };

static inline const float *fetch_row(const void *base, int dt, i64 off, i64 len, float *buf)
{
    if (dt == DT_F32) return (const float *)base + off;
    if (dt == DT_BF16) {
        const uint16_t *p = (const uint16_t *)base + off;
#pragma omp simd
        for (i64 i = 0; i < len; i++) {
            uint32_t u = (uint32_t)p[i] << 16;
            memcpy(&buf[i], &u, sizeof u);
        }
        return buf;
    }
    const _Float16 *p = (const _Float16 *)base + off;
#pragma omp simd
    for (i64 i = 0; i < len; i++) buf[i] = (float)p[i];
    return buf;
}

/* Selected rows are scattered over the cache: ask for the next tile's rows (into L2) before working
 * on the current one (development machine, L = 32K, k = 2048: 0.31 -> 0.24 ms per query). */
static inline void prefetch_row(const void *base, int dt, i64 off, i64 len)
{
    const i64 esize = dt == DT_F32 ? 4 : 2;
    const char *p = (const char *)base + off * esize;
    for (i64 b = 0; b < len * esize; b += 64) __builtin_prefetch(p + b, 0, 2);
}

/* exp(x) for x <= 0 to ~1 ulp in fp32, vectorisable: Cody-Waite reduction by ln 2 and the degree-6
 * polynomial of Cephes' expf (S. L. Moshier, cephes/single/expf.c; coefficients from there). */
static inline float exp_neg(float x)
{
    x = x < -87.0f ? -87.0f : x;
    /* n = round(x / ln 2): adding 1.5 * 2^23 rounds to an integer (floorf would not vectorise) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } two_n = {.i = ((int32_t)n + 127) << 23}; /* 2^n, n >= -126 */
    return p * two_n.f;
}

/* Lanes = query heads: one selected key row is broadcast element by element against a [D, 16]
 * transposed block of the queries, so a dot product never needs a horizontal sum and one read of
 * a K or V row serves 16 heads. Keys go by tiles with an online softmax (running max and sum per
 * lane, as in FlashAttention), so K and V rows of a tile are read together while the next tile's
 * rows are being fetched. */
#define LANES 16
#define KEYS 8   /* keys in flight in the logits loop: independent accumulator chains */
#define TILE 64  /* keys per tile: their K and V rows stay in L1/L2 while used */

/* lg[u * LANES + l] = scale * q_l . kr[u] for u < nt (lanes beyond the chunk's heads give 0) */
static void tile_logits(const float *qt, const float *const *kr, i64 nt, i64 D, float scale, float *lg)
{
    i64 u0 = 0;
    for (; u0 + KEYS <= nt; u0 += KEYS) {
        float acc[KEYS][LANES] = {{0}};
        for (i64 i = 0; i < D; i++) {
            const float *qi = qt + i * LANES;
            for (int u = 0; u < KEYS; u++) {
                const float x = kr[u0 + u][i];
#pragma omp simd
                for (int l = 0; l < LANES; l++) acc[u][l] += x * qi[l];
            }
        }
        for (int u = 0; u < KEYS; u++)
#pragma omp simd
            for (int l = 0; l < LANES; l++) lg[(u0 + u) * LANES + l] = acc[u][l] * scale;
    }
    for (; u0 < nt; u0++) {
        float acc[LANES] = {0};
        for (i64 i = 0; i < D; i++)
#pragma omp simd
            for (int l = 0; l < LANES; l++) acc[l] += kr[u0][i] * qt[i * LANES + l];
#pragma omp simd
        for (int l = 0; l < LANES; l++) lg[u0 * LANES + l] = acc[l] * scale;
    }
}

/* a[c][l] += sum_u p[u, l] * rows[u][c0 + c] for c < cw: one LANES x LANES register block */
static inline void accumulate(float (*a)[LANES], const float *p, const float *const *rows, i64 nt,
                              i64 c0, int cw)
{
    for (i64 u = 0; u < nt; u++) {
        const float *pn = p + u * LANES;
        for (int c = 0; c < cw; c++) {
            const float x = rows[u][c0 + c];
#pragma omp simd
            for (int l = 0; l < LANES; l++) a[c][l] += x * pn[l];
        }
    }
}

/* acc[c * LANES + l] += sum_u p[u, l] * vr[u][c] over the tile */
static void tile_accumulate(float *acc, const float *p, const float *const *vr, i64 nt, i64 Dv)
{
    for (i64 c0 = 0; c0 < Dv; c0 += LANES) {
        float a[LANES][LANES];
        const int cw = Dv - c0 < LANES ? (int)(Dv - c0) : LANES;
        memcpy(a, acc + c0 * LANES, (size_t)cw * sizeof a[0]);
        if (cw == LANES)
            accumulate(a, p, vr, nt, c0, LANES); /* constant width: fully unrolled */
        else
            accumulate(a, p, vr, nt, c0, cw);
        memcpy(acc + c0 * LANES, a, (size_t)cw * sizeof a[0]);
    }
}

struct rows {
    const void *base;
    i64 stride, off, len; /* row of token j: base + j * stride + off, len values */
};

/* Online softmax over one tile: fold the tile's logits into the running max `mx` and sum `sum`,
 * rescale acc when the max grows, turn lg into the tile's numerators. */
static void tile_softmax(float *lg, i64 nt, float *mx, float *sum, float *acc, i64 Dv)
{
    float m[LANES], alpha[LANES];
    int grew = 0;
    for (int l = 0; l < LANES; l++) m[l] = mx[l];
    for (i64 u = 0; u < nt; u++)
#pragma omp simd
        for (int l = 0; l < LANES; l++) m[l] = lg[u * LANES + l] > m[l] ? lg[u * LANES + l] : m[l];
    for (int l = 0; l < LANES; l++) {
        grew |= m[l] > mx[l];
        alpha[l] = exp_neg(mx[l] - m[l]); /* first tile: ~0, and sum and acc are 0 anyway */
        sum[l] *= alpha[l];
        mx[l] = m[l];
    }
    if (grew)
        for (i64 c = 0; c < Dv; c++)
#pragma omp simd
            for (int l = 0; l < LANES; l++) acc[c * LANES + l] *= alpha[l];
    for (i64 u = 0; u < nt; u++)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            const float e = exp_neg(lg[u * LANES + l] - m[l]);
            lg[u * LANES + l] = e;
            sum[l] += e;
        }
}

/* One query row, one KV head, up to LANES of its query heads (qt: [D, LANES] transposed, zero
 * padded) over the selected tokens sel[0..nv) -> acc [Dv, LANES] normalised. */
static void attend(const float *qt, struct rows K, struct rows V, int dt, const i64 *sel, i64 nv,
                   float scale, float *lg, float *acc, float *kbuf, float *vbuf)
{
    const float *kr[TILE], *vr[TILE];
    float mx[LANES], sum[LANES];
    for (int l = 0; l < LANES; l++) mx[l] = -FLT_MAX, sum[l] = 0.f; /* no inf arithmetic */
    memset(acc, 0, (size_t)(V.len * LANES) * sizeof *acc);
    for (i64 n0 = 0; n0 < nv; n0 += TILE) {
        const i64 nt = nv - n0 < TILE ? nv - n0 : TILE;
        for (i64 u = n0 + TILE; u < n0 + 2 * TILE && u < nv; u++) {
            prefetch_row(K.base, dt, sel[u] * K.stride + K.off, K.len);
            prefetch_row(V.base, dt, sel[u] * V.stride + V.off, V.len);
        }
        for (i64 u = 0; u < nt; u++) {
            kr[u] = fetch_row(K.base, dt, sel[n0 + u] * K.stride + K.off, K.len, kbuf + u * K.len);
            vr[u] = fetch_row(V.base, dt, sel[n0 + u] * V.stride + V.off, V.len, vbuf + u * V.len);
        }
        tile_logits(qt, kr, nt, K.len, scale, lg);
        tile_softmax(lg, nt, mx, sum, acc, V.len);
        tile_accumulate(acc, lg, vr, nt, V.len);
    }
    for (i64 c = 0; c < V.len; c++)
#pragma omp simd
        for (int l = 0; l < LANES; l++) acc[c * LANES + l] /= sum[l];
}

/* q [S, Hq, D] and out [S, Hq, Dv] contiguous fp32; idx [S, K]; K/V element (token j, head h, i)
 * at k[j * kst + h * khs + i] (any token and head strides, e.g. a [Hkv, T, D] KV cache in place). */
int dsa_sparse_attention(const float *q, const void *k, i64 kst, i64 khs, const void *v, i64 vst,
                         i64 vhs, int dt, const int32_t *idx, float *out, i64 T, i64 Hq, i64 Hkv,
                         i64 D, i64 Dv, i64 K, float scale, i64 s0, i64 s1)
{
    const i64 G = Hq / Hkv;
    i64 *sel = (i64 *)malloc((size_t)(K > 0 ? K : 1) * sizeof *sel);
    float *lg = (float *)aligned_alloc(64, (size_t)(TILE * LANES) * sizeof *lg);
    float *qt = (float *)aligned_alloc(64, (size_t)((D + 1) * LANES) * sizeof *qt);
    float *acc = (float *)aligned_alloc(64, (size_t)((Dv + 1) * LANES) * sizeof *acc);
    float *kbuf = (float *)malloc((size_t)(TILE * D) * sizeof *kbuf);
    float *vbuf = (float *)malloc((size_t)(TILE * Dv) * sizeof *vbuf);
    if (!sel || !lg || !qt || !acc || !kbuf || !vbuf) {
        free(sel), free(lg), free(qt), free(acc), free(kbuf), free(vbuf);
        return -1;
    }
    for (i64 s = s0; s < s1; s++) {
        i64 nv = 0;
        for (i64 n = 0; n < K; n++) {
            i64 j = idx[s * K + n];
            if (j >= 0 && j < T) sel[nv++] = j;
        }
        float *o = out + s * Hq * Dv;
        if (nv == 0) {
            memset(o, 0, (size_t)(Hq * Dv) * sizeof *o);
            continue;
        }
        for (i64 kh = 0; kh < Hkv; kh++) {
            const struct rows Kr = {k, kst, kh * khs, D}, Vr = {v, vst, kh * vhs, Dv};
            for (i64 g0 = 0; g0 < G; g0 += LANES) {
                const i64 lanes = G - g0 < LANES ? G - g0 : LANES;
                const float *qh = q + (s * Hq + kh * G + g0) * D;
                memset(qt, 0, (size_t)(D * LANES) * sizeof *qt);
                for (i64 l = 0; l < lanes; l++)
                    for (i64 i = 0; i < D; i++) qt[i * LANES + l] = qh[l * D + i];
                attend(qt, Kr, Vr, dt, sel, nv, scale, lg, acc, kbuf, vbuf);
                float *oh = o + (kh * G + g0) * Dv;
                for (i64 l = 0; l < lanes; l++)
                    for (i64 c = 0; c < Dv; c++) oh[l * Dv + c] = acc[c * LANES + l];
            }
        }
    }
    free(sel), free(lg), free(qt), free(acc), free(kbuf), free(vbuf);
    return 0;
}
