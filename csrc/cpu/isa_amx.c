/* The CPU primitives at the AMX level (Intel Xeon 4th gen and later: AVX-512, AVX512-BF16, AMX-BF16
 * tiles): the avx512bf16 level compiled again with its tile kernels switched on (STL_AMX), so the
 * bfloat16 encode and decode of 16 tiles run as one tile multiply each. setup.py compiles this
 * file with the avx512bf16 flags and -mamx-tile -mamx-bf16; dispatch.c chooses it only where the
 * CPU reports AMX-BF16 and Linux grants the tile data state. */
#define STL_AMX 1
#include "isa_avx512bf16.c"
