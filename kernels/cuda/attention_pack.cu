// Head layouts for cuDNN's attention (kernels/cuda/cudnn_attention.cpp): float32 or bf16 rows of heads of D elements
// to bfloat16 rows of heads padded to Dp (cuDNN's bf16 attention wants head dims that are multiples of 8; gpt-1.5b's
// are 50), and back (to float32 or bf16). And the packed flash kernels over bf16 operands and results (through
// float32 scratch).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grow_buffer.h"
#include "kernels/cuda/ops.h"

namespace gv::cuda {
namespace {

using detail::kThreads;
using detail::launched;

__device__ __forceinline__ uint16_t to_bits(float x) { return detail::bf16_bits(x); }
__device__ __forceinline__ uint16_t to_bits(uint16_t x) { return x; }

template <typename In>
__global__ void pack_heads_kernel(const In* __restrict__ src, uint16_t* __restrict__ dst, int64_t total, int d,
                                  int dp) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t head = i / dp;
    const int c = static_cast<int>(i - head * dp);
    dst[i] = c < d ? to_bits(src[head * d + c]) : uint16_t{0};
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

unsigned blocks_for(int64_t total) {
  int64_t blocks = (total + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{detail::num_sms()} * 16;
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

}  // namespace

bool pack_heads_bf16(MixedTensor src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst) {
  if (heads == 0) return true;
  const int64_t total = heads * dp;
  if (src.bf16) {
    if (d == dp) {
      return cudaMemcpyAsync(dst, src.data, sizeof(uint16_t) * total, cudaMemcpyDeviceToDevice, 0) == cudaSuccess;
    }
    pack_heads_kernel<uint16_t><<<blocks_for(total), kThreads>>>(static_cast<const uint16_t*>(src.data), dst, total,
                                                                 static_cast<int>(d), static_cast<int>(dp));
    return launched();
  }
  if (d == dp) return to_bf16(static_cast<const float*>(src.data), dst, total);
  pack_heads_kernel<float><<<blocks_for(total), kThreads>>>(static_cast<const float*>(src.data), dst, total,
                                                            static_cast<int>(d), static_cast<int>(dp));
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

namespace {

// t as float32: the pointer itself, or t widened into `buf`.
const float* widened(MixedTensor t, int64_t n, GrowBuffer& buf) {
  if (!t.bf16) return static_cast<const float*>(t.data);
  float* w = buf.get_as<float>(static_cast<size_t>(n));
  return w && from_bf16(static_cast<const uint16_t*>(t.data), w, n) ? w : nullptr;
}

GrowBuffer g_qkv32, g_y32, g_dy32, g_out32;

}  // namespace

bool flash_attention_packed(const AttentionDims& d, MixedTensor qkv, void* y, bool y_bf16, float* lse) {
  const int64_t ny = d.batch * d.q_len * d.q_heads * d.head_dim;
  const float* q32 = widened(qkv, 3 * ny, g_qkv32);
  float* y32 = y_bf16 ? g_out32.get_as<float>(static_cast<size_t>(ny)) : static_cast<float*>(y);
  return q32 && y32 && flash_attention_packed_f32(d, q32, y32, lse) &&
         (!y_bf16 || to_bf16(y32, static_cast<uint16_t*>(y), ny));
}

bool flash_attention_packed_grad(const AttentionDims& d, MixedTensor qkv, MixedTensor dy, MixedTensor y,
                                 const float* lse, void* dqkv, bool dqkv_bf16) {
  const int64_t ny = d.batch * d.q_len * d.q_heads * d.head_dim;
  const float* q32 = widened(qkv, 3 * ny, g_qkv32);
  const float* dy32 = widened(dy, ny, g_dy32);
  const float* y32 = widened(y, ny, g_y32);
  float* out32 = dqkv_bf16 ? g_out32.get_as<float>(static_cast<size_t>(3 * ny)) : static_cast<float*>(dqkv);
  return q32 && dy32 && y32 && out32 && flash_attention_packed_grad_f32(d, q32, dy32, y32, lse, out32) &&
         (!dqkv_bf16 || to_bf16(out32, static_cast<uint16_t*>(dqkv), 3 * ny));
}

}  // namespace gv::cuda
