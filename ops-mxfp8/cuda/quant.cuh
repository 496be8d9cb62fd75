// quant.cuh — grouped MXFP8 quantization (bf16/f16 → E4M3 + E8M0 scales) and dequantization
// (E4M3 + E8M0 → bf16/f16/f32), for dense tensors and for MoE experts described on the device.
//
// Math (see mxfp8/layout.cuh for the exact scale rule): per block of 32 consecutive elements of a
// row, amax = max |x| over the finite elements (non-finite ones take no part), e = RCEIL exponent
// from amax's bits, S = e + 127, q = RN_sat_e4m3(x · 2^-e) with 2^-e built exactly, so NaN → an
// E4M3 NaN, ±inf → ±448, and the other elements of the block are unaffected. All-zero blocks get
// S = 0 and q = ±0. Dequantization: y = RN_T(e4m3(q) · 2^(S − 127)), the product taken in f32
// (exact unless it overflows f32: |y| ≥ 2^128 gives ±inf). Compiled without ftz (the specs force
// precise math) so subnormal inputs and the 2^-127 scale are kept.
//
// Layout: x / out are [rows, k] row-major with row stride x_stride (elements), q is [rows, k] with
// row stride q_stride (bytes); scales in the 128×4 blocked or the row-major layout (layout.cuh).
// Expert g covers rows [expert_offsets[g], + tokens_per_expert[g]) and scale rows from
// blockscale_offsets[g] (clamped as experts.cuh states); null metadata = one expert of all rows
// with scale row = row. In the blocked layout the quantizer also writes the padding scale rows
// [m_g, round_up(m_g, 128)) of each expert with byte 0x00 (the scale of an all-zero row); rows and
// scale rows that belong to no expert are never written.
//
// Launch (register kernels, mxfp8_quantize / mxfp8_dequantize): persistent grid (≤ SMs ×
// resident CTAs) of 256 threads, dynamic shared memory 24 · max(num_experts, 1) bytes for the
// expert table. A tile is 64 rows × 256 columns of one expert's data rows (tiles_of; CTA b takes
// tiles b, b + gridDim.x, …, so the CTAs running at a time cover neighbouring tiles); warp w
// handles rows w, w + 8, …, w + 56, each lane 8 consecutive columns, so one warp instruction
// moves 512 contiguous input bytes (one 16-byte load per lane) and a quad of lanes holds one
// 32-element block (amax: one packed max per lane, two xor-shuffles). A thread issues its 8 rows'
// loads before converting; each quad's first lane stores the block's scale byte. The blocked
// layout's padding scale rows [m, round_up(m, 128)) are written by the expert's last tile of each
// column tile (its own rows past m, and when it starts an atom the atom's other 64 rows), so
// padding costs no tile of its own. The TMA quantizer (end of this file) runs the same tiles.
// kVec: 16-byte loads of x (16-byte stores of out), 8-byte accesses of q (the host checks pointers
// and strides); otherwise element-wise accesses with the same results.
// PDL: griddepcontrol.wait before the metadata is read (nothing is read or written earlier);
// launch_dependents once the expert table is built (all CTAs are resident, so early dependents only
// take leftover slots).
#pragma once
#include <kiln/common.cuh>
#include <kiln/vec.cuh>
#include <kiln/convert.cuh>
#include <kiln/pdl.cuh>
#include <mxfp8/layout.cuh>
#include <mxfp8/experts.cuh>
#include <mxfp8/tma.cuh>

// One by-value parameter of both kernels (96 bytes; mirrored by ops-mxfp8/src/ffi.rs).
struct Mxfp8Params {
  void* x;                        // quantize: input [rows, k] T; dequantize: output [rows, k] T
  unsigned char* q;               // E4M3 [rows, k]
  unsigned char* scales;          // E8M0, scale_rows × (k / 32) in `layout`
  const int* expert_offsets;      // [num_experts] or null (dense)
  const int* tokens_per_expert;   // [num_experts] or null (dense)
  const int* blockscale_offsets;  // [num_experts] or null (dense)
  long long rows;
  long long k;         // multiple of 32 (of 128 in the blocked layout)
  long long x_stride;  // elements
  long long q_stride;  // bytes
  long long scale_rows;
  int num_experts;
  int layout;          // mxfp8::ScaleLayout
};

namespace mxfp8 {

enum : int {
  kThreads = 256,
  kMinBlocks = 4,                // ≤ 64 registers: 4 CTAs (32 warps) per SM
  kWarps = kThreads / 32,
  kLaneElems = 8,                // one 16-byte load of bf16/f16
  kTileCols = 32 * kLaneElems,   // the columns of one warp instruction
  kItems = 8,                    // rows per warp and tile: loads in flight per thread
  kTileRows = kWarps * kItems,
};
static_assert(kAtomRows % kTileRows == 0, "tiles must not straddle 128-row atoms");
static_assert(32 % kWarps == 0 && kTileRows % 32 == 0, "the blocked scale offsets below");

// 16-bit input formats: exact widening and the bit pattern of +inf (|bits| ≥ it: not finite).
template <typename T>
struct Half16;
template <>
struct Half16<__nv_bfloat16> {
  enum : u32 { kInf = 0x7f80u };
  static KILN_DEVICE float widen(u32 h) { return __uint_as_float(h << 16); }
};
template <>
struct Half16<__half> {
  enum : u32 { kInf = 0x7c00u };
  static KILN_DEVICE float widen(u32 h) { return __half2float(__ushort_as_half(static_cast<unsigned short>(h))); }
};

KILN_DEVICE ExpertMeta meta_of(const Mxfp8Params& p) {
  return ExpertMeta{p.expert_offsets, p.tokens_per_expert, p.blockscale_offsets, p.num_experts,
                    p.layout == kBlocked ? kAtomRows : 1, p.rows, p.scale_rows};
}

// One thread's view of a tile. Item j of the thread is tile row r = j·kWarps + warp, columns
// col .. col + 7; its x elements start at x + j·x_step, its q bytes at q + j·q_step and its scale
// byte is scale_at(j). Computed once per tile, so the items need no 64-bit multiplications.
struct LaneAt {
  i64 x, x_step;  // elements
  i64 q, q_step;  // bytes
  i64 s, s_step;  // bytes (s_step: row-major only)
  i64 col;        // this lane's first column
  int row;        // tile row of item 0 (= warp)
  int valid;      // tile rows holding tokens (≥ 1)
  bool blocked;
  bool pad_next;  // blocked, the expert's last tile, at an atom's start: rows 64..127 of the atom are padding

  // Whether item j's row holds a token (warp-uniform).
  KILN_DEVICE bool data(int j) const { return row + j * kWarps < valid; }

  KILN_DEVICE i64 scale_at(int j) const {
    // Blocked: tile row r = j·kWarps + warp of a tile starting at a multiple of 32 inside its
    // atom: r % 32 = (j % m)·kWarps + warp and r / 32 = j / m with m = 32 / kWarps (the warp part
    // is in `s`); j < 16 stays inside the atom for a tile at the atom's start.
    constexpr int m = 32 / kWarps;
    return blocked ? s + (j % m) * (kWarps * 16) + (j / m) * 4 : s + j * s_step;
  }
};

KILN_DEVICE LaneAt lane_at(const Mxfp8Params& p, const Expert& e, i64 tile, i64 ktiles, i64 nkb) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const i64 rt = tile / ktiles;
  const i64 kt = tile - rt * ktiles;
  const i64 row0 = e.row0 + rt * kTileRows;  // all of these are ≥ 0
  const u64 srow0 = static_cast<u64>(e.srow0 + rt * kTileRows);
  const i64 left = e.rows - rt * kTileRows;
  LaneAt l;
  l.col = kt * kTileCols + lane * kLaneElems;
  l.row = warp;
  l.valid = static_cast<int>(left < kTileRows ? left : kTileRows);
  l.blocked = p.layout == kBlocked;
  l.pad_next = l.blocked && left <= kTileRows && (rt * kTileRows) % kAtomRows == 0;
  l.x = (row0 + warp) * p.x_stride + l.col;
  l.x_step = kWarps * p.x_stride;
  l.q = (row0 + warp) * p.q_stride + l.col;
  l.q_step = kWarps * p.q_stride;
  const u64 kb0 = static_cast<u64>(l.col) / kBlock;
  if (l.blocked) {
    l.s = static_cast<i64>((srow0 / kAtomRows) * (static_cast<u64>(nkb) / kAtomKBlocks) * kAtomBytes +
                           ((srow0 % kAtomRows) / 32) * 4 + (kb0 / kAtomKBlocks) * kAtomBytes + kb0 % kAtomKBlocks) +
          warp * 16;
  } else {
    l.s = static_cast<i64>(srow0 + warp) * nkb + static_cast<i64>(kb0);
  }
  l.s_step = kWarps * nkb;
  return l;
}

template <typename T, bool kVec>
KILN_DEVICE uint4 load_x(const T* src) {
  if constexpr (kVec) {
    const kiln::Vec<u32, 4> v = kiln::load_vec_stream<u32, 4>(reinterpret_cast<const u32*>(src));
    return make_uint4(v[0], v[1], v[2], v[3]);
  } else {
    const unsigned short* h = reinterpret_cast<const unsigned short*>(src);
    u32 w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = static_cast<u32>(h[2 * i]) | (static_cast<u32>(h[2 * i + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// Per-halfword unsigned max of two pairs of 16-bit values.
KILN_DEVICE u32 max_u16x2(u32 a, u32 b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  u32 d;
  asm("max.u16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#else
  return max(a & 0xffffu, b & 0xffffu) | (max(a >> 16, b >> 16) << 16);
#endif
}

// Largest finite |x| of the 8 elements, as 16-bit magnitude bits (monotone in the value: finite
// magnitudes lie below the +inf pattern, NaNs above it). The common case takes one packed max
// over all 8; only a group holding a NaN or an inf filters element by element.
template <typename T>
KILN_DEVICE u32 finite_amax_bits(const uint4& r) {
  const u32 w[4] = {r.x & 0x7fff7fffu, r.y & 0x7fff7fffu, r.z & 0x7fff7fffu, r.w & 0x7fff7fffu};
  const u32 p = max_u16x2(max_u16x2(w[0], w[1]), max_u16x2(w[2], w[3]));
  u32 m = max(p & 0xffffu, p >> 16);
  if (m >= Half16<T>::kInf) {
    m = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const u32 lo = w[i] & 0xffffu;
      const u32 hi = w[i] >> 16;
      m = lo < Half16<T>::kInf && lo > m ? lo : m;
      m = hi < Half16<T>::kInf && hi > m ? hi : m;
    }
  }
  return m;
}

KILN_DEVICE u32 e4m3x2(float a, float b) {
  return static_cast<u32>(__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3));
}

// Quantizes the 8 elements with multiplier 2^-e: 8 E4M3 bytes, element 0 in the lowest byte.
template <typename T>
KILN_DEVICE uint2 quantize8(const uint4& r, float mul) {
  const u32 w[4] = {r.x, r.y, r.z, r.w};
  u32 c[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    c[i] = e4m3x2(Half16<T>::widen(w[i] & 0xffffu) * mul, Half16<T>::widen(w[i] >> 16) * mul);
  }
  return make_uint2(c[0] | (c[1] << 16), c[2] | (c[3] << 16));
}

template <bool kVec>
KILN_DEVICE void store_q(u8* dst, const uint2& v) {
  if constexpr (kVec) {
    *reinterpret_cast<uint2*>(dst) = v;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[i] = static_cast<u8>((i < 4 ? v.x : v.y) >> (8 * (i & 3)));
  }
}

// Converts one tile's items (raw[j]: the 8 elements of item j, zero where absent) and stores q and
// the scale bytes.
template <typename T, bool kVec>
KILN_DEVICE void convert_tile(const Mxfp8Params& p, const LaneAt& l, const uint4 (&raw)[kItems]) {
  const int lane = threadIdx.x & 31;
  const bool col_ok = l.col < p.k;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const bool data = l.data(j);  // warp-uniform: the shuffles see the whole warp
    if (!data && !l.blocked) continue;
    u32 s = 0;  // padding rows: the scale of an all-zero row
    if (data) {
      u32 amax = finite_amax_bits<T>(raw[j]);
      amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      const int e = scale_exponent(__float_as_uint(Half16<T>::widen(amax)));
      s = scale_byte(e);
      const uint2 qv = quantize8<T>(raw[j], inv_scale(e));
      if (col_ok) store_q<kVec>(p.q + l.q + j * l.q_step, qv);
    }
    // One byte per block from each quad's first lane: the 4 (blocked) or 8 (row-major) scales of
    // a warp row are adjacent bytes, merged in L2.
    if ((lane & 3) == 0 && col_ok) p.scales[l.scale_at(j)] = static_cast<u8>(s);
  }
  // The expert's padding rows past this tile: the second half of the atom.
  if (l.pad_next && (lane & 3) == 0 && col_ok) {
#pragma unroll
    for (int j = kItems; j < 2 * kItems; ++j) p.scales[l.scale_at(j)] = 0;
  }
}

template <typename T, bool kVec>
KILN_DEVICE void quantize_tile(const Mxfp8Params& p, const LaneAt& l) {
  const T* x = static_cast<const T*>(p.x);
  const bool col_ok = l.col < p.k;
  uint4 raw[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    raw[j] = make_uint4(0u, 0u, 0u, 0u);
    if (l.data(j) && col_ok) raw[j] = load_x<T, kVec>(x + l.x + j * l.x_step);
  }
  convert_tile<T, kVec>(p, l, raw);
}

template <typename T, bool kVec>
KILN_DEVICE void store_out(T* dst, const float (&v)[kLaneElems]) {
  if constexpr (kVec) {
    constexpr int kPer = kiln::kVec16<T>;
#pragma unroll
    for (int c = 0; c < kLaneElems / kPer; ++c) {
      kiln::Vec<T, kPer> o;
#pragma unroll
      for (int i = 0; i < kPer; ++i) o[i] = kiln::from_f32<T>(v[c * kPer + i]);
      kiln::store_vec<T, kPer>(dst + c * kPer, o);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) dst[i] = kiln::from_f32<T>(v[i]);
  }
}

template <typename T, bool kVec>
KILN_DEVICE void dequantize_tile(const Mxfp8Params& p, const LaneAt& l) {
  const bool col_ok = l.col < p.k;
  uint2 qraw[kItems];
  u8 sraw[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    qraw[j] = make_uint2(0u, 0u);
    sraw[j] = 0;
    if (l.data(j) && col_ok) {
      const u8* src = p.q + l.q + j * l.q_step;
      if constexpr (kVec) {
        qraw[j] = *reinterpret_cast<const uint2*>(src);
      } else {
        u32 w[2] = {0u, 0u};
#pragma unroll
        for (int i = 0; i < 8; ++i) w[i >> 2] |= static_cast<u32>(src[i]) << (8 * (i & 3));
        qraw[j] = make_uint2(w[0], w[1]);
      }
      sraw[j] = p.scales[l.scale_at(j)];
    }
  }
  T* out = static_cast<T*>(p.x);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    if (!(l.data(j) && col_ok)) continue;
    const float sc = kiln::e8m0_to_f32(sraw[j]);
    const u32 w[2] = {qraw[j].x, qraw[j].y};
    float v[kLaneElems];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __half2_raw h =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w[i >> 1] >> (16 * (i & 1))), __NV_E4M3);
      const float2 f = __half22float2(__half2(h));
      v[2 * i] = f.x * sc;
      v[2 * i + 1] = f.y * sc;
    }
    store_out<T, kVec>(out + l.x + j * l.x_step, v);
  }
}

// Tiles of an expert: its data rows in 64-row tiles × column tiles (padding rows are written by
// the expert's last tile of each column tile).
KILN_DEVICE i64 tiles_of(const Expert& e, i64 ktiles) {
  return (static_cast<i64>(e.rows) + kTileRows - 1) / kTileRows * ktiles;
}

KILN_DEVICE Expert* table_experts(unsigned char* smem) {
  return reinterpret_cast<Expert*>(smem);
}
KILN_DEVICE i64* table_ends(unsigned char* smem, int n) {
  return reinterpret_cast<i64*>(smem + sizeof(Expert) * n);
}

// Column tiles of a row (the last one may be partial).
KILN_DEVICE i64 col_tiles(const Mxfp8Params& p) {
  return (p.k + kTileCols - 1) / kTileCols;
}

// A launch's tiles: the expert table in shared memory and the tile counts.
struct Tiles {
  Expert* experts;
  i64* ends;
  i64 ktiles;  // column tiles
  i64 total;
};

// Every kernel's start: the PDL wait, the expert table in `table` (tiles per expert: tiles_of;
// its barrier ends the call), then the early release of dependents.
template <bool kPdl>
KILN_DEVICE Tiles build_tiles(const Mxfp8Params& p, unsigned char* table) {
  const ExpertMeta meta = meta_of(p);
  Tiles t{table_experts(table), table_ends(table, table_size(meta)), col_tiles(p), 0};
  kiln::pdl_wait<kPdl>();
  t.total = build_table<kThreads>(meta, t.experts, t.ends, [&](const Expert& e) -> i64 { return tiles_of(e, t.ktiles); });
  kiln::pdl_launch_dependents<kPdl>();
  return t;
}

// The body both register kernels share: the tiles, then `f(lane)` for this CTA's tiles.
template <bool kPdl, typename F>
KILN_DEVICE void over_tiles(const Mxfp8Params& p, unsigned char* smem, F&& f) {
  const Tiles t = build_tiles<kPdl>(p, smem);
  const i64 nkb = p.k / kBlock;
  for_each_tile(t.experts, t.ends, t.total, [&](const Expert& e, i64 tile) { f(lane_at(p, e, tile, t.ktiles, nkb)); });
}

}  // namespace mxfp8

template <typename T, bool kVec, bool kPdl>
__global__ void __launch_bounds__(mxfp8::kThreads, mxfp8::kMinBlocks) mxfp8_quantize(const Mxfp8Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  mxfp8::over_tiles<kPdl>(p, smem, [&](const mxfp8::LaneAt& l) { mxfp8::quantize_tile<T, kVec>(p, l); });
}

template <typename T, bool kVec, bool kPdl>
__global__ void __launch_bounds__(mxfp8::kThreads, mxfp8::kMinBlocks) mxfp8_dequantize(const Mxfp8Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  mxfp8::over_tiles<kPdl>(p, smem, [&](const mxfp8::LaneAt& l) { mxfp8::dequantize_tile<T, kVec>(p, l); });
}

// ---------------------------------------------------------------------------------------------
// The TMA quantizer (sm_90+, the vector path's alignment): the same tiles, results and tile order
// as mxfp8_quantize, but each input tile (64 rows × 256 columns) reaches shared memory through one
// 2-D TMA copy (tensor map over x built on the host, completing on the stage's mbarrier) kStages
// tiles ahead of the conversion, so each SM keeps its loads in flight while it converts —
// independent of the register file, which caps the register kernel at one tile per CTA. Thread 0
// issues the copy of tile i + kStages once every warp has read tile i (a CTA barrier); the
// mbarriers and the expert table follow the stages in shared memory. PDL launches first warm L2
// with the CTA's first kPrefetchTiles tiles (TMA prefetch, before the wait): measured on the H100
// (S5-1) 4096×7168 37.1 → 33.7 µs with tma2's two stages prefetched (34.6 with one tile),
// 16384×7168 126.8 → 123.2 µs, 128×7168 4.70 → 4.26 µs.
namespace mxfp8 {

enum : int {
  kPrefetchTiles = 2,         // tiles per CTA prefetched into L2 before the PDL wait (≤ kStages)
  kRowBytes = kTileCols * 2,  // one tile row of bf16/f16
  kStageBytes = kTileRows * kRowBytes,
};

}  // namespace mxfp8

// The TMA kernel's parameter: the tensor map of x ([rows, k] 16-bit, row stride x_stride, box
// {256, 64}, no swizzle, out-of-bounds elements read as 0) and the common parameters. Mirrored by
// `TmaQuantParams` in ops-mxfp8/src/ffi.rs; a __grid_constant__ so that TMA reads the map in place.
struct Mxfp8TmaParams {
  mxfp8::TmaDesc x_map;
  Mxfp8Params p;
};

namespace mxfp8 {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
KILN_DEVICE u32 smem_addr(const void* ptr) {
  return static_cast<u32>(__cvta_generic_to_shared(ptr));
}

// Thread 0: the copy of an expert's tile `local` into stage `dst`, completing on `bar`.
KILN_DEVICE void issue_tile(const TmaDesc* map, const Expert& e, i64 local, i64 ktiles, u32 dst, u32 bar) {
  const i64 rt = local / ktiles;
  const i64 kt = local - rt * ktiles;
  mbar_arrive_expect_tx(bar, kStageBytes);  // the whole box, out-of-bounds zeros included
  tma_load_2d(dst, map, bar, static_cast<int>(kt * kTileCols), static_cast<int>(e.row0 + rt * kTileRows));
}
#endif

}  // namespace mxfp8

template <typename T, int kStages, bool kPdl>
__global__ void __launch_bounds__(mxfp8::kThreads, 1) mxfp8_quantize_tma(const __grid_constant__ Mxfp8TmaParams prm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace mxfp8;
  const Mxfp8Params& p = prm.p;
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int S = kStages;
  // Stages (128-byte aligned), then S mbarriers padded to 16 bytes, then the expert table.
  unsigned char* table = smem + S * kStageBytes + (8 * S + 15) / 16 * 16;
  const u32 stage0 = smem_addr(smem);
  const u32 bar0 = smem_addr(smem + S * kStageBytes);
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) mbar_init(bar0 + 8 * s, 1);
    fence_barrier_init();
    prefetch_tmap(&prm.x_map);
    if constexpr (kPdl) {
      // Before the PDL wait the expert table is unknown: warm L2 with the tiles this CTA would
      // convert first if x were one expert (tile t = row tile t / ktiles, column tile t % ktiles).
      // Expert boundaries shift the real tiles by a few rows; the lines are the first wave's
      // either way. A prefetch moves nothing into the kernel's view (L2 is coherent).
      const i64 kt_n = col_tiles(p);
      for (int s = 0; s < kPrefetchTiles && s < S; ++s) {
        const i64 t = blockIdx.x + static_cast<i64>(s) * gridDim.x;
        const i64 rt = t / kt_n;
        if (rt * kTileRows >= p.rows) break;
        tma_prefetch_2d(&prm.x_map, static_cast<int>((t - rt * kt_n) * kTileCols), static_cast<int>(rt * kTileRows));
      }
    }
  }
  const Tiles tl = build_tiles<kPdl>(p, table);  // its barrier also publishes the mbarriers
  const i64 ktiles = tl.ktiles;
  const i64 total = tl.total;
  const i64 nkb = p.k / kBlock;
  const bool producer = threadIdx.x == 0;
  ExpertScan feed{tl.experts, tl.ends, 0};  // the tiles to issue
  ExpertScan use{tl.experts, tl.ends, 0};   // the tiles to convert
  i64 next = blockIdx.x;  // the next tile to issue
  if (producer) {
    // The copies (async proxy) must see the predecessor's writes, ordered by the PDL wait.
    fence_proxy_async_global();
    for (int s = 0; s < S && next < total; ++s, next += gridDim.x) {
      i64 local;
      const Expert e = feed.at(next, local);
      issue_tile(&prm.x_map, e, local, ktiles, stage0 + s * kStageBytes, bar0 + 8 * s);
    }
  }
  int s = 0;
  u32 parity = 0;
  for (i64 t = blockIdx.x; t < total; t += gridDim.x) {
    i64 local;
    const Expert e = use.at(t, local);
    const LaneAt l = lane_at(p, e, local, ktiles, nkb);
    mbar_wait(bar0 + 8 * s, parity);
    const unsigned char* st = smem + s * kStageBytes + (threadIdx.x & 31) * 16;
    uint4 raw[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      raw[j] = make_uint4(0u, 0u, 0u, 0u);
      if (l.data(j) && l.col < p.k) raw[j] = *reinterpret_cast<const uint4*>(st + (l.row + j * kWarps) * kRowBytes);
    }
    __syncthreads();  // every warp has read stage s: it may be refilled
    if (producer && next < total) {
      i64 nlocal;
      const Expert ne = feed.at(next, nlocal);
      issue_tile(&prm.x_map, ne, nlocal, ktiles, stage0 + s * kStageBytes, bar0 + 8 * s);
      next += gridDim.x;
    }
    convert_tile<T, true>(p, l, raw);
    if (++s == S) {
      s = 0;
      parity ^= 1u;
    }
  }
#endif
}
