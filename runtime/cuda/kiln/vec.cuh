// kiln/vec.cuh — naturally aligned vectors of N elements and their global loads/stores.
// A Vec<T, N> with sizeof(T)*N == 16 compiles to one 128-bit access (LDG.128 / STG.128); the
// caller guarantees the address is aligned to sizeof(Vec) (the Rust side checks pointers and
// strides before choosing a vectorised kernel).
#pragma once
#include <kiln/common.cuh>

namespace kiln {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  static_assert((N & (N - 1)) == 0, "N must be a power of two");
  T v[N];
  KILN_DEVICE T& operator[](int i) { return v[i]; }
  KILN_DEVICE const T& operator[](int i) const { return v[i]; }
};

// Plain load through L1.
template <typename T, int N>
KILN_DEVICE Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

// Read-only streaming load: the data is read once, so it must not evict useful lines from L1.
template <typename T, int N>
KILN_DEVICE Vec<T, N> load_vec_stream(const T* p) {
  if constexpr (sizeof(Vec<T, N>) == 16) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return *reinterpret_cast<Vec<T, N>*>(&r);
  } else {
    return *reinterpret_cast<const Vec<T, N>*>(p);
  }
}

template <typename T, int N>
KILN_DEVICE void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Streaming store (evict-first): output that no one in this kernel reads again.
template <typename T, int N>
KILN_DEVICE void store_vec_stream(T* p, const Vec<T, N>& v) {
  if constexpr (sizeof(Vec<T, N>) == 16) {
    const uint4 r = *reinterpret_cast<const uint4*>(&v);
    asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(r.x), "r"(r.y), "r"(r.z), "r"(r.w)
                 : "memory");
  } else {
    *reinterpret_cast<Vec<T, N>*>(p) = v;
  }
}

// Elements of T that fill one 16-byte access.
template <typename T>
inline constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

}  // namespace kiln
