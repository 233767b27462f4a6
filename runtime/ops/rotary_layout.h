// The head layout of an ONNX RotaryEmbedding node (runtime/ops/math_rotary_embedding.cpp), read from X's shape and
// the node's attributes; shared by the CPU and CUDA kernels.
#pragma once
#include <string>

#include "kernels/cpu/rotary.h"
#include "runtime/attributes.h"
#include "runtime/tensor.h"

namespace gv {

// Fills l from X's shape and the attributes; empty on success, else the reason the node is not valid.
inline std::string rotary_layout(const Attributes& attrs, const Shape& x, cpu::RotaryLayout& l) {
  l = cpu::RotaryLayout{};
  l.interleaved = attrs.get_int("interleaved", 0) != 0;
  if (x.size() == 4) {
    l.heads_first = true;
    l.batch = x[0], l.heads = x[1], l.seq = x[2], l.head_dim = x[3];
  } else if (x.size() == 3) {
    l.heads = attrs.get_int("num_heads", 0);
    if (l.heads <= 0) return "a 3-D X " + shape_str(x) + " needs attribute num_heads > 0";
    if (x[2] % l.heads != 0) return "X's last dim " + std::to_string(x[2]) + " is not a multiple of num_heads";
    l.batch = x[0], l.seq = x[1], l.head_dim = x[2] / l.heads;
  } else {
    return "X must be 3-D [B, S, H * D] or 4-D [B, H, S, D], got " + shape_str(x);
  }
  l.rotary_dim = attrs.get_int("rotary_embedding_dim", 0);
  if (l.rotary_dim == 0) l.rotary_dim = l.head_dim;
  if (l.rotary_dim < 0 || l.rotary_dim > l.head_dim || l.rotary_dim % 2 != 0) {
    return "rotary_embedding_dim " + std::to_string(l.rotary_dim) + " must be even and at most the head size " +
           std::to_string(l.head_dim);
  }
  return "";
}

}  // namespace gv
