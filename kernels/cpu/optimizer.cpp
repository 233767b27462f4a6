#include "kernels/cpu/optimizer.h"

#include <cmath>

namespace gv::cpu {

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& p) {
  const T decay = static_cast<T>(1.0 - p.lr * p.weight_decay);
  const T b2 = static_cast<T>(p.beta2);
  const T one_minus_b1 = static_cast<T>(1.0 - p.beta1), one_minus_b2 = static_cast<T>(1.0 - p.beta2);
  const double bc1 = 1.0 - std::pow(p.beta1, static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(p.beta2, static_cast<double>(p.step));
  const T step_size = static_cast<T>(p.lr / bc1);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  const T eps = static_cast<T>(p.eps);
  const T scale = static_cast<T>(p.grad_scale);
#pragma omp parallel for if (n > 65536) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i] * scale;
    T w = param[i] * decay;
    T mi = m[i] + one_minus_b1 * (g - m[i]);
    T vi = v[i] * b2 + one_minus_b2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    T denom = std::sqrt(vi) / bc2_sqrt + eps;
    param[i] = w - step_size * (mi / denom);
  }
}

template <typename T>
void sgd_update(T* param, const T* grad, T* buf, int64_t n, const SgdParams& p) {
  const T lr = static_cast<T>(p.lr), mom = static_cast<T>(p.momentum), damp = static_cast<T>(1.0 - p.dampening);
  const T wd = static_cast<T>(p.weight_decay), scale = static_cast<T>(p.grad_scale);
  const bool first = p.step <= 1;
#pragma omp parallel for if (n > 65536) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i] * scale;
    if (wd != T(0)) g += wd * param[i];
    if (mom != T(0)) {
      T b = first ? g : mom * buf[i] + damp * g;
      buf[i] = b;
      g = p.nesterov ? g + mom * b : b;
    }
    param[i] -= lr * g;
  }
}

template <typename T>
void accumulate(T* acc, const T* g, int64_t n) {
#pragma omp parallel for if (n > 65536) schedule(static)
  for (int64_t i = 0; i < n; ++i) acc[i] += g[i];
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  double s = 0.0;
#pragma omp parallel for reduction(+ : s) if (n > 65536) schedule(static)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return s;
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, const AdamWParams&);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t, const AdamWParams&);
template void sgd_update<float>(float*, const float*, float*, int64_t, const SgdParams&);
template void sgd_update<double>(double*, const double*, double*, int64_t, const SgdParams&);
template void accumulate<float>(float*, const float*, int64_t);
template void accumulate<double>(double*, const double*, int64_t);
template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);

}  // namespace gv::cpu
