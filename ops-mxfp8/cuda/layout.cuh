// mxfp8/layout.cuh — MXFP8 facts shared by every kernel of kiln-mxfp8 (quantization now, the
// grouped GEMM later): the block size, the E8M0 scale rule and the two scale layouts. The Rust
// twin of this file is ops-mxfp8/src/layout.rs (same names, same formulas); change both together.
//
// MXFP8: K is cut into blocks of 32 consecutive elements of one row; each block has one E8M0
// scale byte S (value 2^(S − 127)) and 32 E4M3 elements q, so x ≈ e4m3(q) · 2^(S − 127).
//
// Scale rule (RCEIL, exact): e = ceil(log2(amax / 448)) clamped to [−127, 127], S = e + 127,
// where amax is the largest |x| over the block's *finite* elements (0 when there are none).
// Computed from amax's f32 bits with integer arithmetic: for amax = 1.m · 2^E (biased exponent
// field b = E + 127), amax / 448 = (1.m / 1.75) · 2^(E − 8) and 1.m / 1.75 lies in [0.57, 1.15),
// so e = E − 8 when 1.m ≤ 1.75 (mantissa field ≤ 0x600000) and E − 7 above. A zero or subnormal
// amax, and every amax ≤ 448 · 2^-127, gives the clamp e = −127; the top clamp never binds for a
// finite f32 amax (e ≤ 120). Elements are then q = RN_sat_e4m3(x · 2^-e): 2^-e is built from bits
// (a normal f32 for every e in [−127, 120]), so the product is exact unless it falls below the
// f32 normal range, where E4M3 rounds it to ±0 anyway; |x · 2^-e| ≤ 448 for every finite x.
//
// Layouts of the scale bytes, for a scale row `srow` (a row of the scale tensor) and a K-block
// `kb` (0 ≤ kb < nkb = K / 32):
//  - kRowMajor: srow · nkb + kb.
//  - kBlocked ("128×4", what cuBLAS/CUTLASS block-scaled GEMMs read): atoms of 128 rows × 4
//    K-blocks, 512 bytes each, row-major over (srow / 128, kb / 4); inside an atom the byte is
//    (srow % 32) · 16 + ((srow / 32) % 4) · 4 + kb % 4. Needs nkb % 4 == 0 (K % 128 == 0) and a
//    scale tensor of whole 128-row groups.
#pragma once
#include <kiln/common.cuh>

namespace mxfp8 {

using kiln::i64;
using kiln::u32;
using kiln::u64;
using kiln::u8;

// Enumerators rather than constexpr variables: NVRTC would emit those as globals with
// per-compilation mangled names.
enum : int {
  kBlock = 32,       // elements per scale
  kAtomRows = 128,   // rows of one 128×4 atom
  kAtomKBlocks = 4,  // K-blocks of one atom
  kAtomBytes = 512,  // bytes of one atom
};

enum ScaleLayout : int { kBlocked = 0, kRowMajor = 1 };

// Byte offset of scale (srow, kb) in the 128×4 blocked layout; nkb = K / 32 (a multiple of 4).
KILN_DEVICE i64 blocked_offset(i64 srow, i64 kb, i64 nkb) {
  const i64 atom = (srow / kAtomRows) * (nkb / kAtomKBlocks) + kb / kAtomKBlocks;
  return atom * kAtomBytes + (srow % 32) * 16 + ((srow / 32) % 4) * 4 + kb % kAtomKBlocks;
}

KILN_DEVICE i64 row_major_offset(i64 srow, i64 kb, i64 nkb) {
  return srow * nkb + kb;
}

KILN_DEVICE i64 scale_offset(int layout, i64 srow, i64 kb, i64 nkb) {
  return layout == kBlocked ? blocked_offset(srow, kb, nkb) : row_major_offset(srow, kb, nkb);
}

// The RCEIL scale exponent e ∈ [−127, 120] of a finite amax ≥ 0 given by its f32 bits.
KILN_DEVICE int scale_exponent(u32 amax_bits) {
  const int biased = static_cast<int>(amax_bits >> 23);
  const int e = biased - 127 - 8 + ((amax_bits & 0x7fffffu) > 0x600000u ? 1 : 0);
  return e < -127 ? -127 : e;
}

// 2^-e as an exact f32 (e ∈ [−127, 120] ⇒ 127 − e ∈ [7, 254]: always a normal number).
KILN_DEVICE float inv_scale(int e) {
  return __uint_as_float(static_cast<u32>(127 - e) << 23);
}

// The E8M0 byte of exponent e.
KILN_DEVICE u8 scale_byte(int e) {
  return static_cast<u8>(e + 127);
}

}  // namespace mxfp8
