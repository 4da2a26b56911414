/* The CPU backend (StlBackend stl_cpu_backend, csrc/stl.h): forward and backward of the STL operator, each one
 * pass over blocks of tile-rows.
 *
 * Per block: encode the block's rows of x into Xe (compute type), the r batched GEMMs through
 * torch's CPU BLAS (MKL) into Z, decode Z into the block's rows of y. Xe and Z live in a cached
 * workspace (workspace.c), never in fresh pages. Blocks are sized so that Xe and Z of a block stay
 * in the last-level cache while the GEMMs re-read Wt for each block, when Wt itself fits there;
 * when Wt is too big to stay cached, re-reading it per block costs more than Xe and Z cost to
 * move, and the call runs as one block. The backward does the same per block: encode x again and
 * G, the two GEMMs (dXe, and dWt accumulated over blocks), decode dX, the dD/dE correlations and
 * db, with the reductions summed in a fixed order (results do not depend on the thread count).
 *
 * The arithmetic is in csrc/cpu/primitives.inc, compiled per ISA level (dispatch.c picks one);
 * this file is plain C for every level. 16-bit storage computes in float32: Xe, Z and the GEMMs
 * are float32 (Wt is converted once per call), the outputs are rounded once. */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../stl.h"
#include "convert.h"
#include "primitives.h"

#define SLOTS 64 /* scratch slots: at most this many pieces of one primitive run at once */

/* ------------------------------------------------------------------------------------ sizes */
static bool native(StlDtype dt) { return dt == STL_F32 || dt == STL_F64; }
static int64_t esz_of(StlDtype dt) { return dt == STL_F64 ? 8 : 4; } /* compute type bytes */
static int ct_index(StlDtype dt) { return dt == STL_F64; }
/* bfloat16 storage whose GEMMs run in bfloat16 (stl_cpu_bf16_gemm): Xe, Z and the backward's GEMM
 * operands are bfloat16 (2 bytes), rounded once each, as the GEMMs of the plain composition round
 * them; encode, decode and the correlations still add in float32. */
static bool b16(StlDtype dt) { return dt == STL_BF16 && stl_cpu_bf16_gemm(); }
/* The type the batched GEMMs run in, and its bytes: Xe, Z, Gz and dXe are stored in it. */
static StlDtype gemm_type(StlDtype dt) { return dt == STL_F64 ? STL_F64 : b16(dt) ? STL_BF16 : STL_F32; }
static int64_t gemm_esz(StlDtype dt) { return b16(dt) ? 2 : esz_of(dt); }

/* a*b*c in size_t, SIZE_MAX on overflow (an allocation of that size then fails cleanly) */
static size_t mul3(size_t a, size_t b, size_t c) {
  size_t ab, abc;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc)) return SIZE_MAX;
  return abc;
}

/* Carves 64-byte-aligned pieces out of one workspace; with base == NULL it only sums sizes. */
typedef struct {
  char *base;
  size_t used;
} Carver;

static void *carve(Carver *c, size_t bytes) {
  const size_t at = (c->used + 63) & ~(size_t)63;
  if (bytes == SIZE_MAX || at > SIZE_MAX - bytes) {
    c->used = SIZE_MAX;
    return NULL;
  }
  c->used = at + bytes;
  return c->base ? c->base + at : NULL;
}

/* The largest Wt (compute type) the fused forward packs, and the backward keeps cached across blocks. */
static size_t fused_wt_limit(void) { return stl_cpu_block_bytes() / 2; }

/* Whether a temporary of this many bytes, written whole before it is read, is streamed past the
 * caches: from four block budgets (16 MB by default), past any last-level cache the block size
 * is fitted to, where each line would be evicted before it is read anyway. */
static int stream_bytes(size_t bytes) { return bytes >= 4 * stl_cpu_block_bytes(); }

/* Tile-rows per block of the MKL forward and of the backward with a larger Wt, per_row bytes of
 * temporaries per tile-row: all rows at once, up to 64 block budgets of workspace (512 MB by default). */
static int64_t block_rows(int64_t Mt, size_t per_row) {
  const size_t cap = 64 * stl_cpu_block_bytes();
  if (Mt <= 1 || per_row == 0) return Mt > 0 ? Mt : 1;
  int64_t mb = Mt;
  if ((size_t)mb > cap / per_row) mb = (int64_t)(cap / per_row); /* bound the workspace */
  return mb > 0 ? mb : 1;
}

/* -------------------------------------------------------------------------------- parallel */
enum { JOB_ENCODE, JOB_DECODE, JOB_CORRELATE, JOB_COLSUM, JOB_PACK };

typedef struct {
  int kind;
  const void *args;
  const StlCpuIsa *isa;
  int ct;
  int64_t n, pieces; /* piece s covers items [s*n/pieces, (s+1)*n/pieces) */
  char *scratch;
  size_t slot_bytes;
} Job;

static void job_range(int64_t s0, int64_t s1, void *ctx) {
  const Job *j = (const Job *)ctx;
  void *scr = j->scratch + (size_t)s0 * j->slot_bytes; /* s0 is unique among concurrent calls */
  for (int64_t s = s0; s < s1; s++) {
    const int64_t i0 = s * j->n / j->pieces, i1 = (s + 1) * j->n / j->pieces;
    if (i0 >= i1) continue;
    switch (j->kind) {
      case JOB_ENCODE: j->isa->encode[j->ct]((const StlEncodeArgs *)j->args, i0, i1, scr); break;
      case JOB_DECODE: j->isa->decode[j->ct]((const StlDecodeArgs *)j->args, i0, i1, scr); break;
      case JOB_CORRELATE: j->isa->correlate[j->ct]((const StlCorrelateArgs *)j->args, i0, i1, scr); break;
      case JOB_PACK: j->isa->pack[j->ct]((const StlPackArgs *)j->args, i0, i1); break;
      default: j->isa->colsum[j->ct]((const StlColsumArgs *)j->args, i0, i1, scr); break;
    }
  }
}

/* Smallest work (multiply-adds or element operations) worth handing to another thread: below it
 * the hand-off costs more than the work, and far more when the cores are shared. */
#define MIN_WORK (1 << 17)

/* host->parallel_for over `pieces` pieces of `work` total, each thread getting >= MIN_WORK of it */
static void parallel(const StlHost *host, int64_t pieces, double work, StlRangeFn fn, void *ctx) {
  const double per = work / (double)(pieces > 0 ? pieces : 1);
  int64_t grain = per >= MIN_WORK ? 1 : (int64_t)(MIN_WORK / (per > 1 ? per : 1)) + 1;
  host->parallel_for(pieces, grain, fn, ctx);
}

/* Runs a primitive over n items of `work` each in at most SLOTS pieces (exactly n pieces when
 * `exact`: a correlation's parts), each piece with its own scratch slot. */
static void run(const StlHost *host, int kind, const void *args, StlDtype dt, int64_t n, double work, bool exact,
                char *scratch, size_t slot_bytes) {
  if (n <= 0) return;
  int64_t pieces = exact ? n : 4 * host->num_threads();
  if (pieces > n) pieces = n;
  if (pieces > SLOTS) pieces = SLOTS;
  Job j = {kind, args, stl_cpu_isa(), ct_index(dt), n, pieces, scratch, slot_bytes};
  parallel(host, pieces, work * (double)n, job_range, &j);
}

static size_t slot_bytes(int t, int r, StlDtype dt, bool backward) {
  const int64_t e = esz_of(dt);
  size_t s = stl_cpu_encode_scratch(t, r, e), d = stl_cpu_decode_scratch(t, r, e);
  if (d > s) s = d;
  if (backward) {
    const size_t c = stl_cpu_correlate_scratch(t, r, e), k = stl_cpu_colsum_scratch(e);
    if (c > s) s = c;
    if (k > s) s = k;
  }
  return (s + 63) & ~(size_t)63;
}

/* Parts of one block's correlation: fixed by the block's size alone. */
static int64_t corr_parts(int64_t nb) { return nb < SLOTS ? nb : SLOTS; }

/* ------------------------------------------------------------------------- conversions */
/* Convert n storage elements to the compute type (or copy), in parallel chunks. */
typedef struct {
  StlDtype dt;
  const void *src;
  void *dst;
  int64_t n;
  bool to_compute, add; /* add: dst (float) += the converted src */
} Cvt;

static void cvt_range(int64_t c0, int64_t c1, void *ctx) {
  const Cvt *c = (const Cvt *)ctx;
  const int64_t chunk = 1 << 16;
  float tmp[256];
  for (int64_t i = c0; i < c1; i++) {
    const int64_t o = i * chunk, n = c->n - o < chunk ? c->n - o : chunk;
    if (c->add) {
      float *d = (float *)c->dst + o;
      for (int64_t k = 0; k < n; k += 256) {
        const int64_t m = n - k < 256 ? n - k : 256;
        stl_load_f(c->dt, c->src, o + k, m, tmp);
        for (int64_t q = 0; q < m; q++) d[k + q] += tmp[q];
      }
    } else if (c->dt == STL_F64) {
      if (c->to_compute) stl_load_d(c->dt, c->src, o, n, (double *)c->dst + o);
      else stl_store_d(c->dt, c->dst, o, n, (const double *)c->src + o);
    } else {
      if (c->to_compute) stl_load_f(c->dt, c->src, o, n, (float *)c->dst + o);
      else stl_store_f(c->dt, c->dst, o, n, (const float *)c->src + o);
    }
  }
}

static void convert(const StlHost *host, StlDtype dt, const void *src, void *dst, int64_t n, bool to_compute) {
  Cvt c = {dt, src, dst, n, to_compute, false};
  parallel(host, (n + (1 << 16) - 1) >> 16, (double)n, cvt_range, &c);
}

/* dst (float) += src (storage dt), n elements */
static void add_converted(const StlHost *host, StlDtype dt, const void *src, float *dst, int64_t n) {
  Cvt c = {dt, src, dst, n, true, true};
  parallel(host, (n + (1 << 16) - 1) >> 16, (double)n, cvt_range, &c);
}

static void load_small(StlDtype dt, StlSmallMat m, int64_t rows, int64_t cols, void *dst) {
  if (dt == STL_F64) stl_load_small_d(dt, m, rows, cols, (double *)dst);
  else stl_load_small_f(dt, m, rows, cols, (float *)dst);
}

/* Sum of double partials [nparts][r*t2] into acc (fixed order). */
static void add_parts(double *acc, const double *parts, int64_t nparts, int64_t n) {
  for (int64_t q = 0; q < nparts; q++)
    for (int64_t i = 0; i < n; i++) acc[i] += parts[q * n + i];
}

static void store_doubles(StlDtype dt, const double *v, int64_t n, void *out, int64_t s0, int64_t s1, int64_t rows,
                          int64_t cols) {
  /* out[i*s0 + j*s1] = v[i*cols + j] */
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++) {
      const double x = v[i * cols + j];
      if (dt == STL_F64) {
        stl_store_d(dt, out, i * s0 + j * s1, 1, &x);
      } else {
        const float f = (float)x;
        stl_store_f(dt, out, i * s0 + j * s1, 1, &f);
      }
    }
  (void)n;
}

#define AT(base, dt, elems) ((const char *)(base) + (elems) * stl_dtype_size(dt))
#define ATW(base, dt, elems) ((char *)(base) + (elems) * stl_dtype_size(dt))

/* --------------------------------------------------------------------------------- forward */
/* Per block of tile-rows: encode Xe (all products) once, then work items = (panel of STL_KB output
 * tile-columns, group of rows), each one the r GEMMs of its panel (gemm primitive: the panel of Wt
 * packed, a register-blocked micro-kernel) into a cache-resident Z tile, decoded right away into
 * y (and copied to the Z output when autograd keeps it). Z never leaves the cache; Xe is read from
 * it by every panel. */
typedef struct {
  int64_t Mt, Nt, Pt, mb, mp, rows_g, panels, groups, pieces;
  void *E, *D, *bias, *wpack, *xe, *scratch;
  size_t slot, zbuf;
} FwdWs;

static int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

static size_t fwd_layout(const StlForward *f, const StlHost *host, FwdWs *w, char *base) {
  const int t = f->t, r = f->r, t2 = t * t;
  const size_t e = (size_t)esz_of(f->dt);
  w->Mt = (f->M + t - 1) / t, w->Nt = f->N / t, w->Pt = f->P / t;
  /* a block's Xe stays in the last-level cache: it is read once per panel */
  const size_t per_row = mul3((size_t)r, (size_t)w->Nt, e);
  w->mb = w->Mt;
  if (per_row && (size_t)w->Mt > stl_cpu_block_bytes() / per_row) w->mb = (int64_t)(stl_cpu_block_bytes() / per_row);
  if (w->mb < STL_MR) w->mb = STL_MR;
  w->mp = round_up(w->mb, STL_MR);
  /* work items: (panel, group of rows), a group small enough that its Z tile (r x rows x KB) stays
   * in L2 between the GEMMs that write it and the decode that reads it */
  const int64_t T = host->num_threads();
  w->panels = (w->Pt + STL_KB - 1) / STL_KB;
  w->rows_g = (int64_t)(((size_t)192 << 10) / mul3((size_t)r, STL_KB, e)) / STL_MR * STL_MR;
  if (w->rows_g < STL_MR) w->rows_g = STL_MR;
  if (w->rows_g > w->mp) w->rows_g = w->mp;
  w->groups = (w->mp + w->rows_g - 1) / w->rows_g;
  w->pieces = w->panels * w->groups;
  if (w->pieces > 4 * T) w->pieces = 4 * T;
  if (w->pieces > SLOTS) w->pieces = SLOTS;
  w->zbuf = mul3((size_t)r, (size_t)w->rows_g, STL_KB * e);
  const size_t dec = stl_cpu_decode_scratch(t, r, (int64_t)e), enc = stl_cpu_encode_scratch(t, r, (int64_t)e);
  w->slot = (w->zbuf + dec + 2 * 63) & ~(size_t)63;
  if (w->slot < enc) w->slot = (enc + 63) & ~(size_t)63; /* the encode's run() uses the same slots */
  if (w->zbuf == SIZE_MAX) w->slot = SIZE_MAX;
  const int64_t nslots = 4 * T < SLOTS ? 4 * T : SLOTS; /* >= pieces, and what run() may use */
  Carver c = {base, 0};
  w->E = carve(&c, (size_t)r * t2 * e);
  w->D = carve(&c, (size_t)t2 * r * e);
  w->bias = f->bias ? carve(&c, (size_t)f->P * e) : NULL;
  w->wpack = carve(&c, mul3((size_t)r * (size_t)w->panels, (size_t)w->Nt * STL_KB, e));
  w->xe = carve(&c, mul3((size_t)r, (size_t)w->mp, (size_t)w->Nt * e));
  w->scratch = carve(&c, mul3((size_t)nslots, w->slot, 1));
  return c.used;
}



typedef struct {
  const StlForward *f;
  const FwdWs *w;
  int64_t I0, nb, row0, Mb;
  const StlCpuIsa *isa;
  int ct;
} PanelJob;

static void panel_range(int64_t s0, int64_t s1, void *ctx) {
  const PanelJob *j = (const PanelJob *)ctx;
  const StlForward *f = j->f;
  const FwdWs *w = j->w;
  const int t = f->t, r = f->r;
  const int64_t e = esz_of(f->dt), items = w->panels * w->groups;
  char *zbuf = (char *)w->scratch + (size_t)s0 * w->slot;
  void *dscr = zbuf + ((w->zbuf + 63) & ~(size_t)63);
  for (int64_t s = s0; s < s1; s++)
    for (int64_t it = s * items / w->pieces; it < (s + 1) * items / w->pieces; it++) {
      const int64_t pn = it / w->groups, g = it % w->groups;
      const int64_t lo = g * w->rows_g, rows = w->mp - lo < w->rows_g ? w->mp - lo : w->rows_g;
      const int64_t rv = j->nb - lo < rows ? j->nb - lo : rows; /* tile-rows with real rows */
      if (rv <= 0) continue;
      const int64_t j0 = pn * STL_KB, nc = w->Pt - j0 < STL_KB ? w->Pt - j0 : STL_KB;
      const int64_t slab = w->Nt * STL_KB; /* packed panel pn of product l: wpack[l][pn] */
      StlGemmArgs ga = {(const char *)w->xe + (size_t)(lo * w->Nt * e), w->mp * w->Nt, rows, w->Nt,
                        (const char *)w->wpack + (size_t)(pn * slab * e), w->panels * slab, r, zbuf, nc};
      j->isa->gemm[j->ct](&ga);
      const int64_t orow = j->row0 + (int64_t)t * lo;
      StlDecodeArgs da = {f->dt, zbuf, rows * STL_KB, STL_KB, j->Mb - (int64_t)t * lo, (int64_t)t * nc, t, r, w->D,
                          w->bias ? (const char *)w->bias + (size_t)((int64_t)t * j0 * e) : NULL,
                          ATW(f->y, f->dt, orow * f->P + (int64_t)t * j0), f->P};
      j->isa->decode[j->ct](&da, 0, rv, dscr);
      if (f->z) /* the products, kept for the backward */
        for (int l = 0; l < r; l++)
          for (int64_t i = 0; i < rv; i++) {
            const char *src = (const char *)zbuf + (size_t)(((int64_t)l * rows + i) * STL_KB * e);
            const int64_t off = (int64_t)l * w->Mt * w->Pt + (j->I0 + lo + i) * w->Pt + j0;
            if (native(f->dt)) memcpy(ATW(f->z, f->dt, off), src, (size_t)(nc * e));
            else stl_store_f(f->dt, f->z, off, nc, (const float *)src);
          }
    }
}

static void forward_fused(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *host) {
  FwdWs w;
  if (fwd_layout(f, host, &w, NULL) > ws_bytes) host->error(host, "stl_torch CPU forward: workspace too small");
  fwd_layout(f, host, &w, (char *)ws);
  const int t = f->t, r = f->r, t2 = t * t;
  const int64_t Mt = w.Mt, Nt = w.Nt, Pt = w.Pt, e = esz_of(f->dt);
  load_small(f->dt, f->enc, r, t2, w.E);
  load_small(f->dt, f->dec, t2, r, w.D);
  if (f->bias) {
    StlSmallMat b = {f->bias, 0, 1};
    load_small(f->dt, b, 1, f->P, w.bias);
  }
  StlPackArgs pa = {f->dt, f->wt, Nt, Pt, w.panels, w.wpack};
  run(host, JOB_PACK, &pa, f->dt, (int64_t)r * w.panels, (double)Nt * STL_KB, false, NULL, 0);
  for (int64_t I0 = 0; I0 < Mt; I0 += w.mb) {
    const int64_t nb = Mt - I0 < w.mb ? Mt - I0 : w.mb, row0 = (int64_t)t * I0;
    const int64_t Mb = f->M - row0 < (int64_t)t * nb ? f->M - row0 : (int64_t)t * nb;
    StlEncodeArgs ea = {f->dt, AT(f->x, f->dt, row0 * f->N), Mb, f->N, t, r, w.E, NULL, 0, w.xe, w.mp * Nt};
    run(host, JOB_ENCODE, &ea, f->dt, nb, (double)r * t * f->N, false, (char *)w.scratch, w.slot);
    if (nb < w.mp) /* the micro-kernel's rows past the block read zeros */
      for (int l = 0; l < r; l++)
        memset((char *)w.xe + (size_t)((l * w.mp + nb) * Nt * e), 0, (size_t)((w.mp - nb) * Nt * e));
    PanelJob pj = {f, &w, I0, nb, row0, Mb, stl_cpu_isa(), ct_index(f->dt)};
    parallel(host, w.pieces, (double)r * w.mp * Nt * Pt, panel_range, &pj);
  }
}

/* The forward for a large Wt: the r GEMMs through torch's BLAS (MKL), per block of tile-rows
 * encode -> GEMMs -> decode on the cached workspace. When Wt does not stay in the cache, re-reading
 * it for each panel (the fused forward below) or block costs more than moving Xe and Z once. */
typedef struct {
  int64_t Mt, Nt, Pt, mb;
  void *E, *D, *bias, *wt, *xe, *z, *scratch;
  size_t slot;
} MklWs;

static size_t mkl_layout(const StlForward *f, MklWs *w, char *base) {
  const int t = f->t, r = f->r, t2 = t * t;
  const size_t e = (size_t)esz_of(f->dt), ge = (size_t)gemm_esz(f->dt);
  w->Mt = (f->M + t - 1) / t, w->Nt = f->N / t, w->Pt = f->P / t;
  const size_t per_row = mul3((size_t)r, (size_t)(w->Nt + w->Pt), ge);
  const size_t wt_bytes = mul3((size_t)r, (size_t)w->Nt * (size_t)w->Pt, e);
  w->mb = block_rows(w->Mt, per_row);
  w->slot = slot_bytes(t, r, f->dt, false);
  Carver c = {base, 0};
  w->E = carve(&c, (size_t)r * t2 * e);
  w->D = carve(&c, (size_t)t2 * r * e);
  w->bias = f->bias ? carve(&c, (size_t)f->P * e) : NULL;
  w->wt = native(f->dt) || b16(f->dt) ? NULL : carve(&c, wt_bytes);
  w->xe = carve(&c, mul3((size_t)r, (size_t)w->mb, (size_t)w->Nt * ge));
  /* Z kept in its own type: the GEMMs write the kept Z (plane stride Mt * Pt), no copy of it */
  const bool z_direct = f->z && (native(f->dt) || b16(f->dt));
  w->z = z_direct ? NULL : carve(&c, mul3((size_t)r, (size_t)w->mb, (size_t)w->Pt * ge));
  w->scratch = carve(&c, mul3(SLOTS, w->slot, 1));
  return c.used;
}

static void forward_mkl(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *host) {
  MklWs w;
  if (mkl_layout(f, &w, NULL) > ws_bytes) host->error(host, "stl_torch CPU forward: workspace too small");
  mkl_layout(f, &w, (char *)ws);
  const int t = f->t, r = f->r, t2 = t * t;
  const bool h = b16(f->dt);
  const StlDtype ct = gemm_type(f->dt);
  const int64_t Mt = w.Mt, Nt = w.Nt, Pt = w.Pt, ge = gemm_esz(f->dt);
  load_small(f->dt, f->enc, r, t2, w.E);
  load_small(f->dt, f->dec, t2, r, w.D);
  if (f->bias) {
    StlSmallMat b = {f->bias, 0, 1};
    load_small(f->dt, b, 1, f->P, w.bias);
  }
  const void *wt = f->wt;
  if (!native(f->dt) && !h) {
    convert(host, f->dt, f->wt, w.wt, (int64_t)r * Nt * Pt, true);
    wt = w.wt;
  }
  for (int64_t I0 = 0; I0 < Mt; I0 += w.mb) {
    const int64_t nb = Mt - I0 < w.mb ? Mt - I0 : w.mb, row0 = (int64_t)t * I0;
    const int64_t Mb = f->M - row0 < (int64_t)t * nb ? f->M - row0 : (int64_t)t * nb;
    StlEncodeArgs ea = {f->dt, AT(f->x, f->dt, row0 * f->N), Mb, f->N, t, r, w.E, NULL, 0, w.xe, nb * Nt, h,
                        stream_bytes((size_t)r * nb * Nt * ge)};
    run(host, JOB_ENCODE, &ea, f->dt, nb, (double)r * t * f->N, false, (char *)w.scratch, w.slot);
    /* NULL w.z: written where it is kept, block I0's rows of each plane */
    void *zb = w.z ? w.z : ATW(f->z, f->dt, I0 * Pt);
    const int64_t zps = w.z ? nb * Pt : Mt * Pt;
    host->batched_gemm(host, ct, r, nb, Pt, Nt, (StlMat){w.xe, nb * Nt, Nt, 1}, (StlMat){wt, Nt * Pt, Pt, 1},
                       (StlMat){zb, zps, Pt, 1}, false);
    if (f->z && w.z) /* kept Z in another type (float16): plane l of the block -> z[l, I0:I0+nb, :] */
      for (int l = 0; l < r; l++)
        stl_store_f(f->dt, ATW(f->z, f->dt, (int64_t)l * Mt * Pt + I0 * Pt), 0, nb * Pt,
                    (const float *)((const char *)w.z + (size_t)l * nb * Pt * ge));
    StlDecodeArgs da = {f->dt, zb, zps, Pt, Mb, f->P, t, r, w.D, w.bias, ATW(f->y, f->dt, row0 * f->P), f->P, h};
    run(host, JOB_DECODE, &da, f->dt, nb, (double)r * t * f->P, false, (char *)w.scratch, w.slot);
  }
}


/* Wt's bytes (compute type) up to which the fused forward runs: half a block's budget (2 MB by
 * default). Its packed panels are re-read per row block and each block's Xe once per panel, so
 * past that the MKL forward wins: measured on an AVX2 EPYC, Wt of 5.3 MB (SmolLM2's MLP, t=4,
 * r=24) ran 1.45x faster through MKL at N=1536->576 and equal at 576->1536, while at Wt <= 1.6 MB
 * (512^3, the T2T-ViT MLP) the two tie. */

static bool use_fused(const StlForward *f) {
  if (b16(f->dt)) return false; /* its micro-kernel multiplies in float32 */
  const size_t wt = mul3((size_t)f->r, (size_t)(f->N / f->t) * (size_t)(f->P / f->t), (size_t)esz_of(f->dt));
  return wt <= fused_wt_limit();
}

static size_t cpu_forward_ws_bytes(const StlForward *f, const StlHost *host) {
  if (use_fused(f)) {
    FwdWs w;
    return fwd_layout(f, host, &w, NULL);
  }
  MklWs w;
  return mkl_layout(f, &w, NULL);
}

static void cpu_forward(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *host) {
  if (use_fused(f)) forward_fused(f, ws, ws_bytes, host);
  else forward_mkl(f, ws, ws_bytes, host);
}

/* -------------------------------------------------------------------------------- backward */
typedef struct {
  int64_t Mt, Nt, Pt, mb;
  void *E, *Dt, *Et, *wt, *dwt, *xe, *z, *gz, *dxe, *scratch;
  void *dwt16; /* bfloat16 GEMMs (b16) in blocks: a block's dWt, before the float32 sum */
  double *dE, *dD, *db, *parts;
  size_t slot;
} BwdWs;

static size_t bwd_layout(const StlBackward *b, const StlHost *host, BwdWs *w, char *base) {
  const int t = b->t, r = b->r, t2 = t * t;
  const size_t e = (size_t)esz_of(b->dt);
  w->Mt = (b->M + t - 1) / t, w->Nt = b->N / t, w->Pt = b->P / t;
  const size_t wt_bytes = mul3((size_t)r, (size_t)w->Nt * (size_t)w->Pt, e);
  const bool h = b16(b->dt);
  const size_t ge = (size_t)gemm_esz(b->dt);
  const size_t per_row = mul3((size_t)r, (size_t)(2 * w->Nt + 2 * w->Pt), ge); /* Xe, dXe, Gz, Z */
  /* dWt accumulates over blocks (baddbmm), so every block re-reads Wt and re-writes dWt. When they
   * are small enough to stay cached (as the fused forward's Wt) and the call's temporaries are
   * not (more than four block budgets), blocks of one budget keep each block's x, G, Xe, Gz and
   * dXe in cache from the pass that writes or first reads them to the next one (the correlations
   * re-read x and G): measured faster at the T2T-ViT shape. Otherwise the call runs as one block,
   * up to the workspace bound: a larger Wt would be moved per block. With bfloat16 GEMMs each
   * block's dWt is rounded to bfloat16 before it is summed in float32, so they keep to one block
   * up to the workspace bound. */
  const size_t budget = stl_cpu_block_bytes();
  if (!host->gemm_accumulates)
    w->mb = w->Mt;
  else if (h)
    w->mb = block_rows(w->Mt, per_row);
  else if (per_row && wt_bytes <= fused_wt_limit() && (size_t)w->Mt > 4 * (budget / per_row))
    w->mb = (int64_t)(budget / per_row) > 0 ? (int64_t)(budget / per_row) : 1;
  else
    w->mb = block_rows(w->Mt, per_row);
  w->slot = slot_bytes(t, r, b->dt, true);
  Carver c = {base, 0};
  w->E = carve(&c, (size_t)r * t2 * e);
  w->Dt = carve(&c, (size_t)r * t2 * e);
  w->Et = carve(&c, (size_t)t2 * r * e);
  const bool blocks = w->mb < w->Mt;
  w->wt = native(b->dt) || h ? NULL : carve(&c, wt_bytes);
  w->dwt = native(b->dt) || (h && !blocks) ? NULL : carve(&c, wt_bytes);
  w->dwt16 = h && blocks ? carve(&c, mul3((size_t)r, (size_t)w->Nt * (size_t)w->Pt, 2)) : NULL;
  w->xe = carve(&c, mul3((size_t)r, (size_t)w->mb, (size_t)w->Nt * ge));
  w->dxe = carve(&c, mul3((size_t)r, (size_t)w->mb, (size_t)w->Nt * ge));
  w->gz = carve(&c, mul3((size_t)r, (size_t)w->mb, (size_t)w->Pt * ge));
  /* Z: read in place when saved in the compute type or (b16) in bfloat16 */
  w->z = b->z && (native(b->dt) || h) ? NULL : carve(&c, mul3((size_t)r, (size_t)w->mb, (size_t)w->Pt * ge));
  w->dE = carve(&c, (size_t)r * t2 * sizeof(double));
  w->dD = carve(&c, (size_t)r * t2 * sizeof(double));
  w->db = b->db ? carve(&c, (size_t)b->P * sizeof(double)) : NULL;
  w->parts = carve(&c, (size_t)SLOTS * r * t2 * sizeof(double));
  w->scratch = carve(&c, mul3(SLOTS, w->slot, 1));
  return c.used;
}

static size_t cpu_backward_ws_bytes(const StlBackward *b, const StlHost *host) {
  BwdWs w;
  return bwd_layout(b, host, &w, NULL);
}

static void correlate_block(const StlHost *host, const StlBackward *b, BwdWs *w, const void *a, int64_t a_ps,
                            const void *x, int64_t Mb, int64_t N, int64_t nb, double *acc) {
  const int64_t nparts = corr_parts(nb), n = (int64_t)b->r * b->t * b->t;
  StlCorrelateArgs ca = {b->dt, a, a_ps, x, Mb, N, b->t, b->r, nparts, w->parts, b16(b->dt)};
  run(host, JOB_CORRELATE, &ca, b->dt, nparts, (double)b->r * Mb * N / nparts, true, (char *)w->scratch, w->slot);
  add_parts(acc, w->parts, nparts, n);
}

static void cpu_backward(const StlBackward *b, void *ws, size_t ws_bytes, const StlHost *host) {
  BwdWs w;
  if (bwd_layout(b, host, &w, NULL) > ws_bytes) host->error(host, "stl_torch CPU backward: workspace too small");
  bwd_layout(b, host, &w, (char *)ws);
  const int t = b->t, r = b->r, t2 = t * t;
  const StlDtype dt = b->dt;
  const bool h = b16(dt), one = w.mb >= w.Mt; /* one: a single block */
  const StlDtype ct = gemm_type(dt);
  const int64_t Mt = w.Mt, Nt = w.Nt, Pt = w.Pt;
  const StlSmallMat dT = {b->dec.base, b->dec.s1, b->dec.s0}, eT = {b->enc.base, b->enc.s1, b->enc.s0};
  load_small(dt, b->enc, r, t2, w.E);  /* encode x:  coef[l][j] = E[l, j] */
  load_small(dt, dT, r, t2, w.Dt);     /* encode G:  coef[l][j] = D[j, l] */
  load_small(dt, eT, t2, r, w.Et);     /* decode dX: coef[j][l] = E[l, j] */
  memset(w.dE, 0, sizeof(double) * (size_t)r * t2);
  memset(w.dD, 0, sizeof(double) * (size_t)r * t2);
  if (w.db) memset(w.db, 0, sizeof(double) * (size_t)b->P);
  const void *wt = b->wt;
  /* where the dWt GEMM writes: the output itself, or a float32 sum over blocks (from bfloat16) */
  void *dwt = native(dt) || (h && one) ? b->dWt : h ? w.dwt16 : w.dwt;
  if (!native(dt) && !h) {
    convert(host, dt, b->wt, w.wt, (int64_t)r * Nt * Pt, true);
    wt = w.wt;
  }
  for (int64_t I0 = 0; I0 < Mt; I0 += w.mb) {
    const int64_t nb = Mt - I0 < w.mb ? Mt - I0 : w.mb, row0 = (int64_t)t * I0;
    const int64_t Mb = b->M - row0 < (int64_t)t * nb ? b->M - row0 : (int64_t)t * nb;
    const void *xb = AT(b->x, dt, row0 * b->N), *gb = AT(b->g, dt, row0 * b->P);
    /* Xe = encode(x, E), recomputed: cheaper than keeping it */
    StlEncodeArgs ex = {dt, xb, Mb, b->N, t, r, w.E, NULL, 0, w.xe, nb * Nt, h};
    run(host, JOB_ENCODE, &ex, dt, nb, (double)r * t * b->N, false, (char *)w.scratch, w.slot);
    /* Z: the saved one (read in place when it is the compute type), or recomputed */
    const void *z = w.z;
    int64_t z_ps = nb * Pt;
    if (b->z && (native(dt) || h)) {
      z = AT(b->z, dt, I0 * Pt);
      z_ps = Mt * Pt;
    } else if (b->z) {
      for (int l = 0; l < r; l++)
        stl_load_f(dt, b->z, (int64_t)l * Mt * Pt + I0 * Pt, nb * Pt, (float *)w.z + (size_t)l * nb * Pt);
    } else {
      host->batched_gemm(host, ct, r, nb, Pt, Nt, (StlMat){w.xe, nb * Nt, Nt, 1}, (StlMat){wt, Nt * Pt, Pt, 1},
                         (StlMat){w.z, nb * Pt, Pt, 1}, false);
    }
    /* Gz = encode(G, D^T) (+ dL/dZ);  dD[j, l] += sum Z[l] x G tiles */
    StlEncodeArgs eg = {dt, gb, Mb, b->P, t, r, w.Dt, b->gz ? AT(b->gz, dt, I0 * Pt) : NULL, Mt * Pt, w.gz, nb * Pt, h};
    run(host, JOB_ENCODE, &eg, dt, nb, (double)r * t * b->P, false, (char *)w.scratch, w.slot);
    correlate_block(host, b, &w, z, z_ps, gb, Mb, b->P, nb, w.dD);
    /* dXe = Gz @ Wt^T;  dWt (+)= Xe^T @ Gz */
    host->batched_gemm(host, ct, r, nb, Nt, Pt, (StlMat){w.gz, nb * Pt, Pt, 1}, (StlMat){wt, Nt * Pt, 1, Pt},
                       (StlMat){w.dxe, nb * Nt, Nt, 1}, false);
    host->batched_gemm(host, ct, r, Nt, Pt, nb, (StlMat){w.xe, nb * Nt, 1, Nt}, (StlMat){w.gz, nb * Pt, Pt, 1},
                       (StlMat){dwt, Nt * Pt, Pt, 1}, I0 > 0 && !h);
    if (h && !one) {
      if (I0 == 0) convert(host, STL_BF16, w.dwt16, w.dwt, (int64_t)r * Nt * Pt, true);
      else add_converted(host, STL_BF16, w.dwt16, (float *)w.dwt, (int64_t)r * Nt * Pt);
    }
    /* dX = decode(dXe, E^T);  dE[l, j] += sum dXe[l] x X tiles;  db += column sums of G */
    StlDecodeArgs dx = {dt, w.dxe, nb * Nt, Nt, Mb, b->N, t, r, w.Et, NULL, ATW(b->dx, dt, row0 * b->N), b->N, h};
    run(host, JOB_DECODE, &dx, dt, nb, (double)r * t * b->N, false, (char *)w.scratch, w.slot);
    correlate_block(host, b, &w, w.dxe, nb * Nt, xb, Mb, b->N, nb, w.dE);
    if (w.db) {
      StlColsumArgs cs = {dt, gb, Mb, b->P, w.db};
      run(host, JOB_COLSUM, &cs, dt, (b->P + STL_KB - 1) / STL_KB, (double)Mb * STL_KB, false, (char *)w.scratch,
          w.slot);
    }
  }
  if (Mt == 0) memset(dwt, 0, (size_t)(r * Nt * Pt * gemm_esz(dt))); /* b16: the output; else the compute type */
  if (!native(dt) && !(h && one)) convert(host, dt, w.dwt, b->dWt, (int64_t)r * Nt * Pt, false);
  store_doubles(dt, w.dE, r * t2, b->dE, t2, 1, r, t2);  /* dE[l, j] */
  store_doubles(dt, w.dD, r * t2, b->dD, 1, r, r, t2);   /* dD[j, l] = acc[l][j] */
  if (w.db) store_doubles(dt, w.db, b->P, b->db, 0, 1, 1, b->P);
}

/* ----------------------------------------------------------------- the plain composition */
/* stl_forward_unfused: encode -> batched GEMM (torch's, through the host) -> decode, each a
 * separate pass over storage-dtype Xe and Z: the reference the fused and MKL forwards are checked
 * and timed against, not a product path. */
typedef struct {
  void *p;
  int token;
} Temp;

static Temp temp(const StlHost *host, size_t bytes) {
  Temp m = {NULL, 0};
  m.p = stl_cpu_workspace_acquire(bytes, &m.token);
  if (!m.p) {
    char msg[160];
    snprintf(msg, sizeof msg, "stl_torch CPU: out of memory (could not allocate %zu bytes of workspace)", bytes);
    host->error(host, msg);
  }
  return m;
}

static void enc_cpu(StlDtype dt, const void *in, int64_t M, int64_t N, int t, int r, StlSmallMat enc, void *out,
                    const StlHost *host) {
  const int64_t Mt = (M + t - 1) / t, Nt = N / t, e = esz_of(dt);
  const size_t slot = slot_bytes(t, r, dt, false);
  Carver c = {NULL, 0};
  carve(&c, (size_t)r * t * t * e);
  carve(&c, native(dt) ? 0 : mul3((size_t)r, (size_t)Mt, (size_t)Nt * e));
  carve(&c, mul3(SLOTS, slot, 1));
  Temp m = temp(host, c.used);
  c = (Carver){(char *)m.p, 0};
  void *E = carve(&c, (size_t)r * t * t * e);
  void *o = native(dt) ? out : carve(&c, mul3((size_t)r, (size_t)Mt, (size_t)Nt * e));
  char *scr = carve(&c, mul3(SLOTS, slot, 1));
  load_small(dt, enc, r, t * t, E);
  StlEncodeArgs a = {dt, in, M, N, t, r, E, NULL, 0, o, Mt * Nt};
  run(host, JOB_ENCODE, &a, dt, Mt, (double)r * t * N, false, scr, slot);
  if (!native(dt)) convert(host, dt, o, out, (int64_t)r * Mt * Nt, false);
  stl_cpu_workspace_release(m.p, m.token);
}

static void dec_cpu(StlDtype dt, const void *in, int64_t M, int64_t P, int t, int r, StlSmallMat dec,
                    const void *bias, void *out, const StlHost *host) {
  const int64_t Mt = (M + t - 1) / t, Pt = P / t, e = esz_of(dt);
  const size_t slot = slot_bytes(t, r, dt, false);
  Carver c = {NULL, 0};
  carve(&c, (size_t)r * t * t * e);
  carve(&c, (size_t)P * e);
  carve(&c, native(dt) ? 0 : mul3((size_t)r, (size_t)Mt, (size_t)Pt * e));
  carve(&c, mul3(SLOTS, slot, 1));
  Temp m = temp(host, c.used);
  c = (Carver){(char *)m.p, 0};
  void *D = carve(&c, (size_t)r * t * t * e), *b = carve(&c, (size_t)P * e);
  void *z = native(dt) ? (void *)in : carve(&c, mul3((size_t)r, (size_t)Mt, (size_t)Pt * e));
  char *scr = carve(&c, mul3(SLOTS, slot, 1));
  load_small(dt, dec, t * t, r, D);
  if (bias) {
    StlSmallMat bm = {bias, 0, 1};
    load_small(dt, bm, 1, P, b);
  }
  if (!native(dt)) convert(host, dt, in, z, (int64_t)r * Mt * Pt, true);
  StlDecodeArgs a = {dt, z, Mt * Pt, Pt, M, P, t, r, D, bias ? b : NULL, out, P};
  run(host, JOB_DECODE, &a, dt, Mt, (double)r * t * P, false, scr, slot);
  stl_cpu_workspace_release(m.p, m.token);
}

static size_t composed_ws_bytes(const StlForward *f, const StlHost *host) {
  (void)host;
  const size_t Mt = (size_t)((f->M + f->t - 1) / f->t), e = (size_t)stl_dtype_size(f->dt);
  Carver c = {NULL, 0};
  carve(&c, mul3((size_t)f->r, Mt, (size_t)(f->N / f->t) * e));        /* Xe */
  if (!f->z) carve(&c, mul3((size_t)f->r, Mt, (size_t)(f->P / f->t) * e)); /* Z, unless kept */
  return c.used;
}

static void composed_forward(const StlForward *f, void *ws, size_t ws_bytes, const StlHost *host) {
  if (composed_ws_bytes(f, host) > ws_bytes) host->error(host, "stl_torch CPU composed forward: workspace too small");
  const int64_t Mt = (f->M + f->t - 1) / f->t, Nt = f->N / f->t, Pt = f->P / f->t;
  const size_t e = (size_t)stl_dtype_size(f->dt);
  Carver c = {(char *)ws, 0};
  void *xe = carve(&c, mul3((size_t)f->r, (size_t)Mt, (size_t)Nt * e));
  void *z = f->z ? f->z : carve(&c, mul3((size_t)f->r, (size_t)Mt, (size_t)Pt * e));
  enc_cpu(f->dt, f->x, f->M, f->N, f->t, f->r, f->enc, xe, host);
  host->batched_gemm(host, f->dt, f->r, Mt, Pt, Nt, (StlMat){xe, Mt * Nt, Nt, 1}, (StlMat){f->wt, Nt * Pt, Pt, 1},
                     (StlMat){z, Mt * Pt, Pt, 1}, 0);
  dec_cpu(f->dt, z, f->M, f->P, f->t, f->r, f->dec, f->bias, f->y, host);
}

const StlBackend stl_cpu_backend = {"cpu", cpu_forward_ws_bytes, cpu_forward, cpu_backward_ws_bytes, cpu_backward, 1};
/* the backward has no plain variant: the composition's table shares the product's */
const StlBackend stl_cpu_composed = {"cpu (composition)", composed_ws_bytes, composed_forward, cpu_backward_ws_bytes,
                                     cpu_backward, 0};
