// Unary elementwise kernels: math functions, activations, Clip, predicates and the fused activation gradients.
#include <cmath>
#include <type_traits>

#include "kernels/cpu/elementwise.h"

namespace gv::cpu {
namespace {

constexpr double kSqrt2 = 1.4142135623730950488;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;    // 1 / sqrt(2 pi)
constexpr double kTwoOverSqrtPi = 1.1283791670955125739;  // 2 / sqrt(pi)
constexpr double kGeluTanhK = 0.79788456080286535588;     // sqrt(2 / pi)
constexpr double kGeluTanhC = 0.044715;

// y[i] = f(x[i]) over n elements, in parallel when large.
template <typename TIn, typename TOut, typename F>
void map(const TIn* x, TOut* y, int64_t n, F f) {
#pragma omp parallel for simd if (n > kParallelThreshold) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

// dx[i] = f(dy[i], v[i]).
template <typename T, typename F>
void map2(const T* dy, const T* v, T* dx, int64_t n, F f) {
#pragma omp parallel for simd if (n > kParallelThreshold) schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = f(dy[i], v[i]);
}

template <typename T>
T sigmoid(T x) {
  // Both branches keep exp's argument <= 0, so nothing overflows.
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

template <typename T>
void float_unary(UnaryOp op, const T* x, T* y, int64_t n, const UnaryParams& p) {
  const T alpha = static_cast<T>(p.alpha), beta = static_cast<T>(p.beta);
  switch (op) {
    case UnaryOp::kSqrt: map(x, y, n, [](T v) { return std::sqrt(v); }); break;
    case UnaryOp::kReciprocal: map(x, y, n, [](T v) { return T(1) / v; }); break;
    case UnaryOp::kExp: map(x, y, n, [](T v) { return std::exp(v); }); break;
    case UnaryOp::kLog: map(x, y, n, [](T v) { return std::log(v); }); break;
    case UnaryOp::kTanh: map(x, y, n, [](T v) { return std::tanh(v); }); break;
    case UnaryOp::kErf: map(x, y, n, [](T v) { return std::erf(v); }); break;
    case UnaryOp::kSigmoid: map(x, y, n, [](T v) { return sigmoid(v); }); break;
    case UnaryOp::kCos: map(x, y, n, [](T v) { return std::cos(v); }); break;
    case UnaryOp::kSin: map(x, y, n, [](T v) { return std::sin(v); }); break;
    case UnaryOp::kFloor: map(x, y, n, [](T v) { return std::floor(v); }); break;
    case UnaryOp::kCeil: map(x, y, n, [](T v) { return std::ceil(v); }); break;
    case UnaryOp::kRound: map(x, y, n, [](T v) { return std::nearbyint(v); }); break;
    case UnaryOp::kGelu:
      map(x, y, n, [](T v) { return T(0.5) * v * (T(1) + std::erf(v / T(kSqrt2))); });
      break;
    case UnaryOp::kGeluTanh:
      // x/2 (1 + tanh u) == x sigmoid(2u), and exp is several times cheaper than tanh.
      map(x, y, n, [](T v) { return v * sigmoid(T(2 * kGeluTanhK) * (v + T(kGeluTanhC) * v * v * v)); });
      break;
    case UnaryOp::kSoftplus:
      // log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
      map(x, y, n, [](T v) { return std::max(v, T(0)) + std::log1p(std::exp(-std::fabs(v))); });
      break;
    case UnaryOp::kLeakyRelu: map(x, y, n, [alpha](T v) { return v < T(0) ? alpha * v : v; }); break;
    case UnaryOp::kHardSigmoid:
      map(x, y, n, [alpha, beta](T v) { return std::max(T(0), std::min(T(1), alpha * v + beta)); });
      break;
    default: break;
  }
}

}  // namespace

template <typename T>
void unary(UnaryOp op, const T* x, T* y, int64_t n, const UnaryParams& p) {
  switch (op) {
    case UnaryOp::kNeg:
      if constexpr (std::is_integral_v<T>) {
        // Negate through the unsigned type so that the most negative value wraps instead of overflowing.
        using U = std::make_unsigned_t<T>;
        map(x, y, n, [](T v) { return static_cast<T>(U(0) - static_cast<U>(v)); });
      } else {
        map(x, y, n, [](T v) { return -v; });
      }
      break;
    case UnaryOp::kAbs:
      if constexpr (std::is_unsigned_v<T>) {
        map(x, y, n, [](T v) { return v; });
      } else if constexpr (std::is_integral_v<T>) {
        using U = std::make_unsigned_t<T>;
        map(x, y, n, [](T v) { return v < 0 ? static_cast<T>(U(0) - static_cast<U>(v)) : v; });
      } else {
        map(x, y, n, [](T v) { return std::fabs(v); });
      }
      break;
    case UnaryOp::kSign:
      // NaN stays NaN (numpy.sign).
      map(x, y, n, [](T v) { return v > T(0) ? T(1) : (v < T(0) ? static_cast<T>(-1) : v); });
      break;
    case UnaryOp::kRelu: map(x, y, n, [](T v) { return v > T(0) ? v : (v == v ? T(0) : v); }); break;
    default:
      if constexpr (std::is_floating_point_v<T>) float_unary(op, x, y, n, p);
      break;
  }
}

template <typename T>
void clip(const T* x, T* y, int64_t n, T lo, T hi) {
  map(x, y, n, [lo, hi](T v) {
    const T t = v < lo ? lo : v;
    return t > hi ? hi : t;
  });
}

template <typename T>
void is_nan(const T* x, uint8_t* y, int64_t n) {
  map(x, y, n, [](T v) { return static_cast<uint8_t>(std::isnan(v)); });
}

template <typename T>
void is_inf(const T* x, uint8_t* y, int64_t n, bool detect_negative, bool detect_positive) {
  map(x, y, n, [=](T v) {
    return static_cast<uint8_t>(std::isinf(v) && (v > 0 ? detect_positive : detect_negative));
  });
}

void logical_not(const uint8_t* x, uint8_t* y, int64_t n) {
  map(x, y, n, [](uint8_t v) { return static_cast<uint8_t>(v == 0); });
}

template <typename T>
void scale(T* x, int64_t n, double s) {
  const T f = static_cast<T>(s);
  map(x, x, n, [f](T v) { return v * f; });
}

template <typename T>
void activation_grad(ActivationGrad op, const T* dy, const T* v, T* dx, int64_t n) {
  switch (op) {
    case ActivationGrad::kSigmoid: map2(dy, v, dx, n, [](T g, T y) { return g * y * (T(1) - y); }); break;
    case ActivationGrad::kTanh: map2(dy, v, dx, n, [](T g, T y) { return g * (T(1) - y * y); }); break;
    case ActivationGrad::kErf:
      map2(dy, v, dx, n, [](T g, T x) { return g * T(kTwoOverSqrtPi) * std::exp(-x * x); });
      break;
    case ActivationGrad::kGelu:
      // d/dx [x Phi(x)] = Phi(x) + x phi(x)
      map2(dy, v, dx, n, [](T g, T x) {
        const T cdf = T(0.5) * (T(1) + std::erf(x / T(kSqrt2)));
        const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
        return g * (cdf + x * pdf);
      });
      break;
    case ActivationGrad::kGeluTanh:
      // y = x/2 (1 + tanh u), u = k (x + c x^3): y' = (1 + t)/2 + x/2 (1 - t^2) u'. With s = sigmoid(2u):
      // (1 + t)/2 = s and (1 - t^2)/2 = 2 s (1 - s).
      map2(dy, v, dx, n, [](T g, T x) {
        const T x2 = x * x;
        const T s = sigmoid(T(2 * kGeluTanhK) * (x + T(kGeluTanhC) * x2 * x));
        const T du = T(kGeluTanhK) * (T(1) + T(3 * kGeluTanhC) * x2);
        return g * (s + T(2) * x * s * (T(1) - s) * du);
      });
      break;
  }
}

#define GV_INSTANTIATE_UNARY(T) \
  template void unary<T>(UnaryOp, const T*, T*, int64_t, const UnaryParams&); \
  template void clip<T>(const T*, T*, int64_t, T, T);
GV_INSTANTIATE_UNARY(float)
GV_INSTANTIATE_UNARY(double)
GV_INSTANTIATE_UNARY(int64_t)
GV_INSTANTIATE_UNARY(int32_t)
GV_INSTANTIATE_UNARY(int8_t)
GV_INSTANTIATE_UNARY(uint8_t)
#undef GV_INSTANTIATE_UNARY

#define GV_INSTANTIATE_FLOAT(T)                                        \
  template void is_nan<T>(const T*, uint8_t*, int64_t);                \
  template void is_inf<T>(const T*, uint8_t*, int64_t, bool, bool);    \
  template void scale<T>(T*, int64_t, double);                         \
  template void activation_grad<T>(ActivationGrad, const T*, const T*, T*, int64_t);
GV_INSTANTIATE_FLOAT(float)
GV_INSTANTIATE_FLOAT(double)
#undef GV_INSTANTIATE_FLOAT

}  // namespace gv::cpu
