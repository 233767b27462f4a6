// Packed attention keeping its padded bf16 heads for the backward (runtime/attention_saved_heads.cpp) on the CPU:
// AttentionPacked's QKVp and Yp are QKV and Y rounded to bf16 with each head padded by zeros, Y and LSE unchanged;
// AttentionPackedGrad given them computes the same dQKV; bad requests are errors naming the node; in gpt-tiny's
// CUDA-like training graph every layer's attention gets them (heads of 16, padded to 24 for a multiple of 12, none
// for a multiple of 8), and the loss and every gradient equal the graph's without them bit for bit.
#include <gtest/gtest.h>

#include <cstring>

#include "runtime/fusion.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::run_op;

using testing::same_bits;

// `t`'s last axis as heads of d, rounded to bf16 and padded to dp by zeros.
std::vector<uint16_t> padded_bf16(const Tensor& t, int64_t d, int64_t dp) {
  const Tensor f = t.cast(DType::kFloat32);
  const int64_t heads = f.numel() / d;
  std::vector<uint16_t> out(static_cast<size_t>(heads * dp), 0);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < d; ++i) out[h * dp + i] = float_to_bf16(f.data_as<float>()[h * d + i]);
  return out;
}

Attributes packed_attrs(int64_t heads, int64_t saved) {
  Attributes a;
  a.set_int("num_heads", heads);
  a.set_int("is_causal", 1);
  if (saved > 0) a.set_int("saved_head_dim", saved);
  return a;
}

TEST(AttentionSavedHeads, PaddedCopiesSameResults) {
  const int64_t B = 2, S = 5, H = 3, D = 4, Dp = 8;
  for (DType t : {DType::kFloat32, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor qkv = testing::randn_f32({B, S, 3 * H * D}, 1).cast(t);
    auto plain = run_op("AttentionPacked", {qkv}, packed_attrs(H, 0), 2, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    auto saved = run_op("AttentionPacked", {qkv}, packed_attrs(H, Dp), 4, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(saved.has_value()) << saved.status().message();
    EXPECT_TRUE(same_bits(saved->outputs[0], plain->outputs[0]));
    EXPECT_TRUE(same_bits(saved->outputs[1], plain->outputs[1]));
    const Tensor &qkv_p = saved->outputs[2], &y_p = saved->outputs[3];
    ASSERT_EQ(qkv_p.dtype(), DType::kBFloat16);
    ASSERT_EQ(qkv_p.shape(), (Shape{B, S, 3 * H * Dp}));
    ASSERT_EQ(y_p.shape(), (Shape{B, S, H * Dp}));
    const auto want_qkv = padded_bf16(qkv, D, Dp), want_y = padded_bf16(plain->outputs[0], D, Dp);
    EXPECT_EQ(std::memcmp(qkv_p.data(), want_qkv.data(), qkv_p.nbytes()), 0);
    EXPECT_EQ(std::memcmp(y_p.data(), want_y.data(), y_p.nbytes()), 0);

    const Tensor dy = testing::randn_f32({B, S, H * D}, 2);
    const Tensor &y = plain->outputs[0], &lse = plain->outputs[1];
    auto g4 = run_op("AttentionPackedGrad", {qkv, dy, y, lse}, packed_attrs(H, 0), 1, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(g4.has_value()) << g4.status().message();
    auto g6 = run_op("AttentionPackedGrad", {qkv, dy, y, lse, qkv_p, y_p}, packed_attrs(H, Dp), 1, 1, {},
                     kGalvatronDomain);
    ASSERT_TRUE(g6.has_value()) << g6.status().message();
    EXPECT_TRUE(same_bits(g6->outputs[0], g4->outputs[0]));
  }
}

TEST(AttentionSavedHeads, BadRequestsNameTheNode) {
  const Tensor qkv = testing::randn_f32({1, 3, 24}, 1);  // 2 heads of 4
  auto error = [](const char* op, const std::vector<Tensor>& in, int64_t saved, int outputs) {
    auto r = run_op(op, in, packed_attrs(2, saved), outputs, 1, {}, kGalvatronDomain);
    return r.has_value() ? std::string("ok") : r.status().message();
  };
  const Tensor y = testing::randn_f32({1, 3, 8}, 2), lse = testing::randn_f32({1, 2, 3}, 3);
  const Tensor qkv_p(DType::kBFloat16, {1, 3, 48}), y_p(DType::kBFloat16, {1, 3, 16});
  const std::vector<std::pair<std::string, std::string>> cases = {
      {error("AttentionPacked", {qkv}, 3, 4), "saved_head_dim 3 is less than the head size 4"},
      {error("AttentionPacked", {qkv}, 8, 2), "saved_head_dim needs the outputs QKVp and Yp"},
      {error("AttentionPacked", {qkv}, 0, 4), "outputs QKVp and Yp need attribute saved_head_dim"},
      {error("AttentionPacked", {qkv.cast(DType::kFloat64)}, 8, 4), "saved_head_dim needs float32 or bfloat16 QKV"},
      {error("AttentionPackedGrad", {qkv, y, y, lse, qkv_p, y_p}, 0, 1), "inputs QKVp and Yp need attribute"},
      {error("AttentionPackedGrad", {qkv, y, y, lse, y_p, y_p}, 8, 1), "QKVp must be bfloat16 [1,3,48]"},
      {error("AttentionPackedGrad", {qkv, y, y, lse, qkv_p, y_p.cast(DType::kFloat32)}, 8, 1),
       "Yp must be bfloat16 [1,3,16]"},
  };
  for (const auto& [msg, want] : cases) {
    EXPECT_NE(msg.find(want), std::string::npos) << msg << " (want: " << want << ")";
    EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  }
  EXPECT_EQ(error("AttentionPackedGrad", {qkv, y, y, lse, qkv_p, y_p}, 8, 1), "ok");
}

TEST(AttentionSavedHeads, TinyGptGradsReadThemSameLossAndGradientsBitForBit) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  auto backend = make_cpu_backend();
  auto config = [](int64_t multiple) {
    TrainerConfig tc = testing::cuda_bf16_like_config();
    tc.graph.bf16_attention_io = true;
    tc.graph.attention_saved_head_multiple = multiple;
    return tc;
  };
  auto plain = testing::train_tiny(*tiny, *backend, config(0));
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto saved = testing::train_tiny(*tiny, *backend, config(12));
  ASSERT_TRUE(saved.has_value()) << saved.status().message();
  auto aligned = testing::train_tiny(*tiny, *backend, config(8));  // heads of 16 need no padding
  ASSERT_TRUE(aligned.has_value()) << aligned.status().message();
  EXPECT_EQ(aligned->trainer->training_graph().fused.attention_saved_heads, 0);

  const TrainingGraph& tg = saved->trainer->training_graph();
  EXPECT_EQ(tg.fused.attention_saved_heads, layers);
  int forwards = 0, grads = 0;
  for (const Node& n : tg.graph.nodes) {
    if (n.op_type == "AttentionPacked") {
      ++forwards;
      ASSERT_EQ(n.outputs.size(), 4u) << n.name;
      EXPECT_EQ(n.attrs.get_int("saved_head_dim", 0), 24) << n.name;
      EXPECT_EQ(tg.graph.value(n.outputs[3]).shape.back(), 4 * 24) << n.name;
    }
    if (n.op_type == "AttentionPackedGrad") {
      ++grads;
      ASSERT_EQ(n.inputs.size(), 6u) << n.name;
      const NodeId f = tg.graph.value(n.inputs[3]).producer;
      EXPECT_EQ(tg.graph.value(n.inputs[4]).producer, f) << n.name;
      EXPECT_EQ(tg.graph.value(n.inputs[5]).producer, f) << n.name;
    }
  }
  EXPECT_EQ(forwards, layers);
  EXPECT_EQ(grads, layers);
  testing::expect_inference_agrees(tg.graph);
  testing::expect_same_loss_and_gradients(saved->loss, saved->grads, plain->loss, plain->grads);
}

}  // namespace
}  // namespace gv
