// kiln/reduce.cuh — warp and CTA reductions. The butterfly (xor 16, 8, 4, 2, 1) leaves the same
// total in every lane, and every warp reduces the per-warp partials in the same order, so every
// thread of a CTA gets a bit-identical result.
#pragma once
#include <kiln/common.cuh>

namespace kiln {

KILN_DEVICE float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

KILN_DEVICE float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a group of kLanes consecutive lanes (kLanes a power of two ≤ 32); every lane of the
// group gets the group's total.
template <int kLanes>
KILN_DEVICE float group_sum(float v) {
  static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "kLanes: power of two ≤ 32");
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct SumOp {
  KILN_DEVICE float operator()(float a, float b) const { return a + b; }
  KILN_DEVICE float warp(float v) const { return warp_sum(v); }
  KILN_DEVICE static float identity() { return 0.0f; }
};
struct MaxOp {
  KILN_DEVICE float operator()(float a, float b) const { return fmaxf(a, b); }
  KILN_DEVICE float warp(float v) const { return warp_max(v); }
  KILN_DEVICE static float identity() { return __int_as_float(0xff800000u); }  // -inf
};

// CTA-wide reduction for a block of kWarps full warps; `smem` holds at least kWarps floats. Every
// thread returns the result. Ends with a barrier, so `smem` may be reused right after.
template <int kWarps, typename Op>
KILN_DEVICE float block_reduce(float v, float* smem, Op op) {
  static_assert(kWarps >= 1 && kWarps <= 32, "1..32 warps");
  v = op.warp(v);
  if (kWarps == 1) return v;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float t = lane < kWarps ? smem[lane] : Op::identity();
  t = op.warp(t);
  __syncthreads();
  return t;
}

template <int kWarps>
KILN_DEVICE float block_sum(float v, float* smem) {
  return block_reduce<kWarps>(v, smem, SumOp{});
}

template <int kWarps>
KILN_DEVICE float block_max(float v, float* smem) {
  return block_reduce<kWarps>(v, smem, MaxOp{});
}

}  // namespace kiln
