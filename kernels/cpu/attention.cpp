// Scaled dot-product attention on the CPU (see attention.h). Each (batch, head) pair is independent: the forward pass
// runs them in parallel; the backward pass runs (batch, key/value head) pairs in parallel, so that the query heads
// sharing a key/value head (grouped-query attention) add into its dK and dV from one thread. Query rows go in blocks
// of kRowBlock: scores of a block are one GEMM into a [rows, keys] scratch, never the whole [S, L] matrix. Products go
// through OpenBLAS (single-threaded inside the parallel region), like the MatMul nodes the pattern replaces; softmax
// sums are in double, like the Softmax kernel. Causal blocks stop at the last key any of their rows can see.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace gv::cpu {
namespace {

constexpr int64_t kRowBlock = 64;

// Keys [0, cols) that rows [i0, i0 + rows) of a block can see.
int64_t visible_keys(const AttentionShape& s, int64_t i0, int64_t rows) {
  return s.causal ? std::min(s.kv_len, i0 + rows) : s.kv_len;
}

// p[rows, cols] (row stride cols) holds scale * q . k on entry; leaves the probabilities: mask applied, causal keys
// j > i dropped, softmax per row; a row with every score masked becomes zeros. lse (may be null): each row's
// log-sum-exp of its masked scores (+inf for a fully masked row).
template <typename T>
void scores_to_probabilities(const AttentionShape& s, const AttentionMask& m, int64_t b, int64_t h, int64_t i0,
                             int64_t rows, int64_t cols, T* p, T* lse = nullptr) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    T* row = p + r * cols;
    if (m.data) {
      const int64_t base = b * m.strides[0] + h * m.strides[1] + i * m.strides[2];
      if (m.is_bool) {
        const uint8_t* keep = static_cast<const uint8_t*>(m.data) + base;
        for (int64_t j = 0; j < cols; ++j)
          if (!keep[j * m.strides[3]]) row[j] = kNegInf;
      } else {
        const T* add = static_cast<const T*>(m.data) + base;
        for (int64_t j = 0; j < cols; ++j) row[j] += add[j * m.strides[3]];
      }
    }
    if (s.causal) {
      for (int64_t j = i + 1; j < cols; ++j) row[j] = kNegInf;
    }
    T mx = kNegInf;
    for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, row[j]);
    if (mx == kNegInf) {
      std::fill(row, row + cols, T(0));
      if (lse) lse[r] = std::numeric_limits<T>::infinity();
      continue;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < cols; ++j) {
      const T e = std::exp(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    if (lse) lse[r] = static_cast<T>(mx + std::log(sum));
    const T inv = static_cast<T>(1.0 / sum);
    for (int64_t j = 0; j < cols; ++j) row[j] *= inv;
  }
}

template <typename T>
void forward(const AttentionShape& s, const T* q, const T* k, const T* v, const AttentionMask& m, T* y, T* lse) {
  const int64_t S = s.q_len, L = s.kv_len, D = s.head_dim, Dv = s.v_head_dim;
  const int64_t group = s.q_heads / s.kv_heads;
  const int64_t pairs = s.batch * s.q_heads;
#pragma omp parallel
  {
    std::vector<T> p(static_cast<size_t>(std::min(S, kRowBlock) * L));
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < pairs; ++bh) {
      const int64_t b = bh / s.q_heads, h = bh % s.q_heads, kvh = b * s.kv_heads + h / group;
      const T* qb = q + bh * S * D;
      const T* kb = k + kvh * L * D;
      const T* vb = v + kvh * L * Dv;
      T* yb = y + bh * S * Dv;
      for (int64_t i0 = 0; i0 < S; i0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, S - i0), cols = visible_keys(s, i0, rows);
        T* lse_rows = lse ? lse + bh * S + i0 : nullptr;
        if (cols == 0) {
          std::fill(yb + i0 * Dv, yb + (i0 + rows) * Dv, T(0));
          if (lse_rows) std::fill(lse_rows, lse_rows + rows, std::numeric_limits<T>::infinity());
          continue;
        }
        gemm<T>(false, true, rows, cols, D, s.scale, qb + i0 * D, kb, 0.0, p.data());
        scores_to_probabilities(s, m, b, h, i0, rows, cols, p.data(), lse_rows);
        gemm<T>(false, false, rows, Dv, cols, 1.0, p.data(), vb, 0.0, yb + i0 * Dv);
      }
    }
  }
}

template <typename T>
void backward(const AttentionShape& s, const T* q, const T* k, const T* v, const AttentionMask& m, const T* dy, T* dq,
              T* dk, T* dv) {
  const int64_t S = s.q_len, L = s.kv_len, D = s.head_dim, Dv = s.v_head_dim;
  const int64_t group = s.q_heads / s.kv_heads;
  const int64_t pairs = s.batch * s.kv_heads;
#pragma omp parallel
  {
    const size_t block = static_cast<size_t>(std::min(S, kRowBlock) * L);
    std::vector<T> p(block), dp(block);
#pragma omp for schedule(dynamic)
    for (int64_t bk = 0; bk < pairs; ++bk) {
      const int64_t b = bk / s.kv_heads, kh = bk % s.kv_heads;
      const T* kb = k + bk * L * D;
      const T* vb = v + bk * L * Dv;
      T* dkb = dk + bk * L * D;
      T* dvb = dv + bk * L * Dv;
      std::fill(dkb, dkb + L * D, T(0));
      std::fill(dvb, dvb + L * Dv, T(0));
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
        const int64_t bh = b * s.q_heads + h;
        const T* qb = q + bh * S * D;
        const T* dyb = dy + bh * S * Dv;
        T* dqb = dq + bh * S * D;
        for (int64_t i0 = 0; i0 < S; i0 += kRowBlock) {
          const int64_t rows = std::min(kRowBlock, S - i0), cols = visible_keys(s, i0, rows);
          if (cols == 0) {
            std::fill(dqb + i0 * D, dqb + (i0 + rows) * D, T(0));
            continue;
          }
          gemm<T>(false, true, rows, cols, D, s.scale, qb + i0 * D, kb, 0.0, p.data());
          scores_to_probabilities(s, m, b, h, i0, rows, cols, p.data());
          // dP = dY V^T; dS = P * (dP - sum_j dP * P) (softmax backward; masked entries have P = 0).
          gemm<T>(false, true, rows, cols, Dv, 1.0, dyb + i0 * Dv, vb, 0.0, dp.data());
          for (int64_t r = 0; r < rows; ++r) {
            T* pr = p.data() + r * cols;
            T* dr = dp.data() + r * cols;
            double dot = 0.0;
            for (int64_t j = 0; j < cols; ++j) dot += static_cast<double>(dr[j]) * pr[j];
            const T c = static_cast<T>(dot);
            for (int64_t j = 0; j < cols; ++j) dr[j] = pr[j] * (dr[j] - c);
          }
          // dV += P^T dY, dQ = scale dS K, dK += scale dS^T Q.
          gemm<T>(true, false, cols, Dv, rows, 1.0, p.data(), dyb + i0 * Dv, 1.0, dvb);
          gemm<T>(false, false, rows, D, cols, s.scale, dp.data(), kb, 0.0, dqb + i0 * D);
          gemm<T>(true, false, cols, D, rows, s.scale, dp.data(), qb + i0 * D, 1.0, dkb);
        }
      }
    }
  }
}

}  // namespace

void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       const AttentionMask& mask, float* y, float* lse) {
  forward(s, q, k, v, mask, y, lse);
}
void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                        const AttentionMask& mask, const float* dy, float* dq, float* dk, float* dv) {
  backward(s, q, k, v, mask, dy, dq, dk, dv);
}
void attention_forward(const AttentionShape& s, const double* q, const double* k, const double* v,
                       const AttentionMask& mask, double* y, double* lse) {
  forward(s, q, k, v, mask, y, lse);
}
void attention_backward(const AttentionShape& s, const double* q, const double* k, const double* v,
                        const AttentionMask& mask, const double* dy, double* dq, double* dk, double* dv) {
  backward(s, q, k, v, mask, dy, dq, dk, dv);
}

}  // namespace gv::cpu
