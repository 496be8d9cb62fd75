// gemm_sm90.cuh — grouped MXFP8 GEMM, the mma.sync kernel (its instructions exist from sm_89; the
// crate runs it on sm_90 as the reference/fallback variant of the wgmma kernel). Math, scale
// layouts and tile order: mxfp8/gemm_common.cuh.
//
// Tensor-core step: mma.sync.m16n8k32 e4m3×e4m3 → f32 with C = 0, one per 32-element K-block
// (one scale block), then promotion acc += tmp · (sa_row · sb_col) in f32, K in order; the output
// is rounded once (RN) to bf16/f16. kSwap = false (prefill): the MMA M side is the tokens
// (tile 128 tokens × 128 weights, 8 warps as 2 × 4, warp tile 64 × 32). kSwap = true (decode,
// swap-AB): the MMA M side is the weights (tile 128 weights × kBT tokens, 8 warps as 8 × 1, warp
// tile 16 × kBT), so a few tokens per expert waste little MMA work.
//
// Launch: a persistent grid (≤ #SMs × occupancy CTAs) of 256 threads; every CTA builds the expert
// table and walks tiles blockIdx.x, + gridDim.x, …. Per tile, a kStages-deep cp.async pipeline of
// K-stages of 128: A and B tiles (rows × 128 bytes, 16-byte chunks XOR-swizzled by row % 8 so that
// ldmatrix is conflict-free) plus one 512-byte scale atom per operand; token rows past the
// expert's end are zero-filled and never stored; scale rows past it are loaded (they lie inside
// the expert's 128-row padding) but only feed outputs that are not stored. Each stage's scale
// bytes are decoded once into f32 in shared memory (A rows paired (r, r+8), B columns plain).
// Dynamic shared memory: stages, then decoded scales, then the expert table (mma_smem_bytes).
// PDL: griddepcontrol.wait before the first global access; launch_dependents once the CTA's last
// tile's loads are issued.
#pragma once
#include <kiln/common.cuh>
#include <kiln/convert.cuh>
#include <kiln/pdl.cuh>
#include <mxfp8/gemm_common.cuh>

namespace mxfp8 {
namespace gemm {

template <bool kSwap, int kBT>
struct MmaTile {
  enum : int {
    kBM = kSwap ? int(kBW) : kBT,  // MMA M side rows (A operand)
    kBN = kSwap ? kBT : int(kBW),  // MMA N side rows (B operand)
    kWarpsM = kSwap ? 8 : 2,
    kWarpsN = 8 / kWarpsM,
    kWM = kBM / kWarpsM,
    kWN = kBN / kWarpsN,
    kMI = kWM / 16,
    kNI = kWN / 8,
    kStageBytes = (kBM + kBN) * kBK + 2 * kAtomBytes,
    kScaleFloats = 4 * (kBM + kBN),
  };
  static_assert(kBM % 16 == 0 && kBN % 16 == 0 && kNI % 2 == 0, "tile shape");
  static_assert(kBT <= kAtomRows && kAtomRows % kBT == 0, "a token tile lies inside one scale atom");
};

template <bool kSwap, int kBT, int kStages>
KILN_DEVICE constexpr int mma_smem_bytes(int experts) {
  using C = MmaTile<kSwap, kBT>;
  return kStages * C::kStageBytes + C::kScaleFloats * 4 + table_bytes(experts);
}

// Position of A row r in the decoded-scale array: rows r and r + 8 of each 16-row group adjacent.
KILN_DEVICE int pair_rows(int r) {
  return (r & ~15) | ((r & 7) << 1) | ((r >> 3) & 1);
}

template <typename TOut, bool kSwap, int kBT, int kStages, bool kPdl>
__global__ void __launch_bounds__(256, 1) mxfp8_grouped_gemm_mma(const GemmArgs p) {
  using C = MmaTile<kSwap, kBT>;
  constexpr int kBM = C::kBM;
  constexpr int kBN = C::kBN;
  constexpr int kMI = C::kMI;
  constexpr int kNI = C::kNI;
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* stages = smem;
  float* saf = reinterpret_cast<float*>(smem + kStages * C::kStageBytes);  // [4][kBM]
  float* sbf = saf + 4 * kBM;                                              // [4][kBN]
  unsigned char* table = reinterpret_cast<unsigned char*>(sbf + 4 * kBN);

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int wm = warp / C::kWarpsN;
  const int wn = warp % C::kWarpsN;
  const int grp = lane >> 2;
  const int tig = lane & 3;

  require_smem(mma_smem_bytes<kSwap, kBT, kStages>(p.experts));
  kiln::pdl_wait<kPdl>();
  Expert* experts;
  i64* ends;
  const i64 total = build_tiles<256, kBT>(p, table, experts, ends);

  const int K = p.k;
  const int nkb = K / 32;
  const int num_kt = K / kBK;
  const i64 N = p.n;

  TileWalker<kBT> walk(experts, ends, total, p.n);
  Tile tile;
  while (walk.next(tile)) {
    const Expert& e = tile.e;
    const int tok0 = tile.mt * kBT;  // first token row of the tile inside the expert
    const int tok_valid = e.rows - tok0;
    const i64 wrow0 = static_cast<i64>(tile.g) * N + static_cast<i64>(tile.nt) * kBW;  // first weight row
    const u8* tok_base = p.tokens + (static_cast<i64>(e.row0) + tok0) * K;
    const u8* w_base = p.weights + wrow0 * K;
    const u8* tok_atoms = p.token_scales + atom_offset(static_cast<i64>(e.srow0) + (tok0 & ~(kAtomRows - 1)), 0, nkb);
    const u8* w_atoms = p.weight_scales + atom_offset(wrow0, 0, nkb);
    const int tok_atom_row = tok0 & (kAtomRows - 1);  // token tile's first row inside its atom

    const u8* a_base = kSwap ? w_base : tok_base;
    const u8* b_base = kSwap ? tok_base : w_base;
    const int a_valid = kSwap ? kBM : tok_valid;
    const int b_valid = kSwap ? tok_valid : kBN;
    const u8* a_atoms = kSwap ? w_atoms : tok_atoms;
    const u8* b_atoms = kSwap ? tok_atoms : w_atoms;
    const int a_atom_row = kSwap ? 0 : tok_atom_row;
    const int b_atom_row = kSwap ? tok_atom_row : 0;

    // Issues the cp.async copies of K-stage kt into slot `slot`.
    auto load_stage = [&](int slot, int kt) {
      unsigned char* s = stages + slot * C::kStageBytes;
      const u32 sa = smem_addr(s);
      const u32 sb = sa + kBM * kBK;
      const u32 sat = sb + kBN * kBK;
      const i64 koff = static_cast<i64>(kt) * kBK;
      for (int c = tid; c < kBM * 8; c += 256) {
        const int r = c >> 3, ch = c & 7;
        const bool ok = r < a_valid;
        const u8* src = ok ? a_base + static_cast<i64>(r) * K + koff + ch * 16 : p.tokens;
        cp_async16(sa + r * kBK + ((ch ^ (r & 7)) << 4), src, ok ? 16 : 0);
      }
      for (int c = tid; c < kBN * 8; c += 256) {
        const int r = c >> 3, ch = c & 7;
        const bool ok = r < b_valid;
        const u8* src = ok ? b_base + static_cast<i64>(r) * K + koff + ch * 16 : p.tokens;
        cp_async16(sb + r * kBK + ((ch ^ (r & 7)) << 4), src, ok ? 16 : 0);
      }
      if (tid < 64) {
        const int which = tid >> 5, ch = tid & 31;
        const u8* src = (which == 0 ? a_atoms : b_atoms) + static_cast<i64>(kt) * kAtomBytes + ch * 16;
        cp_async16(sat + which * kAtomBytes + ch * 16, src, 16);
      }
    };

    float acc[kMI][kNI][4];
#pragma unroll
    for (int i = 0; i < kMI; ++i)
#pragma unroll
      for (int j = 0; j < kNI; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;

    __syncthreads();  // the previous tile's last stage is no longer read
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < num_kt) load_stage(s, s);
      cp_async_commit();
    }

    for (int kt = 0; kt < num_kt; ++kt) {
      cp_async_wait<kStages - 2>();
      __syncthreads();  // stage kt landed for everyone; stage kt-1 and the decoded scales are free
      const int slot = kt % kStages;
      const unsigned char* st = stages + slot * C::kStageBytes;
      {
        const unsigned char* atoms = st + (kBM + kBN) * kBK;
        for (int r = tid; r < kBM + kBN; r += 256) {
          const bool is_a = r < kBM;
          const int rr = is_a ? r : r - kBM;
          const int arow = rr + (is_a ? a_atom_row : b_atom_row);
          const u32 w = *reinterpret_cast<const u32*>(atoms + (is_a ? 0 : kAtomBytes) + atom_word(arow));
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const float v = scale_value((w >> (8 * j)) & 0xffu);
            if (is_a) {
              saf[j * kBM + pair_rows(rr)] = v;
            } else {
              sbf[j * kBN + rr] = v;
            }
          }
        }
      }
      if (kt + kStages - 1 < num_kt) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
      cp_async_commit();
      if (walk.done() && kt + kStages - 1 >= num_kt) kiln::pdl_launch_dependents<kPdl>();
      __syncthreads();  // decoded scales visible

      const u32 sa = smem_addr(st);
      const u32 sb = sa + kBM * kBK;
#pragma unroll 1
      for (int kk = 0; kk < 4; ++kk) {
        u32 bf[kNI][2];
#pragma unroll
        for (int j = 0; j < kNI; j += 2) {
          // Matrices: n8 tile j (chunks 2kk, 2kk+1), then n8 tile j+1.
          const int r = wn * C::kWN + j * 8 + (lane & 7) + (lane >> 4) * 8;
          const int ch = 2 * kk + ((lane >> 3) & 1);
          ldmatrix_x4(sb + r * kBK + ((ch ^ (r & 7)) << 4), bf[j][0], bf[j][1], bf[j + 1][0], bf[j + 1][1]);
        }
        float2 sbv[kNI];
#pragma unroll
        for (int j = 0; j < kNI; ++j) sbv[j] = *reinterpret_cast<const float2*>(sbf + kk * kBN + wn * C::kWN + j * 8 + 2 * tig);
        // One m16 row block at a time keeps the temporaries to 4·kNI registers.
#pragma unroll
        for (int i = 0; i < kMI; ++i) {
          u32 af[4];
          // Matrices: rows 0-7 / 8-15 of the m16 tile × 16-byte chunks 2kk / 2kk+1.
          const int r = wm * C::kWM + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
          const int ch = 2 * kk + (lane >> 4);
          ldmatrix_x4(sa + r * kBK + ((ch ^ (r & 7)) << 4), af[0], af[1], af[2], af[3]);
          float tmp[kNI][4];
#pragma unroll
          for (int j = 0; j < kNI; ++j) mma_e4m3_16832(tmp[j], af, bf[j]);
          const float2 sav = *reinterpret_cast<const float2*>(saf + kk * kBM + pair_rows(wm * C::kWM + i * 16 + grp));
#pragma unroll
          for (int j = 0; j < kNI; ++j) {
            acc[i][j][0] = fmaf(tmp[j][0], sav.x * sbv[j].x, acc[i][j][0]);
            acc[i][j][1] = fmaf(tmp[j][1], sav.x * sbv[j].y, acc[i][j][1]);
            acc[i][j][2] = fmaf(tmp[j][2], sav.y * sbv[j].x, acc[i][j][2]);
            acc[i][j][3] = fmaf(tmp[j][3], sav.y * sbv[j].y, acc[i][j][3]);
          }
        }
      }
    }
    cp_async_wait<0>();

    // Epilogue: rows past the expert's end are skipped; everything else is written once.
    TOut* out = static_cast<TOut*>(p.out);
#pragma unroll
    for (int i = 0; i < kMI; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ar = wm * C::kWM + i * 16 + grp + 8 * h;  // A row inside the tile
#pragma unroll
        for (int j = 0; j < kNI; ++j) {
          const int bc = wn * C::kWN + j * 8 + 2 * tig;  // B column inside the tile
          if constexpr (!kSwap) {
            if (ar < tok_valid) {
              TOut* o = out + (static_cast<i64>(e.row0) + tok0 + ar) * N + tile.nt * kBW + bc;
              store_pair(o, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
          } else {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              if (bc + c < tok_valid) {
                out[(static_cast<i64>(e.row0) + tok0 + bc + c) * N + tile.nt * kBW + ar] = kiln::from_f32<TOut>(acc[i][j][2 * h + c]);
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
