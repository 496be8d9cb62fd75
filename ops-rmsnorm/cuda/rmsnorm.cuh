// rmsnorm.cuh — RMSNorm of rows, optionally fused with a residual add.
//
// Math, per row of `hidden` elements of T (f16 / bf16 / f32), weight w of W (T or f32), all in
// fp32 with IEEE round-to-nearest operations (`__f*_rn`: never contracted, fast-math independent):
//   fused add (residual != null):  v = x + r (one fp32 add);  residual <- RN_T(v)
//                                  u = RN_T(v) (default: the value an HF decoder layer normalises)
//                                      or v (flag kSumF32: SGLang's cast_x_before_out_mul form)
//   otherwise                      u = x
//   s    = Σ u² in the canonical order below        mean = s / hidden
//   rstd = rsqrt_rn(mean + eps) = RN(1 / RN(sqrt(RN(mean + eps))))
//   form kHf:    y = RN_T(RN_T(u · rstd) · w)        (HF LlamaRMSNorm: cast before the weight)
//   form kFp32:  y = RN_T((u · rstd) · w)
//   form kGemma: y = RN_T((u · rstd) · (1 + w))
//
// Canonical summation order (every launch shape below produces the same bits, and the CPU
// reference in src/reference.rs reproduces it exactly). A row is cut into chunks of V = 16 / sizeof(T)
// elements (chunk c = elements [cV, cV + V), zeros past `hidden`):
//   1. s_c  = fma-accumulation of u² over the chunk's elements in order, from +0;
//   2. S_q  = butterfly (xor 16, 8, 4, 2, 1) over the 32 chunks c = 32q + l of group q, i.e. the
//             pairwise tree that combines the highest bit of l first;
//   3. s    = the same highest-bit-first pairwise tree over q, padded with zeros to a power of two.
// Adding a +0 pad is exact (squares are ≥ +0), so the padding width does not matter.
//
// Layout: row i of x / out / residual starts at element i * stride; weight is contiguous. The
// vectorised path (flag kVec: hidden and every stride a multiple of V, every base 16-byte aligned)
// uses one 16-byte access per chunk; otherwise every chunk is accessed element by element. out may equal x (in place): every thread reads all the elements
// it writes before writing them, and no thread reads an element another thread writes.
//
// Launch shape: a row is handled by G = 2^log2_group threads; thread g owns chunks g + G·k.
//   rmsnorm_rows<T, W, K, kRows, kFused, kPdl>: k < K, rows held in registers (K ∈ {1, 2, 4}; K > 1
//     needs G ≥ 32), R = rows_per_thread rows per thread (R ≤ kRows; 1 without kFlagVec), loaded
//     together so that more loads are in flight and the weight is read once for all of them.
//     G ≤ 32: blockDim.x / G row groups per CTA (the lanes of a row consecutive), each R times
//     over; G > 32: R consecutive rows per CTA, blockDim.x = G (≤ 256 for K = 1, ≤ 512
//     otherwise). grid = rows divided by the rows per CTA, rounded up. Instantiations with kPlain
//     (K ≥ 2, unfused) load x by plain loads rather than L1::no_allocate (large launches).
//   rmsnorm_rows_stream<T, W, kFused, kPdl>: one row per CTA of G ∈ [32, 512] threads,
//     2^iters_log2 chunk slots per thread, two passes over the row (the second re-reads x and r
//     from L2), for rows too long for registers.
// With a thread's chunks k at group index q = w + (G / 32)·k (w: warp), step 3 is: a tree over k
// in the thread, then a butterfly over the warps' partials (shared memory, one barrier).
// PDL: griddepcontrol.wait before any global access (with flag kFlagPrefetch the register kernels
// first issue an L2 prefetch of their rows, which moves nothing into the kernel's view);
// launch_dependents once the row is loaded (after the first pass in the two-pass kernel), or after
// the stores in the kLate instantiation (a lone CTA with idle row groups, whose idle threads would
// otherwise release the dependents right after the wait: see late_trigger in plan.rs).
#include <kiln/common.cuh>
#include <kiln/vec.cuh>
#include <kiln/convert.cuh>
#include <kiln/math.cuh>
#include <kiln/pdl.cuh>

namespace rmsnorm {

// Params::form (enumerators, not constexpr variables: those would be emitted as PTX globals).
enum Form : int { kHf = 0, kFp32 = 1, kGemma = 2 };

// Params::flags bits.
enum Flag : int {
  kFlagVec = 1,     // 16-byte accesses (hidden % V == 0 and alignment checked by the host)
  kFlagSumF32 = 2,  // fused: normalise the fp32 sum v instead of RN_T(v)
  kFlagPrefetch = 4,  // warm L2 with the rows before the PDL wait (vector path; lib.rs picks the sizes)
};

struct Params {
  const void* x;         // rows × x_stride elements of T
  void* out;             // rows × out_stride elements of T; may equal x
  void* residual;        // fused add: rows × res_stride elements of T, read and written; else null
  const void* weight;    // hidden elements of W
  long long rows;
  long long x_stride;    // elements
  long long out_stride;
  long long res_stride;
  int hidden;
  int chunks;            // ceil(hidden / V)
  int log2_group;        // G = 1 << log2_group threads per row
  int iters_log2;        // rmsnorm_rows_stream: 2^iters_log2 chunk slots per thread
  float eps;
  int form;              // kHf, kFp32, kGemma
  int flags;             // kFlagVec | kFlagSumF32 | kFlagPrefetch
  int rows_per_thread;   // rmsnorm_rows: rows each thread handles (1 ≤ R ≤ kRows)
  float inv_hidden;      // 1 / hidden when hidden is a power of two (exact), else 0
};

// ---- 16-byte pieces: a chunk of V elements of T is one piece; of W, sizeof(W)/sizeof(T) pieces.

KILN_DEVICE unsigned word(const uint4& q, int j) {
  return j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w;
}

KILN_DEVICE void set_word(uint4& q, int j, unsigned v) {
  if (j == 0) q.x = v;
  if (j == 1) q.y = v;
  if (j == 2) q.z = v;
  if (j == 3) q.w = v;
}

// Element i of a piece, widened exactly to f32.
template <typename E>
KILN_DEVICE float unpack(const uint4& q, int i);
template <>
KILN_DEVICE float unpack<__nv_bfloat16>(const uint4& q, int i) {
  const unsigned w = word(q, i >> 1);
  return __uint_as_float((i & 1) ? (w & 0xffff0000u) : (w << 16));
}
template <>
KILN_DEVICE float unpack<__half>(const uint4& q, int i) {
  const unsigned w = word(q, i >> 1);
  return __half2float(__ushort_as_half(static_cast<unsigned short>((i & 1) ? (w >> 16) : (w & 0xffffu))));
}
template <>
KILN_DEVICE float unpack<float>(const uint4& q, int i) {
  return __uint_as_float(word(q, i));
}

// RN_T of two values, packed (element 2j in the low half).
template <typename T>
KILN_DEVICE unsigned pack2(float a, float b);
template <>
KILN_DEVICE unsigned pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162_raw h = __floats2bfloat162_rn(a, b);
  return static_cast<unsigned>(h.x) | (static_cast<unsigned>(h.y) << 16);
}
template <>
KILN_DEVICE unsigned pack2<__half>(float a, float b) {
  const __half2_raw h = __floats2half2_rn(a, b);
  return static_cast<unsigned>(h.x) | (static_cast<unsigned>(h.y) << 16);
}

// RN_T of 16 / sizeof(T) values into a piece.
template <typename T>
KILN_DEVICE uint4 pack(const float* y) {
  uint4 q;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (sizeof(T) == 4) {
      set_word(q, j, __float_as_uint(y[j]));
    } else {
      set_word(q, j, pack2<T>(y[2 * j], y[2 * j + 1]));
    }
  }
  return q;
}

// x and residual are read once: no L1 allocation. Coherent (no .nc): out / residual may alias.
// kPlain (the kPlain instantiations of rmsnorm_rows: large unfused launches): a plain load instead,
// measured faster there (see Kind::plain_loads in plan.rs).
template <bool kPlain = false>
KILN_DEVICE uint4 ld_once(const void* p) {
  uint4 r;
  if constexpr (kPlain) {
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  } else {
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  }
  return r;
}

// The weight is read by every row: read-only path, kept in L1.
KILN_DEVICE uint4 ld_weight(const void* p) {
  return __ldg(static_cast<const uint4*>(p));
}

// The piece of `row` starting at element e0 (16 bytes; zeros past `hidden`). kVec: rows are
// 16-byte aligned and hidden is a multiple of V, so every piece is one 16-byte access.
template <typename E, bool kVec, bool kOnce, bool kPlain = false>
KILN_DEVICE uint4 load_piece(const E* row, long long e0, int hidden) {
  constexpr int N = 16 / static_cast<int>(sizeof(E));
  if constexpr (kVec) {
    return kOnce ? ld_once<kPlain>(row + e0) : ld_weight(row + e0);
  } else {
    uint4 q = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (e0 + i < hidden) {
        if constexpr (sizeof(E) == 4) {
          set_word(q, i, reinterpret_cast<const unsigned*>(row)[e0 + i]);
        } else {
          const unsigned b = reinterpret_cast<const unsigned short*>(row)[e0 + i];
          set_word(q, i >> 1, word(q, i >> 1) | (b << (16 * (i & 1))));
        }
      }
    }
    return q;
  }
}

template <typename E, bool kVec>
KILN_DEVICE void store_piece(E* row, long long e0, int hidden, const uint4& q) {
  constexpr int N = 16 / static_cast<int>(sizeof(E));
  if constexpr (kVec) {
    *reinterpret_cast<uint4*>(row + e0) = q;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (e0 + i < hidden) {
        if constexpr (sizeof(E) == 4) {
          reinterpret_cast<unsigned*>(row)[e0 + i] = word(q, i);
        } else {
          reinterpret_cast<unsigned short*>(row)[e0 + i] = static_cast<unsigned short>(word(q, i >> 1) >> (16 * (i & 1)));
        }
      }
    }
  }
}

// A weight chunk: V elements of W.
template <typename T, typename W>
struct WChunk {
  static constexpr int kPieces = sizeof(W) / sizeof(T);
  uint4 q[kPieces];
  KILN_DEVICE float at(int i) const {
    constexpr int P = 16 / static_cast<int>(sizeof(W));
    return unpack<W>(q[i / P], i % P);
  }
};

template <typename T, typename W, bool kVec>
KILN_DEVICE WChunk<T, W> load_weight(const W* w, int c, int hidden) {
  constexpr int V = kiln::kVec16<T>;
  constexpr int P = 16 / static_cast<int>(sizeof(W));
  WChunk<T, W> r;
#pragma unroll
  for (int j = 0; j < WChunk<T, W>::kPieces; ++j) r.q[j] = load_piece<W, kVec, false>(w, static_cast<long long>(c) * V + j * P, hidden);
  return r;
}

// ---- The arithmetic.

// The values u that are normalised (see the header); `r` is ignored unless kFused.
template <typename T, bool kFused>
KILN_DEVICE float value(const uint4& x, const uint4& r, int i, bool sum_f32) {
  const float xf = unpack<T>(x, i);
  if constexpr (kFused) {
    const float v = __fadd_rn(xf, unpack<T>(r, i));
    return sum_f32 ? v : kiln::round_to<T>(v);
  } else {
    return xf;
  }
}

// Step 1: s_c.
template <typename T, bool kFused>
KILN_DEVICE float chunk_sumsq(const uint4& x, const uint4& r, bool sum_f32) {
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < kiln::kVec16<T>; ++i) {
    const float u = value<T, kFused>(x, r, i, sum_f32);
    acc = __fmaf_rn(u, u, acc);
  }
  return acc;
}

// Step 2 over the G lanes of a row group (all 32 lanes call it; lanes of other rows are not
// mixed in because only xor distances below G are used: the missing ones would add +0 pads).
KILN_DEVICE float group_butterfly(float v, int log2_group) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    if (o < (1 << log2_group)) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

KILN_DEVICE float warp_butterfly(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Step 3 across warps, for G > 32 (one row per CTA): the warps' partials, padded with +0 to 32,
// combined by a butterfly. Every thread gets the total. One barrier; `part` is used once.
KILN_DEVICE float cross_warp(float v, int log2_group, float* part) {
  const int lane = threadIdx.x & 31;
  if (lane == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  const int warps = 1 << (log2_group - 5);
  return warp_butterfly(lane < warps ? part[lane] : 0.0f);
}

KILN_DEVICE float rstd_of(float sumsq, const Params& p) {
  // For a power-of-two hidden the host passes 1 / hidden (exact), and s · (1 / hidden) is s /
  // hidden exactly (the same real value, rounded once): one multiplication on the critical path
  // instead of an IEEE division.
  const float mean = p.inv_hidden != 0.0f ? __fmul_rn(sumsq, p.inv_hidden) : __fdiv_rn(sumsq, static_cast<float>(p.hidden));
  return kiln::rsqrt_rn(__fadd_rn(mean, p.eps));
}

// Chunk c of the outputs: residual <- RN_T(v) (kFused), out <- y.
// kForm: the form when it is fixed at compile time (the register kernels branch once, uniformly,
// on p.form == kHf around their whole write phase; the warp-per-row kernel is instantiated per
// form), so the selects and the unused forms' arithmetic drop out; kAnyForm: p.form decides.
enum : int { kAnyForm = -1 };
template <typename T, typename W, bool kFused, bool kVec, int kForm = kAnyForm>
KILN_DEVICE void write_chunk(const Params& p, T* orow, T* rrow, int c, const uint4& x, const uint4& r, const WChunk<T, W>& w,
                             float rstd) {
  constexpr int V = kiln::kVec16<T>;
  const bool sum_f32 = (p.flags & kFlagSumF32) != 0;
  const long long e0 = static_cast<long long>(c) * V;
  float u[V];
#pragma unroll
  for (int i = 0; i < V; ++i) u[i] = value<T, kFused>(x, r, i, sum_f32);
  if constexpr (kFused) store_piece<T, kVec>(rrow, e0, p.hidden, pack<T>(u));  // RN_T(v) in both sum modes
  // One code path for the forms (selects, not branches, so the compiler can interleave chunks;
  // with a fixed kForm the selects fold away): kHf rounds u·rstd to T first; kGemma uses 1 + w (an
  // fp32 add), the others w itself.
  const int form = kForm == kAnyForm ? p.form : kForm;
  const bool hf = form == kHf, gemma = form == kGemma;
  float y[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const float n = __fmul_rn(u[i], rstd);
    const float wi = w.at(i);
    y[i] = __fmul_rn(hf ? kiln::round_to<T>(n) : n, gemma ? __fadd_rn(1.0f, wi) : wi);
  }
  store_piece<T, kVec>(orow, e0, p.hidden, pack<T>(y));
}

// ---- Rows held in registers: K chunks of each of R rows per thread.

// This thread's rows in rmsnorm_rows: slot j is row base + j·step (j < rows_per_thread), g its
// thread index in the row's group. G ≤ 32: the CTA's (blockDim / G) row groups, R times over;
// G > 32: R consecutive rows per CTA.
struct RowSlots {
  long long base, step;
  int g;
};

KILN_DEVICE RowSlots row_slots(const Params& p) {
  const int lg = p.log2_group;
  const int tid = static_cast<int>(threadIdx.x);
  if (lg <= 5) {
    const long long step = blockDim.x >> lg;
    return RowSlots{static_cast<long long>(blockIdx.x) * step * p.rows_per_thread + (tid >> lg), step, tid & ((1 << lg) - 1)};
  }
  return RowSlots{static_cast<long long>(blockIdx.x) * p.rows_per_thread, 1, tid};
}

// kFlagPrefetch (set by the host for vector-path launches of the sizes where it measured faster,
// see prefetch_rows in lib.rs): each row group's first thread warms L2 with its rows of x (and of
// the residual) before the PDL wait.
template <typename T, bool kFused, bool kPdl>
KILN_DEVICE void prefetch_rows(const Params& p) {
  if (!(p.flags & kFlagPrefetch)) return;
  const RowSlots rs = row_slots(p);
  if (rs.g != 0) return;
  const unsigned bytes = static_cast<unsigned>(p.hidden) * sizeof(T);  // a multiple of 16 on the vector path
  for (int j = 0; j < p.rows_per_thread; ++j) {
    const long long row = rs.base + j * rs.step;
    if (row >= p.rows) break;
    kiln::pdl_prefetch_l2<kPdl>(static_cast<const T*>(p.x) + row * p.x_stride, bytes);
    if constexpr (kFused) kiln::pdl_prefetch_l2<kPdl>(static_cast<const T*>(p.residual) + row * p.res_stride, bytes);
  }
}

// rows_body's write phase: chunk k of each of the thread's rows (weights loaded here unless
// kWeightEarly). kForm: see write_chunk.
template <typename T, typename W, int kK, int kR, bool kFused, bool kVec, bool kWeightEarly, int kForm>
KILN_DEVICE void write_rows(const Params& p, const uint4 (&xv)[kR][kK], const uint4 (&rv)[kR][kK], WChunk<T, W> (&wv)[kK],
                            const float (&rstd)[kR], const RowSlots& rs, int nr) {
  const W* wt = static_cast<const W*>(p.weight);
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    const int c = rs.g + (k << p.log2_group);
    if (rs.base < p.rows && c < p.chunks) {
      if constexpr (!kWeightEarly) wv[k] = load_weight<T, W, kVec>(wt, c, p.hidden);
#pragma unroll
      for (int j = 0; j < kR; ++j) {
        const long long row = rs.base + j * rs.step;
        if (j < nr && row < p.rows) {
          T* orow = static_cast<T*>(p.out) + row * p.out_stride;
          T* rrow = kFused ? static_cast<T*>(p.residual) + row * p.res_stride : nullptr;
          write_chunk<T, W, kFused, kVec, kForm>(p, orow, rrow, c, xv[j][k], rv[j][k], wv[k], rstd[j]);
        }
      }
    }
  }
}

template <typename T, typename W, int kK, int kRows, bool kPdl, bool kFused, bool kVec, bool kLate, bool kPlain>
KILN_DEVICE void rows_body(const Params& p, float (*part)[32]) {
  constexpr int V = kiln::kVec16<T>;
  // The element-wise path (a fallback) holds one row per thread: the host sets R = 1 for it.
  constexpr int kR = kVec ? kRows : 1;
  // Weights are loaded with the rows (unfused kernels, or at most 8 registers); otherwise they
  // are prefetched into L1 and loaded after the reduction.
  constexpr bool kWeightEarly = !kFused || kK * WChunk<T, W>::kPieces <= 2;
  const int lg = p.log2_group;
  const int tid = static_cast<int>(threadIdx.x);
  const int nr = p.rows_per_thread;
  const RowSlots rs = row_slots(p);
  const long long base = rs.base, step = rs.step;
  const int g = rs.g;
  const bool sum_f32 = (p.flags & kFlagSumF32) != 0;
  const W* wt = static_cast<const W*>(p.weight);

  uint4 xv[kR][kK], rv[kR][kK];
  WChunk<T, W> wv[kK];
#pragma unroll
  for (int j = 0; j < kR; ++j) {
    const long long row = base + j * step;
    const bool active = j < nr && row < p.rows;
    const T* xrow = static_cast<const T*>(p.x) + (active ? row : 0) * p.x_stride;
    const T* rrow = kFused ? static_cast<const T*>(p.residual) + (active ? row : 0) * p.res_stride : nullptr;
#pragma unroll
    for (int k = 0; k < kK; ++k) {
      const int c = g + (k << lg);
      const long long e0 = static_cast<long long>(c) * V;
      xv[j][k] = rv[j][k] = make_uint4(0u, 0u, 0u, 0u);
      if (active && c < p.chunks) {
        xv[j][k] = load_piece<T, kVec, true, kPlain>(xrow, e0, p.hidden);
        if constexpr (kFused) rv[j][k] = load_piece<T, kVec, true>(rrow, e0, p.hidden);
      }
    }
  }
  // Slot 0 is the first row of this thread, so it is active whenever any slot is.
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    const int c = g + (k << lg);
    if (base < p.rows && c < p.chunks) {
      if constexpr (kWeightEarly) {
        wv[k] = load_weight<T, W, kVec>(wt, c, p.hidden);
      } else {
        asm volatile("prefetch.L1 [%0];" ::"l"(wt + static_cast<long long>(c) * V));
      }
    }
  }
  if constexpr (!kLate) kiln::pdl_launch_dependents<kPdl>();

  float rstd[kR];
#pragma unroll
  for (int j = 0; j < kR; ++j) {
    float s[kK];
#pragma unroll
    for (int k = 0; k < kK; ++k) s[k] = group_butterfly(chunk_sumsq<T, kFused>(xv[j][k], rv[j][k], sum_f32), lg);
#pragma unroll
    for (int h = kK / 2; h > 0; h >>= 1)
#pragma unroll
      for (int k = 0; k < h; ++k) s[k] = __fadd_rn(s[k], s[k + h]);
    rstd[j] = s[0];
  }
  // K = 4: the write phase converts the packed rows to f32 again instead of keeping the sum's
  // conversions live across the reduction (with the HF-only write path below, ptxas otherwise
  // spilled at the 64-register cap). The empty asm makes the packed registers opaque to the
  // compiler; it emits no instruction. (At K = 2 the same cut 47 → 40 registers but made small
  // grids slower, S9-5: 512×4096 4.18 → 4.36 µs.)
  if constexpr (kK == 4) {
#pragma unroll
    for (int j = 0; j < kR; ++j)
#pragma unroll
      for (int k = 0; k < kK; ++k) asm volatile("" : "+r"(xv[j][k].x), "+r"(xv[j][k].y), "+r"(xv[j][k].z), "+r"(xv[j][k].w));
  }
  if (lg > 5) {
    // Step 3 across warps for all R rows with one barrier (see cross_warp).
    const int lane = tid & 31;
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kR; ++j) part[j][tid >> 5] = rstd[j];
    }
    __syncthreads();
    const int warps = 1 << (lg - 5);
#pragma unroll
    for (int j = 0; j < kR; ++j) rstd[j] = warp_butterfly(lane < warps ? part[j][lane] : 0.0f);
  }
#pragma unroll
  for (int j = 0; j < kR; ++j) rstd[j] = rstd_of(rstd[j], p);

  // The write phase, once for the HF form (no per-element selects) and once for the others;
  // p.form is uniform, so the branch costs nothing. (The element-wise fallback keeps one.)
  // Measured on the H100 (S9-17, rms_norm_hf bf16, twice each, alternating): 32×128 1.15 → 1.05
  // µs, 1×4096 1.51 → 1.45, 1×8192 1.78 → 1.72, 8×256 1.29 → 1.06, 2048×8192 24.67 → 24.51;
  // ≥ 64 MiB inputs within +0.1 %. (Without any of the form arithmetic, S9-16: 2048×8192 24.42.)
  if (kVec && p.form == kHf) {
    write_rows<T, W, kK, kR, kFused, kVec, kWeightEarly, kHf>(p, xv, rv, wv, rstd, rs, nr);
  } else {
    write_rows<T, W, kK, kR, kFused, kVec, kWeightEarly, kAnyForm>(p, xv, rv, wv, rstd, rs, nr);
  }
  if constexpr (kLate) kiln::pdl_launch_dependents<kPdl>();
}

// Launch bounds: at most 256 threads for K = 1 (the several-rows-per-CTA shapes), 512 otherwise.
// The minimum resident CTAs cap the unfused kernels' registers (40 for one-row K = 1, 64
// otherwise) where that costs no spill (fp32 weights at K = 4 need more); checked with ptxas -v.
template <typename T, typename W, int kK, int kRows, bool kFused>
struct Bounds {
  static constexpr int kThreads = kK == 1 ? 256 : 512;
  static constexpr int kMinBlocks =
      kFused || (kK == 4 && sizeof(W) > sizeof(T)) ? 1 : (kK == 1 ? (kRows == 1 ? 6 : 4) : 2);
};

// kRows: the most rows a thread holds (1, or 4 / 2 / - for K = 1 / 2 / 4 in the unfused kernels:
// more loads in flight and one weight load for them all, for large row counts).
// kLate: release the PDL dependents after the stores instead of once the rows are loaded (K = 1,
// one row per thread, unfused only; the host's choice, see late_trigger in plan.rs).
// kPlain: x by plain loads instead of L1::no_allocate (K ≥ 2, unfused only; the host's choice for
// large launches, see Kind::plain_loads in plan.rs). A kernel of its own: as a runtime flag the
// second body cost the other launches of these kernels 1–4 % (S11-17).
template <typename T, typename W, int kK, int kRows, bool kFused, bool kPdl, bool kLate = false, bool kPlain = false>
__global__ void __launch_bounds__(Bounds<T, W, kK, kRows, kFused>::kThreads, Bounds<T, W, kK, kRows, kFused>::kMinBlocks)
    rmsnorm_rows(const Params p) {
  static_assert(kK == 1 || kK == 2 || kK == 4, "K ∈ {1, 2, 4}");
  static_assert(kRows == 1 || (!kFused && kRows * kK <= 4), "rows per thread: 1, or R·K ≤ 4 unfused");
  static_assert(!kLate || (kK == 1 && kRows == 1 && !kFused), "kLate: the one-chunk, one-row unfused kernel only");
  static_assert(!kPlain || (kK >= 2 && !kFused), "kPlain: the unfused kernels of two or more chunks only");
  __shared__ float part[kRows][32];
  prefetch_rows<T, kFused, kPdl>(p);
  kiln::pdl_wait<kPdl>();
  if ((p.flags & kFlagVec) != 0) {
    rows_body<T, W, kK, kRows, kPdl, kFused, true, kLate, kPlain>(p, part);
  } else {
    rows_body<T, W, kK, kRows, kPdl, kFused, false, kLate, false>(p, part);
  }
}

// ---- Few short rows (the host's choice: unfused vector-path launches of a few rows of at most
// 32 chunks, see warp_rows_max in plan.rs): a warp per row, lane c holding chunk c (lanes past the
// row's chunks add +0 pads to the butterfly: the canonical order), R = 1, CTAs of up to 8 rows.
// Nothing but the row bounds is decided at run time — no row groups, no vector / element or form
// branch, no cross-warp step, no shared memory — because in a launch this small every
// instruction between the PDL wait and the stores is on the critical path. Dependents are
// released once the loads are issued; no warp of a one-CTA launch is idle.
template <typename T, typename W, int kForm, bool kPdl>
__global__ void __launch_bounds__(256) rmsnorm_warp_rows(const Params p) {
  constexpr int V = kiln::kVec16<T>;
  const int lane = static_cast<int>(threadIdx.x & 31);
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const bool live = row < p.rows, mine = live && lane < p.chunks;
  const T* xrow = static_cast<const T*>(p.x) + row * p.x_stride;
  if (live && lane == 0 && (p.flags & kFlagPrefetch)) {
    kiln::pdl_prefetch_l2<kPdl>(xrow, static_cast<unsigned>(p.hidden) * sizeof(T));
  }
  kiln::pdl_wait<kPdl>();
  uint4 x = make_uint4(0u, 0u, 0u, 0u);
  WChunk<T, W> w;
  if (mine) {
    x = ld_once(xrow + lane * V);
    w = load_weight<T, W, true>(static_cast<const W*>(p.weight), lane, p.hidden);
  }
  kiln::pdl_launch_dependents<kPdl>();
  const float rstd = rstd_of(warp_butterfly(chunk_sumsq<T, false>(x, x, false)), p);
  if (mine) write_chunk<T, W, false, true, kForm>(p, static_cast<T*>(p.out) + row * p.out_stride, nullptr, lane, x, x, w, rstd);
}

// ---- Rows too long for registers: pass 1 sums, pass 2 re-reads and writes. Chunk slots k are
// visited in bit-reversed order and folded with a binary counter (one partial per level, in
// shared memory per warp), which computes exactly the highest-bit-first tree over k of step 3.
enum : int { kStreamLevels = 28 };  // iters_log2 < 28 (the host checks); an enumerator emits no PTX global

template <typename T, typename W, bool kPdl, bool kFused, bool kVec>
KILN_DEVICE void stream_body(const Params& p, float* part, float (*stack)[kStreamLevels]) {
  constexpr int V = kiln::kVec16<T>;
  constexpr int kUnroll = 4;
  const int lg = p.log2_group;
  const int g = static_cast<int>(threadIdx.x);
  float* level = stack[g >> 5];
  const long long row = blockIdx.x;
  const bool sum_f32 = (p.flags & kFlagSumF32) != 0;
  const T* xrow = static_cast<const T*>(p.x) + row * p.x_stride;
  T* orow = static_cast<T*>(p.out) + row * p.out_stride;
  T* rrow = kFused ? static_cast<T*>(p.residual) + row * p.res_stride : nullptr;
  const W* wt = static_cast<const W*>(p.weight);
  const int iters = 1 << p.iters_log2;
  const int shift = 32 - p.iters_log2;  // bit reversal of an iters_log2-bit position

  float tree = 0.0f;
  for (int i0 = 0; i0 < iters; i0 += kUnroll) {
    uint4 x[kUnroll], r[kUnroll];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int i = i0 + j;
      const int k = p.iters_log2 == 0 ? 0 : static_cast<int>(__brev(static_cast<unsigned>(i)) >> shift);
      const int c = g + (k << lg);
      const long long e0 = static_cast<long long>(c) * V;
      x[j] = r[j] = make_uint4(0u, 0u, 0u, 0u);
      if (i < iters && c < p.chunks) {
        x[j] = load_piece<T, kVec, true>(xrow, e0, p.hidden);
        if constexpr (kFused) r[j] = load_piece<T, kVec, true>(rrow, e0, p.hidden);
      }
    }
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int i = i0 + j;
      if (i < iters) {
        float carry = warp_butterfly(chunk_sumsq<T, kFused>(x[j], r[j], sum_f32));
        int l = 0;
        for (; (i >> l) & 1; ++l) carry = __fadd_rn(level[l], carry);
        level[l] = carry;  // every lane stores the same value
        __syncwarp();
        if (i == iters - 1) tree = carry;
      }
    }
  }
  kiln::pdl_launch_dependents<kPdl>();
  const float total = lg > 5 ? cross_warp(tree, lg, part) : tree;
  const float rstd = rstd_of(total, p);

  constexpr int kUnroll2 = 2;
  for (int k0 = 0; k0 < iters; k0 += kUnroll2) {
    uint4 x[kUnroll2], r[kUnroll2];
    WChunk<T, W> w[kUnroll2];
#pragma unroll
    for (int j = 0; j < kUnroll2; ++j) {
      const int c = g + ((k0 + j) << lg);
      const long long e0 = static_cast<long long>(c) * V;
      if (k0 + j < iters && c < p.chunks) {
        x[j] = load_piece<T, kVec, true>(xrow, e0, p.hidden);
        if constexpr (kFused) r[j] = load_piece<T, kVec, true>(rrow, e0, p.hidden);
        w[j] = load_weight<T, W, kVec>(wt, c, p.hidden);
      }
    }
#pragma unroll
    for (int j = 0; j < kUnroll2; ++j) {
      const int c = g + ((k0 + j) << lg);
      if (k0 + j < iters && c < p.chunks) write_chunk<T, W, kFused, kVec>(p, orow, rrow, c, x[j], r[j], w[j], rstd);
    }
  }
}

template <typename T, typename W, bool kFused, bool kPdl>
__global__ void __launch_bounds__(512) rmsnorm_rows_stream(const Params p) {
  __shared__ float part[32];
  __shared__ float stack[32][kStreamLevels];
  kiln::pdl_wait<kPdl>();
  if ((p.flags & kFlagVec) != 0) {
    stream_body<T, W, kPdl, kFused, true>(p, part, stack);
  } else {
    stream_body<T, W, kPdl, kFused, false>(p, part, stack);
  }
}

}  // namespace rmsnorm
