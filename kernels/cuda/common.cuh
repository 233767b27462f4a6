// Shared device helpers of the CUDA op kernels: launch sizes, index decomposition, block reductions.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"

namespace gv::cuda {
// The stream every kernel, async copy and library call of this folder is issued on (compute_stream, device.h).
inline cudaStream_t launch_stream() { return static_cast<cudaStream_t>(compute_stream()); }
}  // namespace gv::cuda

namespace gv::cuda::detail {

constexpr int kThreads = 256;

inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535LL * 32) b = 65535LL * 32;  // grid-stride loops cover the rest
  return static_cast<unsigned>(b);
}

inline bool launched() { return cudaPeekAtLastError() == cudaSuccess; }

// Streaming multiprocessors of the current device (queried once per process; 132 on an H100 SXM).
inline int num_sms() {
  static const int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) !=
                                                   cudaSuccess || v <= 0) {
      cudaGetLastError();
      return 132;
    }
    return v;
  }();
  return n;
}

// ---- flat elementwise launches: 16-byte accesses, 32-bit indices ----
// A flat functor F has `template <class I> void one(I i)` (element i) and `template <class I> void quad(I q)`
// (elements 4q .. 4q+3 through float4 accesses, only called when all its pointers are 16-byte aligned), and does the
// same float operations per element in both, so results do not depend on the path.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class I, class F>
__global__ void flat_quads_kernel(F f, I n) {
  const I quads = n / 4;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  const I first = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (I q = first; q < quads; q += stride) f.quad(q);
  const I i = quads * 4 + first;  // the last n % 4 elements: threads 0..2 of block 0
  if (i < n) f.one(i);
}

template <class I, class F>
__global__ void flat_ones_kernel(F f, I n) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f.one(i);
}

// Blocks for `units` work items: one per thread up to two waves of resident 256-thread blocks (8 per SM), then the
// loops stride.
inline unsigned flat_grid(int64_t units, int64_t max_blocks = 0) {
  int64_t b = (units + kThreads - 1) / kThreads;
  int64_t cap = int64_t{num_sms()} * 16;
  if (max_blocks > 0 && max_blocks < cap) cap = max_blocks;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b);
}

// Runs f over n elements: quads when `vec` (every pointer of f 16-byte aligned), elements otherwise; 32-bit indices
// below 2^31 elements.
template <class F>
bool launch_flat(const F& f, int64_t n, bool vec, int64_t max_blocks = 0) {
  if (n <= 0) return true;
  const unsigned g = flat_grid(vec ? (n + 3) / 4 : n, max_blocks);
  if (n < (int64_t{1} << 31)) {
    if (vec)
      flat_quads_kernel<uint32_t, F><<<g, kThreads, 0, launch_stream()>>>(f, static_cast<uint32_t>(n));
    else
      flat_ones_kernel<uint32_t, F><<<g, kThreads, 0, launch_stream()>>>(f, static_cast<uint32_t>(n));
  } else {
    if (vec)
      flat_quads_kernel<int64_t, F><<<g, kThreads, 0, launch_stream()>>>(f, n);
    else
      flat_ones_kernel<int64_t, F><<<g, kThreads, 0, launch_stream()>>>(f, n);
  }
  return launched();
}

__device__ __forceinline__ float4 load4(const float* p, size_t q) { return reinterpret_cast<const float4*>(p)[q]; }

// float -> bfloat16 bits, rounding to nearest even (the same as __float2bfloat16_rn on every architecture): NaN stays
// a (quiet) NaN with its sign, overflow goes to infinity. And back (exact).
__device__ __forceinline__ uint16_t bf16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float bf16_float(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
__device__ __forceinline__ void store4(float* p, size_t q, float4 v) { reinterpret_cast<float4*>(p)[q] = v; }

// n / d for 32-bit n < 2^31 without a division instruction (Granlund-Montgomery: one multiply-high, an add and a
// shift). init() runs on the host.
struct FastDiv {
  uint32_t m = 1, l = 0;
  void init(uint32_t d) {
    l = 0;
    while ((uint64_t{1} << l) < d) ++l;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << l) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(m, n) + n) >> l; }
};

// Offset of output element i in input k of a Broadcast, with 64-bit divisions (outputs of 2^31 elements or more).
__device__ __forceinline__ int64_t bc_offset(const Broadcast& bc, int k, int64_t i) {
  int64_t off = 0;
  for (int d = bc.rank - 1; d >= 0; --d) {
    const int64_t n = bc.dims[d];
    const int64_t q = i / n;
    off += (i - q * n) * bc.strides[k][d];
    i = q;
  }
  return off;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `sh` holds 32 T.
template <typename T>
__device__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by an earlier call
  if (lane == 0) sh[w] = v;
  __syncthreads();
  T r = lane < nw ? sh[lane] : T(0);
  r = warp_sum(r);
  return r;
}
template <typename T>
__device__ T block_max(T v, T* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  T r = lane < nw ? sh[lane] : sh[0];
  r = warp_max(r);
  return r;
}

}  // namespace gv::cuda::detail
