// AdamWMulti (runtime/ops/training_ops.cpp): the training graph updates small whole parameters (biases, norm scales)
// 48 at a time; three AdamW steps with gradient clipping give bit-identical parameters and moments to one AdamW node
// per parameter, and the node checks its inputs.
#include <gtest/gtest.h>

#include <cstring>

#include "models/zoo.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

int count_ops(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op;
  return n;
}

TEST(MultiTensorOptimizer, SameUpdatesAsOneNodePerParameter) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const ImportedModel* im = &tiny->im;
  const TensorMap& batch = tiny->batch;
  auto backend = make_cpu_backend();
  auto train = [&](bool multi, int* multi_nodes, int* single_nodes) -> Expected<TensorMap> {
    TrainerConfig tc;
    tc.graph.multi_tensor_optimizer = multi;
    tc.graph.optimizer.grad_clip = 0.5;  // clipping engaged: the norm input is read
    tc.lr = 1e-3;
    Graph fresh = im->graph;  // the CPU trains the initializers' buffers in place: each run from its own copy
    for (Value& v : fresh.values)
      if (v.data.defined()) v.data = v.data.clone();
    GV_ASSIGN_OR_RETURN(auto t, Trainer::create(std::move(fresh), tc, *backend));
    *multi_nodes = count_ops(t->training_graph().graph, "AdamWMulti");
    *single_nodes = count_ops(t->training_graph().graph, "AdamW");
    for (int s = 0; s < 3; ++s) GV_RETURN_IF_ERROR(t->step({batch}).status());
    return t->parameters();
  };
  int multi_nodes = 0, single_nodes = 0, plain_multi = 0, plain_single = 0;
  auto grouped = train(true, &multi_nodes, &single_nodes);
  ASSERT_TRUE(grouped.has_value()) << grouped.status().message();
  auto plain = train(false, &plain_multi, &plain_single);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  EXPECT_EQ(plain_multi, 0);
  EXPECT_GE(multi_nodes, 1);
  EXPECT_LT(single_nodes, plain_single) << "no parameter was grouped";
  ASSERT_EQ(grouped->size(), plain->size());
  for (const auto& [name, p] : *plain) {
    ASSERT_TRUE(grouped->count(name)) << name;
    EXPECT_EQ(std::memcmp(p.data(), grouped->at(name).data(), p.nbytes()), 0) << name;
  }
}

TEST(MultiTensorOptimizer, InputsAreChecked) {
  Graph g;
  g.opsets[kGalvatronDomain] = 1;
  auto in = [&](const std::string& n, DType t, Shape s) { return g.add_input(n, t, s); };
  Node n;
  n.name = "bad_multi";
  n.op_type = "AdamWMulti";
  n.domain = kGalvatronDomain;
  n.opset = 1;
  n.inputs = {in("lr", DType::kFloat64, {}), in("step", DType::kInt64, {}), kNoValue, in("p", DType::kFloat32, {4}),
              in("g", DType::kFloat32, {4}), in("m", DType::kFloat32, {5}), in("v", DType::kFloat32, {4})};
  auto r = g.add_node(n);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("bad_multi"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("one dtype and size"), std::string::npos) << r.status().message();
  n.inputs.pop_back();  // not four per parameter
  EXPECT_FALSE(g.add_node(n).has_value());
}

}  // namespace
}  // namespace gv
