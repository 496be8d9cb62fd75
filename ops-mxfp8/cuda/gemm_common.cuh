// mxfp8/gemm_common.cuh — pieces shared by the grouped MXFP8 GEMM kernels (gemm_sm90.cuh,
// gemm_sm90_wgmma.cuh, gemm_sm100.cuh): the kernel parameters, the walk over the tiles of all
// experts, the raster order inside an expert, exact E8M0 decoding and thin PTX wrappers.
//
// The GEMM: for every expert g with (clamped, see mxfp8/experts.cuh) rows [row0, row0 + m) of the
// token tensor and every output feature j < N,
//   out[row0 + t, j] = RN_out( Σ_kb  2^(sw(g,j,kb) − 127) · 2^(st(t,kb) − 127) · Σ_{k in kb} e4m3(W[g,j,k]) · e4m3(X[row0+t,k]) )
// with 32-element K-blocks kb, the weight scales sw in the 128×4 layout per expert (E·N scale
// rows, N % 128 == 0) and the token scales st in the 128×4 layout from scale row srow0 of the
// expert. Each k32 partial sum is exact-ish on the tensor cores (fp32 accumulation of e4m3
// products) and is "promoted" into an fp32 accumulator with one FMUL (scale product, exact: both
// are powers of two) and one FFMA, in K order; the output is rounded once (RN) to bf16/f16.
//
// Tiles: a tile is kBT token rows × 128 weight rows (output features) of one expert. Tiles are
// numbered expert by expert (mxfp8/experts.cuh builds the prefix over experts in shared memory);
// inside an expert, groups of kGroupM token tiles are walked weight-tile-major so that the CTAs
// running at the same time share token and weight tiles in L2.
#pragma once
#include <kiln/common.cuh>
#include <kiln/convert.cuh>
#include <mxfp8/experts.cuh>
#include <mxfp8/tma.cuh>

namespace mxfp8 {
namespace gemm {

using kiln::i64;
using kiln::u32;
using kiln::u64;
using kiln::u8;

// Enumerators, not constexpr variables: NVRTC emits namespace-scope constants into the PTX under
// per-process `_INTERNAL_` names (which is also why mxfp8/layout.cuh is not included here; the
// two layout facts used are repeated from it).
enum : int {
  kAtomRows = 128,    // rows of one 128×4 scale atom (mxfp8/layout.cuh)
  kAtomBytes = 512,   // bytes of one atom (mxfp8/layout.cuh)
  kBK = 128,          // K per pipeline stage: one 128×4 scale atom column
  kBW = 128,          // weight rows (output features) per tile
  kGroupM = 8,        // token tiles walked together (L2 raster)
  kMaxExperts = 1024,
};

// The raw problem, common to every SM90/SM100 kernel (the TMA kernels add tensor maps).
// Layout mirrored by `GemmArgs` in ops-mxfp8/src/ffi_gemm.rs.
struct GemmArgs {
  const u8* weights;         // [E, N, K] e4m3
  const u8* weight_scales;   // [E·N, K/32] e8m0, 128×4 layout (N % 128 == 0)
  const u8* tokens;          // [T, K] e4m3
  const u8* token_scales;    // [S, K/32] e8m0, 128×4 layout, expert g from row blockscale_offsets[g]
  const int* expert_offsets;      // [E]
  const int* tokens_per_expert;   // [E]
  const int* blockscale_offsets;  // [E]
  void* out;                 // [T, N] bf16/f16 (row stride N)
  i64 rows;                  // T
  i64 scale_rows;            // S (a multiple of 128)
  int experts;               // E (1..=kMaxExperts)
  int n;                     // N (a multiple of 128)
  int k;                     // K (a multiple of 128)
  int unused;
};

// Parameters of the TMA kernels (SM90 wgmma, SM100): tensor maps built on the host with
// cuTensorMapEncodeTiled (128-byte swizzle) — tokens [T, K] with box {128, token tile rows},
// weights [E·N, K] with box {128, 128} — and the raw problem. Mirrored by `TmaParams` in
// ops-mxfp8/src/ffi_gemm.rs; passed as a __grid_constant__ so that TMA can read the maps in place.
struct TmaParams {
  TmaDesc tokens_map;
  TmaDesc weights_map;
  GemmArgs args;
};

KILN_DEVICE ExpertMeta meta_of(const GemmArgs& a) {
  return ExpertMeta{a.expert_offsets, a.tokens_per_expert, a.blockscale_offsets, a.experts, kAtomRows, a.rows, a.scale_rows};
}

// Shared-memory bytes of the expert table for `experts` experts (Expert + i64 prefix each).
KILN_DEVICE constexpr int table_bytes(int experts) {
  return 24 * experts;
}

// One tile: expert g (its clamped rows), token tile mt, weight tile nt.
struct Tile {
  int g;
  int mt;
  int nt;
  Expert e;
};

// Walks the tiles of this CTA: blockIdx.x, blockIdx.x + gridDim.x, … below the total. Every role
// of a warp-specialised kernel walks the same sequence with its own walker.
template <int kBT>
struct TileWalker {
  ExpertScan scan;
  i64 total;
  int ntiles_w;  // N / 128
  i64 t;

  KILN_DEVICE TileWalker(const Expert* ex, const i64* en, i64 tot, int n) : scan{ex, en, 0}, total(tot), ntiles_w(n / kBW), t(blockIdx.x) {}

  KILN_DEVICE bool next(Tile& out) {
    if (t >= total) return false;
    i64 local;
    const Expert e = scan.at(t, local);
    const int mtiles = (e.rows + kBT - 1) / kBT;
    const i64 span = static_cast<i64>(kGroupM) * ntiles_w;
    const int grp = static_cast<int>(local / span);
    const int first = grp * kGroupM;
    const int gm = mtiles - first < kGroupM ? mtiles - first : kGroupM;
    const int r = static_cast<int>(local - grp * span);
    out.g = scan.g;
    out.mt = first + r % gm;
    out.nt = r / gm;
    out.e = e;
    t += gridDim.x;
    return true;
  }

  // Whether the tile returned last was this CTA's last one.
  KILN_DEVICE bool done() const { return t >= total; }
};

// Tiles of one expert for a token tile of kBT rows.
template <int kBT>
KILN_DEVICE i64 tiles_of(const Expert& e, int n) {
  return static_cast<i64>((e.rows + kBT - 1) / kBT) * (n / kBW);
}

// Builds the expert table in `table` (table_bytes(E) bytes of shared memory, 16-byte aligned);
// called by every thread of the CTA (it synchronises). Returns the total tile count.
template <int kThreads, int kBT>
KILN_DEVICE i64 build_tiles(const GemmArgs& a, unsigned char* table, Expert*& experts, i64*& ends) {
  experts = reinterpret_cast<Expert*>(table);
  ends = reinterpret_cast<i64*>(table + 16 * a.experts);
  const int n = a.n;
  return build_table<kThreads>(meta_of(a), experts, ends, [n](const Expert& e) { return tiles_of<kBT>(e, n); });
}

// E8M0 byte → f32, exact: 2^(b − 127); 0 is 2^-127 (subnormal), 0xFF is NaN.
KILN_DEVICE float scale_value(u32 b) {
  const u32 bits = b == 0 ? 0x00400000u : (b == 255 ? 0x7fc00000u : (b << 23));
  return __uint_as_float(bits);
}

// Byte offset, inside a 512-byte 128×4 atom, of the 4-byte word holding the scales of row r
// (0 ≤ r < 128) for the atom's 4 K-blocks (byte kb % 4 of the word).
KILN_DEVICE int atom_word(int r) {
  return (r & 31) * 16 + (r >> 5) * 4;
}

// Byte offset of the scale atom (128 rows from scale row srow0 (a multiple of 128), K-blocks
// 4·kt … 4·kt + 3) with nkb = K / 32 blocks per row.
KILN_DEVICE i64 atom_offset(i64 srow0, int kt, int nkb) {
  return srow0 * nkb + static_cast<i64>(kt) * kAtomBytes;
}

// Two outputs of adjacent columns, rounded once to TOut, as one 4-byte store.
template <typename TOut>
KILN_DEVICE void store_pair(TOut* p, float a, float b) {
  if constexpr (sizeof(TOut) == 2) {
    struct alignas(4) Pair {
      TOut x, y;
    };
    Pair v{kiln::from_f32<TOut>(a), kiln::from_f32<TOut>(b)};
    *reinterpret_cast<Pair*>(p) = v;
  } else {
    p[0] = kiln::from_f32<TOut>(a);
    p[1] = kiln::from_f32<TOut>(b);
  }
}

// ---- PTX wrappers -------------------------------------------------------------------------------

// Traps unless the launch gave at least `need` bytes of dynamic shared memory: the host computes
// the size with its own copy of each kernel's formula, and a mismatch must not corrupt memory.
KILN_DEVICE void require_smem(u32 need) {
  u32 have;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(have));
  if (have < need) __trap();
}

KILN_DEVICE u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global → shared; src_bytes = 0 fills the 16 bytes with zeros.
KILN_DEVICE void cp_async16(u32 dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
KILN_DEVICE void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
KILN_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

KILN_DEVICE void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// D = A·B for one m16n8k32 e4m3 tile (C = 0): A row-major 16×32, B column-major 32×8.
KILN_DEVICE void mma_e4m3_16832(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %10, %10, %10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(0.0f));
}

}  // namespace gemm
}  // namespace mxfp8
