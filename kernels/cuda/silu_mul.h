// SwiGLU's gated activation on the GPU: y = a * sigmoid(a) * b and its gradient (kernels/cpu/silu_mul.h has the
// arithmetic). Computed in float32; a and b are float32 or bfloat16 (bits) alike, y float32 or bfloat16.
#pragma once
#include <cstdint>

namespace gv::cuda {

// y[n] = silu(a) * b; in_bf16: a, b are bfloat16; out_bf16: y is bfloat16 (rounded to nearest even).
bool silu_mul(const void* a, const void* b, bool in_bf16, void* y, bool out_bf16, int64_t n);
// da = dy * b * s (1 + a (1 - s)), db = dy * a * s, s = sigmoid(a); dy float32, or bfloat16 (dy_bf16) beside bfloat16
// a and b (false, nothing launched, beside float32 ones); da, db float32 or bfloat16 (out_bf16).
bool silu_mul_grad(const void* dy, bool dy_bf16, const void* a, const void* b, bool in_bf16, void* da, void* db,
                   bool out_bf16, int64_t n);

}  // namespace gv::cuda
