// Elementwise CPU kernels over contiguous buffers. Unary kernels map x[n] -> y[n]; binary, comparison and ternary
// kernels map broadcast inputs onto a contiguous output of plan.numel elements (see kernels/cpu/broadcast.h).
// Element types: float, double, int64_t, int32_t, int8_t, uint8_t (bool tensors are uint8_t 0/1); the ops that only
// make sense on floats are instantiated for float and double. Every kernel is safe when the output buffer is the
// same as an input of the output's shape.
#pragma once
#include <cstdint>

#include "kernels/cpu/broadcast.h"

namespace gv::cpu {

enum class UnaryOp {
  // any numeric type
  kNeg, kAbs, kSign, kRelu,
  // floating point only
  kSqrt, kReciprocal, kExp, kLog, kTanh, kErf, kSigmoid, kCos, kSin, kFloor, kCeil,
  kRound,        // half to even
  kGelu,         // x * Phi(x), exact (erf)
  kGeluTanh,     // the tanh approximation
  kSoftplus,     // log(1 + exp(x)), computed without overflow
  kLeakyRelu,    // x < 0 ? alpha * x : x
  kHardSigmoid,  // max(0, min(1, alpha * x + beta))
};
struct UnaryParams {
  double alpha = 0.0;
  double beta = 0.0;
};
// y[n] = op(x[n])
template <typename T>
void unary(UnaryOp op, const T* x, T* y, int64_t n, const UnaryParams& params = {});

// y[n] = min(max(x[n], lo), hi); NaN passes through; when lo > hi every element becomes hi (ONNX Clip).
template <typename T>
void clip(const T* x, T* y, int64_t n, T lo, T hi);

// y[n] = isnan(x[n]) / isinf(x[n]) restricted to the requested signs, as bool (uint8_t 0/1).
template <typename T>
void is_nan(const T* x, uint8_t* y, int64_t n);
template <typename T>
void is_inf(const T* x, uint8_t* y, int64_t n, bool detect_negative, bool detect_positive);

// y[n] = !x[n] over bool.
void logical_not(const uint8_t* x, uint8_t* y, int64_t n);

// x[n] *= s (Mean's division by the input count).
template <typename T>
void scale(T* x, int64_t n, double s);

enum class BinaryOp {
  kAdd, kSub, kMul,  // integers wrap around on overflow
  kDiv,              // integers truncate toward zero; x / 0 gives 0 for integers
  kMod,              // result takes the divisor's sign (Python %, numpy.mod); x % 0 gives 0 for integers
  kFMod,             // result takes the dividend's sign (C fmod)
  kMax, kMin,        // a NaN operand gives NaN
};
// out[plan.numel] = op(a, b), a and b broadcast by the plan (2 inputs).
template <typename T>
void binary(BinaryOp op, const T* a, const T* b, T* out, const BroadcastPlan& plan);

enum class CompareOp {
  kEqual, kLess, kLessOrEqual, kGreater, kGreaterOrEqual,
  kAnd, kOr, kXor,  // over bool (uint8_t)
};
// out[plan.numel] = op(a, b) as bool (uint8_t 0/1), a and b broadcast by the plan (2 inputs).
template <typename T>
void compare(CompareOp op, const T* a, const T* b, uint8_t* out, const BroadcastPlan& plan);

// out[plan.numel] = base ^ exponent, broadcast by the plan (2 inputs). Floating-point bases use std::pow (with
// exact fast paths for the exponents 1, 2 and 3); integer bases with integer exponents multiply exactly
// (negative exponents truncate 1/b^e toward zero); integer bases with float exponents truncate the double result
// (saturating).
template <typename TB, typename TE>
void power(const TB* base, const TE* exponent, TB* out, const BroadcastPlan& plan);

// out[plan.numel] = cond ? x : y, broadcast by the plan (3 inputs). Element types are moved as bits:
// T is uint8_t, uint16_t, uint32_t or uint64_t by element size.
template <typename T>
void where(const uint8_t* cond, const T* x, const T* y, T* out, const BroadcastPlan& plan);
// out[plan.numel] = x broadcast by the plan (1 input); bits as for where().
template <typename T>
void broadcast_copy(const T* x, T* out, const BroadcastPlan& plan);

// Fused backward kernels of activations: dx[n] = dy[n] * f'(...) where the second operand v[n] is
//   kSigmoid: the forward output y (dy * y * (1 - y));   kTanh: the forward output y (dy * (1 - y^2));
//   kErf, kGelu, kGeluTanh: the forward input x.
enum class ActivationGrad { kSigmoid, kTanh, kErf, kGelu, kGeluTanh };
template <typename T>
void activation_grad(ActivationGrad op, const T* dy, const T* v, T* dx, int64_t n);

}  // namespace gv::cpu
