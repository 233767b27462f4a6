// Float32 masters held as (bf16 copy, low halves) (kernels/split_float32.h, runtime/split_masters.h). References: the
// bit patterns themselves (every float32 comes back from its halves, the one halfway value moved one unit toward
// zero; the high half is the rounding to nearest even that a Cast gives), AdamW on the float32 join (the same update
// bit for bit), and training with the masters in their own float32 buffers (the same losses up to the moved halfway
// values; bit for bit across a checkpoint reload).
#include "runtime/split_masters.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "kernels/split_float32.h"
#include "runtime/executor.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/in_place_op.h"
#include "tests/op_test_util.h"
#include "tests/scratch_dir.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t to_bits(float f) { return std::bit_cast<uint32_t>(f); }
using testing::same_bits;

TEST(SplitMasters, EveryFloat32ComesBackFromItsHalves) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x3f800000u, 0xbf800000u, 0x7f800000u, 0xff800000u,
                                0x7f7fffffu, 0xff7fffffu, 0x00000001u, 0x807fffffu, 0x3f808000u, 0x3f818000u,
                                0xbf808000u, 0xbf818000u, 0x3f80ffffu, 0x3f7fffffu, 0x7f7f8000u, 0x00008000u};
  std::mt19937 rng(7);
  for (int i = 0; i < (1 << 21); ++i) bits.push_back(rng());
  int64_t wrong_join = 0, wrong_round = 0, ties = 0;
  for (uint32_t u : bits) {
    const SplitFloat32 s = split_float32(u);
    const uint32_t j = join_float32(s.hi, s.lo);
    if (std::isnan(from_bits(u))) {
      EXPECT_TRUE(std::isnan(from_bits(j))) << std::hex << u;
      EXPECT_TRUE(std::isnan(from_bits(static_cast<uint32_t>(s.hi) << 16))) << std::hex << u;
      continue;
    }
    const bool tie = (u & 0xffffu) == 0x8000u;
    ties += tie;
    wrong_join += j != (tie ? u - 1 : u);
    // The high half is the copy a Cast makes of the value held; away from ties, of the value given.
    wrong_round += s.hi != float_to_bf16(from_bits(j)) || (!tie && s.hi != float_to_bf16(from_bits(u)));
  }
  EXPECT_EQ(wrong_join, 0);
  EXPECT_EQ(wrong_round, 0);
  EXPECT_GE(ties, 6);
  // A tie moves toward zero by one unit, whatever the sign; its copy rounds down in magnitude.
  EXPECT_EQ(join_float32(split_float32(0x3f818000u).hi, split_float32(0x3f818000u).lo), 0x3f817fffu);
  EXPECT_EQ(split_float32(0xbf818000u).hi, 0xbf81u);
  EXPECT_EQ(split_float32(0x7f7fffffu).hi, 0x7f80u);  // rounds to infinity, joins back to the largest float
}

// AdamW on (copy, low halves) updates the joined float32 exactly as AdamW on a float32 master, and leaves input 0
// alone.
TEST(SplitMasters, AdamWOnTheHalvesIsAdamWOnTheirJoin) {
  const Shape s = {37, 11};  // odd: the CUDA kernel's tail too
  Tensor p = testing::randn_f32(s, 1), g = testing::randn_f32(s, 2), m = testing::randn_f32(s, 3);
  Tensor v = testing::randn_f32(s, 4);
  for (int64_t i = 0; i < v.numel(); ++i) v.data_as<float>()[i] = std::abs(v.data_as<float>()[i]);
  Tensor hi(DType::kBFloat16, s), lo(DType::kUInt16, s), joined(DType::kFloat32, s);
  for (int64_t i = 0; i < p.numel(); ++i) {
    const SplitFloat32 h = split_float32(to_bits(p.data_as<float>()[i]));
    hi.data_as<uint16_t>()[i] = h.hi;
    lo.data_as<uint16_t>()[i] = h.lo;
    joined.data_as<float>()[i] = from_bits(join_float32(h.hi, h.lo));
  }
  const Tensor lr = Tensor::scalar(DType::kFloat64, 1e-2), step = Tensor::from_i64({3}, {});
  auto plain = testing::run_in_place_op("AdamW", {joined, g, m, v, lr, step, Tensor(), Tensor(DType::kBFloat16, s)},
                                        testing::adamw_attrs());
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  const Tensor stale(DType::kFloat32, s);  // zeros: the parameter's own buffer, not read
  auto split =
      testing::run_in_place_op("AdamW", {stale, g, m, v, lr, step, Tensor(), hi, Tensor(), lo}, testing::adamw_attrs());
  ASSERT_TRUE(split.has_value()) << split.status().message();
  const Tensor& want = (*plain)[0];
  int64_t wrong = 0, ties = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const SplitFloat32 w = split_float32(to_bits(want.data_as<float>()[i]));
    ties += (to_bits(want.data_as<float>()[i]) & 0xffffu) == 0x8000u;
    wrong += (*split)[7].data_as<uint16_t>()[i] != w.hi || (*split)[9].data_as<uint16_t>()[i] != w.lo;
  }
  EXPECT_EQ(wrong, 0) << ties << " ties";
  EXPECT_TRUE(same_bits((*split)[0], stale));
  EXPECT_TRUE(same_bits((*split)[2], (*plain)[2]));  // the moments
  EXPECT_TRUE(same_bits((*split)[3], (*plain)[3]));
  EXPECT_FALSE(same_bits((*split)[7], hi));  // the update did something
}

TEST(SplitMasters, BadLowHalvesNameTheNode) {
  const Tensor p = testing::randn_f32({4, 8}, 1);
  const Tensor lr = Tensor::scalar(DType::kFloat64, 1e-2), step = Tensor::from_i64({1}, {});
  auto error_of = [&](const Tensor& copy, const Tensor& low) {
    auto r = testing::run_op("AdamW", {p, p, p, p, lr, step, Tensor(), copy, Tensor(), low}, testing::adamw_attrs(), 0,
                             1, {}, kGalvatronDomain);
    return r.has_value() ? std::string("ok") : r.status().message();
  };
  const std::string shape = error_of(Tensor(DType::kBFloat16, {4, 8}), Tensor(DType::kUInt16, {8, 4}));
  EXPECT_NE(shape.find("ParamLow16 must be the uint16 low halves of the float32 parameter [4,8], got uint16 [8,4]"),
            std::string::npos)
      << shape;
  EXPECT_NE(shape.find("test_node"), std::string::npos) << shape;
  const std::string no_copy = error_of(Tensor(), Tensor(DType::kUInt16, {4, 8}));
  EXPECT_NE(no_copy.find("ParamLow16 (input 9) needs ParamBf16 (input 7)"), std::string::npos) << no_copy;
  auto split = testing::run_op("SplitFloat32", {p.cast(DType::kBFloat16)}, {}, 2, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(split.has_value());
  EXPECT_NE(split.status().message().find("input must be float32, got bfloat16"), std::string::npos)
      << split.status().message();
}

TrainerConfig config(bool split) {
  TrainerConfig tc = testing::cuda_bf16_like_config();
  tc.graph.optimizer_bf16_copies = true;
  tc.graph.updates_in_backward = true;
  tc.graph.split_masters = split;
  tc.graph.optimizer.weight_decay = 0.1;
  tc.lr = 1e-2;
  return tc;
}

// In gpt-tiny's graph every kept weight copy whose weight nothing else reads is split: the prologue's SplitFloat32
// writes (copy, low halves), the AdamW takes the halves as input 9, and only those two nodes read the weight.
TEST(SplitMasters, GptTinyGraphSplitsTheKeptCopies) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto tg = build_training_graph(tiny->im.graph, config(true).graph);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const Graph& g = tg->graph;
  EXPECT_GE(tg->fused.split_masters, 4 * tiny->im.graph.num_layers);  // c_attn, attention c_proj, c_fc, MLP c_proj
  EXPECT_LE(tg->fused.split_masters, tg->fused.bf16_param_copies);
  EXPECT_EQ(static_cast<size_t>(tg->fused.split_masters), tg->split_masters.size());
  EXPECT_NE(tg->fused.summary().find("float32 masters split"), std::string::npos);
  for (const auto& [p, halves] : tg->split_masters) {
    SCOPED_TRACE(g.value(p).name);
    const Value &copy = g.value(halves.first), &low = g.value(halves.second);
    EXPECT_EQ(copy.kind, ValueKind::kState);
    EXPECT_EQ(low.kind, ValueKind::kState);
    EXPECT_EQ(low.dtype, DType::kUInt16);
    ASSERT_GE(low.producer, 0);
    EXPECT_LT(static_cast<size_t>(low.producer), tg->prologue_end);
    const Node& split = g.nodes[low.producer];
    EXPECT_EQ(split.op_type, "SplitFloat32");
    EXPECT_EQ(split.inputs, std::vector<ValueId>{p});
    EXPECT_EQ(split.outputs, (std::vector<ValueId>{halves.first, halves.second}));
    int readers = 0, updates = 0;
    for (const Node& n : g.nodes) {
      if (n.op_type == "WaitUpdates") continue;
      for (ValueId v : n.inputs) readers += v == p;
      if (n.op_type == "AdamW" && n.inputs[0] == p) {
        ++updates;
        ASSERT_EQ(n.inputs.size(), 10u);
        EXPECT_EQ(n.inputs[7], halves.first);
        EXPECT_EQ(n.inputs[9], halves.second);
      }
    }
    EXPECT_EQ(readers, 2);
    EXPECT_EQ(updates, 1);
  }
  testing::expect_inference_agrees(g);
}

// The halves take no buffer of their own: the executor places them inside the parameter's (copy first, low halves
// after it), and a value that would not fit inside its host's buffer is refused by name.
TEST(SplitMasters, HalvesLiveInsideTheParameterBuffer) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto tg = build_training_graph(tiny->im.graph, config(true).graph);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  auto backend = make_cpu_backend();
  auto ex = Executor::create(tg->graph, *backend);
  ASSERT_TRUE(ex.has_value()) << ex.status().message();
  ASSERT_FALSE(tg->split_masters.empty());
  for (const auto& [p, halves] : tg->split_masters) {
    const int64_t n = shape_numel(tg->graph.value(p).shape);
    EXPECT_EQ((*ex)->data(halves.first), (*ex)->data(p));
    EXPECT_EQ((*ex)->data(halves.second), static_cast<char*>((*ex)->data(p)) + 2 * n);
  }
  Graph g;
  const ValueId host = g.add_initializer("host", Tensor(DType::kFloat32, {4}), ValueKind::kState);
  const ValueId inside = g.add_initializer("inside", Tensor(DType::kBFloat16, {4}), ValueKind::kState);
  g.value(inside).stored_in = host;
  g.value(inside).stored_at = 10;  // bytes 10..17 of a 16-byte buffer
  auto bad = Executor::create(g, *backend);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("value 'inside' (8 bytes at 10) does not fit inside the persistent buffer "
                                        "of 'host'"),
            std::string::npos)
      << bad.status().message();
  g.value(inside).stored_at = 8;
  auto good = Executor::create(g, *backend);
  ASSERT_TRUE(good.has_value()) << good.status().message();
  EXPECT_EQ((*good)->data(inside), static_cast<char*>((*good)->data(host)) + 8);
}

struct Run {
  std::vector<double> losses;
  TensorMap params;
  std::set<std::string> split;  // the names of the split masters
};

// A float32 tensor with its halfway values moved one unit toward zero, as split_float32 moves them.
Tensor ties_moved(const Tensor& t) {
  Tensor out = t.clone();
  for (int64_t i = 0; i < out.numel(); ++i) {
    const SplitFloat32 h = split_float32(to_bits(t.data_as<float>()[i]));
    out.data_as<float>()[i] = from_bits(join_float32(h.hi, h.lo));
  }
  return out;
}

// gpt-tiny trained `steps` AdamW steps on one batch. With `move_ties` (float32 masters) the weights named there have
// their halfway values moved before every step, as the split masters' updates move them after each: the same
// training bit for bit. With `reload_after` > 0 the run saves a checkpoint there and a second trainer (which first
// evaluates the loss with its own initial copies) loads it and goes on.
Expected<Run> train(bool split, int steps, const std::set<std::string>& move_ties = {}, int reload_after = 0,
                    const std::string& ckpt = "") {
  GV_ASSIGN_OR_RETURN(testing::TinyModel tiny, testing::tiny_model("gpt-tiny"));
  auto backend = make_cpu_backend();
  Run r;
  GV_ASSIGN_OR_RETURN(auto t, Trainer::create(tiny.im.graph, config(split), *backend));
  for (const auto& [p, halves] : t->training_graph().split_masters) {
    r.split.insert(t->training_graph().graph.value(p).name);
  }
  for (int s = 0; s < steps; ++s) {
    if (reload_after > 0 && s == reload_after) {
      GV_RETURN_IF_ERROR(t->save_checkpoint(ckpt, {}));
      GV_ASSIGN_OR_RETURN(testing::TinyModel other, testing::tiny_model("gpt-tiny"));
      GV_ASSIGN_OR_RETURN(auto fresh, Trainer::create(other.im.graph, config(split), *backend));
      GV_RETURN_IF_ERROR(fresh->evaluate_loss(tiny.batch).status());
      GV_RETURN_IF_ERROR(fresh->load_checkpoint(ckpt).status());
      t = std::move(fresh);
    }
    if (!move_ties.empty()) {
      const Graph& g = t->training_graph().graph;
      for (ValueId p : g.parameters()) {
        if (!move_ties.count(g.value(p).name)) continue;
        GV_ASSIGN_OR_RETURN(Tensor w, t->executor().fetch(p));
        GV_RETURN_IF_ERROR(t->executor().set_value(p, ties_moved(w)));
      }
      t->parameters_changed();
    }
    GV_ASSIGN_OR_RETURN(StepMetrics m, t->step({tiny.batch}));
    r.losses.push_back(m.loss);
  }
  GV_ASSIGN_OR_RETURN(r.params, t->parameters());
  for (const std::string& name : move_ties) r.params[name] = ties_moved(r.params.at(name));
  // A split master's own buffer holds its halves after the steps; materialize_parameters writes what parameters()
  // joined.
  const TrainingGraph& tg = t->training_graph();
  int stale = 0;
  for (const auto& [p, halves] : tg.split_masters) {
    GV_ASSIGN_OR_RETURN(Tensor buf, t->executor().fetch(p));
    stale += !same_bits(buf, r.params.at(tg.graph.value(p).name));
  }
  if (split && stale == 0) return internal_error("no split master's own buffer held its halves after the steps");
  GV_RETURN_IF_ERROR(t->materialize_parameters());
  for (const auto& [p, halves] : tg.split_masters) {
    GV_ASSIGN_OR_RETURN(Tensor buf, t->executor().fetch(p));
    if (!same_bits(buf, r.params.at(tg.graph.value(p).name))) {
      return internal_error("materialize_parameters left '" + tg.graph.value(p).name + "' stale");
    }
  }
  return r;
}

class SplitMastersTraining : public testing::ScratchDirTest {};

TEST_F(SplitMastersTraining, TrainsAsFloat32MastersAndReloadsBitForBit) {
  constexpr int kSteps = 4;
  auto split = train(true, kSteps);
  ASSERT_TRUE(split.has_value()) << split.status().message();
  ASSERT_FALSE(split->split.empty());
  auto whole = train(false, kSteps, split->split);
  ASSERT_TRUE(whole.has_value()) << whole.status().message();
  auto reloaded = train(true, kSteps, {}, 2, path("step2.safetensors"));
  ASSERT_TRUE(reloaded.has_value()) << reloaded.status().message();
  EXPECT_LT(whole->losses.back(), whole->losses.front());  // it trains
  EXPECT_EQ(split->losses, whole->losses);
  EXPECT_EQ(reloaded->losses, split->losses);
  for (const auto& [name, p] : whole->params) {
    EXPECT_TRUE(same_bits(split->params.at(name), p)) << name;
    EXPECT_TRUE(same_bits(reloaded->params.at(name), p)) << name;
  }
}

}  // namespace
}  // namespace gv
