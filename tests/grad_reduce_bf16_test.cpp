// TrainingGraphOptions::bf16_grad_reduce (runtime/training_graph.h, `--grad-reduce-dtype bf16`): data-parallel
// gradients all-reduced as bf16 copies, which the gradient norm and AdamW read as they are (or, with
// optimizer_reads_bf16_grads off, widened back to float32 first). References: the float32 sum of the ranks' bf16
// values rounded once (communicators), the graph's structure (where each Cast, AllReduce and widening sits; the dW
// products that write bf16 themselves; accumulators cleared by the sync), float32 reduction (training within bf16
// precision of it, replicas bit-identical to each other), and the widened path (bit-identical training).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "runtime/communicator.h"
#include "runtime/training_graph.h"
#include "tests/op_test_util.h"
#include "tests/parallel_equivalence.h"
#include "tests/thread_training.h"

namespace gv {
namespace {

using testing::RankRun;

Tensor random_bf16(int64_t n, uint64_t seed) {
  Tensor f = testing::randn_f32({n}, seed);
  Tensor b(DType::kBFloat16, {n});
  convert_elements(f.data(), DType::kFloat32, b.data(), DType::kBFloat16, n);
  return b;
}

// ---- communicators ------------------------------------------------------------------------------------------------

TEST(Bf16AllReduce, ThreadRanksGiveTheRoundedFloatSum) {
  for (int n : {2, 3}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
      SCOPED_TRACE(std::to_string(n) + " ranks, " + (op == ReduceOp::kSum ? "sum" : "mean"));
      constexpr int64_t kCount = 1000;
      std::vector<Tensor> bufs;
      for (int r = 0; r < n; ++r) bufs.push_back(random_bf16(kCount, 10 + r));
      // Reference: float32 sum in rank order of the widened values, then one rounding.
      std::vector<float> sum(kCount, 0.0f), wide(kCount);
      for (int r = 0; r < n; ++r) {
        convert_elements(bufs[r].data(), DType::kBFloat16, wide.data(), DType::kFloat32, kCount);
        for (int64_t i = 0; i < kCount; ++i) sum[i] += wide[i];
      }
      if (op == ReduceOp::kAvg) {
        for (float& v : sum) v *= 1.0f / static_cast<float>(n);
      }
      Tensor expected(DType::kBFloat16, {kCount});
      convert_elements(sum.data(), DType::kFloat32, expected.data(), DType::kBFloat16, kCount);
      auto comms = make_thread_communicators(n);
      std::vector<Status> st(n, Status::ok());
      std::vector<std::thread> threads;
      for (int r = 0; r < n; ++r) {
        threads.emplace_back([&, r] { st[r] = comms[r]->all_reduce(bufs[r].data(), kCount, DType::kBFloat16, op); });
      }
      for (auto& t : threads) t.join();
      for (int r = 0; r < n; ++r) {
        ASSERT_TRUE(st[r].is_ok()) << st[r].message();
        EXPECT_EQ(std::memcmp(bufs[r].data(), expected.data(), expected.nbytes()), 0) << "rank " << r;
      }
    }
  }
}

TEST(Bf16AllReduce, OneProcessLeavesTheBufferAndOtherTypesStillFail) {
  auto c = make_single_process_communicator();
  Tensor b = random_bf16(10, 3), copy = b.clone();
  ASSERT_TRUE(c->all_reduce(b.data(), 10, DType::kBFloat16, ReduceOp::kSum).is_ok());
  EXPECT_EQ(std::memcmp(b.data(), copy.data(), b.nbytes()), 0);
  Tensor i(DType::kInt32, {4});
  Status st = c->all_reduce(i.data(), 4, DType::kInt32, ReduceOp::kSum);
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("int32"), std::string::npos) << st.message();
}

// ---- the training graph -------------------------------------------------------------------------------------------

using testing::nodes_of;

TrainingGraphOptions ddp2(const Graph& g, bool overlap, bool widen = false) {
  TrainingGraphOptions o = testing::ddp_options(g, {0, 1}, 1);
  o.overlap_grad_sync = overlap;
  o.optimizer_reads_bf16_grads = !widen;
  o.bf16_grad_reduce = true;
  o.bf16_grad_reduce_min_numel = 0;  // the fixture's parameters are all small: every gradient in bf16
  return o;
}

// The single node reading v at or after `from` with op `op`; -1 if none or several.
int64_t only_reader(const Graph& g, ValueId v, const std::string& op, size_t from = 0) {
  int64_t found = -1;
  for (size_t i = from; i < g.nodes.size(); ++i) {
    const auto& in = g.nodes[i].inputs;
    if (std::find(in.begin(), in.end(), v) == in.end()) continue;
    if (g.nodes[i].op_type != op || found >= 0) return -1;
    found = static_cast<int64_t>(i);
  }
  return found;
}

struct Layout {
  size_t all_reduces = 0, cast_copies = 0, folded = 0;
};

// The op types of the nodes reading v at or after `from`, sorted.
std::vector<std::string> reader_ops(const Graph& g, ValueId v, size_t from) {
  std::vector<std::string> ops;
  for (size_t i = from; i < g.nodes.size(); ++i) {
    const auto& in = g.nodes[i].inputs;
    if (std::find(in.begin(), in.end(), v) != in.end()) ops.push_back(g.nodes[i].op_type);
  }
  std::sort(ops.begin(), ops.end());
  return ops;
}

// Every AllReduce reads a bf16 value made by a Cast of the float32 gradient or written by a FusedMatMul. Widened: one
// Cast to float32 widens it after the AllReduce, the updates read only float32 gradients, and tg.grads gives the
// widened ones (under overlap: computed before optimizer_begin). Otherwise the gradient norm and one AdamW read the
// reduced copy itself, and tg.grads gives the copies (under overlap).
Layout check_layout(const TrainingGraph& tg, bool overlap, bool widened) {
  const Graph& g = tg.graph;
  Layout l;
  const auto waits = nodes_of(g, "WaitCollectives");
  EXPECT_EQ(waits.size(), overlap ? 1u : 0u);
  for (size_t i : nodes_of(g, "AllReduce")) {
    const Node& ar = g.nodes[i];
    SCOPED_TRACE(ar.name);
    ++l.all_reduces;
    const ValueId copy = ar.inputs[0];
    EXPECT_EQ(g.value(copy).dtype, DType::kBFloat16);
    EXPECT_EQ(ar.attrs.get_int("async", 0), overlap ? 1 : 0);
    const Node& src = g.nodes[g.value(copy).producer];
    if (src.op_type == "Cast") {
      ++l.cast_copies;
      EXPECT_EQ(g.value(src.inputs[0]).dtype, DType::kFloat32);
    } else {
      EXPECT_EQ(src.op_type, "FusedMatMul");
      EXPECT_EQ(src.attrs.get_int("out_dtype", 0), 16);
      ++l.folded;
    }
    if (!widened) {
      // (Under overlap the update's read keeps the in-flight buffer alive past the wait.)
      EXPECT_EQ(reader_ops(g, copy, i + 1), (std::vector<std::string>{"AdamW", "GradNorm"}));
      if (overlap) {
        EXPECT_LT(i, waits[0]);
      } else {
        EXPECT_GE(i, tg.optimizer_begin);
      }
      continue;
    }
    const int64_t widen = only_reader(g, copy, "Cast", i + 1);
    if (!overlap) {
      EXPECT_EQ(widen, static_cast<int64_t>(i) + 1);
    }
    EXPECT_GE(widen, 0) << "no single widening Cast after the all-reduce";
    if (widen < 0) continue;
    EXPECT_EQ(g.value(g.nodes[widen].outputs[0]).dtype, DType::kFloat32);
    if (overlap) {
      EXPECT_LT(i, waits[0]);
      EXPECT_GT(static_cast<size_t>(widen), waits[0]);
      EXPECT_LT(static_cast<size_t>(widen), tg.optimizer_begin);
    } else {
      EXPECT_GE(i, tg.optimizer_begin);
    }
  }
  for (const auto& [p, grad] : tg.grads) {
    EXPECT_EQ(g.value(grad).dtype, !widened && overlap ? DType::kBFloat16 : DType::kFloat32);
    if (overlap && widened) {
      const NodeId prod = g.value(grad).producer;
      EXPECT_EQ(g.nodes[prod].op_type, "Cast") << g.value(p).name;
      EXPECT_LT(static_cast<size_t>(prod), tg.optimizer_begin) << g.value(p).name;
    }
  }
  const Node& norm = g.nodes[nodes_of(g, "GradNorm").at(0)];
  for (ValueId v : norm.inputs) {
    EXPECT_EQ(g.value(v).dtype, widened ? DType::kFloat32 : DType::kBFloat16) << g.value(v).name;
  }
  return l;
}

TEST(Bf16GradReduce, EveryGradientReducedAsABf16Copy) {
  auto g = testing::gpt2_fixture_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  const size_t params = g->parameters().size();
  for (bool overlap : {true, false}) {
    for (bool products : {false, true}) {
      for (bool widen : {false, true}) {
      SCOPED_TRACE(std::string(overlap ? "overlap" : "no overlap") + (products ? ", bf16 products" : "") +
                   (widen ? ", widened" : ""));
      TrainingGraphOptions o = ddp2(*g, overlap, widen);
      o.bf16_operands = products;
      auto tg = build_training_graph(*g, o);
      ASSERT_TRUE(tg.has_value()) << tg.status().message();
      const Layout l = check_layout(*tg, overlap, widen);
      EXPECT_EQ(l.all_reduces, params);
      // The weights' dW products write the copy themselves only with bf16 products and the overlap.
      if (overlap && products) {
        EXPECT_GE(l.folded, 4u * static_cast<size_t>(g->num_layers));  // at least qkv, proj, fc, fc-proj per layer
      } else {
        EXPECT_EQ(l.folded, 0u);
      }
      }
    }
  }
}

// bf16_grad_reduce_min_numel: gradients of fewer elements keep a plain float32 all-reduce (no Casts), the others go
// through bf16 copies.
TEST(Bf16GradReduce, SmallGradientsStayFloat32) {
  auto g = testing::gpt2_fixture_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  TrainingGraphOptions o = ddp2(*g, true);
  o.bf16_grad_reduce_min_numel = 1000;  // the fixture's 64-wide biases and norms stay float32, its matrices do not
  auto tg = build_training_graph(*g, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const Graph& gr = tg->graph;
  size_t small = 0, large = 0;
  for (size_t i : nodes_of(gr, "AllReduce")) {
    const Value& in = gr.value(gr.nodes[i].inputs[0]);
    if (shape_numel(in.shape) < 1000) {
      ++small;
      EXPECT_EQ(in.dtype, DType::kFloat32) << gr.nodes[i].name;
    } else {
      ++large;
      EXPECT_EQ(in.dtype, DType::kBFloat16) << gr.nodes[i].name;
    }
  }
  EXPECT_GE(small, 4u * static_cast<size_t>(g->num_layers));  // ln_1, ln_2 scales and biases at least
  EXPECT_GE(large, 4u * static_cast<size_t>(g->num_layers));  // c_attn, attn c_proj, c_fc, mlp c_proj weights
  EXPECT_EQ(small + large, g->parameters().size());
  size_t casts = 0;  // the gradient syncs' Casts (the model has Casts of its own)
  for (size_t i : nodes_of(gr, "Cast")) casts += gr.nodes[i].name.rfind("grad_reduce/", 0) == 0;
  EXPECT_EQ(casts, large) << "one bf16 copy per large gradient, read as it is";
}

TEST(Bf16GradReduce, AccumulatorsAreClearedByTheSyncNotTheUpdate) {
  auto g = testing::gpt2_fixture_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  TrainingGraphOptions o = ddp2(*g, true);
  o.grad_accum_steps = 2;
  o.bf16_operands = true;  // no fold: the gradient is an accumulator
  auto tg = build_training_graph(*g, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const Graph& gr = tg->graph;
  const Layout l = check_layout(*tg, false, false);  // accumulation: nothing moves
  EXPECT_EQ(l.folded, 0u);
  std::set<ValueId> accumulators;
  for (const auto& [p, acc] : tg->grad_accumulators) accumulators.insert(acc);
  size_t cleared = 0;
  for (size_t i : nodes_of(gr, "ZeroBuffer")) {
    const ValueId acc = gr.nodes[i].inputs[0];
    EXPECT_TRUE(accumulators.count(acc));
    // Right after the Cast that read it, before the all-reduce.
    ASSERT_GT(i, 0u);
    EXPECT_EQ(gr.nodes[i - 1].op_type, "Cast");
    EXPECT_EQ(gr.nodes[i - 1].inputs[0], acc);
    EXPECT_EQ(gr.nodes[i + 1].op_type, "AllReduce");
    ++cleared;
  }
  EXPECT_EQ(cleared, accumulators.size());
  for (const char* op : {"AdamW", "AdamWMulti"}) {
    for (size_t i : nodes_of(gr, op)) EXPECT_EQ(gr.nodes[i].attrs.get_int("zero_grad", -1), 0) << gr.nodes[i].name;
  }
}

// ---- training on thread communicators ------------------------------------------------------------------------------

std::vector<Expected<RankRun>> train(bool bf16, bool products, int micro_batches, bool widen = false) {
  testing::ThreadTraining t;
  t.ranks = 2;
  t.steps = 4;
  t.micro_batches = micro_batches;
  t.configure = [=](TrainerConfig& cfg) {
    cfg.graph.bf16_grad_reduce = bf16;
    cfg.graph.bf16_grad_reduce_min_numel = 0;
    cfg.graph.optimizer_reads_bf16_grads = !widen;
    cfg.graph.bf16_operands = products;
    cfg.graph.bf16_operand_options.min_mn = 1;  // the fixture's small products qualify
  };
  return testing::train_gpt2_threads(t);
}

class Bf16GradReduceTraining : public ::testing::TestWithParam<std::tuple<bool, int>> {};

// Within bf16 precision of float32 reduction (gradients rounded once: ~2^-9 relative), but not equal to it; the two
// replicas stay bit-identical.
TEST_P(Bf16GradReduceTraining, FollowsFloat32ReductionAndKeepsReplicasEqual) {
  const auto [products, micro] = GetParam();
  auto ref = train(false, products, micro);
  auto bf = train(true, products, micro);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(ref[r].has_value()) << ref[r].status().message();
    ASSERT_TRUE(bf[r].has_value()) << bf[r].status().message();
  }
  testing::expect_identical(bf[0]->weights, bf[1]->weights);
  EXPECT_EQ(bf[0]->losses, bf[1]->losses);
  bool any_norm_differs = false;
  for (size_t s = 0; s < ref[0]->losses.size(); ++s) {
    SCOPED_TRACE("step " + std::to_string(s + 1));
    EXPECT_LT(rel_diff(bf[0]->losses[s], ref[0]->losses[s]), 2e-3);
    EXPECT_LT(rel_diff(bf[0]->norms[s], ref[0]->norms[s]), 5e-3);
    any_norm_differs = any_norm_differs || bf[0]->norms[s] != ref[0]->norms[s];
  }
  EXPECT_TRUE(any_norm_differs) << "bf16 reduction gave float32's exact gradient norms: was it applied?";
  EXPECT_NE(bf[0]->losses.front(), bf[0]->losses.back());  // it trained
}

// AdamW and the gradient norm reading the reduced bf16 gradients compute exactly what they computed on their
// float32 widenings.
TEST_P(Bf16GradReduceTraining, ReadingBf16GradientsEqualsWideningThem) {
  const auto [products, micro] = GetParam();
  auto widened = train(true, products, micro, true);
  auto direct = train(true, products, micro, false);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(widened[r].has_value()) << widened[r].status().message();
    ASSERT_TRUE(direct[r].has_value()) << direct[r].status().message();
    testing::expect_identical(direct[r]->weights, widened[r]->weights);
    EXPECT_EQ(direct[r]->losses, widened[r]->losses);
    EXPECT_EQ(direct[r]->norms, widened[r]->norms);
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, Bf16GradReduceTraining,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1, 2)),
                         [](const ::testing::TestParamInfo<std::tuple<bool, int>>& i) {
                           return std::string(std::get<0>(i.param) ? "Bf16Products" : "Float32Products") +
                                  std::to_string(std::get<1>(i.param)) + "MicroBatches";
                         });

// ---- MPI through the CLI ------------------------------------------------------------------------------------------

class Bf16GradReduceMpi : public MpiCli {
 protected:
  std::vector<std::string> args(const std::string& dtype) {
    return {"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--batch-size",
            "4", "--steps", "4", "--optimizer", "adamw", "--lr", "1e-3", "--quiet", "--device", "cpu", "--devices",
            "2", "--grad-reduce-dtype", dtype, "--metrics", path(dtype + ".jsonl"), "--grad-reduce-bf16-min-numel",
            "0"};
  }
};

TEST_F(Bf16GradReduceMpi, TwoProcessesFollowFloat32Reduction) {
  for (const char* dtype : {"fp32", "bf16"}) {
    auto r = run(args(dtype));
    ASSERT_EQ(r.code, 0) << dtype << ": " << r.err;
  }
  auto a = read_metrics(path("bf16.jsonl")), b = read_metrics(path("fp32.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LT(rel_diff(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()), 2e-3) << "step " << i + 1;
    EXPECT_LT(rel_diff(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()), 5e-3)
        << "step " << i + 1;
    differs = differs || a[i]["grad_norm"].get<double>() != b[i]["grad_norm"].get<double>();
  }
  EXPECT_TRUE(differs) << "--grad-reduce-dtype bf16 gave fp32's exact gradient norms";
}

// The run's report of bytes sent per step against the cost model's count (partitioner/comm_volume.h): under a DDP
// plan with every gradient in bf16 both halve, and they agree (the fixture's gradients are all data-parallel).
TEST_F(Bf16GradReduceMpi, PredictedCommunicationFollowsTheReductionType) {
  std::map<std::string, std::pair<double, double>> sent_predicted;
  for (const char* dtype : {"fp32", "bf16"}) {
    auto a = args(dtype);
    a.erase(std::find(a.begin(), a.end(), "--quiet"));
    a.insert(a.end(), {"--default-dp-type", "ddp"});
    auto r = run(a);
    ASSERT_EQ(r.code, 0) << dtype << ": " << r.err;
    const std::string key = "communication per step";
    const size_t at = r.err.find(key);
    ASSERT_NE(at, std::string::npos) << r.err;
    const std::string line = r.err.substr(at, r.err.find('\n', at) - at);
    const size_t sent = line.find("sent "), model = line.find("cost model ");
    ASSERT_TRUE(sent != std::string::npos && model != std::string::npos) << line;
    sent_predicted[dtype] = {std::stod(line.substr(sent + 5)), std::stod(line.substr(model + 11))};
  }
  const auto [sent32, model32] = sent_predicted["fp32"];
  const auto [sent16, model16] = sent_predicted["bf16"];
  EXPECT_GT(sent32, 0.0);
  EXPECT_NEAR(model16, model32 / 2, 1e-3 * model32);
  EXPECT_NEAR(sent16, sent32 / 2, 1e-2 * sent32);
  EXPECT_NEAR(model16, sent16, 2e-2 * sent16);
}

TEST_F(Bf16GradReduceMpi, UnknownTypeIsAUsageError) {
  auto a = args("fp16");
  a.erase(a.begin() + 15, a.begin() + 17);  // one process: the flag is checked all the same
  const auto before = listing();
  expect_failure(run(a), 2, {"--grad-reduce-dtype", "fp32 or bf16"}, before);
}

TEST_F(Bf16GradReduceMpi, NegativeMinNumelIsAUsageError) {
  auto a = args("bf16");
  a.back() = "-1";
  a.erase(a.begin() + 15, a.begin() + 17);
  const auto before = listing();
  expect_failure(run(a), 2, {"--grad-reduce-bf16-min-numel", "0 or more"}, before);
}

}  // namespace
}  // namespace gv
