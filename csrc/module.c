/* stl_torch._C: a CPython extension (limited API, abi3) whose import resolves libtorch's stable
 * C ABI and registers the torch.ops.stl_torch.* kernels. No pybind11, no ATen C++. */
#define Py_LIMITED_API 0x03090000
#include <Python.h>

#include "cpu/primitives.h"
#include "stl.h"
#include "torch_abi.h"
#include "decode_step.h"

const char *stl_register_ops(void);

/* {"cpu": bool[, "cuda": bool]}: which backends run the forward as one fused kernel */
static PyObject *fused_forward_info(void) {
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  if (PyDict_SetItemString(d, "cpu", stl_cpu_backend.fused_forward ? Py_True : Py_False)) goto fail;
#ifdef STL_WITH_CUDA
  if (PyDict_SetItemString(d, "cuda", stl_cuda_backend.fused_forward ? Py_True : Py_False)) goto fail;
#endif
  return d;
fail:
  Py_DECREF(d);
  return NULL;
}

static PyObject *abi_info(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
#ifdef STL_WITH_CUDA
  PyObject *cuda = Py_True;
#else
  PyObject *cuda = Py_False;
#endif
  PyObject *fused = fused_forward_info();
  if (!fused) return NULL;
  return Py_BuildValue("{s:O,s:O,s:O,s:N,s:s,s:s,s:s,s:i,s:n,s:O,s:{s:i,s:i}}", "torch_parallel_for",
                       stl_abi.parallel_for ? Py_True : Py_False, "cuda_stream",
                       stl_abi.get_current_cuda_stream ? Py_True : Py_False, "cuda_kernels", cuda, "fused_forward",
                       fused, "cpu_isa", stl_cpu_isa()->name, "cpu_isa_supported", stl_cpu_isa_best(),
                       "cpu_step_isa", stl_step_isa(),
                       "cpu_vector_bytes", stl_cpu_isa()->vector_bytes, "cpu_block_bytes",
                       (Py_ssize_t)stl_cpu_block_bytes(), "cpu_bf16_gemm", stl_cpu_bf16_gemm() ? Py_True : Py_False,
                       "limits", "max_tile", STL_MAX_TILE, "max_rank", STL_MAX_RANK);
}

static PyObject *empty_cache(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  return PyLong_FromSize_t(stl_cpu_workspace_empty());
}

static PyObject *workspace_bytes(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  return PyLong_FromSize_t(stl_cpu_workspace_cached());
}

static PyMethodDef methods[] = {
    {"abi_info", abi_info, METH_NOARGS,
     "What this build and process offer: the optional parts of torch's C ABI it resolved, whether CUDA kernels "
     "are built, which backends run the forward as one fused kernel, and the CPU kernels' ISA level in use "
     "(cpu_isa: the best this CPU supports unless STL_TORCH_CPU_ISA asks for a lower one; cpu_step_isa: the level "
     "of the decode-step kernel, the same), and whether bfloat16 "
     "calls run their GEMMs in bfloat16 (cpu_bf16_gemm: where the CPU has AVX512-BF16, unless "
     "STL_TORCH_CPU_BF16_GEMM says otherwise); limits: the largest tile and rank the ops accept (csrc/stl.h)."},
    {"empty_cache", empty_cache, METH_NOARGS,
     "Frees the CPU workspace the ops keep between calls (not in use); returns the bytes freed."},
    {"workspace_bytes", workspace_bytes, METH_NOARGS, "Bytes of CPU workspace kept between calls."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "stl_torch._C",
                                    "STL operator kernels registered as torch.ops.stl_torch.*", -1, methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject *torch = PyImport_ImportModule("torch"); /* loads libtorch_cpu.so */
  if (!torch) return NULL;
  Py_DECREF(torch);
  const char *err = stl_abi_load();
  if (!err) err = stl_cpu_isa_init();
  if (!err) err = stl_register_ops();
  if (!err) err = stl_register_decode_step();
  if (err) {
    PyErr_SetString(PyExc_ImportError, err);
    return NULL;
  }
  return PyModule_Create(&moddef);
}
