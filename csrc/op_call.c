/* The call-scoped machinery of the boxed C ops (see op_call.h for why one struct owns it all). */
#include "op_call.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

AtenTensorHandle stl_call_own(StlCall *c, AtenTensorHandle h) {
  if (h && c->n < STL_CALL_MAX_HANDLES) c->h[c->n++] = h;
  return h;
}

static int find(const StlCall *c, AtenTensorHandle h) {
  for (int i = 0; i < c->n; i++)
    if (c->h[i] == h) return i;
  return -1;
}

void stl_call_drop(StlCall *c, AtenTensorHandle h) {
  const int i = find(c, h);
  if (i < 0) return;
  stl_abi.delete_tensor_object(h);
  c->h[i] = c->h[--c->n];
}

void stl_call_release(StlCall *c, AtenTensorHandle h) {
  const int i = find(c, h);
  if (i >= 0) c->h[i] = c->h[--c->n];
}

void stl_call_free(StlCall *c) {
  for (int i = 0; i < c->n; i++) stl_abi.delete_tensor_object(c->h[i]);
  c->n = 0;
  if (c->ws) stl_cpu_workspace_release(c->ws, c->ws_token);
  c->ws = NULL;
  for (int i = 0; i < 2; i++) free(c->mem[i]), c->mem[i] = NULL;
}

void stl_call_fail(StlCall *c, const char *fmt, ...) {
  char msg[512];
  int k = snprintf(msg, sizeof msg, "%s: ", c->op);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
  va_end(ap);
  stl_call_free(c);
  stl_throw(msg);
}

void stl_call_check(StlCall *c, AOTITorchError err, const char *what) {
  if (err) stl_call_fail(c, "torch C ABI call failed: %s", what);
}

StlArg stl_call_arg(StlCall *c, StableIValue v, const char *name, bool empty_means_none) {
  StlArg a = {0};
  a.h = stl_call_own(c, (AtenTensorHandle)(uintptr_t)v);
  a.name = name;
  bool defined = a.h != NULL;
  if (defined && stl_abi.is_defined && stl_abi.is_defined(a.h, &defined)) defined = false;
  if (empty_means_none) {
    if (!defined || stl_abi.get_device_type(a.h, &a.dev_type)) /* None arrives as an undefined tensor */
      stl_call_fail(c, "argument '%s' is None; expected a tensor (an empty tensor stands for 'no %s')", name, name);
  } else {
    if (!defined) stl_call_fail(c, "argument '%s' is None; expected a tensor", name);
    stl_call_check(c, stl_abi.get_device_type(a.h, &a.dev_type), "get_device_type");
  }
  stl_call_check(c, stl_abi.get_dtype(a.h, &a.dtype), "get_dtype");
  stl_call_check(c, stl_abi.get_device_index(a.h, &a.dev_index), "get_device_index");
  stl_call_check(c, stl_abi.get_dim(a.h, &a.dim), "get_dim");
  stl_call_check(c, stl_abi.get_sizes(a.h, &a.sizes), "get_sizes");
  stl_call_check(c, stl_abi.get_strides(a.h, &a.strides), "get_strides");
  stl_call_check(c, stl_abi.get_data_ptr(a.h, &a.data), "get_data_ptr");
  a.numel = 1;
  for (int64_t i = 0; i < a.dim; i++)
    if (__builtin_mul_overflow(a.numel, a.sizes[i], &a.numel))
      stl_call_fail(c, "argument '%s' has too many elements", name);
  return a;
}

bool stl_call_dtype(int32_t d, StlDtype *out) {
  if (d == stl_abi.dtype_float32()) *out = STL_F32;
  else if (d == stl_abi.dtype_float64()) *out = STL_F64;
  else if (d == stl_abi.dtype_bfloat16()) *out = STL_BF16;
  else if (d == stl_abi.dtype_float16()) *out = STL_F16;
  else return false;
  return true;
}

const char *stl_call_dtype_name(int32_t d) {
  if (d == stl_abi.dtype_float32()) return "float32";
  if (d == stl_abi.dtype_float64()) return "float64";
  if (d == stl_abi.dtype_bfloat16()) return "bfloat16";
  if (d == stl_abi.dtype_float16()) return "float16";
  for (int i = 0; i < STL_ABI_OTHER_DTYPES; i++)
    if (stl_abi.other_dtypes[i].get && d == stl_abi.other_dtypes[i].get()) return stl_abi.other_dtypes[i].name;
  return "an unsupported dtype";
}

void stl_call_fmt_shape(const StlArg *a, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "(");
  for (int64_t i = 0; i < a->dim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)a->sizes[i]);
  if (k < n) snprintf(buf + k, n - k, ")");
}

void stl_call_expect_shape(StlCall *c, const StlArg *a, int ndim, const int64_t *want, const char *meaning) {
  int ok = a->dim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || a->sizes[i] == want[i];
  if (ok) return;
  char got[128];
  stl_call_fmt_shape(a, got, sizeof got);
  stl_call_fail(c, "argument '%s' has shape %s; expected %s", a->name, got, meaning);
}

void stl_call_expect_contiguous(StlCall *c, const StlArg *a) {
  if (a->numel == 0) return; /* torch calls every empty tensor contiguous, whatever its strides */
  int64_t s = 1;
  for (int64_t i = a->dim - 1; i >= 0; i--) {
    if (a->sizes[i] != 1 && a->strides[i] != s)
      stl_call_fail(c, "argument '%s' must be contiguous (call .contiguous() first)", a->name);
    s *= a->sizes[i];
  }
}

AtenTensorHandle stl_call_new_tensor(StlCall *c, const StlArg *like, int ndim, const int64_t *sizes, const char *what) {
  int64_t strides[4];
  if (ndim < 0 || ndim > 4) stl_call_fail(c, "internal: a result of %d dimensions", ndim);
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= sizes[i] > 0 ? sizes[i] : 1;
  }
  AtenTensorHandle h = NULL;
  stl_call_check(c, stl_abi.empty_strided(ndim, sizes, strides, like->dtype, like->dev_type, like->dev_index, &h),
                 what);
  return stl_call_own(c, h);
}

void *stl_call_data(StlCall *c, AtenTensorHandle h) {
  void *p = NULL;
  stl_call_check(c, stl_abi.get_data_ptr(h, &p), "get_data_ptr");
  return p;
}
