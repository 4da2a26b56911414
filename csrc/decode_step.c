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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode_step.h"
#include "op_call.h"

#define OP "stl_decode_step"

/* An argument: every one of this op is a CPU tensor, contiguous (checked as it is read). */
static StlArg get(StlCall *o, StableIValue v, const char *name) {
  StlArg a = stl_call_arg(o, v, name, false);
  if (a.dev_type != stl_abi.device_type_cpu())
    stl_call_fail(o, "argument '%s' is not on the CPU: the product-cache decode step has a CPU kernel only", name);
  stl_call_expect_contiguous(o, &a);
  return a;
}

static void same_dtype(StlCall *o, const StlArg *a, const StlArg *x) {
  if (a->dtype != x->dtype)
    stl_call_fail(o, "argument '%s' has a different dtype than 'x'; all float tensors must share one dtype", a->name);
}

static int32_t (*dtype_int64)(void);

static void k_step(StableIValue *stack, uint64_t n_in, uint64_t n_out) {
  StlCall o = {.op = OP};
  if (n_in != 10 || n_out != 1) stl_call_fail(&o, "internal: bad stack (%llu in, %llu out)", (unsigned long long)n_in, (unsigned long long)n_out);
  StlArg x = get(&o, stack[0], "x"), rows = get(&o, stack[1], "rows"), E = get(&o, stack[2], "E"), Wt = get(&o, stack[3], "Wt"),
    D = get(&o, stack[4], "D"), bias = get(&o, stack[5], "bias"), zc = get(&o, stack[6], "zcache"),
    pos = get(&o, stack[7], "pos"), ro = get(&o, stack[9], "rows_out");
  int64_t tile;
  memcpy(&tile, &stack[8], sizeof tile);
  if (tile < 1 || tile > STL_MAX_TILE)
    stl_call_fail(&o, "argument 'tile' is %lld; expected 1 <= tile <= %d", (long long)tile, STL_MAX_TILE);
  const int t = (int)tile;
  StlDtype dt;
  if (!stl_call_dtype(x.dtype, &dt))
    stl_call_fail(&o, "argument 'x' has a dtype other than float32, float64, bfloat16 or float16");
  if (x.dim != 2) stl_call_fail(&o, "argument 'x' must be 2-D (B, N): one new token per sequence");
  const int64_t B = x.sizes[0], N = x.sizes[1];
  if (N <= 0 || N % t) stl_call_fail(&o, "argument 'x' has N=%lld columns; expected a positive multiple of tile=%d", (long long)N, t);
  char m[160];
  if (E.dim != 2 || E.sizes[1] != (int64_t)t * t) {
    snprintf(m, sizeof m, "(rank, tile*tile) = (r, %d)", t * t);
    const int64_t w[2] = {E.dim == 2 ? E.sizes[0] : 1, (int64_t)t * t};
    stl_call_expect_shape(&o, &E, 2, w, m);
  }
  if (E.sizes[0] < 1 || E.sizes[0] > STL_MAX_RANK)
    stl_call_fail(&o, "argument 'E' has rank %lld; expected 1 <= rank <= %d", (long long)E.sizes[0], STL_MAX_RANK);
  const int64_t r = E.sizes[0], Nt = N / t;
  same_dtype(&o, &E, &x);
  if (Wt.dim != 3 || Wt.sizes[2] < 1) {
    snprintf(m, sizeof m, "(rank, N/tile, P/tile) = (%lld, %lld, P/%d) with P > 0", (long long)r, (long long)Nt, t);
    const int64_t w[3] = {r, Nt, 1};
    stl_call_expect_shape(&o, &Wt, 3, w, m);
  }
  const int64_t Pt = Wt.sizes[2], P = Pt * t;
  const int64_t w_s[3] = {r, Nt, Pt}, r_s[3] = {B, t - 1, N}, d_s[2] = {(int64_t)t * t, r}, z_s[3] = {B, r, Pt},
                b_s[1] = {P}, p_s[1] = {B};
  snprintf(m, sizeof m, "(rank, N/tile, P/tile) = (%lld, %lld, P/%d)", (long long)r, (long long)Nt, t);
  stl_call_expect_shape(&o, &Wt, 3, w_s, m);
  same_dtype(&o, &Wt, &x);
  snprintf(m, sizeof m, "(B, tile-1, N) = (%lld, %d, %lld), the last tile-1 inputs of each sequence", (long long)B, t - 1,
           (long long)N);
  stl_call_expect_shape(&o, &rows, 3, r_s, m);
  same_dtype(&o, &rows, &x);
  snprintf(m, sizeof m, "(tile*tile, rank) = (%d, %lld)", t * t, (long long)r);
  stl_call_expect_shape(&o, &D, 2, d_s, m);
  same_dtype(&o, &D, &x);
  if (bias.numel != 0) {
    snprintf(m, sizeof m, "(P,) = (%lld,), or an empty tensor for no bias", (long long)P);
    stl_call_expect_shape(&o, &bias, 1, b_s, m);
    same_dtype(&o, &bias, &x);
  }
  snprintf(m, sizeof m, "(B, rank, P/tile) = (%lld, %lld, %lld), the product cache", (long long)B, (long long)r, (long long)Pt);
  stl_call_expect_shape(&o, &zc, 3, z_s, m);
  same_dtype(&o, &zc, &x);
  snprintf(m, sizeof m, "(B,) = (%lld,), each sequence's row in its tile", (long long)B);
  stl_call_expect_shape(&o, &pos, 1, p_s, m);
  if (!dtype_int64 || pos.dtype != dtype_int64()) stl_call_fail(&o, "argument 'pos' must be an int64 tensor");
  const int64_t *pv = (const int64_t *)pos.data;
  for (int64_t b = 0; b < B; b++)
    if (pv[b] < 0 || pv[b] >= t)
      stl_call_fail(&o, "argument 'pos' holds %lld at index %lld; expected 0 <= pos < tile=%d", (long long)pv[b], (long long)b, t);

  if (ro.numel != 0) {
    stl_call_expect_shape(&o, &ro, 3, r_s, "(B, tile-1, N) like 'rows', or an empty tensor for none");
    same_dtype(&o, &ro, &x);
  }

  const int64_t y_s[2] = {B, P};
  AtenTensorHandle y = stl_call_new_tensor(&o, &x, 2, y_s, "empty_strided (out of memory?)");
  const char *err = stl_step(dt, x.data, rows.data, ro.numel ? ro.data : NULL, E.data, Wt.data, D.data,
                             bias.numel ? bias.data : NULL, zc.data, pv, B, N, P, t, r, stl_call_data(&o, y));
  if (err) stl_call_fail(&o, "%s", err);
  stl_call_release(&o, y);
  stl_call_free(&o);
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
