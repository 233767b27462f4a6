// Rotary position embedding on the GPU, ONNX RotaryEmbedding's arithmetic (kernels/cpu/rotary.h) without
// position_ids: table row of token (b, s) is b * seq + s. x and y float32 or bfloat16 (bits) alike; tables float32.
#pragma once
#include <cstdint>

namespace gv::cuda {

struct RotaryDims {
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0, rotary_dim = 0;
  bool heads_first = false;  // x [batch, heads, seq, head_dim]; else [batch, seq, heads * head_dim]
  bool interleaved = false;
};

// y = RoPE(x) with cos, sin [batch * seq, rotary_dim / 2]; bf16: x and y are bfloat16. y must not alias x.
bool rotary_embedding(const void* x, const float* cos, const float* sin, void* y, bool bf16, const RotaryDims& d);

}  // namespace gv::cuda
