// Sum reductions over any axes, Gather and its gradient (embedding backward).
#include <cuda_runtime.h>

#include <cstdint>

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
    out[t] = (i >= 0 && i < axis_dim) ? data[(o * axis_dim + i) * inner + k] : T(0);
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
    gather_kernel<T, int64_t><<<grid_for(total), kThreads>>>(static_cast<const T*>(data),
                                                              static_cast<const int64_t*>(idx), static_cast<T*>(out),
                                                              axis_dim, n_idx, inner, total);
  } else {
    gather_kernel<T, int32_t><<<grid_for(total), kThreads>>>(static_cast<const T*>(data),
                                                              static_cast<const int32_t*>(idx), static_cast<T*>(out),
                                                              axis_dim, n_idx, inner, total);
  }
  return launched();
}

}  // namespace

bool reduce_sum_f32(const float* x, float* y, const Reduce& r, float scale) {
  if (r.kept_numel == 0) return true;
  if (r.red_numel == 0) return cudaMemsetAsync(y, 0, sizeof(float) * r.kept_numel, 0) == cudaSuccess;
  const bool last_reduced = r.red_rank > 0 && r.red_strides[r.red_rank - 1] == 1;
  if (last_reduced || r.kept_numel < 64) {
    reduce_rows<<<static_cast<unsigned>(r.kept_numel), kThreads>>>(x, y, r, scale);
    return launched();
  }
  int64_t chunks = (r.red_numel + 63) / 64;
  if (chunks > 256) chunks = 256;
  const int64_t per = (r.red_numel + chunks - 1) / chunks;
  chunks = (r.red_numel + per - 1) / per;
  float* part = static_cast<float*>(workspace(sizeof(float) * chunks * r.kept_numel));
  if (!part) return false;
  dim3 grid(static_cast<unsigned>((r.kept_numel + kThreads - 1) / kThreads), static_cast<unsigned>(chunks));
  reduce_cols_partial<<<grid, kThreads>>>(x, part, r, per);
  reduce_cols_finish<<<grid_for(r.kept_numel), kThreads>>>(part, y, r.kept_numel, chunks, scale);
  return launched();
}

bool gather(int elem_size, const void* data, const void* idx, bool idx64, void* out, int64_t outer, int64_t axis_dim,
            int64_t n_idx, int64_t inner) {
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
  if (cudaMemsetAsync(dx, 0, sizeof(float) * outer * axis_dim * inner, 0) != cudaSuccess) return false;
  const int64_t total = outer * n_idx * inner;
  if (total == 0) return true;
  if (idx64) {
    gather_grad_kernel<int64_t><<<grid_for(total), kThreads>>>(grad, static_cast<const int64_t*>(idx), dx, axis_dim,
                                                                n_idx, inner, total, skip);
  } else {
    gather_grad_kernel<int32_t><<<grid_for(total), kThreads>>>(grad, static_cast<const int32_t*>(idx), dx, axis_dim,
                                                                n_idx, inner, total, skip);
  }
  return launched();
}

}  // namespace gv::cuda
