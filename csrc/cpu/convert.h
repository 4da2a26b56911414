/* Load/store of contiguous segments between a storage dtype and the compute type (float for
 * float32/bfloat16/float16, double for float64). The dtype switch happens once per segment, never
 * per element. 16-bit formats round to nearest even, like torch. Plain bit manipulation: the
 * same code on every ISA level and architecture. */
#ifndef STL_CPU_CONVERT_H
#define STL_CPU_CONVERT_H

#include <stdint.h>
#include <string.h>

#include "../stl.h"

static inline float stl_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t stl_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float stl_bf16_to_f32(uint16_t v) { return stl_bits_f32((uint32_t)v << 16); }

static inline uint16_t stl_f32_to_bf16(float f) {
  uint32_t u = stl_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);                                          /* round to nearest even */
  return (uint16_t)(u >> 16);
}

static inline float stl_f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return stl_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf / NaN */
  if (exp != 0) return stl_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return stl_bits_f32(sign);
  /* subnormal: man * 2^-24, exact in float */
  const float v = (float)man * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

static inline uint16_t stl_f32_to_f16(float f) {
  const uint32_t u = stl_f32_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN stays NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);                       /* rounds to inf */
  if (a < 0x38800000u) {                                                        /* subnormal or 0 */
    /* a value below 2^-14: round a / 2^-24 to nearest even in float arithmetic (exact) */
    const float v = stl_bits_f32(a) * 16777216.0f; /* * 2^24 */
    float r = (float)(int32_t)v;
    const float d = v - r;
    if (d > 0.5f || (d == 0.5f && ((int32_t)r & 1))) r += 1.0f;
    return (uint16_t)(sign | (uint32_t)r);
  }
  uint32_t m = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u; /* rebias 127 -> 15, round to nearest even */
  return (uint16_t)(sign | (m >> 13));
}

#define STL_DEFINE_CONVERT(A, SUF)                                                          \
  static inline void stl_load_##SUF(StlDtype dt, const void *src, int64_t off, int64_t n,   \
                                    A *dst) {                                               \
    if (dt == STL_F32) {                                                                    \
      const float *s = (const float *)src + off;                                            \
      for (int64_t i = 0; i < n; i++) dst[i] = (A)s[i];                                     \
    } else if (dt == STL_F64) {                                                             \
      const double *s = (const double *)src + off;                                          \
      for (int64_t i = 0; i < n; i++) dst[i] = (A)s[i];                                     \
    } else if (dt == STL_BF16) {                                                            \
      const uint16_t *s = (const uint16_t *)src + off;                                      \
      for (int64_t i = 0; i < n; i++) dst[i] = (A)stl_bf16_to_f32(s[i]);                    \
    } else {                                                                                \
      const uint16_t *s = (const uint16_t *)src + off;                                      \
      for (int64_t i = 0; i < n; i++) dst[i] = (A)stl_f16_to_f32(s[i]);                     \
    }                                                                                       \
  }                                                                                         \
  static inline void stl_store_##SUF(StlDtype dt, void *dst, int64_t off, int64_t n,        \
                                     const A *src) {                                        \
    if (dt == STL_F32) {                                                                    \
      float *d = (float *)dst + off;                                                        \
      for (int64_t i = 0; i < n; i++) d[i] = (float)src[i];                                 \
    } else if (dt == STL_F64) {                                                             \
      double *d = (double *)dst + off;                                                      \
      for (int64_t i = 0; i < n; i++) d[i] = (double)src[i];                                \
    } else if (dt == STL_BF16) {                                                            \
      uint16_t *d = (uint16_t *)dst + off;                                                  \
      for (int64_t i = 0; i < n; i++) d[i] = stl_f32_to_bf16((float)src[i]);               \
    } else {                                                                                \
      uint16_t *d = (uint16_t *)dst + off;                                                  \
      for (int64_t i = 0; i < n; i++) d[i] = stl_f32_to_f16((float)src[i]);                \
    }                                                                                       \
  }                                                                                         \
  /* small (rows x cols) matrix -> dense compute-type copy */                               \
  static inline void stl_load_small_##SUF(StlDtype dt, StlSmallMat m, int64_t rows,         \
                                          int64_t cols, A *dst) {                           \
    for (int64_t i = 0; i < rows; i++)                                                      \
      for (int64_t j = 0; j < cols; j++)                                                    \
        stl_load_##SUF(dt, m.base, i * m.s0 + j * m.s1, 1, dst + i * cols + j);             \
  }

STL_DEFINE_CONVERT(float, f)
STL_DEFINE_CONVERT(double, d)

#endif
