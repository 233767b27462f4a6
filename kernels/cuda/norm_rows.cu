// LayerNormalization and RMSNormalization with the row held in registers: the fast path of norm_softmax.cu's
// launchers for rows of up to 8192 float32 columns, cols % 4 == 0, 16-byte aligned tensors (GPT-2's 768, gpt-1.5b's
// 1600, Llama's 4096). Same formulas and statistics in double as the one-block-per-row kernels, fewer passes:
//   forward   x read once (the row stays in registers for the moments and the output), y written once;
//   backward  x and dy read once, dx written once, and the scale/bias gradients accumulated in registers across the
//             rows a block visits: one partial row per block, summed in double in block order by a second kernel
//             (deterministic). The one-block-per-row kernels read x four times, dy twice, then x and dy again for the
//             column sums.
// 256 threads per block; thread t owns float4 columns t, t + 256, ... (V of them).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/norm_rows.h"

namespace gv::cuda {
namespace {

using detail::block_sum;
using detail::launched;

constexpr int kThreadsPerRow = 256;
constexpr int kMaxV = 8;  // 8 * 4 * 256 = 8192 columns

__device__ __forceinline__ float4 f4(float a) { return make_float4(a, a, a, a); }

// Loads row r's float4 columns owned by this thread (zeros past c4).
template <int V>
__device__ __forceinline__ void load_row(float4 (&v)[V], const float* base, int64_t r, int c4) {
  const float4* p = reinterpret_cast<const float4*>(base) + r * c4;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int i = threadIdx.x + k * kThreadsPerRow;
    v[k] = i < c4 ? p[i] : f4(0.0f);
  }
}

// Mean (0 for RMS) and 1/sqrt(var + eps) (RMS: of mean(x^2) + eps) of a row in registers, in double; every thread
// gets them.
template <int V, bool kCenter>
__device__ __forceinline__ void moments(const float4 (&v)[V], int c4, int cols, float eps, double* sh, double& mean,
                                        double& inv_std) {
  mean = 0.0;
  if constexpr (kCenter) {
    double s = 0.0;
#pragma unroll
    for (int k = 0; k < V; ++k) s += static_cast<double>(v[k].x) + v[k].y + v[k].z + v[k].w;
    mean = block_sum(s, sh) / cols;
  }
  double q = 0.0;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (threadIdx.x + k * kThreadsPerRow >= c4) continue;
    const double a = v[k].x - mean, b = v[k].y - mean, c = v[k].z - mean, d = v[k].w - mean;
    q += a * a + b * b + c * c + d * d;
  }
  inv_std = 1.0 / sqrt(block_sum(q, sh) / cols + static_cast<double>(eps));
}

template <int V, bool kCenter>
__global__ void __launch_bounds__(kThreadsPerRow) norm_forward_rows(const float* __restrict__ x,
                                                                    const float* __restrict__ scale,
                                                                    const float* __restrict__ bias, float* y,
                                                                    float* mean_out, float* inv_std_out, int64_t rows,
                                                                    int cols, float eps) {
  __shared__ double sh[32];
  const int c4 = cols / 4;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float4 v[V];
    load_row<V>(v, x, r, c4);
    double m, is;
    moments<V, kCenter>(v, c4, cols, eps, sh, m, is);
    if (threadIdx.x == 0) {
      if (mean_out) mean_out[r] = static_cast<float>(m);
      if (inv_std_out) inv_std_out[r] = static_cast<float>(is);
    }
    const float mf = static_cast<float>(m), isf = static_cast<float>(is);
    float4* out = reinterpret_cast<float4*>(y) + r * c4;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + k * kThreadsPerRow;
      if (i >= c4) continue;
      const float4 s = reinterpret_cast<const float4*>(scale)[i];
      const float4 b = bias ? reinterpret_cast<const float4*>(bias)[i] : f4(0.0f);
      out[i] = make_float4((v[k].x - mf) * isf * s.x + b.x, (v[k].y - mf) * isf * s.y + b.y,
                           (v[k].z - mf) * isf * s.z + b.z, (v[k].w - mf) * isf * s.w + b.w);
    }
  }
}

// dx for every row the block visits (rows blockIdx.x, + gridDim.x, ...), and the block's partial column sums
// part[blockIdx.x][0][cols] = sum dy * xhat, part[blockIdx.x][1][cols] = sum dy.
template <int V, bool kCenter>
__global__ void __launch_bounds__(kThreadsPerRow) norm_backward_rows(
    const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ scale,
    const float* __restrict__ mean_in, const float* __restrict__ inv_std_in, float* dx, float* part, int64_t rows,
    int cols, float eps) {
  __shared__ double sh[32];
  const int c4 = cols / 4;
  float4 acc_g[V], acc_b[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc_g[k] = acc_b[k] = f4(0.0f);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float4 xv[V], gv[V];
    load_row<V>(xv, x, r, c4);
    load_row<V>(gv, dy, r, c4);
    double m, is;
    if (inv_std_in && (mean_in || !kCenter)) {
      m = kCenter ? mean_in[r] : 0.0;
      is = inv_std_in[r];
    } else {
      moments<V, kCenter>(xv, c4, cols, eps, sh, m, is);
    }
    const float mf = static_cast<float>(m), isf = static_cast<float>(is);
    double sum_g = 0.0, sum_gx = 0.0;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + k * kThreadsPerRow;
      if (i >= c4) continue;
      const float4 s = reinterpret_cast<const float4*>(scale)[i];
      float4& xh = xv[k];  // becomes xhat
      xh = make_float4((xh.x - mf) * isf, (xh.y - mf) * isf, (xh.z - mf) * isf, (xh.w - mf) * isf);
      const float4 d = gv[k];
      acc_g[k].x += d.x * xh.x, acc_g[k].y += d.y * xh.y, acc_g[k].z += d.z * xh.z, acc_g[k].w += d.w * xh.w;
      acc_b[k].x += d.x, acc_b[k].y += d.y, acc_b[k].z += d.z, acc_b[k].w += d.w;
      const float4 g = make_float4(d.x * s.x, d.y * s.y, d.z * s.z, d.w * s.w);  // becomes gv
      gv[k] = g;
      sum_g += static_cast<double>(g.x) + g.y + g.z + g.w;
      sum_gx += static_cast<double>(g.x) * xh.x + static_cast<double>(g.y) * xh.y +
                static_cast<double>(g.z) * xh.z + static_cast<double>(g.w) * xh.w;
    }
    const float mg = kCenter ? static_cast<float>(block_sum(sum_g, sh) / cols) : 0.0f;
    const float mgx = static_cast<float>(block_sum(sum_gx, sh) / cols);
    float4* out = reinterpret_cast<float4*>(dx) + r * c4;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int i = threadIdx.x + k * kThreadsPerRow;
      if (i >= c4) continue;
      const float4 g = gv[k], xh = xv[k];
      out[i] = make_float4(isf * (g.x - mg - xh.x * mgx), isf * (g.y - mg - xh.y * mgx),
                           isf * (g.z - mg - xh.z * mgx), isf * (g.w - mg - xh.w * mgx));
    }
  }
  float4* pg = reinterpret_cast<float4*>(part + static_cast<int64_t>(blockIdx.x) * 2 * cols);
  float4* pb = reinterpret_cast<float4*>(part + (static_cast<int64_t>(blockIdx.x) * 2 + 1) * cols);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int i = threadIdx.x + k * kThreadsPerRow;
    if (i >= c4) continue;
    pg[i] = acc_g[k];
    pb[i] = acc_b[k];
  }
}

__global__ void sum_partials(const float* part, int blocks, int cols, float* dscale, float* dbias) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  double a = 0.0, b = 0.0;
  for (int c = 0; c < blocks; ++c) {
    a += part[(static_cast<int64_t>(c) * 2) * cols + j];
    b += part[(static_cast<int64_t>(c) * 2 + 1) * cols + j];
  }
  if (dscale) dscale[j] = static_cast<float>(a);
  if (dbias) dbias[j] = static_cast<float>(b);
}

int vectors_per_thread(int64_t cols) {
  const int64_t v = (cols / 4 + kThreadsPerRow - 1) / kThreadsPerRow;
  return v <= 1 ? 1 : v <= 2 ? 2 : v <= 4 ? 4 : 8;
}

template <bool kCenter>
bool forward(const float* x, const float* scale, const float* bias, float* y, float* mean, float* inv_std,
             int64_t rows, int cols, float eps) {
  const unsigned grid = static_cast<unsigned>(rows < 65535 * 16 ? rows : 65535 * 16);
  switch (vectors_per_thread(cols)) {
    case 1: norm_forward_rows<1, kCenter><<<grid, kThreadsPerRow>>>(x, scale, bias, y, mean, inv_std, rows, cols, eps); break;
    case 2: norm_forward_rows<2, kCenter><<<grid, kThreadsPerRow>>>(x, scale, bias, y, mean, inv_std, rows, cols, eps); break;
    case 4: norm_forward_rows<4, kCenter><<<grid, kThreadsPerRow>>>(x, scale, bias, y, mean, inv_std, rows, cols, eps); break;
    default: norm_forward_rows<8, kCenter><<<grid, kThreadsPerRow>>>(x, scale, bias, y, mean, inv_std, rows, cols, eps); break;
  }
  return launched();
}

template <bool kCenter>
bool backward(const float* dy, const float* x, const float* scale, const float* mean, const float* inv_std, float* dx,
              float* dscale, float* dbias, int64_t rows, int cols, float eps) {
  // Two blocks per SM: one partial row per block for sum_partials to add up. Measured at gpt-1.5b's [4096, 1600]
  // (H200): 0.0705 ms per call; eight blocks per SM took 0.123 ms (sum_partials, 7 blocks over 1056 partial rows,
  // became the bottleneck).
  const int64_t want = int64_t{2} * detail::num_sms();
  const int blocks = static_cast<int>(rows < want ? rows : want);
  float* part = static_cast<float*>(workspace(sizeof(float) * 2 * static_cast<size_t>(blocks) * cols));
  if (!part) return false;
  switch (vectors_per_thread(cols)) {
    case 1: norm_backward_rows<1, kCenter><<<blocks, kThreadsPerRow>>>(dy, x, scale, mean, inv_std, dx, part, rows, cols, eps); break;
    case 2: norm_backward_rows<2, kCenter><<<blocks, kThreadsPerRow>>>(dy, x, scale, mean, inv_std, dx, part, rows, cols, eps); break;
    case 4: norm_backward_rows<4, kCenter><<<blocks, kThreadsPerRow>>>(dy, x, scale, mean, inv_std, dx, part, rows, cols, eps); break;
    default: norm_backward_rows<8, kCenter><<<blocks, kThreadsPerRow>>>(dy, x, scale, mean, inv_std, dx, part, rows, cols, eps); break;
  }
  if (!launched()) return false;
  if (dscale || dbias) sum_partials<<<(cols + 255) / 256, 256>>>(part, blocks, cols, dscale, dbias);
  return launched();
}

}  // namespace

bool norm_rows_eligible(int64_t rows, int64_t cols, std::initializer_list<const void*> tensors) {
  static const bool off = [] {
    const char* e = std::getenv("GALVATRON_CUDA_NORM_ROWS");
    return e && e[0] == '0';
  }();
  if (off || rows <= 0 || cols <= 0 || cols % 4 != 0 || cols > int64_t{kMaxV} * 4 * kThreadsPerRow) return false;
  for (const void* p : tensors)
    if (p && !detail::aligned16(p)) return false;
  return true;
}

bool norm_rows_forward(bool center, const float* x, const float* scale, const float* bias, float* y, float* mean,
                       float* inv_std, int64_t rows, int64_t cols, float eps) {
  const int c = static_cast<int>(cols);
  return center ? forward<true>(x, scale, bias, y, mean, inv_std, rows, c, eps)
                : forward<false>(x, scale, nullptr, y, nullptr, inv_std, rows, c, eps);
}

bool norm_rows_backward(bool center, const float* dy, const float* x, const float* scale, const float* mean,
                        const float* inv_std, float* dx, float* dscale, float* dbias, int64_t rows, int64_t cols,
                        float eps) {
  const int c = static_cast<int>(cols);
  return center ? backward<true>(dy, x, scale, mean, inv_std, dx, dscale, dbias, rows, c, eps)
                : backward<false>(dy, x, scale, nullptr, inv_std, dx, dscale, nullptr, rows, c, eps);
}

}  // namespace gv::cuda
