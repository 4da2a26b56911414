/* Host services parallel_for and num_threads (StlHost, csrc/stl.h): one parallel-for for all CPU
 * kernels. Prefer torch's intra-op pool (torch_parallel_for,
 * torch 2.10+): it honours torch.set_num_threads and does not oversubscribe the cores torch's
 * own GEMM uses. Older torch: a plain pthread split. */
#include <pthread.h>
#include <unistd.h>

#include "stl.h"
#include "torch_abi.h"

typedef struct {
  StlRangeFn fn;
  void *ctx;
  int64_t begin, end;
} Chunk;

static void *run_chunk(void *p) {
  Chunk *c = (Chunk *)p;
  c->fn(c->begin, c->end, c->ctx);
  return NULL;
}

void stl_parallel_for(int64_t n, int64_t grain, StlRangeFn fn, void *ctx) {
  if (n <= 0) return;
  if (stl_abi.parallel_for && stl_abi.parallel_for(0, n, grain, fn, ctx) == 0) return;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int64_t nt = n / (grain > 0 ? grain : 1);
  if (nt > ncpu) nt = ncpu;
  if (nt > 64) nt = 64;
  if (nt <= 1) {
    fn(0, n, ctx);
    return;
  }
  pthread_t th[64];
  Chunk ch[64];
  int started[64] = {0};
  for (int64_t i = 0; i < nt; i++) {
    ch[i] = (Chunk){fn, ctx, i * n / nt, (i + 1) * n / nt};
    if (i > 0) started[i] = pthread_create(&th[i], NULL, run_chunk, &ch[i]) == 0;
  }
  run_chunk(&ch[0]);
  for (int64_t i = 1; i < nt; i++) {
    if (started[i])
      pthread_join(th[i], NULL);
    else
      run_chunk(&ch[i]); /* could not spawn: do it here */
  }
}

int64_t stl_num_threads(void) {
  uint32_t n = 0;
  if (stl_abi.get_num_threads && stl_abi.get_num_threads(&n) == 0 && n > 0) return n;
  const long c = sysconf(_SC_NPROCESSORS_ONLN);
  return c > 0 ? c : 1;
}
