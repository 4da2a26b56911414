/* The subset of libtorch's stable C ABI (aoti_torch_* / torch_*) that stl-torch uses,
 * declared in plain C and resolved at import time with dlsym from the libtorch that
 * `import torch` already loaded. Nothing is linked at build time, so one build works
 * across torch releases (2.9+: checked against torch/csrc/inductor/aoti_torch/c/shim.h
 * and torch/csrc/stable/c/shim.h of 2.13). Optional entries may be NULL. */
#ifndef STL_TORCH_ABI_H
#define STL_TORCH_ABI_H

#include <stdbool.h>
#include <stdint.h>

typedef int32_t AOTITorchError;           /* 0 = success */
typedef struct AtenTensorOpaque *AtenTensorHandle;
typedef struct TorchLibraryOpaque *TorchLibraryHandle;
typedef uint64_t StableIValue;            /* tensors: an owning AtenTensorHandle; scalars: memcpy'd */
typedef void (*StlBoxedKernel)(StableIValue *stack, uint64_t num_args, uint64_t num_outputs);
typedef void (*StlParallelFunc)(int64_t begin, int64_t end, void *ctx);

#define STL_ABI_OTHER_DTYPES 10

typedef struct {
  /* tensor introspection (borrowed results) */
  AOTITorchError (*get_data_ptr)(AtenTensorHandle, void **);
  AOTITorchError (*get_dim)(AtenTensorHandle, int64_t *);
  AOTITorchError (*get_sizes)(AtenTensorHandle, int64_t **);
  AOTITorchError (*get_strides)(AtenTensorHandle, int64_t **);
  AOTITorchError (*get_dtype)(AtenTensorHandle, int32_t *);
  AOTITorchError (*get_device_type)(AtenTensorHandle, int32_t *);
  AOTITorchError (*get_device_index)(AtenTensorHandle, int32_t *);
  AOTITorchError (*is_defined)(AtenTensorHandle, bool *); /* optional */
  /* allocation and views (new owning references) */
  AOTITorchError (*empty_strided)(int64_t ndim, const int64_t *sizes, const int64_t *strides,
                                  int32_t dtype, int32_t device_type, int32_t device_index,
                                  AtenTensorHandle *ret);
  AOTITorchError (*reinterpret_tensor)(AtenTensorHandle self, int64_t ndim, const int64_t *sizes,
                                       const int64_t *strides, int64_t storage_offset,
                                       AtenTensorHandle *ret);
  AOTITorchError (*create_tensor_from_blob)(void *data, int64_t ndim, const int64_t *sizes, const int64_t *strides,
                                            int64_t storage_offset, int32_t dtype, int32_t device_type,
                                            int32_t device_index, AtenTensorHandle *ret);
  AOTITorchError (*delete_tensor_object)(AtenTensorHandle);
  AOTITorchError (*zero_)(AtenTensorHandle);
  /* ATen's batched GEMM on the CPU (torch's BLAS); baddbmm is optional */
  AOTITorchError (*cpu_bmm_out)(AtenTensorHandle out, AtenTensorHandle self, AtenTensorHandle mat2);
  AOTITorchError (*cpu_baddbmm_out)(AtenTensorHandle out, AtenTensorHandle self, AtenTensorHandle batch1,
                                    AtenTensorHandle batch2, double beta, double alpha);
  /* enum values */
  int32_t (*dtype_float32)(void);
  int32_t (*dtype_float64)(void);
  int32_t (*dtype_bfloat16)(void);
  int32_t (*dtype_float16)(void);
  /* dtypes the ops reject, looked up only to name them in the error (optional) */
  struct {
    const char *name;
    int32_t (*get)(void);
  } other_dtypes[STL_ABI_OTHER_DTYPES];
  int32_t (*device_type_cpu)(void);
  int32_t (*device_type_cuda)(void);
  /* op registration */
  AOTITorchError (*library_init_def)(const char *ns, const char *file, uint32_t line,
                                     TorchLibraryHandle *ret);
  AOTITorchError (*library_init_impl)(const char *ns, const char *key, const char *file,
                                      uint32_t line, TorchLibraryHandle *ret);
  AOTITorchError (*library_def)(TorchLibraryHandle, const char *schema);
  AOTITorchError (*library_impl)(TorchLibraryHandle, const char *name, StlBoxedKernel fn);
  /* optional: torch's intra-op thread pool (2.10+), CUDA stream (libtorch_cuda only) */
  AOTITorchError (*parallel_for)(int64_t begin, int64_t end, int64_t grain, StlParallelFunc fn,
                                 void *ctx);
  AOTITorchError (*get_num_threads)(uint32_t *);
  AOTITorchError (*get_current_cuda_stream)(int32_t device_index, void **stream);
  AOTITorchError (*cuda_bmm_out)(AtenTensorHandle out, AtenTensorHandle self, AtenTensorHandle mat2);
} StlTorchAbi;

extern StlTorchAbi stl_abi;

/* Resolve every entry; returns NULL on success or a message naming the missing symbol. */
const char *stl_abi_load(void);

#endif
