#include "kernels/cpu/norm.h"

#include <omp.h>

#include <cmath>
#include <vector>

namespace gv::cpu {
namespace {

// Two-pass mean and variance of one row (more accurate than E[x^2] - E[x]^2).
template <typename T>
void row_moments(const T* x, int64_t cols, double eps, double& mean, double& inv_std) {
  double s = 0.0;
  for (int64_t j = 0; j < cols; ++j) s += x[j];
  mean = cols ? s / static_cast<double>(cols) : 0.0;
  double v = 0.0;
  for (int64_t j = 0; j < cols; ++j) {
    const double d = x[j] - mean;
    v += d * d;
  }
  v = cols ? v / static_cast<double>(cols) : 0.0;
  inv_std = 1.0 / std::sqrt(v + eps);
}

template <typename T>
double row_inv_rms(const T* x, int64_t cols, double eps) {
  double s = 0.0;
  for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(x[j]) * x[j];
  return 1.0 / std::sqrt((cols ? s / static_cast<double>(cols) : 0.0) + eps);
}

// Column sums over all rows, parallel over rows: each thread adds into its own partial row, the partials are summed
// in thread order afterwards (deterministic for a given thread count).
class ColumnSums {
 public:
  ColumnSums(int64_t cols, int count) : cols_(cols), count_(count) {}
  void begin(int threads) { part_.assign(static_cast<size_t>(threads) * count_ * cols_, 0.0); threads_ = threads; }
  double* row(int thread, int which) { return part_.data() + (static_cast<size_t>(thread) * count_ + which) * cols_; }
  template <typename T>
  void finish(int which, T* out) {
    if (!out) return;
    for (int64_t j = 0; j < cols_; ++j) {
      double s = 0.0;
      for (int t = 0; t < threads_; ++t) s += row(t, which)[j];
      out[j] = static_cast<T>(s);
    }
  }

 private:
  int64_t cols_;
  int count_, threads_ = 1;
  std::vector<double> part_;
};

bool parallel_worth(int64_t rows, int64_t cols) { return rows > 1 && rows * cols > 16384; }

}  // namespace

template <typename T, typename U>
void layer_norm_stats(const T* x, U* mean, U* inv_std, int64_t rows, int64_t cols, double eps) {
#pragma omp parallel for if (parallel_worth(rows, cols)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    double m, is;
    row_moments(x + r * cols, cols, eps, m, is);
    mean[r] = static_cast<U>(m);
    inv_std[r] = static_cast<U>(is);
  }
}

template <typename T, typename U>
void layer_norm(const T* x, const T* scale, const T* bias, T* y, U* mean, U* inv_std, int64_t rows, int64_t cols,
                double eps) {
#pragma omp parallel for if (parallel_worth(rows, cols)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    double m, is;
    row_moments(xr, cols, eps, m, is);
    if (mean) mean[r] = static_cast<U>(m);
    if (inv_std) inv_std[r] = static_cast<U>(is);
    const T mt = static_cast<T>(m), ist = static_cast<T>(is);
    for (int64_t j = 0; j < cols; ++j) {
      const T v = (xr[j] - mt) * ist * scale[j];
      yr[j] = bias ? v + bias[j] : v;
    }
  }
}

// With xhat = (x - mean) * inv_std and g = dy * scale (per row, n = cols):
//   dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)) + dmean / n - dinv_std * inv_std^3 * (x - mean) / n
//   dscale = sum_rows dy * xhat, dbias = sum_rows dy.
template <typename T, typename U>
void layer_norm_backward(const T* dy, const T* x, const T* scale, const U* mean, const U* inv_std, const U* dmean,
                         const U* dinv_std, T* dx, T* dscale, T* dbias, int64_t rows, int64_t cols) {
  ColumnSums sums(cols, 2);
  const bool par = parallel_worth(rows, cols);
#pragma omp parallel if (par)
  {
#pragma omp single
    sums.begin(omp_get_num_threads());
    const int t = omp_get_thread_num();
    double* ds = sums.row(t, 0);
    double* db = sums.row(t, 1);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      const T* dyr = dy ? dy + r * cols : nullptr;
      T* dxr = dx + r * cols;
      const double m = mean[r], is = inv_std[r], n = static_cast<double>(cols);
      double sum_g = 0.0, sum_gx = 0.0;
      if (dyr) {
        for (int64_t j = 0; j < cols; ++j) {
          const double xh = (xr[j] - m) * is;
          const double g = static_cast<double>(dyr[j]) * scale[j];
          sum_g += g;
          sum_gx += g * xh;
          ds[j] += static_cast<double>(dyr[j]) * xh;
          db[j] += dyr[j];
        }
      }
      const double mg = sum_g / n, mgx = sum_gx / n;
      const double stat_shift = dmean ? dmean[r] / n : 0.0;
      const double stat_slope = dinv_std ? -static_cast<double>(dinv_std[r]) * is * is * is / n : 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        const double xc = xr[j] - m;
        const double g = dyr ? static_cast<double>(dyr[j]) * scale[j] : 0.0;
        dxr[j] = static_cast<T>(is * (g - mg - xc * is * mgx) + stat_shift + stat_slope * xc);
      }
    }
  }
  sums.finish(0, dscale);
  sums.finish(1, dbias);
}

template <typename T>
void rms_norm(const T* x, const T* scale, T* y, int64_t rows, int64_t cols, double eps) {
#pragma omp parallel for if (parallel_worth(rows, cols)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T is = static_cast<T>(row_inv_rms(xr, cols, eps));
    for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] * is * scale[j];
  }
}

// With xhat = x * inv_rms and g = dy * scale: dx = inv_rms * (g - xhat * mean(g * xhat)); dscale = sum_rows dy * xhat.
template <typename T>
void rms_norm_backward(const T* dy, const T* x, const T* scale, T* dx, T* dscale, int64_t rows, int64_t cols,
                       double eps) {
  ColumnSums sums(cols, 1);
#pragma omp parallel if (parallel_worth(rows, cols))
  {
#pragma omp single
    sums.begin(omp_get_num_threads());
    double* ds = sums.row(omp_get_thread_num(), 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      const T* dyr = dy + r * cols;
      T* dxr = dx + r * cols;
      const double is = row_inv_rms(xr, cols, eps);
      double sum_gx = 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        const double xh = xr[j] * is;
        sum_gx += static_cast<double>(dyr[j]) * scale[j] * xh;
        ds[j] += static_cast<double>(dyr[j]) * xh;
      }
      const double mgx = sum_gx / static_cast<double>(cols);
      for (int64_t j = 0; j < cols; ++j) {
        const double xh = xr[j] * is;
        dxr[j] = static_cast<T>(is * (static_cast<double>(dyr[j]) * scale[j] - xh * mgx));
      }
    }
  }
  sums.finish(0, dscale);
}

#define GV_NORM_INSTANTIATE(T, U)                                                                                  \
  template void layer_norm<T, U>(const T*, const T*, const T*, T*, U*, U*, int64_t, int64_t, double);            \
  template void layer_norm_backward<T, U>(const T*, const T*, const T*, const U*, const U*, const U*, const U*, T*, \
                                          T*, T*, int64_t, int64_t);                                             \
  template void layer_norm_stats<T, U>(const T*, U*, U*, int64_t, int64_t, double);
GV_NORM_INSTANTIATE(float, float)
GV_NORM_INSTANTIATE(float, double)
GV_NORM_INSTANTIATE(double, double)
#undef GV_NORM_INSTANTIATE

template void rms_norm<float>(const float*, const float*, float*, int64_t, int64_t, double);
template void rms_norm<double>(const double*, const double*, double*, int64_t, int64_t, double);
template void rms_norm_backward<float>(const float*, const float*, const float*, float*, float*, int64_t, int64_t,
                                       double);
template void rms_norm_backward<double>(const double*, const double*, const double*, double*, double*, int64_t,
                                        int64_t, double);

}  // namespace gv::cpu
