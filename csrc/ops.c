/* torch.ops.stl_torch.*: schemas, argument checks, allocation (outputs and workspace, through
 * torch), device dispatch to a backend (StlBackend, stl.h) and the host services it is lent
 * (StlHost: the batched GEMM through torch's dispatcher, errors), talking to torch only through
 * its stable C ABI (torch_abi.h). Kernels are boxed: inputs arrive on the stack as owning handles,
 * outputs leave as owning handles. A boxed C kernel reports bad input by freeing every handle it
 * owns and then calling stl_throw (error.cpp). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "op_call.h"

/* Each call's handles and CPU workspace live in one StlCall (op_call.h), freed before any error. */

static StlArg arg(StlCall *o, StableIValue v, const char *name) { return stl_call_arg(o, v, name, true); }

static StlDtype stl_dtype(StlCall *o, const StlArg *a) {
  StlDtype dt;
  if (!stl_call_dtype(a->dtype, &dt))
    stl_call_fail(o, "argument '%s' has dtype %s; expected float32, float64, bfloat16 or float16", a->name,
                  stl_call_dtype_name(a->dtype));
  return dt;
}

static void expect_like(StlCall *o, const StlArg *a, const StlArg *ref) {
  if (a->dtype != ref->dtype)
    stl_call_fail(o, "argument '%s' has dtype %s but '%s' has dtype %s; all tensors must share one dtype",
                  a->name, stl_call_dtype_name(a->dtype), ref->name, stl_call_dtype_name(ref->dtype));
  if (a->dev_type != ref->dev_type || a->dev_index != ref->dev_index)
    stl_call_fail(o, "argument '%s' is on a different device than '%s'", a->name, ref->name);
  stl_call_expect_contiguous(o, a);
}

static AtenTensorHandle new_tensor(StlCall *o, const StlArg *like, int ndim, const int64_t *sizes) {
  return stl_call_new_tensor(o, like, ndim, sizes, "empty_strided (could not allocate a result; out of memory?)");
}

/* Scratch memory for a backend: on the CPU, its cached workspace (no fresh pages per call);
 * elsewhere a float64 tensor on x's device, so it comes from torch's (caching) allocator and is
 * ordered on torch's stream like every other temporary. Freed with the op's other handles, on
 * errors too. NULL when the backend needs none. */
typedef struct {
  void *p;
  size_t bytes;
} Scratch;

static Scratch scratch(StlCall *o, const StlArg *x, size_t bytes) {
  Scratch s = {NULL, 0};
  if (bytes == 0) return s;
  if (bytes == SIZE_MAX || bytes > (size_t)INT64_MAX - 64)
    stl_call_fail(o, "the operands are too large: the call would need more than 2^63 bytes of workspace");
  if (x->dev_type == stl_abi.device_type_cpu()) {
    if (o->ws) stl_call_fail(o, "internal: a second workspace in one call");
    o->ws = stl_cpu_workspace_acquire(bytes, &o->ws_token);
    if (!o->ws) stl_call_fail(o, "out of memory: could not allocate %zu bytes of workspace", bytes);
    s.p = o->ws;
    s.bytes = bytes;
    return s;
  }
  const int64_t n = (int64_t)((bytes + 7) / 8), stride = 1;
  AtenTensorHandle h = NULL;
  stl_call_check(o, stl_abi.empty_strided(1, &n, &stride, stl_abi.dtype_float64(), x->dev_type, x->dev_index, &h),
        "empty_strided (workspace; out of memory?)");
  stl_call_own(o, h);
  s.p = stl_call_data(o, h);
  s.bytes = (size_t)n * 8;
  return s;
}

/* ---------------------------------------------------------------------------- host services */
/* What a backend may ask of torch during a call (StlHost, stl.h). */
typedef struct {
  StlCall *o;
  int32_t dev_type, dev_index;
  AOTITorchError (*bmm_out)(AtenTensorHandle, AtenTensorHandle, AtenTensorHandle);
} Call;

static void host_error(const StlHost *h, const char *msg) __attribute__((noreturn));
static void host_error(const StlHost *h, const char *msg) {
  stl_call_free(((const Call *)h->call)->o);
  stl_throw(msg);
}

static int32_t torch_dtype(StlDtype dt) {
  return dt == STL_F64 ? stl_abi.dtype_float64() : dt == STL_BF16 ? stl_abi.dtype_bfloat16()
         : dt == STL_F16 ? stl_abi.dtype_float16() : stl_abi.dtype_float32();
}

static AtenTensorHandle blob(const Call *c, StlDtype dt, StlMat m, int64_t s0, int64_t s1, int64_t s2) {
  const int64_t sz[3] = {s0, s1, s2}, st[3] = {m.s0, m.s1, m.s2};
  AtenTensorHandle h = NULL;
  if (stl_abi.create_tensor_from_blob((void *)m.p, 3, sz, st, 0, torch_dtype(dt), c->dev_type, c->dev_index, &h))
    return NULL;
  return h;
}

typedef struct {
  StlMat a, b;          /* the operands as given */
  uint16_t *pa, *pb;    /* their padded copies: r*m rows of k2, then r*k2 rows of n */
  int64_t m, n, k0, k2, na; /* na = r*m: the rows of the copy of A */
} PadJob;

/* rows [i0, i1) of the padded copies: A's rows first, then B's */
static void pad_rows(int64_t i0, int64_t i1, void *ctx) {
  const PadJob *p = (const PadJob *)ctx;
  const uint16_t *sa = (const uint16_t *)p->a.p, *sb = (const uint16_t *)p->b.p;
  for (int64_t i = i0; i < i1; i++) {
    if (i < p->na) {
      const int64_t q = i / p->m, row = i % p->m;
      uint16_t *d = p->pa + i * p->k2;
      memcpy(d, sa + q * p->a.s0 + row * p->a.s1, (size_t)p->k0 * sizeof(uint16_t));
      memset(d + p->k0, 0, (size_t)(p->k2 - p->k0) * sizeof(uint16_t));
    } else {
      const int64_t ib = i - p->na, q = ib / p->k2, kk = ib % p->k2;
      uint16_t *d = p->pb + ib * p->n;
      if (kk >= p->k0) memset(d, 0, (size_t)p->n * sizeof(uint16_t));
      else if (p->b.s2 == 1) memcpy(d, sb + q * p->b.s0 + kk * p->b.s1, (size_t)p->n * sizeof(uint16_t));
      else
        for (int64_t j = 0; j < p->n; j++) d[j] = sb[q * p->b.s0 + kk * p->b.s1 + j * p->b.s2];
    }
  }
}

/* torch's CPU bfloat16 GEMM (oneDNN, on an AMX Xeon at least) carries an inf or NaN of one row of A
 * into the previous row of C when its inner dimension k is above 32 and not a multiple of 32
 * (measured: every k in 33..41 and 65..73 at some column, k = 68, 76, 80, 88, ... at column 0;
 * never a multiple of 32; zero-filled padding of the row stride alone does not help); dense
 * F.linear with such in_features alike. Where A is row-major its rows are tile-rows of the input
 * (the forward's Xe, dX's Gz): one token's NaN must not reach another token's or another
 * sample's output, so k is padded there to a multiple of 32, with zero columns of A and zero rows
 * of B, in copies. dWt's A (Xe transposed, rows = features, summed over all tokens anyway) is left
 * as it is. Returns the copies' memory (to free after the GEMM), NULL when no padding is needed;
 * a, b and k are updated. */
static void *pad_k(const StlHost *h, StlDtype dt, int64_t r, int64_t m, int64_t n, int64_t *k, StlMat *a,
                   StlMat *b) {
  const Call *cl = (const Call *)h->call;
  if (dt != STL_BF16 || *k <= 32 || !(*k % 32) || a->s2 != 1 || cl->dev_type != stl_abi.device_type_cpu())
    return NULL;
  const int64_t k0 = *k, k2 = (k0 + 31) / 32 * 32;
  const double elems = (double)r * (double)k2 * (double)(m + n);
  if (elems > (double)(INT64_MAX / 4)) host_error(h, "stl_torch: the operands are too large for the padded GEMM");
  uint16_t *pa = (uint16_t *)malloc((size_t)(r * k2 * (m + n)) * sizeof(uint16_t));
  if (!pa) host_error(h, "stl_torch: out of memory (the padded bfloat16 GEMM's operands)");
  PadJob job = {*a, *b, pa, pa + r * m * k2, m, n, k0, k2, r * m};
  const int64_t rows = r * m + r * k2, per = k2 > n ? k2 : n;
  h->parallel_for(rows, per >= 4096 ? 1 : 4096 / per + 1, pad_rows, &job);
  *a = (StlMat){pa, m * k2, k2, 1};
  *b = (StlMat){job.pb, k2 * n, n, 1};
  *k = k2;
  return pa;
}

/* The r GEMMs through torch's own bmm (its BLAS / cuBLAS, on torch's stream), on views of the
 * backend's memory made and dropped per call. */
static void host_gemm(const StlHost *h, StlDtype dt, int64_t r, int64_t m, int64_t n, int64_t k, StlMat a, StlMat b,
                      StlMat c, int accumulate) {
  if (m == 0 || n == 0) return;
  const Call *cl = (const Call *)h->call;
  void *padded = pad_k(h, dt, r, m, n, &k, &a, &b);
  AtenTensorHandle ha = blob(cl, dt, a, r, m, k), hb = blob(cl, dt, b, r, k, n), hc = blob(cl, dt, c, r, m, n);
  AOTITorchError err = !ha || !hb || !hc || (accumulate && !h->gemm_accumulates);
  if (!err) {
    if (accumulate)
      err = stl_abi.cpu_baddbmm_out(hc, hc, ha, hb, 1.0, 1.0);
    else
      err = cl->bmm_out(hc, ha, hb);
  }
  if (ha) stl_abi.delete_tensor_object(ha);
  if (hb) stl_abi.delete_tensor_object(hb);
  if (hc) stl_abi.delete_tensor_object(hc);
  free(padded);
  if (err) host_error(h, "stl_torch: torch's batched GEMM (bmm_out/baddbmm_out) failed");
}

/* Shapes shared by forward and backward, checked once, and the device they run on. */
typedef struct {
  int64_t M, N, P, Mt, Nt, Pt;
  int t, r;
  StlDtype dt;
  const StlBackend *be, *composed; /* the product backend and the plain composition (stl_forward_unfused) */
  Call call;
  StlHost host;
} Dims;

static void pick_backend(StlCall *o, const StlArg *x, Dims *d) {
  d->call = (Call){o, x->dev_type, x->dev_index, NULL};
  d->host = (StlHost){host_gemm, stl_parallel_for, stl_num_threads, host_error, 0, NULL, NULL};
  if (x->dev_type == stl_abi.device_type_cpu()) {
    d->be = &stl_cpu_backend;
    d->composed = &stl_cpu_composed;
    d->call.bmm_out = stl_abi.cpu_bmm_out;
    d->host.gemm_accumulates = stl_abi.cpu_baddbmm_out != NULL;
    d->dt = stl_dtype(o, x);
    return;
  }
#ifdef STL_WITH_CUDA
  if (x->dev_type == stl_abi.device_type_cuda() && stl_abi.cuda_bmm_out && stl_abi.get_current_cuda_stream) {
    d->be = &stl_cuda_backend;
    d->composed = &stl_cuda_composed;
    d->call.bmm_out = stl_abi.cuda_bmm_out;
    stl_call_check(o, stl_abi.get_current_cuda_stream(x->dev_index, &d->host.stream), "get_current_cuda_stream");
    d->dt = stl_dtype(o, x);
    return;
  }
#endif
  stl_call_fail(o, "argument '%s' is on a device this build of stl_torch has no kernels for (built with CPU%s)",
       x->name,
#ifdef STL_WITH_CUDA
       " and CUDA"
#else
       " only"
#endif
  );
}

/* Fills *dp (the host's call state points into it, so it must not move) */
static void check_operands(StlCall *o, const StlArg *x, const StlArg *E, const StlArg *Wt, const StlArg *D, int64_t tile,
                           Dims *dp) {
  Dims d = {0};
  if (tile < 1 || tile > STL_MAX_TILE)
    stl_call_fail(o, "argument 'tile' is %lld; expected 1 <= tile <= %d", (long long)tile, STL_MAX_TILE);
  d.t = (int)tile;
  pick_backend(o, x, &d);
  if (x->dim != 2) {
    char got[128];
    stl_call_fmt_shape(x, got, sizeof got);
    stl_call_fail(o, "argument '%s' has shape %s; expected a 2-D (M, N) tensor", x->name, got);
  }
  stl_call_expect_contiguous(o, x);
  d.M = x->sizes[0];
  d.N = x->sizes[1];
  if (d.N <= 0 || d.N % d.t)
    stl_call_fail(o, "argument '%s' has N=%lld columns; expected a positive multiple of tile=%d", x->name,
         (long long)d.N, d.t);
  if (E->dim != 2 || E->sizes[1] != (int64_t)d.t * d.t) {
    char got[128];
    stl_call_fmt_shape(E, got, sizeof got);
    stl_call_fail(o, "argument 'E' has shape %s; expected (rank, tile*tile) = (r, %d)", got, d.t * d.t);
  }
  if (E->sizes[0] < 1) stl_call_fail(o, "argument 'E' has rank 0; expected at least one product");
  if (E->sizes[0] > STL_MAX_RANK)
    stl_call_fail(o, "argument 'E' has rank %lld; expected at most %d products", (long long)E->sizes[0], STL_MAX_RANK);
  d.r = (int)E->sizes[0];
  expect_like(o, E, x);
  const int64_t wd[3] = {d.r, d.N / d.t, -1};
  char m[160];
  snprintf(m, sizeof m, "(rank, N/tile, P/tile) = (%d, %lld, P/%d)", d.r, (long long)(d.N / d.t), d.t);
  stl_call_expect_shape(o, Wt, 3, wd, m);
  expect_like(o, Wt, x);
  d.Pt = Wt->sizes[2];
  if (d.Pt <= 0) stl_call_fail(o, "argument 'Wt' has P/tile=0 output tiles; expected at least one");
  d.P = d.Pt * d.t;
  d.Nt = d.N / d.t;
  d.Mt = (d.M + d.t - 1) / d.t;
  const int64_t dd[2] = {(int64_t)d.t * d.t, d.r};
  snprintf(m, sizeof m, "(tile*tile, rank) = (%d, %d)", d.t * d.t, d.r);
  stl_call_expect_shape(o, D, 2, dd, m);
  expect_like(o, D, x);
  *dp = d;
  dp->host.call = &dp->call;
}

static void check_z_like(StlCall *o, const StlArg *z, const StlArg *x, const Dims *d, const char *meaning) {
  if (z->numel == 0) return; /* "absent" */
  const int64_t zd[3] = {d->r, d->Mt, d->Pt};
  char m[160];
  snprintf(m, sizeof m, "(rank, ceil(M/tile), P/tile) = (%d, %lld, %lld) %s", d->r, (long long)d->Mt,
           (long long)d->Pt, meaning);
  stl_call_expect_shape(o, z, 3, zd, m);
  expect_like(o, z, x);
}

/* stl_forward(x, E, Wt, D, bias, tile, need_z) -> (y, z) through the device's backend; with
 * `composed` (stl_forward_unfused, a test/dev op) through the plain composition of its primitives,
 * encode -> batched GEMM -> decode: the cross-check and benchmark baseline of a fused kernel. */
static void forward_impl(StableIValue *stack, uint64_t n_in, uint64_t n_out, const char *name, bool composed) {
  StlCall o = {.op = name};
  if (n_in != 7 || n_out != 2) stl_call_fail(&o, "internal: bad stack (%llu in, %llu out)", (unsigned long long)n_in,
                                    (unsigned long long)n_out);
  StlArg x = arg(&o, stack[0], "x"), E = arg(&o, stack[1], "E"), Wt = arg(&o, stack[2], "Wt"),
      D = arg(&o, stack[3], "D"), b = arg(&o, stack[4], "bias");
  int64_t tile;
  memcpy(&tile, &stack[5], sizeof tile);
  const bool need_z = (stack[6] & 0xff) != 0;
  Dims d;
  check_operands(&o, &x, &E, &Wt, &D, tile, &d);
  if (b.numel != 0) {
    const int64_t bd[1] = {d.P};
    char m[96];
    snprintf(m, sizeof m, "(P,) = (%lld,), or an empty tensor for no bias", (long long)d.P);
    stl_call_expect_shape(&o, &b, 1, bd, m);
    expect_like(&o, &b, &x);
  }
  const int64_t z_s[3] = {d.r, d.Mt, d.Pt}, y_s[2] = {d.M, d.P};
  const int64_t empty_s[1] = {0};
  AtenTensorHandle y = new_tensor(&o, &x, 2, y_s);
  AtenTensorHandle z = need_z ? new_tensor(&o, &x, 3, z_s) : new_tensor(&o, &x, 1, empty_s);
  if (d.M > 0) {
    StlForward f = {d.dt, d.M, d.N, d.P, d.t, d.r, x.data, {E.data, d.t * d.t, 1}, Wt.data, {D.data, d.r, 1},
                    b.numel ? b.data : NULL, stl_call_data(&o, y), need_z ? stl_call_data(&o, z) : NULL};
    const StlBackend *be = composed ? d.composed : d.be;
    const Scratch ws = scratch(&o, &x, be->forward_ws_bytes(&f, &d.host));
    be->forward(&f, ws.p, ws.bytes, &d.host);
  }
  stl_call_release(&o, y);
  stl_call_release(&o, z);
  stl_call_free(&o); /* inputs and temporaries */
  stack[0] = (StableIValue)(uintptr_t)y;
  stack[1] = (StableIValue)(uintptr_t)z;
}

static void k_forward(StableIValue *stack, uint64_t n_in, uint64_t n_out) {
  forward_impl(stack, n_in, n_out, "stl_forward", false);
}
static void k_forward_unfused(StableIValue *stack, uint64_t n_in, uint64_t n_out) {
  forward_impl(stack, n_in, n_out, "stl_forward_unfused", true);
}

/* stl_backward(grad_y, grad_z, x, E, Wt, D, z, has_bias, tile) -> (dx, dE, dWt, dD, db) */
static void k_backward(StableIValue *stack, uint64_t n_in, uint64_t n_out) {
  StlCall o = {.op = "stl_backward"};
  if (n_in != 9 || n_out != 5) stl_call_fail(&o, "internal: bad stack (%llu in, %llu out)", (unsigned long long)n_in,
                                    (unsigned long long)n_out);
  StlArg g = arg(&o, stack[0], "grad_y"), gz = arg(&o, stack[1], "grad_z"), x = arg(&o, stack[2], "x"),
      E = arg(&o, stack[3], "E"), Wt = arg(&o, stack[4], "Wt"), D = arg(&o, stack[5], "D"),
      zs = arg(&o, stack[6], "z");
  const bool has_bias = (stack[7] & 0xff) != 0;
  int64_t tile;
  memcpy(&tile, &stack[8], sizeof tile);
  Dims d;
  check_operands(&o, &x, &E, &Wt, &D, tile, &d);
  const int64_t gd[2] = {d.M, d.P};
  char m[96];
  snprintf(m, sizeof m, "(M, P) = (%lld, %lld), the shape of y", (long long)d.M, (long long)d.P);
  stl_call_expect_shape(&o, &g, 2, gd, m);
  expect_like(&o, &g, &x);
  check_z_like(&o, &gz, &x, &d, "or an empty tensor");
  check_z_like(&o, &zs, &x, &d, "or an empty tensor to recompute it");

  const int t2 = d.t * d.t;
  const int64_t x_s[2] = {d.M, d.N};
  const int64_t e_s[2] = {d.r, t2}, d_s[2] = {t2, d.r}, w_s[3] = {d.r, d.Nt, d.Pt};
  const int64_t b_s[1] = {has_bias ? d.P : 0};
  AtenTensorHandle dx = new_tensor(&o, &x, 2, x_s), dE = new_tensor(&o, &x, 2, e_s),
                   dWt = new_tensor(&o, &x, 3, w_s), dD = new_tensor(&o, &x, 2, d_s),
                   db = new_tensor(&o, &x, 1, b_s);
  if (d.M == 0) {
    stl_call_check(&o, stl_abi.zero_(dE), "zero_");
    stl_call_check(&o, stl_abi.zero_(dWt), "zero_");
    stl_call_check(&o, stl_abi.zero_(dD), "zero_");
    if (has_bias) stl_call_check(&o, stl_abi.zero_(db), "zero_");
  } else {
    StlBackward bw = {d.dt, d.M, d.N, d.P, d.t, d.r, g.data, gz.numel ? gz.data : NULL, x.data, {E.data, t2, 1},
                      Wt.data, {D.data, d.r, 1}, zs.numel ? zs.data : NULL, stl_call_data(&o, dx),
                      stl_call_data(&o, dE), stl_call_data(&o, dWt), stl_call_data(&o, dD), has_bias ? stl_call_data(&o, db) : NULL};
    const Scratch ws = scratch(&o, &x, d.be->backward_ws_bytes(&bw, &d.host));
    d.be->backward(&bw, ws.p, ws.bytes, &d.host);
  }
  AtenTensorHandle outs[5] = {dx, dE, dWt, dD, db};
  for (int i = 0; i < 5; i++) stl_call_release(&o, outs[i]);
  stl_call_free(&o);
  for (int i = 0; i < 5; i++) stack[i] = (StableIValue)(uintptr_t)outs[i];
}

static TorchLibraryHandle lib_def, lib_cpu;
#ifdef STL_WITH_CUDA
static TorchLibraryHandle lib_cuda;
#endif

const char *stl_register_ops(void) {
  if (stl_abi.library_init_def("stl_torch", __FILE__, __LINE__, &lib_def))
    return "stl_torch: could not create the op library (is another copy of stl_torch loaded?)";
  if (stl_abi.library_def(lib_def,
                          "stl_forward(Tensor x, Tensor E, Tensor Wt, Tensor D, Tensor bias, int tile, "
                          "bool need_z) -> (Tensor, Tensor)") ||
      stl_abi.library_def(lib_def,
                          "stl_forward_unfused(Tensor x, Tensor E, Tensor Wt, Tensor D, Tensor bias, int tile, "
                          "bool need_z) -> (Tensor, Tensor)") ||
      stl_abi.library_def(lib_def,
                          "stl_backward(Tensor grad_y, Tensor grad_z, Tensor x, Tensor E, Tensor Wt, "
                          "Tensor D, Tensor z, bool has_bias, int tile) -> (Tensor, Tensor, Tensor, "
                          "Tensor, Tensor)"))
    return "stl_torch: could not define the op schemas";
  if (stl_abi.library_init_impl("stl_torch", "CPU", __FILE__, __LINE__, &lib_cpu) ||
      stl_abi.library_impl(lib_cpu, "stl_forward", k_forward) ||
      stl_abi.library_impl(lib_cpu, "stl_forward_unfused", k_forward_unfused) ||
      stl_abi.library_impl(lib_cpu, "stl_backward", k_backward))
    return "stl_torch: could not register the CPU kernels";
#ifdef STL_WITH_CUDA
  /* the same boxed kernels: pick_backend routes CUDA tensors to csrc/cuda/backend.c */
  if (stl_abi.cuda_bmm_out && stl_abi.get_current_cuda_stream &&
      (stl_abi.library_init_impl("stl_torch", "CUDA", __FILE__, __LINE__, &lib_cuda) ||
       stl_abi.library_impl(lib_cuda, "stl_forward", k_forward) ||
       stl_abi.library_impl(lib_cuda, "stl_forward_unfused", k_forward_unfused) ||
       stl_abi.library_impl(lib_cuda, "stl_backward", k_backward)))
    return "stl_torch: could not register the CUDA kernels";
#endif
  return NULL;
}
