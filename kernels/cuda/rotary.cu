// Rotary position embedding on the GPU (kernels/cuda/rotary.h): one thread per rotated pair (adjacent threads take
// adjacent pairs of a head vector, so the loads coalesce) or per copied tail element.
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

}  // namespace

bool rotary_embedding(const void* x, const float* cos, const float* sin, void* y, bool bf16, const RotaryDims& d) {
  const int64_t items = d.batch * d.seq * d.heads * (d.head_dim - d.rotary_dim / 2);
  if (items <= 0) return true;
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
