// Rotary position embedding on the GPU (kernels/cuda/rotary.h). The common form (rotate-half pairs over the whole
// head, as Llama's): one thread per 16 bytes of a head vector's first half and the matching 16 bytes of its second,
// with the tables' matching floats, 32-bit index arithmetic. Otherwise (interleaved pairs, a partial rotary
// dimension, unaligned or huge tensors): one thread per rotated pair (adjacent threads take adjacent pairs of a head
// vector, so the loads coalesce) or per copied tail element.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rotary.h"

namespace gv::cuda {
namespace {

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const uint16_t* p, int64_t i) { return detail::bf16_float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(uint16_t* p, int64_t i, float v) { p[i] = detail::bf16_bits(v); }

// Work items per head vector: rotary_dim / 2 pairs, then head_dim - rotary_dim copied elements.
template <typename T>
__global__ void rotary_kernel(const T* x, const float* cos, const float* sin, T* y, RotaryDims d, int64_t items) {
  const int64_t half = d.rotary_dim / 2, per_vec = d.head_dim - half;
  for (int64_t it = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; it < items;
       it += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = it / per_vec, j = it - v * per_vec;
    const T* xv = x + v * d.head_dim;
    T* yv = y + v * d.head_dim;
    if (j >= half) {
      const int64_t e = d.rotary_dim + (j - half);
      st(yv, e, ld(xv, e));
      continue;
    }
    const int64_t b = v / (d.seq * d.heads);
    const int64_t s = d.heads_first ? v % d.seq : (v / d.heads) % d.seq;
    const int64_t t = (b * d.seq + s) * half + j;
    const float c = cos[t], sn = sin[t];
    const int64_t i1 = d.interleaved ? 2 * j : j, i2 = d.interleaved ? 2 * j + 1 : j + half;
    const float x1 = ld(xv, i1), x2 = ld(xv, i2);
    st(yv, i1, c * x1 - sn * x2);
    st(yv, i2, sn * x1 + c * x2);
  }
}

// 16 bytes of T as W floats and back (T float32: W = 4; bf16 bits: W = 8).
template <typename T>
struct Chunk;
template <>
struct Chunk<float> {
  static constexpr int W = 4;
  static __device__ __forceinline__ void load(const float* p, float (&f)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
  }
  static __device__ __forceinline__ void store(float* p, const float (&f)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  }
};
template <>
struct Chunk<uint16_t> {
  static constexpr int W = 8;
  static __device__ __forceinline__ void load(const uint16_t* p, float (&f)[8]) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
  static __device__ __forceinline__ void store(uint16_t* p, const float (&f)[8]) {
    uint32_t w[4];
    for (int i = 0; i < 4; ++i) {
      w[i] = detail::bf16_bits(f[2 * i]) | (static_cast<uint32_t>(detail::bf16_bits(f[2 * i + 1])) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
};

// Rotate-half over whole heads (rotary_dim == head_dim, half a multiple of W): item = (head vector, chunk of W pairs).
template <typename T>
__global__ void rotary_half_kernel(const T* x, const float* cos, const float* sin, T* y, uint32_t chunks_per_vec,
                                   uint32_t half, uint32_t heads, uint32_t seq, bool heads_first, uint32_t items) {
  constexpr int W = Chunk<T>::W;
  for (uint32_t it = blockIdx.x * blockDim.x + threadIdx.x; it < items; it += gridDim.x * blockDim.x) {
    const uint32_t v = it / chunks_per_vec, j = (it - v * chunks_per_vec) * W;
    // The vector's token b * seq + s: heads-first v = (b * heads + h) * seq + s, else v = (b * seq + s) * heads + h.
    const uint32_t token = heads_first ? v / (heads * seq) * seq + v % seq : v / heads;
    const size_t base = static_cast<size_t>(v) * 2 * half + j, t = static_cast<size_t>(token) * half + j;
    float x1[W], x2[W], c[W], sn[W];
    Chunk<T>::load(x + base, x1);
    Chunk<T>::load(x + base + half, x2);
    for (int q = 0; q < W; q += 4) {
      const float4 cv = *reinterpret_cast<const float4*>(cos + t + q),
                   sv = *reinterpret_cast<const float4*>(sin + t + q);
      c[q] = cv.x, c[q + 1] = cv.y, c[q + 2] = cv.z, c[q + 3] = cv.w;
      sn[q] = sv.x, sn[q + 1] = sv.y, sn[q + 2] = sv.z, sn[q + 3] = sv.w;
    }
    float y1[W], y2[W];
    for (int i = 0; i < W; ++i) {
      y1[i] = c[i] * x1[i] - sn[i] * x2[i];
      y2[i] = sn[i] * x1[i] + c[i] * x2[i];
    }
    Chunk<T>::store(y + base, y1);
    Chunk<T>::store(y + base + half, y2);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The rotate-half kernel, where its conditions hold; false (nothing launched) otherwise.
template <typename T>
bool rotary_half(const T* x, const float* cos, const float* sin, T* y, const RotaryDims& d) {
  constexpr int W = Chunk<T>::W;
  const int64_t half = d.rotary_dim / 2, vectors = d.batch * d.seq * d.heads;
  if (d.interleaved || d.rotary_dim != d.head_dim || half % W != 0 || !aligned16(x) || !aligned16(y) ||
      !aligned16(cos) || !aligned16(sin)) {
    return false;
  }
  const int64_t items = vectors * (half / W);
  if (items >= (int64_t{1} << 31)) return false;
  rotary_half_kernel<T><<<detail::flat_grid(items), detail::kThreads, 0, launch_stream()>>>(
      x, cos, sin, y, static_cast<uint32_t>(half / W), static_cast<uint32_t>(half), static_cast<uint32_t>(d.heads),
      static_cast<uint32_t>(d.seq), d.heads_first, static_cast<uint32_t>(items));
  return true;
}

}  // namespace

bool rotary_embedding(const void* x, const float* cos, const float* sin, void* y, bool bf16, const RotaryDims& d) {
  const int64_t items = d.batch * d.seq * d.heads * (d.head_dim - d.rotary_dim / 2);
  if (items <= 0) return true;
  if (bf16 ? rotary_half(static_cast<const uint16_t*>(x), cos, sin, static_cast<uint16_t*>(y), d)
           : rotary_half(static_cast<const float*>(x), cos, sin, static_cast<float*>(y), d)) {
    return detail::launched();
  }
  const unsigned g = detail::flat_grid(items);
  if (bf16) {
    rotary_kernel<uint16_t><<<g, detail::kThreads, 0, launch_stream()>>>(static_cast<const uint16_t*>(x), cos, sin,
                                                                         static_cast<uint16_t*>(y), d, items);
  } else {
    rotary_kernel<float><<<g, detail::kThreads, 0, launch_stream()>>>(static_cast<const float*>(x), cos, sin,
                                                                      static_cast<float*>(y), d, items);
  }
  return detail::launched();
}

}  // namespace gv::cuda
