// galvatron LinearCrossEntropy on the device (runtime/ops/linear_cross_entropy_ops.cpp gives the contract): the head
// product X @ op(W) and the softmax cross-entropy of its rows, chunk by chunk of rows, so that neither the [N, V]
// logits nor their gradient exist whole.
//
// Under the bf16 math mode X and W are converted once per call into workspace() (rows padded to 8 elements, the
// vocabulary to Vp = round8(V) rows or columns of zeros), each chunk's logits come out of cuBLAS in bf16 ([rows, Vp],
// the padding columns exactly zero), and:
//   forward   one block per row: max and log-sum-exp in one read, the row's loss and weight in float64; one block
//             sums them in a fixed order (deterministic).
//   gradients the same block turns its row in place into dlogits = dLoss * scale * (softmax - onehot) in bf16
//             (dLoss = 1 in the forward's own gradient outputs; LinearCrossEntropyGrad recomputes the chunk first),
//             then dX rows = dlogits @ op(W)^T and dW (+)= dlogits^T X (float32 results, float32 accumulation
//             across chunks through beta = 1).
// Other math modes keep float32 logits [rows, V] and gemm_f32's products (its own tf32 / float32 rules).
// Labels outside [0, V) count as ignored, as in the SoftmaxCrossEntropyLoss kernels (the CPU kernel reports them).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace gv::cuda {
namespace {

using detail::block_max;
using detail::block_sum;
using detail::launched;

using bf16 = __nv_bfloat16;
constexpr int kRowThreads = 512;
// Logits per chunk: 2 GiB (GALVATRON_CUDA_LCE_CHUNK_MB overrides; bench/cuda_notes.md entry 42).
size_t chunk_bytes() {
  static const size_t bytes = [] {
    const char* e = std::getenv("GALVATRON_CUDA_LCE_CHUNK_MB");
    const long mb = e ? std::atol(e) : 0;
    return (mb > 0 ? static_cast<size_t>(mb) : size_t{2048}) << 20;
  }();
  return bytes;
}

int64_t round8(int64_t v) { return (v + 7) / 8 * 8; }
size_t align256(size_t b) { return (b + 255) / 256 * 256; }

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { *p = __float2bfloat16_rn(v); }

// 16 bytes of T as floats.
template <typename T>
constexpr int kWidth = 16 / static_cast<int>(sizeof(T));
__device__ __forceinline__ void unpack(const uint4& u, float (&f)[4]) {
  f[0] = __uint_as_float(u.x);
  f[1] = __uint_as_float(u.y);
  f[2] = __uint_as_float(u.z);
  f[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void unpack(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ uint4 pack(const float (&f)[4]) {
  return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
}
__device__ __forceinline__ uint4 pack(const float (&f)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);  // .x (low half) = f[2i]
    w[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ void online(float& m, float& s, float x) {
  if (x > m) {
    s *= expf(m - x);  // m == -inf: s is 0 and stays 0
    m = x;
  }
  s += expf(x - m);
}

// The W values of one vector into the running (max m, sum s): the vector's own max first, so that the running sum
// is rescaled at most once per vector (one exp per value, not up to two).
template <int W>
__device__ __forceinline__ void online_vec(float& m, float& s, const float (&f)[W]) {
  float lm = f[0];
#pragma unroll
  for (int i = 1; i < W; ++i) lm = fmaxf(lm, f[i]);
  if (lm == -INFINITY) return;  // nothing to add (and no -inf - -inf)
  if (lm > m) {
    s *= expf(m - lm);  // m == -inf: s is 0 and stays 0
    m = lm;
  }
#pragma unroll
  for (int i = 0; i < W; ++i) s += expf(f[i] - m);
}

// Natural log-sum-exp of the v values of one row (16-byte vectors where kVec); every thread gets it.
template <typename T, bool kVec>
__device__ float row_lse(const T* x, int64_t v, float* shf, double* shd, bool vec_lse) {
  float m = -INFINITY, s = 0.0f;
  int64_t tail = 0;
  if constexpr (kVec) {
    constexpr int W = kWidth<T>;
    const int64_t vecs = v / W;
    const uint4* x4 = reinterpret_cast<const uint4*>(x);
    for (int64_t q = threadIdx.x; q < vecs; q += blockDim.x) {
      float f[W];
      unpack(x4[q], f);
      if (vec_lse) {
        online_vec<W>(m, s, f);
      } else {
#pragma unroll
        for (int i = 0; i < W; ++i) online(m, s, f[i]);
      }
    }
    tail = vecs * W;
  }
  for (int64_t j = tail + threadIdx.x; j < v; j += blockDim.x) online(m, s, to_f(x[j]));
  const float big = block_max(m, shf);
  if (!isfinite(big)) return big;  // an inf or NaN logit: the loss is not finite either
  const double total = block_sum(static_cast<double>(m == -INFINITY ? 0.0f : s * expf(m - big)), shd);
  return big + static_cast<float>(::log(total));
}

template <typename L>
__device__ __forceinline__ int64_t label_of(const L* labels, int64_t r, int64_t v, bool has_ignore, int64_t ignore) {
  const int64_t y = static_cast<int64_t>(labels[r]);
  if ((has_ignore && y == ignore) || y < 0 || y >= v) return -1;
  return y;
}

// One block per row: the row's loss and weight (pos_loss non-null) and, with `grads`, the row turned in place into
// dLoss * scale * (softmax - onehot); dLoss = *dloss (null: 1), scale 1 / *total (mean; 0 when nothing counts) or 1.
template <typename T, typename L, bool kVec>
__global__ void __launch_bounds__(kRowThreads) lce_rows(T* logits, int64_t ld, int64_t rows, int64_t v,
                                                        const L* labels, bool has_ignore, int64_t ignore,
                                                        double* pos_loss, double* pos_weight, bool grads,
                                                        const float* dloss, const double* total, bool vec_lse) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  double scale = 1.0;
  if (grads && total) scale = *total > 0.0 ? 1.0 / *total : 0.0;
  const float dl = dloss ? *dloss : 1.0f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* x = logits + r * ld;
    const int64_t y = label_of(labels, r, v, has_ignore, ignore);
    const float coef = (!grads || y < 0) ? 0.0f : static_cast<float>(dl * scale);
    const bool need_lse = pos_loss != nullptr || coef != 0.0f;  // the same for the whole block
    const float lse = need_lse ? row_lse<T, kVec>(x, v, shf, shd, vec_lse) : 0.0f;
    if (pos_loss) {
      if (threadIdx.x == 0) {
        pos_loss[r] = y < 0 ? 0.0 : static_cast<double>(lse) - static_cast<double>(to_f(x[y]));
        pos_weight[r] = y < 0 ? 0.0 : 1.0;
      }
      if (grads) __syncthreads();  // x[y] is read before the row is overwritten
    }
    if (!grads) continue;
    auto grad = [&](int64_t j, float xv) {
      return coef == 0.0f ? 0.0f : coef * (expf(xv - lse) - (j == y ? 1.0f : 0.0f));
    };
    int64_t tail = 0;
    if constexpr (kVec) {
      constexpr int W = kWidth<T>;
      const int64_t vecs = v / W;
      uint4* x4 = reinterpret_cast<uint4*>(x);
      for (int64_t q = threadIdx.x; q < vecs; q += blockDim.x) {
        float f[W];
        unpack(x4[q], f);
#pragma unroll
        for (int i = 0; i < W; ++i) f[i] = grad(q * W + i, f[i]);
        x4[q] = pack(f);
      }
      tail = vecs * W;
    }
    for (int64_t j = tail + threadIdx.x; j < v; j += blockDim.x) store(x + j, grad(j, to_f(x[j])));
  }
}

template <typename L>
__global__ void lce_count(const L* labels, int64_t n, int64_t v, bool has_ignore, int64_t ignore, double* total) {
  __shared__ double sh[32];
  double c = 0.0;
  for (int64_t r = threadIdx.x; r < n; r += blockDim.x) c += label_of(labels, r, v, has_ignore, ignore) >= 0 ? 1.0 : 0.0;
  c = block_sum(c, sh);
  if (threadIdx.x == 0) *total = c;
}

__global__ void lce_reduce(const double* pos_loss, const double* pos_weight, int64_t n, bool mean, float* loss) {
  __shared__ double sh[32];
  double s = 0.0, w = 0.0;
  for (int64_t r = threadIdx.x; r < n; r += blockDim.x) s += pos_loss[r], w += pos_weight[r];
  s = block_sum(s, sh);
  w = block_sum(w, sh);
  if (threadIdx.x == 0) *loss = static_cast<float>(mean ? (w > 0.0 ? s / w : 0.0) : s);
}

// Where everything lives for one call.
struct Plan {
  bool bf16 = false;
  int64_t k8 = 0, vp = 0, ld = 0, rows = 0;
  uint16_t *xb = nullptr, *wb = nullptr;  // bf16 copies: X [n, k8]; W [vp, k8] (trans_w) or [k8, vp]
  void* logits = nullptr;                 // one chunk: [rows, ld] of bf16 or float32
  double *pos_loss = nullptr, *pos_weight = nullptr, *total = nullptr;
  float* dw_pad = nullptr;  // !trans_w in bf16 with V % 8 != 0: dW as [k, vp] before the copy out
};

bool make_plan(const LinearCrossEntropyArgs& a, bool loss, bool grads, Plan& p) {
  p.bf16 = math_mode() == MathMode::kBf16;
  const size_t elem = p.bf16 ? 2 : 4;
  p.k8 = round8(a.k);
  p.vp = round8(a.v);
  p.ld = p.bf16 ? p.vp : a.v;
  int64_t rows = a.chunk_rows;
  if (rows <= 0) {
    // As many rows as fit the chunk budget, then the chunks evened out (rounded up to 64 rows) so that no short
    // tail chunk pays a whole dW pass for a few rows.
    const int64_t most = static_cast<int64_t>(chunk_bytes() / (elem * p.ld));
    const int64_t chunks = most < 1 ? a.n : (a.n + most - 1) / most;
    rows = (a.n + chunks - 1) / chunks;
    if (rows > 64) rows = std::min<int64_t>((rows + 63) / 64 * 64, std::max<int64_t>(most / 64 * 64, 64));
  }
  p.rows = rows < 1 ? 1 : (rows > a.n ? a.n : rows);
  const size_t xb = p.bf16 ? align256(2 * static_cast<size_t>(a.n * p.k8)) : 0;
  const size_t wb = p.bf16 ? align256(2 * static_cast<size_t>(p.vp * p.k8)) : 0;
  const size_t lg = align256(elem * static_cast<size_t>(p.rows * p.ld));
  const size_t pos = loss ? align256(8 * static_cast<size_t>(a.n)) : 0;
  const size_t dwp = grads && p.bf16 && !a.trans_w && p.vp != a.v ? align256(4 * static_cast<size_t>(a.k * p.vp)) : 0;
  char* ws = static_cast<char*>(workspace(xb + wb + lg + 2 * pos + 256 + dwp));
  if (!ws) return false;
  p.xb = xb ? reinterpret_cast<uint16_t*>(ws) : nullptr;
  ws += xb;
  p.wb = wb ? reinterpret_cast<uint16_t*>(ws) : nullptr;
  ws += wb;
  p.logits = ws;
  ws += lg;
  p.pos_loss = pos ? reinterpret_cast<double*>(ws) : nullptr;
  ws += pos;
  p.pos_weight = pos ? reinterpret_cast<double*>(ws) : nullptr;
  ws += pos;
  p.total = reinterpret_cast<double*>(ws);
  ws += 256;
  p.dw_pad = dwp ? reinterpret_cast<float*>(ws) : nullptr;
  if (p.bf16) {
    if (!pack_bf16(a.x, a.n, a.k, p.xb, a.n, p.k8)) return false;
    if (a.trans_w) return pack_bf16(a.w, a.v, a.k, p.wb, p.vp, p.k8);
    return pack_bf16(a.w, a.k, a.v, p.wb, p.k8, p.vp);
  }
  return true;
}

// The logits of rows [r0, r0 + r) into p.logits.
bool chunk_logits(const LinearCrossEntropyArgs& a, const Plan& p, int64_t r0, int64_t r) {
  if (p.bf16) {
    return gemm_bf16_ld(false, a.trans_w, r, p.vp, p.k8, 1.0f, p.xb + r0 * p.k8, p.k8, p.wb, a.trans_w ? p.k8 : p.vp,
                        0.0f, p.logits, p.vp, true);
  }
  return gemm_f32(false, a.trans_w, r, a.v, a.k, 1.0f, a.x + r0 * a.k, 0, a.w, 0, 0.0f,
                  static_cast<float*>(p.logits), 0, 1);
}

// Row blocks per SM (GALVATRON_CUDA_LCE_ROW_BLOCKS overrides 2, for comparisons): with fewer rows in flight the second
// read of each row (the gradient pass) more often finds it in L2 (bench/cuda_notes.md entry 44: 2 beat 4 and 1).
int row_blocks_per_sm() {
  static const int n = [] {
    const char* e = std::getenv("GALVATRON_CUDA_LCE_ROW_BLOCKS");
    const int v = e ? std::atoi(e) : 0;
    return v > 0 ? v : 2;
  }();
  return n;
}

// GALVATRON_CUDA_LCE_LSE_VEC=0: the log-sum-exp folds values in one at a time (for comparisons).
bool vec_lse() {
  static const bool on = [] {
    const char* e = std::getenv("GALVATRON_CUDA_LCE_LSE_VEC");
    return !(e && e[0] == '0');
  }();
  return on;
}

unsigned row_blocks(int64_t rows) {
  const int64_t cap = int64_t{detail::num_sms()} * row_blocks_per_sm();
  return static_cast<unsigned>(rows < cap ? rows : cap);
}

// The row kernel over chunk rows [r0, r0 + r): losses when p.pos_loss, gradients when grads.
template <typename T, typename L, bool kVec>
void lce_rows_launch(const LinearCrossEntropyArgs& a, const Plan& p, int64_t r0, int64_t r, bool grads,
                     const float* dloss) {
  lce_rows<T, L, kVec><<<row_blocks(r), kRowThreads, 0, launch_stream()>>>(
      static_cast<T*>(p.logits), p.ld, r, a.v, static_cast<const L*>(a.labels) + r0, a.has_ignore, a.ignore_index,
      p.pos_loss ? p.pos_loss + r0 : nullptr, p.pos_loss ? p.pos_weight + r0 : nullptr, grads, dloss,
      a.mean ? p.total : nullptr, vec_lse());
}

template <typename L>
bool launch_rows(const LinearCrossEntropyArgs& a, const Plan& p, int64_t r0, int64_t r, bool grads,
                 const float* dloss) {
  if (p.bf16) lce_rows_launch<bf16, L, true>(a, p, r0, r, grads, dloss);  // ld = round8(V), 256-byte aligned chunk
  else if (p.ld % 4 == 0) lce_rows_launch<float, L, true>(a, p, r0, r, grads, dloss);
  else lce_rows_launch<float, L, false>(a, p, r0, r, grads, dloss);
  return launched();
}

bool rows_kernel(const LinearCrossEntropyArgs& a, const Plan& p, int64_t r0, int64_t r, bool grads,
                 const float* dloss) {
  return a.labels64 ? launch_rows<int64_t>(a, p, r0, r, grads, dloss)
                    : launch_rows<int32_t>(a, p, r0, r, grads, dloss);
}

// dX rows [r0, r0 + r) and the chunk's share of dW from the chunk's dlogits in p.logits.
bool chunk_grads(const LinearCrossEntropyArgs& a, const Plan& p, int64_t r0, int64_t r, float* dx, float* dw) {
  const float beta = r0 == 0 ? 0.0f : 1.0f;
  if (p.bf16) {
    const uint16_t* g = static_cast<const uint16_t*>(p.logits);
    const uint16_t* xc = p.xb + r0 * p.k8;
    // dX = G [r, vp] @ op(W)^T: W [vp, k8] as is (trans_w), or [k8, vp] transposed; the first k columns.
    if (!gemm_bf16_ld(false, !a.trans_w, r, a.k, p.vp, 1.0f, g, p.vp, p.wb, a.trans_w ? p.k8 : p.vp, 0.0f,
                      dx + r0 * a.k, a.k, false)) {
      return false;
    }
    if (a.trans_w) return gemm_bf16_ld(true, false, a.v, a.k, r, 1.0f, g, p.vp, xc, p.k8, beta, dw, a.k, false);
    float* c = p.dw_pad ? p.dw_pad : dw;
    const int64_t n = p.dw_pad ? p.vp : a.v;
    return gemm_bf16_ld(true, false, a.k, n, r, 1.0f, xc, p.k8, g, p.vp, beta, c, n, false);
  }
  const float* g = static_cast<const float*>(p.logits);
  const float* xc = a.x + r0 * a.k;
  if (!gemm_f32(false, !a.trans_w, r, a.k, a.v, 1.0f, g, 0, a.w, 0, 0.0f, dx + r0 * a.k, 0, 1)) return false;
  if (a.trans_w) return gemm_f32(true, false, a.v, a.k, r, 1.0f, g, 0, xc, 0, beta, dw, 0, 1);
  return gemm_f32(true, false, a.k, a.v, r, 1.0f, xc, 0, g, 0, beta, dw, 0, 1);
}

// The loss into `loss` (when non-null) and, when dx is, dX and dW for dLoss = *dloss (null: 1).
bool run(const LinearCrossEntropyArgs& a, float* loss, const float* dloss, float* dx, float* dw) {
  Plan p;
  if (!make_plan(a, loss != nullptr, dx != nullptr, p)) return false;
  if (dx && a.mean) {
    if (a.labels64) {
      lce_count<int64_t><<<1, 1024, 0, launch_stream()>>>(static_cast<const int64_t*>(a.labels), a.n, a.v, a.has_ignore,
                                                          a.ignore_index, p.total);
    } else {
      lce_count<int32_t><<<1, 1024, 0, launch_stream()>>>(static_cast<const int32_t*>(a.labels), a.n, a.v, a.has_ignore,
                                                          a.ignore_index, p.total);
    }
    if (!launched()) return false;
  }
  for (int64_t r0 = 0; r0 < a.n; r0 += p.rows) {
    const int64_t r = a.n - r0 < p.rows ? a.n - r0 : p.rows;
    if (!chunk_logits(a, p, r0, r) || !rows_kernel(a, p, r0, r, dx != nullptr, dloss)) return false;
    if (dx && !chunk_grads(a, p, r0, r, dx, dw)) return false;
  }
  if (loss) {
    lce_reduce<<<1, 1024, 0, launch_stream()>>>(p.pos_loss, p.pos_weight, a.n, a.mean, loss);
    if (!launched()) return false;
  }
  if (p.dw_pad) {
    return cudaMemcpy2DAsync(dw, sizeof(float) * static_cast<size_t>(a.v), p.dw_pad,
                             sizeof(float) * static_cast<size_t>(p.vp), sizeof(float) * static_cast<size_t>(a.v),
                             static_cast<size_t>(a.k), cudaMemcpyDeviceToDevice, launch_stream()) == cudaSuccess;
  }
  return true;
}

bool zero_grads(const LinearCrossEntropyArgs& a, float* dx, float* dw) {
  return cudaMemsetAsync(dx, 0, sizeof(float) * static_cast<size_t>(a.n * a.k), launch_stream()) == cudaSuccess &&
         cudaMemsetAsync(dw, 0, sizeof(float) * static_cast<size_t>(a.v * a.k), launch_stream()) == cudaSuccess;
}

}  // namespace

bool linear_cross_entropy_f32(const LinearCrossEntropyArgs& a, float* loss, float* dx, float* dw) {
  if (a.n == 0)
    return cudaMemsetAsync(loss, 0, sizeof(float), launch_stream()) == cudaSuccess && (!dx || zero_grads(a, dx, dw));
  return run(a, loss, nullptr, dx, dw);
}

bool linear_cross_entropy_grad_f32(const LinearCrossEntropyArgs& a, const float* dloss, float* dx, float* dw) {
  if (a.n == 0 || !dloss) return zero_grads(a, dx, dw);
  return run(a, nullptr, dloss, dx, dw);
}

}  // namespace gv::cuda
