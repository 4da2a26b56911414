/* torch.ops.stl_torch.stl_decode_step: one causal decode step with the product cache (CPU).
 *
 *   stl_decode_step(Tensor x, Tensor rows, Tensor E, Tensor Wt, Tensor D, Tensor bias,
 *                   Tensor(a!) zcache, Tensor pos, int tile, Tensor(b!) rows_out) -> Tensor y
 *
 *   x      (B, N)        the new token of each sequence (row pos[b] of its current tile)
 *   rows   (B, t-1, N)   each sequence's last t-1 inputs: rows 0..pos[b]-1 of its tile at their end
 *   E      (r, t*t)      raw (unmasked) encoder: only the causal support a <= k_l is read
 *   Wt     (r, N/t, P/t) the weight; only the level-pos[b] products' blocks are read
 *   D      (t*t, r)      raw (unmasked) decoder: only the causal support a >= k_l is read
 *   bias   (P,) or an empty tensor for none
 *   zcache (B, r, P/t)   per sequence the GEMM row Z_l of every product whose level its tile has
 *                        reached; the step writes the level-pos[b] rows in place and reads levels <= pos[b]
 *   pos    (B,) int64    each sequence's row in its tile, 0 <= pos < t (sequences at different rows: each
 *                        level's products for its sequences, in one call)
 *   tile   t, 1..16
 *   rows_out (B, t-1, N)  written with the last t-1 inputs after this token (rows shifted by one, x
 *                        appended; may be 'rows' itself), or an empty tensor: not written
 *   y      (B, P)        output row pos[b] of each sequence's tile, as the full forward computes it
 * Cost: r/t products per sequence, r*N*P/t^3 multiply-adds in their GEMM row (csrc/cpu/step_isa.inc:
 * each Wt strip read once for all the level's sequences), plus encode (<= r/t * t*N) and decode
 * (<= r*P). Levels k_l = floor(l*t/r), the layout of
 * stl_torch.init.causal_levels / causal_masks. CPU only (no CUDA kernel yet).
 *
 * Registered as a fragment of the stl_torch library (ops.c defines the library), so this file touches
 * nothing of ops.c. Bad input raises a RuntimeError naming the argument. */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode_step.h"
#include "torch_abi.h"

void stl_throw(const char *msg) __attribute__((noreturn));

#define OP "stl_decode_step"
#define MAX_OWNED 32

typedef struct {
  AtenTensorHandle h[MAX_OWNED];
  int n;
  void *mem[2];
} Held;

static AtenTensorHandle hold(Held *o, AtenTensorHandle h) {
  if (h && o->n < MAX_OWNED) o->h[o->n++] = h;
  return h;
}

static void drop(Held *o, AtenTensorHandle h) { /* free one temporary now */
  for (int i = 0; i < o->n; i++)
    if (o->h[i] == h) {
      stl_abi.delete_tensor_object(h);
      o->h[i] = o->h[--o->n];
      return;
    }
}

static void let_go(Held *o, AtenTensorHandle h) { /* an output: no longer ours to free */
  for (int i = 0; i < o->n; i++)
    if (o->h[i] == h) {
      o->h[i] = o->h[--o->n];
      return;
    }
}

static void free_held(Held *o) {
  for (int i = 0; i < o->n; i++) stl_abi.delete_tensor_object(o->h[i]);
  o->n = 0;
  for (int i = 0; i < 2; i++) free(o->mem[i]), o->mem[i] = NULL;
}

static void fail(Held *o, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void fail(Held *o, const char *fmt, ...) {
  char msg[512];
  int k = snprintf(msg, sizeof msg, OP ": ");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
  va_end(ap);
  free_held(o);
  stl_throw(msg);
}

static void check(Held *o, AOTITorchError err, const char *what) {
  if (err) fail(o, "torch C ABI call failed: %s", what);
}

typedef struct {
  AtenTensorHandle h;
  const char *name;
  int32_t dtype, dev;
  int64_t dim, *sizes, *strides, numel;
  void *data;
} T;

static T get(Held *o, StableIValue v, const char *name) {
  T a = {0};
  a.h = hold(o, (AtenTensorHandle)(uintptr_t)v);
  a.name = name;
  bool defined = a.h != NULL;
  if (defined && stl_abi.is_defined && stl_abi.is_defined(a.h, &defined)) defined = false;
  if (!defined) fail(o, "argument '%s' is None; expected a tensor", name);
  check(o, stl_abi.get_device_type(a.h, &a.dev), "get_device_type");
  check(o, stl_abi.get_dtype(a.h, &a.dtype), "get_dtype");
  check(o, stl_abi.get_dim(a.h, &a.dim), "get_dim");
  check(o, stl_abi.get_sizes(a.h, &a.sizes), "get_sizes");
  check(o, stl_abi.get_strides(a.h, &a.strides), "get_strides");
  check(o, stl_abi.get_data_ptr(a.h, &a.data), "get_data_ptr");
  a.numel = 1;
  for (int64_t i = 0; i < a.dim; i++) a.numel *= a.sizes[i];
  if (a.dev != stl_abi.device_type_cpu())
    fail(o, "argument '%s' is not on the CPU: the product-cache decode step has a CPU kernel only", name);
  if (a.numel > 0) {
    int64_t s = 1;
    for (int64_t i = a.dim - 1; i >= 0; i--) {
      if (a.sizes[i] != 1 && a.strides[i] != s)
        fail(o, "argument '%s' must be contiguous (call .contiguous() first)", name);
      s *= a.sizes[i];
    }
  }
  return a;
}

static void shape_is(Held *o, const T *a, int ndim, const int64_t *want, const char *meaning) {
  int ok = a->dim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = a->sizes[i] == want[i];
  if (ok) return;
  char got[128];
  size_t k = (size_t)snprintf(got, sizeof got, "(");
  for (int64_t i = 0; i < a->dim && k < sizeof got; i++)
    k += (size_t)snprintf(got + k, sizeof got - k, i ? ", %lld" : "%lld", (long long)a->sizes[i]);
  if (k < sizeof got) snprintf(got + k, sizeof got - k, ")");
  fail(o, "argument '%s' has shape %s; expected %s", a->name, got, meaning);
}

static void same_dtype(Held *o, const T *a, const T *x) {
  if (a->dtype != x->dtype) fail(o, "argument '%s' has a different dtype than 'x'; all float tensors must share one dtype", a->name);
}

static AtenTensorHandle fresh(Held *o, const T *like, int ndim, const int64_t *sizes) {
  int64_t strides[3], s = 1;
  for (int i = ndim - 1; i >= 0; i--) strides[i] = s, s *= sizes[i] > 0 ? sizes[i] : 1;
  AtenTensorHandle h = NULL;
  check(o, stl_abi.empty_strided(ndim, sizes, strides, like->dtype, like->dev, 0, &h), "empty_strided (out of memory?)");
  return hold(o, h);
}

static void *ptr(Held *o, AtenTensorHandle h) {
  void *p = NULL;
  check(o, stl_abi.get_data_ptr(h, &p), "get_data_ptr");
  return p;
}

static int32_t (*dtype_int64)(void);

static void k_step(StableIValue *stack, uint64_t n_in, uint64_t n_out) {
  Held o = {{0}, 0, {NULL, NULL}};
  if (n_in != 10 || n_out != 1) fail(&o, "internal: bad stack (%llu in, %llu out)", (unsigned long long)n_in, (unsigned long long)n_out);
  T x = get(&o, stack[0], "x"), rows = get(&o, stack[1], "rows"), E = get(&o, stack[2], "E"), Wt = get(&o, stack[3], "Wt"),
    D = get(&o, stack[4], "D"), bias = get(&o, stack[5], "bias"), zc = get(&o, stack[6], "zcache"),
    pos = get(&o, stack[7], "pos"), ro = get(&o, stack[9], "rows_out");
  int64_t tile;
  memcpy(&tile, &stack[8], sizeof tile);
  if (tile < 1 || tile > STL_MAX_TILE)
    fail(&o, "argument 'tile' is %lld; expected 1 <= tile <= %d", (long long)tile, STL_MAX_TILE);
  const int t = (int)tile;
  StlDtype dt;
  if (x.dtype == stl_abi.dtype_float32()) dt = STL_F32;
  else if (x.dtype == stl_abi.dtype_float64()) dt = STL_F64;
  else if (x.dtype == stl_abi.dtype_bfloat16()) dt = STL_BF16;
  else if (x.dtype == stl_abi.dtype_float16()) dt = STL_F16;
  else fail(&o, "argument 'x' has a dtype other than float32, float64, bfloat16 or float16");
  if (x.dim != 2) fail(&o, "argument 'x' must be 2-D (B, N): one new token per sequence");
  const int64_t B = x.sizes[0], N = x.sizes[1];
  if (N <= 0 || N % t) fail(&o, "argument 'x' has N=%lld columns; expected a positive multiple of tile=%d", (long long)N, t);
  char m[160];
  if (E.dim != 2 || E.sizes[1] != (int64_t)t * t) {
    snprintf(m, sizeof m, "(rank, tile*tile) = (r, %d)", t * t);
    const int64_t w[2] = {E.dim == 2 ? E.sizes[0] : 1, (int64_t)t * t};
    shape_is(&o, &E, 2, w, m);
  }
  if (E.sizes[0] < 1 || E.sizes[0] > STL_MAX_RANK)
    fail(&o, "argument 'E' has rank %lld; expected 1 <= rank <= %d", (long long)E.sizes[0], STL_MAX_RANK);
  const int64_t r = E.sizes[0], Nt = N / t;
  same_dtype(&o, &E, &x);
  if (Wt.dim != 3 || Wt.sizes[2] < 1) {
    snprintf(m, sizeof m, "(rank, N/tile, P/tile) = (%lld, %lld, P/%d) with P > 0", (long long)r, (long long)Nt, t);
    const int64_t w[3] = {r, Nt, 1};
    shape_is(&o, &Wt, 3, w, m);
  }
  const int64_t Pt = Wt.sizes[2], P = Pt * t;
  const int64_t w_s[3] = {r, Nt, Pt}, r_s[3] = {B, t - 1, N}, d_s[2] = {(int64_t)t * t, r}, z_s[3] = {B, r, Pt},
                b_s[1] = {P}, p_s[1] = {B};
  snprintf(m, sizeof m, "(rank, N/tile, P/tile) = (%lld, %lld, P/%d)", (long long)r, (long long)Nt, t);
  shape_is(&o, &Wt, 3, w_s, m);
  same_dtype(&o, &Wt, &x);
  snprintf(m, sizeof m, "(B, tile-1, N) = (%lld, %d, %lld), the last tile-1 inputs of each sequence", (long long)B, t - 1,
           (long long)N);
  shape_is(&o, &rows, 3, r_s, m);
  same_dtype(&o, &rows, &x);
  snprintf(m, sizeof m, "(tile*tile, rank) = (%d, %lld)", t * t, (long long)r);
  shape_is(&o, &D, 2, d_s, m);
  same_dtype(&o, &D, &x);
  if (bias.numel != 0) {
    snprintf(m, sizeof m, "(P,) = (%lld,), or an empty tensor for no bias", (long long)P);
    shape_is(&o, &bias, 1, b_s, m);
    same_dtype(&o, &bias, &x);
  }
  snprintf(m, sizeof m, "(B, rank, P/tile) = (%lld, %lld, %lld), the product cache", (long long)B, (long long)r, (long long)Pt);
  shape_is(&o, &zc, 3, z_s, m);
  same_dtype(&o, &zc, &x);
  snprintf(m, sizeof m, "(B,) = (%lld,), each sequence's row in its tile", (long long)B);
  shape_is(&o, &pos, 1, p_s, m);
  if (!dtype_int64 || pos.dtype != dtype_int64()) fail(&o, "argument 'pos' must be an int64 tensor");
  const int64_t *pv = (const int64_t *)pos.data;
  for (int64_t b = 0; b < B; b++)
    if (pv[b] < 0 || pv[b] >= t)
      fail(&o, "argument 'pos' holds %lld at index %lld; expected 0 <= pos < tile=%d", (long long)pv[b], (long long)b, t);

  if (ro.numel != 0) {
    shape_is(&o, &ro, 3, r_s, "(B, tile-1, N) like 'rows', or an empty tensor for none");
    same_dtype(&o, &ro, &x);
  }

  const int64_t y_s[2] = {B, P};
  AtenTensorHandle y = fresh(&o, &x, 2, y_s);
  const char *err = stl_step(dt, x.data, rows.data, ro.numel ? ro.data : NULL, E.data, Wt.data, D.data,
                             bias.numel ? bias.data : NULL, zc.data, pv, B, N, P, t, r, ptr(&o, y));
  if (err) fail(&o, "%s", err);
  let_go(&o, y);
  free_held(&o);
  stack[0] = (StableIValue)(uintptr_t)y;
}

static TorchLibraryHandle lib_frag, lib_impl;

const char *stl_register_decode_step(void) {
  void *lib = dlopen("libtorch_cpu.so", RTLD_NOW | RTLD_NOLOAD);
  AOTITorchError (*init_fragment)(const char *, const char *, uint32_t, TorchLibraryHandle *) = NULL;
  if (lib) {
    *(void **)(&init_fragment) = dlsym(lib, "aoti_torch_library_init_fragment");
    *(void **)(&dtype_int64) = dlsym(lib, "aoti_torch_dtype_int64");
  }
  if (!init_fragment || !dtype_int64) return "stl_torch: this torch lacks aoti_torch_library_init_fragment or aoti_torch_dtype_int64";
  if (init_fragment("stl_torch", __FILE__, __LINE__, &lib_frag) ||
      stl_abi.library_def(lib_frag, "stl_decode_step(Tensor x, Tensor rows, Tensor E, Tensor Wt, Tensor D, Tensor bias, "
                                    "Tensor(a!) zcache, Tensor pos, int tile, Tensor(b!) rows_out) -> Tensor"))
    return "stl_torch: could not define stl_decode_step";
  if (stl_abi.library_init_impl("stl_torch", "CPU", __FILE__, __LINE__, &lib_impl) ||
      stl_abi.library_impl(lib_impl, "stl_decode_step", k_step))
    return "stl_torch: could not register the CPU kernel of stl_decode_step";
  return NULL;
}
