// mxfp8/experts.cuh — the device-side expert scheduler shared by the kernels of kiln-mxfp8: the
// per-expert metadata (expert_offsets, tokens_per_expert, blockscale_offsets: int32, on the device,
// never read by the host) is clamped, each CTA builds a table of experts and an inclusive prefix
// sum of their tile counts in shared memory, then walks tiles t = blockIdx.x, + gridDim.x, … of a
// persistent grid, mapping each tile to its expert with a forward scan (t only grows).
//
// Clamping rule (bad device contents never cause an out-of-bounds access): with rows = rows of the
// token tensors and scale_rows = rows of the scale tensor, expert g takes part with
//   m_eff = min(tokens[g], rows − offsets[g], scale_rows − scale_offsets[g])
// rows when tokens[g] > 0, 0 ≤ offsets[g] < rows, 0 ≤ scale_offsets[g] < scale_rows and
// scale_offsets[g] % scale_align == 0, and with no rows otherwise. With valid metadata m_eff is
// tokens[g]. Overlapping experts are not detected (they stay in bounds; their rows race).
//
// Shared memory (dynamic, 16-byte aligned): Expert[n] then i64 ends[n], n = max(count, 1), that is
// table_smem_bytes(n) = 24 · n bytes.
#pragma once
#include <kiln/common.cuh>

namespace mxfp8 {

using kiln::i64;

// The metadata of a launch. Null pointers mean one expert covering every row (the dense form).
struct ExpertMeta {
  const int* offsets;        // [count] first row of expert g in the token tensors
  const int* tokens;         // [count] rows of expert g
  const int* scale_offsets;  // [count] first scale row of expert g
  int count;                 // experts (≥ 1)
  int scale_align;           // required divisor of scale_offsets[g] (128: blocked layout, else 1)
  i64 rows;                  // rows of the token tensors (≤ INT_MAX, checked on the host)
  i64 scale_rows;            // rows of the scale tensor (≤ INT_MAX + 127)
};

// One expert after clamping: rows [row0, row0 + rows) of the token tensors, scale rows from srow0.
struct alignas(16) Expert {
  int row0;
  int rows;
  int srow0;
  int unused;
};

KILN_DEVICE int table_size(const ExpertMeta& m) {
  return m.tokens == nullptr ? 1 : m.count;
}

KILN_DEVICE Expert load_expert(const ExpertMeta& m, int g) {
  if (m.tokens == nullptr) return Expert{0, static_cast<int>(m.rows), 0, 0};
  const i64 off = m.offsets[g];
  const i64 n = m.tokens[g];
  const i64 so = m.scale_offsets[g];
  const bool ok = n > 0 && off >= 0 && off < m.rows && so >= 0 && so < m.scale_rows && so % m.scale_align == 0;
  if (!ok) return Expert{0, 0, 0, 0};
  i64 eff = n < m.rows - off ? n : m.rows - off;
  eff = eff < m.scale_rows - so ? eff : m.scale_rows - so;
  return Expert{static_cast<int>(off), static_cast<int>(eff), static_cast<int>(so), 0};
}

// Fills experts[0, n) and ends[0, n) (ends[g] = tiles of experts 0..=g) and returns the total.
// Every thread of the CTA calls it; it synchronises the CTA before returning. tiles_of(Expert)
// returns the expert's tile count (≥ 0).
template <int kThreads, typename TilesOf>
KILN_DEVICE i64 build_table(const ExpertMeta& m, Expert* experts, i64* ends, TilesOf tiles_of) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps");
  constexpr int kWarps = kThreads / 32;
  __shared__ i64 warp_totals[kWarps];
  const int n = table_size(m);
  const int per = (n + kThreads - 1) / kThreads;
  const int first = static_cast<int>(threadIdx.x) * per;
  i64 mine = 0;
  for (int j = 0; j < per; ++j) {
    const int g = first + j;
    if (g < n) {
      const Expert e = load_expert(m, g);
      const i64 t = tiles_of(e);
      experts[g] = e;
      ends[g] = t;  // this thread's own slot: rewritten below without a barrier
      mine += t;
    }
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  i64 incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const i64 v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_totals[warp] = incl;
  __syncthreads();
  i64 run = incl - mine;
  i64 total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const i64 v = warp_totals[w];
    if (w < warp) run += v;
    total += v;
  }
  for (int j = 0; j < per; ++j) {
    const int g = first + j;
    if (g < n) {
      run += ends[g];
      ends[g] = run;
    }
  }
  __syncthreads();
  return total;
}

// Maps a growing sequence of tile indices t < total (= ends[n − 1]) to (expert g, tile inside
// it) by a forward scan over `ends`: O(n + tiles) per walk in all.
struct ExpertScan {
  const Expert* experts;
  const i64* ends;
  int g;  // the expert of the last tile

  KILN_DEVICE Expert at(i64 t, i64& local) {
    while (ends[g] <= t) ++g;  // stops: t < total = ends[n − 1]
    local = t - (g > 0 ? ends[g - 1] : 0);
    return experts[g];
  }
};

// Calls f(expert, tile index inside the expert) for tiles blockIdx.x, blockIdx.x + gridDim.x, …
// below `total`.
template <typename F>
KILN_DEVICE void for_each_tile(const Expert* experts, const i64* ends, i64 total, F&& f) {
  ExpertScan scan{experts, ends, 0};
  for (i64 t = blockIdx.x; t < total; t += gridDim.x) {
    i64 local;
    const Expert e = scan.at(t, local);
    f(e, local);
  }
}

}  // namespace mxfp8
