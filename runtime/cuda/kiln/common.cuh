// kiln/common.cuh — base of the device prelude: the toolkit's 16-bit and 8-bit float types,
// fixed-width integer names and small helpers. Device-only and NVRTC-clean: no host headers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#define KILN_DEVICE __device__ __forceinline__

namespace kiln {

using i32 = int;
using u32 = unsigned int;
using i64 = long long;
using u64 = unsigned long long;
using u8 = unsigned char;

template <typename T>
KILN_DEVICE constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Global thread index in 64 bits: grids of 2^31 blocks × 1024 threads overflow 32 bits.
KILN_DEVICE i64 global_thread_id() {
  return static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
}

}  // namespace kiln
