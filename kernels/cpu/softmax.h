// Softmax and log-softmax along one axis. Tensors are viewed as [outer, n, inner]: the axis has n elements and stride
// inner. Sums are accumulated in double; the maximum is subtracted first so large inputs do not overflow.
#pragma once
#include <cstdint>

namespace gv::cpu {

// y[outer, n, inner] = softmax(x) (or log_softmax(x) when log) along n.
template <typename T>
void softmax(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, bool log);

// Backward from the forward output y: softmax: dx = y * (dy - sum(dy * y)); log-softmax (y = log-probabilities):
// dx = dy - exp(y) * sum(dy). All [outer, n, inner], sums along n.
template <typename T>
void softmax_backward(const T* dy, const T* y, T* dx, int64_t outer, int64_t n, int64_t inner, bool log);

}  // namespace gv::cpu
