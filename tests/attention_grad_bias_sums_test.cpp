// AttentionPackedGrad writing the QKV bias gradient (runtime/attention_grad_bias_sums.cpp) on the CPU: its dQKVSums
// output equals BiasGrad (keepdims) of its dQKV bit for bit, dQKV float32 or bf16; in gpt-tiny's CUDA-like bf16
// training graph every layer's QKV bias sum moves into its attention gradient, the BiasGrads go, every node's types
// stay true, and the loss and every gradient equal the unfused graph's exactly.
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

TEST(AttentionGradBiasSums, SumsAreBiasGradOfTheWrittenGradient) {
  const int64_t B = 2, S = 9, H = 3, D = 5;
  const Tensor qkv = testing::randn_f32({B, S, 3 * H * D}, 3), dy = testing::randn_f32({B, S, H * D}, 4);
  Attributes a;
  a.set_int("num_heads", H);
  a.set_int("is_causal", 1);
  auto fwd = run_op("AttentionPacked", {qkv}, a, 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(fwd.has_value()) << fwd.status().message();
  for (int64_t out_dtype : {1, 16}) {
    SCOPED_TRACE("out_dtype " + std::to_string(out_dtype));
    Attributes g = a;
    g.set_int("out_dtype", out_dtype);
    const std::vector<Tensor> in = {qkv, dy, fwd->outputs[0], fwd->outputs[1]};
    auto plain = run_op("AttentionPackedGrad", in, g, 1, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    auto fused = run_op("AttentionPackedGrad", in, g, 2, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(fused.has_value()) << fused.status().message();
    EXPECT_TRUE(same_bits(fused->outputs[0], plain->outputs[0]));
    Attributes keepdims;
    keepdims.set_int("keepdims", 1);
    auto sums = run_op("BiasGrad", {plain->outputs[0]}, keepdims, 1, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(sums.has_value()) << sums.status().message();
    EXPECT_EQ(fused->outputs[1].shape(), (Shape{1, 1, 3 * H * D}));
    EXPECT_TRUE(same_bits(fused->outputs[1], sums->outputs[0]));
  }
}

TEST(AttentionGradBiasSums, TinyGptSameLossAndGradientsBitForBit) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  auto config = [](bool fold) {
    TrainerConfig tc = testing::cuda_bf16_like_config();
    tc.graph.fuse_attention_bias_sums = fold;
    return tc;
  };
  auto runs = testing::train_tiny_off_on(*tiny, *backend, config);
  ASSERT_TRUE(runs.has_value()) << runs.status().message();
  const testing::TinyRun *plain = &runs->off, *folded = &runs->on;
  const TrainingGraph& tg = folded->trainer->training_graph();
  const int layers = tiny->im.graph.num_layers;
  EXPECT_EQ(tg.fused.attention_bias_sums, layers);
  EXPECT_EQ(plain->trainer->training_graph().fused.attention_bias_sums, 0);
  int writers = 0;
  for (const Node& n : tg.graph.nodes) writers += n.op_type == "AttentionPackedGrad" && n.outputs.size() == 2;
  EXPECT_EQ(writers, layers);
  EXPECT_EQ(tg.graph.nodes.size() + static_cast<size_t>(layers), plain->trainer->training_graph().graph.nodes.size());
  testing::expect_inference_agrees(tg.graph);
  testing::expect_same_loss_and_gradients(folded->loss, folded->grads, plain->loss, plain->grads);
}

}  // namespace
}  // namespace gv
