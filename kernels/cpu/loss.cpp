#include "kernels/cpu/loss.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

namespace gv::cpu {
namespace {

// The label at flat position p, or -1 for an ignored position; sets `bad` (keeping the first) when out of range.
template <typename L>
int64_t label_at(const L* labels, const LossShape& s, int64_t p, std::atomic<int64_t>& bad) {
  const int64_t y = static_cast<int64_t>(labels[p]);
  if (s.has_ignore && y == s.ignore_index) return -1;
  if (y < 0 || y >= s.c) {
    int64_t cur = bad.load();
    while ((cur < 0 || p < cur) && !bad.compare_exchange_weak(cur, p)) {
    }
    return -1;
  }
  return y;
}

// Max and log(sum(exp(x - max))) of the c strided scores of one position.
template <typename T>
void row_log_sum_exp(const T* x, int64_t c, int64_t stride, double& mx, double& log_sum) {
  mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < c; ++j) mx = std::max(mx, static_cast<double>(x[j * stride]));
  if (std::isinf(mx)) mx = 0.0;
  // exp in T (float exp for float scores, as PyTorch), sums in double.
  const T shift = static_cast<T>(mx);
  double sum = 0.0;
  for (int64_t j = 0; j < c; ++j) sum += std::exp(x[j * stride] - shift);
  log_sum = std::log(sum);
}

bool parallel_worth(const LossShape& s) { return s.n * s.d > 1 && s.n * s.c * s.d > 16384; }

}  // namespace

template <typename T, typename L>
int64_t softmax_cross_entropy(const T* scores, const L* labels, const T* weights, const LossShape& s,
                              double* position_loss, double* position_weight, T* log_prob) {
  std::atomic<int64_t> bad{-1};
  const int64_t positions = s.n * s.d;
#pragma omp parallel for if (parallel_worth(s)) schedule(static)
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t base = (p / s.d) * s.c * s.d + p % s.d;
    const T* x = scores + base;
    double mx, log_sum;
    row_log_sum_exp(x, s.c, s.d, mx, log_sum);
    if (log_prob) {
      for (int64_t j = 0; j < s.c; ++j) log_prob[base + j * s.d] = static_cast<T>(x[j * s.d] - mx - log_sum);
    }
    const int64_t y = label_at(labels, s, p, bad);
    const double w = y < 0 ? 0.0 : (weights ? static_cast<double>(weights[y]) : 1.0);
    position_weight[p] = w;
    position_loss[p] = y < 0 ? 0.0 : -w * (x[y * s.d] - mx - log_sum);
  }
  return bad.load();
}

template <typename T, typename L>
int64_t softmax_cross_entropy_backward(const T* scores, const L* labels, const T* weights, const LossShape& s,
                                       const T* dloss, bool dloss_per_position, double scale, const T* dlog_prob,
                                       T* dscores) {
  std::atomic<int64_t> bad{-1};
  const int64_t positions = s.n * s.d;
#pragma omp parallel for if (parallel_worth(s)) schedule(static)
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t base = (p / s.d) * s.c * s.d + p % s.d;
    const T* x = scores + base;
    T* dx = dscores + base;
    double mx, log_sum;
    row_log_sum_exp(x, s.c, s.d, mx, log_sum);
    const int64_t y = label_at(labels, s, p, bad);
    double coef = 0.0;
    if (y >= 0 && dloss) {
      coef = static_cast<double>(dloss[dloss_per_position ? p : 0]) * scale * (weights ? weights[y] : 1.0);
    }
    double dlp_sum = 0.0;
    if (dlog_prob) {
      for (int64_t j = 0; j < s.c; ++j) dlp_sum += dlog_prob[base + j * s.d];
    }
    const T shift = static_cast<T>(mx + log_sum);
    for (int64_t j = 0; j < s.c; ++j) {
      const double prob = std::exp(x[j * s.d] - shift);
      double g = coef * (prob - (j == y ? 1.0 : 0.0));
      if (dlog_prob) g += dlog_prob[base + j * s.d] - prob * dlp_sum;
      dx[j * s.d] = static_cast<T>(g);
    }
  }
  return bad.load();
}

template <typename T, typename L>
int64_t nll_loss(const T* input, const L* labels, const T* weights, const LossShape& s, double* position_loss,
                 double* position_weight) {
  std::atomic<int64_t> bad{-1};
  const int64_t positions = s.n * s.d;
#pragma omp parallel for if (positions > 16384) schedule(static)
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t base = (p / s.d) * s.c * s.d + p % s.d;
    const int64_t y = label_at(labels, s, p, bad);
    const double w = y < 0 ? 0.0 : (weights ? static_cast<double>(weights[y]) : 1.0);
    position_weight[p] = w;
    position_loss[p] = y < 0 ? 0.0 : -w * input[base + y * s.d];
  }
  return bad.load();
}

template <typename T, typename L>
int64_t nll_loss_backward(const L* labels, const T* weights, const LossShape& s, const T* dloss,
                          bool dloss_per_position, double scale, T* dinput) {
  std::atomic<int64_t> bad{-1};
  std::memset(dinput, 0, sizeof(T) * s.n * s.c * s.d);
  const int64_t positions = s.n * s.d;
#pragma omp parallel for if (positions > 16384) schedule(static)
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t y = label_at(labels, s, p, bad);
    if (y < 0 || !dloss) continue;
    const double w = weights ? static_cast<double>(weights[y]) : 1.0;
    dinput[(p / s.d) * s.c * s.d + p % s.d + y * s.d] =
        static_cast<T>(-static_cast<double>(dloss[dloss_per_position ? p : 0]) * scale * w);
  }
  return bad.load();
}

template <typename T, typename L>
double loss_weight_total(const L* labels, const T* weights, const LossShape& s) {
  double total = 0.0;
  for (int64_t p = 0; p < s.n * s.d; ++p) {
    const int64_t y = static_cast<int64_t>(labels[p]);
    if ((s.has_ignore && y == s.ignore_index) || y < 0 || y >= s.c) continue;
    total += weights ? static_cast<double>(weights[y]) : 1.0;
  }
  return total;
}

#define GV_LOSS_INSTANTIATE(T, L)                                                                                   \
  template int64_t softmax_cross_entropy<T, L>(const T*, const L*, const T*, const LossShape&, double*, double*, T*); \
  template int64_t softmax_cross_entropy_backward<T, L>(const T*, const L*, const T*, const LossShape&, const T*,     \
                                                        bool, double, const T*, T*);                                \
  template int64_t nll_loss<T, L>(const T*, const L*, const T*, const LossShape&, double*, double*);                 \
  template int64_t nll_loss_backward<T, L>(const L*, const T*, const LossShape&, const T*, bool, double, T*);        \
  template double loss_weight_total<T, L>(const L*, const T*, const LossShape&);
GV_LOSS_INSTANTIATE(float, int32_t)
GV_LOSS_INSTANTIATE(float, int64_t)
GV_LOSS_INSTANTIATE(double, int32_t)
GV_LOSS_INSTANTIATE(double, int64_t)
#undef GV_LOSS_INSTANTIATE

}  // namespace gv::cpu
