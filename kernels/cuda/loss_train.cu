// SoftmaxCrossEntropyLoss forward and backward (one block per position, no [n, c] temporary besides the outputs),
// gradient accumulation, the global gradient norm and AdamW.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace gv::cuda {
namespace {

using detail::block_max;
using detail::block_sum;
using detail::grid_for;
using detail::kThreads;
using detail::launched;

constexpr int kLossThreads = 512;

template <typename L>
__device__ __forceinline__ int64_t label_of(const L* labels, int64_t p, int64_t c, bool has_ignore, int64_t ignore) {
  const int64_t y = static_cast<int64_t>(labels[p]);
  if (has_ignore && y == ignore) return -1;
  if (y < 0 || y >= c) return -1;
  return y;
}

// Max and log(sum(exp(x - max))) of the c scores of one position (stride d); every thread gets them.
__device__ void log_sum_exp(const float* x, int64_t c, int64_t d, float* shf, double* shd, float& mx, double& lse) {
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) m = fmaxf(m, x[j * d]);
  m = block_max(m, shf);
  if (isinf(m)) m = 0.0f;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) s += expf(x[j * d] - m);
  s = block_sum(s, shd);
  mx = m;
  lse = ::log(s);
}

template <typename L>
__global__ void sce_forward(const float* scores, const L* labels, const float* weights, int64_t c, int64_t d,
                            bool has_ignore, int64_t ignore, double* pos_loss, double* pos_weight, float* loss_none,
                            float* log_prob) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const int64_t p = blockIdx.x;
  const int64_t base = (p / d) * c * d + p % d;
  const float* x = scores + base;
  float mx;
  double lse;
  log_sum_exp(x, c, d, shf, shd, mx, lse);
  if (log_prob) {
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      log_prob[base + j * d] = static_cast<float>(x[j * d] - mx - lse);
    }
  }
  if (threadIdx.x == 0) {
    const int64_t y = label_of(labels, p, c, has_ignore, ignore);
    const double w = y < 0 ? 0.0 : (weights ? static_cast<double>(weights[y]) : 1.0);
    const double l = y < 0 ? 0.0 : -w * (x[y * d] - mx - lse);
    if (loss_none) {
      loss_none[p] = static_cast<float>(l);
    } else {
      pos_loss[p] = l;
      pos_weight[p] = w;
    }
  }
}

__global__ void sce_reduce(const double* pos_loss, const double* pos_weight, int64_t positions, bool mean,
                           float* out) {
  __shared__ double sh[32];
  double s = 0.0, t = 0.0;
  for (int64_t p = threadIdx.x; p < positions; p += blockDim.x) {
    s += pos_loss[p];
    t += pos_weight[p];
  }
  s = block_sum(s, sh);
  t = block_sum(t, sh);
  if (threadIdx.x == 0) *out = static_cast<float>(mean ? (t > 0.0 ? s / t : 0.0) : s);
}

template <typename L>
__global__ void weight_total(const L* labels, const float* weights, int64_t positions, int64_t c, bool has_ignore,
                             int64_t ignore, double* total) {
  __shared__ double sh[32];
  double t = 0.0;
  for (int64_t p = threadIdx.x; p < positions; p += blockDim.x) {
    const int64_t y = label_of(labels, p, c, has_ignore, ignore);
    if (y >= 0) t += weights ? static_cast<double>(weights[y]) : 1.0;
  }
  t = block_sum(t, sh);
  if (threadIdx.x == 0) *total = t;
}

template <typename L>
__global__ void sce_backward(const float* dloss, const float* scores, const L* labels, const float* weights,
                             const float* dlog_prob, int64_t c, int64_t d, bool has_ignore, int64_t ignore,
                             bool per_position, const double* total, float* dscores) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const int64_t p = blockIdx.x;
  const int64_t base = (p / d) * c * d + p % d;
  const float* x = scores + base;
  float mx;
  double lse;
  log_sum_exp(x, c, d, shf, shd, mx, lse);
  const int64_t y = label_of(labels, p, c, has_ignore, ignore);
  double coef = 0.0;
  if (y >= 0 && dloss) {
    double scale = 1.0;
    if (total) scale = *total > 0.0 ? 1.0 / *total : 0.0;
    coef = static_cast<double>(dloss[per_position ? p : 0]) * scale * (weights ? weights[y] : 1.0f);
  }
  double dlp_sum = 0.0;
  if (dlog_prob) {
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) dlp_sum += dlog_prob[base + j * d];
    dlp_sum = block_sum(dlp_sum, shd);
  }
  const float shift = static_cast<float>(mx + lse);
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const double prob = expf(x[j * d] - shift);
    double g = coef * (prob - (j == y ? 1.0 : 0.0));
    if (dlog_prob) g += dlog_prob[base + j * d] - prob * dlp_sum;
    dscores[base + j * d] = static_cast<float>(g);
  }
}

__global__ void accumulate_kernel(float* acc, const float* g, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc[i] += g[i];
  }
}

__global__ void sum_squares_kernel(const float* x, int64_t n, double weight, double* acc) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    s += static_cast<double>(x[i]) * x[i];
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0 && s != 0.0) atomicAdd(acc, s * weight);
}

__global__ void norm_finish(const double* acc, float scale, float* out) {
  *out = static_cast<float>(::sqrt(*acc) * static_cast<double>(scale));
}

__global__ void adamw_kernel(float* p, float* g, float* m, float* v, int64_t n, const void* lr_ptr, bool lr64,
                             const int64_t* step_ptr, const float* norm_ptr, AdamW a) {
  __shared__ float coef[6];  // decay, step_size, bc2_sqrt, scale, one_minus_b1, one_minus_b2
  if (threadIdx.x == 0) {
    const double lr = lr64 ? *static_cast<const double*>(lr_ptr) : *static_cast<const float*>(lr_ptr);
    const double step = static_cast<double>(*step_ptr);
    double scale = a.grad_scale;
    if (a.max_norm > 0 && norm_ptr) {
      const double c = a.max_norm / (static_cast<double>(*norm_ptr) + 1e-6);
      if (c < 1.0) scale *= c;
    }
    const double bc1 = 1.0 - ::pow(a.beta1, step);
    const double bc2 = 1.0 - ::pow(a.beta2, step);
    coef[0] = static_cast<float>(1.0 - lr * a.weight_decay);
    coef[1] = static_cast<float>(lr / bc1);
    coef[2] = static_cast<float>(::sqrt(bc2));
    coef[3] = static_cast<float>(scale);
    coef[4] = static_cast<float>(1.0 - a.beta1);
    coef[5] = static_cast<float>(1.0 - a.beta2);
  }
  __syncthreads();
  const float decay = coef[0], step_size = coef[1], bc2_sqrt = coef[2], scale = coef[3];
  const float omb1 = coef[4], omb2 = coef[5], b2 = static_cast<float>(a.beta2), eps = static_cast<float>(a.eps);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * scale;
    const float w = p[i] * decay;
    const float mi = m[i] + omb1 * (gi - m[i]);
    const float vi = v[i] * b2 + omb2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    p[i] = w - step_size * (mi / denom);
    if (a.zero_grad) g[i] = 0.0f;
  }
}

}  // namespace

bool softmax_cross_entropy_f32(const float* scores, const void* labels, bool labels64, const float* weights,
                               int64_t n, int64_t c, int64_t d, bool has_ignore, int64_t ignore_index, int reduction,
                               float* loss, float* log_prob) {
  const int64_t positions = n * d;
  if (positions == 0) {
    if (reduction != 0) return cudaMemsetAsync(loss, 0, sizeof(float), 0) == cudaSuccess;
    return true;
  }
  double* ws = nullptr;
  if (reduction != 0) {
    ws = static_cast<double*>(workspace(sizeof(double) * 2 * positions));
    if (!ws) return false;
  }
  float* none = reduction == 0 ? loss : nullptr;
  const unsigned g = static_cast<unsigned>(positions);
  if (labels64) {
    sce_forward<int64_t><<<g, kLossThreads>>>(scores, static_cast<const int64_t*>(labels), weights, c, d, has_ignore,
                                               ignore_index, ws, ws ? ws + positions : nullptr, none, log_prob);
  } else {
    sce_forward<int32_t><<<g, kLossThreads>>>(scores, static_cast<const int32_t*>(labels), weights, c, d, has_ignore,
                                               ignore_index, ws, ws ? ws + positions : nullptr, none, log_prob);
  }
  if (reduction != 0) sce_reduce<<<1, 1024>>>(ws, ws + positions, positions, reduction == 2, loss);
  return launched();
}

bool softmax_cross_entropy_grad_f32(const float* dloss, const float* scores, const void* labels, bool labels64,
                                    const float* weights, const float* dlog_prob, int64_t n, int64_t c, int64_t d,
                                    bool has_ignore, int64_t ignore_index, int reduction, float* dscores) {
  const int64_t positions = n * d;
  if (positions == 0) return true;
  double* total = nullptr;
  if (reduction == 2) {
    total = static_cast<double*>(workspace(sizeof(double)));
    if (!total) return false;
    if (labels64) {
      weight_total<int64_t><<<1, 1024>>>(static_cast<const int64_t*>(labels), weights, positions, c, has_ignore,
                                          ignore_index, total);
    } else {
      weight_total<int32_t><<<1, 1024>>>(static_cast<const int32_t*>(labels), weights, positions, c, has_ignore,
                                          ignore_index, total);
    }
  }
  const unsigned g = static_cast<unsigned>(positions);
  if (labels64) {
    sce_backward<int64_t><<<g, kLossThreads>>>(dloss, scores, static_cast<const int64_t*>(labels), weights, dlog_prob,
                                                c, d, has_ignore, ignore_index, reduction == 0, total, dscores);
  } else {
    sce_backward<int32_t><<<g, kLossThreads>>>(dloss, scores, static_cast<const int32_t*>(labels), weights, dlog_prob,
                                                c, d, has_ignore, ignore_index, reduction == 0, total, dscores);
  }
  return launched();
}

bool accumulate_f32(float* acc, const float* g, int64_t n) {
  if (n == 0) return true;
  accumulate_kernel<<<grid_for(n), kThreads>>>(acc, g, n);
  return launched();
}

double* grad_norm_sum_squares_f32(const float* const* tensors, const int64_t* counts, const float* weights, int num) {
  double* acc = static_cast<double*>(workspace(sizeof(double)));
  if (!acc) return nullptr;
  if (cudaMemsetAsync(acc, 0, sizeof(double), 0) != cudaSuccess) return nullptr;
  for (int i = 0; i < num; ++i) {
    if (counts[i] == 0 || (weights && weights[i] == 0.0f)) continue;
    unsigned g = grid_for(counts[i]);
    if (g > 1024) g = 1024;
    sum_squares_kernel<<<g, kThreads>>>(tensors[i], counts[i], weights ? static_cast<double>(weights[i]) : 1.0, acc);
  }
  return launched() ? acc : nullptr;
}

bool grad_norm_finish_f32(const double* sum_squares, float scale, float* out) {
  norm_finish<<<1, 1>>>(sum_squares, scale, out);
  return launched();
}

bool grad_norm_f32(const float* const* tensors, const int64_t* counts, const float* weights, int num, float scale,
                   float* out) {
  double* acc = grad_norm_sum_squares_f32(tensors, counts, weights, num);
  return acc && grad_norm_finish_f32(acc, scale, out);
}

bool adamw_f32(float* p, float* g, float* m, float* v, int64_t n, const void* lr, bool lr_is_f64,
               const int64_t* step, const float* grad_norm, const AdamW& a) {
  if (n == 0) return true;
  unsigned blocks = grid_for(n);
  if (blocks > 4096) blocks = 4096;
  adamw_kernel<<<blocks, kThreads>>>(p, g, m, v, n, lr, lr_is_f64, step, grad_norm, a);
  return launched();
}

}  // namespace gv::cuda
