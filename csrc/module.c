/* stl_torch._C: a CPython extension (limited API, abi3) whose import resolves libtorch's stable
 * C ABI and registers the torch.ops.stl_torch.* kernels. No pybind11, no ATen C++. */
#define Py_LIMITED_API 0x03090000
#include <Python.h>

#include "stl.h"
#include "torch_abi.h"

const char *stl_register_ops(void);

/* {"cpu": bool[, "cuda": bool]}: which backends run the forward as one fused kernel */
static PyObject *fused_forward_info(void) {
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  if (PyDict_SetItemString(d, "cpu", stl_cpu_kernels.forward ? Py_True : Py_False)) goto fail;
#ifdef STL_WITH_CUDA
  if (PyDict_SetItemString(d, "cuda", stl_cuda_kernels.forward ? Py_True : Py_False)) goto fail;
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
  return Py_BuildValue("{s:O,s:O,s:O,s:N}", "torch_parallel_for", stl_abi.parallel_for ? Py_True : Py_False,
                       "cuda_stream", stl_abi.get_current_cuda_stream ? Py_True : Py_False, "cuda_kernels", cuda,
                       "fused_forward", fused);
}

static PyMethodDef methods[] = {
    {"abi_info", abi_info, METH_NOARGS,
     "What this build and process offer: the optional parts of torch's C ABI it resolved, whether CUDA kernels "
     "are built, and which backends run the forward as one fused kernel."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "stl_torch._C",
                                    "STL operator kernels registered as torch.ops.stl_torch.*", -1, methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject *torch = PyImport_ImportModule("torch"); /* loads libtorch_cpu.so */
  if (!torch) return NULL;
  Py_DECREF(torch);
  const char *err = stl_abi_load();
  if (!err) err = stl_register_ops();
  if (err) {
    PyErr_SetString(PyExc_ImportError, err);
    return NULL;
  }
  return PyModule_Create(&moddef);
}
