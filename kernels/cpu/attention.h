// Scaled dot-product attention (ONNX Attention, opset 23, 4-D form) and its backward, the CPU reference.
// Q [B, Hq, S, D], K [B, Hkv, L, D], V [B, Hkv, L, Dv], Y [B, Hq, S, Dv]; Hq is a multiple of Hkv (query head h reads
// key/value head h / (Hq / Hkv): grouped-query attention). Scores s = scale * q . k; an optional mask adds (float) or
// keeps (bool: true keeps, false gives -inf) per score; is_causal keeps key j <= query i only (upper-left aligned);
// softmax over the keys in float32 (double sums); a query row whose every score is masked gives zeros.
#pragma once
#include <cstdint>

namespace gv::cpu {

struct AttentionShape {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, v_head_dim = 0;
  float scale = 0.0f;  // already resolved: the attribute, or 1/sqrt(head_dim)
  bool causal = false;
};

// The optional mask, broadcast to [B, Hq, S, L]: element (b, h, i, j) is at b*strides[0] + h*strides[1] +
// i*strides[2] + j*strides[3] (0 along broadcast dims). Null data: no mask.
struct AttentionMask {
  const void* data = nullptr;
  bool is_bool = false;  // uint8 keep-flags; else float32 additive
  int64_t strides[4] = {0, 0, 0, 0};
};

// lse (may be null): [B, Hq, S], each query row's natural log-sum-exp of its masked, scaled scores (+inf where every
// score is masked): what a flash-attention forward keeps for its backward.
void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       const AttentionMask& mask, float* y, float* lse = nullptr);
// dq, dk, dv are overwritten (not accumulated). The probabilities are recomputed from q, k and the mask.
void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                        const AttentionMask& mask, const float* dy, float* dq, float* dk, float* dv);
// The same in float64 (gradient checks); there a float mask holds float64 values.
void attention_forward(const AttentionShape& s, const double* q, const double* k, const double* v,
                       const AttentionMask& mask, double* y, double* lse = nullptr);
void attention_backward(const AttentionShape& s, const double* q, const double* k, const double* v,
                        const AttentionMask& mask, const double* dy, double* dq, double* dk, double* dv);

}  // namespace gv::cpu
