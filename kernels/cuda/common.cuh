// Shared device helpers of the CUDA op kernels: launch sizes, index decomposition, block reductions.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/ops.h"

namespace gv::cuda::detail {

constexpr int kThreads = 256;

inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535LL * 32) b = 65535LL * 32;  // grid-stride loops cover the rest
  return static_cast<unsigned>(b);
}

inline bool launched() { return cudaPeekAtLastError() == cudaSuccess; }

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
