// Updates inside the backward pass (runtime/updates_in_backward.cpp, TrainingGraphOptions::updates_in_backward):
// every AdamW, AdamWMulti or SGD node moves to right after the last backward node that touches its parameter,
// gradient, state or bf16 copy. References: the same training with the updates after the backward (bit-identical
// parameters, losses and gradient norms; with the norm summed by the AdamW updates, grad_norm_in_updates, the norm
// within float32 rounding), and the graph's order itself (no node touches an update's buffers after it).
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "runtime/trainer.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

Expected<testing::TrainedRun> train(const testing::TinyModel& tiny, TrainerConfig tc, bool in_backward,
                                    bool norm_in_updates = true, int steps = 3) {
  tc.graph.updates_in_backward = in_backward;
  tc.graph.grad_norm_in_updates = norm_in_updates;
  return testing::train_steps(tiny, tc, {tiny.batch}, steps);
}

TEST(UpdatesInBackward, TrainAsAfterTheBackward) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  for (int variant = 0; variant < 5; ++variant) {
    SCOPED_TRACE(variant == 0   ? "float32 AdamW"
                 : variant == 1 ? "bf16 operands, AdamW writing the copies"
                 : variant == 2 ? "SGD"
                 : variant == 3 ? "float32 AdamW, the norm by its own pass"
                                : "bf16 operands, the norm by its own pass");
    TrainerConfig tc = variant == 1 || variant == 4 ? testing::cuda_bf16_like_config() : TrainerConfig{};
    if (variant == 1 || variant == 4) tc.graph.optimizer_bf16_copies = true;
    if (variant == 2) {
      tc.graph.optimizer.kind = OptimizerConfig::Kind::kSgd;
      tc.graph.optimizer.momentum = 0.9;
    }
    const bool norm_in_updates = variant < 3;
    auto after = train(*tiny, tc, false);
    ASSERT_TRUE(after.has_value()) << after.status().message();
    auto inside = train(*tiny, tc, true, norm_in_updates);
    ASSERT_TRUE(inside.has_value()) << inside.status().message();
    EXPECT_EQ(after->fused.updates_in_backward, 0);
    EXPECT_GT(inside->fused.updates_in_backward, 0);
    const bool summed = norm_in_updates && variant != 2;  // SGD keeps GradNorm
    EXPECT_EQ(inside->fused.grad_norm_in_updates, summed ? 1 : 0);
    EXPECT_EQ(after->fused.grad_norm_in_updates, 0);
    for (double norm : inside->norms) EXPECT_GT(norm, 0.0);
    // Summed in another order, the float32 norm may differ in its last bit.
    testing::expect_same_training(*after, *inside, summed ? 2.5e-7 : 0.0);
  }
}

// Every moved update comes after each node that reads or writes its buffers, before the gradient norm, and some
// run before the backward ends; WaitUpdates keeps the buffers they read alive. It ends the graph, or with the norm
// summed by the updates comes just before the GradNormEnd of the sum that a GradNormBegin before the backward starts
// and every update adds to.
void expect_updates_follow_their_buffers(bool norm_in_updates) {
  SCOPED_TRACE(norm_in_updates ? "norm summed by the updates" : "norm by its own pass");
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  TrainingGraphOptions o = testing::cuda_bf16_like_config().graph;
  o.optimizer_bf16_copies = true;
  o.updates_in_backward = true;
  o.grad_norm_in_updates = norm_in_updates;
  auto tg = build_training_graph(tiny->im.graph, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const Graph& g = tg->graph;
  const size_t n = g.nodes.size();
  ASSERT_GT(tg->fused.updates_in_backward, 0);
  EXPECT_NE(tg->fused.summary().find("optimizer updates beside the backward"), std::string::npos);
  const size_t wait_at = norm_in_updates ? n - 2 : n - 1;
  EXPECT_EQ(g.nodes[wait_at].op_type, "WaitUpdates");
  ValueId sum = kNoValue;
  if (norm_in_updates) {
    EXPECT_EQ(tg->optimizer_begin, wait_at);
    EXPECT_EQ(g.nodes[n - 1].op_type, "GradNormEnd");
    ASSERT_EQ(g.nodes[n - 1].outputs.size(), 1u);
    EXPECT_EQ(g.nodes[n - 1].outputs[0], tg->grad_norm);
    sum = g.nodes[n - 1].inputs.at(0);
    ASSERT_GE(g.value(sum).producer, 0);
    const size_t begin_at = static_cast<size_t>(g.value(sum).producer);
    EXPECT_EQ(g.nodes[begin_at].op_type, "GradNormBegin");
    EXPECT_LE(begin_at, tg->backward_begin);
    for (const Node& nd : g.nodes) EXPECT_NE(nd.op_type, "GradNorm");
  } else {
    EXPECT_EQ(g.nodes[tg->optimizer_begin].op_type, "GradNorm");
  }
  std::set<ValueId> waited(g.nodes[wait_at].inputs.begin(), g.nodes[wait_at].inputs.end());
  int updates = 0;
  size_t last_backward = 0;  // the last node of the backward that is not an update
  for (size_t i = tg->backward_begin; i < tg->optimizer_begin; ++i) {
    if (g.nodes[i].attrs.get_int("beside_backward", 0) == 0) last_backward = i;
  }
  size_t first_update = n;
  for (size_t i = 0; i < n; ++i) {
    const Node& u = g.nodes[i];
    if (u.op_type != "AdamW" && u.op_type != "AdamWMulti") continue;
    SCOPED_TRACE(u.name);
    ++updates;
    first_update = std::min(first_update, i);
    EXPECT_EQ(u.attrs.get_int("beside_backward", 0), 1);
    EXPECT_GT(i, tg->backward_begin);
    EXPECT_LT(i, tg->optimizer_begin);
    const size_t norm_at = u.op_type == "AdamW" ? 6 : 2;
    ASSERT_GT(u.inputs.size(), norm_at);
    EXPECT_EQ(u.inputs[norm_at], kNoValue) << "an update without clipping reads no gradient norm";
    EXPECT_EQ(u.attrs.get_int("sum_squares", 0), norm_in_updates ? 1 : 0);
    // AdamW's accumulator is its input 8 (a split master's low halves may follow), AdamWMulti's its last.
    if (norm_in_updates) EXPECT_EQ(u.op_type == "AdamW" ? u.inputs.at(8) : u.inputs.back(), sum);
    std::set<ValueId> touched;
    for (size_t k = 0; k < u.inputs.size(); ++k) {
      const ValueId v = u.inputs[k];
      if (v == kNoValue || v == tg->lr || v == tg->step || v == sum) continue;
      touched.insert(v);
      const ValueKind kind = g.value(v).kind;
      if (kind == ValueKind::kActivation || kind == ValueKind::kInput) {
        EXPECT_TRUE(waited.count(v)) << g.value(v).name << " is not kept alive until WaitUpdates";
      }
    }
    for (size_t j = i + 1; j < tg->optimizer_begin; ++j) {
      if (g.nodes[j].attrs.get_int("beside_backward", 0)) continue;
      for (ValueId v : g.nodes[j].inputs)
        EXPECT_FALSE(touched.count(v)) << g.nodes[j].name << " reads " << g.value(v).name;
      for (ValueId v : g.nodes[j].outputs)
        EXPECT_FALSE(touched.count(v)) << g.nodes[j].name << " writes " << g.value(v).name;
    }
  }
  EXPECT_EQ(updates, tg->fused.updates_in_backward);
  EXPECT_LT(first_update, last_backward) << "no update runs beside the backward";
}

TEST(UpdatesInBackward, EachUpdateFollowsEveryNodeTouchingItsBuffers) {
  expect_updates_follow_their_buffers(true);
  expect_updates_follow_their_buffers(false);
}

// Clipping needs the global norm first, accumulation zeroes and sums gradients over micro-batches: the updates stay,
// and the reason is named.
TEST(UpdatesInBackward, StayAfterTheBackwardWithClippingOrAccumulation) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  for (int variant = 0; variant < 2; ++variant) {
    TrainingGraphOptions o;
    o.updates_in_backward = true;
    if (variant == 0)
      o.optimizer.grad_clip = 1.0;
    else
      o.grad_accum_steps = 2;
    auto tg = build_training_graph(tiny->im.graph, o);
    ASSERT_TRUE(tg.has_value()) << tg.status().message();
    EXPECT_EQ(tg->fused.updates_in_backward, 0);
    for (const Node& nd : tg->graph.nodes) {
      EXPECT_NE(nd.op_type, "WaitUpdates");
      EXPECT_EQ(nd.attrs.get_int("beside_backward", 0), 0) << nd.name;
    }
    const std::string why = why_updates_stay_after_backward(*tg);
    EXPECT_NE(why.find(variant == 0 ? "clipping" : "accumulates"), std::string::npos) << why;
  }
}

// An update asked to add its gradient's squares (attr sum_squares) without a float64 scalar accumulator: an error
// naming the node and the input it needs.
TEST(UpdatesInBackward, SumSquaresWithoutAnAccumulatorIsAnError) {
  const Tensor p = testing::randn_f32({8}, 1), g = testing::randn_f32({8}, 2);
  Tensor step(DType::kInt64, {});
  step.data_as<int64_t>()[0] = 1;
  Attributes a;
  a.set_int("sum_squares", 1);
  for (int variant = 0; variant < 2; ++variant) {
    std::vector<Tensor> in = {p, g, p, p, Tensor::scalar(DType::kFloat64, 1e-3), step, Tensor(), Tensor()};
    if (variant == 1) in.push_back(Tensor::scalar(DType::kFloat32, 0.0));  // not float64
    auto r = testing::run_op("AdamW", in, a, 0, 1, {}, kGalvatronDomain);
    ASSERT_FALSE(r.has_value());
    const std::string msg = r.status().message();
    EXPECT_NE(msg.find("sum_squares = 1 needs input 8: a float64 scalar accumulator"), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  }
}

// Gradients cannot be read from a trainer whose updates run inside the backward: the error says so.
TEST(UpdatesInBackward, ComputeGradientsIsRefused) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  TrainerConfig tc;
  tc.graph.updates_in_backward = true;
  auto t = Trainer::create(testing::fresh_graph(tiny->im.graph), tc, *backend);
  ASSERT_TRUE(t.has_value()) << t.status().message();
  double loss = 0;
  auto grads = (*t)->compute_gradients(tiny->batch, &loss);
  ASSERT_FALSE(grads.has_value());
  EXPECT_NE(grads.status().message().find("updates_in_backward"), std::string::npos) << grads.status().message();
}

// The bias gradients the CUDA-like graph reshapes from keepdims sums ([1, 1, N] -> [N]) are read by the updates
// only: their Reshapes share the sums' buffers (the executor skips them) instead of copying, and every update
// input the updates write keeps a buffer of its own.
TEST(UpdatesInBackward, ReshapedGradientsShareTheirBuffers) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  TrainerConfig tc = testing::cuda_bf16_like_config();
  tc.graph.optimizer_bf16_copies = true;
  tc.graph.fuse_residual_add = true;
  tc.graph.fuse_norm_grad_add = true;
  tc.graph.fuse_norm_grad_outputs = true;
  tc.graph.updates_in_backward = true;
  auto t = Trainer::create(testing::fresh_graph(tiny->im.graph), tc, *backend);
  ASSERT_TRUE(t.has_value()) << t.status().message();
  const Graph& g = (*t)->training_graph().graph;
  const MemoryPlan& plan = (*t)->executor().memory_plan();
  int shared = 0;
  for (const Node& n : g.nodes) {
    if (n.op_type != "AdamW" && n.op_type != "AdamWMulti") continue;
    const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type);
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const ValueId v = n.inputs[i];
      if (v == kNoValue) continue;
      if (node_writes_input(schema, n, i)) {
        EXPECT_EQ(plan.alias_of[v], kNoValue) << g.value(v).name;
        continue;
      }
      const NodeId p = g.value(v).producer;
      if (p < 0 || g.nodes[p].op_type != "Reshape") continue;
      EXPECT_NE(plan.alias_of[v], kNoValue) << g.value(v).name;
      shared += plan.alias_of[v] != kNoValue;
    }
  }
  EXPECT_GT(shared, 0);
  auto losses = testing::train_steps(*tiny, tc, {tiny->batch}, 2);
  ASSERT_TRUE(losses.has_value()) << losses.status().message();
}

}  // namespace
}  // namespace gv
