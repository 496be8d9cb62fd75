// kiln/pdl.cuh — programmatic dependent launch (sm_90+). A PDL kernel calls pdl_wait() before
// its first read of a predecessor's output and before its first write of memory a predecessor may
// still read, and pdl_launch_dependents() once its own reads are issued. Launched without the PDL
// attribute (or on older GPUs), both are no-ops. (cudaGridDependencySynchronize is not available
// under NVRTC; these are the PTX instructions it wraps.)
#pragma once
#include <kiln/common.cuh>

namespace kiln {

template <bool kUsePDL>
KILN_DEVICE void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kUsePDL) asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

template <bool kUsePDL>
KILN_DEVICE void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kUsePDL) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Before pdl_wait(): warms L2 with `bytes` (a multiple of 16) from the 16-byte aligned global
// address `ptr`, so that the DRAM latency of the kernel's first reads overlaps its predecessor's
// tail instead of following it. A prefetch changes no data the kernel sees: L2 is the GPU's point
// of coherence, so the reads after the wait still see every write of the predecessor. A no-op
// without PDL (nothing to overlap) and before sm_90.
template <bool kUsePDL>
KILN_DEVICE void pdl_prefetch_l2(const void* ptr, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kUsePDL) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(__cvta_generic_to_global(ptr)), "r"(bytes) : "memory");
  }
#endif
}

// The same for the one L2 line holding `ptr` (any alignment).
template <bool kUsePDL>
KILN_DEVICE void pdl_prefetch_line(const void* ptr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kUsePDL) asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(ptr)) : "memory");
#endif
}

}  // namespace kiln
