/* Which ISA level's primitives run: the best this CPU (and OS) supports, chosen once at import,
 * the way PyTorch's own CPU-capability dispatch works. STL_TORCH_CPU_ISA=baseline|avx2|avx512|avx512bf16|amx
 * forces a lower level (a level the CPU lacks is refused at import with a clear message). Also
 * chosen here: the block size and whether bfloat16 calls multiply in bfloat16. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <cpuid.h>
#include <sys/syscall.h>
#endif

#include "primitives.h"

static const StlCpuIsa *chosen = &stl_cpu_isa_baseline;
static size_t block_bytes = (size_t)8 << 20;
static const StlCpuIsa *best = &stl_cpu_isa_baseline;

const StlCpuIsa *stl_cpu_isa(void) { return chosen; }
const char *stl_cpu_isa_best(void) { return best->name; }

/* AMX-BF16 usable: the CPU has the tiles (CPUID 7.0 EDX bits 22 and 24), the OS saves their state
 * (XCR0 bits 17 and 18), and Linux grants this process the tile data state (arch_prctl
 * ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18: without it the first tile load faults, as oneDNN's
 * documentation explains). The grant is for the whole process, its threads included. */
static int amx_usable(void) {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) return 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE: xgetbv allowed */
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return 0;
  return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
  return 0;
#endif
}

static const StlCpuIsa *best_supported(void) {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  /* __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0) */
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
    return !__builtin_cpu_supports("avx512bf16") ? &stl_cpu_isa_avx512
           : amx_usable()                        ? &stl_cpu_isa_amx
                                                 : &stl_cpu_isa_avx512bf16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("bmi2"))
    return &stl_cpu_isa_avx2;
#endif
  return &stl_cpu_isa_baseline;
}

size_t stl_cpu_block_bytes(void) { return block_bytes; }

static int bf16_gemm = 0;
int stl_cpu_bf16_gemm(void) { return bf16_gemm; }

/* bfloat16 GEMMs through torch where the CPU multiplies bfloat16 natively (AVX512-BF16; AMX CPUs
 * have it too): there oneDNN's bfloat16 GEMM runs 2-4x faster than the float32 one. Elsewhere it
 * is emulated and slower than float32, so the kernels keep float32. */
static const char *init_bf16_gemm(void) {
  static char msg[160];
  const char *e = getenv("STL_TORCH_CPU_BF16_GEMM");
  if (e && *e) {
    if (strcmp(e, "0") && strcmp(e, "1")) {
      snprintf(msg, sizeof msg, "stl_torch: STL_TORCH_CPU_BF16_GEMM=%s; expected 0 or 1 (or unset)", e);
      return msg;
    }
    bf16_gemm = e[0] == '1';
    return NULL;
  }
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  bf16_gemm = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f");
#endif
  return NULL;
}

/* What one block's temporaries may take so that they stay in the last-level cache: a quarter of it,
 * within 1..4 MB (a VM may report its host's whole L3, not the slice it shares).
 * STL_TORCH_CPU_BLOCK_BYTES overrides it (tuning, and tests that need many blocks). */
static const char *init_block_bytes(void) {
  static char msg[160];
  const char *e = getenv("STL_TORCH_CPU_BLOCK_BYTES");
  if (e && *e) {
    char *end = NULL;
    const unsigned long long v = strtoull(e, &end, 10);
    if (*end || v < 1024 || v > ((unsigned long long)1 << 40)) {
      snprintf(msg, sizeof msg, "stl_torch: STL_TORCH_CPU_BLOCK_BYTES=%s; expected an integer from 1024 to 2^40", e);
      return msg;
    }
    block_bytes = (size_t)v;
    return NULL;
  }
  long l3 = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
  l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  size_t b = l3 > 0 ? (size_t)l3 / 4 : (size_t)8 << 20;
  if (b < ((size_t)1 << 20)) b = (size_t)1 << 20;
  if (b > ((size_t)4 << 20)) b = (size_t)4 << 20;
  block_bytes = b;
  return NULL;
}

const char *stl_cpu_isa_init(void) {
  static char msg[256];
  const char *err = init_block_bytes();
  if (!err) err = init_bf16_gemm();
  if (err) return err;
  best = chosen = best_supported();
  const char *want = getenv("STL_TORCH_CPU_ISA");
  if (!want || !*want) return NULL;
  const StlCpuIsa *levels[] = {
      &stl_cpu_isa_baseline,
#if defined(__x86_64__) || defined(_M_X64)
      &stl_cpu_isa_avx2,
      &stl_cpu_isa_avx512,
      &stl_cpu_isa_avx512bf16,
      &stl_cpu_isa_amx,
#endif
  };
  const int n = (int)(sizeof levels / sizeof levels[0]);
  int best_i = 0;
  for (int i = 0; i < n; i++)
    if (levels[i] == best) best_i = i;
  for (int i = 0; i < n; i++) {
    if (strcmp(want, levels[i]->name) != 0) continue;
    if (i > best_i) {
      snprintf(msg, sizeof msg, "stl_torch: STL_TORCH_CPU_ISA=%s, but this CPU supports at most '%s'", want,
               best->name);
      return msg;
    }
    chosen = levels[i];
    return NULL;
  }
  snprintf(msg, sizeof msg,
           "stl_torch: STL_TORCH_CPU_ISA=%s is not a level of this build; expected one of baseline%s (or unset)",
           want, n > 1 ? ", avx2, avx512, avx512bf16, amx" : "");
  return msg;
}

/* Scratch elements per worker, sized for the widest vectors (64 bytes) so they hold at every level. */
static size_t t2_padded(int t, int64_t elem) {
  const int64_t vl = 64 / elem, t2 = (int64_t)t * t;
  return (size_t)((t2 + 2 * vl - 1) / (2 * vl) * (2 * vl));
}
size_t stl_cpu_encode_scratch(int t, int r, int64_t elem) {
  (void)r;
  return (size_t)elem * (size_t)((int64_t)t * t * STL_KB + (int64_t)t * STL_KB + (int64_t)t * t * STL_KB + STL_KB);
}
size_t stl_cpu_decode_scratch(int t, int r, int64_t elem) {
  return (size_t)elem * (size_t)((int64_t)r * STL_KB + (int64_t)t * t * STL_KB + (int64_t)t * STL_KB);
}
size_t stl_cpu_correlate_scratch(int t, int r, int64_t elem) {
  const size_t t2p = t2_padded(t, elem);
  return (size_t)elem * ((size_t)t * t * STL_KB + (size_t)t * STL_KB + STL_KB * t2p + (size_t)r * t2p + (size_t)r * STL_KB);
}
size_t stl_cpu_colsum_scratch(int64_t elem) { return (size_t)elem * STL_KB; }
