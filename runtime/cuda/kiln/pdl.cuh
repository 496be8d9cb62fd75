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

}  // namespace kiln
