/* stl_torch._C: a CPython extension (limited API, abi3) whose import resolves libtorch's stable
 * C ABI and registers the torch.ops.stl_torch.* kernels. No pybind11, no ATen C++. */
#define Py_LIMITED_API 0x03090000
#include <Python.h>

#include "stl.h"
#include "torch_abi.h"

const char *stl_register_ops(void);

static PyObject *path_str(int path) {
  const char *name = stl_forward_path_name(path);
  if (!name) Py_RETURN_NONE;
  return PyUnicode_FromString(name);
}

static PyObject *abi_info(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
#ifdef STL_WITH_CUDA
  PyObject *cuda = Py_True;
#else
  PyObject *cuda = Py_False;
#endif
  const int n = stl_forward_path_count();
  PyObject *paths = PyTuple_New(n);
  if (!paths) return NULL;
  for (int i = 0; i < n; i++) {
    PyObject *name = path_str(i);
    if (!name || PyTuple_SetItem(paths, i, name)) { /* SetItem steals name */
      Py_DECREF(paths);
      return NULL;
    }
  }
  /* fused_forward: kept for older callers; forward_paths lists what set_forward_path accepts */
  return Py_BuildValue("{s:O,s:O,s:O,s:O,s:N}", "torch_parallel_for", stl_abi.parallel_for ? Py_True : Py_False,
                       "cuda_stream", stl_abi.get_current_cuda_stream ? Py_True : Py_False, "cuda_kernels", cuda,
                       "fused_forward", cuda, "forward_paths", paths);
}

static PyObject *set_forward_path(PyObject *self, PyObject *name) {
  (void)self;
  if (!PyUnicode_Check(name)) {
    PyErr_SetString(PyExc_TypeError, "set_forward_path: expected a str");
    return NULL;
  }
  for (int i = 0; i < stl_forward_path_count(); i++)
    if (PyUnicode_CompareWithASCIIString(name, stl_forward_path_name(i)) == 0) {
      stl_forward_path_set(i);
      Py_RETURN_NONE;
    }
  PyErr_Format(PyExc_ValueError, "set_forward_path: unknown or unavailable path %R (this build offers %s)", name,
               stl_forward_path_count() > 1 ? "'unfused', 'fused', 'fused_encode'" : "'unfused' only: no CUDA kernels");
  return NULL;
}

static PyObject *get_forward_path(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  return path_str(stl_forward_path_get());
}

static PyObject *last_forward_path(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  return path_str(stl_forward_path_last());
}

static PyMethodDef methods[] = {
    {"abi_info", abi_info, METH_NOARGS, "Which optional parts of torch's C ABI this process resolved."},
    {"set_forward_path", set_forward_path, METH_O,
     "Choose how stl_forward runs on CUDA, for the whole process: 'unfused' (encode, torch bmm, decode), "
     "'fused' (GEMM+decode kernel) or 'fused_encode' (encode+GEMM+decode kernel). Configurations a fused "
     "kernel does not support run unfused. Thread-safe; takes effect at the next call."},
    {"get_forward_path", get_forward_path, METH_NOARGS, "The forward path chosen by set_forward_path."},
    {"last_forward_path", last_forward_path, METH_NOARGS,
     "The path the latest stl_forward call with rows actually took (None before any)."},
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
