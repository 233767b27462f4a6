// galvatron GatherGradAdd (runtime/ops/movement_index_ops.cpp) and the pass that forms it after autograd
// (runtime/fuse_gather_grad_add.cpp), on the CPU:
// - the op is Base plus GatherGrad's rows (duplicates and negative indices add up, padding_idx adds nothing), and bad
//   inputs are errors naming the node;
// - on gpt-tiny (its LM head is its token embedding) the tied embedding's gradient sum becomes one GatherGradAdd:
//   the loss is the same bits, the embedding's gradient within float32 rounding of the Add's, every other gradient
//   the same bits; with the pass off the Add stays.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "runtime/fusion.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

Expected<Tensor> run_add(const Tensor& base, const Tensor& grad, const Tensor& idx, const Attributes& attrs) {
  GV_ASSIGN_OR_RETURN(testing::OpRun r,
                      testing::run_op("GatherGradAdd", {base, grad, idx}, attrs, 1, 1, {}, kGalvatronDomain));
  return r.outputs[0];
}

TEST(GatherGradAdd, BasePlusTheRows) {
  const Tensor dst = testing::randn_f32({5, 3}, 1), grad = testing::randn_f32({2, 3, 3}, 2);
  const Tensor idx = Tensor::from_i64({1, -1, 1, 0, 4, 3}, {2, 3});
  for (int64_t pad : {-1, 1}) {
    SCOPED_TRACE("padding_idx " + std::to_string(pad));
    Attributes a;
    a.set_int("axis", 0);
    if (pad >= 0) a.set_int("padding_idx", pad);
    auto got = run_add(dst, grad, idx, a);
    ASSERT_TRUE(got.has_value()) << got.status().message();
    std::vector<float> want(dst.data_as<float>(), dst.data_as<float>() + dst.numel());
    for (int64_t j = 0; j < 6; ++j) {
      int64_t row = idx.data_as<int64_t>()[j];
      if (row < 0) row += 5;
      if (row == pad) continue;
      for (int64_t c = 0; c < 3; ++c) want[row * 3 + c] += grad.data_as<float>()[j * 3 + c];
    }
    ASSERT_EQ(got->shape(), dst.shape());
    for (int64_t i = 0; i < dst.numel(); ++i) EXPECT_EQ(got->data_as<float>()[i], want[i]) << i;
  }
}

TEST(GatherGradAdd, BadInputsNameTheNode) {
  const Tensor dst = testing::randn_f32({5, 3}, 1), idx = Tensor::from_i64({1, 2}, {2});
  Attributes a;
  a.set_int("axis", 0);
  auto shape = run_add(dst, testing::randn_f32({3, 3}, 2), idx, a);
  ASSERT_FALSE(shape.has_value());
  EXPECT_NE(shape.status().message().find("test_node"), std::string::npos) << shape.status().message();
  EXPECT_NE(shape.status().message().find("does not match Gather's output"), std::string::npos);
  auto type = run_add(dst, testing::randn_f32({2, 3}, 2).cast(DType::kFloat64), idx, a);
  ASSERT_FALSE(type.has_value());
  EXPECT_NE(type.status().message().find("dtype differs"), std::string::npos) << type.status().message();
  Attributes pad = a;
  pad.set_int("padding_idx", 5);
  auto p = run_add(dst, testing::randn_f32({2, 3}, 2), idx, pad);
  ASSERT_FALSE(p.has_value());
  EXPECT_NE(p.status().message().find("padding_idx 5 is out of range"), std::string::npos) << p.status().message();
  auto range = run_add(dst, testing::randn_f32({2, 3}, 2), Tensor::from_i64({1, 7}, {2}), a);
  ASSERT_FALSE(range.has_value());
  EXPECT_NE(range.status().message().find("test_node"), std::string::npos) << range.status().message();
}

TEST(GatherGradAdd, TiedEmbeddingGradientSumInOneNode) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  auto config = [](bool fold) {
    TrainerConfig tc;
    tc.graph.fold_gather_grad_adds = fold;
    return tc;
  };
  auto off = testing::train_tiny(*tiny, *backend, config(false));
  ASSERT_TRUE(off.has_value()) << off.status().message();
  auto on = testing::train_tiny(*tiny, *backend, config(true));
  ASSERT_TRUE(on.has_value()) << on.status().message();

  const Graph& off_graph = off->trainer->training_graph().graph;
  const TrainingGraph& tg = on->trainer->training_graph();
  EXPECT_EQ(tg.fused.gather_grad_adds, 1);
  EXPECT_EQ(off->trainer->training_graph().fused.gather_grad_adds, 0);
  auto count = [](const Graph& g, const char* op) {
    int n = 0;
    for (const Node& node : g.nodes) n += node.op_type == op;
    return n;
  };
  EXPECT_EQ(count(tg.graph, "GatherGradAdd"), 1);
  EXPECT_EQ(count(tg.graph, "GatherGrad"), count(off_graph, "GatherGrad") - 1);
  EXPECT_EQ(tg.graph.nodes.size() + 1, off_graph.nodes.size());
  testing::expect_inference_agrees(tg.graph);

  EXPECT_EQ(on->loss, off->loss);
  ASSERT_EQ(on->grads.size(), off->grads.size());
  for (const auto& [name, want] : off->grads) {
    const Tensor& got = on->grads.at(name);
    ASSERT_EQ(got.shape(), want.shape()) << name;
    if (name == "transformer.wte.weight") {
      EXPECT_LE(testing::relative_gap(got, want), 1e-6) << name;
    } else {
      EXPECT_EQ(std::memcmp(got.data(), want.data(), want.nbytes()), 0) << name;
    }
  }
}

}  // namespace
}  // namespace gv
