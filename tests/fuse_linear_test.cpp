// fuse_linear (runtime/fuse_linear.cpp) on hand-built chains: MatMul + bias Add + Gelu, torch.onnx's Gemm + Reshape +
// Gelu, and MatMul of a Transposed weight become one galvatron Linear computing the same values; a pre-activation or
// product that something else reads, a value named in `keep`, a broadcast (non-[N]) bias and a plain MatMul keep
// their nodes.
#include <gtest/gtest.h>


#include "runtime/fusion.h"
#include "tests/op_test_util.h"

namespace gv {
namespace {

Tensor randn(const Shape& s, uint64_t seed) { return testing::randn_f32(s, seed); }


int count_ops(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op;
  return n;
}

ValueId op(Graph& g, const std::string& type, std::vector<ValueId> in, Attributes a = {}) {
  return testing::add_op(g, type, std::move(in), std::move(a));
}

// Fuses a copy of g and checks the outputs against the unfused graph's (1e-6 relative).
int fuse_and_compare(const Graph& g, const std::map<std::string, Tensor>& feeds, const std::set<std::string>& keep,
                     Graph* fused_out = nullptr) {
  Graph f = g;
  int fused = 0;
  EXPECT_TRUE(fuse_linear(f, keep, &fused).is_ok());
  auto want = testing::run_graph(g, feeds);
  auto got = testing::run_graph(f, feeds);
  EXPECT_TRUE(want.has_value() && got.has_value()) << (got.has_value() ? "" : got.status().message());
  if (want.has_value() && got.has_value()) {
    for (size_t i = 0; i < want->size(); ++i) {
      EXPECT_EQ((*got)[i].shape(), (*want)[i].shape());
      EXPECT_LE(testing::relative_gap((*got)[i], (*want)[i], 1e-30), 1e-6) << "output " << i;
    }
  }
  if (fused_out) *fused_out = std::move(f);
  return fused;
}

Attributes tanh_gelu() {
  Attributes a;
  a.set_string("approximate", "tanh");
  return a;
}

TEST(FuseLinear, MatMulBiasGelu) {
  Graph g;
  g.opsets[""] = 20;
  const ValueId x = g.add_input("x", DType::kFloat32, {2, 5, 8}), w = g.add_input("w", DType::kFloat32, {8, 16}),
                b = g.add_input("b", DType::kFloat32, {16});
  const ValueId y = op(g, "Gelu", {op(g, "Add", {op(g, "MatMul", {x, w}), b})}, tanh_gelu());
  g.outputs = {y};
  Graph f;
  const std::map<std::string, Tensor> feeds = {{"x", randn({2, 5, 8}, 1)}, {"w", randn({8, 16}, 2)}, {"b", randn({16}, 3)}};
  EXPECT_EQ(fuse_and_compare(g, feeds, {}, &f), 1);
  ASSERT_EQ(f.nodes.size(), 1u);
  EXPECT_EQ(f.nodes[0].op_type, "Linear");
  EXPECT_EQ(f.nodes[0].attrs.get_string("activation", ""), "gelu_tanh");
  EXPECT_EQ(f.nodes[0].outputs.size(), 2u);  // Y and the pre-activation
}

TEST(FuseLinear, GemmReshapeGeluAndTransposedWeight) {
  Graph g;
  g.opsets[""] = 20;
  const ValueId x = g.add_input("x", DType::kFloat32, {10, 8}), w = g.add_input("w", DType::kFloat32, {16, 8}),
                b = g.add_input("b", DType::kFloat32, {16}), w2 = g.add_input("w2", DType::kFloat32, {4, 16});
  Attributes tb;
  tb.set_int("transB", 1);
  const ValueId shape = g.add_initializer("shape", Tensor::from_i64({2, 5, 16}, {3}), ValueKind::kConstant);
  const ValueId h = op(g, "Gelu", {op(g, "Reshape", {op(g, "Gemm", {x, w, b}, tb), shape})});  // erf GELU
  Attributes perm;
  perm.set_ints("perm", {1, 0});
  const ValueId z = op(g, "MatMul", {h, op(g, "Transpose", {w2}, perm)});
  g.outputs = {z};
  Graph f;
  const std::map<std::string, Tensor> feeds = {
      {"x", randn({10, 8}, 4)}, {"w", randn({16, 8}, 5)}, {"b", randn({16}, 6)}, {"w2", randn({4, 16}, 7)}};
  EXPECT_EQ(fuse_and_compare(g, feeds, {}, &f), 2);
  EXPECT_EQ(count_ops(f, "Linear"), 2);
  EXPECT_EQ(count_ops(f, "Gelu") + count_ops(f, "Gemm") + count_ops(f, "Transpose"), 0);
  EXPECT_EQ(count_ops(f, "Reshape"), 1);  // now after the activation
  for (const Node& n : f.nodes) {
    if (n.op_type == "Linear") {
      EXPECT_EQ(n.attrs.get_int("transB", 0), 1) << n.name;
    }
  }
}

TEST(FuseLinear, IntermediatesReadElsewhereOrKeptStay) {
  const std::map<std::string, Tensor> feeds = {{"x", randn({6, 8}, 8)}, {"w", randn({8, 16}, 9)}, {"b", randn({16}, 10)}};
  auto build = [](bool pre_read, bool product_read, Graph& g, ValueId& pre) {
    g.opsets[""] = 20;
    const ValueId x = g.add_input("x", DType::kFloat32, {6, 8}), w = g.add_input("w", DType::kFloat32, {8, 16}),
                  b = g.add_input("b", DType::kFloat32, {16});
    const ValueId p = op(g, "MatMul", {x, w});
    pre = op(g, "Add", {p, b});
    g.outputs = {op(g, "Gelu", {pre})};
    if (pre_read) g.outputs.push_back(op(g, "Relu", {pre}));
    if (product_read) g.outputs.push_back(p);
  };
  {  // the pre-activation is read by another node: bias fused, the Gelu stays
    Graph g, f;
    ValueId pre;
    build(true, false, g, pre);
    EXPECT_EQ(fuse_and_compare(g, feeds, {}, &f), 1);
    EXPECT_EQ(count_ops(f, "Gelu"), 1);
    EXPECT_EQ(count_ops(f, "Linear"), 1);
  }
  {  // the product itself is an output: nothing to fuse (a plain MatMul)
    Graph g, f;
    ValueId pre;
    build(false, true, g, pre);
    EXPECT_EQ(fuse_and_compare(g, feeds, {}, &f), 0);
    EXPECT_EQ(count_ops(f, "MatMul"), 1);
  }
  {  // the pre-activation is named in `keep` (a reported gradient): the Gelu stays
    Graph g, f;
    ValueId pre;
    build(false, false, g, pre);
    EXPECT_EQ(fuse_and_compare(g, feeds, {g.value(pre).name}, &f), 1);
    EXPECT_EQ(count_ops(f, "Gelu"), 1);
  }
  {  // a [1, N] bias (broadcast, not a row vector) is left to the Add
    Graph g;
    g.opsets[""] = 20;
    const ValueId x = g.add_input("x", DType::kFloat32, {6, 8}), w = g.add_input("w", DType::kFloat32, {8, 16}),
                  b = g.add_input("b", DType::kFloat32, {1, 16});
    g.outputs = {op(g, "Add", {op(g, "MatMul", {x, w}), b})};
    int fused = 0;
    ASSERT_TRUE(fuse_linear(g, {}, &fused).is_ok());
    EXPECT_EQ(fused, 0);
  }
}

// galvatron Linear's inference: operand dtypes, W's rank and inner size, the bias's length, the activation and
// out_dtype each give an error naming the node and the problem.
TEST(FuseLinear, LinearInferenceErrorsNameTheProblem) {
  auto error_of = [](std::vector<Tensor> in, Attributes a = {}, int outputs = 1) {
    auto r = testing::run_op("Linear", in, a, outputs, 1, {}, kGalvatronDomain);
    return r.has_value() ? std::string("ok") : r.status().message();
  };
  const Tensor x = randn({3, 4}, 1), w = randn({4, 5}, 2), b = randn({5}, 3);
  EXPECT_EQ(error_of({x, w, b}), "ok");
  Attributes gelu;
  gelu.set_string("activation", "gelu");
  EXPECT_EQ(error_of({x, w, b}, gelu, 2), "ok");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {error_of({x, randn({3, 5}, 4), b}), "has 4 columns but W"},
      {error_of({x, randn({4, 5, 1}, 5), b}), "W must be a matrix"},
      {error_of({randn({4}, 6), w, b}), "X must have rank >= 2"},
      {error_of({x, w, randn({4}, 7)}), "bias must be [5]"},
      {error_of({Tensor::from_i64({1, 2, 3, 4}, {1, 4}), w}), "float32 or bfloat16"},
      {error_of({x, w, b}, [] { Attributes a; a.set_string("activation", "relu"); return a; }()), "activation must be"},
      {error_of({x, w, b}, [] { Attributes a; a.set_int("out_dtype", 7); return a; }()), "out_dtype must be"},
  };
  for (const auto& [msg, want] : cases) {
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace gv
