// Optimizer and gradient-buffer kernels. Each updates its buffers in place; n is the element count of one parameter.
#pragma once
#include <cstdint>

namespace gv::cpu {

struct AdamWParams {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;        // 1-based
  double grad_scale;   // multiplies the gradient first (1/micro-batches, times the clipping coefficient)
};
// PyTorch's AdamW, in its operation order: p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g;
// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& p);

struct SgdParams {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  int64_t step;  // 1-based: the first step initialises the momentum buffer with the gradient, as PyTorch does
  double grad_scale;
};
template <typename T>
void sgd_update(T* param, const T* grad, T* momentum_buf, int64_t n, const SgdParams& p);

// acc += g
template <typename T>
void accumulate(T* acc, const T* g, int64_t n);
// sum of squares, accumulated in double
template <typename T>
double sum_squares(const T* x, int64_t n);

}  // namespace gv::cpu
