// Fused attention (ONNX Attention, 4-D and 3-D forms) and its backward on the device: kernels/cpu/attention.h's
// contract. The 3-D form (AttentionDims::seq_major) runs in place on the flash path; v1 permutes it to head-major
// copies in its own scratch and back.
//
// v1 materializes the scores, a chunk of (batch, kv head) units at a time, in workspace():
//   forward   S = scale * Q K^T (one strided-batched product per chunk: the Hq/Hkv query heads of a kv head are
//             contiguous in Q, so they fold into the rows of one [G*S, D] x [D, L] product per unit);
//             P = softmax(mask(S)) by one kernel per row (mask, causal limit, max, exp, sum, normalize; float32, or
//             bf16 in kBf16 mode so that the next product reads it directly); Y = P V.
//   backward  S and P recomputed as above; dP = dY V^T; dV = P^T dY (the group's query heads are the k of the
//             product, so it sums over them); dS = P * (dP - rowsum(P * dP)) by one kernel per row; dQ = scale dS K;
//             dK = scale dS^T Q (summed over the group the same way).
// kFloat32 / kTf32: gemm_f32 on the float32 operands (the mode rounds inside cuBLAS). kBf16: bf16 copies of Q, K, V
// (and dY) made once per call, and gemm_bf16 for every product (never gemm_f32 on float32 operands).
// kBf16 without a mask (causal allowed), head_dim == v_head_dim <= 128: the flash path (flash_attention.cu) instead
// (forward and backward by default; GALVATRON_CUDA_FLASH=fwd the forward only; see flash_attention_eligible in ops.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grow_buffer.h"

namespace gv::cuda {
namespace {

using detail::block_max;
using detail::block_sum;
using detail::launched;

constexpr int kPer = 8;  // scores per thread kept in registers by the row kernels (rows of up to kPer * 1024 keys)
constexpr int kMaxRowThreads = 1024;
constexpr int64_t kCachedMaxLen = int64_t{kPer} * kMaxRowThreads;
constexpr int kLongRowThreads = 512;  // rows longer than kCachedMaxLen: three passes over global memory
// Bytes of score-sized scratch (S, P, dP and their bf16 copies) per chunk of units; larger problems run in chunks.
constexpr size_t kScoreBudget = size_t{4} << 30;
constexpr int64_t kMaxChunkRows = int64_t{1} << 30;  // rows of one row-kernel launch (gridDim.x)

// What a row kernel needs to place row `row0 + blockIdx.x` of [B*Hq*S] and its mask.
struct Rows {
  int64_t row0 = 0;
  int64_t q_len = 0, kv_len = 0, q_heads = 0;
  bool causal = false;
  const void* mask = nullptr;
  bool mask_is_bool = false;
  int64_t ms[4] = {0, 0, 0, 0};
};

__device__ __forceinline__ uint16_t bf16_of(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

// The row's mask offset (key 0) and its number of visible keys (causal: j <= i).
__device__ __forceinline__ void place_row(const Rows& r, int64_t& i, int64_t& mbase, int64_t& lim) {
  const int64_t g = r.row0 + blockIdx.x;
  i = g % r.q_len;
  const int64_t bh = g / r.q_len;
  const int64_t h = bh % r.q_heads, b = bh / r.q_heads;
  mbase = b * r.ms[0] + h * r.ms[1] + i * r.ms[2];
  lim = r.causal ? (i + 1 < r.kv_len ? i + 1 : r.kv_len) : r.kv_len;
}

__device__ __forceinline__ float masked(const Rows& r, int64_t mbase, int64_t j, float s) {
  if (!r.mask) return s;
  const int64_t off = mbase + j * r.ms[3];
  if (r.mask_is_bool) return static_cast<const uint8_t*>(r.mask)[off] ? s : -INFINITY;
  return s + static_cast<const float*>(r.mask)[off];
}

// Softmax of one masked score row per block: s [rows, L] holds scale * q.k on entry. Writes P in float32 over s
// (write_f32) and/or in bf16 to p16 (non-null). Keys past the causal limit get 0; a row whose every score is -inf
// gets zeros. kCached: L <= kPer * blockDim.x, the row stays in registers; else three passes over s.
template <bool kCached>
__global__ void attn_softmax_rows(float* __restrict__ sc, uint16_t* __restrict__ p16, bool write_f32, Rows r) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  int64_t i, mbase, lim;
  place_row(r, i, mbase, lim);
  const int64_t L = r.kv_len;
  float* s = sc + static_cast<int64_t>(blockIdx.x) * L;
  uint16_t* p = p16 ? p16 + static_cast<int64_t>(blockIdx.x) * L : nullptr;
  const int64_t nt = blockDim.x;
  float v[kCached ? kPer : 1];
  float mx = -INFINITY;
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int64_t j = threadIdx.x + t * nt;
      v[t] = j < lim ? masked(r, mbase, j, s[j]) : -INFINITY;
      mx = fmaxf(mx, v[t]);
    }
  } else {
    for (int64_t j = threadIdx.x; j < lim; j += nt) {
      const float x = masked(r, mbase, j, s[j]);
      s[j] = x;
      mx = fmaxf(mx, x);
    }
  }
  mx = block_max(mx, shf);
  const bool empty = mx == -INFINITY;  // block-uniform: no key visible, or every one masked
  double sum = 0.0;
  if (!empty) {
    if constexpr (kCached) {
#pragma unroll
      for (int t = 0; t < kPer; ++t) {
        const int64_t j = threadIdx.x + t * nt;
        const float e = j < lim ? expf(v[t] - mx) : 0.0f;
        v[t] = e;
        sum += e;
      }
    } else {
      for (int64_t j = threadIdx.x; j < lim; j += nt) {
        const float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
      }
    }
  }
  sum = block_sum(sum, shd);
  const float inv = empty ? 0.0f : static_cast<float>(1.0 / sum);
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int64_t j = threadIdx.x + t * nt;
      if (j < L) {
        const float pv = (!empty && j < lim) ? v[t] * inv : 0.0f;
        if (write_f32) s[j] = pv;
        if (p) p[j] = bf16_of(pv);
      }
    }
  } else {
    for (int64_t j = threadIdx.x; j < L; j += nt) {
      const float pv = (!empty && j < lim) ? s[j] * inv : 0.0f;
      if (write_f32) s[j] = pv;
      if (p) p[j] = bf16_of(pv);
    }
  }
}

// Softmax backward of one row per block: dS = P * (dP - sum_j P dP), from P [rows, L] (float32) and dP [rows, L].
// Writes dS in bf16 to ds16 when non-null, else in float32 over dp. Keys past the causal limit get 0.
template <bool kCached>
__global__ void attn_softmax_grad_rows(const float* __restrict__ pf, float* __restrict__ dp,
                                       uint16_t* __restrict__ ds16, Rows r) {
  __shared__ double shd[32];
  int64_t i, mbase, lim;
  place_row(r, i, mbase, lim);
  const int64_t L = r.kv_len;
  const float* p = pf + static_cast<int64_t>(blockIdx.x) * L;
  float* g = dp + static_cast<int64_t>(blockIdx.x) * L;
  uint16_t* o16 = ds16 ? ds16 + static_cast<int64_t>(blockIdx.x) * L : nullptr;
  const int64_t nt = blockDim.x;
  float pv[kCached ? kPer : 1], gv[kCached ? kPer : 1];
  double dot = 0.0;
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int64_t j = threadIdx.x + t * nt;
      pv[t] = j < lim ? p[j] : 0.0f;
      gv[t] = j < lim ? g[j] : 0.0f;
      dot += static_cast<double>(pv[t]) * gv[t];
    }
  } else {
    for (int64_t j = threadIdx.x; j < lim; j += nt) dot += static_cast<double>(p[j]) * g[j];
  }
  dot = block_sum(dot, shd);
  const float d = static_cast<float>(dot);
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int64_t j = threadIdx.x + t * nt;
      if (j < L) {
        const float ds = j < lim ? pv[t] * (gv[t] - d) : 0.0f;
        if (o16) o16[j] = bf16_of(ds);
        else g[j] = ds;
      }
    }
  } else {
    for (int64_t j = threadIdx.x; j < L; j += nt) {
      const float ds = j < lim ? p[j] * (g[j] - d) : 0.0f;
      if (o16) o16[j] = bf16_of(ds);
      else g[j] = ds;
    }
  }
}

int row_threads(int64_t L, bool& cached) {
  cached = L <= kCachedMaxLen;
  if (!cached) return kLongRowThreads;
  int64_t t = (L + kPer - 1) / kPer;
  t = (t + 31) / 32 * 32;
  if (t < 32) t = 32;
  if (t > kMaxRowThreads) t = kMaxRowThreads;
  return static_cast<int>(t);
}

bool softmax_rows(float* sc, uint16_t* p16, bool write_f32, const Rows& r, int64_t rows) {
  if (rows == 0) return true;
  bool cached;
  const int nt = row_threads(r.kv_len, cached);
  if (cached)
    attn_softmax_rows<true><<<static_cast<unsigned>(rows), nt, 0, launch_stream()>>>(sc, p16, write_f32, r);
  else
    attn_softmax_rows<false><<<static_cast<unsigned>(rows), nt, 0, launch_stream()>>>(sc, p16, write_f32, r);
  return launched();
}

bool softmax_grad_rows(const float* p, float* dp, uint16_t* ds16, const Rows& r, int64_t rows) {
  if (rows == 0) return true;
  bool cached;
  const int nt = row_threads(r.kv_len, cached);
  if (cached)
    attn_softmax_grad_rows<true><<<static_cast<unsigned>(rows), nt, 0, launch_stream()>>>(p, dp, ds16, r);
  else
    attn_softmax_grad_rows<false><<<static_cast<unsigned>(rows), nt, 0, launch_stream()>>>(p, dp, ds16, r);
  return launched();
}

// C[u] = alpha * op(A[u]) op(B[u]) for u < batch, C contiguous ([batch, m, n]); bf16 or float32 operands. k == 0
// gives zeros.
bool product(bool bf16, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* a, int64_t sa,
             const void* b, int64_t sb, float* c, int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return true;
  if (k == 0) return cudaMemsetAsync(c, 0, sizeof(float) * m * n * batch, launch_stream()) == cudaSuccess;
  if (bf16) {
    return gemm_bf16(ta, tb, m, n, k, alpha, static_cast<const uint16_t*>(a), sa, static_cast<const uint16_t*>(b), sb,
                     0.0f, c, m * n, batch);
  }
  return gemm_f32(ta, tb, m, n, k, alpha, static_cast<const float*>(a), sa, static_cast<const float*>(b), sb, 0.0f, c,
                  m * n, batch);
}

// Element `e` of an operand of float32 or bf16 elements.
const void* at(const void* base, bool bf16, int64_t e) {
  return static_cast<const char*>(base) + e * (bf16 ? 2 : 4);
}

// Sub-buffers of one workspace() allocation, each 256-byte aligned.
struct Layout {
  size_t bytes = 0;
  size_t take(size_t n) {
    const size_t off = bytes;
    bytes += (n + 255) / 256 * 256;
    return off;
  }
};

bool dims_ok(const AttentionDims& d) {
  if (d.batch < 0 || d.q_heads < 0 || d.kv_heads < 0 || d.q_len < 0 || d.kv_len < 0 || d.head_dim < 0 ||
      d.v_head_dim < 0) {
    return false;
  }
  if (d.kv_heads == 0) return d.q_heads == 0;
  if (d.q_heads % d.kv_heads != 0) return false;
  const int64_t rows_per_unit = (d.q_heads / d.kv_heads) * d.q_len;  // the m or k of a product: int for cuBLAS
  return rows_per_unit <= INT_MAX && d.kv_len <= INT_MAX && d.head_dim <= INT_MAX && d.v_head_dim <= INT_MAX &&
         d.batch * d.kv_heads <= INT_MAX;
}

// Units (batch, kv head) per chunk: score-sized scratch of `bytes_per_score` bytes per score within kScoreBudget, and
// at most kMaxChunkRows rows; at least one.
int64_t chunk_units(int64_t units, int64_t rows_per_unit, int64_t kv_len, size_t bytes_per_score) {
  const double per_unit = static_cast<double>(rows_per_unit) * static_cast<double>(kv_len) * bytes_per_score;
  int64_t c = per_unit > 0 ? static_cast<int64_t>(static_cast<double>(kScoreBudget) / per_unit) : units;
  if (rows_per_unit > 0 && c > kMaxChunkRows / rows_per_unit) c = kMaxChunkRows / rows_per_unit;
  if (c > units) c = units;
  if (c < 1) c = 1;
  return c;
}

Rows rows_of(const AttentionDims& d) {
  Rows r;
  r.q_len = d.q_len;
  r.kv_len = d.kv_len;
  r.q_heads = d.q_heads;
  r.causal = d.causal;
  r.mask = d.mask;
  r.mask_is_bool = d.mask_is_bool;
  for (int x = 0; x < 4; ++x) r.ms[x] = d.mask_strides[x];
  return r;
}

bool zero(float* p, int64_t n) {
  return n <= 0 || cudaMemsetAsync(p, 0, sizeof(float) * n, launch_stream()) == cudaSuccess;
}

// x [B, A1, A2, D] -> y [B, A2, A1, D]: the 3-D form's operands to head-major and back (v1's path for seq_major).
__global__ void swap_middle_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t B, int64_t A1, int64_t A2,
                            int64_t D) {
  const int64_t n = B * A1 * A2 * D;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t d = i % D, t = i / D, a2 = t % A2, t2 = t / A2, a1 = t2 % A1, b = t2 / A1;
    y[((b * A2 + a2) * A1 + a1) * D + d] = x[i];
  }
}

bool swap_middle(const float* x, float* y, int64_t B, int64_t A1, int64_t A2, int64_t D) {
  const int64_t n = B * A1 * A2 * D;
  if (n == 0) return true;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, int64_t{detail::num_sms()} * 16);
  swap_middle_kernel<<<static_cast<unsigned>(blocks), 256, 0, launch_stream()>>>(x, y, B, A1, A2, D);
  return launched();
}

// v1's head-major copies of seq_major operands: its own grow-only buffer (v1 itself uses workspace()).
float* layout_scratch(int64_t floats) {
  static GrowBuffer buf;
  return buf.get_as<float>(static_cast<size_t>(floats));
}

}  // namespace

bool attention_f32(const AttentionDims& d, const float* q, const float* k, const float* v, float* y, float* lse) {
  if (!dims_ok(d)) return false;
  if (cudnn_attention_separate_supported(d))
    return cudnn_attention_separate(d, {q, false}, {k, false}, {v, false}, y, false, lse);
  if (flash_attention_eligible(d, false)) return flash_attention_f32(d, q, k, v, y, lse);
  if (lse) return false;  // v1 does not produce the row statistics
  if (d.seq_major) {
    const int64_t B = d.batch, S = d.q_len, L = d.kv_len, Hq = d.q_heads, Hkv = d.kv_heads;
    const int64_t nq = B * S * Hq * d.head_dim, nk = B * L * Hkv * d.head_dim, nv = B * L * Hkv * d.v_head_dim,
                  ny = B * S * Hq * d.v_head_dim;
    float* q4 = layout_scratch(nq + nk + nv + ny);
    if (!q4) return false;
    float *k4 = q4 + nq, *v4 = k4 + nk, *y4 = v4 + nv;
    AttentionDims d4 = d;
    d4.seq_major = false;
    return swap_middle(q, q4, B, S, Hq, d.head_dim) && swap_middle(k, k4, B, L, Hkv, d.head_dim) &&
           swap_middle(v, v4, B, L, Hkv, d.v_head_dim) && attention_f32(d4, q4, k4, v4, y4) &&
           swap_middle(y4, y, B, Hq, S, d.v_head_dim);
  }
  const int64_t B = d.batch, Hq = d.q_heads, Hkv = d.kv_heads, S = d.q_len, L = d.kv_len, D = d.head_dim,
                Dv = d.v_head_dim;
  const int64_t y_numel = B * Hq * S * Dv;
  if (y_numel == 0) return true;
  if (L == 0) return zero(y, y_numel);  // no key: every row fully masked
  const int64_t G = Hq / Hkv, units = B * Hkv, rows_u = G * S;
  const bool bf = math_mode() == MathMode::kBf16;
  const int64_t cu = chunk_units(units, rows_u, L, bf ? 6 : 4);
  const size_t scores = static_cast<size_t>(cu * rows_u * L);

  Layout lay;
  const size_t o_q16 = bf ? lay.take(2 * static_cast<size_t>(B * Hq * S * D)) : 0;
  const size_t o_k16 = bf ? lay.take(2 * static_cast<size_t>(units * L * D)) : 0;
  const size_t o_v16 = bf ? lay.take(2 * static_cast<size_t>(units * L * Dv)) : 0;
  const size_t o_s = lay.take(4 * scores);
  const size_t o_p16 = bf ? lay.take(2 * scores) : 0;
  char* ws = static_cast<char*>(workspace(lay.bytes));
  if (!ws) return false;
  float* sc = reinterpret_cast<float*>(ws + o_s);
  uint16_t* p16 = bf ? reinterpret_cast<uint16_t*>(ws + o_p16) : nullptr;
  const void *qa = q, *ka = k, *va = v;
  if (bf) {
    uint16_t* q16 = reinterpret_cast<uint16_t*>(ws + o_q16);
    uint16_t* k16 = reinterpret_cast<uint16_t*>(ws + o_k16);
    uint16_t* v16 = reinterpret_cast<uint16_t*>(ws + o_v16);
    if (!to_bf16(q, q16, B * Hq * S * D) || !to_bf16(k, k16, units * L * D) || !to_bf16(v, v16, units * L * Dv)) {
      return false;
    }
    qa = q16;
    ka = k16;
    va = v16;
  }
  Rows r = rows_of(d);
  for (int64_t u0 = 0; u0 < units; u0 += cu) {
    const int64_t nu = units - u0 < cu ? units - u0 : cu;
    // S[u] = scale * Q[u] K[u]^T: [G*S, D] x [D, L]
    if (!product(bf, false, true, rows_u, L, D, d.scale, at(qa, bf, u0 * rows_u * D), rows_u * D,
                 at(ka, bf, u0 * L * D), L * D, sc, nu)) {
      return false;
    }
    r.row0 = u0 * rows_u;
    if (!softmax_rows(sc, p16, !bf, r, nu * rows_u)) return false;
    // Y[u] = P[u] V[u]: [G*S, L] x [L, Dv]
    const void* pa = bf ? static_cast<const void*>(p16) : sc;
    if (!product(bf, false, false, rows_u, Dv, L, 1.0f, pa, rows_u * L, at(va, bf, u0 * L * Dv), L * Dv,
                 y + u0 * rows_u * Dv, nu)) {
      return false;
    }
  }
  return launched();
}

bool attention_grad_f32(const AttentionDims& d, const float* q, const float* k, const float* v, const float* dy,
                        float* dq, float* dk, float* dv, const float* y, const float* lse) {
  if (!dims_ok(d)) return false;
  if (cudnn_attention_separate_supported(d)) {
    return cudnn_attention_separate_grad(d, {q, false}, {k, false}, {v, false}, {dy, false}, dq, dk, dv, false,
                                         {y, false}, lse);
  }
  if (flash_attention_eligible(d, true)) return flash_attention_grad_f32(d, q, k, v, dy, dq, dk, dv, y, lse);
  if (d.seq_major) {
    const int64_t B = d.batch, S = d.q_len, L = d.kv_len, Hq = d.q_heads, Hkv = d.kv_heads, D = d.head_dim,
                  Dv = d.v_head_dim;
    const int64_t nq = B * S * Hq * D, nk = B * L * Hkv * D, nv = B * L * Hkv * Dv, ny = B * S * Hq * Dv;
    float* q4 = layout_scratch(2 * (nq + nk + nv) + ny);
    if (!q4) return false;
    float *k4 = q4 + nq, *v4 = k4 + nk, *dy4 = v4 + nv, *dq4 = dy4 + ny, *dk4 = dq4 + nq, *dv4 = dk4 + nk;
    AttentionDims d4 = d;
    d4.seq_major = false;
    return swap_middle(q, q4, B, S, Hq, D) && swap_middle(k, k4, B, L, Hkv, D) && swap_middle(v, v4, B, L, Hkv, Dv) &&
           swap_middle(dy, dy4, B, S, Hq, Dv) && attention_grad_f32(d4, q4, k4, v4, dy4, dq4, dk4, dv4) &&
           swap_middle(dq4, dq, B, Hq, S, D) && swap_middle(dk4, dk, B, Hkv, L, D) &&
           swap_middle(dv4, dv, B, Hkv, L, Dv);
  }
  const int64_t B = d.batch, Hq = d.q_heads, Hkv = d.kv_heads, S = d.q_len, L = d.kv_len, D = d.head_dim,
                Dv = d.v_head_dim;
  const int64_t units = B * Hkv;
  if (B * Hq * S == 0 || L == 0) {
    // No query row or no key: every gradient is zero.
    return zero(dq, B * Hq * S * D) && zero(dk, units * L * D) && zero(dv, units * L * Dv);
  }
  const int64_t G = Hq / Hkv, rows_u = G * S;
  const bool bf = math_mode() == MathMode::kBf16;
  // Per score: P float32 (4) and dP / dS float32 (4); kBf16 adds P then dS in bf16 (2, one buffer).
  const int64_t cu = chunk_units(units, rows_u, L, bf ? 10 : 8);
  const size_t scores = static_cast<size_t>(cu * rows_u * L);

  Layout lay;
  const size_t o_q16 = bf ? lay.take(2 * static_cast<size_t>(B * Hq * S * D)) : 0;
  const size_t o_k16 = bf ? lay.take(2 * static_cast<size_t>(units * L * D)) : 0;
  const size_t o_v16 = bf ? lay.take(2 * static_cast<size_t>(units * L * Dv)) : 0;
  const size_t o_dy16 = bf ? lay.take(2 * static_cast<size_t>(B * Hq * S * Dv)) : 0;
  const size_t o_s = lay.take(4 * scores);
  const size_t o_dp = lay.take(4 * scores);
  const size_t o_p16 = bf ? lay.take(2 * scores) : 0;
  char* ws = static_cast<char*>(workspace(lay.bytes));
  if (!ws) return false;
  float* sc = reinterpret_cast<float*>(ws + o_s);   // S, then P (float32)
  float* dpb = reinterpret_cast<float*>(ws + o_dp);  // dP, then dS in place (float32 modes)
  uint16_t* p16 = bf ? reinterpret_cast<uint16_t*>(ws + o_p16) : nullptr;  // P, then dS (kBf16)
  const void *qa = q, *ka = k, *va = v, *dya = dy;
  if (bf) {
    uint16_t* q16 = reinterpret_cast<uint16_t*>(ws + o_q16);
    uint16_t* k16 = reinterpret_cast<uint16_t*>(ws + o_k16);
    uint16_t* v16 = reinterpret_cast<uint16_t*>(ws + o_v16);
    uint16_t* dy16 = reinterpret_cast<uint16_t*>(ws + o_dy16);
    if (!to_bf16(q, q16, B * Hq * S * D) || !to_bf16(k, k16, units * L * D) || !to_bf16(v, v16, units * L * Dv) ||
        !to_bf16(dy, dy16, B * Hq * S * Dv)) {
      return false;
    }
    qa = q16;
    ka = k16;
    va = v16;
    dya = dy16;
  }
  Rows r = rows_of(d);
  for (int64_t u0 = 0; u0 < units; u0 += cu) {
    const int64_t nu = units - u0 < cu ? units - u0 : cu;
    const void* q_u = at(qa, bf, u0 * rows_u * D);
    const void* k_u = at(ka, bf, u0 * L * D);
    const void* v_u = at(va, bf, u0 * L * Dv);
    const void* dy_u = at(dya, bf, u0 * rows_u * Dv);
    // S = scale * Q K^T, P = softmax(mask(S)): float32 over S, and bf16 in kBf16 mode.
    if (!product(bf, false, true, rows_u, L, D, d.scale, q_u, rows_u * D, k_u, L * D, sc, nu)) return false;
    r.row0 = u0 * rows_u;
    if (!softmax_rows(sc, p16, true, r, nu * rows_u)) return false;
    // dP = dY V^T: [G*S, Dv] x [Dv, L]
    if (!product(bf, false, true, rows_u, L, Dv, 1.0f, dy_u, rows_u * Dv, v_u, L * Dv, dpb, nu)) return false;
    // dV = P^T dY: [L, G*S] x [G*S, Dv] (the group's heads summed through k)
    const void* pa = bf ? static_cast<const void*>(p16) : sc;
    if (!product(bf, true, false, L, Dv, rows_u, 1.0f, pa, rows_u * L, dy_u, rows_u * Dv, dv + u0 * L * Dv, nu)) {
      return false;
    }
    // dS = P * (dP - rowsum(P dP)): in place over dP, or bf16 over P's bf16 copy (read by dV above, stream order).
    if (!softmax_grad_rows(sc, dpb, p16, r, nu * rows_u)) return false;
    const void* dsa = bf ? static_cast<const void*>(p16) : dpb;
    // dQ = scale * dS K: [G*S, L] x [L, D]
    if (!product(bf, false, false, rows_u, D, L, d.scale, dsa, rows_u * L, k_u, L * D, dq + u0 * rows_u * D, nu)) {
      return false;
    }
    // dK = scale * dS^T Q: [L, G*S] x [G*S, D]
    if (!product(bf, true, false, L, D, rows_u, d.scale, dsa, rows_u * L, q_u, rows_u * D, dk + u0 * L * D, nu)) {
      return false;
    }
  }
  return launched();
}

namespace {

// float32 copies of bf16 operands for the paths that compute on float32 (grow-only, one buffer per role).
float* widened(const uint16_t* x, int64_t n, GrowBuffer& buf) {
  if (!x) return nullptr;
  float* w = buf.get_as<float>(static_cast<size_t>(n));
  return w && from_bf16(x, w, n) ? w : nullptr;
}

}  // namespace

bool attention_bf16(const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* y,
                    float* lse) {
  if (!dims_ok(d)) return false;
  if (cudnn_attention_separate_supported(d))
    return cudnn_attention_separate(d, {q, true}, {k, true}, {v, true}, y, true, lse);
  static GrowBuffer bq, bk, bv, by;
  const int64_t nq = d.batch * d.q_heads * d.q_len * d.head_dim, nk = d.batch * d.kv_heads * d.kv_len * d.head_dim,
                nv = d.batch * d.kv_heads * d.kv_len * d.v_head_dim, ny = d.batch * d.q_heads * d.q_len * d.v_head_dim;
  const float *q32 = widened(q, nq, bq), *k32 = widened(k, nk, bk), *v32 = widened(v, nv, bv);
  float* y32 = by.get_as<float>(static_cast<size_t>(ny));
  if (!q32 || !k32 || !v32 || !y32) return false;
  return attention_f32(d, q32, k32, v32, y32, lse) && to_bf16(y32, y, ny);
}

bool attention_grad_bf16(const AttentionDims& d, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                         const uint16_t* dy, uint16_t* dq, uint16_t* dk, uint16_t* dv, const uint16_t* y,
                         const float* lse) {
  if (!dims_ok(d)) return false;
  if (cudnn_attention_separate_supported(d)) {
    return cudnn_attention_separate_grad(d, {q, true}, {k, true}, {v, true}, {dy, true}, dq, dk, dv, true, {y, true},
                                         lse);
  }
  static GrowBuffer bq, bk, bv, bdy, by, bdq, bdk, bdv;
  const int64_t nq = d.batch * d.q_heads * d.q_len * d.head_dim, nk = d.batch * d.kv_heads * d.kv_len * d.head_dim,
                nv = d.batch * d.kv_heads * d.kv_len * d.v_head_dim, ny = d.batch * d.q_heads * d.q_len * d.v_head_dim;
  const float *q32 = widened(q, nq, bq), *k32 = widened(k, nk, bk), *v32 = widened(v, nv, bv),
              *dy32 = widened(dy, ny, bdy), *y32 = widened(y, ny, by);
  float *dq32 = bdq.get_as<float>(static_cast<size_t>(nq)), *dk32 = bdk.get_as<float>(static_cast<size_t>(nk)),
        *dv32 = bdv.get_as<float>(static_cast<size_t>(nv));
  if (!q32 || !k32 || !v32 || !dy32 || (y && !y32) || !dq32 || !dk32 || !dv32) return false;
  return attention_grad_f32(d, q32, k32, v32, dy32, dq32, dk32, dv32, y32, y ? lse : nullptr) &&
         to_bf16(dq32, dq, nq) && to_bf16(dk32, dk, nk) && to_bf16(dv32, dv, nv);
}

}  // namespace gv::cuda
