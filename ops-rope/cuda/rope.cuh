// rope.cuh — per-head RMSNorm of the q and k heads followed by rotary position embedding (RoPE),
// in place; or RoPE alone (kNorm = false). V heads are never read or written.
//
// Math, per token t and per q or k head, x = the head's head_dim values widened exactly to f32:
//   norm (kNorm):  s = Σ x_i² — each lane folds the 8 elements of its first chunk, then those of
//                  its second chunk, in order with fmaf; an xor butterfly then adds the head's lanes
//                  (offsets lanes/2 … 1; see Launch for which lane holds which chunks);
//                  r = RN(1 / RN(sqrt(RN(RN(s / head_dim) + eps))))      (IEEE div and sqrt; the
//                  division is a multiplication by 1/head_dim when that is exact)
//                  e_i = RN(RN(x_i · r) · w_i)                           (w widened to f32)
//   no norm:       e_i = x_i
//   angle of pair p < rotary_dim/2, once per token, in fixed point and f32:
//                  the host gives τ_p = frac(f_p / 2π) · 2^64 (u64) for f_p = base^(−2p/rotary_dim)
//                  (YaRN-blended); a = top 32 bits of (pos · τ_p mod 2^64) is θ = pos · f_p in
//                  2^-32 turns, reduced modulo a turn exactly (integer wrap-around, any position);
//                  q = nearest quarter turn, ρ = RN(f32(a − q·2^30) · 2π/2^32), |ρ| ≤ π/4;
//                  sin ρ, cos ρ by Taylor polynomials to degree 9/10 in f32 (Horner, FMA),
//                  placed by q: c ≈ cos θ, s ≈ sin θ within ~1e-7 at any position. Integer and
//                  IEEE f32 operations only, so the CPU reference reproduces c and s bit for bit
//                  (the fp64 version this replaced was 2-3 % slower at 1-32 tokens and
//                  0.6-0.8 % at 8192+; S5-1).
//   rotation of the pair (a, b) — NeoX: a = element d < rotary_dim/2, b = element d + rotary_dim/2,
//   p = d; interleaved (GPT-J): a = element 2p, b = element 2p + 1:
//                  a' = RN(RN(fma(e_a, c, −RN(e_b · s))) · attention_factor)
//                  b' = RN(RN(fma(e_b, c, +RN(e_a · s))) · attention_factor)
//                  (the multiplication is skipped when attention_factor is 1: it is exact then)
//   elements d ≥ rotary_dim keep e_d (normalised only, not scaled by the attention factor).
//   Store RN_T(·): the only rounding to the storage type. Every f32 operation is an explicit _rn
//   intrinsic (no contraction), and the kernels are compiled without fast math (no flush to zero).
//
// Layout: q head h of token t starts at q + t·q_stride + h·head_dim, k head h at k + t·k_stride +
// h·head_dim (strides in elements, offsets in 64 bits). The packed-qkv forms pass q = qkv,
// k = qkv + nq·head_dim and the row stride for both.
//
// Launch: grid (tokens, head chunks), block = heads of the chunk × lanes (rounded up to whole warps)
// + table threads (whole warps; see plan.rs), one head per group of
// `lanes` = pow2ceil(head_dim / 16) consecutive lanes. The head's 8-element chunks are split in two
// regions: NeoX puts the rotary chunks [0, A = rotary_dim/8) first, lane l < A/2 holding chunks l and
// l + A/2 — element j of one pairs with element j of the other, so no data crosses lanes; the rest
// [A, head_dim/8) (all chunks for interleaved, A = 0) goes to the next lanes, lane A/2 + m holding
// chunks A + m and A + ⌈(head_dim/8 − A)/2⌉ + m (when it exists). A chunk is one 16-byte vector when
// q, k and both row strides are 16-byte aligned (kVec), else 8 scalar accesses (same arithmetic).
// Each head lane issues its two loads (and the head threads stage the q/k weights in shared memory
// as f32), then computes its head's 1/rms; meanwhile the table warps (after the head warps; one
// thread per pair for few tokens, one per two pairs for many) fill a shared (cos, sin) table for
// the token, so the table and the reduction overlap. After the one barrier every head lane
// scales, rotates and stores its chunks. kPrefetch (the host's choice for small PDL vector
// launches): before the PDL wait each head's first lane issues an L2 prefetch of its head and the
// first table thread one of the token's position. Launch bounds kMinBlocks × 512 threads: 3 (≤ 40
// registers, no spills) in general, 4 (32 registers, a few bytes of spills) for norm + RoPE
// vector launches of 1024 CTAs or more (see LARGE_GRID_CTAS in plan.rs): more CTAs per SM pay
// off once the grid runs many waves, the spill-free kernel's shorter CTAs below (S8-13, S8-17).
#pragma once
#include <kiln/common.cuh>
#include <kiln/convert.cuh>
#include <kiln/math.cuh>
#include <kiln/pdl.cuh>
#include <kiln/vec.cuh>

namespace kiln_rope {

// Enumerators rather than namespace-scope constants: those would be emitted into the PTX as
// globals under per-compilation internal names.
enum : int {
  kElems = 8,           // elements per chunk: one 16-byte vector of a 16-bit type
  kMaxHeadDim = 256,    // 16 lanes × 2 chunks × 8
  kMaxPairs = kMaxHeadDim / 2,
  kMaxThreads = 512,
};

// Params::flags
enum : int {
  kInterleaved = 1,  // GPT-J pairs (2p, 2p + 1); else NeoX halves
  kPosI64 = 2,       // positions are long long; else int
  kWeightF32 = 4,    // weights are float; else the activation type
};

// One by-value kernel parameter (1120 bytes; the Rust mirror asserts the size).
struct Params {
  void* q;
  void* k;
  const void* q_weight;   // [head_dim], kNorm only
  const void* k_weight;   // [head_dim], kNorm only
  const void* positions;  // [tokens]
  long long q_stride;     // elements between tokens
  long long k_stride;
  int nq;
  int nk;
  int head_dim;           // multiple of 8, ≤ 256
  int lanes_log2;         // log2 of the lanes per head (≤ 4)
  int rotary_dim;         // even, ≤ head_dim; NeoX: multiple of 16
  int heads_per_cta;      // q and k heads of one CTA (grid.y chunks the nq + nk heads)
  int flags;
  float eps;
  float attention_factor;
  float inv_head_dim;     // 1/head_dim when head_dim is a power of two (exact), else 0
  unsigned long long turns[kMaxPairs];  // f_p / 2π as a 0.64 fixed-point fraction, p < rotary_dim / 2
};

// (cos θ, sin θ) for θ = 2π · frac(pos · turns / 2^64); see the header comment.
KILN_DEVICE float2 cos_sin(unsigned long long pos, unsigned long long turns) {
  // 2π / 2^32, rounded to f32.
  constexpr float kTwoPiOver2p32 = 1.46291812e-09f;
  // Taylor coefficients kS<k> = (−1)^k / (2k+1)!, kC<k> = (−1)^k / (2k)!, rounded to f32.
  constexpr float kS1 = -0.166666672f;
  constexpr float kS2 = 0.00833333377f;
  constexpr float kS3 = -0.000198412701f;
  constexpr float kS4 = 2.75573188e-06f;
  constexpr float kC1 = -0.5f;
  constexpr float kC2 = 0.0416666679f;
  constexpr float kC3 = -0.00138888892f;
  constexpr float kC4 = 2.48015876e-05f;
  constexpr float kC5 = -2.755732e-07f;

  const unsigned a = static_cast<unsigned>((pos * turns) >> 32);  // the angle in 2^-32 turns, mod 1
  const unsigned q = (a + (1u << 29)) >> 30;                        // nearest quarter turn, mod 4
  const int r = static_cast<int>(a - (q << 30));                    // the rest, in [−2^29, 2^29)
  const float rho = __fmul_rn(__int2float_rn(r), kTwoPiOver2p32);  // |ρ| ≤ π/4
  const float z = __fmul_rn(rho, rho);
  float ps = __fmaf_rn(kS4, z, kS3);
  ps = __fmaf_rn(ps, z, kS2);
  ps = __fmaf_rn(ps, z, kS1);
  float pc = __fmaf_rn(kC5, z, kC4);
  pc = __fmaf_rn(pc, z, kC3);
  pc = __fmaf_rn(pc, z, kC2);
  pc = __fmaf_rn(pc, z, kC1);
  const float sr = __fmaf_rn(__fmul_rn(rho, z), ps, rho);
  const float cr = __fmaf_rn(z, pc, 1.0f);
  switch (q) {
    case 0: return make_float2(cr, sr);
    case 1: return make_float2(-sr, cr);
    case 2: return make_float2(-cr, -sr);
    default: return make_float2(sr, -cr);
  }
}

// Sum over the `lanes` consecutive lanes of a group (lanes a power of two ≤ 16). Every lane of the
// warp must call it; a + b and b + a round alike, so every lane of the group gets the same total.
KILN_DEVICE float lanes_sum(float v, int lanes) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) {
    if (o < lanes) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));  // `lanes` is warp-uniform
  }
  return v;
}

// Shared-memory layouts without bank conflicts (measured: S8-5). A head lane reads its 8 (cos, sin)
// pairs as four 16-byte slots and its weights as two 16-byte slots per chunk; stored plainly, the
// lanes of one request would hit only 2 (table) or 4 (weights) of the 8 16-byte bank groups.
// Table (NeoX): the slot of pairs (8l + 2m, 8l + 2m + 1) is 4l + ((m + (l >> 1)) & 3), so slot m of
// the 8 (hd 128) or 16 (hd 256) lanes of a request covers every bank group once or twice. The
// interleaved style reads pairs one by one from the plain layout.
KILN_DEVICE int neox_slot(int l, int m) { return 4 * l + ((m + (l >> 1)) & 3); }

KILN_DEVICE int table_index(int pair, bool neox) {
  return neox ? 2 * neox_slot(pair >> 3, (pair >> 1) & 3) + (pair & 1) : pair;
}

// Weights: the two 16-byte halves of chunk c swap places when bit 2 of c is set.
KILN_DEVICE int weight_slot(int c, int half) { return 2 * c + (half ^ ((c >> 2) & 1)); }

KILN_DEVICE int weight_index(int i) { return 4 * weight_slot(i >> 3, (i >> 2) & 1) + (i & 3); }

// A chunk travels as four 32-bit words, each holding two 16-bit elements (element 2i in the low
// half of word i). kVec: one 16-byte access; else eight 2-byte accesses.
using Chunk = kiln::Vec<kiln::u32, 4>;

template <bool kVec>
KILN_DEVICE Chunk load_chunk(const void* p) {
  if constexpr (kVec) {
    return kiln::load_vec<kiln::u32, 4>(static_cast<const kiln::u32*>(p));
  } else {
    const unsigned short* s = static_cast<const unsigned short*>(p);
    Chunk c;
#pragma unroll
    for (int i = 0; i < 4; ++i) c[i] = static_cast<kiln::u32>(s[2 * i]) | (static_cast<kiln::u32>(s[2 * i + 1]) << 16);
    return c;
  }
}

template <bool kVec>
KILN_DEVICE void store_chunk(void* p, const Chunk& c) {
  if constexpr (kVec) {
    kiln::store_vec<kiln::u32, 4>(static_cast<kiln::u32*>(p), c);
  } else {
    unsigned short* s = static_cast<unsigned short*>(p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      s[2 * i] = static_cast<unsigned short>(c[i] & 0xffffu);
      s[2 * i + 1] = static_cast<unsigned short>(c[i] >> 16);
    }
  }
}

// Exact widening of a chunk to 8 floats.
KILN_DEVICE void widen(const Chunk& c, float* v, __nv_bfloat16) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(c[i] << 16);
    v[2 * i + 1] = __uint_as_float(c[i] & 0xffff0000u);
  }
}
KILN_DEVICE void widen(const Chunk& c, float* v, __half) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    *reinterpret_cast<kiln::u32*>(&h) = c[i];
    const float2 f = __half22float2(h);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// Rounds 8 floats to T (RN each, one packed conversion per pair).
KILN_DEVICE Chunk narrow(const float* v, __nv_bfloat16) {
  Chunk c;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 r = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    c[i] = *reinterpret_cast<const kiln::u32*>(&r);
  }
  return c;
}
KILN_DEVICE Chunk narrow(const float* v, __half) {
  Chunk c;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2 r = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    c[i] = *reinterpret_cast<const kiln::u32*>(&r);
  }
  return c;
}

template <typename T>
KILN_DEVICE float load_weight(const void* w, int i, bool f32) {
  return f32 ? static_cast<const float*>(w)[i] : kiln::to_f32<T>(static_cast<const T*>(w)[i]);
}


// Where lane `l` of a head group finds its two chunks, and which of them exist.
struct LaneChunks {
  int c0, c1;
  bool neox;     // holds a rotary NeoX pair (chunk c1 = c0 + A/2)
  bool has0, has1;
};

KILN_DEVICE LaneChunks lane_chunks(int l, int head_dim, int rotary_dim, bool interleaved) {
  const int chunks = head_dim >> 3;
  const int a = interleaved ? 0 : rotary_dim >> 3;
  const int half_a = a >> 1;
  const int hb = (chunks - a + 1) >> 1;
  LaneChunks r;
  r.neox = l < half_a;
  const int m = l - half_a;
  r.c0 = r.neox ? l : a + m;
  r.c1 = r.neox ? l + half_a : a + hb + m;
  r.has0 = r.neox || m < hb;
  r.has1 = r.has0 && (r.neox || r.c1 < chunks);
  return r;
}

// (a, b) → (RN(fma(a, c, −RN(b·s))), RN(fma(b, c, RN(a·s)))), then ·attn when kScale.
template <bool kScale>
KILN_DEVICE void rotate_pair(float& a, float& b, float c, float s, float attn) {
  const float x0 = a, x1 = b;
  a = __fmaf_rn(x0, c, -__fmul_rn(x1, s));
  b = __fmaf_rn(x1, c, __fmul_rn(x0, s));
  if constexpr (kScale) {
    a = __fmul_rn(a, attn);
    b = __fmul_rn(b, attn);
  }
}

// NeoX lane l: element j of the first chunk pairs with element j of the second, pair index 8l + j
// (the table in the NeoX layout, see neox_slot).
template <bool kScale>
KILN_DEVICE void rotate_neox(float (&e)[2 * kElems], const float2* table, int l, float attn) {
  const float4* cs4 = reinterpret_cast<const float4*>(table);
#pragma unroll
  for (int j2 = 0; j2 < kElems / 2; ++j2) {
    const float4 v = cs4[neox_slot(l, j2)];  // (c, s) of pairs 8l + 2·j2 and 8l + 2·j2 + 1
    rotate_pair<kScale>(e[2 * j2], e[kElems + 2 * j2], v.x, v.y, attn);
    rotate_pair<kScale>(e[2 * j2 + 1], e[kElems + 2 * j2 + 1], v.z, v.w, attn);
  }
}

// Interleaved chunk: elements (2k, 2k + 1) form pair pair0 + k, rotated while it is < pairs.
template <bool kScale>
KILN_DEVICE void rotate_interleaved(float* e, const float2* table, int pair0, int pairs, float attn) {
#pragma unroll
  for (int k = 0; k < kElems / 2; ++k) {
    if (pair0 + k < pairs) {
      const float2 cs = table[pair0 + k];
      rotate_pair<kScale>(e[2 * k], e[2 * k + 1], cs.x, cs.y, attn);
    }
  }
}

// 1/rms of the lane's head (kNorm): its part of Σx² in order, the group's butterfly, then
// RN(1 / RN(sqrt(RN(mean) + eps))). Every lane of the warp must call it (shuffles).
KILN_DEVICE float head_rstd(const float (&e)[2 * kElems], const Params& p, int lanes) {
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < 2 * kElems; ++j) ss = __fmaf_rn(e[j], e[j], ss);
  ss = lanes_sum(ss, lanes);
  const float mean = p.inv_head_dim != 0.0f ? __fmul_rn(ss, p.inv_head_dim) : __fdiv_rn(ss, static_cast<float>(p.head_dim));
  return kiln::rsqrt_rn(__fadd_rn(mean, p.eps));
}

// Scales by r and the weights (kNorm), rotates and rounds one lane's 16 elements in place; `e`
// holds them widened.
template <typename T, bool kNorm>
KILN_DEVICE void transform(float (&e)[2 * kElems], const Params& p, const LaneChunks& lc, bool on, bool is_q, float r,
                           const float2* table, const float (*weights)[kMaxHeadDim], int l) {
  if constexpr (kNorm) {
    const float* w = weights[is_q ? 0 : 1];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      if (on && (q == 0 ? lc.has0 : lc.has1)) {
        const float4* w4 = reinterpret_cast<const float4*>(w);
        const int c = q == 0 ? lc.c0 : lc.c1;
        const float4 wa = w4[weight_slot(c, 0)], wb = w4[weight_slot(c, 1)];
        const float wv[kElems] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
        for (int j = 0; j < kElems; ++j) e[q * kElems + j] = __fmul_rn(__fmul_rn(e[q * kElems + j], r), wv[j]);
      }
    }
  }

  // Rotation, then (only when it is not 1: the product is exact then) the attention factor.
  const bool scale = p.attention_factor != 1.0f;
  if ((p.flags & kInterleaved) == 0) {
    if (on && lc.neox) {
      if (scale) rotate_neox<true>(e, table, l, p.attention_factor);
      else rotate_neox<false>(e, table, l, 1.0f);
    }
  } else {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      if (on && (q == 0 ? lc.has0 : lc.has1)) {
        const int pair0 = (q == 0 ? lc.c0 : lc.c1) * (kElems / 2);
        if (scale) rotate_interleaved<true>(e + q * kElems, table, pair0, p.rotary_dim >> 1, p.attention_factor);
        else rotate_interleaved<false>(e + q * kElems, table, pair0, p.rotary_dim >> 1, 1.0f);
      }
    }
  }
}

// Head threads of a CTA: its heads' lane groups, in whole warps; the threads after them (the host
// picks how many, in whole warps) build the table.
KILN_DEVICE int head_threads_of(const Params& p) {
  return ((p.heads_per_cta << p.lanes_log2) + 31) & ~31;
}

}  // namespace kiln_rope

template <typename T, bool kNorm, bool kVec, bool kPdl, bool kPrefetch, int kMinBlocks>
__global__ void __launch_bounds__(kiln_rope::kMaxThreads, kMinBlocks) rope_kernel(const __grid_constant__ kiln_rope::Params p) {
  using namespace kiln_rope;
  __shared__ __align__(16) float2 table[kMaxPairs];
  __shared__ __align__(16) float weights[2][kMaxHeadDim];

  const int lanes_log2 = p.lanes_log2;
  const int lanes = 1 << lanes_log2;
  const int tid = static_cast<int>(threadIdx.x);
  const int pairs = p.rotary_dim >> 1;
  const int head_threads = head_threads_of(p);
  const int n_table = static_cast<int>(blockDim.x) - head_threads;  // a multiple of 32
  const bool table_warp = tid >= head_threads;                       // warp-uniform
  const int l = tid & (lanes - 1);
  const int group = tid >> lanes_log2;
  const long long token = blockIdx.x;
  const int h = static_cast<int>(blockIdx.y) * p.heads_per_cta + group;
  const bool on = !table_warp && group < p.heads_per_cta && h < p.nq + p.nk;
  const LaneChunks lc = lane_chunks(l, p.head_dim, p.rotary_dim, (p.flags & kInterleaved) != 0);
  const bool on0 = on && lc.has0, on1 = on && lc.has1;

  T* const base = h < p.nq ? static_cast<T*>(p.q) + token * p.q_stride + static_cast<long long>(h) * p.head_dim
                           : static_cast<T*>(p.k) + token * p.k_stride + static_cast<long long>(h - p.nq) * p.head_dim;

  // kPrefetch (small PDL launches; 16-byte aligned heads): warm L2 with the heads and the token's
  // position while the predecessor finishes. A template flag rather than a runtime one: the
  // code before the wait reshapes the whole kernel's schedule (measured 2-7 % slower from 512
  // tokens even with the prefetch switched off).
  if constexpr (kVec && kPrefetch) {
    if (on && l == 0) kiln::pdl_prefetch_l2<kPdl>(base, static_cast<unsigned>(p.head_dim * sizeof(T)));
    if (tid == head_threads) {
      kiln::pdl_prefetch_line<kPdl>((p.flags & kPosI64) ? static_cast<const void*>(static_cast<const long long*>(p.positions) + token)
                                                        : static_cast<const void*>(static_cast<const int*>(p.positions) + token));
    }
  }
  // Positions, weights and qkv may all come from the previous kernel, and qkv is written here.
  kiln::pdl_wait<kPdl>();

  float e[2 * kElems];
  float r = 1.0f;
  if (table_warp) {
    // The table warps: the token's (cos, sin) pairs, one or two per thread, while the head warps
    // load and reduce their heads.
    const long long pos = (p.flags & kPosI64) ? static_cast<const long long*>(p.positions)[token]
                                              : static_cast<long long>(static_cast<const int*>(p.positions)[token]);
    const bool neox = (p.flags & kInterleaved) == 0;
#pragma unroll 1
    for (int i = tid - head_threads; i < pairs; i += n_table) table[table_index(i, neox)] = cos_sin(static_cast<unsigned long long>(pos), p.turns[i]);
    kiln::pdl_launch_dependents<kPdl>();
  } else {
    Chunk raw0 = {}, raw1 = {};
    if (on0) raw0 = load_chunk<kVec>(base + lc.c0 * kElems);
    if (on1) raw1 = load_chunk<kVec>(base + lc.c1 * kElems);
    if constexpr (kNorm) {
      // One element of each weight per head thread (a few when a CTA has fewer head threads
      // than head_dim), loaded next to the chunks.
      const bool f32 = (p.flags & kWeightF32) != 0;
      for (int i = tid; i < p.head_dim; i += head_threads) {
        weights[0][weight_index(i)] = load_weight<T>(p.q_weight, i, f32);
        weights[1][weight_index(i)] = load_weight<T>(p.k_weight, i, f32);
      }
    }
    kiln::pdl_launch_dependents<kPdl>();
    widen(raw0, e, T());
    widen(raw1, e + kElems, T());
    if constexpr (kNorm) r = head_rstd(e, p, lanes);
  }
  __syncthreads();
  if (table_warp) return;

  transform<T, kNorm>(e, p, lc, on, h < p.nq, r, table, weights, l);

  if (on0) store_chunk<kVec>(base + lc.c0 * kElems, narrow(e, T()));
  if (on1) store_chunk<kVec>(base + lc.c1 * kElems, narrow(e + kElems, T()));
}
