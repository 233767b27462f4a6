// Gradient accumulation inside the weight-gradient products (TrainingGraphOptions::accumulate_in_products,
// galvatron MatMulAccumulate): with several micro-batches per step, a FusedMatMul whose float32 gradient only an
// AccumulateGrad read becomes one node adding into the accumulator. References: the same training with the
// AccumulateGrad nodes (bit-identical on the CPU, whose kernel computes the product and then adds), and the op's
// checks.
#include <gtest/gtest.h>

#include <set>

#include "models/zoo.h"
#include "runtime/op_registry.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

Expected<testing::TrainedRun> train(const testing::TinyModel& tiny, const TensorMap& second, TrainerConfig tc,
                                    bool fold) {
  tc.graph.grad_accum_steps = 2;
  tc.graph.accumulate_in_products = fold;
  return testing::train_steps(tiny, tc, {tiny.batch, second});
}

TEST(AccumulatingProducts, TrainAsWithAccumulateGrad) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto cfg = zoo_config("", "gpt-tiny");
  ASSERT_TRUE(cfg.has_value());
  const TensorMap second = testing::random_lm_batch(cfg->vocab_size, 2, 16, 12);
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "float32" : "bf16 operands, fused Linear");
    const TrainerConfig tc = variant == 0 ? TrainerConfig{} : testing::cuda_bf16_like_config();
    auto plain = train(*tiny, second, tc, false);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    auto folded = train(*tiny, second, tc, true);
    ASSERT_TRUE(folded.has_value()) << folded.status().message();
    EXPECT_EQ(plain->fused.accumulating_products, 0);
    EXPECT_GT(folded->fused.accumulating_products, 0);
    testing::expect_same_training(*plain, *folded);
  }
}

// The folded graph: one MatMulAccumulate per folded gradient, each writing an accumulator, the others accumulated by
// AccumulateGrad; no accumulation at all with one micro-batch.
TEST(AccumulatingProducts, GraphShape) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  TrainingGraphOptions o = testing::cuda_bf16_like_config().graph;
  o.grad_accum_steps = 3;
  auto tg = build_training_graph(tiny->im.graph, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  std::set<ValueId> accumulators;
  for (const auto& [p, acc] : tg->grad_accumulators) accumulators.insert(acc);
  int products = 0, adds = 0;
  for (const Node& n : tg->graph.nodes) {
    if (n.domain != kGalvatronDomain) continue;
    if (n.op_type == "MatMulAccumulate") {
      ++products;
      EXPECT_TRUE(n.outputs.empty());
      ASSERT_EQ(n.inputs.size(), 3u);
      EXPECT_TRUE(accumulators.count(n.inputs[0])) << n.name;
    }
    if (n.op_type == "AccumulateGrad") ++adds;
  }
  EXPECT_EQ(products, tg->fused.accumulating_products);
  EXPECT_GT(products, 0);
  EXPECT_EQ(products + adds, static_cast<int>(tg->params.size()));
  EXPECT_NE(tg->fused.summary().find("weight-gradient products adding into their accumulators"), std::string::npos);

  o.grad_accum_steps = 1;
  auto single = build_training_graph(tiny->im.graph, o);
  ASSERT_TRUE(single.has_value()) << single.status().message();
  EXPECT_EQ(single->fused.accumulating_products, 0);
}

// The op on its own: Acc += A^T @ B against FusedMatMul's result added by hand; a wrong accumulator is an error that
// names the node.
TEST(AccumulatingProducts, OpAddsTheProduct) {
  Graph g;
  const ValueId acc = g.add_input("acc", DType::kFloat32, {3, 2});
  const ValueId a = g.add_input("a", DType::kFloat32, {4, 3});
  const ValueId b = g.add_input("b", DType::kFloat32, {4, 2});
  Node n;
  n.op_type = "MatMulAccumulate";
  n.domain = kGalvatronDomain;
  n.name = "acc_node";
  n.inputs = {acc, a, b};
  n.attrs.set_int("transA", 1);
  n.attrs.set_float("alpha", 0.5);
  ASSERT_TRUE(g.add_node(n).has_value());
  const OpSchema* s = OpRegistry::global().find(kGalvatronDomain, "MatMulAccumulate");
  ASSERT_NE(s, nullptr);
  InferContext ic(g, g.nodes[0]);
  EXPECT_TRUE(s->infer(ic).is_ok());

  Tensor ta = Tensor::from_f32({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {4, 3});
  Tensor tb = Tensor::from_f32({1, -1, 2, 0, 0.5f, 3, -2, 1}, {4, 2});
  Tensor tacc = Tensor::from_f32({10, 20, 30, 40, 50, 60}, {3, 2});
  KernelContext kc;
  kc.node = &g.nodes[0];
  kc.inputs = {tacc.ref(), ta.ref(), tb.ref()};
  ASSERT_TRUE(s->cpu(kc).is_ok());
  // acc[i][j] += 0.5 * sum_r a[r][i] * b[r][j]
  const float* A = ta.data_as<float>();
  const float* B = tb.data_as<float>();
  const float start[6] = {10, 20, 30, 40, 50, 60};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 2; ++j) {
      float sum = 0;
      for (int r = 0; r < 4; ++r) sum += A[r * 3 + i] * B[r * 2 + j];
      EXPECT_FLOAT_EQ(tacc.data_as<float>()[i * 2 + j], start[i * 2 + j] + 0.5f * sum) << i << "," << j;
    }
  }

  Graph bad;
  const ValueId bacc = bad.add_input("acc", DType::kFloat32, {2, 2});
  const ValueId ba = bad.add_input("a", DType::kFloat32, {4, 3});
  const ValueId bb = bad.add_input("b", DType::kFloat32, {4, 2});
  n.inputs = {bacc, ba, bb};
  auto added = bad.add_node(n);  // shape inference runs as the node is added
  ASSERT_FALSE(added.has_value());
  EXPECT_NE(added.status().message().find("acc_node"), std::string::npos) << added.status().message();
  EXPECT_NE(added.status().message().find("does not hold"), std::string::npos) << added.status().message();
}

}  // namespace
}  // namespace gv
