// mxfp8/tma.cuh — the asynchronous-copy primitives the sm_90+ kernels of kiln-mxfp8 share (the
// TMA quantizer, the wgmma and tcgen05 GEMMs): mbarriers, proxy fences, TMA tensor and bulk copies
// into shared memory, and the opaque tensor-map type. Shared-memory operands are 32-bit
// shared-window addresses (__cvta_generic_to_shared). Only sm_90+ code may call these.
#pragma once
#include <kiln/common.cuh>

namespace mxfp8 {

using kiln::u32;
using kiln::u64;

// A CUtensorMap, opaque to device code (128 bytes, 128-byte aligned as in CUDA 13's cuda.h).
struct alignas(128) TmaDesc {
  u64 opaque[16];
};

KILN_DEVICE void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
KILN_DEVICE void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
KILN_DEVICE void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits until the phase with this parity has completed.
KILN_DEVICE void mbar_wait(u32 bar, u32 parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
KILN_DEVICE void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Orders this thread's earlier generic-proxy global accesses before its later async-proxy (TMA)
// accesses: used after griddepcontrol.wait, so that TMA reads see a predecessor's writes.
KILN_DEVICE void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// 2-D TMA tile load (box from the tensor map) into shared memory, completing on `bar`.
KILN_DEVICE void tma_load_2d(u32 dst, const void* tmap, u32 bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
      "l"(tmap), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
// 1-D bulk copy of `bytes` (multiple of 16, 16-byte aligned both sides), completing on `bar`.
KILN_DEVICE void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst), "l"(src),
               "r"(bytes), "r"(bar)
               : "memory");
}
// 2-D TMA prefetch of a box into L2 (no shared memory, no completion).
KILN_DEVICE void tma_prefetch_2d(const void* tmap, int c0, int c1) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global.tile [%0, {%1, %2}];\n" ::"l"(tmap), "r"(c0), "r"(c1) : "memory");
}
KILN_DEVICE void prefetch_tmap(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(tmap) : "memory");
}

}  // namespace mxfp8
