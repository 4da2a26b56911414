/* The CPU primitives at the portable baseline level (x86-64 SSE2, aarch64 NEON): 16-byte vectors,
 * compiled without any -m flag. */
#define STL_VBYTES 16
#define STL_ISA baseline
#include "isa_level.inc"
