// LayerNormalization keeping its row statistics for its gradient (runtime/norm_statistics.cpp) on the CPU: in
// gpt-tiny's CUDA-like bf16 training graph every LayerNormalization (2 per layer and the final one) gets its Mean and
// InvStdDev outputs, every LayerNormalizationGrad reads them, every node's types stay true, the loss is the same bits
// and every gradient within float32 rounding of the graph's that recomputes the statistics (the CPU recomputes them
// in double, the saved ones are float32: ONNX's stash_type 1; the CUDA kernels round both to float32, so there the
// two agree bit for bit). RMSNorm (llama-tiny) is left alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "runtime/fusion.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

class TinyNormStatistics : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyNormStatistics, GradsReadTheSavedStatisticsSameLossGradientsWithinRounding) {
  const bool gpt = GetParam() == "gpt-tiny";
  auto tiny = testing::tiny_model(GetParam());
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  auto backend = make_cpu_backend();
  auto config = [](bool save) {
    TrainerConfig tc = testing::cuda_bf16_like_config();
    tc.graph.fuse_residual_add = true;
    tc.graph.fuse_norm_grad_add = true;
    tc.graph.fuse_norm_grad_outputs = true;
    tc.graph.save_norm_statistics = save;
    return tc;
  };
  auto plain = testing::train_tiny(*tiny, *backend, config(false));
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto saved = testing::train_tiny(*tiny, *backend, config(true));
  ASSERT_TRUE(saved.has_value()) << saved.status().message();

  const TrainingGraph& tg = saved->trainer->training_graph();
  const int want = gpt ? 2 * layers + 1 : 0;
  EXPECT_EQ(tg.fused.norm_statistics, want);
  int norms = 0, grads = 0;
  for (const Node& n : tg.graph.nodes) {
    if (n.op_type == "LayerNormalization") {
      ++norms;
      ASSERT_EQ(n.outputs.size(), 3u) << n.name;
      EXPECT_EQ(tg.graph.value(n.outputs[1]).shape.back(), 1) << n.name;
    }
    if (n.op_type == "LayerNormalizationGrad") {
      ++grads;
      ASSERT_GE(n.inputs.size(), 5u) << n.name;
      EXPECT_NE(n.inputs[3], kNoValue) << n.name << " reads no saved Mean";
      EXPECT_NE(n.inputs[4], kNoValue) << n.name << " reads no saved InvStdDev";
    }
  }
  EXPECT_EQ(norms, want);
  EXPECT_EQ(grads, want);
  EXPECT_EQ(tg.graph.nodes.size(), plain->trainer->training_graph().graph.nodes.size());
  testing::expect_inference_agrees(tg.graph);

  EXPECT_EQ(saved->loss, plain->loss);
  ASSERT_EQ(saved->grads.size(), plain->grads.size());
  int differ = 0;
  for (const auto& [name, want] : plain->grads) {
    const Tensor a = saved->grads.at(name).cast(DType::kFloat64), b = want.cast(DType::kFloat64);
    ASSERT_EQ(a.shape(), b.shape()) << name;
    double scale = 0, diff = 0;
    for (int64_t i = 0; i < b.numel(); ++i) {
      scale = std::max(scale, std::fabs(b.data_as<double>()[i]));
      diff = std::max(diff, std::fabs(a.data_as<double>()[i] - b.data_as<double>()[i]));
    }
    EXPECT_LE(diff, 1e-5 * scale + 1e-12) << name;
    differ += diff > 0;
  }
  // The float32 statistics do change some bits: the comparison above is not vacuous.
  if (gpt) {
    EXPECT_GT(differ, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Graphs, TinyNormStatistics, ::testing::Values("gpt-tiny", "llama-tiny"),
                         [](const auto& info) { return info.param == "gpt-tiny" ? "Gpt" : "Llama"; });

}  // namespace
}  // namespace gv
