// Broadcasting elementwise kernels: arithmetic, comparisons and logic, Pow, Where.
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/cpu/elementwise.h"

namespace gv::cpu {
namespace {

// out[plan.numel] = f(a, b), a and b broadcast by the plan. Each row segment picks the loop for its innermost
// strides (1 = walk, 0 = repeat one element), so same-shape and scalar operands run as plain vector loops.
template <typename TA, typename TB, typename TOut, typename F>
void broadcast_binary(const TA* a, const TB* b, TOut* out, const BroadcastPlan& p, F f) {
  const bool wa = p.inner_stride(0) != 0, wb = p.inner_stride(1) != 0;
  for_each_segment(p, [&](const int64_t* off, int64_t o, int64_t len) {
    const TA* pa = a + off[0];
    const TB* pb = b + off[1];
    TOut* po = out + o;
    if (wa && wb) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) po[i] = f(pa[i], pb[i]);
    } else if (wa) {
      const TB vb = pb[0];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) po[i] = f(pa[i], vb);
    } else if (wb) {
      const TA va = pa[0];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) po[i] = f(va, pb[i]);
    } else {
      const TOut v = f(pa[0], pb[0]);
      for (int64_t i = 0; i < len; ++i) po[i] = v;
    }
  });
}

// Integer add/sub/mul through the unsigned type: wraps around instead of signed-overflow undefined behaviour.
template <typename T, typename F>
T wrapping(T a, T b, F f) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(f(static_cast<U>(a), static_cast<U>(b)));
  } else {
    return f(a, b);
  }
}

template <typename T>
T int_div(T a, T b) {
  if (b == T(0)) return T(0);
  if constexpr (std::is_signed_v<T>) {
    if (b == T(-1)) return wrapping(T(0), a, [](auto x, auto y) { return x - y; });  // MIN / -1 would trap
  }
  return static_cast<T>(a / b);
}

template <typename T>
T int_fmod(T a, T b) {
  if (b == T(0)) return T(0);
  if constexpr (std::is_signed_v<T>) {
    if (b == T(-1)) return T(0);
  }
  return static_cast<T>(a % b);
}

template <typename T>
T int_mod(T a, T b) {
  const T r = int_fmod(a, b);
  if constexpr (std::is_signed_v<T>) {
    if (r != T(0) && ((r < 0) != (b < 0))) return static_cast<T>(r + b);
  }
  return r;
}

template <typename T>
T float_mod(T a, T b) {
  const T r = std::fmod(a, b);
  return (r != T(0) && ((r < T(0)) != (b < T(0)))) ? r + b : r;
}

// b^e for integers, by squaring; a negative exponent gives trunc(1 / b^|e|).
template <typename TB, typename TE>
TB int_pow(TB b, TE e) {
  if constexpr (std::is_signed_v<TE>) {
    if (e < 0) {
      if (b == TB(1)) return TB(1);
      if constexpr (std::is_signed_v<TB>) {
        if (b == TB(-1)) return (e % 2 == 0) ? TB(1) : TB(-1);
      }
      return TB(0);
    }
  }
  using U = std::make_unsigned_t<TB>;
  U result = 1, base = static_cast<U>(b);
  for (uint64_t k = static_cast<uint64_t>(e); k; k >>= 1) {
    if (k & 1) result = static_cast<U>(result * base);
    base = static_cast<U>(base * base);
  }
  return static_cast<TB>(result);
}

}  // namespace

template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const BroadcastPlan& p) {
  switch (op) {
    case BinaryOp::kAdd:
      broadcast_binary(a, b, out, p, [](T x, T y) { return wrapping(x, y, [](auto u, auto v) { return u + v; }); });
      break;
    case BinaryOp::kSub:
      broadcast_binary(a, b, out, p, [](T x, T y) { return wrapping(x, y, [](auto u, auto v) { return u - v; }); });
      break;
    case BinaryOp::kMul:
      broadcast_binary(a, b, out, p, [](T x, T y) { return wrapping(x, y, [](auto u, auto v) { return u * v; }); });
      break;
    case BinaryOp::kDiv:
      if constexpr (std::is_integral_v<T>) broadcast_binary(a, b, out, p, int_div<T>);
      else broadcast_binary(a, b, out, p, [](T x, T y) { return x / y; });
      break;
    case BinaryOp::kMod:
      if constexpr (std::is_integral_v<T>) broadcast_binary(a, b, out, p, int_mod<T>);
      else broadcast_binary(a, b, out, p, float_mod<T>);
      break;
    case BinaryOp::kFMod:
      if constexpr (std::is_integral_v<T>) broadcast_binary(a, b, out, p, int_fmod<T>);
      else broadcast_binary(a, b, out, p, [](T x, T y) { return std::fmod(x, y); });
      break;
    case BinaryOp::kMax:
      // x != x: x is NaN; when y is NaN, x >= y is false and y (NaN) is taken.
      broadcast_binary(a, b, out, p, [](T x, T y) { return (x >= y || x != x) ? x : y; });
      break;
    case BinaryOp::kMin:
      broadcast_binary(a, b, out, p, [](T x, T y) { return (x <= y || x != x) ? x : y; });
      break;
  }
}

template <typename T>
void compare(CompareOp op, const T* a, const T* b, uint8_t* out, const BroadcastPlan& p) {
  auto as_bool = [](bool v) { return static_cast<uint8_t>(v); };
  switch (op) {
    case CompareOp::kEqual: broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(x == y); }); break;
    case CompareOp::kLess: broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(x < y); }); break;
    case CompareOp::kLessOrEqual: broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(x <= y); }); break;
    case CompareOp::kGreater: broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(x > y); }); break;
    case CompareOp::kGreaterOrEqual:
      broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(x >= y); });
      break;
    case CompareOp::kAnd: broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(x && y); }); break;
    case CompareOp::kOr: broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(x || y); }); break;
    case CompareOp::kXor: broadcast_binary(a, b, out, p, [&](T x, T y) { return as_bool(!x != !y); }); break;
  }
}

template <typename TB, typename TE>
void power(const TB* base, const TE* exponent, TB* out, const BroadcastPlan& p) {
  if constexpr (std::is_floating_point_v<TB>) {
    // A scalar exponent of 1, 2 or 3 (x^2 and x^3 are common in exported GELU and norm graphs): exact products.
    if (p.numel > 0 && p.inner_stride(1) == 0 && p.dims.size() == 1) {
      const TE e = exponent[0];
      if (e == TE(1)) return broadcast_binary(base, exponent, out, p, [](TB x, TE) { return x; });
      if (e == TE(2)) return broadcast_binary(base, exponent, out, p, [](TB x, TE) { return x * x; });
      if (e == TE(3)) return broadcast_binary(base, exponent, out, p, [](TB x, TE) { return x * x * x; });
    }
    broadcast_binary(base, exponent, out, p, [](TB x, TE e) { return std::pow(x, static_cast<TB>(e)); });
  } else if constexpr (std::is_integral_v<TE>) {
    broadcast_binary(base, exponent, out, p, int_pow<TB, TE>);
  } else {
    broadcast_binary(base, exponent, out, p, [](TB x, TE e) {
      // Saturates out-of-range results (a plain cast would be undefined); NaN gives 0.
      using L = std::numeric_limits<TB>;
      const double r = std::pow(static_cast<double>(x), static_cast<double>(e));
      if (std::isnan(r)) return TB(0);
      if (r <= static_cast<double>(L::lowest())) return L::lowest();
      if (r >= static_cast<double>(L::max())) return L::max();
      return static_cast<TB>(r);
    });
  }
}

template <typename T>
void where(const uint8_t* cond, const T* x, const T* y, T* out, const BroadcastPlan& p) {
  const int64_t sc = p.inner_stride(0), sx = p.inner_stride(1), sy = p.inner_stride(2);
  for_each_segment(p, [&](const int64_t* off, int64_t o, int64_t len) {
    const uint8_t* pc = cond + off[0];
    const T* px = x + off[1];
    const T* py = y + off[2];
    T* po = out + o;
    if (sc && sx && sy) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) po[i] = pc[i] ? px[i] : py[i];
    } else {
      for (int64_t i = 0; i < len; ++i) po[i] = pc[i * sc] ? px[i * sx] : py[i * sy];
    }
  });
}

template <typename T>
void broadcast_copy(const T* x, T* out, const BroadcastPlan& p) {
  const int64_t sx = p.inner_stride(0);
  for_each_segment(p, [&](const int64_t* off, int64_t o, int64_t len) {
    const T* px = x + off[0];
    T* po = out + o;
    if (sx) {
      for (int64_t i = 0; i < len; ++i) po[i] = px[i];
    } else {
      const T v = px[0];
      for (int64_t i = 0; i < len; ++i) po[i] = v;
    }
  });
}

#define GV_INSTANTIATE_BINARY(T)                                                        \
  template void binary<T>(BinaryOp, const T*, const T*, T*, const BroadcastPlan&);     \
  template void compare<T>(CompareOp, const T*, const T*, uint8_t*, const BroadcastPlan&);
GV_INSTANTIATE_BINARY(float)
GV_INSTANTIATE_BINARY(double)
GV_INSTANTIATE_BINARY(int64_t)
GV_INSTANTIATE_BINARY(int32_t)
GV_INSTANTIATE_BINARY(int8_t)
GV_INSTANTIATE_BINARY(uint8_t)
#undef GV_INSTANTIATE_BINARY

#define GV_INSTANTIATE_POWER_E(TB, TE) \
  template void power<TB, TE>(const TB*, const TE*, TB*, const BroadcastPlan&);
#define GV_INSTANTIATE_POWER(TB)        \
  GV_INSTANTIATE_POWER_E(TB, float)     \
  GV_INSTANTIATE_POWER_E(TB, double)    \
  GV_INSTANTIATE_POWER_E(TB, int64_t)   \
  GV_INSTANTIATE_POWER_E(TB, int32_t)   \
  GV_INSTANTIATE_POWER_E(TB, int8_t)    \
  GV_INSTANTIATE_POWER_E(TB, uint8_t)
GV_INSTANTIATE_POWER(float)
GV_INSTANTIATE_POWER(double)
GV_INSTANTIATE_POWER(int64_t)
GV_INSTANTIATE_POWER(int32_t)
#undef GV_INSTANTIATE_POWER
#undef GV_INSTANTIATE_POWER_E

#define GV_INSTANTIATE_BITS(T)                                                                 \
  template void where<T>(const uint8_t*, const T*, const T*, T*, const BroadcastPlan&);        \
  template void broadcast_copy<T>(const T*, T*, const BroadcastPlan&);
GV_INSTANTIATE_BITS(uint8_t)
GV_INSTANTIATE_BITS(uint16_t)
GV_INSTANTIATE_BITS(uint32_t)
GV_INSTANTIATE_BITS(uint64_t)
#undef GV_INSTANTIATE_BITS

}  // namespace gv::cpu
