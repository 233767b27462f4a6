// A tied embedding's AdamW in two parts (runtime/split_lookup_updates.cpp, TrainingGraphOptions::split_lookup_updates)
// and its ops (runtime/ops/lookup_rows_ops.cpp, AdamW's RowMask), on the CPU. References:
// - the ops: RowsLookedUp against the indices themselves; GatherGradAddInPlace against GatherGradAdd (bits); AdamW's
//   two parts over complementary rows against one whole AdamW (bits), their squares against the whole sum;
// - the pass: gpt-tiny (its LM head is its token embedding) trained with the split and without it, both with the
//   updates beside the backward: bit-equal losses and parameters, gradient norms within float rounding (the squares
//   summed in two parts); the graph's shape (the early part right after the head's gradient, the late one after the
//   in-place sum); bad inputs are errors naming the node.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "runtime/trainer.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

Tensor mask_of(std::initializer_list<int> bytes) {
  Tensor m(DType::kUInt8, {static_cast<int64_t>(bytes.size())});
  int64_t i = 0;
  for (int b : bytes) m.data_as<uint8_t>()[i++] = static_cast<uint8_t>(b);
  return m;
}

TEST(SplitLookupUpdates, RowsLookedUpMarksTheIndexedRows) {
  Attributes a;
  a.set_int("rows", 6);
  for (DType t : {DType::kInt64, DType::kInt32}) {
    auto r = testing::run_op("RowsLookedUp", {Tensor::from_i64({1, -1, 1, 3}, {2, 2}).cast(t)}, a, 1, 1, {},
                             kGalvatronDomain);
    ASSERT_TRUE(r.has_value()) << r.status().message();
    const Tensor& m = r->outputs[0];
    ASSERT_EQ(m.dtype(), DType::kUInt8);
    ASSERT_EQ(m.shape(), Shape({6}));
    const std::vector<uint8_t> want = {0, 1, 0, 1, 0, 1};  // -1 is row 5
    EXPECT_EQ(std::vector<uint8_t>(m.data_as<uint8_t>(), m.data_as<uint8_t>() + 6), want);
  }
  auto bad = testing::run_op("RowsLookedUp", {Tensor::from_i64({2, 6}, {2})}, a, 1, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("index 6 at position 1 is out of range"), std::string::npos)
      << bad.status().message();
  EXPECT_NE(bad.status().message().find("test_node"), std::string::npos) << bad.status().message();
  auto no_rows = testing::run_op("RowsLookedUp", {Tensor::from_i64({2}, {1})}, {}, 1, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(no_rows.has_value());
  EXPECT_NE(no_rows.status().message().find("attr rows"), std::string::npos) << no_rows.status().message();
}

TEST(SplitLookupUpdates, InPlaceSumEqualsGatherGradAdd) {
  const Tensor base = testing::randn_f32({7, 4}, 1), grad = testing::randn_f32({2, 5, 4}, 2);
  const Tensor idx = Tensor::from_i64({1, -1, 1, 0, 4, 3, 3, 3, 6, 2}, {2, 5});
  for (int64_t pad : {-1, 3}) {
    SCOPED_TRACE("padding_idx " + std::to_string(pad));
    Attributes a;
    a.set_int("axis", 0);
    if (pad >= 0) a.set_int("padding_idx", pad);
    auto copy = testing::run_op("GatherGradAdd", {base, grad, idx}, a, 1, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(copy.has_value()) << copy.status().message();
    auto in_place = testing::run_in_place_op("GatherGradAddInPlace", {base, grad, idx}, a);
    ASSERT_TRUE(in_place.has_value()) << in_place.status().message();
    const Tensor& got = (*in_place)[0];
    EXPECT_EQ(std::memcmp(got.data(), copy->outputs[0].data(), got.nbytes()), 0);
    EXPECT_NE(std::memcmp(got.data(), base.data(), got.nbytes()), 0);
  }
}

// The rows with mask 0 updated, then those with mask 1: the same bits as one update of the whole table (parameter,
// moments, bf16 copy); the two parts' squares add up to the whole gradient's.
TEST(SplitLookupUpdates, TwoPartsEqualOneUpdate) {
  const int64_t rows = 6, width = 5;
  const Tensor p = testing::randn_f32({rows, width}, 1), g = testing::randn_f32({rows, width}, 2);
  const Tensor m = testing::randn_f32({rows, width}, 3);
  Tensor v = testing::randn_f32({rows, width}, 4);
  for (int64_t i = 0; i < v.numel(); ++i) v.data_as<float>()[i] = std::fabs(v.data_as<float>()[i]);
  const Tensor mask = mask_of({1, 0, 0, 1, 1, 0});
  Tensor step(DType::kInt64, {});
  step.data_as<int64_t>()[0] = 2;
  const Tensor lr = Tensor::scalar(DType::kFloat64, 1e-2);
  Attributes a;
  a.set_int("sum_squares", 1);
  const Tensor zero = Tensor::scalar(DType::kFloat64, 0.0), p16 = p.cast(DType::kBFloat16);
  auto whole = testing::run_in_place_op("AdamW", {p, g, m, v, lr, step, Tensor(), p16, zero}, a);
  ASSERT_TRUE(whole.has_value()) << whole.status().message();
  std::vector<Tensor> parts = {p, g, m, v, lr, step, Tensor(), p16, zero, mask};
  double part_sums[2] = {0, 0};
  for (int value : {0, 1}) {
    Attributes pa = a;
    pa.set_int("row_mask_value", value);
    parts[8] = zero;
    auto r = testing::run_in_place_op("AdamW", parts, pa);
    ASSERT_TRUE(r.has_value()) << r.status().message();
    part_sums[value] = (*r)[8].data_as<double>()[0];
    parts = *r;
    if (value == 0) {
      EXPECT_NE(std::memcmp(parts[0].data(), (*whole)[0].data(), p.nbytes()), 0) << "half done";
    }
  }
  for (int k : {0, 2, 3, 7}) EXPECT_EQ(std::memcmp(parts[k].data(), (*whole)[k].data(), parts[k].nbytes()), 0) << k;
  const double total = (*whole)[8].data_as<double>()[0];
  EXPECT_GT(part_sums[0], 0.0);
  EXPECT_GT(part_sums[1], 0.0);
  EXPECT_NEAR(part_sums[0] + part_sums[1], total, 1e-12 * total);
}

TEST(SplitLookupUpdates, BadRowMasksAreErrors) {
  const Tensor p = testing::randn_f32({6, 5}, 1);
  Tensor step(DType::kInt64, {});
  step.data_as<int64_t>()[0] = 1;
  const Tensor lr = Tensor::scalar(DType::kFloat64, 1e-3);
  auto run = [&](const Tensor& mask, const Attributes& a) {
    return testing::run_in_place_op("AdamW", {p, p, p, p, lr, step, Tensor(), Tensor(), Tensor(), mask}, a);
  };
  Attributes ok;
  ok.set_int("row_mask_value", 1);
  auto length = run(mask_of({1, 0, 0, 1}), ok);  // 4 does not divide 30
  ASSERT_FALSE(length.has_value());
  EXPECT_NE(length.status().message().find("RowMask (input 9)"), std::string::npos) << length.status().message();
  EXPECT_NE(length.status().message().find("test_node"), std::string::npos) << length.status().message();
  auto no_value = run(mask_of({1, 0, 0, 1, 1, 0}), {});
  ASSERT_FALSE(no_value.has_value());
  EXPECT_NE(no_value.status().message().find("row_mask_value 0 or 1"), std::string::npos)
      << no_value.status().message();
  Attributes zeroing = ok;
  zeroing.set_int("zero_grad", 1);
  auto zero = run(mask_of({1, 0, 0, 1, 1, 0}), zeroing);
  ASSERT_FALSE(zero.has_value());
  EXPECT_NE(zero.status().message().find("shard_offset or zero_grad"), std::string::npos) << zero.status().message();
}

// gpt-tiny's embedding is small enough for an AdamWMulti group, which the pass leaves whole; a real model's (GPT-2's
// 38.6M elements) gets an AdamW of its own, as here without the groups.
Expected<testing::TrainedRun> train(const testing::TinyModel& tiny, TrainerConfig tc, bool split) {
  tc.graph.multi_tensor_optimizer = false;
  tc.graph.updates_in_backward = true;
  tc.graph.split_lookup_updates = split;
  return testing::train_steps(tiny, tc, {tiny.batch}, 3);
}

TEST(SplitLookupUpdates, TrainAsOneUpdate) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant == 0   ? "float32"
                 : variant == 1 ? "bf16 operands, AdamW writing the copies"
                                : "float32, the norm by its own pass");
    TrainerConfig tc = variant == 1 ? testing::cuda_bf16_like_config() : TrainerConfig{};
    if (variant == 1) tc.graph.optimizer_bf16_copies = true;
    if (variant == 2) tc.graph.grad_norm_in_updates = false;
    auto one = train(*tiny, tc, false);
    ASSERT_TRUE(one.has_value()) << one.status().message();
    auto two = train(*tiny, tc, true);
    ASSERT_TRUE(two.has_value()) << two.status().message();
    EXPECT_EQ(one->fused.split_lookup_updates, 0);
    EXPECT_EQ(two->fused.split_lookup_updates, 1);
    EXPECT_NE(two->fused.summary().find("embedding updates split"), std::string::npos) << two->fused.summary();
    // The norm's squares are summed in other parts: the float32 norm may differ in its last bit.
    testing::expect_same_training(*one, *two, variant == 2 ? 0.0 : 2.5e-7);
  }
}

// The graph: one RowsLookedUp right before the early part, which comes right after the head's gradient D is made (by
// the fused loss at the forward's end: after the backward's first node) and before the rest of the backward;
// GatherGradAddInPlace(D, ..) in the backward; the late part after it; both parts read D with the mask (row_mask_value
// 0 and 1), and the trainer's gradient of the table is D.
TEST(SplitLookupUpdates, TheEarlyPartFollowsTheHeadGradient) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  TrainingGraphOptions o;
  o.multi_tensor_optimizer = false;
  o.updates_in_backward = true;
  auto tg = build_training_graph(tiny->im.graph, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const Graph& g = tg->graph;
  ASSERT_EQ(tg->fused.split_lookup_updates, 1);
  long early = -1, late = -1, mask_at = -1, sum_at = -1;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    EXPECT_NE(n.op_type, "GatherGradAdd") << n.name;
    if (n.op_type == "RowsLookedUp") mask_at = static_cast<long>(i);
    if (n.op_type == "GatherGradAddInPlace") sum_at = static_cast<long>(i);
    if (n.op_type == "AdamW" && n.inputs.size() > 9 && n.inputs[9] != kNoValue) {
      (n.attrs.get_int("row_mask_value", -1) == 0 ? early : late) = static_cast<long>(i);
    }
  }
  ASSERT_GE(early, 0);
  ASSERT_GE(late, 0);
  ASSERT_GE(sum_at, 0);
  EXPECT_EQ(mask_at, early - 1);
  const ValueId d = g.nodes[sum_at].inputs[0];
  EXPECT_EQ(g.nodes[early].inputs[1], d);
  EXPECT_EQ(g.nodes[late].inputs[1], d);
  EXPECT_EQ(g.nodes[early].inputs[9], g.nodes[mask_at].outputs[0]);
  EXPECT_EQ(g.nodes[late].inputs[9], g.nodes[mask_at].outputs[0]);
  EXPECT_EQ(g.nodes[early].inputs[0], g.nodes[late].inputs[0]);
  EXPECT_EQ(tg->grads.at(g.nodes[early].inputs[0]), d);
  // The early part follows D's producer (after its mask) and precedes most of the backward.
  const long producer = g.value(d).producer;
  ASSERT_GE(producer, 0);
  ASSERT_GT(mask_at, producer);
  int between = 0;  // updates start at the backward's first node at the earliest (GradNormBegin comes before it)
  for (long i = producer + 1; i < mask_at; ++i) between += g.nodes[i].op_type != "GradNormBegin";
  EXPECT_LE(between, 1);
  EXPECT_LT(early, sum_at);
  EXPECT_GT(late, sum_at);
  int backward_after_early = 0;
  for (long i = early + 1; i < sum_at; ++i) backward_after_early += g.nodes[i].attrs.get_int("beside_backward", 0) == 0;
  EXPECT_GT(backward_after_early, 10) << "the early part does not run beside the backward";
}

}  // namespace
}  // namespace gv
