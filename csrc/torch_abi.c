/* Runtime resolution of libtorch's stable C ABI (see torch_abi.h for why). */
#include "torch_abi.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

StlTorchAbi stl_abi;

/* A symbol from any library already in the process (torch loads libtorch_cpu.so with
 * RTLD_LOCAL, so RTLD_DEFAULT does not see it: ask the library handles directly). */
static void *find(void *const *libs, int nlibs, const char *name) {
  for (int i = 0; i < nlibs; i++) {
    if (!libs[i]) continue;
    void *p = dlsym(libs[i], name);
    if (p) return p;
  }
  return NULL;
}

const char *stl_abi_load(void) {
  static char msg[256];
  void *libs[2] = {
      dlopen("libtorch_cpu.so", RTLD_NOW | RTLD_NOLOAD),
      dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD), /* absent on CPU builds */
  };
  if (!libs[0]) {
    snprintf(msg, sizeof msg, "stl_torch: libtorch_cpu.so is not loaded (import torch first): %s",
             dlerror());
    return msg;
  }
#define REQ(field, sym)                                                                   \
  do {                                                                                    \
    *(void **)(&stl_abi.field) = find(libs, 2, sym);                                      \
    if (!stl_abi.field) {                                                                 \
      snprintf(msg, sizeof msg, "stl_torch: this torch lacks the C ABI function %s", sym); \
      return msg;                                                                         \
    }                                                                                     \
  } while (0)
#define OPT(field, sym) (*(void **)(&stl_abi.field) = find(libs, 2, sym))
  REQ(get_data_ptr, "aoti_torch_get_data_ptr");
  REQ(get_dim, "aoti_torch_get_dim");
  REQ(get_sizes, "aoti_torch_get_sizes");
  REQ(get_strides, "aoti_torch_get_strides");
  REQ(get_dtype, "aoti_torch_get_dtype");
  REQ(get_device_type, "aoti_torch_get_device_type");
  REQ(get_device_index, "aoti_torch_get_device_index");
  REQ(empty_strided, "aoti_torch_empty_strided");
  REQ(reinterpret_tensor, "aoti_torch__reinterpret_tensor");
  REQ(create_tensor_from_blob, "aoti_torch_create_tensor_from_blob");
  REQ(delete_tensor_object, "aoti_torch_delete_tensor_object");
  REQ(zero_, "aoti_torch_zero_");
  REQ(cpu_bmm_out, "aoti_torch_cpu_bmm_out");
  REQ(dtype_float32, "aoti_torch_dtype_float32");
  REQ(dtype_float64, "aoti_torch_dtype_float64");
  REQ(dtype_bfloat16, "aoti_torch_dtype_bfloat16");
  REQ(dtype_float16, "aoti_torch_dtype_float16");
  REQ(device_type_cpu, "aoti_torch_device_type_cpu");
  REQ(device_type_cuda, "aoti_torch_device_type_cuda");
  REQ(library_init_def, "aoti_torch_library_init_def");
  REQ(library_init_impl, "aoti_torch_library_init_impl");
  REQ(library_def, "aoti_torch_library_def");
  REQ(library_impl, "aoti_torch_library_impl");
  OPT(cpu_baddbmm_out, "aoti_torch_cpu_baddbmm_out");
  OPT(is_defined, "aoti_torch_is_defined");
  static const char *const others[STL_ABI_OTHER_DTYPES] = {"int64", "int32", "int16", "int8", "uint8", "bool",
                                                            "complex64", "complex128", "float8_e4m3fn",
                                                            "float8_e5m2"};
  for (int i = 0; i < STL_ABI_OTHER_DTYPES; i++) {
    char sym[64];
    snprintf(sym, sizeof sym, "aoti_torch_dtype_%s", others[i]);
    stl_abi.other_dtypes[i].name = others[i];
    *(void **)(&stl_abi.other_dtypes[i].get) = find(libs, 2, sym);
  }
  OPT(parallel_for, "torch_parallel_for");
  OPT(get_num_threads, "torch_get_num_threads");
  OPT(get_current_cuda_stream, "aoti_torch_get_current_cuda_stream");
  OPT(cuda_bmm_out, "aoti_torch_cuda_bmm_out");
#undef REQ
#undef OPT
  return NULL;
}
