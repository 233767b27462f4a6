// Head layouts for cuDNN's attention (kernels/cuda/cudnn_attention.cpp): float32 rows of `groups` heads of D
// elements to bfloat16 rows of heads padded to Dp (cuDNN's bf16 attention wants head dims that are multiples of 8;
// gpt-1.5b's are 50), and back (to float32 or bf16). And the flash backward's bf16 dQKV (through float32 scratch).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace gv::cuda {
namespace {

using detail::kThreads;
using detail::launched;

__global__ void pack_heads_kernel(const float* __restrict__ src, uint16_t* __restrict__ dst, int64_t total, int d,
                                  int dp) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t head = i / dp;
    const int c = static_cast<int>(i - head * dp);
    dst[i] = c < d ? detail::bf16_bits(src[head * d + c]) : uint16_t{0};
  }
}

__device__ __forceinline__ void put(float* p, int64_t i, uint16_t b) { p[i] = detail::bf16_float(b); }
__device__ __forceinline__ void put(uint16_t* p, int64_t i, uint16_t b) { p[i] = b; }

template <typename Out>
__global__ void unpack_heads_kernel(const uint16_t* __restrict__ src, Out* __restrict__ dst, int64_t total, int d,
                                    int dp) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t head = i / d;
    const int c = static_cast<int>(i - head * d);
    put(dst, i, src[head * dp + c]);
  }
}

// Grow-only float32 scratch (cudaFree synchronizes: work that used the old buffer is done).
float* f32_scratch(size_t elems) {
  static void* buf = nullptr;
  static size_t have = 0;
  if (elems <= have) return static_cast<float*>(buf);
  if (buf) cudaFree(buf);
  buf = nullptr;
  have = 0;
  if (cudaMalloc(&buf, sizeof(float) * elems) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  have = elems;
  return static_cast<float*>(buf);
}

unsigned blocks_for(int64_t total) {
  int64_t blocks = (total + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{detail::num_sms()} * 16;
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

}  // namespace

bool pack_heads_bf16(const float* src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst) {
  if (heads == 0) return true;
  if (d == dp) return to_bf16(src, dst, heads * d);
  const int64_t total = heads * dp;
  pack_heads_kernel<<<blocks_for(total), kThreads>>>(src, dst, total, static_cast<int>(d), static_cast<int>(dp));
  return launched();
}

bool unpack_heads_f32(const uint16_t* src, int64_t heads, int64_t d, int64_t dp, float* dst) {
  if (heads == 0) return true;
  if (d == dp) return from_bf16(src, dst, heads * d);
  const int64_t total = heads * d;
  unpack_heads_kernel<float><<<blocks_for(total), kThreads>>>(src, dst, total, static_cast<int>(d),
                                                              static_cast<int>(dp));
  return launched();
}

bool unpack_heads_bf16(const uint16_t* src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst) {
  if (heads == 0) return true;
  if (d == dp) {
    return cudaMemcpyAsync(dst, src, sizeof(uint16_t) * heads * d, cudaMemcpyDeviceToDevice, 0) == cudaSuccess;
  }
  const int64_t total = heads * d;
  unpack_heads_kernel<uint16_t><<<blocks_for(total), kThreads>>>(src, dst, total, static_cast<int>(d),
                                                                 static_cast<int>(dp));
  return launched();
}

bool flash_attention_packed_grad_bf16(const AttentionDims& d, const float* qkv, const float* dy, const float* y,
                                      const float* lse, uint16_t* dqkv) {
  const int64_t n = d.batch * d.q_len * 3 * d.q_heads * d.head_dim;
  float* wide = f32_scratch(static_cast<size_t>(n));
  return wide && flash_attention_packed_grad_f32(d, qkv, dy, y, lse, wide) && to_bf16(wide, dqkv, n);
}

}  // namespace gv::cuda
