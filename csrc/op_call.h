/* The call-scoped machinery of the boxed C ops (ops.c, decode_step.c): one struct owning every
 * tensor handle and workspace of a call, the argument accessor and the shared checks.
 *
 * Why one owner: a boxed C kernel cannot throw across frames it owns. It reports bad input through
 * stl_throw (error.cpp), a C++ exception that unwinds through the C frames without running any
 * cleanup in them, so everything the call holds (input and output handles, temporaries, its CPU
 * workspace, malloc'd buffers) lives in one StlCall, and stl_call_fail frees it all before raising. */
#ifndef STL_OP_CALL_H
#define STL_OP_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stl.h"
#include "torch_abi.h"

void stl_throw(const char *msg) __attribute__((noreturn));

#define STL_CALL_MAX_HANDLES 32

typedef struct {
  const char *op;                          /* prefixes every error message: "<op>: ..." */
  AtenTensorHandle h[STL_CALL_MAX_HANDLES]; /* owned handles, freed by stl_call_free */
  int n;
  void *ws;      /* the CPU workspace (stl_cpu_workspace_acquire), or NULL */
  int ws_token;
  void *mem[2];  /* malloc'd buffers, or NULL */
} StlCall;

/* Takes ownership of h (NULL passes through); returns h. */
AtenTensorHandle stl_call_own(StlCall *c, AtenTensorHandle h);
/* Frees one owned handle now (a temporary). */
void stl_call_drop(StlCall *c, AtenTensorHandle h);
/* Gives up ownership of h (an output, handed to the caller). */
void stl_call_release(StlCall *c, AtenTensorHandle h);
/* Frees everything the call owns. */
void stl_call_free(StlCall *c);
/* Frees everything, then raises "<op>: <message>". */
void stl_call_fail(StlCall *c, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
void stl_call_check(StlCall *c, AOTITorchError err, const char *what);

/* A tensor argument: its handle (owned by the call) and metadata. */
typedef struct {
  AtenTensorHandle h;
  const char *name;
  int32_t dtype, dev_type, dev_index;
  int64_t dim, *sizes, *strides, numel;
  void *data;
} StlArg;

/* Reads argument `name` from the stack slot v and owns its handle. A None (undefined tensor) fails
 * with "argument 'name' is None; expected a tensor", plus, with empty_means_none, the hint that an
 * empty tensor stands for 'no name'. */
StlArg stl_call_arg(StlCall *c, StableIValue v, const char *name, bool empty_means_none);

/* The StlDtype of a torch dtype; false when it has none (each op words that error itself). */
bool stl_call_dtype(int32_t torch_dtype, StlDtype *out);
const char *stl_call_dtype_name(int32_t torch_dtype);

void stl_call_fmt_shape(const StlArg *a, char *buf, size_t n);
/* Expects `a` to have exactly the given sizes (ndim entries, -1 = any). */
void stl_call_expect_shape(StlCall *c, const StlArg *a, int ndim, const int64_t *want, const char *meaning);
void stl_call_expect_contiguous(StlCall *c, const StlArg *a);

/* A new contiguous tensor (ndim <= 4) with like's dtype and device, owned by the call; `what` names
 * the failure. */
AtenTensorHandle stl_call_new_tensor(StlCall *c, const StlArg *like, int ndim, const int64_t *sizes, const char *what);
void *stl_call_data(StlCall *c, AtenTensorHandle h);

#endif
