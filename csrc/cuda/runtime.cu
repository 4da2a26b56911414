/* Host-side helpers of the CUDA kernels (see common.cuh): errors, device guard, SM count and
 * the stream-ordered workspace pool. */
#include "common.cuh"

#define STL_MAX_DEVICES 64

void stl_cuda_fail(const char *what, cudaError_t err) {
  char msg[384];
  snprintf(msg, sizeof msg, "stl_torch CUDA kernel %s failed: %s (%s)", what, cudaGetErrorString(err),
           cudaGetErrorName(err));
  stl_kernel_error(msg);
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

StlDeviceGuard::StlDeviceGuard(const void *ptr) : prev(-1) {
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

/* One pool per device, created on first use and published with a compare-and-swap (a thread that
 * loses the race destroys its own). Freed blocks up to 64 MiB stay in the pool. */
static cudaMemPool_t pool_of(int dev) {
  static cudaMemPool_t pools[STL_MAX_DEVICES];
  if (dev >= STL_MAX_DEVICES) stl_kernel_error("stl_torch CUDA: more than 64 devices");
  cudaMemPool_t p = __atomic_load_n(&pools[dev], __ATOMIC_ACQUIRE);
  if (p) return p;
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = dev;
  cudaMemPool_t mine = NULL;
  cudaError_t err = cudaMemPoolCreate(&mine, &props);
  if (err != cudaSuccess) stl_cuda_fail("cudaMemPoolCreate (reduction workspace)", err);
  uint64_t keep = 64ull << 20;
  cudaMemPoolSetAttribute(mine, cudaMemPoolAttrReleaseThreshold, &keep);
  cudaMemPool_t expected = NULL;
  if (!__atomic_compare_exchange_n(&pools[dev], &expected, mine, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    cudaMemPoolDestroy(mine);
    return expected;
  }
  return mine;
}

void *stl_cuda_ws_alloc(size_t bytes, cudaStream_t stream) {
  void *p = NULL;
  cudaError_t err = cudaMallocFromPoolAsync(&p, bytes ? bytes : 1, pool_of(current_device()), stream);
  if (err != cudaSuccess) {
    cudaGetLastError();
    char msg[256];
    snprintf(msg, sizeof msg,
             "stl_torch CUDA: could not allocate %zu bytes of reduction workspace: %s", bytes,
             cudaGetErrorString(err));
    stl_kernel_error(msg);
  }
  return p;
}

void stl_cuda_ws_free(void *p, cudaStream_t stream) {
  if (p && cudaFreeAsync(p, stream) != cudaSuccess) cudaGetLastError(); /* never throws (destructors) */
}
