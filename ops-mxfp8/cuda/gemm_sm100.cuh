// gemm_sm100.cuh — grouped MXFP8 GEMM for Blackwell (sm_100a): tcgen05 block-scaled MMA with the
// scales in tensor memory. NOT YET RUN ON HARDWARE: it compiles in T1 and its PTX is snapshotted;
// the semantics (math, layouts, tile order) are those of mxfp8/gemm_common.cuh.
//
// Swap-AB (as SGLang's SM100 kernel): the MMA M side (A, 128 rows) is the weights, the N side
// (B, 128 rows) the tokens of one expert; D (128 × 128 f32) lives in tensor memory. Per K-stage of
// 128: TMA brings both tiles (128-byte swizzle) and the two 512-byte scale atoms into a kStages
// ring (full[s]); the MMA thread copies each atom to tensor memory with one
// tcgen05.cp.32x128b.warpx4 (a 128×4 atom is 4 TMEM columns: lane r%32 of each quadrant, column
// r/32, byte kb%4), then issues 4 × tcgen05.mma.kind::mxf8f6f4.block_scale (K = 32, scale byte
// selected by the instruction descriptor's scale-factor ids) and commits to empty[s]; after the
// last stage it commits to acc_full. The hardware applies both scales exactly; accumulation is
// fp32 in tensor memory.
//
// Parameters: TmaParams (tokens box {128, 128}). Launch: persistent grid (≤ #SMs CTAs) of 192
// threads, one CTA per SM. Warp 0 lane 0: TMA producer. Warp 1: allocates 256 TMEM columns
// (accumulator 0..127, scales 128 + 8s … per slot), lane 0 issues copies and MMAs, frees TMEM at
// the end. Warps 2-5: epilogue, warp w reads TMEM lanes 32·(w % 4) … (weight rows) with
// tcgen05.ld.32x32b, rounds once (RN) to bf16/f16 and stores token rows below the expert's end
// (coalesced across lanes: consecutive output features), then releases the accumulator
// (acc_empty). PDL: griddepcontrol.wait before the first global access, launch_dependents at the
// end.
#pragma once
#include <kiln/common.cuh>
#include <kiln/convert.cuh>
#include <kiln/pdl.cuh>
#include <mxfp8/gemm_common.cuh>

namespace mxfp8 {
namespace gemm {

template <int kStages>
struct Sm100Tile {
  enum : int {
    kTok = 128,  // token rows per tile (MMA N)
    kABytes = kBW * kBK,
    kBBytes = kTok * kBK,
    kStageBytes = kABytes + kBBytes + 2 * kAtomBytes,
    kTmemCols = 256,
    kBarBytes = ((2 * kStages + 2) * 8 + 15) & ~15,
  };
  static_assert(128 + 8 * kStages <= kTmemCols, "scale columns fit");
  static_assert(kStageBytes % 1024 == 0, "1024-byte aligned tiles");
};

template <int kStages>
KILN_DEVICE constexpr int sm100_smem_bytes(int experts) {
  return 1024 + kStages * Sm100Tile<kStages>::kStageBytes + Sm100Tile<kStages>::kBarBytes + 16 + table_bytes(experts);
}

// Shared-memory descriptor (tcgen05 format): K-major, 128-byte swizzle, 8-row groups 1024 apart.
KILN_DEVICE u64 umma_desc_sw128(u32 addr) {
  return static_cast<u64>((addr & 0x3ffff) >> 4) | (static_cast<u64>(1) << 16) | (static_cast<u64>(1024 >> 4) << 32) |
         (static_cast<u64>(1) << 46) | (static_cast<u64>(2) << 61);
}
// Descriptor of one 512-byte scale atom for tcgen05.cp: 32 rows of 16 bytes, no swizzle.
KILN_DEVICE u64 umma_desc_sf(u32 addr) {
  return static_cast<u64>((addr & 0x3ffff) >> 4) | (static_cast<u64>(128 >> 4) << 32) | (static_cast<u64>(1) << 46);
}
// Instruction descriptor: kind::mxf8f6f4, A = B = E4M3 (K-major), D = F32, scales UE8M0, M = 128,
// N = 128, K = 32; the scale-factor ids (bits 4-5 for B, 29-30 for A) pick byte j of each 32-bit
// scale word (K-block 4·stage + j).
KILN_DEVICE u32 umma_idesc(int j) {
  return (static_cast<u32>(128 >> 3) << 17) | (1u << 23) | (static_cast<u32>(128 >> 4) << 24) | (static_cast<u32>(j) << 4) |
         (static_cast<u32>(j) << 29);
}

KILN_DEVICE void tc_fence_before() {
  asm volatile("tcgen05.fence::before_thread_sync;\n" ::: "memory");
}
KILN_DEVICE void tc_fence_after() {
  asm volatile("tcgen05.fence::after_thread_sync;\n" ::: "memory");
}
KILN_DEVICE void tc_commit(u32 bar) {
  asm volatile("tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64 [%0];\n" ::"r"(bar) : "memory");
}
KILN_DEVICE void tc_copy_scales(u32 taddr, u64 desc) {
  asm volatile("tcgen05.cp.cta_group::1.32x128b.warpx4 [%0], %1;\n" ::"r"(taddr), "l"(desc) : "memory");
}
KILN_DEVICE void tc_mma_mx(u32 d, u64 a, u64 b, u32 idesc, u32 sfa, u32 sfb, int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %4, 0;\n"
      "tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale [%0], %1, %2, %3, [%5], [%6], p;\n"
      "}\n" ::"r"(d),
      "l"(a), "l"(b), "r"(idesc), "r"(accumulate), "r"(sfa), "r"(sfb)
      : "memory");
}
KILN_DEVICE void tc_load32(u32 taddr, float (&v)[32]) {
  asm volatile(
      "tcgen05.ld.sync.aligned.32x32b.x32.b32 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
      "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, [%32];\n"
      : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]), "=f"(v[4]), "=f"(v[5]), "=f"(v[6]), "=f"(v[7]), "=f"(v[8]), "=f"(v[9]),
        "=f"(v[10]), "=f"(v[11]), "=f"(v[12]), "=f"(v[13]), "=f"(v[14]), "=f"(v[15]), "=f"(v[16]), "=f"(v[17]), "=f"(v[18]),
        "=f"(v[19]), "=f"(v[20]), "=f"(v[21]), "=f"(v[22]), "=f"(v[23]), "=f"(v[24]), "=f"(v[25]), "=f"(v[26]), "=f"(v[27]),
        "=f"(v[28]), "=f"(v[29]), "=f"(v[30]), "=f"(v[31])
      : "r"(taddr)
      : "memory");
  asm volatile("tcgen05.wait::ld.sync.aligned;\n" ::: "memory");
}

template <typename TOut, int kStages, bool kPdl>
__global__ void __launch_bounds__(192, 1) mxfp8_grouped_gemm_sm100(const __grid_constant__ TmaParams prm) {
  using C = Sm100Tile<kStages>;
  const GemmArgs& p = prm.args;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
  unsigned char* ring = base;
  const u32 full0 = smem_addr(base + kStages * C::kStageBytes);
  const u32 empty0 = full0 + 8 * kStages;
  const u32 acc_full = empty0 + 8 * kStages;
  const u32 acc_empty = acc_full + 8;
  u32* tmem_slot = reinterpret_cast<u32*>(base + kStages * C::kStageBytes + C::kBarBytes);
  unsigned char* table = base + kStages * C::kStageBytes + C::kBarBytes + 16;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  require_smem(sm100_smem_bytes<kStages>(p.experts));
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, 1);
    }
    mbar_init(acc_full, 1);
    mbar_init(acc_empty, 128);
    fence_barrier_init();
    prefetch_tmap(&prm.tokens_map);
    prefetch_tmap(&prm.weights_map);
  }
  if (warp == 1) {
    asm volatile("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%0], %1;\n" ::"r"(smem_addr(tmem_slot)), "n"(static_cast<int>(C::kTmemCols))
                 : "memory");
    asm volatile("tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;\n" ::: "memory");
  }
  kiln::pdl_wait<kPdl>();
  Expert* experts;
  i64* ends;
  tc_fence_before();
  const i64 total = build_tiles<192, Sm100Tile<kStages>::kTok>(p, table, experts, ends);  // synchronises the CTA
  tc_fence_after();
  const u32 tmem = *tmem_slot;

  const int nkb = p.k / 32;
  const int num_kt = p.k / kBK;
  const i64 N = p.n;
  TileWalker<C::kTok> walk(experts, ends, total, p.n);
  Tile tile;

  if (warp == 0) {
    if (lane == 0) {
      if constexpr (kPdl) fence_proxy_async_global();
      u32 it = 0;
      while (walk.next(tile)) {
        const int tok0 = tile.mt * C::kTok;
        const i64 wrow = static_cast<i64>(tile.g) * N + static_cast<i64>(tile.nt) * kBW;
        const u8* tok_atoms = p.token_scales + atom_offset(static_cast<i64>(tile.e.srow0) + tok0, 0, nkb);
        const u8* w_atoms = p.weight_scales + atom_offset(wrow, 0, nkb);
        for (int kt = 0; kt < num_kt; ++kt, ++it) {
          const u32 slot = it % kStages;
          mbar_wait(empty0 + 8 * slot, ((it / kStages) & 1) ^ 1);
          const u32 full = full0 + 8 * slot;
          const u32 st = smem_addr(ring + slot * C::kStageBytes);
          mbar_arrive_expect_tx(full, C::kStageBytes);
          tma_load_2d(st, &prm.weights_map, full, kt * kBK, static_cast<int>(wrow));
          tma_load_2d(st + C::kABytes, &prm.tokens_map, full, kt * kBK, tile.e.row0 + tok0);
          bulk_load(st + C::kABytes + C::kBBytes, w_atoms + static_cast<i64>(kt) * kAtomBytes, kAtomBytes, full);
          bulk_load(st + C::kABytes + C::kBBytes + kAtomBytes, tok_atoms + static_cast<i64>(kt) * kAtomBytes, kAtomBytes, full);
        }
      }
    }
  } else if (warp == 1) {
    if (lane == 0) {
      u32 it = 0;
      u32 tiles = 0;
      while (walk.next(tile)) {
        mbar_wait(acc_empty, (tiles & 1) ^ 1);
        tc_fence_after();
        for (int kt = 0; kt < num_kt; ++kt, ++it) {
          const u32 slot = it % kStages;
          mbar_wait(full0 + 8 * slot, (it / kStages) & 1);
          tc_fence_after();
          const u32 st = smem_addr(ring + slot * C::kStageBytes);
          const u32 sfa = tmem + 128 + 8 * slot;
          const u32 sfb = sfa + 4;
          tc_copy_scales(sfa, umma_desc_sf(st + C::kABytes + C::kBBytes));
          tc_copy_scales(sfb, umma_desc_sf(st + C::kABytes + C::kBBytes + kAtomBytes));
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            tc_mma_mx(tmem, umma_desc_sw128(st + 32 * j), umma_desc_sw128(st + C::kABytes + 32 * j), umma_idesc(j), sfa, sfb,
                      (kt | j) != 0);
          }
          tc_commit(empty0 + 8 * slot);
        }
        tc_commit(acc_full);
        ++tiles;
      }
    }
  } else {
    // Epilogue: warp w owns TMEM lanes (weight rows) 32·(w % 4) … + 31.
    const int quad = warp & 3;
    u32 tiles = 0;
    TOut* out = static_cast<TOut*>(p.out);
    while (walk.next(tile)) {
      mbar_wait(acc_full, tiles & 1);
      tc_fence_after();
      const int tok0 = tile.mt * C::kTok;
      const i64 j = static_cast<i64>(tile.nt) * kBW + 32 * quad + lane;
#pragma unroll 1
      for (int c = 0; c < C::kTok / 32; ++c) {
        float v[32];
        tc_load32(tmem + (static_cast<u32>(32 * quad) << 16) + 32 * c, v);
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          const int t = tok0 + 32 * c + i;
          if (t < tile.e.rows) out[(static_cast<i64>(tile.e.row0) + t) * N + j] = kiln::from_f32<TOut>(v[i]);
        }
      }
      tc_fence_before();
      mbar_arrive(acc_empty);
      ++tiles;
    }
  }
  kiln::pdl_launch_dependents<kPdl>();
  tc_fence_before();
  __syncthreads();
  if (warp == 1) {
    tc_fence_after();
    asm volatile("tcgen05.dealloc.cta_group::1.sync.aligned.b32 %0, %1;\n" ::"r"(tmem), "n"(static_cast<int>(C::kTmemCols)) : "memory");
  }
}

}  // namespace gemm
}  // namespace mxfp8
