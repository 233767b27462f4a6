// Residual adds folded into their producers (runtime/fuse_residual_add.cpp) on the CPU: galvatron Linear with a
// Residual input is the Linear followed by the Add, LayerNormalizationGrad and RMSNormalizationGrad with an Addend
// are the grad followed by the Add, bit for bit; in gpt-tiny's training graph both residual adds of every layer and
// both gradient sums go, every node's types stay true, and the loss and every gradient equal the unfused graph's
// exactly (float32, and as the CUDA backend builds it in bf16, with and without activation checkpointing); bad
// residuals and addends are errors naming the node.
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
Tensor randn(const Shape& s, uint64_t seed) { return testing::randn_f32(s, seed); }

using testing::same_bits;

TEST(FuseResidualAdd, LinearResidualIsLinearThenAdd) {
  const Tensor x = randn({2, 5, 8}, 1), w = randn({6, 8}, 2), b = randn({6}, 3), r = randn({2, 5, 6}, 4);
  Attributes a;
  a.set_int("transB", 1);
  for (bool bias : {true, false}) {
    std::vector<Tensor> in = {x, w};
    in.push_back(bias ? b : Tensor());
    auto plain = run_op("Linear", in, a, 1, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    auto sum = run_op("Add", {plain->outputs[0], r}, {}, 1, 14);
    ASSERT_TRUE(sum.has_value()) << sum.status().message();
    in.push_back(r);
    auto fused = run_op("Linear", in, a, 1, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(fused.has_value()) << fused.status().message();
    EXPECT_TRUE(same_bits(fused->outputs[0], sum->outputs[0])) << "bias " << bias;
  }
}

TEST(FuseResidualAdd, NormGradAddendIsGradThenAdd) {
  const Tensor dy = randn({4, 3, 16}, 5), x = randn({4, 3, 16}, 6), scale = randn({16}, 7), g = randn({4, 3, 16}, 8);
  auto plain = run_op("LayerNormalizationGrad", {dy, x, scale}, {}, 3, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto sum = run_op("Add", {g, plain->outputs[0]}, {}, 1, 14);
  ASSERT_TRUE(sum.has_value()) << sum.status().message();
  auto fused = run_op("LayerNormalizationGrad", {dy, x, scale, Tensor(), Tensor(), Tensor(), Tensor(), g}, {}, 3, 1,
                      {}, kGalvatronDomain);
  ASSERT_TRUE(fused.has_value()) << fused.status().message();
  EXPECT_TRUE(same_bits(fused->outputs[0], sum->outputs[0]));
  for (int i : {1, 2}) EXPECT_TRUE(same_bits(fused->outputs[i], plain->outputs[i])) << "output " << i;

  auto rms_plain = run_op("RMSNormalizationGrad", {dy, x, scale}, {}, 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(rms_plain.has_value()) << rms_plain.status().message();
  auto rms_sum = run_op("Add", {g, rms_plain->outputs[0]}, {}, 1, 14);
  ASSERT_TRUE(rms_sum.has_value()) << rms_sum.status().message();
  auto rms_fused = run_op("RMSNormalizationGrad", {dy, x, scale, g}, {}, 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(rms_fused.has_value()) << rms_fused.status().message();
  EXPECT_TRUE(same_bits(rms_fused->outputs[0], rms_sum->outputs[0]));
  EXPECT_TRUE(same_bits(rms_fused->outputs[1], rms_plain->outputs[1]));
}

TEST(FuseResidualAdd, BadResidualsAndAddendsNameTheNode) {
  const Tensor x = randn({3, 4}, 1), w = randn({4, 5}, 2), b = randn({5}, 3);
  auto linear_error = [&](const Tensor& r, Attributes a) {
    auto out = run_op("Linear", {x, w, b, r}, a, a.get_string("activation", "none") == "none" ? 1 : 2, 1, {},
                      kGalvatronDomain);
    return out.has_value() ? std::string("ok") : out.status().message();
  };
  Attributes gelu, bf16;
  gelu.set_string("activation", "gelu");
  bf16.set_int("out_dtype", 16);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {linear_error(randn({3, 6}, 4), {}), "Residual must be [3,5], got [3,6]"},
      {linear_error(randn({3, 5}, 4), gelu), "a Residual input needs activation none"},
      {linear_error(randn({3, 5}, 4), bf16), "a Residual input needs float32 results"},
      {linear_error(randn({3, 5}, 4).cast(DType::kBFloat16), {}), "Residual must be float32"},
  };
  for (const auto& [msg, want] : cases) {
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  }
  auto grad = run_op("LayerNormalizationGrad",
                     {randn({3, 4}, 5), x, randn({4}, 6), Tensor(), Tensor(), Tensor(), Tensor(), randn({4, 3}, 7)}, {},
                     3, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(grad.has_value());
  EXPECT_NE(grad.status().message().find("Addend must match X [3,4]"), std::string::npos) << grad.status().message();
  EXPECT_NE(grad.status().message().find("test_node"), std::string::npos) << grad.status().message();
  auto rms = run_op("RMSNormalizationGrad", {randn({3, 4}, 5), x, randn({4}, 6), randn({4, 3}, 7)}, {}, 2, 1, {},
                    kGalvatronDomain);
  ASSERT_FALSE(rms.has_value());
  EXPECT_NE(rms.status().message().find("Addend must match X [3,4]"), std::string::npos) << rms.status().message();
  EXPECT_NE(rms.status().message().find("test_node"), std::string::npos) << rms.status().message();
}

// A tiny model's training graph with the residual adds folded against the same graph without: (model, float32 or the
// CUDA backend's bf16 graph options, checkpointing layer 0 or not).
class TinyResidualAdds : public ::testing::TestWithParam<std::tuple<std::string, bool, bool>> {};

TEST_P(TinyResidualAdds, FoldedEverywhereSameLossAndGradientsBitForBit) {
  const auto [model, bf16_like, checkpoint] = GetParam();
  auto tiny = testing::tiny_model(model);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  auto backend = make_cpu_backend();
  auto config = [&](bool fold) {
    TrainerConfig tc = bf16_like ? testing::cuda_bf16_like_config() : TrainerConfig{};
    tc.graph.fuse_linear = true;
    tc.graph.fuse_residual_add = fold;
    tc.graph.fuse_norm_grad_add = fold;
    if (checkpoint) tc.graph.checkpoint_layers = {0};
    return tc;
  };
  auto runs = testing::train_tiny_off_on(*tiny, *backend, config);
  ASSERT_TRUE(runs.has_value()) << runs.status().message();
  const testing::TinyRun *plain = &runs->off, *folded = &runs->on;

  const TrainingGraph& tg = folded->trainer->training_graph();
  // Both branches of every layer end in a Linear (GPT-2's attention and MLP c_proj, Llama's o_proj and down_proj:
  // products of a transposed weight) that now adds the residual; in GPT-2 the stream's gradient meets each
  // LayerNorm's input gradient twice per layer (ln_1, ln_2; ln_f's input has no other reader), and Llama's
  // RMSNorm's likewise (input_layernorm, post_attention_layernorm).
  const int norm_adds = 2 * layers;
  EXPECT_EQ(tg.fused.residual_adds, 2 * layers);
  EXPECT_EQ(tg.fused.norm_grad_adds, norm_adds);
  EXPECT_EQ(plain->trainer->training_graph().fused.residual_adds, 0);
  int residual_linears = 0, addend_grads = 0;
  for (const Node& n : tg.graph.nodes) {
    residual_linears += n.op_type == "Linear" && n.inputs.size() == 4 && n.inputs[3] != kNoValue;
    addend_grads += n.op_type == "LayerNormalizationGrad" && n.inputs.size() == 8 && n.inputs[7] != kNoValue;
    addend_grads += n.op_type == "RMSNormalizationGrad" && n.inputs.size() == 4 && n.inputs[3] != kNoValue;
  }
  // A checkpointed layer's recomputed forward has Linears with residuals of its own (in place of Linear + Add).
  if (checkpoint) {
    EXPECT_GT(residual_linears, 2 * layers);
  } else {
    EXPECT_EQ(residual_linears, 2 * layers);
  }
  EXPECT_EQ(addend_grads, norm_adds);
  EXPECT_EQ(tg.graph.nodes.size() + static_cast<size_t>(residual_linears + addend_grads),
            plain->trainer->training_graph().graph.nodes.size());
  testing::expect_inference_agrees(tg.graph);

  testing::expect_same_loss_and_gradients(folded->loss, folded->grads, plain->loss, plain->grads);
}

INSTANTIATE_TEST_SUITE_P(Graphs, TinyResidualAdds,
                         ::testing::Combine(::testing::Values("gpt-tiny", "llama-tiny"), ::testing::Bool(),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           std::string name = std::get<0>(info.param) == "gpt-tiny" ? "Gpt" : "Llama";
                           return name + (std::get<1>(info.param) ? "Bf16Like" : "Float32") +
                                  (std::get<2>(info.param) ? "Checkpointed" : "");
                         });

}  // namespace
}  // namespace gv
