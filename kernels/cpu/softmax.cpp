#include "kernels/cpu/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace gv::cpu {
namespace {

// One contiguous row of n elements (inner == 1), the common case (attention, logits).
template <typename T>
void softmax_row(const T* x, T* y, int64_t n, bool log) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, x[j]);
  if (mx == -std::numeric_limits<T>::infinity()) mx = 0;  // a row of -inf: keep exp(x - mx) defined
  double sum = 0.0;
  if (log) {
    for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] - mx);
    const T shift = mx + static_cast<T>(std::log(sum));
    for (int64_t j = 0; j < n; ++j) y[j] = x[j] - shift;
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const T e = std::exp(x[j] - mx);
      y[j] = e;
      sum += e;
    }
    const T inv = static_cast<T>(1.0 / sum);
    for (int64_t j = 0; j < n; ++j) y[j] *= inv;
  }
}

// One [n, inner] block: the axis is strided; keep per-column running values in small arrays.
template <typename T>
void softmax_block(const T* x, T* y, int64_t n, int64_t inner, bool log, std::vector<T>& mx, std::vector<double>& sum) {
  mx.assign(inner, -std::numeric_limits<T>::infinity());
  sum.assign(inner, 0.0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < inner; ++k) mx[k] = std::max(mx[k], x[j * inner + k]);
  for (int64_t k = 0; k < inner; ++k)
    if (mx[k] == -std::numeric_limits<T>::infinity()) mx[k] = 0;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t k = 0; k < inner; ++k) sum[k] += std::exp(x[j * inner + k] - mx[k]);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t k = 0; k < inner; ++k) {
      const int64_t i = j * inner + k;
      y[i] = log ? x[i] - mx[k] - static_cast<T>(std::log(sum[k])) : static_cast<T>(std::exp(x[i] - mx[k]) / sum[k]);
    }
  }
}

}  // namespace

template <typename T>
void softmax(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool log) {
  if (inner == 1) {
#pragma omp parallel for if (outer * n > 16384) schedule(static)
    for (int64_t o = 0; o < outer; ++o) softmax_row(x + o * n, y + o * n, n, log);
    return;
  }
#pragma omp parallel if (outer * n * inner > 16384)
  {
    std::vector<T> mx;
    std::vector<double> sum;
#pragma omp for schedule(static)
    for (int64_t o = 0; o < outer; ++o) softmax_block(x + o * n * inner, y + o * n * inner, n, inner, log, mx, sum);
  }
}

template <typename T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t outer, int64_t n, int64_t inner, bool log) {
#pragma omp parallel if (outer * n * inner > 16384)
  {
    std::vector<double> dot(inner);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < outer; ++o) {
      const int64_t base = o * n * inner;
      std::fill(dot.begin(), dot.end(), 0.0);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t k = 0; k < inner; ++k) {
          const int64_t i = base + j * inner + k;
          dot[k] += log ? dy[i] : dy[i] * y[i];
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t k = 0; k < inner; ++k) {
          const int64_t i = base + j * inner + k;
          const T s = static_cast<T>(dot[k]);
          dx[i] = log ? dy[i] - std::exp(y[i]) * s : y[i] * (dy[i] - s);
        }
      }
    }
  }
}

template void softmax<float>(const float*, float*, int64_t, int64_t, int64_t, bool);
template void softmax<double>(const double*, double*, int64_t, int64_t, int64_t, bool);
template void softmax_backward<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, bool);
template void softmax_backward<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, bool);

}  // namespace gv::cpu
