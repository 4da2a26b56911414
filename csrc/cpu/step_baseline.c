/* The decode-step kernel at the portable baseline level: 16-byte vectors, no -m flag. */
#define STL_VBYTES 16
#define STL_ISA baseline
#include "step_level.inc"
