#!/usr/bin/env python
"""The mutation check: can the test suite see a broken kernel?

Each mutant is one realistic single-line bug (a wrong index, a lost term, a missing check, a
rounding mode...) in the kernels, the ops, autograd, the tiling rule, the causal masks, the
conversion or the FLOP count. Each is applied alone to a scratch copy of the repo, the extension
is rebuilt when C changed, and the tests that should catch it run there. A mutant is caught when
those tests fail (or crash); the score is the caught fraction. Run it after every kernel change.

  python dev/mutants.py                    # all mutants; prints the table and the score
  python dev/mutants.py --only bias,split  # ids containing these substrings
  python dev/mutants.py --list

Writes runs/mutants/results.json. Needs the repo's test requirements (see README) and g++ for the
CUDA mutants (they run under the host emulator: no GPU needed).
"""
import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the kernels' tests at the default block size, then (if they pass) at 256 KiB and 16 KiB blocks
KERNEL_TESTS = ["tests/test_kernels.py", "tests/test_ops.py", "-k", "not every_isa"]
SMALL_BLOCKS = (256 << 10, 32 << 10)
# (id, file, function, old text, new text, tests that must catch it). The old text must occur exactly
# once inside the function's body (function None: the whole file); a function that moved to another
# file of the same source tree (csrc/ or stl_torch/) is found there (see locate), so moving code
# does not turn mutants stale. C functions are named as defined at column 0 ("forward_mkl",
# "FN(decode_)"), Python functions by their def name.
MUTANTS = [
    # --- CPU primitives (csrc/cpu/primitives.inc): every ISA level compiles these lines
    ("decode-bias-index", "csrc/cpu/primitives.inc", "FN(decode_)", "bias ? bias + (int64_t)t * J0 : NULL", "bias", KERNEL_TESTS),
    ("merge-bias-index", "csrc/cpu/primitives.inc", "FN(merge_t_)", "planes[c * STL_KB + k] + bias[k * t + c];",
     "planes[c * STL_KB + k] + bias[c];", KERNEL_TESTS),
    ("encode-drops-column-block", "csrc/cpu/primitives.inc", "FN(encode_)", "const int64_t kc = Nt - K0 < STL_KB ? Nt - K0 : STL_KB, kb = qn * kc, off = I * Nt + K0;",
     "const int64_t kc = Nt - K0 < STL_KB ? Nt - K0 : STL_KB, kb = qn * kc, off = I * Nt;", KERNEL_TESTS),
    ("tile-rows-column-offset", "csrc/cpu/primitives.inc", "FN(tile_rows_)", "rows[a] = (const A *)in + row * ncols + (int64_t)t * K0;",
     "rows[a] = (const A *)in + row * ncols;", KERNEL_TESTS),
    ("correlate-split-truncates", "csrc/cpu/primitives.inc", "FN(correlate_)", "I1 = (q + 1) * Mt / p->nparts;",
     "I1 = I0 + Mt / p->nparts;", KERNEL_TESTS),
    ("combine-forgets-accumulator", "csrc/cpu/primitives.inc", "FN(combine_w_)",
     "acc[v] = accumulate ? FN(vload_)(dst + v * VL) : (VEC){0};", "acc[v] = (VEC){0};", KERNEL_TESTS),
    ("combine-drops-last-term", "csrc/cpu/primitives.inc", "FN(combine_w_)", "for (int j = 0; j < n; j++) {\n    const A c = coef[j * cs];",
     "for (int j = 0; j < n - 1; j++) {\n    const A c = coef[j * cs];", KERNEL_TESTS),
    ("combine-multiplies-zeros", "csrc/cpu/primitives.inc", "FN(combine_w_)", "    if (c == 0) continue;\n", "",
     KERNEL_TESTS + ["tests/test_causal.py"]),
    ("correlate-tail-rows", "csrc/cpu/primitives.inc", "FN(correlate_pairs_)", "ca += f[k] * FN(vload_)(bt + k * T2P + jv);",
     "ca += f[0] * FN(vload_)(bt + k * T2P + jv);", KERNEL_TESTS),
    ("correlate-overwrites-chunks", "csrc/cpu/primitives.inc", "FN(correlate_)",
     "for (int j = 0; j < t2; j++) d[j] += (double)sp[j];", "for (int j = 0; j < t2; j++) d[j] = (double)sp[j];",
     KERNEL_TESTS),
    ("correlate-one-vector-row", "csrc/cpu/primitives.inc", "FN(correlate_one_)", "c4 += f4[k] * b, c5 += f5[k] * b",
     "c4 += f4[k] * b, c5 += f4[k] * b", KERNEL_TESTS),
    ("correlate-one-vector-tail", "csrc/cpu/primitives.inc", "FN(correlate_one_)", "for (int64_t k = 0; k < kb; k++) c += f[k] * FN(vload_)(bt + k * T2P);",
     "for (int64_t k = 0; k < kb; k++) c += f[0] * FN(vload_)(bt + k * T2P);", KERNEL_TESTS),
    # narrow layers: whole vectors only (N/t or P/t short of a chunk), several tile-rows per chunk
    ("combine-vectors-floor", "csrc/cpu/primitives.inc", "FN(combine_)", "const int nv = (int)((kb + VL - 1) / VL);",
     "const int nv = (int)(kb / VL);", KERNEL_TESTS),
    # the blocked combine (four rows at a time) and the float 4x4 transposes
    ("rows-drops-last-term", "csrc/cpu/primitives.inc", "FN(rows_w_)", "for (int j = 0; j < n; j++, src += ss) {",
     "for (int j = 0; j < n - 1; j++, src += ss) {", KERNEL_TESTS),
    ("rows-coefficient-row", "csrc/cpu/primitives.inc", "FN(rows_w_)", "cr[k] = coef + (int64_t)k * n;", "cr[k] = coef + (int64_t)k;",
     KERNEL_TESTS),
    ("rows-zero-check-first-row", "csrc/cpu/primitives.inc", "FN(combine_rows_)", "if (has_zero && FN(any_zero_)(c, 4 * (int64_t)n)) {",
     "if (has_zero && FN(any_zero_)(c, n)) {", KERNEL_TESTS + ["tests/test_causal.py"]),
    ("encode-zero-flag-first-row", "csrc/cpu/primitives.inc", "FN(encode_)", "const int has_zero = FN(any_zero_)(coef, (int64_t)r * t2);",
     "const int has_zero = FN(any_zero_)(coef, t2);", KERNEL_TESTS + ["tests/test_causal.py"]),
    ("decode-zero-flag-first-row", "csrc/cpu/primitives.inc", "FN(decode_)", "const int has_zero = FN(any_zero_)(coef, (int64_t)t2 * r);",
     "const int has_zero = FN(any_zero_)(coef, r);", KERNEL_TESTS + ["tests/test_causal.py"]),
    ("rows-drops-last-rows", "csrc/cpu/primitives.inc", "FN(combine_rows_)",
     "  for (; k < rows; k++) FN(combine_)(dst + k * ds, coef + (int64_t)k * n, 1, n, src, ss, 0, kb);\n", "",
     KERNEL_TESTS),
    ("rows-drops-last-vector", "csrc/cpu/primitives.inc", "FN(rows4_)",
     "else if (nv - v == 1) FN(rows_w_)(d + v * VL, ds, c, n, src + v * VL, ss, 4, 1, NT);",
     "else if (0) FN(rows_w_)(d + v * VL, ds, c, n, src + v * VL, ss, 4, 1, NT);", KERNEL_TESTS),
    ("rows-vectors-floor", "csrc/cpu/primitives.inc", "FN(combine_rows_)", "const int64_t nv = (kb + VL - 1) / VL;",
     "const int64_t nv = kb / VL;", KERNEL_TESTS),
    ("stream-drops-vector", "csrc/cpu/primitives.inc", "FN(combine_rows_)",
     "if (stream) FN(rows4_)(d, ds, c, n, src, ss, nv, 1);",
     "if (stream) FN(rows4_)(d, ds, c, n, src, ss, nv - 1, 1);", KERNEL_TESTS),
    ("transpose4-swaps-columns", "csrc/cpu/primitives.inc", "stl_transpose4", "c1 = STL_SHUF4(t0, t1, 2, 3, 6, 7);",
     "c1 = STL_SHUF4(t0, t1, 0, 1, 4, 5);", KERNEL_TESTS),
    ("transpose4-bias-offset", "csrc/cpu/primitives.inc", "FN(merge_)", "bias ? (const float *)bias + 4 * k : NULL",
     "bias ? (const float *)bias : NULL", KERNEL_TESTS),
    ("split4-drops-tail", "csrc/cpu/primitives.inc", "FN(split_)",
     "    FN(split_t_)(row + 4 * k, planes + k, 4, kb - k);\n", "", KERNEL_TESTS),
    ("merge4-tail-bias-offset", "csrc/cpu/primitives.inc", "FN(merge_)", "FN(merge_t_)(planes + k, row + 4 * k, 4, kb - k, bias ? bias + 4 * k : NULL);",
     "FN(merge_t_)(planes + k, row + 4 * k, 4, kb - k, bias);", KERNEL_TESTS),
    ("gemm-strips-floor", "csrc/cpu/primitives.inc", "FN(gemm_)", "m < (p->nc + NR - 1) / NR;", "m < p->nc / NR;", KERNEL_TESTS),
    ("encode-narrow-chunk-offset", "csrc/cpu/primitives.inc", "FN(encode_)", "buf + (int64_t)a * t * STL_KB + i * kc, t, kc);",
     "buf + (int64_t)a * t * STL_KB, t, kc);", KERNEL_TESTS),
    ("decode-gather-row-stride", "csrc/cpu/primitives.inc", "FN(decode_)", "const int64_t at = l * p->in_ps + (I + i) * ld + J0;",
     "const int64_t at = l * p->in_ps + I * ld + i * kc + J0;", KERNEL_TESTS),
    # the bfloat16 GEMMs' operands and results (test_bf16_gemms_on_any_cpu turns them on anywhere)
    ("encode-bf16-store-short", "csrc/cpu/primitives.inc", "FN(encode_)", "STORE(STL_BF16, p->out, l * p->out_ps + off, kb, tmp);",
     "STORE(STL_BF16, p->out, l * p->out_ps + off, kb - 1, tmp);", KERNEL_TESTS),
    ("decode-bf16-read-as-float", "csrc/cpu/primitives.inc", "FN(decode_)", "if (p->in_bf16) LOAD(STL_BF16, p->in, at, kc, dst);",
     "if (p->in_bf16) LOAD(STL_F32, p->in, at, kc, dst);", KERNEL_TESTS),
    ("correlate-bf16-column-offset", "csrc/cpu/primitives.inc", "FN(correlate_)", "LOAD(STL_BF16, p->a, l * ps + I * Nt + K0, kb,",
     "LOAD(STL_BF16, p->a, l * ps + I * Nt, kb,", KERNEL_TESTS),
    ("decode-narrow-rows-in-place", "csrc/cpu/primitives.inc", "FN(decode_)", "(qn > 1 ? (ld != Pt || kb % VL)",
     "(qn > 1 ? (kb % VL)", KERNEL_TESTS),
    ("merge-narrow-chunk-offset", "csrc/cpu/primitives.inc", "FN(decode_)", "FN(merge_)(ob + (int64_t)a * t * STL_KB + i * kc, y,",
     "FN(merge_)(ob + (int64_t)a * t * STL_KB, y,", KERNEL_TESTS),
    ("correlate-narrow-chunk-offset", "csrc/cpu/primitives.inc", "FN(correlate_)", "FN(tiles_)(rows, bt + i * kc * T2P, T2P, t, kc);",
     "FN(tiles_)(rows, bt, T2P, t, kc);", KERNEL_TESTS),
    ("tiles-literal-t4-for-t2", "csrc/cpu/primitives.inc", "FN(tiles_)", "  if (t == 4)\n    FN(tiles_t_)(rows, bt, ld, 4, kb);",
     "  if (t >= 2)\n    FN(tiles_t_)(rows, bt, ld, 4, kb);", KERNEL_TESTS),
    ("merge-swaps-tile-columns", "csrc/cpu/primitives.inc", "FN(merge_t_)", "for (int c = 0; c < t; c++) row[k * t + c] = planes[c * STL_KB + k];",
     "for (int c = 0; c < t; c++) row[k * t + c] = planes[(t - 1 - c) * STL_KB + k];", KERNEL_TESTS),
    ("split-literal-t4-for-t2", "csrc/cpu/primitives.inc", "FN(split_)", "  } else if (t == 4)\n    FN(split_t_)(row, planes, 4, kb);",
     "  } else if (t >= 2)\n    FN(split_t_)(row, planes, 4, kb);", KERNEL_TESTS),
    ("colsum-overwrites", "csrc/cpu/primitives.inc", "FN(colsum_)", "for (int64_t i = 0; i < n; i++) acc[i] += (double)row[i];",
     "for (int64_t i = 0; i < n; i++) acc[i] = (double)row[i];", KERNEL_TESTS),
    ("decode-skips-last-row", "csrc/cpu/primitives.inc", "FN(decode_)", "if (row >= p->M) break;", "if (row >= p->M - 1) break;",
     KERNEL_TESTS),
    # --- conversions (csrc/cpu/convert.h)
    ("bf16-truncates", "csrc/cpu/convert.h", "stl_f32_to_bf16", "u += 0x7fffu + ((u >> 16) & 1u);", "u += 0;", KERNEL_TESTS),
    ("bf16-rounds-half-up", "csrc/cpu/convert.h", "stl_f32_to_bf16", "u += 0x7fffu + ((u >> 16) & 1u);", "u += 0x8000u;", KERNEL_TESTS),
    ("f16-exponent-bias", "csrc/cpu/convert.h", "stl_f16_to_f32", "return stl_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));",
     "return stl_bits_f32(sign | ((exp + 111u) << 23) | (man << 13));", KERNEL_TESTS),
    ("f16-subnormal-store", "csrc/cpu/convert.h", "stl_f32_to_f16", "if (d > 0.5f || (d == 0.5f && ((int32_t)r & 1))) r += 1.0f;",
     "if (d >= 0.5f) r += 1.0f;", KERNEL_TESTS),
    # --- the CPU backend (csrc/cpu/backend.c): blocks, the GEMMs, reductions
    ("mkl-fwd-block-row-offset", "csrc/cpu/backend.c", "forward_mkl",
     "AT(f->x, f->dt, row0 * f->N), Mb, f->N, t, r, w.E, NULL, 0, w.xe, nb * Nt, h,",
     "AT(f->x, f->dt, I0 * f->N), Mb, f->N, t, r, w.E, NULL, 0, w.xe, nb * Nt, h,", KERNEL_TESTS),
    ("fused-fwd-block-row-offset", "csrc/cpu/backend.c", "forward_fused",
     "AT(f->x, f->dt, row0 * f->N), Mb, f->N, t, r, w.E, NULL, 0, w.xe, w.mp * Nt};",
     "AT(f->x, f->dt, I0 * f->N), Mb, f->N, t, r, w.E, NULL, 0, w.xe, w.mp * Nt};", KERNEL_TESTS),
    ("fused-item-row-offset", "csrc/cpu/backend.c", "panel_range", "const int64_t orow = j->row0 + (int64_t)t * lo;",
     "const int64_t orow = j->row0 + lo;", KERNEL_TESTS),
    # (not a mutant: dropping the zeroing of Xe's rows past the last block. Those rows' products are
    # computed but never decoded nor stored, so no test can see it; the zeros only keep denormal
    # garbage out of the micro-kernel.)
    ("fused-z-block-offset", "csrc/cpu/backend.c", "panel_range", "(j->I0 + lo + i) * w->Pt + j0", "(lo + i) * w->Pt + j0",
     KERNEL_TESTS),
    ("gemm-ignores-k-pass", "csrc/cpu/primitives.inc", "FN(gemm_)", "FN(micro_)(kc, a + i * K + k0, K,", "FN(micro_)(kc, a + i * K, K,",
     KERNEL_TESTS),
    ("pack-strip-offset", "csrc/cpu/primitives.inc", "FN(pack_)", "memcpy(out + (m * K + k) * NR, row + m * NR, sizeof(A) * NR);",
     "memcpy(out + (m * K + k) * NR, row, sizeof(A) * NR);", KERNEL_TESTS),
    ("micro-kernel-row", "csrc/cpu/primitives.inc", "FN(micro_)", "    x = a5[k];\n", "    x = a4[k];\n", KERNEL_TESTS),
    ("micro1-row", "csrc/cpu/primitives.inc", "FN(micro1_)", "c3 += a3[k] * b0, c4 += a4[k] * b0", "c3 += a3[k] * b0, c4 += a3[k] * b0",
     KERNEL_TESTS),
    ("micro1-for-two-vectors", "csrc/cpu/primitives.inc", "FN(gemm_)", "if (p->nc <= VL)", "if (p->nc <= NR)", KERNEL_TESTS),
    ("bwd-dwt-overwrites-blocks", "csrc/cpu/backend.c", "cpu_backward", "(StlMat){dwt, Nt * Pt, Pt, 1}, I0 > 0 && !h);",
     "(StlMat){dwt, Nt * Pt, Pt, 1}, false);", KERNEL_TESTS),
    ("bwd-bf16-dwt-overwrites-blocks", "csrc/cpu/backend.c", "cpu_backward",
     "else add_converted(host, STL_BF16, w.dwt16, (float *)w.dwt, (int64_t)r * Nt * Pt);",
     "else convert(host, STL_BF16, w.dwt16, w.dwt, (int64_t)r * Nt * Pt, true);", KERNEL_TESTS),
    ("bwd-saved-z-plane-stride", "csrc/cpu/backend.c", "cpu_backward", "      z_ps = Mt * Pt;", "      z_ps = nb * Pt;", KERNEL_TESTS),
    ("bwd-grad-z-offset", "csrc/cpu/backend.c", "cpu_backward", "b->gz ? AT(b->gz, dt, I0 * Pt) : NULL", "b->gz ? AT(b->gz, dt, 0) : NULL",
     KERNEL_TESTS),
    ("fwd-z-copy-short", "csrc/cpu/backend.c", "forward_mkl", "stl_store_f(f->dt, ATW(f->z, f->dt, (int64_t)l * Mt * Pt + I0 * Pt), 0, nb * Pt,",
     "stl_store_f(f->dt, ATW(f->z, f->dt, (int64_t)l * Mt * Pt + I0 * Pt), 0, (nb - 1) * Pt,", KERNEL_TESTS),
    ("z-direct-block-plane-stride", "csrc/cpu/backend.c", "forward_mkl", "const int64_t zps = w.z ? nb * Pt : Mt * Pt;",
     "const int64_t zps = nb * Pt;", KERNEL_TESTS),
    ("dD-transposed-store", "csrc/cpu/backend.c", "cpu_backward", "store_doubles(dt, w.dD, r * t2, b->dD, 1, r, r, t2);",
     "store_doubles(dt, w.dD, r * t2, b->dD, t2, 1, r, t2);", KERNEL_TESTS),
    # (not a mutant: taking a cached buffer of half the size in the first search, since the size check
    # after it grows whatever buffer was picked; it changes which buffer grows, not what is correct)
    ("workspace-slot-not-grown", "csrc/cpu/workspace.c", "stl_cpu_workspace_acquire",
     "if (pick >= 0 && (!slots[pick].p || slots[pick].bytes < bytes)) {", "if (pick >= 0 && !slots[pick].p) {",
     KERNEL_TESTS),
    # --- ops.c: checks and dispatch
    ("ops-D-rank-unchecked", "csrc/ops.c", "check_operands", "const int64_t dd[2] = {(int64_t)d.t * d.t, d.r};",
     "const int64_t dd[2] = {(int64_t)d.t * d.t, -1};", ["tests/test_bad_input.py"]),
    ("ops-bias-shape-unchecked", "csrc/ops.c", "forward_impl", "    stl_call_expect_shape(&o, &b, 1, bd, m);\n", "",
     ["tests/test_bad_input.py"]),
    ("ops-drops-partial-tile", "csrc/ops.c", "check_operands", "d.Mt = (d.M + d.t - 1) / d.t;", "d.Mt = d.M / d.t;", KERNEL_TESTS),
    ("ops-backward-no-bias-grad", "csrc/ops.c", "k_backward", "has_bias ? stl_call_data(&o, db) : NULL};", "NULL};", KERNEL_TESTS),
    ("isa-env-allows-unsupported", "csrc/cpu/dispatch.c", "stl_cpu_isa_init", "    if (i > best_i) {", "    if (i > best_i + 1) {",
     ["tests/test_isa.py"]),
    # --- CUDA kernels under the host emulator
    ("cuda-t8-launches-t4", "csrc/cuda/tile_kernels.cu", "launch_encode", "if (t == 8) LAUNCH(grid, THREADS, smem, st, encode_tiles<D, 8>)",
     "if (t == 8) LAUNCH(grid, THREADS, smem, st, encode_tiles<D, 4>)", ["tests/test_cuda_emu.py"]),
    # --- Python: autograd, fake kernels, tiling, causal masks, conversion, FLOPs
    ("autograd-materialises-grad-z", "stl_torch/ops.py", "_setup_context", "    ctx.set_materialize_grads(False)\n", "",
     ["tests/test_ops.py"]),
    ("autograd-drops-grad-z", "stl_torch/ops.py", "_backward_fn", "grad_z = _empty(x) if grad_z is None or z.numel() == 0 else grad_z.contiguous()",
     "grad_z = _empty(x)", ["tests/test_ops.py"]),
    ("z-kept-past-limit", "stl_torch/ops.py", "_keep_z",
     "return E.shape[0] * mt * Wt.shape[2] * x.element_size() <= Z_KEEP_CPU_BYTES", "return True",
     ["tests/test_ops.py"]),
    ("z-recomputed-for-wide-k", "stl_torch/ops.py", "_keep_z", "Wt.shape[1] > Z_RECOMPUTE_MAX_K:", "Wt.shape[1] > 10**9:",
     ["tests/test_ops.py"]),
    ("fake-output-width", "stl_torch/ops.py", "_forward_fake", "y = x.new_empty((m, pt * tile))", "y = x.new_empty((m, pt))",
     ["tests/test_ops.py", "tests/test_compile.py"]),
    ("tiling-unpad-wrong-end", "stl_torch/tiling.py", "from_tiles", "y = y[:, :s].contiguous()",
     "y = y[:, -s:].contiguous()", ["tests/test_module.py", "tests/test_tiling.py"]),
    ("decode-ready-unchecked", "stl_torch/decode.py", "prepare", "self.ready[id(m)] = m.product_cache_ready()",
     "self.ready[id(m)] = True", ["tests/test_decode_cache.py"]),
    ("decode-kept-rows-may-alias", "stl_torch/decode.py", "_post_hook", "_own_storage(ctx.new_rows)", "pass",
     ["tests/test_decode_cache.py"]),
    ("step-dp-second-pass-rows", "csrc/cpu/step_isa.inc", None,
     "default: SFN(gemv_dp_blk_)(W + J, Pt, Nt, xp + 4 * xs, xs, 4, W2, d + 4); break;",
     "default: SFN(gemv_dp_blk_)(W + J, Pt, Nt, xp, xs, 4, W2, d + 4); break;", ["tests/test_decode_cache.py"]),
    ("tiling-symbolic-unpad-wrong-end", "stl_torch/tiling.py", "from_tiles",
     "y = y.index_select(1, torch.arange(s, device=y.device))",
     "y = y.index_select(1, torch.arange(s, device=y.device) + (s + t - 1) // t * t - s)", ["tests/test_compile.py"]),
    ("causal-mask-off-by-one", "stl_torch/init.py", "causal_masks", "mD = (rows[:, None] >= lev[None, :]).astype(np.float64)",
     "mD = (rows[:, None] + 1 >= lev[None, :]).astype(np.float64)", ["tests/test_causal.py", "tests/test_init.py"]),
    ("causal-masks-unused", "stl_torch/nn.py", "effective_encoders", "return self.E * self.mask_E, self.D * self.mask_D",
     "return self.E, self.D", ["tests/test_causal.py"]),
    ("convert-counts-missing-bias", "stl_torch/convert.py", "plan_conversion", "nb = p if mod.bias is not None else 0",
     "nb = p",
     ["tests/test_convert.py"]),
    ("convert-cheaper-inverted", "stl_torch/convert.py", "_skip_reason",
     'if ctx["only_if_cheaper"] and stl_macs(t, n, p, t, r) >= linear_macs(t, n, p):',
     'if ctx["only_if_cheaper"] and stl_macs(t, n, p, t, r) < linear_macs(t, n, p):', ["tests/test_convert.py"]),
    ("flops-decode-term", "stl_torch/flops.py", "stl_macs", "+ r * rows * out_features", "+ r * rows * in_features",
     ["tests/test_flops.py"]),
    ("calibration-keeps-worse", "stl_torch/calibrate.py", "keep_if_better", "if err < best[0]:", "if err > best[0]:",
     ["tests/test_convert.py"]),
    ("limits-allow-big-tile", "csrc/stl.h", None, "#define STL_MAX_TILE 16 ", "#define STL_MAX_TILE 32 ",
     ["tests/test_module.py", "tests/test_convert.py", "tests/test_bad_input.py"]),
]


# ===================================================================================================
# --- bfloat16 kernels of the avx512bf16 level (csrc/cpu/isa_avx512bf16.c, branch bf16-kernels).
# Kept as one block after the list so that the list above can be re-anchored independently. They
# run where the CPU has AVX512-BF16 (elsewhere tests/test_bf16.py skips them: MISSED there).
BF16_TESTS = ["tests/test_bf16.py"]
STEP_TESTS = ["tests/test_decode_cache.py", "-k", "kernel or step_op"]
BF16_FILE = "csrc/cpu/isa_avx512bf16.c"
MUTANTS += [
    # (caught on an AVX512-BF16 CPU without AMX; on an AMX CPU the amx level is chosen above it: MISSED there)
    ("bf16-level-never-chosen", "csrc/cpu/dispatch.c", None, ": &stl_cpu_isa_avx512bf16;", ": &stl_cpu_isa_avx512;",
     BF16_TESTS),
    ("amx-level-never-chosen", "csrc/cpu/dispatch.c", None, ": amx_usable()", ": 0", BF16_TESTS),
    # the AMX level's own (caught where the CPU has AMX tiles: elsewhere MISSED)
    ("amx-dec-no-nonfinite-fallback", BF16_FILE, None, "if (zero) bad |= nonfinite(v);", "(void)zero;", BF16_TESTS),
    ("amx-enc-no-nonfinite-fallback", BF16_FILE, None, "for (int q = 0; q < 8; q++) bad |= nonfinite(xp[q]);", ";",
     BF16_TESTS),
    ("amx-dec-second-pair-chunk-lost", BF16_FILE, None, "_tile_dpbf16ps(C, 3, B);", ";", BF16_TESTS),
    ("amx-enc-fourth-product-chunk-lost", BF16_FILE, None, "_tile_dpbf16ps(5, 4, 0);", ";", BF16_TESTS),
    ("amx-dec-pipeline-not-drained", BF16_FILE, None, "  if (mul.I >= 0) dec_write(p, c[s ^ 1], mul);", "", BF16_TESTS),
    ("step-dp-column-order", "csrc/cpu/step_isa.inc", None,
     "const __m512i i1 = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);",
     "const __m512i i1 = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 9);", STEP_TESTS),
    ("step-dp-pair-word", "csrc/cpu/step_isa.inc", None, "(uint32_t)stl_f32_to_bf16((float)o[K + 1]) << 16",
     "(uint32_t)stl_f32_to_bf16((float)o[K]) << 16", STEP_TESTS),
    ("step-dp-block-offset", "csrc/cpu/step_isa.inc", None, "for (int s = 0; s < sb; s++) d[s] = dst[s] + J;",
     "for (int s = 0; s < sb; s++) d[s] = dst[s];", STEP_TESTS),
    ("amx-corr-final-flush-lost", BF16_FILE, None, "    if (mul.I >= 0) corr_multiply(p, mul, b[s ^ 1], abuf);\n    corr_flush(r, accq);",
     "    if (mul.I >= 0) corr_multiply(p, mul, b[s ^ 1], abuf);", BF16_TESTS),
    ("amx-corr-pair-rows", BF16_FILE, None, "_mm512_store_si512(b[s] + 16 * (4 * g + i), xp[i]);",
     "_mm512_store_si512(b[s] + 16 * (4 * i + g), xp[i]);", BF16_TESTS),
    ("amx-enc-pipeline-slot", BF16_FILE, None, "if (wr.I >= 0) enc_write(p, c[s], wr);\n      wr = mul;",
     "if (wr.I >= 0) enc_write(p, c[s ^ 1], wr);\n      wr = mul;", BF16_TESTS),
    ("bf16-enc-odd-pair-lost", BF16_FILE, None, "xp[2 * a + 1] = _mm512_permutex2var_epi32(lo, odd, hi);",
     "xp[2 * a + 1] = _mm512_permutex2var_epi32(lo, even, hi);", BF16_TESTS),
    # (the load masks of a short chunk only keep reads inside x: lanes past it are never stored, so
    # widening them is invisible; the store mask is what keeps a short chunk out of the next rows)
    ("bf16-enc-store-mask", BF16_FILE, None, "const __mmask16 mo = nt >= 16 ? 0xffff : (__mmask16)((1u << nt) - 1);",
     "const __mmask16 mo = 0xffff;", BF16_TESTS),
    ("bf16-keep-mask-odd-half", BF16_FILE, None, "(c1 != 0 ? 0xffff0000u : 0)", "0xffff0000u", BF16_TESTS),
    ("bf16-enc-extra-ignored", BF16_FILE, None, "acc[k] = k < lb && extra ?", "acc[k] = k < lb && !extra ?", BF16_TESTS),
    ("bf16-dec-pair-partner", BF16_FILE, None, "ix[2 * i + 1] = (uint16_t)(16 + 4 * (i % 4) + i / 4);",
     "ix[2 * i + 1] = (uint16_t)(4 * (i % 4) + i / 4);", BF16_TESTS),
    ("bf16-dec-bias-offset", BF16_FILE, None, "const float *bp = bias + 4 * J0;", "const float *bp = bias;", BF16_TESTS),
    ("bf16-dec-zero-path-never", BF16_FILE, None,
     "  if (zero) decode_rows(p, i0, i1, pw, keep, 1);", "  if (0) decode_rows(p, i0, i1, pw, keep, 1);",
     BF16_TESTS),
    ("bf16-corr-odd-tile-reads-next", BF16_FILE, None, "else w = ar[k * ps + K];", "else memcpy(&w, ar + k * ps + K, 4);",
     BF16_TESTS),
    ("bf16-corr-flush-overwrites", BF16_FILE, None, "out[(int64_t)(l0 + k) * 16 + j] += (double)v[j];",
     "out[(int64_t)(l0 + k) * 16 + j] = (double)v[j];", BF16_TESTS),
    ("bf16-corr-lane-transpose", BF16_FILE, None, "xp[3] = _mm512_shuffle_epi8(_mm512_shuffle_i64x2(t2, t3, 0xdd), pat);",
     "xp[3] = _mm512_shuffle_epi8(_mm512_shuffle_i64x2(t2, t3, 0x88), pat);", BF16_TESTS),
    ("bf16-colsum-second-half", BF16_FILE, None, "const __m512i a = _mm512_maskz_loadu_epi16(m0, row), b = _mm512_maskz_loadu_epi16(m1, row + 32);",
     "const __m512i a = _mm512_maskz_loadu_epi16(m0, row), b = _mm512_maskz_loadu_epi16(m1, row);", BF16_TESTS),
]


def _c_body(text, func):
    """(start, end) of each definition of C function `func` in text: its line at column 0 up to the
    first line starting with '}' (prototypes, calls and macros are not definitions)."""
    spans = []
    for mm in re.finditer(r"(?m)^[A-Za-z_][^\n]*?(?<![\w>.])" + re.escape(func) + r"\(", text):
        semi, brace = text.find(";", mm.end()), text.find("{", mm.end())
        if brace < 0 or 0 <= semi < brace:
            continue
        end = text.find("\n}", brace)
        spans.append((mm.start(), len(text) if end < 0 else end + 2))
    return spans


def _py_body(text, func):
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"] + [len(text)]
    return [(starts[n.lineno - 1], starts[min(n.end_lineno, len(starts) - 1)]) for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func]


def _bodies(rel, text, func):
    if func is None:
        return [(0, len(text))]
    return (_py_body if rel.endswith(".py") else _c_body)(text, func)


def locate(root, rel, func, old):
    """(file, start, end) of the one occurrence of `old` in the body of `func` in rel, or, when rel no
    longer defines func, in the one file of rel's tree (csrc/, stl_torch/) that does. Raises
    LookupError saying why otherwise."""
    path = os.path.join(root, rel)
    text = open(path).read() if os.path.exists(path) else ""
    spans = _bodies(rel, text, func)
    if not spans and func is not None:
        tree = rel.split("/")[0]
        exts = (".py",) if rel.endswith(".py") else (".c", ".h", ".inc", ".cu", ".cuh")
        found = []
        for d, _, names in os.walk(os.path.join(root, tree)):
            for n in sorted(names):
                if n.endswith(exts):
                    r = os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                    found += [(r, sp) for sp in _bodies(r, open(os.path.join(root, r)).read(), func)]
        if len(found) != 1:
            raise LookupError(f"function {func} defined {len(found)} times under {tree}/")
        rel, spans = found[0][0], [found[0][1]]
        text = open(os.path.join(root, rel)).read()
    if len(spans) != 1:
        raise LookupError(f"function {func} defined {len(spans)} times in {rel}")
    a, b = spans[0]
    n = text.count(old, a, b)
    if n != 1:
        raise LookupError(f"pattern found {n} times in {func or 'the whole file'} of {rel}")
    i = text.index(old, a, b)
    return rel, i, i + len(old)


def sh(cmd, cwd, env=None, timeout=1800):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def scratch_copy(dst):
    """A copy of the working tree (tracked and untracked files, no build outputs)."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    files = sh(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    for f in files:
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, f))


def build(work):
    r = sh([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"], work,
           env=dict(os.environ, STL_TORCH_CUDA="0"))
    return r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated substrings of mutant ids")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "mutants", "work"))
    a = ap.parse_args()
    chosen = [m for m in MUTANTS if not a.only or any(s in m[0] for s in a.only.split(","))]
    if a.list:
        for m in chosen:
            print(f"{m[0]:32s} {m[1]}:{m[2] or ''}")
        return
    os.makedirs(os.path.dirname(a.work), exist_ok=True)
    scratch_copy(a.work)
    ok, log = build(a.work)
    if not ok:
        sys.exit("the unmutated scratch copy does not build:\n" + log)
    env = dict(os.environ, PYTHONPATH=a.work, PYTHONDONTWRITEBYTECODE="1")
    results = []
    for mid, rel, func, old, new, tests in chosen:
        try:
            rel, i, j = locate(a.work, rel, func, old)
        except LookupError as e:
            results.append({"id": mid, "file": rel, "status": f"STALE ({e})"})
            print(f"{mid:32s} STALE: {e}", flush=True)
            continue
        path = os.path.join(a.work, rel)
        text = open(path).read()
        t0 = time.time()
        open(path, "w").write(text[:i] + new + text[j:])
        try:
            status = ""
            if rel.endswith((".c", ".h", ".inc")) and "cuda" not in rel:
                ok, log = build(a.work)
                if not ok:
                    status = "caught (does not compile)"
            if not status:
                status = "MISSED"
                for bb in (None, *(SMALL_BLOCKS if tests is KERNEL_TESTS else ())):
                    e = dict(env, **({"STL_TORCH_CPU_BLOCK_BYTES": str(bb)} if bb else {}))
                    r = sh([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], a.work, env=e)
                    if r.returncode != 0:
                        status = "caught" + (f" (blocks of {bb} bytes)" if bb else "")
                        break
        finally:
            open(path, "w").write(text)
        results.append({"id": mid, "file": rel, "status": status, "tests": tests, "seconds": round(time.time() - t0, 1)})
        print(f"{mid:32s} {status:28s} {time.time() - t0:6.0f}s  {rel}", flush=True)
    if any(r["file"].endswith((".c", ".h", ".inc")) for r in results):
        build(a.work)  # leave the scratch copy unmutated
    valid = [r for r in results if not r["status"].startswith("STALE")]
    caught = sum(r["status"].startswith("caught") for r in valid)
    score = caught / len(valid) if valid else float("nan")
    print(f"\nmutation score: {caught}/{len(valid)} caught ({100 * score:.0f}%)"
          + (f"; {len(results) - len(valid)} stale" if len(results) > len(valid) else ""))
    out = os.path.join(os.path.dirname(a.work), "results.json")
    with open(out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "score": score, "caught": caught, "total": len(valid),
                   "mutants": results}, f, indent=1)
    print(f"wrote {out}")
    sys.exit(0 if score >= 0.95 else 1)


if __name__ == "__main__":
    main()
