// TrainingGraphOptions::bf16_weight_grads (runtime/training_graph.cpp) on the CPU: in gpt-tiny's training graph as the
// CUDA backend builds it, each weight gradient made by a dW product is written by that product in bf16 and read so by
// the gradient norm and AdamW; the gradients are exactly the bf16 roundings of the float32 graph's, training follows
// float32 gradients within bf16 precision, and with gradient accumulation nothing changes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

TrainerConfig config(bool bf16_grads, int micro_batches = 1) {
  TrainerConfig tc = testing::cuda_bf16_like_config();
  tc.graph.bf16_weight_grads = bf16_grads;
  tc.graph.grad_accum_steps = micro_batches;
  tc.lr = 1e-2;
  return tc;
}

TEST(Bf16WeightGrads, DwProductsWriteBf16AndTheOptimizerReadsIt) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  auto t = Trainer::create(tiny->im.graph, config(true), *backend);
  ASSERT_TRUE(t.has_value()) << t.status().message();
  const TrainingGraph& tg = (*t)->training_graph();
  const Graph& g = tg.graph;
  // c_attn, attention c_proj, c_fc and MLP c_proj weights of every layer (the tied embedding's gradient is a sum).
  EXPECT_EQ(tg.fused.bf16_weight_grads, 4 * tiny->im.graph.num_layers);
  int bf16_grads = 0;
  for (const auto& [p, grad] : tg.grads) {
    if (g.value(grad).dtype != DType::kBFloat16) continue;
    ++bf16_grads;
    const Node& mm = g.nodes[g.value(grad).producer];
    EXPECT_EQ(mm.op_type, "FusedMatMul") << g.value(p).name;
    EXPECT_EQ(mm.attrs.get_int("out_dtype", 1), 16) << g.value(p).name;
    for (const Node& n : g.nodes) {
      for (ValueId in : n.inputs) {
        if (in != grad) continue;
        EXPECT_TRUE(n.op_type == "GradNorm" || n.op_type == "AdamW") << n.name << " reads " << g.value(p).name;
      }
    }
  }
  EXPECT_EQ(bf16_grads, tg.fused.bf16_weight_grads);
  testing::expect_inference_agrees(g);
  // Accumulating micro-batches keeps float32 gradients.
  auto accum = Trainer::create(tiny->im.graph, config(true, 2), *backend);
  ASSERT_TRUE(accum.has_value()) << accum.status().message();
  EXPECT_EQ((*accum)->training_graph().fused.bf16_weight_grads, 0);
}

TEST(Bf16WeightGrads, GradientsAreTheRoundedFloat32OnesAndTrainingFollows) {
  auto backend = make_cpu_backend();
  struct Run {
    TensorMap grads;
    std::vector<double> losses;
  };
  auto run = [&](bool bf16_grads) -> Expected<Run> {
    GV_ASSIGN_OR_RETURN(testing::TinyModel tiny, testing::tiny_model("gpt-tiny"));
    GV_ASSIGN_OR_RETURN(auto t, Trainer::create(tiny.im.graph, config(bf16_grads), *backend));
    Run r;
    double loss = 0;
    GV_ASSIGN_OR_RETURN(r.grads, t->compute_gradients(tiny.batch, &loss));
    for (int s = 0; s < 4; ++s) {
      GV_ASSIGN_OR_RETURN(StepMetrics m, t->step({tiny.batch}));
      r.losses.push_back(m.loss);
    }
    return r;
  };
  auto f32 = run(false);
  ASSERT_TRUE(f32.has_value()) << f32.status().message();
  auto b16 = run(true);
  ASSERT_TRUE(b16.has_value()) << b16.status().message();
  int rounded = 0;
  for (const auto& [name, g] : f32->grads) {
    const Tensor& got = b16->grads.at(name);
    ASSERT_EQ(got.dtype(), DType::kFloat32) << name;  // reported widened
    const Tensor want = g.cast(DType::kBFloat16).cast(DType::kFloat32);
    const bool is_rounded = std::memcmp(got.data(), want.data(), want.nbytes()) == 0;
    const bool is_same = std::memcmp(got.data(), g.data(), g.nbytes()) == 0;
    EXPECT_TRUE(is_rounded || is_same) << name;
    rounded += is_rounded && !is_same;
  }
  EXPECT_GE(rounded, 8);  // 4 weights per layer, 2 layers
  bool differs = false;
  for (size_t s = 0; s < f32->losses.size(); ++s) {
    EXPECT_LT(std::abs(b16->losses[s] - f32->losses[s]) / std::abs(f32->losses[s]), 2e-3) << "step " << s + 1;
    differs = differs || b16->losses[s] != f32->losses[s];
  }
  EXPECT_TRUE(differs) << "bf16 weight gradients trained exactly as float32 ones: were they applied?";
}

}  // namespace
}  // namespace gv
