// The tanh GELU (GPT-2's gelu_new) and its derivative as device functions, shared by the kernels that apply them
// outside cuBLASLt's epilogues (elementwise.cu's activations and their gradients, linear.cu's bias + activation pass).
#pragma once
#include <cuda_runtime.h>

namespace gv::cuda::detail {

constexpr float kGeluTanhK = 0.79788456080286535588f;  // sqrt(2 / pi)
constexpr float kGeluTanhC = 0.044715f;

// The logistic function without overflow for either sign.
__device__ __forceinline__ float stable_sigmoid(float v) {
  if (v >= 0.0f) return 1.0f / (1.0f + expf(-v));
  const float e = expf(v);
  return e / (1.0f + e);
}

// gelu(v) = v * sigmoid(2 k (v + c v^3)) = 0.5 v (1 + tanh(k (v + c v^3))), with the fast exponential.
__device__ __forceinline__ float gelu_tanh(float v) {
  return v / (1.0f + __expf(-2.0f * kGeluTanhK * (v + kGeluTanhC * v * v * v)));
}

// g * gelu'(x).
__device__ __forceinline__ float gelu_tanh_grad(float g, float x) {
  const float x2 = x * x;
  const float s = stable_sigmoid(2.0f * kGeluTanhK * (x + kGeluTanhC * x2 * x));
  const float du = kGeluTanhK * (1.0f + 3.0f * kGeluTanhC * x2);
  return g * (s + 2.0f * x * s * (1.0f - s) * du);
}

}  // namespace gv::cuda::detail
