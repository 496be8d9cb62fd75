// kiln/convert.cuh — exact widening to f32 and round-to-nearest-even narrowing from f32, for
// f32, f16 and bf16 storage; FP8 E4M3 (saturating) and E8M0 scale bytes.
#pragma once
#include <kiln/common.cuh>

namespace kiln {

// Widening is exact for every supported type.
template <typename T>
KILN_DEVICE float to_f32(T x);
template <>
KILN_DEVICE float to_f32<float>(float x) {
  return x;
}
template <>
KILN_DEVICE float to_f32<__half>(__half x) {
  return __half2float(x);
}
template <>
KILN_DEVICE float to_f32<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// Narrowing rounds to nearest, ties to even; overflow gives ±inf (IEEE), NaN stays NaN.
template <typename T>
KILN_DEVICE T from_f32(float x);
template <>
KILN_DEVICE float from_f32<float>(float x) {
  return x;
}
template <>
KILN_DEVICE __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
KILN_DEVICE __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// f32(RN_T(x)): the value x takes after one rounding to T (models "cast to dtype" in PyTorch).
template <typename T>
KILN_DEVICE float round_to(float x) {
  return to_f32<T>(from_f32<T>(x));
}

// FP8 E4M3 ("fn"): round to nearest even, saturate finite overflow and ±inf to ±448, NaN → 0x7F.
KILN_DEVICE u8 f32_to_e4m3_sat(float x) {
  return static_cast<u8>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

KILN_DEVICE float e4m3_to_f32(u8 b) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
  return __half2float(__half(h));
}

// E8M0: 2^(e − 127); e = 0 is 2^-127 (an fp32 subnormal), e = 255 is NaN.
KILN_DEVICE float e8m0_to_f32(u8 e) {
  if (e == 0) return __uint_as_float(0x00400000u);
  if (e == 255) return __uint_as_float(0x7fffffffu);
  return __uint_as_float(static_cast<u32>(e) << 23);
}

}  // namespace kiln
