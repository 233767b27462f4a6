// sum_grads_in_products (runtime/grad_sums_in_products.cpp) on the CPU: MatMulAccumulate into a float32 value equals
// FusedMatMul followed by the Add, bit for bit; in the tiny models' training graphs the dX sums of products that share
// an input (Llama's Q, K, V and gate, up projections) fold, chains included, with the same loss and
// every gradient bit for bit (float32, and as the CUDA backend builds it in bf16, with and without checkpointing).
#include <gtest/gtest.h>

#include <cstring>

#include "runtime/executor.h"
#include "runtime/fusion.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

TEST(GradSumsInProducts, AccumulateIsProductThenAdd) {
  const Tensor p = testing::randn_f32({6, 5}, 1), a = testing::randn_f32({6, 4}, 2), b = testing::randn_f32({5, 4}, 3);
  Attributes tb;
  tb.set_int("transB", 1);
  auto prod = testing::run_op("FusedMatMul", {a, b}, tb, 1, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(prod.has_value()) << prod.status().message();
  auto sum = testing::run_op("Add", {p, prod->outputs[0]}, {}, 1, 14);
  ASSERT_TRUE(sum.has_value()) << sum.status().message();
  Graph g;
  g.opsets[kGalvatronDomain] = 1;
  Node n;
  n.name = "acc";
  n.op_type = "MatMulAccumulate";
  n.domain = kGalvatronDomain;
  n.opset = 1;
  n.attrs = tb;
  const ValueId pv = g.add_input("p", DType::kFloat32, p.shape());
  n.inputs = {pv, g.add_input("a", DType::kFloat32, a.shape()), g.add_input("b", DType::kFloat32, b.shape())};
  ASSERT_TRUE(g.add_node(std::move(n)).has_value());
  auto backend = make_cpu_backend();
  ExecutorOptions eo;
  eo.keep_alive = {pv};
  auto ex = Executor::create(g, *backend, eo);
  ASSERT_TRUE(ex.has_value()) << ex.status().message();
  ASSERT_TRUE((*ex)->set_inputs({{"p", p}, {"a", a}, {"b", b}}).is_ok());
  ASSERT_TRUE((*ex)->run().is_ok());
  auto after = (*ex)->fetch(pv);
  ASSERT_TRUE(after.has_value()) << after.status().message();
  EXPECT_EQ(std::memcmp(after->data(), sum->outputs[0].data(), p.nbytes()), 0);
}

class TinyGradSums : public ::testing::TestWithParam<std::tuple<std::string, bool, bool>> {};

TEST_P(TinyGradSums, FoldedSameLossAndGradientsBitForBit) {
  const auto [model, bf16_like, checkpoint] = GetParam();
  auto tiny = testing::tiny_model(model);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  auto backend = make_cpu_backend();
  auto config = [&](bool fold) {
    TrainerConfig tc = bf16_like ? testing::cuda_bf16_like_config(false) : TrainerConfig{};
    tc.graph.sum_grads_in_products = fold;
    if (checkpoint) tc.graph.checkpoint_layers = {0};
    return tc;
  };
  auto runs = testing::train_tiny_off_on(*tiny, *backend, config);
  ASSERT_TRUE(runs.has_value()) << runs.status().message();
  const TrainingGraph& tg = runs->on.trainer->training_graph();
  // Per layer: Llama's normed input feeds Q, K, V (two sums; one where the bf16-like graph's fused Linears take K and
  // V as one product, fuse_sibling_linears) and its second norm's feeds gate and up (one). GPT-2's QKV is one product;
  // BERT's Q, K, V read the residual stream, whose gradient (read elsewhere too) comes first in the sum, so there is no
  // buffer of its own to add into.
  const int want = model == "llama-tiny" ? (bf16_like ? 2 : 3) * layers : 0;
  EXPECT_EQ(tg.fused.grad_sums_in_products, want) << tg.fused.summary();
  EXPECT_EQ(runs->off.trainer->training_graph().fused.grad_sums_in_products, 0);
  int accumulates = 0;
  for (const Node& n : tg.graph.nodes) accumulates += n.op_type == "MatMulAccumulate";
  EXPECT_EQ(accumulates, want);
  EXPECT_EQ(tg.graph.nodes.size() + static_cast<size_t>(want), runs->off.trainer->training_graph().graph.nodes.size());
  testing::expect_inference_agrees(tg.graph);
  testing::expect_same_loss_and_gradients(runs->on.loss, runs->on.grads, runs->off.loss, runs->off.grads);
}

INSTANTIATE_TEST_SUITE_P(Graphs, TinyGradSums,
                         ::testing::Combine(::testing::Values("gpt-tiny", "llama-tiny", "bert-tiny"), ::testing::Bool(),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           const std::string m = std::get<0>(info.param);
                           return std::string(m == "gpt-tiny"     ? "Gpt"
                                              : m == "llama-tiny" ? "Llama"
                                                                  : "Bert") +
                                  (std::get<1>(info.param) ? "Bf16Like" : "Float32") +
                                  (std::get<2>(info.param) ? "Checkpointed" : "");
                         });

}  // namespace
}  // namespace gv
