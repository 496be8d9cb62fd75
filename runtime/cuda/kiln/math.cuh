// kiln/math.cuh — math helpers whose rounding does not depend on the fast-math flags: the
// `__f*_rn` intrinsics are IEEE round-to-nearest whatever `--prec-div/--prec-sqrt/--ftz` say, so
// a CPU reference can reproduce them exactly.
#pragma once
#include <kiln/common.cuh>

namespace kiln {

// 1 / sqrt(x) as RN(1 / RN(sqrt(x))): two IEEE roundings, reproducible on any CPU. The IEEE
// reciprocal is the same rounding as the IEEE division of 1, with a shorter fast path.
KILN_DEVICE float rsqrt_rn(float x) {
  return __frcp_rn(__fsqrt_rn(x));
}

KILN_DEVICE float div_rn(float a, float b) {
  return __fdiv_rn(a, b);
}

// Fast 2^x (MUFU.EX2, ~2 ulp; flushes subnormal results).
KILN_DEVICE float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Fast reciprocal (MUFU.RCP, ~1 ulp).
KILN_DEVICE float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace kiln
