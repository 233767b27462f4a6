#include "kernels/cpu/dropout.h"

#include "kernels/cpu/random.h"

namespace gv::cpu {
namespace {
double keep_scale(double ratio) { return ratio >= 1.0 ? 0.0 : 1.0 / (1.0 - ratio); }
}  // namespace

template <typename T>
void dropout_forward(const T* x, T* y, uint8_t* mask, int64_t n, double ratio, uint64_t key) {
  const T scale = static_cast<T>(keep_scale(ratio));
#pragma omp parallel for if (n > 32768) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = uniform01(key, static_cast<uint64_t>(i)) >= ratio;
    y[i] = keep ? x[i] * scale : T(0);
    if (mask) mask[i] = keep;
  }
}

template <typename T>
void dropout_backward(const T* dy, const uint8_t* mask, T* dx, int64_t n, double ratio, uint64_t key) {
  const T scale = static_cast<T>(keep_scale(ratio));
#pragma omp parallel for if (n > 32768) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = mask ? mask[i] != 0 : uniform01(key, static_cast<uint64_t>(i)) >= ratio;
    dx[i] = keep ? dy[i] * scale : T(0);
  }
}

template void dropout_forward<float>(const float*, float*, uint8_t*, int64_t, double, uint64_t);
template void dropout_forward<double>(const double*, double*, uint8_t*, int64_t, double, uint64_t);
template void dropout_backward<float>(const float*, const uint8_t*, float*, int64_t, double, uint64_t);
template void dropout_backward<double>(const double*, const uint8_t*, double*, int64_t, double, uint64_t);

}  // namespace gv::cpu
