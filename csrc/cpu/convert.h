/* Load/store of contiguous segments between a storage dtype and the compute type. The dtype
 * switch happens once per segment, never per element. */
#ifndef STL_CPU_CONVERT_H
#define STL_CPU_CONVERT_H

#include <stdint.h>
#include <string.h>

#include "../stl.h"

static inline float stl_bf16_to_f32(uint16_t v) {
  uint32_t u = (uint32_t)v << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t stl_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);                                          /* round to nearest even */
  return (uint16_t)(u >> 16);
}

static inline int64_t stl_dtype_size(StlDtype dt) { return dt == STL_F64 ? 8 : dt == STL_BF16 ? 2 : 4; }

#define STL_DEFINE_CONVERT(A, SUF)                                                          \
  static inline void stl_load_##SUF(StlDtype dt, const void *src, int64_t off, int64_t n,   \
                                    A *dst) {                                               \
    if (dt == STL_F32) {                                                                    \
      const float *s = (const float *)src + off;                                            \
      for (int64_t i = 0; i < n; i++) dst[i] = (A)s[i];                                     \
    } else if (dt == STL_F64) {                                                             \
      const double *s = (const double *)src + off;                                          \
      for (int64_t i = 0; i < n; i++) dst[i] = (A)s[i];                                     \
    } else {                                                                                \
      const uint16_t *s = (const uint16_t *)src + off;                                      \
      for (int64_t i = 0; i < n; i++) dst[i] = (A)stl_bf16_to_f32(s[i]);                    \
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
    } else {                                                                                \
      uint16_t *d = (uint16_t *)dst + off;                                                  \
      for (int64_t i = 0; i < n; i++) d[i] = stl_f32_to_bf16((float)src[i]);               \
    }                                                                                       \
  }                                                                                         \
  /* small (rows x cols) matrix -> dense compute-type copy */                               \
  static inline void stl_load_small_##SUF(StlDtype dt, StlSmallMat m, int rows, int cols,   \
                                          A *dst) {                                         \
    for (int i = 0; i < rows; i++)                                                          \
      for (int j = 0; j < cols; j++) stl_load_##SUF(dt, m.base, i * m.s0 + j * m.s1, 1,     \
                                                    dst + i * cols + j);                    \
  }

STL_DEFINE_CONVERT(float, f)
STL_DEFINE_CONVERT(double, d)

#endif
