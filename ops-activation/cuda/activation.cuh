// activation.cuh — gated activations: out[r, i] = act(x[r, i]) · x[r, d + i] for r < rows, i < d.
//
// Math (all arithmetic in f32; T ∈ {__half, __nv_bfloat16, float}; g = f32(x[r, i]), u = f32(x[r, d + i])):
//   silu(g)      = g / (1 + exp(-g))
//   gelu(g)      = g · ½(1 + erf(g/√2))
//   gelu_tanh(g) = g · ½(1 + tanh(√(2/π)(g + 0.044715 g³)))
// Rounding:
//   kRound = false: out = RN_T(act(g) · u), one rounding. Compiled with the arch-default fast-math
//     policy (on sm_90: __expf, approximate division, ftz). Written without cancellation for
//     g ≪ 0: gelu as g·½erfc(-g/√2), gelu_tanh through ½(1 + tanh(y)) = 1 / (1 + exp(-2y)).
//   kRound = true: out = RN_T(f32(RN_T(act(g))) · u): PyTorch eager's `F.act(g).to(T) * u`, with
//     PyTorch's operation order pinned by __f*_rn intrinsics (so no contraction can change it)
//     and the precise libm functions (the spec compiles this with FastMath::PRECISE).
//   Optional SiLU clamp (L > 0, already RN_T-rounded by the host): g = g > L ? L : g,
//     u = u > L ? L : (u < -L ? -L : u) — NaN propagates, as torch.clamp does.
// Row filter (a skipped row is neither read nor written; ids read after the PDL wait, or before it
// in the tiled kernel with kIdsEarly, where the caller vouches that they are final, and warps
// with no kept row then exit before the wait, except in block 0; without kIdsEarly, kPrefetch
// makes the first wave of blocks (linear index < hint_blocks) peek at the ids before the wait as
// hints for L2 prefetches only, see row_hinted):
//   expert: skip iff expert_ids[r / expert_step] == -1;
//   sorted: skip iff r >= *num_tokens_post_padded or sorted_token_ids[r] >= num_valid_tokens.
// Layout: x rows of `in_stride` elements (gate at [0, d), up at [d, 2d)); out rows of `out_stride`.
// Launch: block (tx, ty) with tx·ty = kThreads = 256 (128 for inputs under 512 KiB: more SMs
//   issue loads), grid (column blocks, row blocks split over y and z: y ≤ 65535). Thread (x, y) of
//   block (bx, by, bz) handles row (bz·gridDim.y + by)·ty + y and, of that row's units
//   (16-byte vectors of kVec16<T> elements when the host found pointers, strides and d
//   aligned — flag kVectorPath; their 8-byte halves for inputs under 64 KiB, flag kHalfVector,
//   to halve the serial arithmetic — else single elements), the units bx·tx·kPer + x + j·tx
//   for j < kPer. Blocks are dispatched x-fastest, i.e. in memory order.
//   No division in the index math (but the expert filter's row / expert_step); 64-bit offsets.
//   Dependents are released right after the PDL wait (flag kEarlyTrigger; they wait for this
//   whole grid before their first read anyway), except on inputs under 512 KiB, where releasing
//   them once the loads are issued measured faster; unfiltered vector-path launches of inputs up
//   to 16 MiB prefetch their input into L2 before the wait (flag kPrefetch; filtered vector-path
//   launches, at every size, prefetch the rows of their first wave of blocks that the ids keep
//   or, read before the wait, hint at). Each thread issues all its loads before the first use.
//   Filtered launches of many blocks (flag kReleaseKept, with kEarlyTrigger) release dependents
//   only once the filter keeps the block's row (after the id load), and skipped blocks or warps
//   exit without the trigger (an exit counts as one): a trigger right before the exit kept a
//   skipped block's slot much longer. Measured on the H100 (S13-3…S13-5, silu bf16, general
//   kernel, µs, skip 0 / 50 / 90 %): 16384×8192 130.3 / 70.8 / 40.2 → 130.3 / 70.7 / 25.3,
//   16384×28672 456.5 / 245.7 / 140.1 → 457.1 / 246.3 / 101.2. On grids of a wave or so the
//   later release delays the dependents' start instead (32×8192 skip 50 % 1.18 → 1.41 µs), hence
//   many blocks only (plan.rs, release_kept_flags).
// Kernels (the host's choice; the same results): act_and_mul_kernel (every launch),
//   act_and_mul_wide_kernel for unfiltered vector-path silu / gelu_tanh launches in the default
//   rounding on 16-bit types (no filter code, the arithmetic of a unit in two phases),
//   act_and_mul_filtered_kernel for the general kernel's filtered vector-path launches with the
//   expert filter, the default rounding and PDL (its flags fixed at compile time), and
//   act_and_mul_tiled_kernel for filtered vector-path launches that may read the ids before the
//   wait, or whose caller forces a tile (several rows per block, the kept ones found by a ballot).

#include <kiln/common.cuh>
#include <kiln/vec.cuh>
#include <kiln/convert.cuh>
#include <kiln/pdl.cuh>

namespace kiln_act {

// Keep in sync with ops-activation/src/lib.rs (THREADS, VEC_PER, SCALAR_PER, FLAG_*). Enumerators,
// not constexpr variables: those would be emitted into the PTX as globals.
enum : int {
  kThreads = 256,
  kVecPer = 1,     // 16-byte vectors per thread and operand (vector path): the serial compute
                   // after the loads is on the critical path of small launches
  kScalarPer = 4,  // elements per thread and operand (scalar path)
};

enum : int { kSilu = 0, kGelu = 1, kGeluTanh = 2 };

enum : int {
  kVectorPath = 1,
  kFilterExpert = 2,
  kFilterSorted = 4,
  kPrefetch = 8,
  kEarlyTrigger = 16,
  kHalfVector = 32,
  kIdsEarly = 64,
  kReleaseKept = 128,
};

struct Params {
  const void* in;                     // rows × in_stride elements of T
  void* out;                          // rows × out_stride elements of T
  const int* expert_ids;              // kFilterExpert: ≥ ceil(rows / expert_step) ids
  const int* sorted_token_ids;        // kFilterSorted: ≥ rows ids
  const int* num_tokens_post_padded;  // kFilterSorted: one id
  long long rows;
  long long d;                        // output width; input width is 2d
  long long in_stride;                // elements
  long long out_stride;               // elements
  unsigned expert_step;               // 1 ≤ expert_step ≤ max(rows, 1)
  int num_valid_tokens;
  float clamp;                        // > 0: SiLU clamp limit; 0: none
  int flags;                          // the flags above
  int tile;                           // act_and_mul_tiled_kernel: rows per thread row, 1..32
  int hint_blocks;                    // filtered kPrefetch: the blocks (linear index below it:
                                      // the first wave, in the tiled kernel its first 1 / tile)
                                      // that prefetch kept or hinted rows
};

// The launch's flags: p.flags, or with kFixed ≠ kRuntimeFlags that constant (the filtered
// kernel's instantiations: its branches then fold away at compile time).
enum : int { kRuntimeFlags = -1 };
template <int kFixed>
KILN_DEVICE int flags_of(const Params& p) {
  return kFixed == kRuntimeFlags ? p.flags : kFixed;
}

// The block's linear index in dispatch order (x fastest).
KILN_DEVICE long long block_linear() {
  return (static_cast<long long>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
}

// silu and gelu_tanh in the default rounding are g / den(g) with den = 1 + exp(·) (gelu_tanh:
// -2·√(2/π)·(g + 0.044715 g³) = g·(-c1 - c3·g²) in the exponent). The vector path computes the
// denominators of four elements, then their divisions (see row_chunk).
template <int kAct>
inline constexpr bool kTwoPhase = kAct == kSilu || kAct == kGeluTanh;

template <int kAct>
KILN_DEVICE float denominator(float g) {
  if constexpr (kAct == kSilu) {
    return 1.0f + expf(-g);
  } else {
    return 1.0f + expf(g * fmaf(-0.07135481627260025f, g * g, -1.5957691216057308f));
  }
}

KILN_DEVICE void clamp_gu(float& g, float& u, float clamp) {
  if (clamp > 0.0f) {
    g = g > clamp ? clamp : g;
    u = u > clamp ? clamp : (u < -clamp ? -clamp : u);
  }
}

// Default math (fast-math policy of the spec).
template <int kAct>
KILN_DEVICE float act_fast(float g) {
  if constexpr (kAct == kGelu) {
    // ½(1 + erf(x)) = ½·erfc(-x): no cancellation for g ≪ 0.
    return g * (0.5f * erfcf(g * -0.70710678118654752f));
  } else {
    return g / denominator<kAct>(g);
  }
}

// PyTorch eager's order (aten/native/cuda activation kernels, opmath f32), every step IEEE RN.
template <int kAct>
KILN_DEVICE float act_exact(float g) {
  if constexpr (kAct == kSilu) {
    return __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
  } else if constexpr (kAct == kGelu) {
    return __fmul_rn(__fmul_rn(g, 0.5f), __fadd_rn(1.0f, erff(__fmul_rn(g, 0.70710678118654752f))));
  } else {
    const float cube = __fmul_rn(__fmul_rn(g, g), g);
    const float inner = __fmul_rn(0.7978845608028654f, __fmaf_rn(0.044715f, cube, g));
    return __fmul_rn(__fmul_rn(0.5f, g), __fadd_rn(1.0f, tanhf(inner)));
  }
}

template <typename T, int kAct, bool kRound>
KILN_DEVICE T gated(T gate, T up, float clamp) {
  float g = kiln::to_f32<T>(gate);
  float u = kiln::to_f32<T>(up);
  if (clamp > 0.0f) {
    g = g > clamp ? clamp : g;
    u = u > clamp ? clamp : (u < -clamp ? -clamp : u);
  }
  if constexpr (kRound) {
    return kiln::from_f32<T>(__fmul_rn(kiln::round_to<T>(act_exact<kAct>(g)), u));
  } else {
    return kiln::from_f32<T>(act_fast<kAct>(g) * u);
  }
}

// An id: a plain load (after the PDL wait, or before it with kIdsEarly), or with kHint a relaxed
// GPU-scope load before the wait (see row_hinted).
template <bool kHint>
KILN_DEVICE int load_id(const int* ptr) {
  if constexpr (kHint) {
    int v;
    asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(ptr));
    return v;
  } else {
    return *ptr;
  }
}

// Whether the row filter drops `row` (its ids are read here: after the PDL wait, or before it with
// kIdsEarly; kHint: see row_hinted). All reads are issued before any is used; every index is in
// bounds (host-checked).
template <bool kHint = false, int kFixed = kRuntimeFlags>
KILN_DEVICE bool row_skipped(const Params& p, long long row, unsigned id_index) {
  const int flags = flags_of<kFixed>(p);
  int expert = 0, token = 0, post_padded = 0;
  if (flags & kFilterExpert) expert = load_id<kHint>(p.expert_ids + id_index);
  if (flags & kFilterSorted) {
    token = load_id<kHint>(p.sorted_token_ids + row);
    post_padded = load_id<kHint>(p.num_tokens_post_padded);
  }
  bool skip = false;
  if (flags & kFilterExpert) skip = expert == -1;
  if (flags & kFilterSorted) skip = skip || row >= post_padded || token >= p.num_valid_tokens;
  return skip;
}
// The expert filter's id index of `row` (row / expert_step).
KILN_DEVICE unsigned id_index(const Params& p, long long row) {
  return static_cast<unsigned>(row) / p.expert_step;
}
template <bool kHint = false, int kFixed = kRuntimeFlags>
KILN_DEVICE bool row_skipped(const Params& p, long long row) {
  return row_skipped<kHint, kFixed>(p, row, id_index(p, row));
}

// A hint, before the PDL wait, whether the filter keeps `row`: row_skipped's test on ids that the
// predecessor may still be writing. Only L2 prefetches depend on it (what is computed depends on
// the ids read after the wait alone). The loads are relaxed GPU-scope loads: morally strong, so
// racing with the predecessor's writes is defined, and past L1, so that no line fetched here can
// serve the reads after the wait; every index is in bounds as in row_skipped. Read by the first
// wave of blocks only (p.hint_blocks): those can be resident while the predecessor runs, and for
// them the id and row latencies overlap it; a later block would only add a round trip. Measured
// on the H100 (S10-2, silu bf16, twice each, alternating): skip 0 % 128×8192 2.60 → 2.04 µs,
// 512×8192 5.81 → 5.02, 2048×8192 18.61 → 18.25; skip 50 % 512×8192 3.96 → 3.13; skip 90 %
// 512×8192 1.93 → 2.12 (a skipped row's second id load); details in plan.rs.
template <int kFixed = kRuntimeFlags>
KILN_DEVICE bool row_hinted(const Params& p, long long row, unsigned id_index) {
  return !row_skipped<true, kFixed>(p, row, id_index);
}
template <int kFixed = kRuntimeFlags>
KILN_DEVICE bool row_hinted(const Params& p, long long row) {
  return row_hinted<kFixed>(p, row, id_index(p, row));
}

// Warms L2 with this block's share of `row` (gate and up) before the PDL wait, while the
// predecessor may still run: the DRAM latency then overlaps its tail. A prefetch changes no data
// and L2 is the GPU's point of coherence, so the loads after the wait still see every write of
// the predecessor. Host-chosen (kPrefetch) on the vector path (16-byte aligned addresses) for
// small unfiltered launches (on large ones the extra requests cost more than the early start
// gains) and for filtered ones, in their first wave of blocks only (p.hint_blocks, see
// row_hinted): the kept rows with kIdsEarly (tiled kernel, ids read first), else the rows that
// row_hinted hints at. One thread per row issues two bulk prefetches.
template <typename T, int N>
KILN_DEVICE void prefetch_l2(const Params& p, long long row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const long long units = static_cast<long long>(static_cast<unsigned long long>(p.d) / N);
  const long long first = static_cast<long long>(blockIdx.x) * (blockDim.x * kVecPer);
  const long long last = min(units, first + static_cast<long long>(blockDim.x * kVecPer));
  // Byte range of this block's units, widened to 16-byte boundaries: on this path the row and
  // d·sizeof(T) are 16-byte aligned, so the widened range stays inside the row's gate (and up).
  const long long begin = (first * N * static_cast<long long>(sizeof(T))) & ~15LL;
  const long long end = (last * N * static_cast<long long>(sizeof(T)) + 15) & ~15LL;
  const char* gate = reinterpret_cast<const char*>(static_cast<const T*>(p.in) + row * p.in_stride) + begin;
  const char* up = gate + p.d * static_cast<long long>(sizeof(T));
  const unsigned bytes = static_cast<unsigned>(end - begin);
  kiln::pdl_prefetch_l2<true>(gate, bytes);
  kiln::pdl_prefetch_l2<true>(up, bytes);
#endif
}

// One unit (N elements) of the output from its gate and up vectors.
template <typename T, int N, int kAct, bool kRound, bool kWide>
KILN_DEVICE void unit(kiln::Vec<T, N>& r, const kiln::Vec<T, N>& g, const kiln::Vec<T, N>& u, float clamp) {
  if constexpr (!kRound && kTwoPhase<kAct>) {
    // Four denominators (their MUFU.EX2s back to back), then four divisions: measured on the
    // H100 (S5-10) 1×8192 0.885 → 0.855 µs, 512×8192 5.02 → 4.93, 128×28672 4.52 → 4.42.
    // The wide kernel (kWide) takes all N denominators first: faster still, but in the general
    // kernel it cost filtered launches 5-9 % (S5-9), hence the separate instantiation.
    constexpr int H = kWide || N <= 4 ? N : 4;
#pragma unroll
    for (int k0 = 0; k0 < N; k0 += H) {
      float gf[H], uf[H], den[H];
#pragma unroll
      for (int k = 0; k < H; ++k) {
        gf[k] = kiln::to_f32<T>(g[k0 + k]);
        uf[k] = kiln::to_f32<T>(u[k0 + k]);
        clamp_gu(gf[k], uf[k], clamp);
        den[k] = denominator<kAct>(gf[k]);
      }
#pragma unroll
      for (int k = 0; k < H; ++k) r[k0 + k] = kiln::from_f32<T>(gf[k] / den[k] * uf[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) r[k] = gated<T, kAct, kRound>(g[k], u[k], clamp);
  }
}

// One thread's share of one row: kPer units of N elements of gate and up, all loaded first, then
// computed and stored. kLoadTrigger: the code that releases dependents once the loads are issued
// (launches without kEarlyTrigger) sits between the loads and the arithmetic; the instantiation
// for early-trigger launches leaves it out, because the trigger's memory clobber also pins the
// compiler's schedule (measured on the H100, S5-4: without it 2048×8192 18.08 → 17.91 µs,
// 128×28672 4.54 → 4.27).
template <typename T, int N, int kPer, int kAct, bool kRound, bool kPdl, bool kLoadTrigger, bool kWide = false, int kFixed = kRuntimeFlags>
KILN_DEVICE void row_chunk(const Params& p, long long row) {
  using V = kiln::Vec<T, N>;
  const long long units = static_cast<long long>(static_cast<unsigned long long>(p.d) / N);
  const T* __restrict__ gate = static_cast<const T*>(p.in) + row * p.in_stride;
  const T* __restrict__ up = gate + p.d;
  T* __restrict__ out = static_cast<T*>(p.out) + row * p.out_stride;
  const long long first = static_cast<long long>(blockIdx.x) * (blockDim.x * kPer) + threadIdx.x;
  V g[kPer], u[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const long long c = first + static_cast<long long>(j) * blockDim.x;
    if (c < units) {
      // Plain (coherent) loads: as fast here as ld.global.nc, and they need no assumption about
      // the non-coherent cache after the PDL wait.
      g[j] = kiln::load_vec<T, N>(gate + c * N);
      u[j] = kiln::load_vec<T, N>(up + c * N);
    }
  }
  if constexpr (kLoadTrigger) {
    if (!(flags_of<kFixed>(p) & kEarlyTrigger)) kiln::pdl_launch_dependents<kPdl>();
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const long long c = first + static_cast<long long>(j) * blockDim.x;
    if (c < units) {
      V r;
      unit<T, N, kAct, kRound, kWide>(r, g[j], u[j], p.clamp);
      kiln::store_vec_stream<T, N>(out + c * N, r);
    }
  }
}

}  // namespace kiln_act

// The kernels' body. kWide (act_and_mul_wide_kernel): unfiltered vector-path launches only, with
// the denominators of all N elements of a unit first.
template <typename T, int kAct, bool kRound, bool kPdl, bool kWide, int kFixed = kiln_act::kRuntimeFlags>
KILN_DEVICE void act_body(const kiln_act::Params& p) {
  const int flags = kiln_act::flags_of<kFixed>(p);
  const long long row = (static_cast<long long>(blockIdx.z) * gridDim.y + blockIdx.y) * blockDim.y + threadIdx.y;
  // The expert id's index, before the wait: the division then overlaps it.
  const unsigned id_index = !kWide && (flags & kiln_act::kFilterExpert) ? kiln_act::id_index(p, row) : 0u;
  if constexpr (kPdl) {
    if ((flags & kiln_act::kPrefetch) && row < p.rows && threadIdx.x == 0 &&
        (kWide || !(flags & (kiln_act::kFilterExpert | kiln_act::kFilterSorted)) ||
         (kiln_act::block_linear() < p.hint_blocks && kiln_act::row_hinted<kFixed>(p, row, id_index)))) {
      if (flags & kiln_act::kHalfVector) {
        kiln_act::prefetch_l2<T, kiln::kVec16<T> / 2>(p, row);
      } else {
        kiln_act::prefetch_l2<T, kiln::kVec16<T>>(p, row);
      }
    }
  }
  // Before the first read: the input and the ids may be the predecessor's output, and `out`
  // may still be read by it.
  kiln::pdl_wait<kPdl>();
  // kReleaseKept (filtered launches of many blocks): dependents are released once the filter
  // keeps the row, and a skipped block exits without the trigger (its exit counts as one). See
  // the flag's comment at the top.
  const bool filtered = !kWide && (flags & (kiln_act::kFilterExpert | kiln_act::kFilterSorted));
  const bool release_kept = filtered && (flags & kiln_act::kReleaseKept);
  if ((flags & kiln_act::kEarlyTrigger) && !release_kept) kiln::pdl_launch_dependents<kPdl>();
  if (row >= p.rows) return;
  if (filtered && kiln_act::row_skipped<false, kFixed>(p, row, id_index)) return;
  if ((flags & kiln_act::kEarlyTrigger) && release_kept) kiln::pdl_launch_dependents<kPdl>();
  // Half vectors are for inputs under 64 KiB only, so never with kEarlyTrigger.
  if (flags & kiln_act::kHalfVector) {
    kiln_act::row_chunk<T, kiln::kVec16<T> / 2, kiln_act::kVecPer, kAct, kRound, kPdl, true, kWide, kFixed>(p, row);
  } else if (kWide || (flags & kiln_act::kVectorPath)) {
    if (flags & kiln_act::kEarlyTrigger) {
      kiln_act::row_chunk<T, kiln::kVec16<T>, kiln_act::kVecPer, kAct, kRound, kPdl, false, kWide, kFixed>(p, row);
    } else {
      kiln_act::row_chunk<T, kiln::kVec16<T>, kiln_act::kVecPer, kAct, kRound, kPdl, true, kWide, kFixed>(p, row);
    }
  } else {
    kiln_act::row_chunk<T, 1, kiln_act::kScalarPer, kAct, kRound, kPdl, true, false, kFixed>(p, row);
  }
}

template <typename T, int kAct, bool kRound, bool kPdl>
__global__ void __launch_bounds__(kiln_act::kThreads) act_and_mul_kernel(const kiln_act::Params p) {
  act_body<T, kAct, kRound, kPdl, false>(p);
}

// Unfiltered vector-path launches of silu / gelu_tanh in the default rounding (the host's choice):
// no filter code, and the denominators of a whole unit before its divisions. Measured on the H100
// against the general kernel (S6-1, both twice in one call): 2048×8192 18.05 → 17.90 µs,
// 512×8192 4.93 → 4.74, 128×28672 4.44 → 4.27, 1×8192 0.84 → 0.82; 34 / 39 registers (silu /
// gelu_tanh) instead of 32. A kernel of its own because in the general kernel the same
// arithmetic cost filtered launches 5-9 % (S5-9); capping it at 32 registers (7 CTAs per SM)
// spilled and was 3-18 % slower (S6-1).
template <typename T, int kAct, bool kPdl>
__global__ void __launch_bounds__(kiln_act::kThreads) act_and_mul_wide_kernel(const kiln_act::Params p) {
  static_assert(kiln_act::kTwoPhase<kAct> && sizeof(T) == 2, "silu / gelu_tanh on 16-bit types");
  act_body<T, kAct, false, kPdl, true>(p);
}

// Filtered 16-byte-vector launches of the general kernel's grids with the expert filter alone,
// the default rounding and PDL (the host's choice, see filtered_fixed in plan.rs): the
// general kernel's body with the launch's flags as a compile-time constant — vector path, expert
// filter, id hints and L2 prefetch of the first wave, and the PDL release (kRelease: 0 once the
// loads are issued, 1 right after the wait, 2 once the filter keeps the row, see kReleaseKept) —
// so that no flag branch sits between the wait and the loads. Measured on the H100 (S12-17, silu
// bf16, µs, general kernel → flags fixed at compile time, skip 0 / 50 / 90 %): 32×8192 1.46 /
// 1.24 / 1.21 → 1.38 / 1.18 / 1.16, 128×8192 2.04 / 1.73 / 1.35 → 1.96 / 1.61 / 1.31, 32×28672
// 1.94 / 1.67 / 1.28 → 1.87 / 1.56 / 1.19, 128×28672 4.53 / 2.90 / 1.93 → 4.60 / 2.86 / 1.76,
// 512×8192 4.99 / 3.11 / 2.10 → 5.00 / 3.06 / 1.86.
template <typename T, int kAct, int kRelease>
__global__ void __launch_bounds__(kiln_act::kThreads) act_and_mul_filtered_kernel(const kiln_act::Params p) {
  static_assert(kRelease >= 0 && kRelease <= 2, "release: 0 after the loads, 1 after the wait, 2 once kept");
  constexpr int kFlags = kiln_act::kVectorPath | kiln_act::kFilterExpert | kiln_act::kPrefetch |
                         (kRelease >= 1 ? kiln_act::kEarlyTrigger : 0) | (kRelease == 2 ? kiln_act::kReleaseKept : 0);
  act_body<T, kAct, false, true, false, kFlags>(p);
}

// Filtered vector-path launches whose thread rows are whole warps (tx ≥ 32; the host's choice
// from the grid size, see plan.rs): thread row y of block b takes the rows b·ty·tile + y + k·ty
// for k < tile (1 ≤ tile ≤ 32). After the PDL wait (before it with kIdsEarly, which also
// prefetches the first wave's kept rows into L2; without it, kPrefetch prefetches the rows that
// ids peeked before the wait hint at), lane k of each warp reads the filter of
// its row k (one load per lane; contiguous ids when ty = 1), a ballot gathers the kept rows, and
// the warp then works through the kept rows only: a skipped row costs one lane one id load
// instead of costing a block. Column mapping as in the general kernel with kVecPer = 1.
// Launches without kEarlyTrigger release dependents at exit. The default rounding is held
// to 32 registers (8 CTAs per SM, as the general kernel; no spills), the rounding form to 40.
// Measured on the H100 (S7-3, silu bf16, skip 0 / 50 / 90 % of the rows, tile 2 against the
// general kernel): 8192×8192 66.8 / 37.0 / 20.6 µs → 67.4 / 35.5 / 11.9; 40 registers instead of
// 32 gave 67.1 / 36.2 / 12.0; prefetching the next kept rows into L2 (prefetch.global.L2) was
// 8-25 % slower at skip 0 (S7-2); loading the next kept row before computing the current one
// (software pipelining, 40 registers) was slower at skip 90 % (S7-4); two kept rows per
// iteration with all four loads first (40 registers, 6 CTAs per SM) gained 0.5-1 % at skip 0 from
// 2048 rows but lost 15 % at skip 90 % on 8192-16384 × 2·14336 and 3-4 % on small launches with
// the ids read before the wait (S7-13, S7-14).
template <typename T, int kAct, bool kRound, bool kPdl>
__global__ void __launch_bounds__(kiln_act::kThreads, kRound ? 6 : 8) act_and_mul_tiled_kernel(const kiln_act::Params p) {
  using namespace kiln_act;
  constexpr int N = kiln::kVec16<T>;
  using V = kiln::Vec<T, N>;
  const long long first_row =
      (static_cast<long long>(blockIdx.z) * gridDim.y + blockIdx.y) * (static_cast<long long>(blockDim.y) * p.tile) + threadIdx.y;
  const int lane = static_cast<int>(threadIdx.x & 31);
  const long long mine = first_row + static_cast<long long>(lane) * blockDim.y;
  // kIdsEarly (the caller vouches that the ids are final before this kernel starts): the ids
  // before the wait, and with kPrefetch the first wave's kept rows into L2 while the
  // predecessor runs.
  const auto kept_rows = [&] { return __ballot_sync(0xffffffffu, lane < p.tile && mine < p.rows && !row_skipped(p, mine)); };
  unsigned kept = 0;
  if (p.flags & kIdsEarly) {
    kept = kept_rows();
    // A warp with no kept row leaves before the wait (a block whose warps all leave frees its
    // slot at once, as SGLang's skipped blocks do), except in block 0: that block always waits,
    // so this grid can neither complete nor release its dependents before its predecessor has
    // completed, and the chain of PDL waits stays transitive. (On the H100 a grid whose blocks
    // all left early still did not complete ahead of its predecessor (S9-2); PTX does not promise
    // that, block 0 does.)
    // Measured on the H100 (S9-2, silu bf16, skip 90 %): 512×28672 5.46 → 4.53 µs, 512×8192
    // 2.29 → 2.03, 128×28672 2.11 → 1.87, 16384×28672 77.8 → 71.4; skip 0 / 50 % unchanged.
    if (!kept && (blockIdx.x | blockIdx.y | blockIdx.z) != 0) return;
  }
  if constexpr (kPdl) {
    // kPrefetch: the first wave warms L2 with its rows while the predecessor runs — the kept
    // ones with kIdsEarly, else those that ids peeked at now hint at (row_hinted). The first warp
    // of each thread row decides, its thread 0 issues the prefetches. The host limits this to the
    // first 1 / tile of the wave (p.hint_blocks), as many rows as the general kernel's first wave
    // prefetches: more only competed with the predecessor for DRAM (plan.rs, prefetch_blocks).
    if ((p.flags & kPrefetch) && threadIdx.x < 32 && block_linear() < p.hint_blocks) {
      const unsigned rows = (p.flags & kIdsEarly)
                                ? kept
                                : __ballot_sync(0xffffffffu, lane < p.tile && mine < p.rows && row_hinted(p, mine));
      if (threadIdx.x == 0) {
        for (unsigned rest = rows; rest; rest &= rest - 1) {
          prefetch_l2<T, N>(p, first_row + static_cast<long long>(__ffs(rest) - 1) * blockDim.y);
        }
      }
    }
  }
  kiln::pdl_wait<kPdl>();
  const bool release_kept = p.flags & kReleaseKept;
  if ((p.flags & kEarlyTrigger) && !release_kept) kiln::pdl_launch_dependents<kPdl>();
  if (!(p.flags & kIdsEarly)) kept = kept_rows();
  const long long c = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!kept || c >= static_cast<long long>(static_cast<unsigned long long>(p.d) / N)) return;
  // kReleaseKept: warps with no kept row exit without the trigger (see act_body).
  if ((p.flags & kEarlyTrigger) && release_kept) kiln::pdl_launch_dependents<kPdl>();
  const T* __restrict__ in = static_cast<const T*>(p.in) + first_row * p.in_stride + c * N;
  T* __restrict__ out = static_cast<T*>(p.out) + first_row * p.out_stride + c * N;
  const long long in_step = static_cast<long long>(blockDim.y) * p.in_stride;
  const long long out_step = static_cast<long long>(blockDim.y) * p.out_stride;
  while (kept) {
    const int k = __ffs(kept) - 1;
    kept &= kept - 1;
    const T* gate = in + k * in_step;
    const V g = kiln::load_vec<T, N>(gate), u = kiln::load_vec<T, N>(gate + p.d);
    V r;
    unit<T, N, kAct, kRound, false>(r, g, u, p.clamp);
    kiln::store_vec_stream<T, N>(out + k * out_step, r);
  }
}
