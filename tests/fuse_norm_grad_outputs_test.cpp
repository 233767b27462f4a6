// LayerNormalizationGrad writing its dX's bf16 copy and the copy's bias sums, RMSNormalizationGrad its copy
// (runtime/fuse_norm_grad_outputs.cpp) on the CPU: outputs dXBf16 and dXBf16Sums equal Cast and BiasGrad (keepdims)
// of dX bit for bit, with and without an addend; bad requests are errors naming the node; in gpt-tiny's and
// llama-tiny's CUDA-like bf16 training graphs every norm gradient that has a copy writes it (2 per layer: the final
// norm's and the MLP norm's of every layer, the attention norm's of every layer but the first, whose gradient goes to
// the embeddings), the Casts and BiasGrads go (GPT's sums; Llama has no biases), every node's types stay true, and the
// loss and every gradient equal the unfused graph's exactly.
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

TEST(FuseNormGradOutputs, CopyAndSumsAreCastThenBiasGrad) {
  const Tensor dy = randn({4, 3, 16}, 5), x = randn({4, 3, 16}, 6), scale = randn({16}, 7), g = randn({4, 3, 16}, 8);
  for (bool addend : {false, true}) {
    SCOPED_TRACE(addend ? "with addend" : "without addend");
    std::vector<Tensor> in = {dy, x, scale};
    if (addend) in.insert(in.end(), {Tensor(), Tensor(), Tensor(), Tensor(), g});
    auto plain = run_op("LayerNormalizationGrad", in, {}, 3, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    Attributes to_bf16;
    to_bf16.set_int("to", 16);
    auto copy = run_op("Cast", {plain->outputs[0]}, to_bf16, 1, 19);
    ASSERT_TRUE(copy.has_value()) << copy.status().message();
    Attributes keepdims;
    keepdims.set_int("keepdims", 1);
    auto sums = run_op("BiasGrad", {copy->outputs[0]}, keepdims, 1, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(sums.has_value()) << sums.status().message();
    for (int n_out : {4, 5}) {
      auto fused = run_op("LayerNormalizationGrad", in, {}, n_out, 1, {}, kGalvatronDomain);
      ASSERT_TRUE(fused.has_value()) << fused.status().message();
      for (int i = 0; i < 3; ++i) EXPECT_TRUE(same_bits(fused->outputs[i], plain->outputs[i])) << "output " << i;
      EXPECT_TRUE(same_bits(fused->outputs[3], copy->outputs[0]));
      if (n_out == 5) {
        EXPECT_EQ(fused->outputs[4].shape(), (Shape{1, 1, 16}));
        EXPECT_TRUE(same_bits(fused->outputs[4], sums->outputs[0]));
      }
    }
  }
}

TEST(FuseNormGradOutputs, RmsCopyIsCastOfDx) {
  const Tensor dy = randn({4, 3, 16}, 15), x = randn({4, 3, 16}, 16), scale = randn({16}, 17),
               g = randn({4, 3, 16}, 18);
  for (bool addend : {false, true}) {
    SCOPED_TRACE(addend ? "with addend" : "without addend");
    std::vector<Tensor> in = {dy, x, scale};
    if (addend) in.push_back(g);
    auto plain = run_op("RMSNormalizationGrad", in, {}, 2, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    Attributes to_bf16;
    to_bf16.set_int("to", 16);
    auto copy = run_op("Cast", {plain->outputs[0]}, to_bf16, 1, 19);
    ASSERT_TRUE(copy.has_value()) << copy.status().message();
    auto fused = run_op("RMSNormalizationGrad", in, {}, 3, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(fused.has_value()) << fused.status().message();
    for (int i = 0; i < 2; ++i) EXPECT_TRUE(same_bits(fused->outputs[i], plain->outputs[i])) << "output " << i;
    EXPECT_TRUE(same_bits(fused->outputs[2], copy->outputs[0]));
  }
  const Tensor x64 = randn({3, 4}, 1).cast(DType::kFloat64);
  auto bad =
      run_op("RMSNormalizationGrad", {x64, x64, randn({4}, 2).cast(DType::kFloat64)}, {}, 3, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("dXBf16 needs a float32 X"), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("test_node"), std::string::npos) << bad.status().message();
}

TEST(FuseNormGradOutputs, BadRequestsNameTheNode) {
  auto error = [](const Tensor& dy, const Tensor& x, const Tensor& scale, Attributes a, int n_out) {
    auto out = run_op("LayerNormalizationGrad", {dy, x, scale}, a, n_out, 1, {}, kGalvatronDomain);
    return out.has_value() ? std::string("ok") : out.status().message();
  };
  Attributes axis1;
  axis1.set_int("axis", 1);
  const Tensor x64 = randn({3, 4}, 1).cast(DType::kFloat64);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {error(x64, x64, randn({4}, 2).cast(DType::kFloat64), {}, 4), "dXBf16 needs a float32 X"},
      {error(randn({2, 3, 4}, 3), randn({2, 3, 4}, 4), randn({3, 4}, 5), axis1, 5),
       "dXBf16Sums needs the normalized axis to be the last (axis 1)"},
  };
  for (const auto& [msg, want] : cases) {
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  }
  // The sums of axis 1 over a rank-2 X are the last axis's: fine.
  EXPECT_EQ(error(randn({3, 4}, 6), randn({3, 4}, 7), randn({4}, 8), axis1, 5), "ok");
}

class TinyNormGradOutputs : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyNormGradOutputs, CopiesWrittenByTheGradsSameLossAndGradientsBitForBit) {
  const bool gpt = GetParam() == "gpt-tiny";
  auto tiny = testing::tiny_model(GetParam());
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  auto backend = make_cpu_backend();
  auto config = [](bool fold) {
    TrainerConfig tc = testing::cuda_bf16_like_config();
    tc.graph.fuse_residual_add = true;
    tc.graph.fuse_norm_grad_add = true;
    tc.graph.fuse_norm_grad_outputs = fold;
    return tc;
  };
  auto runs = testing::train_tiny_off_on(*tiny, *backend, config);
  ASSERT_TRUE(runs.has_value()) << runs.status().message();
  const testing::TinyRun *plain = &runs->off, *folded = &runs->on;

  const TrainingGraph& tg = folded->trainer->training_graph();
  const int want = 2 * layers;
  EXPECT_EQ(tg.fused.norm_grad_outputs, want);
  int writers = 0, with_sums = 0;
  for (const Node& n : tg.graph.nodes) {
    if (n.op_type == "LayerNormalizationGrad") {
      writers += n.outputs.size() > 3;
      with_sums += n.outputs.size() > 4;
    } else if (n.op_type == "RMSNormalizationGrad") {
      EXPECT_TRUE(gpt == false);
      writers += n.outputs.size() > 2;
    }
  }
  EXPECT_EQ(writers, want);
  EXPECT_EQ(with_sums, gpt ? want : 0);  // GPT-2's projections all have biases, Llama's none
  // A Cast and a BiasGrad per fold.
  EXPECT_EQ(tg.graph.nodes.size() + static_cast<size_t>(writers + with_sums),
            plain->trainer->training_graph().graph.nodes.size());
  testing::expect_inference_agrees(tg.graph);

  testing::expect_same_loss_and_gradients(folded->loss, folded->grads, plain->loss, plain->grads);
}

INSTANTIATE_TEST_SUITE_P(Graphs, TinyNormGradOutputs, ::testing::Values("gpt-tiny", "llama-tiny"),
                         [](const auto& info) { return info.param == "gpt-tiny" ? "Gpt" : "Llama"; });

}  // namespace
}  // namespace gv
