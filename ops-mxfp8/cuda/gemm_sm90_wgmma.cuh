// gemm_sm90_wgmma.cuh — grouped MXFP8 GEMM, the fast Hopper kernel (sm_90a: wgmma, TMA,
// setmaxnreg). Math, scale layouts and tile order: mxfp8/gemm_common.cuh.
//
// Per 32-element K-block (one scale block) a consumer warpgroup issues one
// wgmma.m64nNk32.f32.e4m3.e4m3 with scale-d = 0 into a temporary accumulator and promotes it:
// acc += tmp · (sa_row · sb_col), one FMUL + one FFMA per element, K in order; the output is
// rounded once (RN) to bf16/f16. K-blocks go in pairs: wgmma(t0), wgmma(t1), wait ≤ 1 pending,
// promote t0 while t1 runs, wait 0, promote t1 (the pattern ptxas keeps asynchronous; promoting
// t(j) while issuing into t(j-1) makes it serialize every wgmma: C7514). The two consumer
// warpgroups fill each other's waits. kSwap = false (prefill): the wgmma M side is the tokens
// (tile 128 tokens × 128 weights, n128). kSwap = true (decode, swap-AB): the M side is the
// weights (tile 128 weights × kBT tokens, n = kBT), so a few tokens per expert waste little.
//
// Launch: persistent grid (≤ #SMs CTAs) of 384 threads = 3 warpgroups, one CTA per SM.
//  - warpgroup 0 (setmaxnreg 40): lane 0 of warp 0 streams K-stages of 128 into a kStages ring:
//    A and B tiles by TMA (128-byte swizzle, the layout the wgmma descriptors name) and the two
//    512-byte scale atoms by 1-D bulk copies, all completing on full[s]; warps 1-2 decode each
//    stage's scale bytes into f32 (A rows paired (r, r+8), B columns permuted so that a thread's
//    columns are one 16-byte load per pair of n8 blocks) and arrive on dec[s].
//  - warpgroups 1-2 (setmaxnreg 232): 64 A rows each; they wait full[s] and dec[s], release the
//    slot on empty[s] (one arrival per warp) once its last wgmma has completed, and store their
//    outputs straight from registers (rows past the expert's end skipped) while warpgroup 0
//    already loads the next tile.
// Token rows past the tensor end are zero-filled by TMA, rows of the next expert are loaded but
// never stored; scale rows past the expert's end lie inside its 128-row padding and only feed
// outputs that are not stored. Dynamic shared memory (1024-aligned inside): the ring, decoded
// scales, mbarriers, the expert table (wg_smem_bytes). PDL: griddepcontrol.wait before the first
// global access (then fence.proxy.async.global in the TMA thread); launch_dependents once the
// CTA's last loads are issued.
#pragma once
#include <kiln/common.cuh>
#include <kiln/convert.cuh>
#include <kiln/pdl.cuh>
#include <mxfp8/gemm_common.cuh>

namespace mxfp8 {
namespace gemm {

template <bool kSwap, int kBT, int kStages>
struct WgTile {
  enum : int {
    kBM = 128,                       // A rows (2 consumer warpgroups × m64)
    kBN = kSwap ? kBT : int(kBW),    // B rows = wgmma N
    kABytes = kBM * kBK,
    kBBytes = kBN * kBK,
    kStageBytes = kABytes + kBBytes + 2 * kAtomBytes,
    kAcc = kBN / 2,                  // accumulator registers per thread
    // Ring, decoded scales (4 K-blocks × (128 + kBN) f32 per stage), 3 mbarriers per stage (the
    // expert table after them starts 16-byte aligned).
    kFixedBytes = kStages * (kStageBytes + 16 * (kBM + kBN)) + ((24 * kStages + 15) & ~15),
  };
  static_assert(kSwap || kBT == kBM, "prefill: the token tile is the A tile");
  static_assert(kBN % 16 == 0 && kBN <= 256 && (kBN & (kBN - 1)) == 0, "wgmma N");
  static_assert(kStageBytes % 1024 == 0, "tiles stay 1024-byte aligned for the 128-byte swizzle");
  static_assert(kAtomRows % kBT == 0, "a token tile lies inside one scale atom");
};

// Dynamic shared memory of the wgmma kernel for `experts` experts (1 KiB of alignment slack).
template <bool kSwap, int kBT, int kStages>
KILN_DEVICE constexpr int wg_smem_bytes(int experts) {
  return 1024 + WgTile<kSwap, kBT, kStages>::kFixedBytes + table_bytes(experts);
}

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row core groups 1024 bytes apart.
KILN_DEVICE u64 wg_desc(u32 addr) {
  return static_cast<u64>((addr & 0x3ffff) >> 4) | (static_cast<u64>(1) << 16) | (static_cast<u64>(1024 >> 4) << 32) |
         (static_cast<u64>(1) << 62);
}

KILN_DEVICE void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
KILN_DEVICE void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
KILN_DEVICE void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of `d` across the asm statements around it.
template <int R>
KILN_DEVICE void fence_operands(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int N>
KILN_DEVICE void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
KILN_DEVICE void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// D (64×64, f32, 32 registers per thread) = A·B (scale_d = 0) or D + A·B (scale_d = 1).
KILN_DEVICE void wgmma_m64n64k32_e4m3(float (&d)[32], u64 desc_a, u64 desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}
// D (64×128, f32, 64 registers per thread) = A·B (scale_d = 0) or D + A·B (scale_d = 1).
KILN_DEVICE void wgmma_m64n128k32_e4m3(float (&d)[64], u64 desc_a, u64 desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}
template <int N>
KILN_DEVICE void wgmma_e4m3(float (&d)[N / 2], u64 desc_a, u64 desc_b, int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated wgmma shapes");
  if constexpr (N == 64) {
    wgmma_m64n64k32_e4m3(d, desc_a, desc_b, scale_d);
  } else {
    wgmma_m64n128k32_e4m3(d, desc_a, desc_b, scale_d);
  }
}

// Position of B column c (0 ≤ c < N) in a decoded-scale row: the thread with tig = t reads the
// columns 8i + 2t + {0, 1} of n8 blocks i = 2q and 2q + 1 as one float4 at 16q + 4t.
KILN_DEVICE int perm_col(int c) {
  const int i = c >> 3;
  return (i >> 1) * 16 + ((c & 7) >> 1) * 4 + (i & 1) * 2 + (c & 1);
}

// Position of A row r in a decoded-scale row: rows r and r + 8 of each 16-row group adjacent.
KILN_DEVICE int pair_row(int r) {
  return (r & ~15) | ((r & 7) << 1) | ((r >> 3) & 1);
}

// One tensor-core step: D = A·B for K-block j of the stage whose descriptors are (da, db): the
// K-block starts 32·j bytes into each 128-byte swizzled row, i.e. 2·j in the descriptors' address
// field (which cannot carry out: shared addresses are below 2^18).
template <int kBN>
KILN_DEVICE void wg_issue(float (&d)[kBN / 2], u64 da, u64 db, int j) {
  wgmma_fence();
  wgmma_e4m3<kBN>(d, da + 2 * j, db + 2 * j, 0);
  wgmma_commit();
}

// Waits until at most kPending wgmma groups are in flight (the K-block's own is done), then
// acc += tmp · (sa_row · sb_col); sa: the K-block's decoded A scales (pair layout), sb: its B
// scales (permuted layout). The scales are read after the wait: loading them earlier keeps two
// sets live next to acc, t0 and t1 and makes ptxas spill inside the loop (measured 8% slower).
template <int kBN, int kPending>
KILN_DEVICE void wg_promote(float (&acc)[kBN / 2], float (&tmp)[kBN / 2], const float* sa, const float* sb, int apair, int tig) {
  wgmma_wait<kPending>();
  fence_operands(tmp);
  const float2 s = *reinterpret_cast<const float2*>(sa + apair);
#pragma unroll
  for (int q = 0; q < kBN / 16; ++q) {
    const float4 c = *reinterpret_cast<const float4*>(sb + q * 16 + tig * 4);
    acc[8 * q + 0] = fmaf(tmp[8 * q + 0], s.x * c.x, acc[8 * q + 0]);
    acc[8 * q + 1] = fmaf(tmp[8 * q + 1], s.x * c.y, acc[8 * q + 1]);
    acc[8 * q + 2] = fmaf(tmp[8 * q + 2], s.y * c.x, acc[8 * q + 2]);
    acc[8 * q + 3] = fmaf(tmp[8 * q + 3], s.y * c.y, acc[8 * q + 3]);
    acc[8 * q + 4] = fmaf(tmp[8 * q + 4], s.x * c.z, acc[8 * q + 4]);
    acc[8 * q + 5] = fmaf(tmp[8 * q + 5], s.x * c.w, acc[8 * q + 5]);
    acc[8 * q + 6] = fmaf(tmp[8 * q + 6], s.y * c.z, acc[8 * q + 6]);
    acc[8 * q + 7] = fmaf(tmp[8 * q + 7], s.y * c.w, acc[8 * q + 7]);
  }
}

template <typename TOut, bool kSwap, int kBT, int kStages, bool kPdl>
__global__ void __launch_bounds__(384, 1) mxfp8_grouped_gemm_wgmma(const __grid_constant__ TmaParams prm) {
  using C = WgTile<kSwap, kBT, kStages>;
  constexpr int kBN = C::kBN;
  constexpr int kAcc = C::kAcc;
  constexpr int kDec = 4 * (C::kBM + kBN);  // decoded scales per stage
  const GemmArgs& p = prm.args;

  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
  unsigned char* ring = base;
  float* sdec = reinterpret_cast<float*>(base + kStages * C::kStageBytes);
  const u32 full0 = smem_addr(sdec + kStages * kDec);
  const u32 dec0 = full0 + 8 * kStages;
  const u32 empty0 = dec0 + 8 * kStages;
  unsigned char* table = base + kStages * (C::kStageBytes + 4 * kDec) + ((24 * kStages + 15) & ~15);

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  require_smem(wg_smem_bytes<kSwap, kBT, kStages>(p.experts));
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(dec0 + 8 * s, 64);
      mbar_init(empty0 + 8 * s, 8);
    }
    fence_barrier_init();
    prefetch_tmap(&prm.tokens_map);
    prefetch_tmap(&prm.weights_map);
  }
  kiln::pdl_wait<kPdl>();
  Expert* experts;
  i64* ends;
  const i64 total = build_tiles<384, kBT>(p, table, experts, ends);  // synchronises the CTA

  const int nkb = p.k / 32;
  const int num_kt = p.k / kBK;
  const i64 N = p.n;
  TileWalker<kBT> walk(experts, ends, total, p.n);
  Tile tile;

  // Register budget: the launch gives 168 per thread (384 threads, one CTA per SM: 64512 in
  // all); 128·40 + 256·232 = 64512, so the increase can always be granted (asking for more than
  // the CTA holds would wait forever).
  if (warp < 4) {
    setmaxnreg_dec<40>();
    if (warp == 0) {
      if (lane == 0) {
        // Producer: TMA for the tiles, bulk copies for the scale atoms.
        if constexpr (kPdl) fence_proxy_async_global();
        u32 it = 0;
        while (walk.next(tile)) {
          const int tok0 = tile.mt * kBT;
          const int tok_row = tile.e.row0 + tok0;
          const i64 wrow = static_cast<i64>(tile.g) * N + static_cast<i64>(tile.nt) * kBW;
          const u8* tok_atoms = p.token_scales + atom_offset(static_cast<i64>(tile.e.srow0) + (tok0 & ~(kAtomRows - 1)), 0, nkb);
          const u8* w_atoms = p.weight_scales + atom_offset(wrow, 0, nkb);
          for (int kt = 0; kt < num_kt; ++kt, ++it) {
            const u32 slot = it % kStages;
            const u32 ph = (it / kStages) & 1;
            mbar_wait(empty0 + 8 * slot, ph ^ 1);
            const u32 full = full0 + 8 * slot;
            const u32 st = smem_addr(ring + slot * C::kStageBytes);
            mbar_arrive_expect_tx(full, C::kStageBytes);
            const int kc = kt * kBK;
            if constexpr (kSwap) {
              tma_load_2d(st, &prm.weights_map, full, kc, static_cast<int>(wrow));
              tma_load_2d(st + C::kABytes, &prm.tokens_map, full, kc, tok_row);
              bulk_load(st + C::kABytes + C::kBBytes, w_atoms + static_cast<i64>(kt) * kAtomBytes, kAtomBytes, full);
              bulk_load(st + C::kABytes + C::kBBytes + kAtomBytes, tok_atoms + static_cast<i64>(kt) * kAtomBytes, kAtomBytes, full);
            } else {
              tma_load_2d(st, &prm.tokens_map, full, kc, tok_row);
              tma_load_2d(st + C::kABytes, &prm.weights_map, full, kc, static_cast<int>(wrow));
              bulk_load(st + C::kABytes + C::kBBytes, tok_atoms + static_cast<i64>(kt) * kAtomBytes, kAtomBytes, full);
              bulk_load(st + C::kABytes + C::kBBytes + kAtomBytes, w_atoms + static_cast<i64>(kt) * kAtomBytes, kAtomBytes, full);
            }
          }
          if (walk.done()) kiln::pdl_launch_dependents<kPdl>();
        }
      }
    } else if (warp <= 2) {
      // Scale decoders: E8M0 bytes → f32 once per stage, in the layouts the consumers read.
      const int dt = tid - 32;
      u32 it = 0;
      while (walk.next(tile)) {
        const int tok_atom_row = (tile.mt * kBT) & (kAtomRows - 1);
        const int a_off = kSwap ? 0 : tok_atom_row;
        const int b_off = kSwap ? tok_atom_row : 0;
        for (int kt = 0; kt < num_kt; ++kt, ++it) {
          const u32 slot = it % kStages;
          mbar_wait(full0 + 8 * slot, (it / kStages) & 1);
          const unsigned char* atoms = ring + slot * C::kStageBytes + C::kABytes + C::kBBytes;
          float* d = sdec + slot * kDec;
          for (int r = dt; r < C::kBM + kBN; r += 64) {
            const bool is_a = r < C::kBM;
            const int rr = is_a ? r : r - C::kBM;
            const u32 w = *reinterpret_cast<const u32*>(atoms + (is_a ? 0 : kAtomBytes) + atom_word(rr + (is_a ? a_off : b_off)));
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const float v = scale_value((w >> (8 * j)) & 0xffu);
              if (is_a) {
                d[j * C::kBM + pair_row(rr)] = v;
              } else {
                d[4 * C::kBM + j * kBN + perm_col(rr)] = v;
              }
            }
          }
          mbar_arrive(dec0 + 8 * slot);
        }
      }
    }
  } else {
    setmaxnreg_inc<232>();
    // Consumers: warpgroup cw owns A rows 64·cw … 64·cw + 63 of every tile.
    const int cw = (warp >> 2) - 1;
    const int grp = lane >> 2;
    const int tig = lane & 3;
    const int arow = 64 * cw + 16 * (warp & 3) + grp;  // rows arow and arow + 8
    const int apair = pair_row(arow);
    float acc[kAcc];
    float t0[kAcc];
    float t1[kAcc];
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      t0[i] = 0.0f;
      t1[i] = 0.0f;
    }
    const u32 ring0 = smem_addr(ring);
    u32 slot = 0;
    u32 ph = 0;
    while (walk.next(tile)) {
#pragma unroll
      for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
      for (int kt = 0; kt < num_kt; ++kt) {
        mbar_wait(full0 + 8 * slot, ph);
        mbar_wait(dec0 + 8 * slot, ph);
        const u32 st = ring0 + slot * C::kStageBytes;
        const u64 da = wg_desc(st + cw * 64 * kBK);
        const u64 db = wg_desc(st + C::kABytes);
        const float* dc = sdec + slot * kDec;
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
          // Two K-blocks in flight: the second wgmma runs while the first one is promoted.
          wg_issue<kBN>(t0, da, db, j);
          wg_issue<kBN>(t1, da, db, j + 1);
          wg_promote<kBN, 1>(acc, t0, dc + j * C::kBM, dc + 4 * C::kBM + j * kBN, apair, tig);
          wg_promote<kBN, 0>(acc, t1, dc + (j + 1) * C::kBM, dc + 4 * C::kBM + (j + 1) * kBN, apair, tig);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty0 + 8 * slot);
        if (++slot == kStages) {
          slot = 0;
          ph ^= 1;
        }
      }

      // Epilogue straight from registers; rows past the expert's end are skipped.
      const Expert& e = tile.e;
      const int tok0 = tile.mt * kBT;
      TOut* out = static_cast<TOut*>(p.out) + static_cast<i64>(tile.nt) * kBW;
#pragma unroll
      for (int i = 0; i < kBN / 8; ++i) {
        const int c = 8 * i + 2 * tig;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = arow + 8 * h;
          if constexpr (!kSwap) {
            if (tok0 + r < e.rows) store_pair(out + (static_cast<i64>(e.row0) + tok0 + r) * N + c, acc[4 * i + 2 * h], acc[4 * i + 2 * h + 1]);
          } else {
#pragma unroll
            for (int q = 0; q < 2; ++q) {
              if (tok0 + c + q < e.rows) out[(static_cast<i64>(e.row0) + tok0 + c + q) * N + r] = kiln::from_f32<TOut>(acc[4 * i + 2 * h + q]);
            }
          }
        }
      }
    }
  }
  kiln::pdl_launch_dependents<kPdl>();
}

}  // namespace gemm
}  // namespace mxfp8
