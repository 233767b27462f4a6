// The gated activation of Llama-style MLPs (SwiGLU): y = silu(a) * b, silu(a) = a * sigmoid(a), and its backward.
// Elementwise over n contiguous elements of equal-shaped a, b; computed in T (float or double).
#pragma once
#include <cstdint>

namespace gv::cpu {

// y[i] = a[i] * sigmoid(a[i]) * b[i]
template <typename T>
void silu_mul(const T* a, const T* b, T* y, int64_t n);

// da[i] = dy[i] * b[i] * s (1 + a[i] (1 - s)), db[i] = dy[i] * a[i] * s, s = sigmoid(a[i]); da or db may be null.
template <typename T>
void silu_mul_grad(const T* dy, const T* a, const T* b, T* da, T* db, int64_t n);

}  // namespace gv::cpu
