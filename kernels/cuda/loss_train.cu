// SoftmaxCrossEntropyLoss forward and backward (one block per position, no [n, c] temporary besides the outputs),
// gradient accumulation, the global gradient norm and AdamW.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/split_float32.h"

namespace gv::cuda {
namespace {

using detail::bf16_bits;
using detail::bf16_float;
using detail::block_max;
using detail::block_sum;
using detail::grid_for;
using detail::kThreads;
using detail::launched;

constexpr int kLossThreads = 512;

// GALVATRON_CUDA_SCE_ROWS=0: the per-position kernels for contiguous rows too (A/B measurements).
bool fast_rows() {
  static const bool on = [] {
    const char* e = std::getenv("GALVATRON_CUDA_SCE_ROWS");
    return !(e && e[0] == '0' && e[1] == '\0');
  }();
  return on;
}

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

// ---- contiguous rows (d == 1): one read per row for the statistics ----

constexpr int kRowBlock = 1024;

// Online max and sum of exp over this thread's share of a row: s = sum exp(x - m) with m the largest value seen;
// a larger value rescales s. m == -inf (nothing finite seen yet) adds exp(x - 0), as the two-pass form does.
__device__ __forceinline__ void online_quad(float& m, double& s, float a, float b, float c, float d) {
  const float mq = fmaxf(fmaxf(a, b), fmaxf(c, d));
  if (mq > m) {
    s *= static_cast<double>(expf(m - mq));
    m = mq;
  }
  const float r = m == -INFINITY ? 0.0f : m;
  s += expf(a - r);
  s += expf(b - r);
  s += expf(c - r);
  s += expf(d - r);
}
__device__ __forceinline__ void online_one(float& m, double& s, float a) {
  if (a > m) {
    s *= static_cast<double>(expf(m - a));
    m = a;
  }
  s += expf(a - (m == -INFINITY ? 0.0f : m));
}

// Elements before the first 16-byte boundary of a row (rows of odd width start anywhere).
__device__ __forceinline__ int64_t row_head(const float* x, int64_t c) {
  const int64_t h = (4 - static_cast<int64_t>((reinterpret_cast<uintptr_t>(x) / 4) % 4)) % 4;
  return h < c ? h : c;
}

// Max and log(sum(exp(x - max))) of one contiguous row in one read (float4 loads); rows whose max is not finite
// take the two-pass log_sum_exp (its exact semantics for inf and NaN rows). Every thread gets them.
__device__ void row_log_sum_exp(const float* x, int64_t c, float* shf, double* shd, float& mx, double& lse) {
  float m = -INFINITY;
  double s = 0.0;
  const int64_t head = row_head(x, c), quads = (c - head) / 4;
  for (int64_t j = threadIdx.x; j < head; j += blockDim.x) online_one(m, s, x[j]);
  const float4* x4 = reinterpret_cast<const float4*>(x + head);
  int64_t q = threadIdx.x;
  for (; q + blockDim.x < quads; q += 2 * blockDim.x) {  // two loads in flight
    const float4 u = x4[q], v = x4[q + blockDim.x];
    online_quad(m, s, u.x, u.y, u.z, u.w);
    online_quad(m, s, v.x, v.y, v.z, v.w);
  }
  if (q < quads) {
    const float4 u = x4[q];
    online_quad(m, s, u.x, u.y, u.z, u.w);
  }
  for (int64_t j = head + quads * 4 + threadIdx.x; j < c; j += blockDim.x) online_one(m, s, x[j]);
  const float big = block_max(m, shf);
  if (!isfinite(big)) {
    log_sum_exp(x, c, 1, shf, shd, mx, lse);
    return;
  }
  s = block_sum(s * static_cast<double>(expf(m - big)), shd);
  mx = big;
  lse = ::log(s);
}

// sce_forward for d == 1: blocks loop over rows (grid of one block per SM).
template <typename L>
__global__ void __launch_bounds__(kRowBlock) sce_forward_rows(const float* scores, const L* labels,
                                                              const float* weights, int64_t n, int64_t c,
                                                              bool has_ignore, int64_t ignore, double* pos_loss,
                                                              double* pos_weight, float* loss_none, float* log_prob) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  for (int64_t p = blockIdx.x; p < n; p += gridDim.x) {
    const float* x = scores + p * c;
    float mx;
    double lse;
    row_log_sum_exp(x, c, shf, shd, mx, lse);
    if (log_prob) {
      for (int64_t j = threadIdx.x; j < c; j += blockDim.x) log_prob[p * c + j] = static_cast<float>(x[j] - mx - lse);
    }
    if (threadIdx.x == 0) {
      const int64_t y = label_of(labels, p, c, has_ignore, ignore);
      const double w = y < 0 ? 0.0 : (weights ? static_cast<double>(weights[y]) : 1.0);
      const double l = y < 0 ? 0.0 : -w * (x[y] - mx - lse);
      if (loss_none) {
        loss_none[p] = static_cast<float>(l);
      } else {
        pos_loss[p] = l;
        pos_weight[p] = w;
      }
    }
  }
}

// sce_backward for d == 1: the statistics in one read, then one read and one write of the row (float4 where the
// score and gradient rows share their alignment). Blocks loop over rows, one block per SM: the ~132 rows in flight
// (~27 MB for GPT-2's 50,257 classes) stay in L2 between the two reads.
template <typename L>
__global__ void __launch_bounds__(kRowBlock) sce_backward_rows(const float* dloss, const float* scores,
                                                               const L* labels, const float* weights,
                                                               const float* dlog_prob, int64_t n, int64_t c,
                                                               bool has_ignore, int64_t ignore, bool per_position,
                                                               const double* total, float* dscores) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  for (int64_t p = blockIdx.x; p < n; p += gridDim.x) {
    const float* x = scores + p * c;
    float* dx = dscores + p * c;
    const float* dlp = dlog_prob ? dlog_prob + p * c : nullptr;
    float mx;
    double lse;
    row_log_sum_exp(x, c, shf, shd, mx, lse);
    const int64_t y = label_of(labels, p, c, has_ignore, ignore);
    double coef = 0.0;
    if (y >= 0 && dloss) {
      double scale = 1.0;
      if (total) scale = *total > 0.0 ? 1.0 / *total : 0.0;
      coef = static_cast<double>(dloss[per_position ? p : 0]) * scale * (weights ? weights[y] : 1.0f);
    }
    double dlp_sum = 0.0;
    if (dlp) {
      for (int64_t j = threadIdx.x; j < c; j += blockDim.x) dlp_sum += dlp[j];
      dlp_sum = block_sum(dlp_sum, shd);
    }
    const float shift = static_cast<float>(mx + lse);
    auto grad = [&](int64_t j, float v) {
      const double prob = expf(v - shift);
      double g = coef * (prob - (j == y ? 1.0 : 0.0));
      if (dlp) g += dlp[j] - prob * dlp_sum;
      return static_cast<float>(g);
    };
    const bool vec = (reinterpret_cast<uintptr_t>(x) - reinterpret_cast<uintptr_t>(dx)) % 16 == 0;
    const int64_t head = vec ? row_head(x, c) : c, quads = (c - head) / 4;
    for (int64_t j = threadIdx.x; j < head; j += blockDim.x) dx[j] = grad(j, x[j]);
    const float4* x4 = reinterpret_cast<const float4*>(x + head);
    float4* d4 = reinterpret_cast<float4*>(dx + head);
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      const float4 u = x4[q];
      const int64_t j = head + 4 * q;
      d4[q] = make_float4(grad(j, u.x), grad(j + 1, u.y), grad(j + 2, u.z), grad(j + 3, u.w));
    }
    for (int64_t j = head + quads * 4 + threadIdx.x; j < c; j += blockDim.x) dx[j] = grad(j, x[j]);
  }
}

unsigned row_grid(int64_t rows) {
  const int64_t g = int64_t{detail::num_sms()};
  return static_cast<unsigned>(rows < g ? rows : g);
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

struct AccumulateF {
  float* acc;
  const float* g;
  template <class I>
  __device__ __forceinline__ void one(I i) const {
    acc[i] += g[i];
  }
  template <class I>
  __device__ __forceinline__ void quad(I q) const {
    float4 a = detail::load4(acc, q);
    const float4 b = detail::load4(g, q);
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
    detail::store4(acc, q, a);
  }
};

// Up to kNormChunk tensors' sums of squares in one launch: tensor t owns blocks [start[t], start[t + 1]) (several for
// large tensors, one for small ones), so a model's hundreds of bias and norm vectors cost one launch, not one each.
constexpr int kNormChunk = 48;
struct NormChunk {
  const void* x[kNormChunk];
  bool bf16[kNormChunk];  // x holds bf16 bits (a reduced bf16 gradient), else float32
  int64_t n[kNormChunk];
  double weight[kNormChunk];
  int start[kNormChunk + 1];
  int count;
};

__global__ void sum_squares_multi_kernel(NormChunk c, double* acc) {
  __shared__ double sh[32];
  int t = 0;
  while (t + 1 < c.count && static_cast<int>(blockIdx.x) >= c.start[t + 1]) ++t;
  const int64_t blocks = c.start[t + 1] - c.start[t], b = static_cast<int64_t>(blockIdx.x) - c.start[t];
  const int64_t n = c.n[t];
  const int64_t step = blocks * blockDim.x;
  double s = 0.0;
  int64_t i = b * blockDim.x + threadIdx.x;
  auto add4 = [&](float4 v) {
    s += static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y + static_cast<double>(v.z) * v.z +
         static_cast<double>(v.w) * v.w;
  };
  if (c.bf16[t]) {
    const auto* x = static_cast<const uint16_t*>(c.x[t]);
    if (reinterpret_cast<uintptr_t>(x) % 8 == 0) {
      const int64_t quads = n / 4;
      for (int64_t q = i; q < quads; q += step) {
        const uint2 u = reinterpret_cast<const uint2*>(x)[q];
        add4(make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                         __uint_as_float(u.y & 0xffff0000u)));
      }
      i += quads * 4;
    }
    for (; i < n; i += step) {
      const double v = bf16_float(x[i]);
      s += v * v;
    }
  } else {
    const auto* x = static_cast<const float*>(c.x[t]);
    if (reinterpret_cast<uintptr_t>(x) % 16 == 0) {
      const int64_t quads = n / 4;
      for (int64_t q = i; q < quads; q += step) add4(reinterpret_cast<const float4*>(x)[q]);
      i += quads * 4;
    }
    for (; i < n; i += step) s += static_cast<double>(x[i]) * x[i];
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0 && s != 0.0) atomicAdd(acc, s * c.weight[t]);
}

__global__ void norm_finish(const double* acc, float scale, float* out) {
  *out = static_cast<float>(::sqrt(*acc) * static_cast<double>(scale));
}

struct AdamWCoef {
  float decay, step_size, bc2_sqrt, scale, omb1, omb2, b2, eps;
};

// One parameter's update, in kernels/cpu/optimizer.cpp's order with every operation rounded on its own (the _rn
// intrinsics are never contracted into FMAs): the element and the quad paths give the same bits, which the compiler's
// free contraction did not guarantee (it fused differently in the two, 1 ulp apart), and so does the CPU.
__device__ __forceinline__ void adamw_one(float& p, float& g, float& m, float& v, const AdamWCoef& c, bool zero_grad) {
  const float gi = __fmul_rn(g, c.scale);
  const float w = __fmul_rn(p, c.decay);
  const float mi = __fadd_rn(m, __fmul_rn(c.omb1, __fsub_rn(gi, m)));
  const float vi = __fadd_rn(__fmul_rn(v, c.b2), __fmul_rn(c.omb2, __fmul_rn(gi, gi)));
  m = mi;
  v = vi;
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bc2_sqrt), c.eps);
  p = __fsub_rn(w, __fmul_rn(c.step_size, __fdiv_rn(mi, denom)));
  if (zero_grad) g = 0.0f;
}

// The update's coefficients from the device scalars (lr, step, the grad norm for clipping), computed once per block
// in double (thread 0) and shared. Every thread of the block must call it (it synchronizes).
__device__ AdamWCoef adamw_coef(const void* lr_ptr, bool lr64, const int64_t* step_ptr, const float* norm_ptr,
                                const AdamW& a) {
  __shared__ float coef[6];  // decay, step_size, bc2_sqrt, scale, one_minus_b1, one_minus_b2
  if (threadIdx.x == 0) {
    const double lr = lr64 ? *static_cast<const double*>(lr_ptr) : *static_cast<const float*>(lr_ptr);
    const double step = static_cast<double>(*step_ptr);
    double scale = a.grad_scale;
    if (a.max_norm > 0 && norm_ptr) {
      const double c = a.max_norm / (static_cast<double>(*norm_ptr) + 1e-6);
      if (c < 1.0) scale *= c;
    }
    coef[0] = static_cast<float>(1.0 - lr * a.weight_decay);
    coef[1] = static_cast<float>(lr / (1.0 - ::pow(a.beta1, step)));
    coef[2] = static_cast<float>(::sqrt(1.0 - ::pow(a.beta2, step)));
    coef[3] = static_cast<float>(scale);
    coef[4] = static_cast<float>(1.0 - a.beta1);
    coef[5] = static_cast<float>(1.0 - a.beta2);
  }
  __syncthreads();
  return AdamWCoef{coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], static_cast<float>(a.beta2),
                   static_cast<float>(a.eps)};
}

// kVec: p, g, m, v 16-byte aligned (p16 8-byte), float4 accesses and a tail of n % 4 elements. p16 (optional): the
// parameter's bf16 copy, rewritten from the updated values.
// The gradient, float32 or bf16 bits (G = uint16_t: a reduced bf16 gradient, widened exactly): element and quad
// loads, and zeroing.
__device__ __forceinline__ float grad_at(const float* g, size_t i) { return g[i]; }
__device__ __forceinline__ float grad_at(const uint16_t* g, size_t i) { return bf16_float(g[i]); }
__device__ __forceinline__ float4 grad4(const float* g, size_t q) { return detail::load4(g, q); }
__device__ __forceinline__ float4 grad4(const uint16_t* g, size_t q) {
  const uint2 u = reinterpret_cast<const uint2*>(g)[q];
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ void zero4(float* g, size_t q) { detail::store4(g, q, make_float4(0.f, 0.f, 0.f, 0.f)); }
__device__ __forceinline__ void zero4(uint16_t* g, size_t q) { reinterpret_cast<uint2*>(g)[q] = make_uint2(0u, 0u); }

// The squares of a gradient's quad, in double (GradNorm's sum, grad_norm_sum_squares_f32).
__device__ __forceinline__ double squares4(float4 q) {
  return static_cast<double>(q.x) * q.x + static_cast<double>(q.y) * q.y + static_cast<double>(q.z) * q.z +
         static_cast<double>(q.w) * q.w;
}

// Where AdamW's float32 master lives: elements and quads of it read and written.
// PlainMaster: a float32 array, with an optional bf16 copy (p16) rewritten from each updated value.
struct PlainMaster {
  float* p;
  uint16_t* p16;
  __device__ __forceinline__ float load(size_t i) const { return p[i]; }
  __device__ __forceinline__ void store(size_t i, float x) const {
    p[i] = x;
    if (p16) p16[i] = bf16_bits(x);
  }
  __device__ __forceinline__ float4 load4(size_t q) const { return detail::load4(p, q); }
  __device__ __forceinline__ void store4(size_t q, float4 x) const {
    detail::store4(p, q, x);
    if (p16) {
      reinterpret_cast<uint2*>(p16)[q] = make_uint2(bf16_bits(x.x) | (static_cast<uint32_t>(bf16_bits(x.y)) << 16),
                                                    bf16_bits(x.z) | (static_cast<uint32_t>(bf16_bits(x.w)) << 16));
    }
  }
};

// SplitMaster: the master held as its halves (kernels/split_float32.h), hi also the products' bf16 copy: 2 + 2 bytes
// read and written per parameter instead of PlainMaster's 4 read and 4 + 2 written.
struct SplitMaster {
  uint16_t* hi;
  uint16_t* lo;
  static __device__ __forceinline__ float joined(uint32_t h, uint32_t l) {
    return __uint_as_float(join_float32(static_cast<uint16_t>(h), static_cast<uint16_t>(l)));
  }
  __device__ __forceinline__ float load(size_t i) const { return joined(hi[i], lo[i]); }
  __device__ __forceinline__ void store(size_t i, float x) const {
    const SplitFloat32 s = split_float32(__float_as_uint(x));
    hi[i] = s.hi;
    lo[i] = s.lo;
  }
  __device__ __forceinline__ float4 load4(size_t q) const {
    const uint2 h = reinterpret_cast<const uint2*>(hi)[q], l = reinterpret_cast<const uint2*>(lo)[q];
    return make_float4(joined(h.x & 0xffffu, l.x & 0xffffu), joined(h.x >> 16, l.x >> 16),
                       joined(h.y & 0xffffu, l.y & 0xffffu), joined(h.y >> 16, l.y >> 16));
  }
  __device__ __forceinline__ void store4(size_t q, float4 x) const {
    const SplitFloat32 a = split_float32(__float_as_uint(x.x)), b = split_float32(__float_as_uint(x.y)),
                       c = split_float32(__float_as_uint(x.z)), d = split_float32(__float_as_uint(x.w));
    reinterpret_cast<uint2*>(hi)[q] =
        make_uint2(a.hi | (static_cast<uint32_t>(b.hi) << 16), c.hi | (static_cast<uint32_t>(d.hi) << 16));
    reinterpret_cast<uint2*>(lo)[q] =
        make_uint2(a.lo | (static_cast<uint32_t>(b.lo) << 16), c.lo | (static_cast<uint32_t>(d.lo) << 16));
  }
};

// kSq: also add the sum of squares of the (unscaled) gradient to *sumsq, one atomic per block (the gradient norm
// taken inside the updates: runtime/updates_in_backward.cpp). M: PlainMaster or SplitMaster.
template <typename I, bool kVec, typename G, bool kSq, typename M>
__global__ void adamw_kernel(M master, G* g, float* m, float* v, I n, const void* lr_ptr, bool lr64,
                             const int64_t* step_ptr, const float* norm_ptr, AdamW a, double* sumsq) {
  const AdamWCoef c = adamw_coef(lr_ptr, lr64, step_ptr, norm_ptr, a);
  const bool zg = a.zero_grad;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  const I first = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  double sq = 0.0;
  // One element: adamw_one on the widened gradient (zeroing happens on g itself).
  auto one = [&](I i) {
    float gi = grad_at(g, i);
    if constexpr (kSq) sq += static_cast<double>(gi) * gi;
    float p = master.load(i);
    adamw_one(p, gi, m[i], v[i], c, false);
    if (zg) g[i] = G(0);
    master.store(i, p);
  };
  if constexpr (kVec) {
    const I quads = n / 4;
    for (I q = first; q < quads; q += stride) {
      float4 pq = master.load4(q), gq = grad4(g, q), mq = detail::load4(m, q), vq = detail::load4(v, q);
      if constexpr (kSq) sq += squares4(gq);
      adamw_one(pq.x, gq.x, mq.x, vq.x, c, false);
      adamw_one(pq.y, gq.y, mq.y, vq.y, c, false);
      adamw_one(pq.z, gq.z, mq.z, vq.z, c, false);
      adamw_one(pq.w, gq.w, mq.w, vq.w, c, false);
      master.store4(q, pq);
      detail::store4(m, q, mq);
      detail::store4(v, q, vq);
      if (zg) zero4(g, q);
    }
    const I i = quads * 4 + first;
    if (i < n) one(i);
  } else {
    for (I i = first; i < n; i += stride) one(i);
  }
  if constexpr (kSq) {
    __shared__ double sh[32];
    sq = block_sum(sq, sh);
    if (threadIdx.x == 0 && sq != 0.0) atomicAdd(sumsq, sq);
  }
}

__global__ void split_float32_kernel(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const SplitFloat32 s = split_float32(__float_as_uint(x[i]));
    hi[i] = s.hi;
    lo[i] = s.lo;
  }
}

// AdamW over up to kAdamChunk whole parameters in one launch: parameter t owns blocks [start[t], start[t + 1]).
constexpr int kAdamChunk = 48;
struct AdamWChunk {
  float* p[kAdamChunk];
  float* g[kAdamChunk];
  float* m[kAdamChunk];
  float* v[kAdamChunk];
  int64_t n[kAdamChunk];
  int start[kAdamChunk + 1];
  int count;
};

__global__ void adamw_multi_kernel(AdamWChunk c, const void* lr_ptr, bool lr64, const int64_t* step_ptr,
                                   const float* norm_ptr, AdamW a, double* sumsq) {
  const AdamWCoef k = adamw_coef(lr_ptr, lr64, step_ptr, norm_ptr, a);
  int t = 0;
  while (t + 1 < c.count && static_cast<int>(blockIdx.x) >= c.start[t + 1]) ++t;
  const int64_t blocks = c.start[t + 1] - c.start[t], b = static_cast<int64_t>(blockIdx.x) - c.start[t];
  float *p = c.p[t], *g = c.g[t], *m = c.m[t], *v = c.v[t];
  const int64_t n = c.n[t], step = blocks * blockDim.x;
  int64_t i = b * blockDim.x + threadIdx.x;
  const bool zg = a.zero_grad;
  double sq = 0.0;
  const uintptr_t bits = reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) |
                         reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v);
  if (bits % 16 == 0) {
    const int64_t quads = n / 4;
    for (int64_t q = i; q < quads; q += step) {
      float4 pq = detail::load4(p, q), gq = detail::load4(g, q), mq = detail::load4(m, q), vq = detail::load4(v, q);
      if (sumsq) sq += squares4(gq);
      adamw_one(pq.x, gq.x, mq.x, vq.x, k, zg);
      adamw_one(pq.y, gq.y, mq.y, vq.y, k, zg);
      adamw_one(pq.z, gq.z, mq.z, vq.z, k, zg);
      adamw_one(pq.w, gq.w, mq.w, vq.w, k, zg);
      detail::store4(p, q, pq);
      detail::store4(m, q, mq);
      detail::store4(v, q, vq);
      if (zg) detail::store4(g, q, gq);
    }
    i += quads * 4;
  }
  for (; i < n; i += step) {
    if (sumsq) sq += static_cast<double>(g[i]) * g[i];
    adamw_one(p[i], g[i], m[i], v[i], k, zg);
  }
  if (sumsq) {  // uniform across the block
    __shared__ double sh[32];
    sq = block_sum(sq, sh);
    if (threadIdx.x == 0 && sq != 0.0) atomicAdd(sumsq, sq);
  }
}

template <typename I, typename G, typename M>
void launch_adamw(unsigned blocks, bool vec, M master, G* g, float* m, float* v, I n, const void* lr, bool lr64,
                  const int64_t* step, const float* norm, const AdamW& a, double* sumsq, cudaStream_t stream) {
  if (vec && sumsq)
    adamw_kernel<I, true, G, true><<<blocks, kThreads, 0, stream>>>(master, g, m, v, n, lr, lr64, step, norm, a, sumsq);
  else if (vec)
    adamw_kernel<I, true, G, false>
        <<<blocks, kThreads, 0, stream>>>(master, g, m, v, n, lr, lr64, step, norm, a, sumsq);
  else if (sumsq)
    adamw_kernel<I, false, G, true>
        <<<blocks, kThreads, 0, stream>>>(master, g, m, v, n, lr, lr64, step, norm, a, sumsq);
  else
    adamw_kernel<I, false, G, false>
        <<<blocks, kThreads, 0, stream>>>(master, g, m, v, n, lr, lr64, step, norm, a, sumsq);
}

}  // namespace

bool softmax_cross_entropy_f32(const float* scores, const void* labels, bool labels64, const float* weights,
                               int64_t n, int64_t c, int64_t d, bool has_ignore, int64_t ignore_index, int reduction,
                               float* loss, float* log_prob) {
  const int64_t positions = n * d;
  if (positions == 0) {
    if (reduction != 0) return cudaMemsetAsync(loss, 0, sizeof(float), launch_stream()) == cudaSuccess;
    return true;
  }
  double* ws = nullptr;
  if (reduction != 0) {
    ws = static_cast<double*>(workspace(sizeof(double) * 2 * positions));
    if (!ws) return false;
  }
  float* none = reduction == 0 ? loss : nullptr;
  const unsigned g = static_cast<unsigned>(positions);
  if (d == 1 && fast_rows()) {
    if (labels64) {
      sce_forward_rows<int64_t><<<row_grid(n), kRowBlock, 0, launch_stream()>>>(
          scores, static_cast<const int64_t*>(labels), weights, n, c, has_ignore, ignore_index, ws,
          ws ? ws + positions : nullptr, none, log_prob);
    } else {
      sce_forward_rows<int32_t><<<row_grid(n), kRowBlock, 0, launch_stream()>>>(
          scores, static_cast<const int32_t*>(labels), weights, n, c, has_ignore, ignore_index, ws,
          ws ? ws + positions : nullptr, none, log_prob);
    }
  } else if (labels64) {
    sce_forward<int64_t><<<g, kLossThreads, 0, launch_stream()>>>(scores, static_cast<const int64_t*>(labels), weights,
                                                                  c, d, has_ignore, ignore_index, ws,
                                                                  ws ? ws + positions : nullptr, none, log_prob);
  } else {
    sce_forward<int32_t><<<g, kLossThreads, 0, launch_stream()>>>(scores, static_cast<const int32_t*>(labels), weights,
                                                                  c, d, has_ignore, ignore_index, ws,
                                                                  ws ? ws + positions : nullptr, none, log_prob);
  }
  if (reduction != 0) sce_reduce<<<1, 1024, 0, launch_stream()>>>(ws, ws + positions, positions, reduction == 2, loss);
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
      weight_total<int64_t><<<1, 1024, 0, launch_stream()>>>(static_cast<const int64_t*>(labels), weights, positions, c,
                                                             has_ignore, ignore_index, total);
    } else {
      weight_total<int32_t><<<1, 1024, 0, launch_stream()>>>(static_cast<const int32_t*>(labels), weights, positions, c,
                                                             has_ignore, ignore_index, total);
    }
  }
  const unsigned g = static_cast<unsigned>(positions);
  if (d == 1 && fast_rows()) {
    if (labels64) {
      sce_backward_rows<int64_t><<<row_grid(n), kRowBlock, 0, launch_stream()>>>(
          dloss, scores, static_cast<const int64_t*>(labels), weights, dlog_prob, n, c, has_ignore, ignore_index,
          reduction == 0, total, dscores);
    } else {
      sce_backward_rows<int32_t><<<row_grid(n), kRowBlock, 0, launch_stream()>>>(
          dloss, scores, static_cast<const int32_t*>(labels), weights, dlog_prob, n, c, has_ignore, ignore_index,
          reduction == 0, total, dscores);
    }
  } else if (labels64) {
    sce_backward<int64_t><<<g, kLossThreads, 0, launch_stream()>>>(dloss, scores, static_cast<const int64_t*>(labels),
                                                                   weights, dlog_prob, c, d, has_ignore, ignore_index,
                                                                   reduction == 0, total, dscores);
  } else {
    sce_backward<int32_t><<<g, kLossThreads, 0, launch_stream()>>>(dloss, scores, static_cast<const int32_t*>(labels),
                                                                   weights, dlog_prob, c, d, has_ignore, ignore_index,
                                                                   reduction == 0, total, dscores);
  }
  return launched();
}

bool accumulate_f32(float* acc, const float* g, int64_t n) {
  return detail::launch_flat(AccumulateF{acc, g}, n, detail::aligned16(acc) && detail::aligned16(g));
}

double* grad_norm_sum_squares_f32(const MixedTensor* tensors, const int64_t* counts, const float* weights, int num) {
  double* acc = static_cast<double*>(workspace(sizeof(double)));
  if (!acc) return nullptr;
  if (cudaMemsetAsync(acc, 0, sizeof(double), launch_stream()) != cudaSuccess) return nullptr;
  NormChunk c;
  c.count = 0;
  c.start[0] = 0;
  auto flush = [&]() {
    if (c.count == 0) return true;
    sum_squares_multi_kernel<<<static_cast<unsigned>(c.start[c.count]), kThreads, 0, launch_stream()>>>(c, acc);
    c.count = 0;
    return launched();
  };
  for (int i = 0; i < num; ++i) {
    if (counts[i] == 0 || (weights && weights[i] == 0.0f)) continue;
    // About 16 elements per thread, at most 1024 blocks per tensor.
    const int64_t want = (counts[i] + 16 * kThreads - 1) / (16 * kThreads);
    const int blocks = static_cast<int>(want < 1024 ? want : 1024);
    c.x[c.count] = tensors[i].data;
    c.bf16[c.count] = tensors[i].bf16;
    c.n[c.count] = counts[i];
    c.weight[c.count] = weights ? static_cast<double>(weights[i]) : 1.0;
    c.start[c.count + 1] = c.start[c.count] + blocks;
    if (++c.count == kNormChunk && !flush()) return nullptr;
  }
  return flush() ? acc : nullptr;
}

bool grad_norm_finish_f32(const double* sum_squares, float scale, float* out) {
  norm_finish<<<1, 1, 0, launch_stream()>>>(sum_squares, scale, out);
  return launched();
}

bool grad_norm_f32(const MixedTensor* tensors, const int64_t* counts, const float* weights, int num, float scale,
                   float* out) {
  double* acc = grad_norm_sum_squares_f32(tensors, counts, weights, num);
  return acc && grad_norm_finish_f32(acc, scale, out);
}

bool adamw_f32(float* p, void* g, bool g_bf16, float* m, float* v, int64_t n, const void* lr, bool lr_is_f64,
               const int64_t* step, const float* grad_norm, const AdamW& a, uint16_t* p16, void* stream,
               double* sum_squares, uint16_t* p_low16) {
  if (n == 0) return true;
  if (p_low16 && !p16) return false;
  const cudaStream_t st = stream ? static_cast<cudaStream_t>(stream) : launch_stream();
  // The master: p (p16 rewritten from it), or with p_low16 the halves (p16, p_low16) and p untouched.
  const bool master_vec =
      p_low16 ? reinterpret_cast<uintptr_t>(p16) % 8 == 0 && reinterpret_cast<uintptr_t>(p_low16) % 8 == 0
              : detail::aligned16(p) && reinterpret_cast<uintptr_t>(p16) % 8 == 0;
  const bool vec = master_vec && reinterpret_cast<uintptr_t>(g) % (g_bf16 ? 8 : 16) == 0 && detail::aligned16(m) &&
                   detail::aligned16(v);
  const unsigned blocks = detail::flat_grid(vec ? (n + 3) / 4 : n, stream ? side_stream_max_blocks() : 0);
  auto run = [&](auto master, auto* gt) {
    if (n < (int64_t{1} << 31)) {
      launch_adamw<uint32_t>(blocks, vec, master, gt, m, v, static_cast<uint32_t>(n), lr, lr_is_f64, step, grad_norm, a,
                             sum_squares, st);
    } else {
      launch_adamw<int64_t>(blocks, vec, master, gt, m, v, n, lr, lr_is_f64, step, grad_norm, a, sum_squares, st);
    }
  };
  auto with_master = [&](auto* gt) {
    if (p_low16)
      run(SplitMaster{p16, p_low16}, gt);
    else
      run(PlainMaster{p, p16}, gt);
  };
  if (g_bf16)
    with_master(static_cast<uint16_t*>(g));
  else
    with_master(static_cast<float*>(g));
  return launched();
}

bool split_float32_f32(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  if (n == 0) return true;
  auto overlaps = [&](const void* out) {
    const char *a = reinterpret_cast<const char*>(x), *b = static_cast<const char*>(out);
    return b < a + n * 4 && a < b + n * 2;
  };
  if (overlaps(hi) || overlaps(lo)) {  // the halves inside x's buffer (a split master): split a copy of x
    void* w = workspace(static_cast<size_t>(n) * 4);
    if (!w ||
        cudaMemcpyAsync(w, x, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToDevice, launch_stream()) != cudaSuccess) {
      return false;
    }
    x = static_cast<const float*>(w);
  }
  split_float32_kernel<<<detail::flat_grid(n), kThreads, 0, launch_stream()>>>(x, hi, lo, n);
  return launched();
}

bool adamw_multi_f32(float* const* p, float* const* g, float* const* m, float* const* v, const int64_t* n, int num,
                     const void* lr, bool lr_is_f64, const int64_t* step, const float* grad_norm, const AdamW& a,
                     void* stream, double* sum_squares) {
  AdamWChunk c;
  c.count = 0;
  c.start[0] = 0;
  auto flush = [&]() {
    if (c.count == 0) return true;
    const cudaStream_t st = stream ? static_cast<cudaStream_t>(stream) : launch_stream();
    adamw_multi_kernel<<<static_cast<unsigned>(c.start[c.count]), kThreads, 0, st>>>(c, lr, lr_is_f64, step, grad_norm,
                                                                                     a, sum_squares);
    c.count = 0;
    return launched();
  };
  for (int i = 0; i < num; ++i) {
    if (n[i] == 0) continue;
    const int64_t want = (n[i] + 8 * kThreads - 1) / (8 * kThreads);  // about 8 elements per thread
    c.p[c.count] = p[i], c.g[c.count] = g[i], c.m[c.count] = m[i], c.v[c.count] = v[i], c.n[c.count] = n[i];
    c.start[c.count + 1] = c.start[c.count] + static_cast<int>(want < 1024 ? want : 1024);
    if (++c.count == kAdamChunk && !flush()) return false;
  }
  return flush();
}

}  // namespace gv::cuda
