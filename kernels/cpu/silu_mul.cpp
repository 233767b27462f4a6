// SwiGLU's gated activation on the CPU (kernels/cpu/silu_mul.h).
#include "kernels/cpu/silu_mul.h"

#include <cmath>

#include "kernels/cpu/broadcast.h"

namespace gv::cpu {
namespace {

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

}  // namespace

template <typename T>
void silu_mul(const T* a, const T* b, T* y, int64_t n) {
#pragma omp parallel for if (n > kParallelThreshold) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * sigmoid(a[i]) * b[i];
}

template <typename T>
void silu_mul_grad(const T* dy, const T* a, const T* b, T* da, T* db, int64_t n) {
#pragma omp parallel for if (n > kParallelThreshold) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T s = sigmoid(a[i]);
    if (da) da[i] = dy[i] * b[i] * s * (T(1) + a[i] * (T(1) - s));
    if (db) db[i] = dy[i] * a[i] * s;
  }
}

template void silu_mul<float>(const float*, const float*, float*, int64_t);
template void silu_mul<double>(const double*, const double*, double*, int64_t);
template void silu_mul_grad<float>(const float*, const float*, const float*, float*, float*, int64_t);
template void silu_mul_grad<double>(const double*, const double*, const double*, double*, double*, int64_t);

}  // namespace gv::cpu
