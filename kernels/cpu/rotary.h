// Rotary position embedding (RoPE) with ONNX RotaryEmbedding's semantics (opset 23): each head vector's first
// rotary_dim elements are rotated pairwise by the angle of its token's position, given as cos / sin tables of
// rotary_dim / 2 columns; the rest of the vector is copied.
//   halves (interleaved = 0): pairs (i, i + rotary_dim / 2);  interleaved = 1: pairs (2i, 2i + 1)
//   y_first = cos x_first - sin x_second,  y_second = sin x_first + cos x_second
// The inverse rotation (the backward) is the same with sin negated.
#pragma once
#include <cstdint>

namespace gv::cpu {

struct RotaryLayout {
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  int64_t rotary_dim = 0;    // even, <= head_dim
  bool heads_first = false;  // x [batch, heads, seq, head_dim]; else [batch, seq, heads * head_dim]
  bool interleaved = false;
};

// y = RoPE(x). Table row of token (b, s): position_ids[b * seq + s] when position_ids is given (each in [0, rows of
// the tables), checked by the caller), else b * seq + s. cos, sin: [rows, rotary_dim / 2]. y may alias x.
template <typename T>
void rotary_embedding(const T* x, const T* cos, const T* sin, const int64_t* position_ids, T* y,
                      const RotaryLayout& layout);

}  // namespace gv::cpu
