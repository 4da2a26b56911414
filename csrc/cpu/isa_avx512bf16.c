/* The CPU primitives at the AVX-512 + AVX512-BF16 level (Zen 4, Cooper Lake, Sapphire Rapids and
 * later): every primitive of the AVX-512 level (primitives.inc compiled again with this file's
 * flags), except that a bfloat16 call whose Xe / Z are bfloat16 (the bfloat16-GEMM path,
 * stl_cpu_bf16_gemm) encodes, decodes and correlates (dE, dD) 4x4 tiles on the bfloat16
 * dot-product unit (vdpbf16ps: two bfloat16 products summed into each float32 lane, half the
 * instructions of float32 FMAs), reading and writing bfloat16 directly (no float32 staging, no
 * scalar conversions), and bfloat16 column sums (db) widen by a shift. Other dtypes, tiles other
 * than 4, and float32 planes run the AVX-512 primitives unchanged. setup.py
 * compiles this file with -mavx512bf16 on top of the AVX-512 flags; dispatch.c chooses it only
 * where the CPU reports avx512bf16.
 *
 * The pair unit of vdpbf16ps is a pair of adjacent bfloat16 in one 32-bit lane:
 *   encode: lanes = 16 tiles, pair = two horizontally adjacent elements of one tile row (adjacent
 *           in memory: a 32-bit lane of x), coefficient pair (E[l, j], E[l, j+1]);
 *   decode: lanes = 16 tiles, pair = products l, l+1 of one tile (interleaved from two planes),
 *           coefficient pair (D[j, l], D[j, l+1]);
 *   correlate: lanes = the 16 tile elements, pair = two adjacent tiles (see corr_rows).
 * A zero coefficient must skip its term (NaN/inf behind a causal mask): its half of the data pair
 * is masked to +0 before the multiply, and a pair of two zeros is skipped. Rounding: the inputs
 * and coefficients are bfloat16 already (exact), sums are float32, each output is rounded once to
 * nearest even (vcvtne2ps2bf16), as the float32 primitives round them. */
#if defined(__x86_64__) || defined(_M_X64)
#define STL_VBYTES 64
#ifdef STL_AMX /* isa_amx.c: this file again, with the AMX tile kernels at the end switched on */
#define STL_ISA amx
#else
#define STL_ISA avx512bf16
#endif
#define STL_ISA_OWN_TABLE /* the table is below: some primitives go through the bfloat16 kernels */
#include "isa_level.inc"

#include <immintrin.h>

/* float coefficient (a bfloat16 value, or any float: rounded to nearest even) -> bfloat16 bits */
static inline uint32_t bf_bits(float c) { return stl_f32_to_bf16(c); }

/* Coefficient pairs as 32-bit words: pw[k*ks + p*qs] = (c[k][2p], c[k][2p+1]) (the second 0 past
 * n), and the lanes' keep masks: 0xffff for each half whose coefficient is nonzero. Returns
 * whether some coefficient is zero. The strides let each kernel read its words at constant offsets
 * from one pointer (folded into vdpbf16ps as broadcast operands). */
static int pair_words(const float *c, int rows, int n, int64_t ks, int64_t qs, uint32_t *pw, uint32_t *keep) {
  const int np = (n + 1) / 2;
  int zero = 0;
  for (int k = 0; k < rows; k++)
    for (int p = 0; p < np; p++) {
      const float c0 = c[(int64_t)k * n + 2 * p], c1 = 2 * p + 1 < n ? c[(int64_t)k * n + 2 * p + 1] : 0.0f;
      pw[k * ks + p * qs] = bf_bits(c0) | bf_bits(c1) << 16;
      keep[k * ks + p * qs] = (c0 != 0 ? 0xffffu : 0) | (c1 != 0 ? 0xffff0000u : 0);
      zero |= c0 == 0 || (2 * p + 1 < n && c1 == 0);
    }
  return zero;
}

static inline __m512 dp(__m512 acc, __m512i x, uint32_t w) {
  return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)_mm512_set1_epi32((int)w));
}
/* the same with a zero coefficient's half of x masked to +0 (keep != 0: some half is kept) */
static inline __m512 dpk(__m512 acc, __m512i x, uint32_t w, uint32_t keep) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_and_si512(x, _mm512_set1_epi32((int)keep)),
                          (__m512bh)_mm512_set1_epi32((int)w));
}

/* 16 bfloat16 at p (the first n) <-> float32 */
static inline __m512 load_bf16(const uint16_t *p, int64_t n) {
  const __mmask16 m = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

#define LB 8 /* products per register group of the encode: 8 x-pair vectors + 8 accumulators */

/* acc[k] += sum_j E[l0 + k, j] * x tiles for k < lb, from the 8 x-pair vectors; ZERO as dec_products. */
static inline __attribute__((always_inline)) void enc_products(__m512 acc[LB], const __m512i xp[8], const uint32_t *pw,
                                                               const uint32_t *keep, int lb, const int ZERO) {
#pragma GCC unroll 8
  for (int q = 0; q < 8; q++)
#pragma GCC unroll 8
    for (int k = 0; k < LB; k++) {
      if (k >= lb) continue;
      if (!ZERO) {
        acc[k] = dp(acc[k], xp[q], pw[k * 8 + q]);
      } else {
        const uint32_t kp = keep[k * 8 + q];
        if (kp) acc[k] = dpk(acc[k], xp[q], pw[k * 8 + q], kp);
      }
    }
}

/* The 8 x-pair vectors of tile-row I, tiles K0 .. K0 + nt - 1 (zero past nt and past row M):
 * xp[2a + h] = the pair (2h, 2h+1) of row a of the 16 tiles, lane k = tile K0 + k. */
static inline __attribute__((always_inline)) void enc_xpairs(const StlEncodeArgs *p, int64_t I, int64_t K0, int64_t nt,
                                                             __m512i xp[8]) {
  /* 32-bit lane k of a tile row's 16 tiles: pair (k & 1) of tile k / 2; even lanes -> tiles' pair 0 */
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const uint16_t *x = (const uint16_t *)p->in;
  const __mmask16 mlo = nt >= 8 ? 0xffff : (__mmask16)((1u << (2 * nt)) - 1);
  const __mmask16 mhi = nt <= 8 ? 0 : nt >= 16 ? 0xffff : (__mmask16)((1u << (2 * (nt - 8))) - 1);
#pragma GCC unroll 4
  for (int a = 0; a < 4; a++) {
    const int64_t row = 4 * I + a;
    if (row >= p->M) {
      xp[2 * a] = xp[2 * a + 1] = _mm512_setzero_si512();
      continue;
    }
    const uint16_t *s = x + row * p->N + 4 * K0;
    /* the next tile-row's bytes of this row: the loads stalled on memory without it */
    _mm_prefetch((const char *)(s + 4 * p->N), _MM_HINT_T0);
    _mm_prefetch((const char *)(s + 4 * p->N + 32), _MM_HINT_T0);
    const __m512i lo = _mm512_maskz_loadu_epi32(mlo, s), hi = _mm512_maskz_loadu_epi32(mhi, s + 32);
    xp[2 * a] = _mm512_permutex2var_epi32(lo, even, hi);
    xp[2 * a + 1] = _mm512_permutex2var_epi32(lo, odd, hi);
  }
}

/* Xe planes of the 16 tiles at off (the first nt) from their x pairs, on vdpbf16ps */
static inline __attribute__((always_inline)) void enc_tiles(const StlEncodeArgs *p, const __m512i xp[8], int64_t off,
                                                            int64_t nt, const uint32_t *pw, const uint32_t *keep,
                                                            const int ZERO) {
  const int r = p->r;
  const uint16_t *extra = (const uint16_t *)p->extra;
  uint16_t *out = (uint16_t *)p->out;
  const __mmask16 mo = nt >= 16 ? 0xffff : (__mmask16)((1u << nt) - 1);
  for (int l0 = 0; l0 < r; l0 += LB) {
    const int lb = r - l0 < LB ? r - l0 : LB;
    __m512 acc[LB];
#pragma GCC unroll 8
    for (int k = 0; k < LB; k++)
      acc[k] = k < lb && extra ? load_bf16(extra + (l0 + k) * p->extra_ps + off, nt) : _mm512_setzero_ps();
    if (lb == LB) enc_products(acc, xp, pw + l0 * 8, keep + l0 * 8, LB, ZERO);
    else enc_products(acc, xp, pw + l0 * 8, keep + l0 * 8, lb, ZERO);
#pragma GCC unroll 8
    for (int k = 0; k < LB; k++) /* constant indices: the accumulators stay in registers */
      if (k < lb) {
        uint16_t *o = out + (l0 + k) * p->out_ps + off;
        const __m256i v = (__m256i)_mm512_cvtneps_pbh(acc[k]);
        _mm256_mask_storeu_epi16(o, mo, v);
      }
  }
}

/* Encode, t = 4, bfloat16 x -> bfloat16 Xe planes (+ the bfloat16 extra planes, added in float32
 * before the one rounding). Tile-rows [i0, i1). p->stream is ignored: non-temporal stores of 32
 * bytes into r planes at once (half a line each, more streams than write-combining buffers)
 * measured 2x slower than plain stores here (Zen 4, 8192 x 1536, one thread: 10.6 vs 5.2 ms). */
static inline __attribute__((always_inline)) void encode_rows(const StlEncodeArgs *p, int64_t i0, int64_t i1,
                                                              const uint32_t *pw, const uint32_t *keep, const int ZERO) {
  const int64_t Nt = p->N / 4;
  for (int64_t I = i0; I < i1; I++)
    for (int64_t K0 = 0; K0 < Nt; K0 += 16) {
      const int64_t nt = Nt - K0 < 16 ? Nt - K0 : 16;
      __m512i xp[8];
      enc_xpairs(p, I, K0, nt, xp);
      enc_tiles(p, xp, I * Nt + K0, nt, pw, keep, ZERO);
    }
}

#ifdef STL_AMX
/* AMX (Intel Xeon 4th gen and later). Encode and decode are GEMMs with inner dimension t^2 = 16
 * and r: one tile multiply (tdpbf16ps, 16 x 16 float32 outputs over up to 32 bfloat16 pairs) does
 * 16 tiles' worth where vdpbf16ps needs 16 x r/2 instructions. The pair vectors the AVX-512
 * kernels build are already the B tile's layout: they are stored to a buffer of 64-byte rows and
 * loaded as B; the coefficients are the A tile(s), loaded once per call. A tile load cannot take
 * its bytes from stores still in flight, so each chunk of 16 tiles goes through a three-stage
 * pipeline: iteration n builds chunk n's B, multiplies chunk n-1 (built one iteration earlier)
 * and writes out chunk n-2 (multiplied one iteration earlier), two buffers of each.
 * A zero coefficient cannot skip its term on the tile unit, but 0 times a finite value adds +-0,
 * which changes no sum: a chunk whose inputs are all finite runs on tiles, one with an inf or a
 * NaN (behind a causal mask's zero) runs the AVX-512 kernel, which skips zero coefficients' terms.
 * dispatch.c picks this level only once Linux has granted the tile data state. */
typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} TileConfig;

/* tiles 0..7: rows x colsb bytes. Every kernel configures its tiles and releases them on return
 * (the configuration is per thread; oneDNN configures its own before each of its kernels). */
static void tiles_configure(const uint8_t rows[8], const uint16_t colsb[8]) {
  TileConfig c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int i = 0; i < 8; i++) c.rows[i] = rows[i], c.colsb[i] = colsb[i];
  /* gcc 12 does not model the builtin's read of c: without this barrier it dropped the stores
   * once the function was inlined (ldtilecfg of garbage: SIGSEGV) */
  __asm__ volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

/* 16-bit lanes that hold an inf or a NaN */
static inline __mmask32 nonfinite(__m512i v) {
  const __m512i e = _mm512_set1_epi16(0x7f80);
  return _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, e), e);
}

typedef struct {
  int64_t I, J, nt; /* tile-row, first tile, tiles (<= 16) of a chunk in the pipeline */
} Chunk;

/* C (tile 5, 6, 7, 5 for product chunks 0..3) = A (tiles 1..4) x B (tile 0, from b) -> c, r x 16 floats */
static inline void enc_multiply(const uint32_t *b, float *c, int nc) {
  _tile_loadd(0, b, 64);
  _tile_zero(5);
  _tile_dpbf16ps(5, 1, 0);
  _tile_stored(5, c, 64);
  if (nc > 1) {
    _tile_zero(6);
    _tile_dpbf16ps(6, 2, 0);
    _tile_stored(6, c + 256, 64);
  }
  if (nc > 2) {
    _tile_zero(7);
    _tile_dpbf16ps(7, 3, 0);
    _tile_stored(7, c + 512, 64);
  }
  if (nc > 3) {
    _tile_zero(5);
    _tile_dpbf16ps(5, 4, 0);
    _tile_stored(5, c + 768, 64);
  }
}

static inline void enc_write(const StlEncodeArgs *p, const float *c, Chunk k) {
  const uint16_t *extra = (const uint16_t *)p->extra;
  uint16_t *out = (uint16_t *)p->out;
  const int64_t off = k.I * (p->N / 4) + k.J;
  const __mmask16 mo = k.nt >= 16 ? 0xffff : (__mmask16)((1u << k.nt) - 1);
  for (int l = 0; l < p->r; l++) {
    __m512 v = _mm512_load_ps(c + 16 * l);
    if (extra) v = _mm512_add_ps(v, load_bf16(extra + l * p->extra_ps + off, k.nt));
    _mm256_mask_storeu_epi16(out + l * p->out_ps + off, mo, (__m256i)_mm512_cvtneps_pbh(v));
  }
}

/* encode_rows on tiles; pw: E's pair words, rows of 8, zero past r up to 16 * ceil(r / 16) */
static void encode_amx(const StlEncodeArgs *p, int64_t i0, int64_t i1, const uint32_t *pw, const uint32_t *keep,
                       int zero) {
  const int nc = (p->r + 15) / 16; /* chunks of 16 products: r <= 64 */
  const int64_t Nt = p->N / 4;
  _Alignas(64) uint32_t b[2][8 * 16];
  _Alignas(64) float c[2][64 * 16];
  /* tile 0: B, 8 pair rows x 16 tiles; 1..4: A, 16 products x 8 pairs; 5..7: C, 16 products x 16 tiles */
  const uint8_t rows[8] = {8, 16, 16, 16, 16, 16, 16, 16};
  const uint16_t colsb[8] = {64, 32, 32, 32, 32, 64, 64, 64};
  tiles_configure(rows, colsb);
  _tile_loadd(1, pw, 32);
  if (nc > 1) _tile_loadd(2, pw + 16 * 8, 32);
  if (nc > 2) _tile_loadd(3, pw + 32 * 8, 32);
  if (nc > 3) _tile_loadd(4, pw + 48 * 8, 32);
  Chunk mul = {-1, 0, 0}, wr = {-1, 0, 0}; /* awaiting the multiply (buffer s ^ 1), the write (buffer s) */
  int s = 0;
  for (int64_t I = i0; I < i1; I++)
    for (int64_t K0 = 0; K0 < Nt; K0 += 16) {
      const int64_t nt = Nt - K0 < 16 ? Nt - K0 : 16;
      __m512i xp[8];
      enc_xpairs(p, I, K0, nt, xp);
      if (zero) {
        __mmask32 bad = 0;
        for (int q = 0; q < 8; q++) bad |= nonfinite(xp[q]);
        if (bad) {
          enc_tiles(p, xp, I * Nt + K0, nt, pw, keep, 1);
          continue;
        }
      }
      for (int q = 0; q < 8; q++) _mm512_store_si512(b[s] + 16 * q, xp[q]);
      if (mul.I >= 0) enc_multiply(b[s ^ 1], c[s ^ 1], nc);
      if (wr.I >= 0) enc_write(p, c[s], wr);
      wr = mul;
      mul = (Chunk){I, K0, nt};
      s ^= 1;
    }
  if (mul.I >= 0) enc_multiply(b[s ^ 1], c[s ^ 1], nc);
  if (wr.I >= 0) enc_write(p, c[s], wr);
  if (mul.I >= 0) enc_write(p, c[s ^ 1], mul);
  _tile_release();
}
#endif

static void encode_bf16(const StlEncodeArgs *p, int64_t i0, int64_t i1) {
  _Alignas(64) uint32_t pw[64 * 8]; /* rows l of 8 pair words (the AMX level's A tiles: zero past r) */
  uint32_t keep[64 * 8];
  memset(pw, 0, sizeof pw);
  const int zero = pair_words((const float *)p->coef, p->r, 16, 8, 1, pw, keep);
#ifdef STL_AMX
  encode_amx(p, i0, i1, pw, keep, zero);
#else
  if (zero) encode_rows(p, i0, i1, pw, keep, 1);
  else encode_rows(p, i0, i1, pw, keep, 0);
#endif
}

/* Z elements fetched ahead per plane: the r planes are more streams than the hardware prefetcher
 * follows, and the decode stalled on their loads (Zen 4: 9% off the decode-bound 6272x64->2048
 * forward, 8% off the T2T-ViT MLP's, one thread) */
#define ZPF 512
/* acc[j] += sum_l D[j, l] * Z[l] over the 16 tiles at zp (the first nt: mask mt), pairs of
 * products at once. ZERO (a literal) selects the path that masks zero coefficients' halves. The
 * 16 accumulators stay in registers (each pair vector built once serves all 16). */
/* The pair vector q of the 16 tiles at zp (the first nt: mask mt): 16-bit lane 2i = plane 2q,
 * lane 2i + 1 = plane 2q + 1 (zero past r), of tile 4(i%4) + i/4 (idx) */
static inline __attribute__((always_inline)) __m512i dec_pair(const uint16_t *zp, int64_t ps, int r, int q, __mmask16 mt,
                                                             __m512i idx) {
  const __m256i z0 = _mm256_maskz_loadu_epi16(mt, zp + (int64_t)(2 * q) * ps);
  const __m256i z1 = 2 * q + 1 < r ? _mm256_maskz_loadu_epi16(mt, zp + (int64_t)(2 * q + 1) * ps) : _mm256_setzero_si256();
  _mm_prefetch((const char *)(zp + (int64_t)(2 * q) * ps + ZPF), _MM_HINT_T0);
  if (2 * q + 1 < r) _mm_prefetch((const char *)(zp + (int64_t)(2 * q + 1) * ps + ZPF), _MM_HINT_T0);
  return _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(z0), z1, 1));
}

static inline __attribute__((always_inline)) void dec_products(__m512 acc[16], const uint16_t *zp, int64_t ps, int r,
                                                               __mmask16 mt, __m512i idx, const uint32_t *pw,
                                                               const uint32_t *keep, const int ZERO) {
  const int np = (r + 1) / 2;
  for (int q = 0; q < np; q++) {
    const __m512i v = dec_pair(zp, ps, r, q, mt, idx);
    const uint32_t *w = pw + 16 * q, *kq = keep + 16 * q; /* words [q][j] */
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) {
      if (!ZERO) {
        acc[j] = dp(acc[j], v, w[j]);
      } else if (kq[j]) {
        acc[j] = dpk(acc[j], v, w[j], kq[j]);
      }
    }
  }
}

/* Output rows 4I .. 4I+3 (< M), tiles J0 .. J0 + nt - 1, from acc (+ the float32 bias).
 * Accumulator j (= a*4 + b) lane 4L + q holds tile 4q + L of the chunk: the 4x4 transposes of the
 * output (in-lane unpacks) then leave the tiles of each row in order. */
static inline __attribute__((always_inline)) void dec_out(const StlDecodeArgs *p, const __m512 acc[16], int64_t I,
                                                          int64_t J0, int64_t nt) {
  const float *bias = (const float *)p->bias;
  uint16_t *y = (uint16_t *)p->out;
  const int64_t ne = 4 * nt; /* output elements of a row in this chunk */
  const __mmask32 m0 = ne >= 32 ? 0xffffffffu : (__mmask32)((1u << ne) - 1);
  const __mmask32 m1 = ne <= 32 ? 0 : ne >= 64 ? 0xffffffffu : (__mmask32)((1u << (ne - 32)) - 1);
  /* fully unrolled, constant indices: the accumulators never go through memory */
#pragma GCC unroll 4
  for (int a = 0; a < 4; a++) {
    const int64_t row = 4 * I + a;
    if (row >= p->M) continue;
    const __m512 t0 = _mm512_unpacklo_ps(acc[4 * a], acc[4 * a + 1]), t1 = _mm512_unpackhi_ps(acc[4 * a], acc[4 * a + 1]);
    const __m512 t2 = _mm512_unpacklo_ps(acc[4 * a + 2], acc[4 * a + 3]);
    const __m512 t3 = _mm512_unpackhi_ps(acc[4 * a + 2], acc[4 * a + 3]);
    __m512 o[4];
    o[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    o[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    o[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    o[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    if (bias) {
      const float *bp = bias + 4 * J0;
#pragma GCC unroll 4
      for (int k = 0; k < 4; k++) {
        const int64_t n = ne - 16 * k;
        if (n <= 0) continue;
        const __mmask16 mb = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
        o[k] = _mm512_add_ps(o[k], _mm512_maskz_loadu_ps(mb, bp + 16 * k));
      }
    }
    uint16_t *yp = y + row * p->out_ld + 4 * J0;
    _mm512_mask_storeu_epi16(yp, m0, (__m512i)_mm512_cvtne2ps_pbh(o[1], o[0]));
    if (m1) _mm512_mask_storeu_epi16(yp + 32, m1, (__m512i)_mm512_cvtne2ps_pbh(o[3], o[2]));
  }
}

/* the permutation of dec_pair: 16-bit lane 2i <- plane l, lane 2i+1 <- plane l+1 (at +16), of tile 4(i%4) + i/4 */
static inline __m512i dec_index(void) {
  uint16_t ix[32];
  for (int i = 0; i < 16; i++) ix[2 * i] = (uint16_t)(4 * (i % 4) + i / 4), ix[2 * i + 1] = (uint16_t)(16 + 4 * (i % 4) + i / 4);
  __m512i idx;
  memcpy(&idx, ix, sizeof idx);
  return idx;
}

/* Decode, t = 4, bfloat16 Z planes -> bfloat16 rows of y (+ the float32 bias), tile-rows [i0, i1). */
static inline __attribute__((always_inline)) void decode_rows(const StlDecodeArgs *p, int64_t i0, int64_t i1,
                                                              const uint32_t *pw, const uint32_t *keep, const int ZERO) {
  const int64_t Pt = p->P / 4;
  const uint16_t *z = (const uint16_t *)p->in;
  const __m512i idx = dec_index();
  for (int64_t I = i0; I < i1; I++)
    for (int64_t J0 = 0; J0 < Pt; J0 += 16) {
      const int64_t nt = Pt - J0 < 16 ? Pt - J0 : 16;
      const __mmask16 mt = nt >= 16 ? 0xffff : (__mmask16)((1u << nt) - 1);
      __m512 acc[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
      dec_products(acc, z + I * p->in_ld + J0, p->in_ps, p->r, mt, idx, pw, keep, ZERO);
      dec_out(p, acc, I, J0, nt);
    }
}

#ifdef STL_AMX
/* C (tile 0 or 4 for buffer 0 or 1) = A (tiles 2, 3: D's pairs 0..15, 16..31) x B (tile 1 or 5, from b) -> c */
/* (tile numbers are immediates: one expansion per buffer) */
#define DEC_MULTIPLY(C, B)                                                                                \
  do {                                                                                                    \
    _tile_zero(C);                                                                                        \
    _tile_loadd(B, b, 64);                                                                                \
    _tile_dpbf16ps(C, 2, B);                                                                              \
    if (np > 16) {                                                                                        \
      _tile_loadd(B, b + 16 * 16, 64);                                                                    \
      _tile_dpbf16ps(C, 3, B);                                                                            \
    }                                                                                                     \
    _tile_stored(C, c, 64);                                                                               \
  } while (0)
static inline void dec_multiply(const uint32_t *b, float *c, int np, int s) {
  if (!s) DEC_MULTIPLY(0, 1);
  else DEC_MULTIPLY(4, 5);
}
#undef DEC_MULTIPLY

static inline void dec_write(const StlDecodeArgs *p, const float *c, Chunk k) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; j++) acc[j] = _mm512_load_ps(c + 16 * j);
  dec_out(p, acc, k.I, k.J, k.nt);
}

/* decode_rows on tiles (the pipeline of encode_amx); pw: D's pair words [pair][j] */
static void decode_amx(const StlDecodeArgs *p, int64_t i0, int64_t i1, const uint32_t *pw, const uint32_t *keep,
                       int zero) {
  const int r = p->r, np = (r + 1) / 2, kp = np > 16 ? 16 : np; /* pairs per multiply: r <= 64 */
  const int64_t Pt = p->P / 4;
  const uint16_t *z = (const uint16_t *)p->in;
  const __m512i idx = dec_index();
  /* A: pair chunk h (pairs 16h ..), rows j = output element: a[h][j][k] = pw[(16h + k) * 16 + j] */
  _Alignas(64) uint32_t a[2 * 16 * 16], b[2][32 * 16];
  _Alignas(64) float c[2][16 * 16];
  memset(a, 0, sizeof a);
  memset(b, 0, sizeof b); /* rows np .. 31 stay zero */
  for (int h = 0; h < 2; h++)
    for (int j = 0; j < 16; j++)
      for (int k = 0; k < kp && 16 * h + k < np; k++) a[(h * 16 + j) * kp + k] = pw[(16 * h + k) * 16 + j];
  const uint8_t rows[8] = {16, (uint8_t)kp, 16, 16, 16, (uint8_t)kp, 0, 0};
  const uint16_t colsb[8] = {64, 64, (uint16_t)(4 * kp), (uint16_t)(4 * kp), 64, 64, 0, 0};
  tiles_configure(rows, colsb);
  _tile_loadd(2, a, 4 * kp);
  if (np > 16) _tile_loadd(3, a + 16 * kp, 4 * kp);
  Chunk mul = {-1, 0, 0}, wr = {-1, 0, 0};
  int s = 0;
  for (int64_t I = i0; I < i1; I++)
    for (int64_t J0 = 0; J0 < Pt; J0 += 16) {
      const int64_t nt = Pt - J0 < 16 ? Pt - J0 : 16;
      const __mmask16 mt = nt >= 16 ? 0xffff : (__mmask16)((1u << nt) - 1);
      const uint16_t *zp = z + I * p->in_ld + J0;
      __mmask32 bad = 0;
      for (int q = 0; q < np; q++) {
        const __m512i v = dec_pair(zp, p->in_ps, r, q, mt, idx);
        if (zero) bad |= nonfinite(v);
        _mm512_store_si512(b[s] + 16 * q, v);
      }
      if (bad) {
        __m512 acc[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
        dec_products(acc, zp, p->in_ps, r, mt, idx, pw, keep, 1);
        dec_out(p, acc, I, J0, nt);
        continue;
      }
      if (mul.I >= 0) dec_multiply(b[s ^ 1], c[s ^ 1], np, s ^ 1);
      if (wr.I >= 0) dec_write(p, c[s], wr);
      wr = mul;
      mul = (Chunk){I, J0, nt};
      s ^= 1;
    }
  if (mul.I >= 0) dec_multiply(b[s ^ 1], c[s ^ 1], np, s ^ 1);
  if (wr.I >= 0) dec_write(p, c[s], wr);
  if (mul.I >= 0) dec_write(p, c[s ^ 1], mul);
  _tile_release();
}
#endif

static void decode_bf16(const StlDecodeArgs *p, int64_t i0, int64_t i1) {
  uint32_t pw[16 * 32], keep[16 * 32];
  const int zero = pair_words((const float *)p->coef, 16, p->r, 1, 16, pw, keep);
#ifdef STL_AMX
  decode_amx(p, i0, i1, pw, keep, zero);
#else
  if (zero) decode_rows(p, i0, i1, pw, keep, 1);
  else decode_rows(p, i0, i1, pw, keep, 0);
#endif
}

/* a-plane elements fetched ahead in the correlation (and x's next tile-row), as ZPF for the
 * decode: the T2T-ViT MLP's forward + backward 7% faster (Zen 4, one thread) */
#define CPF 256
#define LC 12 /* products per register group of the correlation */

/* acc[k] (float32 lanes j = p*4 + c) += sum over the tile-rows [I0, I1) of
 * a[l0 + k, I, K] * x[4I + p, 4K + c], k < lb; sums flushed into out[(l0 + k) * 16 + j] (double)
 * every few hundred tiles, so float32 never sums more than that. Lanes = the 16 tile elements;
 * pair = two adjacent tiles K, K+1: a's pair is one 32-bit word of its plane (a broadcast
 * operand), x's pair is built from 4 rows of 8 tiles by a 4x4 transpose of 128-bit lanes and an
 * in-lane byte shuffle. No coefficient here: a zero of a multiplies like any value (as the
 * float32 correlation does). */
/* The 4 x-pair vectors of tile-row I, tiles K0 .. K0 + nt - 1 (nt <= 8; zero past nt and row M):
 * xp[i] = tiles K0 + 2i, K0 + 2i + 1, lane j = (x_K[j], x_K+1[j]), from 4 rows of 8 tiles by a 4x4
 * transpose of 128-bit lanes and an in-lane byte shuffle */
static inline __attribute__((always_inline)) void corr_xpairs(const StlCorrelateArgs *p, int64_t I, int64_t K0, int64_t nt,
                                                              __m512i xp[4]) {
  const uint16_t *x = (const uint16_t *)p->x;
  const __m512i pat = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
  const __mmask32 m = nt >= 8 ? 0xffffffffu : (__mmask32)((1u << (4 * nt)) - 1);
  __m512i rw[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    const int64_t row = 4 * I + q;
    rw[q] = row < p->M ? _mm512_maskz_loadu_epi16(m, x + row * p->N + 4 * K0) : _mm512_setzero_si512();
    _mm_prefetch((const char *)(x + (row + 4) * p->N + 4 * K0), _MM_HINT_T0);
  }
  const __m512i t0 = _mm512_shuffle_i64x2(rw[0], rw[1], 0x44), t1 = _mm512_shuffle_i64x2(rw[2], rw[3], 0x44);
  const __m512i t2 = _mm512_shuffle_i64x2(rw[0], rw[1], 0xee), t3 = _mm512_shuffle_i64x2(rw[2], rw[3], 0xee);
  xp[0] = _mm512_shuffle_epi8(_mm512_shuffle_i64x2(t0, t1, 0x88), pat);
  xp[1] = _mm512_shuffle_epi8(_mm512_shuffle_i64x2(t0, t1, 0xdd), pat);
  xp[2] = _mm512_shuffle_epi8(_mm512_shuffle_i64x2(t2, t3, 0x88), pat);
  xp[3] = _mm512_shuffle_epi8(_mm512_shuffle_i64x2(t2, t3, 0xdd), pat);
}

static inline __attribute__((always_inline)) void corr_rows(const StlCorrelateArgs *p, int64_t I0, int64_t I1, int l0,
                                                            const int lb, double *out) {
  const int64_t Nt = p->N / 4, ps = p->a_ps;
  const uint16_t *a = (const uint16_t *)p->a + (int64_t)l0 * ps;
  __m512 acc[LC];
#pragma GCC unroll 12
  for (int k = 0; k < LC; k++) acc[k] = _mm512_setzero_ps();
  int64_t since = 0;
  for (int64_t I = I0; I < I1; I++) {
    const uint16_t *ar = a + I * Nt;
    for (int64_t K0 = 0; K0 < Nt; K0 += 8) {
      const int64_t nt = Nt - K0 < 8 ? Nt - K0 : 8;
      if (!(K0 & 31)) /* once per 64-byte line of each plane */
        for (int k = 0; k < lb; k++) _mm_prefetch((const char *)(ar + k * ps + K0 + CPF), _MM_HINT_T0);
      __m512i xp[4]; /* xp[i]: tiles K0 + 2i, K0 + 2i + 1, lane j = (x_K[j], x_K+1[j]) */
      corr_xpairs(p, I, K0, nt, xp);
#pragma GCC unroll 4
      for (int i = 0; i < 4; i++) {
        const int64_t K = K0 + 2 * i;
        if (K >= Nt) continue;
        const int whole = K + 1 < Nt; /* else the odd last tile: a's second half reads as zero */
#pragma GCC unroll 12
        for (int k = 0; k < LC; k++) {
          if (k >= lb) continue;
          uint32_t w = 0;
          if (whole) memcpy(&w, ar + k * ps + K, 4);
          else w = ar[k * ps + K];
          acc[k] = dp(acc[k], xp[i], w);
        }
      }
    }
    since += Nt;
    if (since >= 256 || I + 1 == I1) {
      since = 0;
#pragma GCC unroll 12
      for (int k = 0; k < LC; k++) {
        if (k >= lb) continue;
        float v[16];
        _mm512_storeu_ps(v, acc[k]);
        acc[k] = _mm512_setzero_ps();
        for (int j = 0; j < 16; j++) out[(int64_t)(l0 + k) * 16 + j] += (double)v[j];
      }
    }
  }
}

#ifdef STL_AMX
/* Correlate on tiles: C[l][j] += sum over tile pairs A[l][pair] . B[pair][j], with A = 32 tiles
 * of r planes (64 contiguous bytes of each plane: loaded straight from a, or from a zero-padded
 * copy for a row's last, short block) and B = the 16 x-pair vectors of the same 32 tiles (stored
 * to a buffer; built one block ahead of its multiply, as in encode_amx). C: one tile per 16
 * products (tiles 0..3), float32, flushed into the double sums every 8 blocks (256 tiles, as the
 * vdpbf16ps kernel). Tiles 4 / 5: A of 16 products / of the last chunk's r - 16(nc - 1);
 * 6: B. No coefficient here, nothing to skip: as the vdpbf16ps kernel. */
typedef struct {
  int64_t I, K0, nt; /* tile-row, first tile, tiles (<= 32) of a block */
} CorrBlock;

static inline void corr_a_tile(int c, int nc, int full_last, const uint16_t *ap, int64_t stride) {
  if (c < nc - 1 || full_last) _tile_loadd(4, ap, stride);
  else _tile_loadd(5, ap, stride);
}

static void corr_multiply(const StlCorrelateArgs *p, CorrBlock k, const uint32_t *b, uint16_t *abuf) {
  const int r = p->r, nc = (r + 15) / 16, full_last = r % 16 == 0;
  const int64_t Nt = p->N / 4, ps = p->a_ps;
  const uint16_t *a = (const uint16_t *)p->a + k.I * Nt + k.K0;
  int64_t stride = ps * 2;
  if (k.nt < 32) { /* a short block: its 32-tile rows would read past the plane's row */
    const __mmask32 m = (__mmask32)((1ull << k.nt) - 1);
    for (int l = 0; l < r; l++) _mm512_store_si512(abuf + 32 * l, _mm512_maskz_loadu_epi16(m, a + l * ps));
    a = abuf, stride = 64;
  }
  _tile_loadd(6, b, 64);
  for (int c = 0; c < nc; c++) {
    corr_a_tile(c, nc, full_last, a + (int64_t)16 * c * (k.nt < 32 ? 32 : ps), stride);
    const int last = !(c < nc - 1 || full_last);
    switch (c) { /* tile numbers are immediates */
    case 0:
      if (last) _tile_dpbf16ps(0, 5, 6); else _tile_dpbf16ps(0, 4, 6);
      break;
    case 1:
      if (last) _tile_dpbf16ps(1, 5, 6); else _tile_dpbf16ps(1, 4, 6);
      break;
    case 2:
      if (last) _tile_dpbf16ps(2, 5, 6); else _tile_dpbf16ps(2, 4, 6);
      break;
    default:
      if (last) _tile_dpbf16ps(3, 5, 6); else _tile_dpbf16ps(3, 4, 6);
      break;
    }
  }
}

/* C tiles -> out (double) += , and C = 0 */
static void corr_flush(int r, double *out) {
  _Alignas(64) float c[64 * 16];
  const int nc = (r + 15) / 16;
  _tile_stored(0, c, 64);
  _tile_zero(0);
  if (nc > 1) { _tile_stored(1, c + 256, 64); _tile_zero(1); }
  if (nc > 2) { _tile_stored(2, c + 512, 64); _tile_zero(2); }
  if (nc > 3) { _tile_stored(3, c + 768, 64); _tile_zero(3); }
  for (int i = 0; i < r * 16; i++) out[i] += (double)c[i];
}

static void correlate_amx(const StlCorrelateArgs *p, int64_t q0, int64_t q1) {
  const int r = p->r, nc = (r + 15) / 16, rl = r - 16 * (nc - 1);
  const int64_t Mt = (p->M + 3) / 4, Nt = p->N / 4;
  _Alignas(64) uint32_t b[2][16 * 16];
  _Alignas(64) uint16_t abuf[64 * 32];
  uint8_t rows[8] = {16, 16, 16, 16, 16, (uint8_t)rl, 16, 0};
  const uint16_t colsb[8] = {64, 64, 64, 64, 64, 64, 64, 0};
  rows[nc - 1] = (uint8_t)rl;
  tiles_configure(rows, colsb);
  for (int64_t q = q0; q < q1; q++) {
    double *accq = p->partials + q * (int64_t)r * 16;
    memset(accq, 0, sizeof(double) * (size_t)r * 16);
    const int64_t I0 = q * Mt / p->nparts, I1 = (q + 1) * Mt / p->nparts;
    if (I0 >= I1) continue;
    _tile_zero(0);
    if (nc > 1) _tile_zero(1);
    if (nc > 2) _tile_zero(2);
    if (nc > 3) _tile_zero(3);
    CorrBlock mul = {-1, 0, 0};
    int s = 0, blocks = 0;
    for (int64_t I = I0; I < I1; I++)
      for (int64_t K0 = 0; K0 < Nt; K0 += 32) {
        const int64_t nt = Nt - K0 < 32 ? Nt - K0 : 32;
        for (int g = 0; g < 4; g++) { /* 4 groups of 8 tiles -> pair rows 4g .. 4g + 3 */
          const int64_t k0 = K0 + 8 * g, n8 = nt - 8 * g;
          __m512i xp[4];
          if (n8 > 0) corr_xpairs(p, I, k0, n8 > 8 ? 8 : n8, xp);
          else xp[0] = xp[1] = xp[2] = xp[3] = _mm512_setzero_si512();
          for (int i = 0; i < 4; i++) _mm512_store_si512(b[s] + 16 * (4 * g + i), xp[i]);
        }
        if (mul.I >= 0) {
          corr_multiply(p, mul, b[s ^ 1], abuf);
          if (++blocks % 8 == 0) corr_flush(r, accq);
        }
        mul = (CorrBlock){I, K0, nt};
        s ^= 1;
      }
    if (mul.I >= 0) corr_multiply(p, mul, b[s ^ 1], abuf);
    corr_flush(r, accq);
  }
  _tile_release();
}
#endif

/* Correlate, t = 4, bfloat16 planes a and bfloat16 x: part q sums its fixed range of tile-rows
 * into its own double slot (same split as the float32 primitive: results do not depend on threads). */
static void correlate_bf16(const StlCorrelateArgs *p, int64_t q0, int64_t q1) {
  const int r = p->r;
  const int64_t Mt = (p->M + 3) / 4;
  for (int64_t q = q0; q < q1; q++) {
    double *accq = p->partials + q * (int64_t)r * 16;
    memset(accq, 0, sizeof(double) * (size_t)r * 16);
    const int64_t I0 = q * Mt / p->nparts, I1 = (q + 1) * Mt / p->nparts;
    if (I0 >= I1) continue;
    for (int l0 = 0; l0 < r; l0 += LC) {
      if (r - l0 >= LC) corr_rows(p, I0, I1, l0, LC, accq);
      else corr_rows(p, I0, I1, l0, r - l0, accq);
    }
  }
}

/* Column sums of bfloat16 g (db): acc[c] += sum_m g[m, c] for the columns of chunks [c0, c1) of
 * STL_KB, the bfloat16 rows widened by a shift (no scalar conversion); float32 sums of at most
 * 64 rows (error at most 64 * 2^-24 of the terms' size) flushed into the double sums. Chunk c owns
 * its columns (no thread sums another's). */
static void colsum_bf16(const StlColsumArgs *p, int64_t c0, int64_t c1) {
  const uint16_t *g = (const uint16_t *)p->g;
  for (int64_t c = c0; c < c1; c++) {
    const int64_t cb = c * STL_KB, n = p->P - cb < STL_KB ? p->P - cb : STL_KB;
    const __mmask32 m0 = n >= 32 ? 0xffffffffu : (__mmask32)((1ull << n) - 1);
    const __mmask32 m1 = n <= 32 ? 0 : n >= 64 ? 0xffffffffu : (__mmask32)((1ull << (n - 32)) - 1);
    for (int64_t m0r = 0; m0r < p->M; m0r += 64) {
      const int64_t m1r = p->M - m0r < 64 ? p->M : m0r + 64;
      __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t m = m0r; m < m1r; m++) {
        const uint16_t *row = g + m * p->P + cb;
        const __m512i a = _mm512_maskz_loadu_epi16(m0, row), b = _mm512_maskz_loadu_epi16(m1, row + 32);
        s[0] = _mm512_add_ps(s[0], _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(a)), 16)));
        s[1] = _mm512_add_ps(s[1], _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(a, 1)), 16)));
        s[2] = _mm512_add_ps(s[2], _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(b)), 16)));
        s[3] = _mm512_add_ps(s[3], _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(b, 1)), 16)));
      }
      float v[STL_KB];
      for (int k = 0; k < 4; k++) _mm512_storeu_ps(v + 16 * k, s[k]);
      for (int64_t i = 0; i < n; i++) p->acc[cb + i] += (double)v[i];
    }
  }
}

/* The level's encode/decode/correlate: the bfloat16 kernels where they apply (bfloat16 storage, bfloat16
 * planes, t = 4, r <= 64), the generic primitives otherwise. */
static void encode_f(const StlEncodeArgs *p, int64_t i0, int64_t i1, void *scratch) {
  if (p->dt == STL_BF16 && p->out_bf16 && p->t == 4 && p->r <= 64) encode_bf16(p, i0, i1);
  else ISA_FN(encode_, f)(p, i0, i1, scratch);
}
static void decode_f(const StlDecodeArgs *p, int64_t i0, int64_t i1, void *scratch) {
  if (p->dt == STL_BF16 && p->in_bf16 && p->t == 4 && p->r <= 64) decode_bf16(p, i0, i1);
  else ISA_FN(decode_, f)(p, i0, i1, scratch);
}

static void correlate_f(const StlCorrelateArgs *p, int64_t q0, int64_t q1, void *scratch) {
#ifdef STL_AMX
  if (p->dt == STL_BF16 && p->a_bf16 && p->t == 4 && p->r <= 64) correlate_amx(p, q0, q1);
  else
#endif
  if (p->dt == STL_BF16 && p->a_bf16 && p->t == 4) correlate_bf16(p, q0, q1);
  else ISA_FN(correlate_, f)(p, q0, q1, scratch);
}

static void colsum_f(const StlColsumArgs *p, int64_t c0, int64_t c1, void *scratch) {
  if (p->dt == STL_BF16) colsum_bf16(p, c0, c1);
  else ISA_FN(colsum_, f)(p, c0, c1, scratch);
}

const StlCpuIsa CAT(stl_cpu_isa_, STL_ISA) = {ISA_STR(STL_ISA),
                                             STL_VBYTES,
                                             {encode_f, ISA_FN(encode_, d)},
                                             {decode_f, ISA_FN(decode_, d)},
                                             {correlate_f, ISA_FN(correlate_, d)},
                                             {colsum_f, ISA_FN(colsum_, d)},
                                             ISA_PAIR(gemm_),
                                             ISA_PAIR(pack_)};
#endif
