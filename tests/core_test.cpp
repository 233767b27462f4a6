#include <gtest/gtest.h>

#include "runtime/memory_plan.h"
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

}  // namespace
}  // namespace gv
