// Sum reductions over any axes, Gather and its gradient (embedding backward).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/common.cuh"

namespace gv::cuda {
namespace {

using detail::block_sum;
using detail::grid_for;
using detail::kThreads;
using detail::launched;

__device__ __forceinline__ int64_t kept_offset(const Reduce& r, int64_t o) {
  int64_t off = 0;
  for (int d = r.kept_rank - 1; d >= 0; --d) {
    const int64_t q = o / r.kept_dims[d];
    off += (o - q * r.kept_dims[d]) * r.kept_strides[d];
    o = q;
  }
  return off;
}
__device__ __forceinline__ int64_t red_offset(const Reduce& r, int64_t j) {
  int64_t off = 0;
  for (int d = r.red_rank - 1; d >= 0; --d) {
    const int64_t q = j / r.red_dims[d];
    off += (j - q * r.red_dims[d]) * r.red_strides[d];
    j = q;
  }
  return off;
}

// The innermost input dim is reduced: one block per output element, threads along the reduced elements.
__global__ void reduce_rows(const float* x, float* y, Reduce r, float scale) {
  __shared__ double sh[32];
  const int64_t o = blockIdx.x;
  const float* base = x + kept_offset(r, o);
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < r.red_numel; j += blockDim.x) s += base[red_offset(r, j)];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) y[o] = static_cast<float>(s * scale);
}

// The innermost input dim is kept: threads along output elements (coalesced), the reduced elements split into
// chunks (grid.y) whose partial sums go to part[chunk, o].
__global__ void reduce_cols_partial(const float* x, float* part, Reduce r, int64_t per_chunk) {
  const int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (o >= r.kept_numel) return;
  const float* base = x + kept_offset(r, o);
  const int64_t j0 = blockIdx.y * per_chunk, j1 = min(r.red_numel, j0 + per_chunk);
  float s = 0.0f;
  for (int64_t j = j0; j < j1; ++j) s += base[red_offset(r, j)];
  part[blockIdx.y * r.kept_numel + o] = s;
}

__global__ void reduce_cols_finish(const float* part, float* y, int64_t kept, int64_t chunks, float scale) {
  const int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (o >= kept) return;
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += part[c * kept + o];
  y[o] = static_cast<float>(s * scale);
}

// Sums over the leading rows of a row-major [rows, cols] x (the kept dims trailing and contiguous: bias gradients).
// Block (32, 8): a tile of 32 * V columns (V = 4: float4 loads) by a slab of rows; the 8 row lanes stride through the
// slab, then add up in a fixed order into part[slab, col]. Deterministic: no atomics.
// Loads of float32 or bf16 (bits) elements as float32: one, or four (16 / 8 bytes, aligned).
__device__ __forceinline__ float load1(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load1(const uint16_t* x, int64_t i) { return detail::bf16_float(x[i]); }
__device__ __forceinline__ float4 load4(const float* x, int64_t i) { return *reinterpret_cast<const float4*>(x + i); }
__device__ __forceinline__ float4 load4(const uint16_t* x, int64_t i) {
  const uint2 b = *reinterpret_cast<const uint2*>(x + i);
  return make_float4(detail::bf16_float(b.x & 0xffffu), detail::bf16_float(b.x >> 16),
                     detail::bf16_float(b.y & 0xffffu), detail::bf16_float(b.y >> 16));
}

template <typename T, int V>
__global__ void col_sums_partial(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t rows_per_slab,
                                 float* __restrict__ part) {
  __shared__ float sh[8][32 * V + 1];
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x) * V;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_slab;
  const int64_t r1 = min(rows, r0 + rows_per_slab);
  float acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = 0.0f;
  if (c0 < cols) {
    int64_t r = r0 + threadIdx.y;
    if constexpr (V == 4) {
      for (; r + 8 < r1; r += 16) {  // two independent loads in flight
        const float4 a = load4(x, r * cols + c0);
        const float4 b = load4(x, (r + 8) * cols + c0);
        acc[0] += a.x;
        acc[1] += a.y;
        acc[2] += a.z;
        acc[3] += a.w;
        acc[0] += b.x;
        acc[1] += b.y;
        acc[2] += b.z;
        acc[3] += b.w;
      }
      for (; r < r1; r += 8) {
        const float4 a = load4(x, r * cols + c0);
        acc[0] += a.x;
        acc[1] += a.y;
        acc[2] += a.z;
        acc[3] += a.w;
      }
    } else {
      for (; r < r1; r += 8) acc[0] += load1(x, r * cols + c0);
    }
  }
#pragma unroll
  for (int v = 0; v < V; ++v) sh[threadIdx.y][threadIdx.x * V + v] = acc[v];
  __syncthreads();
  // 256 threads, 32 * V columns: each thread finishes columns t, t + 256, ... of the tile.
  const int t = threadIdx.y * 32 + threadIdx.x;
  for (int j = t; j < 32 * V; j += 256) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 * V + j;
    if (c >= cols) continue;
    float s = sh[0][j];
    for (int k = 1; k < 8; ++k) s += sh[k][j];
    part[static_cast<int64_t>(blockIdx.y) * cols + c] = s;
  }
}

// y[c] = scale * sum over slabs of part[slab, c] in double. Block (32, 8): lane y sums slabs y, y + 8, ...; the 8
// lane sums then add up in lane order (a fixed order: deterministic).
__global__ void col_sums_finish(const float* __restrict__ part, int64_t slabs, int64_t cols, float* __restrict__ y,
                                float scale) {
  __shared__ double sh[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  double s = 0.0;
  if (c < cols) {
    for (int64_t k = threadIdx.y; k < slabs; k += 8) s += part[k * cols + c];
  }
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int k = 1; k < 8; ++k) s += sh[k][threadIdx.x];
    y[c] = static_cast<float>(s * scale);
  }
}

template <typename T, typename I>
__global__ void gather_kernel(const T* data, const I* idx, T* out, int64_t axis_dim, int64_t n_idx, int64_t inner,
                              int64_t total) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = t % inner;
    const int64_t rest = t / inner;
    const int64_t j = rest % n_idx, o = rest / n_idx;
    int64_t i = static_cast<int64_t>(idx[j]);
    if (i < 0) i += axis_dim;
    out[t] = (i >= 0 && i < axis_dim) ? data[(o * axis_dim + i) * inner + k] : T{};
  }
}

template <typename I>
__global__ void gather_grad_kernel(const float* grad, const I* idx, float* dx, int64_t axis_dim, int64_t n_idx,
                                   int64_t inner, int64_t total, int64_t skip) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = t % inner;
    const int64_t rest = t / inner;
    const int64_t j = rest % n_idx, o = rest / n_idx;
    int64_t i = static_cast<int64_t>(idx[j]);
    if (i < 0) i += axis_dim;
    if (i < 0 || i >= axis_dim || i == skip) continue;
    atomicAdd(dx + (o * axis_dim + i) * inner + k, grad[t]);
  }
}

template <typename T>
bool run_gather(const void* data, const void* idx, bool idx64, void* out, int64_t outer, int64_t axis_dim,
                int64_t n_idx, int64_t inner) {
  const int64_t total = outer * n_idx * inner;
  if (total == 0) return true;
  if (idx64) {
    gather_kernel<T, int64_t><<<grid_for(total), kThreads, 0, launch_stream()>>>(
        static_cast<const T*>(data), static_cast<const int64_t*>(idx), static_cast<T*>(out), axis_dim, n_idx, inner,
        total);
  } else {
    gather_kernel<T, int32_t><<<grid_for(total), kThreads, 0, launch_stream()>>>(
        static_cast<const T*>(data), static_cast<const int32_t*>(idx), static_cast<T*>(out), axis_dim, n_idx, inner,
        total);
  }
  return launched();
}

}  // namespace

namespace {

template <typename T>
bool column_sums(const T* x, float* y, int64_t rows, int64_t cols, float scale) {
  if (cols == 0) return true;
  if (rows == 0) return cudaMemsetAsync(y, 0, sizeof(float) * cols, launch_stream()) == cudaSuccess;
  const bool vec = cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % (4 * sizeof(T)) == 0;
  const int64_t tile = vec ? 128 : 32;
  const int64_t tiles = (cols + tile - 1) / tile;
  // Slabs: enough blocks for ~2 waves of 8 resident blocks per SM, each slab at least 64 rows (8 per row lane).
  const int64_t want = int64_t{detail::num_sms()} * 16;
  int64_t slabs = (want + tiles - 1) / tiles;
  const int64_t max_slabs = (rows + 63) / 64;
  if (slabs > max_slabs) slabs = max_slabs;
  if (slabs > 65535) slabs = 65535;
  if (slabs < 1) slabs = 1;
  const int64_t per = (rows + slabs - 1) / slabs;
  slabs = (rows + per - 1) / per;
  if (tiles > 0x7fffffff) return false;
  float* part = static_cast<float*>(workspace(sizeof(float) * slabs * cols));
  if (!part) return false;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(slabs)), block(32, 8);
  if (vec)
    col_sums_partial<T, 4><<<grid, block, 0, launch_stream()>>>(x, rows, cols, per, part);
  else
    col_sums_partial<T, 1><<<grid, block, 0, launch_stream()>>>(x, rows, cols, per, part);
  col_sums_finish<<<static_cast<unsigned>((cols + 31) / 32), block, 0, launch_stream()>>>(part, slabs, cols, y, scale);
  return launched();
}

}  // namespace

bool column_sums_f32(const float* x, float* y, int64_t rows, int64_t cols, float scale) {
  return column_sums<float>(x, y, rows, cols, scale);
}

bool column_sums_bf16(const uint16_t* x, float* y, int64_t rows, int64_t cols, float scale) {
  return column_sums<uint16_t>(x, y, rows, cols, scale);
}

bool reduce_sum_f32(const float* x, float* y, const Reduce& r, float scale) {
  if (r.kept_numel == 0) return true;
  if (r.red_numel == 0) return cudaMemsetAsync(y, 0, sizeof(float) * r.kept_numel, launch_stream()) == cudaSuccess;
  // Leading dims reduced, trailing dims kept and contiguous (merged by the caller into one of each): [rows, cols].
  static const bool colsum = [] {  // GALVATRON_CUDA_COLSUM=0: the general path (A/B measurements)
    const char* e = std::getenv("GALVATRON_CUDA_COLSUM");
    return !(e && e[0] == '0' && e[1] == '\0');
  }();
  if (colsum && r.red_rank == 1 && r.kept_rank == 1 && r.kept_strides[0] == 1 && r.red_strides[0] == r.kept_dims[0] &&
      r.kept_numel >= 32) {
    return column_sums_f32(x, y, r.red_numel, r.kept_numel, scale);
  }
  const bool last_reduced = r.red_rank > 0 && r.red_strides[r.red_rank - 1] == 1;
  if (last_reduced || r.kept_numel < 64) {
    reduce_rows<<<static_cast<unsigned>(r.kept_numel), kThreads, 0, launch_stream()>>>(x, y, r, scale);
    return launched();
  }
  int64_t chunks = (r.red_numel + 63) / 64;
  if (chunks > 256) chunks = 256;
  const int64_t per = (r.red_numel + chunks - 1) / chunks;
  chunks = (r.red_numel + per - 1) / per;
  float* part = static_cast<float*>(workspace(sizeof(float) * chunks * r.kept_numel));
  if (!part) return false;
  dim3 grid(static_cast<unsigned>((r.kept_numel + kThreads - 1) / kThreads), static_cast<unsigned>(chunks));
  reduce_cols_partial<<<grid, kThreads, 0, launch_stream()>>>(x, part, r, per);
  reduce_cols_finish<<<grid_for(r.kept_numel), kThreads, 0, launch_stream()>>>(part, y, r.kept_numel, chunks, scale);
  return launched();
}

bool gather(int elem_size, const void* data, const void* idx, bool idx64, void* out, int64_t outer, int64_t axis_dim,
            int64_t n_idx, int64_t inner) {
  // Slices of whole 16-byte vectors (an embedding's rows): moved as uint4, a quarter of the index arithmetic.
  const int64_t bytes = elem_size * inner;
  if (bytes % 16 == 0 && reinterpret_cast<uintptr_t>(data) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    return run_gather<uint4>(data, idx, idx64, out, outer, axis_dim, n_idx, bytes / 16);
  }
  switch (elem_size) {
    case 1: return run_gather<uint8_t>(data, idx, idx64, out, outer, axis_dim, n_idx, inner);
    case 2: return run_gather<uint16_t>(data, idx, idx64, out, outer, axis_dim, n_idx, inner);
    case 4: return run_gather<uint32_t>(data, idx, idx64, out, outer, axis_dim, n_idx, inner);
    case 8: return run_gather<uint64_t>(data, idx, idx64, out, outer, axis_dim, n_idx, inner);
    default: return false;
  }
}

bool gather_grad_f32(const float* grad, const void* idx, bool idx64, float* dx, int64_t outer, int64_t axis_dim,
                     int64_t n_idx, int64_t inner, int64_t skip) {
  if (cudaMemsetAsync(dx, 0, sizeof(float) * outer * axis_dim * inner, launch_stream()) != cudaSuccess) return false;
  return gather_grad_add_f32(grad, idx, idx64, dx, outer, axis_dim, n_idx, inner, skip);
}

bool gather_grad_add_f32(const float* grad, const void* idx, bool idx64, float* dx, int64_t outer, int64_t axis_dim,
                         int64_t n_idx, int64_t inner, int64_t skip) {
  const int64_t total = outer * n_idx * inner;
  if (total == 0) return true;
  if (idx64) {
    gather_grad_kernel<int64_t><<<grid_for(total), kThreads, 0, launch_stream()>>>(
        grad, static_cast<const int64_t*>(idx), dx, axis_dim, n_idx, inner, total, skip);
  } else {
    gather_grad_kernel<int32_t><<<grid_for(total), kThreads, 0, launch_stream()>>>(
        grad, static_cast<const int32_t*>(idx), dx, axis_dim, n_idx, inner, total, skip);
  }
  return launched();
}

}  // namespace gv::cuda
