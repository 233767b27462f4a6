// ZeRO-2 in bf16 (runtime/training_graph.h bf16_grad_reduce with optimizer_bf16_copies): a weight that only its bf16
// copy's Cast reads has its gradient reduce-scattered in bf16, AdamW updates this rank's range of the float32 weight
// and writes that range of the bf16 copy, and the copy's ranges are gathered instead of the float32 weight's.
// References: the graph's structure, ZeRO-2 with float32 reduction and gathers (training within bf16 precision of
// it), and the invariant that every rank's bf16 copy is the bf16 rounding of the assembled float32 weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "runtime/bf16_operands.h"
#include "runtime/training_graph.h"
#include "runtime/communicator.h"
#include "tests/op_test_util.h"
#include "tests/parallel_equivalence.h"
#include "tests/parallel_test_util.h"
#include "tests/thread_training.h"

namespace gv {
namespace {

using testing::nodes_of;
using testing::RankRun;

// ZeRO-2 over ranks {0, 1} for every parameter, as a plan's rank program sets it.
void zero2_sync(const Graph& g, TrainingGraphOptions& o) {
  for (ValueId p : g.parameters()) {
    auto& ps = o.param_sync[g.value(p).name];
    ps.dp_group = {0, 1};
    ps.zero2 = true;
    ps.norm_weight = 1.0;  // each rank's shard is its own: the squared norms add up over the ranks
  }
  o.global_grad_norm = true;
  o.loss_replicas = 2;
}

void bf16_options(TrainingGraphOptions& o, bool bf16_reduce) {
  o.bf16_operands = true;
  o.bf16_operand_options.min_mn = 1;  // the fixture's small products qualify
  o.optimizer_bf16_copies = true;
  o.fuse_linear = true;  // products with their bias as Linear nodes, whose weights get bf16 copies (as on CUDA)
  o.bf16_grad_reduce = bf16_reduce;
  o.bf16_grad_reduce_min_numel = 0;
}

// The options of rank `rank` of two: ZeRO-2 in bf16.
TrainingGraphOptions zero2_bf16(const Graph& g, int rank) {
  TrainingGraphOptions o;
  o.rank = rank;
  zero2_sync(g, o);
  bf16_options(o, true);
  return o;
}

TEST(Zero2Bf16, WeightsReadOnlyThroughTheirCopyReduceAndGatherBf16) {
  auto g = testing::gpt2_fixture_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  TrainingGraphOptions o = zero2_bf16(*g, 1);
  auto tg = build_training_graph(*g, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const Graph& gr = tg->graph;
  // The fixture's 8 block matrices (attention QKV and output, MLP up and down, 2 layers); the tied embedding is also
  // read by its Gather and the position embedding only by a Gather, so they keep float32 gathers.
  EXPECT_EQ(tg->sharded_masters.size(), 8u);
  EXPECT_EQ(tg->fused.bf16_sharded_updates, 8);
  std::set<ValueId> gathered_copies;
  size_t float_gathers = 0;
  for (size_t i : nodes_of(gr, "GatherShardsInPlace")) {
    const Value& v = gr.value(gr.nodes[i].inputs[0]);
    if (v.dtype == DType::kBFloat16) {
      EXPECT_EQ(v.kind, ValueKind::kState) << v.name;
      gathered_copies.insert(gr.nodes[i].inputs[0]);
    } else {
      EXPECT_EQ(v.kind, ValueKind::kParameter) << v.name;
      EXPECT_FALSE(tg->sharded_masters.count(gr.nodes[i].inputs[0])) << v.name;
      ++float_gathers;
    }
  }
  EXPECT_EQ(gathered_copies.size(), 8u);
  EXPECT_EQ(float_gathers, tg->params.size() - 8);
  for (size_t i : nodes_of(gr, "AdamW")) {
    const Node& n = gr.nodes[i];
    const bool bf16 = tg->sharded_masters.count(n.inputs[0]) > 0;
    SCOPED_TRACE(gr.value(n.inputs[0]).name);
    EXPECT_GE(n.attrs.get_int("shard_offset", -1), 0);
    EXPECT_EQ(gr.value(n.inputs[1]).dtype, bf16 ? DType::kBFloat16 : DType::kFloat32);  // the reduced shard
    EXPECT_EQ(gr.value(n.inputs[2]).dtype, DType::kFloat32);                             // the moments
    EXPECT_EQ(gr.value(n.inputs[3]).dtype, DType::kFloat32);
    EXPECT_EQ(shape_numel(gr.value(n.inputs[2]).shape), shape_numel(gr.value(n.inputs[1]).shape));
    if (bf16) {
      ASSERT_GE(n.inputs.size(), 8u);
      EXPECT_TRUE(gathered_copies.count(n.inputs[7]));
    }
  }
  size_t bf16_scatters = 0;
  for (size_t i : nodes_of(gr, "ReduceScatter")) {
    if (gr.value(gr.nodes[i].inputs[0]).dtype == DType::kBFloat16) ++bf16_scatters;
  }
  EXPECT_EQ(bf16_scatters, 8u);
  EXPECT_NE(tg->fused.summary().find("8 ZeRO-2 updates in bf16"), std::string::npos) << tg->fused.summary();
}

// Without bf16 reduction, or with gradient accumulation, every ZeRO-2 update stays float32 (gathering the weight).
TEST(Zero2Bf16, OffWithoutBf16ReductionOrWithAccumulation) {
  auto g = testing::gpt2_fixture_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "float32 reduction" : "two micro-batches");
    TrainingGraphOptions o;
    zero2_sync(*g, o);
    bf16_options(o, variant == 1);
    if (variant == 1) o.grad_accum_steps = 2;
    auto tg = build_training_graph(*g, o);
    ASSERT_TRUE(tg.has_value()) << tg.status().message();
    EXPECT_TRUE(tg->sharded_masters.empty());
    for (size_t i : nodes_of(tg->graph, "GatherShardsInPlace")) {
      EXPECT_EQ(tg->graph.value(tg->graph.nodes[i].inputs[0]).kind, ValueKind::kParameter);
    }
  }
}

struct Zero2Run {
  std::vector<Expected<RankRun>> ranks;
  std::vector<TensorMap> copies;  // each rank's bf16 copies after training, by parameter name
};

Zero2Run train_zero2(bool bf16_reduce, bool prefetch = true) {
  auto g = testing::gpt2_fixture_graph(2);
  Zero2Run out;
  if (!g) {
    out.ranks.assign(2, Expected<RankRun>(g.status()));
    return out;
  }
  out.copies.resize(2);
  testing::ThreadTraining t;
  t.ranks = 2;
  t.steps = 4;
  const Graph fwd = *g;
  t.configure = [&fwd, bf16_reduce, prefetch](TrainerConfig& cfg) {
    zero2_sync(fwd, cfg.graph);
    bf16_options(cfg.graph, bf16_reduce);
    cfg.graph.prefetch_zero2_gathers = prefetch;
  };
  t.after = [&out](Trainer& tr) -> Status {
    const TrainingGraph& tg = tr.training_graph();
    const int rank = tr.config().comm->rank();
    // With the gathers prefetched, the copies' other ranges are refreshed by the next forward pass: run one.
    TensorMap batch;
    // Zeros, each rank's 2 rows.
    for (const char* name : {"input_ids", "labels"}) batch[name] = Tensor(DType::kInt64, {2, 32});
    GV_RETURN_IF_ERROR(tr.evaluate_loss(batch).status());
    for (const Node& n : tg.graph.nodes) {
      if (!is_bf16_param_copy(tg.graph, n) || !tg.sharded_masters.count(n.inputs[0])) continue;
      GV_ASSIGN_OR_RETURN(Tensor c, tr.executor().fetch(n.outputs[0]));
      out.copies[rank][tg.graph.value(n.inputs[0]).name] = c;
    }
    return Status::ok();
  };
  out.ranks = testing::train_gpt2_threads(t);
  return out;
}

// Trains within bf16 precision of float32 ZeRO-2 (not equal to it), the ranks agree on every weight, and every rank's
// bf16 copy of a weight is exactly the bf16 rounding of the assembled float32 weight: the gathered ranges are the
// updated ones, and the float32 values come from each rank's own range.
TEST(Zero2Bf16, TrainsLikeFloat32Zero2AndKeepsCopiesCurrent) {
  Zero2Run ref = train_zero2(false);
  Zero2Run bf = train_zero2(true);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(ref.ranks[r].has_value()) << ref.ranks[r].status().message();
    ASSERT_TRUE(bf.ranks[r].has_value()) << bf.ranks[r].status().message();
  }
  const RankRun &a = *bf.ranks[0], &b = *bf.ranks[1], &f = *ref.ranks[0];
  testing::expect_identical(a.weights, b.weights);
  EXPECT_EQ(a.losses, b.losses);
  bool any_norm_differs = false;
  for (size_t s = 0; s < f.losses.size(); ++s) {
    SCOPED_TRACE("step " + std::to_string(s + 1));
    EXPECT_LT(rel_diff(a.losses[s], f.losses[s]), 2e-3);
    EXPECT_LT(rel_diff(a.norms[s], f.norms[s]), 5e-3);
    any_norm_differs = any_norm_differs || a.norms[s] != f.norms[s];
  }
  EXPECT_TRUE(any_norm_differs) << "bf16 ZeRO-2 gave float32's exact gradient norms: was it applied?";
  EXPECT_NE(a.losses.front(), a.losses.back());
  // The bf16-sharded weights (the 8 matrices; the biases include GPT-2's key bias, whose exact gradient is zero and
  // whose rounding noise Adam scales to lr-sized steps in any run): against the float32 run, relative to how far
  // training moved them (four AdamW steps of lr 1e-3, ~1e-3
  // per element and step). Adam turns a few near-zero gradients' rounding into lr-sized steps of either sign, so single
  // elements may differ by one step; a range left un-updated would differ by the whole movement in half the elements.
  auto g = testing::gpt2_fixture_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  for (ValueId p : g->parameters()) {
    const std::string& name = g->value(p).name;
    if (!bf.copies[0].count(name)) continue;
    ASSERT_TRUE(a.weights.count(name) && f.weights.count(name)) << name;
    const Tensor &x = a.weights.at(name), &w = f.weights.at(name), &init = g->value(p).data;
    ASSERT_EQ(x.numel(), w.numel()) << name;
    double gap = 0.0, moved = 0.0;
    for (int64_t i = 0; i < w.numel(); ++i) {
      gap += std::fabs(double(x.data_as<float>()[i]) - double(w.data_as<float>()[i]));
      moved += std::fabs(double(w.data_as<float>()[i]) - double(init.data_as<float>()[i]));
    }
    EXPECT_GT(moved, 0.0) << name;
    EXPECT_LT(gap, 0.1 * moved) << name;
  }
  size_t copies = 0;
  for (int r = 0; r < 2; ++r) {
    for (const auto& [name, c] : bf.copies[r]) {
      ASSERT_TRUE(a.weights.count(name)) << name;
      const Tensor& w = a.weights.at(name);
      Tensor rounded(DType::kBFloat16, w.shape());
      convert_elements(w.data(), DType::kFloat32, rounded.data(), DType::kBFloat16, w.numel());
      ASSERT_EQ(c.nbytes(), rounded.nbytes()) << name;
      EXPECT_EQ(std::memcmp(c.data(), rounded.data(), c.nbytes()), 0) << "rank " << r << ": " << name;
      ++copies;
    }
  }
  EXPECT_EQ(copies, 2u * 8u);
}

// prefetch_zero2_gathers: the copies' gathers are issued at the start of the forward pass in the order of their first
// readers, and each first reader waits (keep_pending) for its own gathers only; nothing reads a copy before a wait
// covers its gather; the regions' bounds follow the moved nodes. On CPU ranks (blocking collectives) training is
// bit-identical to gathering at the end.
TEST(Zero2Bf16, GathersPrefetchedIntoTheForwardPass) {
  auto g = testing::gpt2_fixture_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  TrainingGraphOptions o = zero2_bf16(*g, 0);
  o.prefetch_zero2_gathers = false;
  auto end = build_training_graph(*g, o);
  o.prefetch_zero2_gathers = true;
  auto pre = build_training_graph(*g, o);
  ASSERT_TRUE(end.has_value()) << end.status().message();
  ASSERT_TRUE(pre.has_value()) << pre.status().message();
  const Graph& gr = pre->graph;
  ASSERT_EQ(gr.nodes.size(), end->graph.nodes.size() + 8);  // one wait per copy (each first read by its own node)
  EXPECT_EQ(pre->backward_begin, end->backward_begin + 16);
  EXPECT_EQ(pre->optimizer_begin, end->optimizer_begin + 16);
  EXPECT_EQ(gr.nodes[pre->backward_begin].name, end->graph.nodes[end->backward_begin].name);
  EXPECT_EQ(gr.nodes[pre->optimizer_begin].name, end->graph.nodes[end->optimizer_begin].name);
  // Replays the forward pass: gathers in issue order; a wait with keep_pending k covers all issued but the last k.
  std::vector<ValueId> issued;
  std::set<ValueId> covered;
  size_t waits = 0;
  std::vector<int64_t> keeps;
  for (size_t i = pre->prologue_end; i < pre->backward_begin; ++i) {
    const Node& n = gr.nodes[i];
    if (n.op_type == "WaitCollectives") {
      ++waits;
      const int64_t keep = n.attrs.get_int("keep_pending", 0);
      keeps.push_back(keep);
      ASSERT_LE(keep, static_cast<int64_t>(issued.size()));
      for (size_t k = 0; k + keep < issued.size(); ++k) covered.insert(issued[k]);
      continue;
    }
    if (n.op_type == "GatherShardsInPlace") {
      EXPECT_EQ(n.attrs.get_int("async", 0), 1);
      EXPECT_EQ(waits, 0u) << "every gather is issued before the forward pass's first node";
      issued.push_back(n.inputs[0]);
      continue;
    }
    for (ValueId v : n.inputs) {
      if (gr.value(v).dtype == DType::kBFloat16 && gr.value(v).kind == ValueKind::kState) {
        ASSERT_TRUE(covered.count(v)) << n.name << " reads " << gr.value(v).name << " before a wait covers its gather";
      }
    }
  }
  EXPECT_EQ(issued.size(), 8u);
  // One wait per copy, each leaving the later readers' gathers running: 7, 6, ..., 0.
  EXPECT_EQ(keeps, (std::vector<int64_t>{7, 6, 5, 4, 3, 2, 1, 0}));
  for (size_t i = pre->optimizer_begin; i < gr.nodes.size(); ++i) {
    if (gr.nodes[i].op_type == "GatherShardsInPlace") {
      EXPECT_EQ(gr.value(gr.nodes[i].inputs[0]).kind, ValueKind::kParameter) << gr.nodes[i].name;
    }
  }
  Zero2Run at_end = train_zero2(true, false), prefetched = train_zero2(true, true);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(at_end.ranks[r].has_value()) << at_end.ranks[r].status().message();
    ASSERT_TRUE(prefetched.ranks[r].has_value()) << prefetched.ranks[r].status().message();
    EXPECT_EQ(prefetched.ranks[r]->losses, at_end.ranks[r]->losses);
    EXPECT_EQ(prefetched.ranks[r]->norms, at_end.ranks[r]->norms);
    testing::expect_identical(prefetched.ranks[r]->weights, at_end.ranks[r]->weights);
    testing::expect_identical(prefetched.copies[r], at_end.copies[r]);
  }
}

// The sharded AdamW of ZeRO-2 in bf16, one node: a bf16 gradient shard and float32 moments update the parameter's
// range [8, 16) and write that range of its bf16 copy (the bf16 rounding of the updated values), nothing else; the
// same update on the widened gradient (the reference path, float32 shards) gives the same parameter. Bad shard inputs
// name the node.
TEST(Zero2Bf16, ShardedUpdateWritesItsRangeOfTheCopy) {
  const Tensor p = testing::randn_f32({4, 8}, 1);
  const Tensor g16 = testing::randn_f32({8}, 2).cast(DType::kBFloat16);
  const Tensor zeros(DType::kFloat32, {8});
  const Tensor lr = Tensor::scalar(DType::kFloat64, 1e-2), step = Tensor::from_i64({1}, {});
  Attributes a;
  a.set_int("shard_offset", 8);
  auto update = [&](const Tensor& grad, const Tensor& m, const Tensor& copy) -> Expected<std::vector<Tensor>> {
    testing::Builder b;
    const ValueId pv = b.param("p", p);
    const ValueId cv = copy.defined() ? b.state("copy", copy) : kNoValue;
    std::vector<ValueId> in = {pv, b.state("g", grad), b.state("m", m), b.state("v", m), b.constant("lr", lr),
                               b.constant("step", step)};
    if (cv != kNoValue) in.insert(in.end(), {kNoValue, cv});
    b.node("AdamW", in, a, kGalvatronDomain, 0);
    GV_RETURN_IF_ERROR(b.status);
    std::vector<ValueId> fetch = {pv};
    if (cv != kNoValue) fetch.push_back(cv);
    return testing::run_graph(b.g, fetch, nullptr);
  };
  auto bf = update(g16, zeros, Tensor(DType::kBFloat16, {4, 8}));
  ASSERT_TRUE(bf.has_value()) << bf.status().message();
  auto wide = update(g16.cast(DType::kFloat32), zeros, Tensor());
  ASSERT_TRUE(wide.has_value()) << wide.status().message();
  const Tensor &np = (*bf)[0], &copy = (*bf)[1];
  EXPECT_EQ(std::memcmp(np.data(), (*wide)[0].data(), np.nbytes()), 0);
  const Tensor rounded = np.cast(DType::kBFloat16);
  for (int64_t i = 0; i < 32; ++i) {
    const bool mine = i >= 8 && i < 16;
    SCOPED_TRACE("element " + std::to_string(i));
    EXPECT_EQ(np.data_as<float>()[i] != p.data_as<float>()[i], mine);
    EXPECT_EQ(copy.data_as<uint16_t>()[i], mine ? rounded.data_as<uint16_t>()[i] : uint16_t{0});
  }
  const Tensor m16 = zeros.cast(DType::kBFloat16);
  auto moments = testing::run_op("AdamW", {p, g16, m16, m16, lr, step}, a, 0, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(moments.has_value());
  EXPECT_NE(moments.status().message().find("in the parameter's type (float32)"), std::string::npos)
      << moments.status().message();
  EXPECT_NE(moments.status().message().find("test_node"), std::string::npos) << moments.status().message();
  Attributes sgd = a;
  auto sgd_bf16 = testing::run_op("SGD", {p, g16, zeros, lr, step}, sgd, 0, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(sgd_bf16.has_value());
  EXPECT_NE(sgd_bf16.status().message().find("input dtypes differ"), std::string::npos)
      << sgd_bf16.status().message();
}

}  // namespace
}  // namespace gv
