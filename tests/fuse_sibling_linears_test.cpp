// fuse_sibling_linears (runtime/fuse_sibling_linears.cpp) on hand-built graphs: the narrow biased products of one
// input (a Qwen2-like layer's K and V beside its full-width Q) become one Linear over their weights' Concat and a
// Split, with the loss and every gradient (weights and biases) of the unfused graph; products of different inputs, a
// lone narrow product and wide products stay as they are.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/fusion.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"

namespace gv {
namespace {

ValueId op(Graph& g, const std::string& type, std::vector<ValueId> in, Attributes a = {}) {
  return testing::add_op(g, type, std::move(in), std::move(a));
}

ValueId param(Graph& g, const std::string& name, const Shape& s, uint64_t seed) {
  return g.add_initializer(name, testing::randn_f32(s, seed), ValueKind::kParameter);
}

// x [2, 3, 8] -> q = x Wq + bq [.., 8], k = x Wk + bk [.., 2], v = x Wv + bv [.., 2] (and, with `other`, a narrow
// product of another input); loss = sum over their Concat's columns of a column weight times the square.
Graph layer(bool other) {
  Graph g;
  g.opsets[""] = 20;
  const ValueId x = g.add_input("x", DType::kFloat32, {2, 3, 8});
  std::vector<ValueId> outs;
  int seed = 1;
  for (const auto& [name, n] : std::vector<std::pair<std::string, int64_t>>{{"q", 8}, {"k", 2}, {"v", 2}}) {
    const ValueId w = param(g, name + ".weight", {8, n}, seed++), b = param(g, name + ".bias", {n}, seed++);
    outs.push_back(op(g, "Add", {op(g, "MatMul", {x, w}), b}));
  }
  if (other) {
    const ValueId x2 = g.add_input("x2", DType::kFloat32, {2, 3, 8});
    outs.push_back(op(g, "MatMul", {x2, param(g, "o.weight", {8, 2}, seed++)}));
  }
  Attributes cat;
  cat.set_int("axis", -1);
  const ValueId y = op(g, "Concat", outs, cat);
  // Each column weighted apart, so that an output handed to the wrong consumer changes the loss.
  const int64_t cols = other ? 14 : 12;
  Tensor ramp(DType::kFloat32, {cols});
  for (int64_t i = 0; i < cols; ++i) ramp.data_as<float>()[i] = 0.5f + 0.25f * static_cast<float>(i);
  const ValueId z = op(g, "Mul", {y, g.add_initializer("ramp", ramp, ValueKind::kConstant)});
  Attributes keep;
  keep.set_int("keepdims", 0);
  g.outputs = {op(g, "ReduceSum", {op(g, "Mul", {z, y})}, keep)};
  return g;
}

struct TrainRun {
  TensorMap grads;
  double loss = 0;
  int groups = -1;
  int linears = -1;
};

TrainRun train(const Graph& g, const TensorMap& batch, bool siblings) {
  TrainRun r;
  auto backend = make_cpu_backend();
  TrainerConfig tc;
  tc.graph.fuse_linear = true;
  tc.graph.fuse_sibling_linears = siblings;
  auto t = Trainer::create(g, tc, *backend);
  EXPECT_TRUE(t.has_value()) << t.status().message();
  if (!t.has_value()) return r;
  r.groups = (*t)->training_graph().fused.sibling_linears;
  r.linears = 0;
  for (const Node& n : (*t)->training_graph().graph.nodes) r.linears += n.op_type == "Linear";
  auto grads = (*t)->compute_gradients(batch, &r.loss);
  EXPECT_TRUE(grads.has_value()) << grads.status().message();
  if (grads.has_value()) r.grads = std::move(*grads);
  return r;
}

void expect_same(const TrainRun& a, const TrainRun& b) {
  EXPECT_NEAR(a.loss, b.loss, 1e-6 * std::fabs(b.loss));
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (const auto& [name, g] : b.grads) {
    ASSERT_TRUE(a.grads.count(name)) << name;
    EXPECT_LE(testing::relative_gap(a.grads.at(name), g), 1e-6) << "gradient of " << name;
  }
}

TEST(FuseSiblingLinears, NarrowBiasedProductsOfOneInputJoin) {
  const Graph g = layer(false);
  const TensorMap batch = {{"x", testing::randn_f32({2, 3, 8}, 11)}};
  const TrainRun plain = train(g, batch, false), joined = train(g, batch, true);
  EXPECT_EQ(plain.groups, 0);
  EXPECT_EQ(plain.linears, 3);
  EXPECT_EQ(joined.groups, 1);  // K and V; Q (as wide as its input) alone
  EXPECT_EQ(joined.linears, 2);
  EXPECT_EQ(joined.grads.size(), 6u);  // every weight and bias still has its own gradient
  expect_same(joined, plain);
}

TEST(FuseSiblingLinears, OtherInputsStayApart) {
  const Graph g = layer(true);
  const TensorMap batch = {{"x", testing::randn_f32({2, 3, 8}, 11)}, {"x2", testing::randn_f32({2, 3, 8}, 12)}};
  const TrainRun plain = train(g, batch, false), joined = train(g, batch, true);
  EXPECT_EQ(joined.groups, 1);  // K and V; the product of x2 (no bias, another input) stays
  EXPECT_EQ(joined.linears, plain.linears - 1);
  expect_same(joined, plain);
}

TEST(FuseSiblingLinears, WideOrLoneProductsStay) {
  Graph g;
  g.opsets[""] = 20;
  const ValueId x = g.add_input("x", DType::kFloat32, {4, 8});
  // Two products of x as wide as x (Q-like), and one narrow product alone in its group (no bias beside two biased).
  const ValueId a = op(g, "Add", {op(g, "MatMul", {x, param(g, "a.weight", {8, 8}, 1)}), param(g, "a.bias", {8}, 2)});
  const ValueId b = op(g, "Add", {op(g, "MatMul", {x, param(g, "b.weight", {8, 8}, 3)}), param(g, "b.bias", {8}, 4)});
  const ValueId c = op(g, "MatMul", {x, param(g, "c.weight", {8, 4}, 5)});
  Attributes cat;
  cat.set_int("axis", -1);
  const ValueId y = op(g, "Concat", {a, b, c}, cat);
  Attributes keep;
  keep.set_int("keepdims", 0);
  g.outputs = {op(g, "ReduceSum", {op(g, "Mul", {y, y})}, keep)};
  int fused = 0;
  Graph f = g;
  ASSERT_TRUE(fuse_linear(f, {}, &fused).is_ok());
  EXPECT_EQ(fused, 3);
  int siblings = 0;
  ASSERT_TRUE(fuse_sibling_linears(f, &siblings).is_ok());
  EXPECT_EQ(siblings, 0);
}

}  // namespace
}  // namespace gv
