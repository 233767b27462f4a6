// LayerNormalization, RMSNormalization and Softmax / LogSoftmax, forward and backward. One block per row; row
// statistics are accumulated in double, as on the CPU. The norms take norm_rows.cu's register-resident kernels where
// the rows fit (norm_rows.h).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grow_buffer.h"
#include "kernels/cuda/norm_rows.h"

namespace gv::cuda {
namespace {

using detail::block_max;
using detail::block_sum;
using detail::grid_for;
using detail::kThreads;
using detail::launched;

constexpr int kRowThreads = 256;

// Mean and 1/sqrt(var + eps) of one row, two passes; every thread gets them.
__device__ void row_moments(const float* xr, int64_t cols, float eps, double* sh, double& mean, double& inv_std) {
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
  s = block_sum(s, sh);
  mean = cols ? s / static_cast<double>(cols) : 0.0;
  double v = 0.0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const double d = xr[j] - mean;
    v += d * d;
  }
  v = block_sum(v, sh);
  v = cols ? v / static_cast<double>(cols) : 0.0;
  inv_std = 1.0 / sqrt(v + static_cast<double>(eps));
}

__global__ void layer_norm_kernel(const float* x, const float* scale, const float* bias, float* y, float* mean,
                                  float* inv_std, int64_t cols, float eps) {
  __shared__ double sh[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * cols;
  float* yr = y + r * cols;
  double m, is;
  row_moments(xr, cols, eps, sh, m, is);
  if (threadIdx.x == 0) {
    if (mean) mean[r] = static_cast<float>(m);
    if (inv_std) inv_std[r] = static_cast<float>(is);
  }
  const float mt = static_cast<float>(m), ist = static_cast<float>(is);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float v = (xr[j] - mt) * ist * scale[j];
    yr[j] = bias ? v + bias[j] : v;
  }
}

// dx per row; also stores the row statistics used (for the column sums).
__global__ void layer_norm_dx_kernel(const float* dy, const float* x, const float* scale, const float* mean,
                                     const float* inv_std, const float* dmean, const float* dinv_std,
                                     const float* addend, float* dx, float* mean_out, float* inv_std_out, int64_t cols,
                                     float eps) {
  __shared__ double sh[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * cols;
  const float* dyr = dy ? dy + r * cols : nullptr;
  float* dxr = dx + r * cols;
  double m, is;
  if (mean && inv_std) {
    m = mean[r];
    is = inv_std[r];
  } else {
    row_moments(xr, cols, eps, sh, m, is);
  }
  if (threadIdx.x == 0) {
    mean_out[r] = static_cast<float>(m);
    inv_std_out[r] = static_cast<float>(is);
  }
  const double n = static_cast<double>(cols);
  double sum_g = 0.0, sum_gx = 0.0;
  if (dyr) {
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const double xh = (xr[j] - m) * is;
      const double g = static_cast<double>(dyr[j]) * scale[j];
      sum_g += g;
      sum_gx += g * xh;
    }
    sum_g = block_sum(sum_g, sh);
    sum_gx = block_sum(sum_gx, sh);
  }
  const double mg = sum_g / n, mgx = sum_gx / n;
  const double shift = dmean ? dmean[r] / n : 0.0;
  const double slope = dinv_std ? -static_cast<double>(dinv_std[r]) * is * is * is / n : 0.0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const double xc = xr[j] - m;
    const double g = dyr ? static_cast<double>(dyr[j]) * scale[j] : 0.0;
    const float d = static_cast<float>(is * (g - mg - xc * is * mgx) + shift + slope * xc);
    dxr[j] = addend ? d + addend[r * cols + j] : d;
  }
}

// Column partial sums over a chunk of rows: part[chunk, 0, col] = sum dy * xhat, part[chunk, 1, col] = sum dy.
// xhat uses mean (null: 0, the RMS case) and inv_std per row. Block (32, 8).
__global__ void norm_column_partials(const float* dy, const float* x, const float* mean, const float* inv_std,
                                     int64_t rows, int64_t cols, int64_t rows_per_chunk, float* part, bool want_bias) {
  __shared__ float s1[8][33], s2[8][33];
  const int64_t j = blockIdx.x * 32 + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  float a = 0.0f, b = 0.0f;
  if (j < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const float g = dy[r * cols + j];
      const float xh = (x[r * cols + j] - (mean ? mean[r] : 0.0f)) * inv_std[r];
      a += g * xh;
      b += g;
    }
  }
  s1[threadIdx.y][threadIdx.x] = a;
  s2[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    for (int k = 1; k < 8; ++k) {
      a += s1[k][threadIdx.x];
      b += s2[k][threadIdx.x];
    }
    part[(chunk * 2) * cols + j] = a;
    if (want_bias) part[(chunk * 2 + 1) * cols + j] = b;
  }
}

__global__ void norm_column_finish(const float* part, int64_t chunks, int64_t cols, float* dscale, float* dbias) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= cols) return;
  double a = 0.0, b = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    a += part[(c * 2) * cols + j];
    if (dbias) b += part[(c * 2 + 1) * cols + j];
  }
  if (dscale) dscale[j] = static_cast<float>(a);
  if (dbias) dbias[j] = static_cast<float>(b);
}

bool column_sums(const float* dy, const float* x, const float* mean, const float* inv_std, int64_t rows, int64_t cols,
                 float* dscale, float* dbias, float* part_ws) {
  if (!dscale && !dbias) return true;
  int64_t chunks = (rows + 63) / 64;
  if (chunks > 256) chunks = 256;
  if (chunks < 1) chunks = 1;
  const int64_t per = (rows + chunks - 1) / chunks;
  dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>(chunks));
  norm_column_partials<<<grid, dim3(32, 8), 0, launch_stream()>>>(dy, x, mean, inv_std, rows, cols, per, part_ws,
                                                                  dbias != nullptr);
  norm_column_finish<<<grid_for(cols), kThreads, 0, launch_stream()>>>(part_ws, chunks, cols, dscale, dbias);
  return launched();
}

size_t column_ws_floats(int64_t rows, int64_t cols) {
  int64_t chunks = (rows + 63) / 64;
  if (chunks > 256) chunks = 256;
  if (chunks < 1) chunks = 1;
  return static_cast<size_t>(chunks * 2 * cols);
}

__device__ double row_inv_rms(const float* xr, int64_t cols, float eps, double* sh) {
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(xr[j]) * xr[j];
  s = block_sum(s, sh);
  return 1.0 / sqrt((cols ? s / static_cast<double>(cols) : 0.0) + static_cast<double>(eps));
}

__global__ void rms_norm_kernel(const float* x, const float* scale, float* y, int64_t cols, float eps) {
  __shared__ double sh[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * cols;
  const float is = static_cast<float>(row_inv_rms(xr, cols, eps, sh));
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) y[r * cols + j] = xr[j] * is * scale[j];
}

__global__ void rms_norm_dx_kernel(const float* dy, const float* x, const float* scale, float* dx, float* inv_out,
                                   int64_t cols, float eps) {
  __shared__ double sh[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * cols;
  const float* dyr = dy + r * cols;
  const double is = row_inv_rms(xr, cols, eps, sh);
  if (threadIdx.x == 0) inv_out[r] = static_cast<float>(is);
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(dyr[j]) * scale[j] * (xr[j] * is);
  s = block_sum(s, sh);
  const double mgx = s / static_cast<double>(cols);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const double xh = xr[j] * is;
    dx[r * cols + j] = static_cast<float>(is * (static_cast<double>(dyr[j]) * scale[j] - xh * mgx));
  }
}

// Softmax over contiguous rows (inner == 1).
__global__ void softmax_rows(const float* x, float* y, int64_t n, bool log) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, xr[j]);
  mx = block_max(mx, shf);
  if (mx == -INFINITY) mx = 0.0f;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += expf(xr[j] - mx);
  s = block_sum(s, shd);
  if (log) {
    const float shift = mx + static_cast<float>(::log(s));
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] - shift;
  } else {
    const float inv = static_cast<float>(1.0 / s);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yr[j] = expf(xr[j] - mx) * inv;
  }
}

// Softmax along a strided axis: one thread per (outer, inner) column.
__global__ void softmax_strided(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, bool log) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= outer * inner) return;
  const int64_t o = t / inner, k = t % inner;
  const float* xc = x + o * n * inner + k;
  float* yc = y + o * n * inner + k;
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = fmaxf(mx, xc[j * inner]);
  if (mx == -INFINITY) mx = 0.0f;
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += expf(xc[j * inner] - mx);
  for (int64_t j = 0; j < n; ++j) {
    yc[j * inner] = log ? xc[j * inner] - mx - static_cast<float>(::log(s))
                        : static_cast<float>(::exp(static_cast<double>(xc[j * inner] - mx)) / s);
  }
}

__global__ void softmax_grad_rows(const float* dy, const float* y, float* dx, int64_t n, bool log) {
  __shared__ double sh[32];
  const int64_t base = blockIdx.x * n;
  double dot = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dot += log ? dy[base + j] : dy[base + j] * y[base + j];
  dot = block_sum(dot, sh);
  const float s = static_cast<float>(dot);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const int64_t i = base + j;
    dx[i] = log ? dy[i] - expf(y[i]) * s : y[i] * (dy[i] - s);
  }
}

__global__ void softmax_grad_strided(const float* dy, const float* y, float* dx, int64_t outer, int64_t n,
                                     int64_t inner, bool log) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= outer * inner) return;
  const int64_t base = (t / inner) * n * inner + t % inner;
  double dot = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = base + j * inner;
    dot += log ? dy[i] : dy[i] * y[i];
  }
  const float s = static_cast<float>(dot);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = base + j * inner;
    dx[i] = log ? dy[i] - expf(y[i]) * s : y[i] * (dy[i] - s);
  }
}

unsigned rows_grid(int64_t rows) { return static_cast<unsigned>(rows); }

}  // namespace

bool layer_norm_f32(const float* x, const float* scale, const float* bias, float* y, float* mean, float* inv_std,
                    int64_t rows, int64_t cols, float eps) {
  if (rows == 0) return true;
  if (norm_rows_eligible(rows, cols, {x, scale, bias, y})) {
    return norm_rows_forward(true, x, scale, bias, y, false, mean, inv_std, rows, cols, eps);
  }
  layer_norm_kernel<<<rows_grid(rows), kRowThreads, 0, launch_stream()>>>(x, scale, bias, y, mean, inv_std, cols, eps);
  return launched();
}

bool layer_norm_to_bf16(const float* x, const float* scale, const float* bias, uint16_t* y, float* mean,
                        float* inv_std, int64_t rows, int64_t cols, float eps) {
  if (rows == 0) return true;
  if (norm_rows_eligible(rows, cols, {x, scale, bias, y})) {
    return norm_rows_forward(true, x, scale, bias, y, true, mean, inv_std, rows, cols, eps);
  }
  static GrowBuffer wide;
  float* w = wide.get_as<float>(static_cast<size_t>(rows * cols));
  return w && layer_norm_f32(x, scale, bias, w, mean, inv_std, rows, cols, eps) && to_bf16(w, y, rows * cols);
}

namespace {
__global__ void skip_add_kernel(const void* x, bool x_bf16, const float* skip, float* sum, int64_t n) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float a = x_bf16 ? detail::bf16_float(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
    sum[i] = a + skip[i];
  }
}
}  // namespace

bool skip_layer_norm(const void* x, bool x_bf16, const float* skip, float* sum, const float* scale,
                     const float* bias, void* y, bool y_bf16, float* mean, float* inv_std, int64_t rows, int64_t cols,
                     float eps) {
  if (rows == 0) return true;
  if (norm_rows_eligible(rows, cols, {x, skip, sum, scale, bias, y})) {
    return norm_rows_skip_forward(true, x, x_bf16, skip, sum, scale, bias, y, y_bf16, mean, inv_std, rows, cols, eps);
  }
  skip_add_kernel<<<grid_for(rows * cols), kThreads, 0, launch_stream()>>>(x, x_bf16, skip, sum, rows * cols);
  if (!launched()) return false;
  return y_bf16 ? layer_norm_to_bf16(sum, scale, bias, static_cast<uint16_t*>(y), mean, inv_std, rows, cols, eps)
                : layer_norm_f32(sum, scale, bias, static_cast<float*>(y), mean, inv_std, rows, cols, eps);
}

bool layer_norm_grad_f32(const float* dy, const float* x, const float* scale, const float* mean, const float* inv_std,
                         const float* dmean, const float* dinv_std, float* dx, float* dscale, float* dbias,
                         int64_t rows, int64_t cols, float eps, const float* addend, uint16_t* dx_bf16,
                         float* dx_sums) {
  if (rows == 0 || cols == 0) {
    if (dscale) cudaMemsetAsync(dscale, 0, sizeof(float) * cols, launch_stream());
    if (dbias) cudaMemsetAsync(dbias, 0, sizeof(float) * cols, launch_stream());
    if (dx_sums) cudaMemsetAsync(dx_sums, 0, sizeof(float) * cols, launch_stream());
    return launched();
  }
  if (dy && !dmean && !dinv_std && norm_rows_eligible(rows, cols, {dy, x, scale, dx, addend, dx_bf16})) {
    return norm_rows_backward(true, dy, x, scale, mean, inv_std, dx, dscale, dbias, rows, cols, eps, addend,
                              dx_bf16, dx_sums);
  }
  if (dx_bf16 || dx_sums) {
    // The general path, then the copy and its sums as the separate Cast and BiasGrad would make them.
    static GrowBuffer copy;
    uint16_t* c = dx_bf16 ? dx_bf16 : copy.get_as<uint16_t>(static_cast<size_t>(rows * cols));
    return c &&
           layer_norm_grad_f32(dy, x, scale, mean, inv_std, dmean, dinv_std, dx, dscale, dbias, rows, cols, eps,
                               addend) &&
           to_bf16(dx, c, rows * cols) && (!dx_sums || column_sums_bf16(c, dx_sums, rows, cols, 1));
  }
  float* ws = static_cast<float*>(workspace(sizeof(float) * (2 * rows + column_ws_floats(rows, cols))));
  if (!ws) return false;
  float* m = ws;
  float* is = ws + rows;
  layer_norm_dx_kernel<<<rows_grid(rows), kRowThreads, 0, launch_stream()>>>(dy, x, scale, mean, inv_std, dmean,
                                                                             dinv_std, addend, dx, m, is, cols, eps);
  if (!dy) {
    if (dscale) cudaMemsetAsync(dscale, 0, sizeof(float) * cols, launch_stream());
    if (dbias) cudaMemsetAsync(dbias, 0, sizeof(float) * cols, launch_stream());
    return launched();
  }
  return launched() && column_sums(dy, x, m, is, rows, cols, dscale, dbias, ws + 2 * rows);
}

bool rms_norm_f32(const float* x, const float* scale, float* y, int64_t rows, int64_t cols, float eps) {
  if (rows == 0) return true;
  if (norm_rows_eligible(rows, cols, {x, scale, y})) {
    return norm_rows_forward(false, x, scale, nullptr, y, false, nullptr, nullptr, rows, cols, eps);
  }
  rms_norm_kernel<<<rows_grid(rows), kRowThreads, 0, launch_stream()>>>(x, scale, y, cols, eps);
  return launched();
}

bool rms_norm_grad_f32(const float* dy, const float* x, const float* scale, float* dx, float* dscale, int64_t rows,
                       int64_t cols, float eps) {
  if (rows == 0 || cols == 0) {
    if (dscale) cudaMemsetAsync(dscale, 0, sizeof(float) * cols, launch_stream());
    return launched();
  }
  if (dy && norm_rows_eligible(rows, cols, {dy, x, scale, dx})) {
    return norm_rows_backward(false, dy, x, scale, nullptr, nullptr, dx, dscale, nullptr, rows, cols, eps);
  }
  float* ws = static_cast<float*>(workspace(sizeof(float) * (rows + column_ws_floats(rows, cols))));
  if (!ws) return false;
  rms_norm_dx_kernel<<<rows_grid(rows), kRowThreads, 0, launch_stream()>>>(dy, x, scale, dx, ws, cols, eps);
  return launched() && column_sums(dy, x, nullptr, ws, rows, cols, dscale, nullptr, ws + rows);
}

bool softmax_f32(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, bool log) {
  if (outer * n * inner == 0) return true;
  if (inner == 1) {
    softmax_rows<<<static_cast<unsigned>(outer), n >= 1024 ? 512 : 128, 0, launch_stream()>>>(x, y, n, log);
  } else {
    softmax_strided<<<grid_for(outer * inner), kThreads, 0, launch_stream()>>>(x, y, outer, n, inner, log);
  }
  return launched();
}

bool softmax_grad_f32(const float* dy, const float* y, float* dx, int64_t outer, int64_t n, int64_t inner, bool log) {
  if (outer * n * inner == 0) return true;
  if (inner == 1) {
    softmax_grad_rows<<<static_cast<unsigned>(outer), n >= 1024 ? 512 : 128, 0, launch_stream()>>>(dy, y, dx, n, log);
  } else {
    softmax_grad_strided<<<grid_for(outer * inner), kThreads, 0, launch_stream()>>>(dy, y, dx, outer, n, inner, log);
  }
  return launched();
}

}  // namespace gv::cuda
