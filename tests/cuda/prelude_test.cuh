// prelude_test.cuh — one test kernel per prelude header (vec, convert, reduce, math, pdl), used by
// the T1 compile/snapshot tests and the T2 correctness tests in kiln-tests.
#include <kiln/common.cuh>
#include <kiln/vec.cuh>
#include <kiln/convert.cuh>
#include <kiln/reduce.cuh>
#include <kiln/math.cuh>
#include <kiln/pdl.cuh>

struct CopyParams {
  const void* in;
  void* out;
  long long n_vec;  // number of Vec<T, N> to copy
};

// kiln/vec.cuh: out = in, one Vec<T, N> per thread (streaming load, streaming store).
template <typename T, int N, bool kPdl>
__global__ void test_vec_copy(CopyParams p) {
  kiln::pdl_wait<kPdl>();
  const long long i = kiln::global_thread_id();
  if (i < p.n_vec) {
    const auto v = kiln::load_vec_stream<T, N>(static_cast<const T*>(p.in) + i * N);
    kiln::store_vec_stream<T, N>(static_cast<T*>(p.out) + i * N, v);
  }
  kiln::pdl_launch_dependents<kPdl>();
}

struct ConvertParams {
  const float* in_f32;  // n values to narrow
  const void* in_t;     // n values of T to widen
  void* out_t;          // n: RN_T(in_f32)
  float* out_f32;       // n: f32(in_t)
  unsigned char* out_e4m3;  // n: e4m3_sat(in_f32)
  float* out_e4m3_f32;  // 256: value of each e4m3 code
  float* out_e8m0_f32;  // 256: value of each e8m0 code
  long long n;
};

// kiln/convert.cuh
template <typename T>
__global__ void test_convert(ConvertParams p) {
  const long long i = kiln::global_thread_id();
  if (i < p.n) {
    static_cast<T*>(p.out_t)[i] = kiln::from_f32<T>(p.in_f32[i]);
    p.out_f32[i] = kiln::to_f32<T>(static_cast<const T*>(p.in_t)[i]);
    p.out_e4m3[i] = kiln::f32_to_e4m3_sat(p.in_f32[i]);
  }
  if (i < 256) {
    p.out_e4m3_f32[i] = kiln::e4m3_to_f32(static_cast<kiln::u8>(i));
    p.out_e8m0_f32[i] = kiln::e8m0_to_f32(static_cast<kiln::u8>(i));
  }
}

struct ReduceParams {
  const float* in;  // gridDim.x * blockDim.x values
  float* sums;      // per block: block_sum
  float* maxes;     // per block: block_max
  float* warp_sums; // per warp: warp_sum (every lane must agree; lane 0 writes, others check)
  int* disagree;    // set to 1 if any lane's result differs from lane 0's
};

// kiln/reduce.cuh
template <int kWarps>
__global__ void test_reduce(ReduceParams p) {
  __shared__ float smem[32];
  const long long i = kiln::global_thread_id();
  const float v = p.in[i];
  const float ws = kiln::warp_sum(v);
  const float lane0 = __shfl_sync(0xffffffffu, ws, 0);
  if (ws != lane0) atomicExch(p.disagree, 1);
  if ((threadIdx.x & 31) == 0) p.warp_sums[i >> 5] = ws;
  const float s = kiln::block_sum<kWarps>(v, smem);
  const float m = kiln::block_max<kWarps>(v, smem);
  if (threadIdx.x == 0) {
    p.sums[blockIdx.x] = s;
    p.maxes[blockIdx.x] = m;
  }
}

struct MathParams {
  const float* in;
  float* rsqrt_out;
  float* div_out;
  long long n;
};

// kiln/math.cuh (a template, like every kiln kernel: a program emits only what is instantiated)
template <typename F>
__global__ void test_math(MathParams p) {
  const long long i = kiln::global_thread_id();
  if (i < p.n) {
    p.rsqrt_out[i] = kiln::rsqrt_rn(p.in[i]);
    p.div_out[i] = kiln::div_rn(p.in[i], 3.0f);
  }
}

struct PdlParams {
  float* data;        // n floats
  float* out;         // n floats (consumer)
  long long n;
  long long spin;     // producer: clock cycles to spin before writing
  float value;        // producer writes data[i] = value + i
};

// Releases the dependents at once, then spins `cycles` clock cycles: a slow PDL predecessor.
KILN_DEVICE void release_then_spin(long long cycles) {
  kiln::pdl_launch_dependents<true>();
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

// kiln/pdl.cuh: a slow producer that lets its dependents launch early...
template <typename F>
__global__ void test_pdl_producer(PdlParams p) {
  release_then_spin(p.spin);
  const long long i = kiln::global_thread_id();
  if (i < p.n) p.data[i] = p.value + static_cast<float>(i);
}

// ...and a consumer that must see the producer's writes.
template <bool kPdl>
__global__ void test_pdl_consumer(PdlParams p) {
  kiln::pdl_wait<kPdl>();
  const long long i = kiln::global_thread_id();
  if (i < p.n) p.out[i] = p.data[i] * 2.0f;
}

template <typename I>
struct IdWriterParams {
  const I* src;       // n ids
  I* dst;             // n ids
  long long n;
  long long spin;     // clock cycles to spin before writing
};

// A slow producer of row-filter ids (dst ← src) that lets its dependents launch early: they
// read dst before their PDL wait (hints) and must decide only from what they read after it.
// A template, so that only the name expression instantiates it.
template <typename I>
__global__ void test_pdl_id_writer(IdWriterParams<I> p) {
  release_then_spin(p.spin);
  const long long i = kiln::global_thread_id();
  if (i < p.n) p.dst[i] = p.src[i];
}
