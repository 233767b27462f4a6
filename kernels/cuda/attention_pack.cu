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

// Eight source elements of one head (those at c0 + k < d; zeros past them), as bf16 bits.
template <typename In>
__device__ __forceinline__ uint4 load_padded8(const In* s, int c0, int d) {
  uint16_t v[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = c0 + k < d ? to_bits(s[k]) : uint16_t{0};
  uint4 r;
  r.x = v[0] | (static_cast<uint32_t>(v[1]) << 16);
  r.y = v[2] | (static_cast<uint32_t>(v[3]) << 16);
  r.z = v[4] | (static_cast<uint32_t>(v[5]) << 16);
  r.w = v[6] | (static_cast<uint32_t>(v[7]) << 16);
  return r;
}

// bf16 heads of an even d: pairs read as 32-bit words (head * d and c0 are even).
__device__ __forceinline__ uint4 load_padded8(const uint32_t* s, int c0, int d) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = c0 + 2 * k < d ? s[k] : 0u;
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// One thread per 16 bytes of the padded result (dp is a multiple of 8): coalesced reads and 16-byte stores. Index
// arithmetic in 32 bits (the callers check the count fits). `Src` is the source's element type, or uint32_t for bf16
// pairs (then `d` and the offsets count bf16 elements and the pointer is read two at a time).
template <typename Src>
__global__ void pack_heads_kernel(const Src* __restrict__ src, uint4* __restrict__ dst, uint32_t chunks, int d,
                                  uint32_t chunks_per_head, int per_word) {
  const uint32_t step = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += step) {
    const uint32_t head = i / chunks_per_head;
    const int c0 = static_cast<int>(i - head * chunks_per_head) * 8;
    const Src* s = src + (static_cast<int64_t>(head) * d + c0) / per_word;
    dst[i] = load_padded8(s, c0, d);
  }
}

__device__ __forceinline__ void put_pair(float* p, uint32_t pair, uint32_t w) {
  reinterpret_cast<float2*>(p)[pair] = make_float2(detail::bf16_float(static_cast<uint16_t>(w & 0xffffu)),
                                                   detail::bf16_float(static_cast<uint16_t>(w >> 16)));
}
__device__ __forceinline__ void put_pair(uint16_t* p, uint32_t pair, uint32_t w) {
  reinterpret_cast<uint32_t*>(p)[pair] = w;
}

// Even d: one thread per pair of result elements, read as one 32-bit word of the padded source (dp is even).
template <typename Out>
__global__ void unpack_pairs_kernel(const uint32_t* __restrict__ src, Out* __restrict__ dst, uint32_t pairs,
                                    uint32_t half_d, uint32_t half_dp) {
  const uint32_t step = gridDim.x * blockDim.x;
  for (uint32_t p = blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += step) {
    const uint32_t head = p / half_d;
    put_pair(dst, p, src[head * half_dp + (p - head * half_d)]);
  }
}

// unpack_pairs_kernel's copy for rows of `half_cols` pairs (heads of an even d, padded to an even dp), which also
// sums each column over the block's slab of rows: thread (x, y) owns pair column blockIdx.x * blockDim.x + x, the
// block's rows [slab * per, slab * per + per) of which row y, y + blockDim.y, ... (loads of several rows in flight),
// and the block's partial sums land in part[slab][column] (float32, added up in a fixed order by
// column_partials_finish: deterministic).
__global__ void unpack_pairs_sums_kernel(const uint32_t* __restrict__ src, uint32_t* __restrict__ dst,
                                         float* __restrict__ part, uint32_t rows, uint32_t per, uint32_t half_cols,
                                         uint32_t half_d, uint32_t half_dp, uint32_t src_row) {
  const uint32_t pc = blockIdx.x * blockDim.x + threadIdx.x;
  __shared__ float2 sh[8][32];
  float2 sum = make_float2(0.f, 0.f);
  if (pc < half_cols) {
    const uint32_t head = pc / half_d, from = head * half_dp + (pc - head * half_d);
    const uint32_t first = blockIdx.y * per, last = min(rows, first + per);
#pragma unroll 8
    for (uint32_t r = first + threadIdx.y; r < last; r += blockDim.y) {
      const uint32_t w = src[static_cast<size_t>(r) * src_row + from];
      dst[static_cast<size_t>(r) * half_cols + pc] = w;
      sum.x += detail::bf16_float(static_cast<uint16_t>(w & 0xffffu));
      sum.y += detail::bf16_float(static_cast<uint16_t>(w >> 16));
    }
  }
  sh[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || pc >= half_cols) return;
  for (uint32_t k = 1; k < blockDim.y; ++k) sum.x += sh[k][threadIdx.x].x, sum.y += sh[k][threadIdx.x].y;
  reinterpret_cast<float2*>(part + static_cast<size_t>(blockIdx.y) * 2 * half_cols)[pc] = sum;
}

// sums[c] = sum over slabs of part[slab][c], in slab order, in double.
__global__ void column_partials_finish(const float* __restrict__ part, uint32_t slabs, uint32_t cols,
                                       float* __restrict__ sums) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  double a = 0.0;
  for (uint32_t k = 0; k < slabs; ++k) a += part[static_cast<size_t>(k) * cols + c];
  sums[c] = static_cast<float>(a);
}

__device__ __forceinline__ void put(float* p, int64_t i, uint16_t b) { p[i] = detail::bf16_float(b); }
__device__ __forceinline__ void put(uint16_t* p, int64_t i, uint16_t b) { p[i] = b; }

// Any d (odd ones, or counts past 32-bit indexing): one thread per element.
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

constexpr int64_t kMax32 = int64_t{1} << 31;

template <typename Src>
bool launch_pack(const Src* src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst, int per_word) {
  const int64_t chunks = heads * (dp / 8);
  if (dp % 8 != 0 || chunks >= kMax32 || heads * d >= kMax32) return false;
  pack_heads_kernel<Src><<<blocks_for(chunks), kThreads, 0, launch_stream()>>>(
      src, reinterpret_cast<uint4*>(dst), static_cast<uint32_t>(chunks), static_cast<int>(d),
      static_cast<uint32_t>(dp / 8), per_word);
  return launched();
}

template <typename Out>
bool unpack(const uint16_t* src, int64_t heads, int64_t d, int64_t dp, Out* dst) {
  if (heads == 0) return true;
  const int64_t total = heads * d;
  if (d % 2 == 0 && heads * dp < kMax32) {
    unpack_pairs_kernel<Out><<<blocks_for(total / 2), kThreads, 0, launch_stream()>>>(
        reinterpret_cast<const uint32_t*>(src), dst, static_cast<uint32_t>(total / 2), static_cast<uint32_t>(d / 2),
        static_cast<uint32_t>(dp / 2));
  } else {
    unpack_heads_kernel<Out><<<blocks_for(total), kThreads, 0, launch_stream()>>>(src, dst, total, static_cast<int>(d),
                                                                                  static_cast<int>(dp));
  }
  return launched();
}

}  // namespace

// dp is a multiple of 8 (cudnn_padded_head_dim); false for counts past 32-bit indexing (2^31 elements).
bool pack_heads_bf16(MixedTensor src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst) {
  if (heads == 0) return true;
  if (src.bf16) {
    if (d == dp) {
      return cudaMemcpyAsync(dst, src.data, sizeof(uint16_t) * heads * dp, cudaMemcpyDeviceToDevice, launch_stream()) ==
             cudaSuccess;
    }
    if (d % 2 == 0) return launch_pack(static_cast<const uint32_t*>(src.data), heads, d, dp, dst, 2);
    return launch_pack(static_cast<const uint16_t*>(src.data), heads, d, dp, dst, 1);
  }
  if (d == dp) return to_bf16(static_cast<const float*>(src.data), dst, heads * d);
  return launch_pack(static_cast<const float*>(src.data), heads, d, dp, dst, 1);
}

bool unpack_heads_f32(const uint16_t* src, int64_t heads, int64_t d, int64_t dp, float* dst) {
  if (heads == 0) return true;
  if (d == dp) return from_bf16(src, dst, heads * d);
  return unpack(src, heads, d, dp, dst);
}

bool unpack_heads_bf16_sums(const uint16_t* src, int64_t rows, int64_t heads, int64_t d, int64_t dp, uint16_t* dst,
                            float* col_sums) {
  const int64_t cols = heads * d;
  if (rows == 0 || cols == 0) {
    return cols == 0 || cudaMemsetAsync(col_sums, 0, sizeof(float) * cols, launch_stream()) == cudaSuccess;
  }
  if (d == dp || d % 2 != 0 || rows * heads * dp >= kMax32) {
    return unpack_heads_bf16(src, rows * heads, d, dp, dst) && column_sums_bf16(dst, col_sums, rows, cols, 1.0f);
  }
  // 32 pair columns by 8 row lanes per block; slabs of rows sized for ~8 blocks per SM.
  const dim3 block(32, 8);
  const int64_t tiles = (cols / 2 + 31) / 32;
  int64_t slabs = (int64_t{detail::num_sms()} * 8 + tiles - 1) / tiles;
  const int64_t max_slabs = (rows + 31) / 32;  // at least 32 rows (4 per row lane) each
  slabs = slabs < 1 ? 1 : slabs > max_slabs ? max_slabs : slabs;
  const int64_t per = (rows + slabs - 1) / slabs;
  slabs = (rows + per - 1) / per;
  float* part = static_cast<float*>(workspace(sizeof(float) * static_cast<size_t>(slabs * cols)));
  if (!part) return false;
  unpack_pairs_sums_kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(slabs)), block, 0,
                             launch_stream()>>>(
      reinterpret_cast<const uint32_t*>(src), reinterpret_cast<uint32_t*>(dst), part, static_cast<uint32_t>(rows),
      static_cast<uint32_t>(per), static_cast<uint32_t>(cols / 2), static_cast<uint32_t>(d / 2),
      static_cast<uint32_t>(dp / 2), static_cast<uint32_t>(heads * dp / 2));
  if (!launched()) return false;
  column_partials_finish<<<static_cast<unsigned>((cols + kThreads - 1) / kThreads), kThreads, 0, launch_stream()>>>(
      part, static_cast<uint32_t>(slabs), static_cast<uint32_t>(cols), col_sums);
  return launched();
}

bool unpack_heads_bf16(const uint16_t* src, int64_t heads, int64_t d, int64_t dp, uint16_t* dst) {
  if (heads == 0) return true;
  if (d == dp) {
    return cudaMemcpyAsync(dst, src, sizeof(uint16_t) * heads * d, cudaMemcpyDeviceToDevice, launch_stream()) ==
           cudaSuccess;
  }
  return unpack(src, heads, d, dp, dst);
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
