#include <gtest/gtest.h>

#include "runtime/memory_plan.h"
#include "runtime/op_registry.h"
#include "runtime/tensor.h"

namespace gv {
namespace {

TEST(Tensor, CastRoundTrip) {
  Tensor t = Tensor::from_f32({1.5f, -2.0f, 3.25f}, {3});
  Tensor h = t.cast(DType::kFloat16).cast(DType::kFloat32);
  Tensor b = t.cast(DType::kBFloat16).cast(DType::kFloat32);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(h.data_as<float>()[i], t.data_as<float>()[i]);
    EXPECT_EQ(b.data_as<float>()[i], t.data_as<float>()[i]);
  }
  Tensor i = t.cast(DType::kInt64);
  EXPECT_EQ(i.data_as<int64_t>()[0], 1);
  EXPECT_EQ(i.data_as<int64_t>()[1], -2);
}

TEST(MemoryPlan, ReusesDeadBuffers) {
  // A chain x -> a -> b -> c of equal sizes needs two live buffers at a time, not four.
  Graph g;
  ValueId x = g.add_input("x", DType::kFloat32, {16});
  std::vector<ValueId> vals = {x};
  for (int i = 0; i < 3; ++i) {
    Value v;
    v.name = "v" + std::to_string(i);
    v.dtype = DType::kFloat32;
    v.shape = {16};
    ValueId id = g.add_value(v);
    Node n;
    n.op_type = "Relu";
    n.inputs = {vals.back()};
    n.outputs = {id};
    g.nodes.push_back(n);
    vals.push_back(id);
  }
  g.outputs = {vals.back()};
  std::vector<NodeId> order = {0, 1, 2};
  MemoryPlan p = plan_memory(g, order, {});
  EXPECT_EQ(p.naive_bytes, 4u * 64);
  EXPECT_EQ(p.arena_bytes, 2u * 64);
  // Overlapping lifetimes never share bytes.
  for (int i = 0; i + 1 < 4; ++i) EXPECT_NE(p.offset[vals[i]], p.offset[vals[i + 1]]);
}


// x -> Relu -> a -> Reshape -> b -> Relu -> c, with `tail` appended after it.
struct ViewChain {
  Graph g;
  ValueId a, b, c;
  ValueId add(const std::string& name, Shape shape) {
    Value v;
    v.name = name;
    v.dtype = DType::kFloat32;
    v.shape = std::move(shape);
    return g.add_value(v);
  }
  void node(const std::string& op, std::vector<ValueId> in, std::vector<ValueId> out, std::string domain = "") {
    Node n;
    n.op_type = op;
    n.domain = std::move(domain);
    n.inputs = std::move(in);
    n.outputs = std::move(out);
    g.nodes.push_back(n);
  }
  ViewChain() {
    ValueId x = g.add_input("x", DType::kFloat32, {4, 4});
    a = add("a", {4, 4});
    b = add("b", {16});
    c = add("c", {16});
    node("Relu", {x}, {a});
    node("Reshape", {a, kNoValue}, {b});
    node("Relu", {b}, {c});
    g.outputs = {c};
  }
  std::vector<NodeId> order() const {
    std::vector<NodeId> o(g.nodes.size());
    for (size_t i = 0; i < o.size(); ++i) o[i] = static_cast<NodeId>(i);
    return o;
  }
};

TEST(MemoryPlan, ViewsShareTheirInputsBuffer) {
  ViewChain v;
  MemoryPlan p = plan_memory(v.g, v.order(), {});
  EXPECT_EQ(p.alias_of[v.b], v.a);
  EXPECT_EQ(p.offset[v.b], p.offset[v.a]);
  EXPECT_NE(p.offset[v.c], p.offset[v.a]);  // a lives while b is read
  MemoryPlan no = plan_memory(v.g, v.order(), {}, 64, /*alias_views=*/false);
  EXPECT_EQ(no.alias_of[v.b], kNoValue);
  EXPECT_NE(no.offset[v.b], no.offset[v.a]);
}

TEST(MemoryPlan, ViewsOfBuffersWrittenInPlaceAreCopies) {
  // An in-place op (no outputs) on the view's input must not change the view.
  ViewChain v;
  v.node("AllReduce", {v.a}, {}, "galvatron");
  MemoryPlan p = plan_memory(v.g, v.order(), {});
  EXPECT_EQ(p.alias_of[v.b], kNoValue);
  EXPECT_NE(p.offset[v.b], p.offset[v.a]);
}

// AdamW and SGD read their gradient (unless they zero it), learning rate and step: a gradient made by a view keeps the
// view's shared buffer (no copy), and the buffers they do write never share one.
TEST(MemoryPlan, UpdateGradientsMayBeViews) {
  for (int zero_grad : {0, 1}) {
    SCOPED_TRACE(zero_grad);
    ViewChain v;
    const ValueId w = v.g.add_initializer("w", Tensor(DType::kFloat32, {16}), ValueKind::kParameter);
    const ValueId m = v.g.add_initializer("m", Tensor(DType::kFloat32, {16}), ValueKind::kState);
    const ValueId s = v.g.add_initializer("s", Tensor(DType::kFloat32, {16}), ValueKind::kState);
    const ValueId lr = v.g.add_input("lr", DType::kFloat64, {});
    const ValueId step = v.g.add_input("step", DType::kInt64, {});
    v.node("AdamW", {w, v.b, m, s, lr, step}, {}, "galvatron");
    v.g.nodes.back().attrs.set_int("zero_grad", zero_grad);
    const OpSchema* schema = OpRegistry::global().find("galvatron", "AdamW");
    ASSERT_NE(schema, nullptr);
    const Node& n = v.g.nodes.back();
    for (size_t i : {0, 2, 3}) EXPECT_TRUE(node_writes_input(schema, n, i)) << i;
    for (size_t i : {4, 5}) EXPECT_FALSE(node_writes_input(schema, n, i)) << i;
    EXPECT_EQ(node_writes_input(schema, n, 1), zero_grad != 0);
    MemoryPlan p = plan_memory(v.g, v.order(), {});
    EXPECT_EQ(p.alias_of[v.b], zero_grad ? kNoValue : v.a);
    // SGD(param, grad, momentum, lr, step) likewise.
    v.g.nodes.back().op_type = "SGD";
    v.g.nodes.back().inputs = {w, v.b, m, lr, step};
    const OpSchema* sgd = OpRegistry::global().find("galvatron", "SGD");
    ASSERT_NE(sgd, nullptr);
    for (size_t i : {0, 2}) EXPECT_TRUE(node_writes_input(sgd, v.g.nodes.back(), i)) << i;
    for (size_t i : {3, 4}) EXPECT_FALSE(node_writes_input(sgd, v.g.nodes.back(), i)) << i;
    EXPECT_EQ(node_writes_input(sgd, v.g.nodes.back(), 1), zero_grad != 0);
    EXPECT_EQ(plan_memory(v.g, v.order(), {}).alias_of[v.b], zero_grad ? kNoValue : v.a);
  }
}

}  // namespace
}  // namespace gv
