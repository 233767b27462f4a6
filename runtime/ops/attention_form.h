// The sizes of an ONNX Attention (opset 23) or galvatron AttentionGrad node, read from Q, K, V's shapes and the
// attributes, in either of ONNX's two forms:
//   4-D  Q [B, Hq, S, D],      K [B, Hkv, L, D],      V [B, Hkv, L, Dv]      -> Y [B, Hq, S, Dv]
//   3-D  Q [B, S, Hq * D],     K [B, L, Hkv * D],     V [B, L, Hkv * Dv]     -> Y [B, S, Hq * Dv]
//        (q_num_heads = Hq and kv_num_heads = Hkv required; the same tensors as the 4-D form's, heads interleaved
//        along the last axis: element (b, h, s, d) of the 4-D Q is Q3[b, s, h * D + d]).
// Shared by the shape inference, the CPU kernels and the CUDA glue, so that all three agree on what a node means.
#pragma once
#include <cmath>
#include <string>

#include "runtime/attributes.h"
#include "runtime/tensor.h"

namespace gv {

struct AttentionForm {
  bool three_d = false;  // the 3-D (sequence-major) form
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, v_head_dim = 0;
  float scale = 0.0f;  // the attribute, or 1/sqrt(head_dim)
  bool causal = false;
  Shape y_shape() const {
    return three_d ? Shape{batch, q_len, q_heads * v_head_dim} : Shape{batch, q_heads, q_len, v_head_dim};
  }
};

// Reads the form from Q, K, V's shapes; an empty string on success, else what is wrong (for the caller to report).
inline std::string read_attention_form(const Shape& q, const Shape& k, const Shape& v, const Attributes& attrs,
                                       AttentionForm& f) {
  f = AttentionForm{};
  if (q.size() != k.size() || q.size() != v.size() || (q.size() != 3 && q.size() != 4)) {
    return "Q " + shape_str(q) + ", K " + shape_str(k) + ", V " + shape_str(v) +
           " must all have rank 4 [batch, heads, sequence, head size] or all rank 3 [batch, sequence, heads * head "
           "size]";
  }
  f.three_d = q.size() == 3;
  if (f.three_d) {
    f.q_heads = attrs.get_int("q_num_heads", 0);
    f.kv_heads = attrs.get_int("kv_num_heads", 0);
    if (f.q_heads <= 0 || f.kv_heads <= 0) {
      return "the 3-D form needs attributes q_num_heads and kv_num_heads (positive), got " +
             std::to_string(f.q_heads) + " and " + std::to_string(f.kv_heads);
    }
    if (q[2] % f.q_heads != 0 || k[2] % f.kv_heads != 0 || v[2] % f.kv_heads != 0) {
      return "hidden sizes of Q " + shape_str(q) + ", K " + shape_str(k) + ", V " + shape_str(v) +
             " are not multiples of q_num_heads " + std::to_string(f.q_heads) + " / kv_num_heads " +
             std::to_string(f.kv_heads);
    }
    f.batch = q[0], f.q_len = q[1], f.head_dim = q[2] / f.q_heads;
    f.kv_len = k[1];
    if (k[2] / f.kv_heads != f.head_dim) {
      return "head sizes of Q " + shape_str(q) + " and K " + shape_str(k) + " differ";
    }
    f.v_head_dim = v[2] / f.kv_heads;
  } else {
    f.batch = q[0], f.q_heads = q[1], f.q_len = q[2], f.head_dim = q[3];
    f.kv_heads = k[1], f.kv_len = k[2], f.v_head_dim = v[3];
    if (k[1] != v[1]) return "K " + shape_str(k) + " and V " + shape_str(v) + " must have the same number of heads";
    if (k[3] != q[3]) return "head sizes of Q " + shape_str(q) + " and K " + shape_str(k) + " differ";
  }
  if (k[0] != q[0] || v[0] != q[0]) {
    return "batch sizes differ: Q " + shape_str(q) + ", K " + shape_str(k) + ", V " + shape_str(v);
  }
  if (f.kv_heads <= 0 || f.q_heads % f.kv_heads != 0) {
    return "the key/value heads (" + std::to_string(f.kv_heads) + ") must divide the query heads (" +
           std::to_string(f.q_heads) + ")";
  }
  const int64_t v_len = f.three_d ? v[1] : v[2];
  if (v_len != f.kv_len) return "sequence lengths of K " + shape_str(k) + " and V " + shape_str(v) + " differ";
  f.scale = attrs.has("scale") ? attrs.get_float("scale", 1.0f)
                               : static_cast<float>(1.0 / std::sqrt(static_cast<double>(f.head_dim)));
  f.causal = attrs.get_int("is_causal", 0) != 0;
  return "";
}

// galvatron AttentionPacked's QKV [B, S, 3 * H * D] (runtime/ops/attention_packed_ops.cpp): the 3-D form with
// H = attribute num_heads query and key/value heads and L = S.
inline std::string read_packed_attention_form(const Shape& qkv, const Attributes& attrs, AttentionForm& f) {
  f = AttentionForm{};
  const int64_t h = attrs.get_int("num_heads", 0);
  if (qkv.size() != 3 || h <= 0 || qkv[2] % (3 * h) != 0) {
    return "QKV " + shape_str(qkv) + " must be [batch, sequence, 3 * num_heads * head size] with num_heads " +
           std::to_string(h) + " > 0";
  }
  f.three_d = true;
  f.batch = qkv[0], f.q_len = f.kv_len = qkv[1];
  f.q_heads = f.kv_heads = h;
  f.head_dim = f.v_head_dim = qkv[2] / (3 * h);
  f.scale = attrs.has("scale") ? attrs.get_float("scale", 1.0f)
                               : static_cast<float>(1.0 / std::sqrt(static_cast<double>(f.head_dim)));
  f.causal = attrs.get_int("is_causal", 0) != 0;
  return "";
}

}  // namespace gv
