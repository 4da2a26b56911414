/* Host-side helpers of the CUDA kernels (see common.cuh): errors, device guard and SM count.
 * No memory is allocated here: the reductions' scratch is part of the workspace ops.c passes in. */
#include <stdlib.h>

#include "common.cuh"

#define STL_MAX_DEVICES 64

static thread_local const StlHost *call_host; /* the host of the launcher in flight on this thread */

void stl_cuda_error(const char *msg) {
  if (call_host) call_host->error(call_host, msg);
  fprintf(stderr, "stl_torch CUDA: %s\n", msg);
  abort();
}

void stl_cuda_fail(const char *what, cudaError_t err) {
  char msg[384];
  snprintf(msg, sizeof msg, "stl_torch CUDA kernel %s failed: %s (%s)", what, cudaGetErrorString(err),
           cudaGetErrorName(err));
  stl_cuda_error(msg);
}

static int device_count(void) {
  static int n = -1; /* benign race: every thread computes the same value */
  if (n < 0) {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      cudaGetLastError();
      c = 0;
    }
    n = c;
  }
  return n;
}

static int current_device(void) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) stl_cuda_fail("cudaGetDevice", err);
  return dev;
}

StlDeviceGuard::StlDeviceGuard(const StlHost *host, const void *ptr) : prev(-1), prev_host(call_host) {
  if (host) call_host = host;
  if (device_count() <= 1 || !ptr) return;
  cudaPointerAttributes at;
  if (cudaPointerGetAttributes(&at, ptr) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (at.type != cudaMemoryTypeDevice && at.type != cudaMemoryTypeManaged) return;
  const int cur = current_device();
  if (cur == at.device) return;
  cudaError_t err = cudaSetDevice(at.device);
  if (err != cudaSuccess) stl_cuda_fail("cudaSetDevice", err);
  prev = cur;
}

StlDeviceGuard::~StlDeviceGuard() {
  if (prev >= 0) cudaSetDevice(prev);
  call_host = prev_host;
}

int stl_cuda_sm_count(void) {
  static int cache[STL_MAX_DEVICES]; /* 0 = not yet read; benign race */
  const int dev = current_device();
  if (dev < STL_MAX_DEVICES && cache[dev] > 0) return cache[dev];
  int n = 0;
  cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) stl_cuda_fail("cudaDeviceGetAttribute(MultiProcessorCount)", err);
  if (dev < STL_MAX_DEVICES) cache[dev] = n;
  return n;
}

int stl_cuda_device_attr(cudaDeviceAttr attr) {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}
