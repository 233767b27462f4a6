// TrainingGraphOptions::overlap_grad_sync (runtime/training_graph.h): data-parallel gradient all-reduces move into the
// backward pass (attr async = 1), right after the last node that touches their gradient, and one WaitCollectives
// ends the backward region; with gradient accumulation or a pipeline nothing moves. On the CPU the all-reduces block
// either way, so training with the overlap on equals training with it off bit for bit: thread communicators (2 and 4
// ranks, in-process) and MPI (`galvatron train --devices N --overlap-grad-sync on|off`) on the gpt2 fixture and the
// zoo gpt-tiny. The NCCL side (a second stream) is tested in tests/nccl_communicator_test.cpp (label gpu).
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "importer/onnx_importer.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"
#include "runtime/memory_plan.h"
#include "runtime/trainer.h"
#include "runtime/training_graph.h"
#include "tests/hf_fixtures.h"
#include "tests/parallel_equivalence.h"
#include "tests/thread_training.h"

namespace gv {
namespace {

Expected<Graph> gpt2_graph(int64_t batch) { return testing::gpt2_fixture_graph(batch); }

using testing::ddp_options;
using testing::nodes_of;

bool refers_to(const Node& n, ValueId v) {
  return std::find(n.inputs.begin(), n.inputs.end(), v) != n.inputs.end() ||
         std::find(n.outputs.begin(), n.outputs.end(), v) != n.outputs.end();
}

// Overlap on: every AllReduce inside the backward region, async, after every backward use of its gradient; one
// WaitCollectives right before the first optimizer node (GradNorm).
void expect_overlapped(const TrainingGraph& tg, size_t expected_all_reduces) {
  const Graph& g = tg.graph;
  const auto ars = nodes_of(g, "AllReduce");
  ASSERT_EQ(ars.size(), expected_all_reduces);
  const auto waits = nodes_of(g, "WaitCollectives");
  ASSERT_EQ(waits.size(), 1u);
  ASSERT_GT(tg.optimizer_begin, tg.backward_begin);
  EXPECT_EQ(waits[0], tg.optimizer_begin - 1);
  EXPECT_EQ(g.nodes[tg.optimizer_begin].op_type, "GradNorm");
  for (size_t i : ars) {
    const Node& ar = g.nodes[i];
    SCOPED_TRACE(ar.name);
    EXPECT_EQ(ar.attrs.get_int("async", 0), 1);
    EXPECT_GE(i, tg.backward_begin);
    EXPECT_LT(i, tg.optimizer_begin - 1);
    const ValueId grad = ar.inputs[0];
    // Produced before it in the backward region, touched by nothing else until the optimizer region.
    ASSERT_GE(g.value(grad).producer, static_cast<NodeId>(tg.backward_begin));
    EXPECT_LT(g.value(grad).producer, static_cast<NodeId>(i));
    for (size_t j = i + 1; j < tg.optimizer_begin; ++j) {
      if (g.nodes[j].op_type == "AllReduce") continue;  // the others that follow the same node
      EXPECT_FALSE(refers_to(g.nodes[j], grad)) << g.nodes[j].name << " touches the gradient after its all-reduce";
    }
    // Right after the last node that touches it (possibly behind other all-reduces placed there).
    size_t k = i;
    while (k > 0 && g.nodes[k - 1].op_type == "AllReduce") --k;
    ASSERT_GT(k, 0u);
    bool found = false;
    for (size_t j = k - 1; j < i; ++j) found = found || refers_to(g.nodes[j], grad);
    EXPECT_TRUE(found) << "not right after the last node that touches " << g.value(grad).name;
    // The optimizer still reads it.
    bool read = false;
    for (size_t j = tg.optimizer_begin; j < g.nodes.size(); ++j) read = read || refers_to(g.nodes[j], grad);
    EXPECT_TRUE(read);
  }
}

// Overlap off or not applicable: the all-reduces first in the optimizer region, blocking; no WaitCollectives.
void expect_not_overlapped(const TrainingGraph& tg, size_t expected_all_reduces) {
  const Graph& g = tg.graph;
  const auto ars = nodes_of(g, "AllReduce");
  EXPECT_EQ(ars.size(), expected_all_reduces);
  EXPECT_TRUE(nodes_of(g, "WaitCollectives").empty());
  for (size_t i : ars) {
    EXPECT_GE(i, tg.optimizer_begin) << g.nodes[i].name;
    EXPECT_EQ(g.nodes[i].attrs.get_int("async", 0), 0) << g.nodes[i].name;
  }
}

TEST(OverlapGradSync, AllReducesMoveIntoTheBackwardPass) {
  auto g = gpt2_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  const size_t params = g->parameters().size();
  for (bool checkpoint : {false, true}) {
    SCOPED_TRACE(checkpoint ? "with activation checkpointing" : "plain");
    TrainingGraphOptions o = ddp_options(*g, {0, 1}, 1);
    if (checkpoint) o.checkpoint_layers = {0, 1};
    auto tg = build_training_graph(*g, o);
    ASSERT_TRUE(tg.has_value()) << tg.status().message();
    expect_overlapped(*tg, tg->params.size());
    EXPECT_EQ(tg->params.size(), params);
    o.overlap_grad_sync = false;
    auto off = build_training_graph(*g, o);
    ASSERT_TRUE(off.has_value()) << off.status().message();
    expect_not_overlapped(*off, params);
    // The same nodes, only in another order: one more node, the backward region grown by the moved ones.
    EXPECT_EQ(tg->graph.nodes.size(), off->graph.nodes.size() + 1);
    EXPECT_EQ(tg->backward_begin, off->backward_begin);
    EXPECT_EQ(tg->optimizer_begin, off->optimizer_begin + params + 1);
  }
}

TEST(OverlapGradSync, NothingMovesWithGradientAccumulationOrWithoutDataParallelism) {
  auto g = gpt2_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  const size_t params = g->parameters().size();
  TrainingGraphOptions o = ddp_options(*g, {0, 1}, 0);
  o.grad_accum_steps = 2;
  auto tg = build_training_graph(*g, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  expect_not_overlapped(*tg, params);
  auto single = build_training_graph(*g, TrainingGraphOptions{});
  ASSERT_TRUE(single.has_value()) << single.status().message();
  expect_not_overlapped(*single, 0);
}

// ZeRO-2: each flatten + ReduceScatter moves into the backward pass (the reduce-scatter async), the backward region
// ends with one WaitCollectives that lists the flat gradients the reduce-scatters still read, and the parameter
// gathers after the updates are async with a second WaitCollectives ending the step. The memory plan keeps each flat
// gradient's buffer (a view of the gradient) to itself until that wait: nothing the backward pass computes after the
// reduce-scatter is placed on top of it.
TEST(OverlapGradSync, Zero2ReduceScattersMoveAndTheirBuffersLiveUntilTheWait) {
  auto g = gpt2_graph(2);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  TrainingGraphOptions o = ddp_options(*g, {0, 1}, 1);
  for (auto& [name, ps] : o.param_sync) ps.zero2 = true;
  auto tg = build_training_graph(*g, o);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const Graph& gr = tg->graph;
  const auto rss = nodes_of(gr, "ReduceScatter");
  const auto waits = nodes_of(gr, "WaitCollectives");
  const auto gathers = nodes_of(gr, "GatherShardsInPlace");
  ASSERT_FALSE(rss.empty());
  ASSERT_EQ(waits.size(), 2u);
  EXPECT_EQ(waits[0], tg->optimizer_begin - 1);
  EXPECT_EQ(waits[1], gr.nodes.size() - 1);
  EXPECT_EQ(gr.nodes[waits[0]].inputs.size(), rss.size());
  EXPECT_TRUE(gr.nodes[waits[1]].inputs.empty());
  ASSERT_EQ(gathers.size(), rss.size());
  for (size_t i : gathers) EXPECT_EQ(gr.nodes[i].attrs.get_int("async", 0), 1) << gr.nodes[i].name;
  std::vector<NodeId> order(gr.nodes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<NodeId>(i);
  const MemoryPlan plan = plan_memory(gr, order, {}, 256, true);
  for (size_t i : rss) {
    const Node& rs = gr.nodes[i];
    SCOPED_TRACE(rs.name);
    EXPECT_EQ(rs.attrs.get_int("async", 0), 1);
    EXPECT_GE(i, tg->backward_begin);
    EXPECT_LT(i, tg->optimizer_begin - 1);
    const ValueId flat = rs.inputs[0];
    const auto& wi = gr.nodes[waits[0]].inputs;
    EXPECT_NE(std::find(wi.begin(), wi.end(), flat), wi.end()) << "the wait does not keep the flat gradient alive";
    const Node& flatten = gr.nodes[gr.value(flat).producer];
    EXPECT_EQ(flatten.op_type, "Reshape");
    EXPECT_EQ(static_cast<size_t>(gr.value(flat).producer), i - 1);
    // The flat gradient is a view of the gradient: the same buffer.
    const ValueId grad = flatten.inputs[0];
    ASSERT_GE(plan.offset[flat], 0);
    EXPECT_EQ(plan.offset[flat], plan.offset[grad]);
    const size_t lo = static_cast<size_t>(plan.offset[flat]);
    const size_t hi = lo + static_cast<size_t>(shape_numel(gr.value(flat).shape)) * dtype_size(gr.value(flat).dtype);
    // Every value produced between the reduce-scatter and the wait lies outside [lo, hi).
    for (size_t j = i + 1; j < waits[0]; ++j) {
      for (ValueId out : gr.nodes[j].outputs) {
        if (plan.offset[out] < 0 || plan.alias_of[out] != kNoValue) continue;
        const size_t a = static_cast<size_t>(plan.offset[out]);
        const size_t b = a + static_cast<size_t>(shape_numel(gr.value(out).shape)) * dtype_size(gr.value(out).dtype);
        EXPECT_TRUE(b <= lo || a >= hi) << gr.nodes[j].name << " writes over the buffer a reduce-scatter reads";
      }
    }
  }
}

// A last pipeline stage: x = Recv() from stage 0 (its gradient is sent back), loss = mean(x W). With the Recv nothing
// moves; the same graph with x a plain input overlaps its one all-reduce.
Graph tiny_stage(bool pipeline) {
  Graph g;
  g.opsets[""] = 17;
  g.opsets[kGalvatronDomain] = 1;
  Tensor w(DType::kFloat32, {4, 3});
  for (int i = 0; i < 12; ++i) w.data_as<float>()[i] = 0.1f * static_cast<float>(i - 5);
  const ValueId wv = g.add_initializer("w", w, ValueKind::kParameter);
  ValueId x;
  if (pipeline) {
    Node recv;
    recv.op_type = "Recv";
    recv.domain = kGalvatronDomain;
    recv.opset = 1;
    recv.name = "recv_x";
    recv.attrs.set_int("peer", 0);
    recv.attrs.set_int("tag", 0);
    recv.attrs.set_ints("shape", {2, 4});
    recv.attrs.set_int("dtype", 1);
    recv.attrs.set_int("requires_grad", 1);
    auto outs = g.add_node(recv, {"x"});
    EXPECT_TRUE(outs.has_value()) << outs.status().message();
    x = outs ? (*outs)[0] : kNoValue;
  } else {
    x = g.add_input("x", DType::kFloat32, {2, 4});
  }
  Node mm;
  mm.op_type = "MatMul";
  mm.opset = 17;
  mm.name = "mm";
  mm.inputs = {x, wv};
  auto y = g.add_node(mm, {"y"});
  EXPECT_TRUE(y.has_value()) << y.status().message();
  Node mean;
  mean.op_type = "ReduceMean";
  mean.opset = 17;
  mean.name = "mean";
  mean.inputs = {(*y)[0]};
  mean.attrs.set_int("keepdims", 0);
  auto l = g.add_node(mean, {"loss"});
  EXPECT_TRUE(l.has_value()) << l.status().message();
  g.outputs = {(*l)[0]};
  return g;
}

TEST(OverlapGradSync, NothingMovesInAPipelineStage) {
  for (bool pipeline : {false, true}) {
    SCOPED_TRACE(pipeline ? "pipeline stage" : "no pipeline");
    Graph g = tiny_stage(pipeline);
    TrainingGraphOptions o = ddp_options(g, {1, 3}, 1);
    auto tg = build_training_graph(g, o);
    ASSERT_TRUE(tg.has_value()) << tg.status().message();
    if (pipeline) {
      expect_not_overlapped(*tg, 1);
      EXPECT_EQ(nodes_of(tg->graph, "Send").size(), 1u);  // the gradient of x goes back
    } else {
      expect_overlapped(*tg, 1);
    }
  }
}

// ---- training with thread communicators: overlap on == overlap off, bit for bit -------------------------------------

std::vector<Expected<testing::RankRun>> train_threads(int n, bool overlap) {
  testing::ThreadTraining t;
  t.ranks = n;
  t.configure = [overlap](TrainerConfig& cfg) { cfg.graph.overlap_grad_sync = overlap; };
  t.check = [overlap](const TrainingGraph& tg) {
    if (overlap == nodes_of(tg.graph, "WaitCollectives").empty()) {
      return internal_error("overlap " + std::to_string(overlap) + " but the graph says otherwise");
    }
    return Status::ok();
  };
  return testing::train_gpt2_threads(t);
}

using testing::expect_identical;

class OverlapThreads : public ::testing::TestWithParam<int> {};

TEST_P(OverlapThreads, Gpt2TrainsTheSameWithAndWithoutOverlap) {
  const int n = GetParam();
  auto on = train_threads(n, true);
  auto off = train_threads(n, false);
  for (int r = 0; r < n; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(on[r].has_value()) << on[r].status().message();
    ASSERT_TRUE(off[r].has_value()) << off[r].status().message();
    EXPECT_EQ(on[r]->losses, off[r]->losses);
    EXPECT_EQ(on[r]->norms, off[r]->norms);
    expect_identical(on[r]->weights, off[r]->weights);
    // Data parallelism keeps the replicas equal.
    expect_identical(on[r]->weights, on[0]->weights);
  }
  EXPECT_NE(on[0]->losses.front(), on[0]->losses.back());  // it trained
}

INSTANTIATE_TEST_SUITE_P(Ranks, OverlapThreads, ::testing::Values(2, 4),
                         [](const ::testing::TestParamInfo<int>& i) { return std::to_string(i.param) + "Ranks"; });

// ---- MPI through the CLI ------------------------------------------------------------------------------------------

class OverlapMpi : public MpiCli {
 protected:
  void train(const std::vector<std::string>& model, int devices, const std::string& overlap,
             const std::vector<std::string>& plan = {}) {
    const std::string tag = overlap + std::to_string(devices);
    std::vector<std::string> a = {"train"};
    a.insert(a.end(), model.begin(), model.end());
    a.insert(a.end(), {"--batch-size", "4", "--steps", "5", "--optimizer", "adamw", "--lr", "1e-3", "--quiet",
                       "--device", "cpu", "--devices", std::to_string(devices), "--overlap-grad-sync", overlap,
                       "--metrics", path(tag + ".jsonl"), "--checkpoint-dir", path(tag)});
    a.insert(a.end(), plan.begin(), plan.end());
    auto r = run(a);
    ASSERT_EQ(r.code, 0) << tag << ": " << r.err;
  }
  // Losses, gradient norms, weights and optimizer state: bit for bit.
  void expect_same_runs(int devices) {
    const std::string n = std::to_string(devices);
    auto a = read_metrics(path("on" + n + ".jsonl")), b = read_metrics(path("off" + n + ".jsonl"));
    ASSERT_EQ(a.size(), 5u);
    ASSERT_EQ(b.size(), 5u);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
      EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << "step " << i + 1;
    }
    auto wa = read_safetensors(path("on" + n + "/step-000005.safetensors"));
    auto wb = read_safetensors(path("off" + n + "/step-000005.safetensors"));
    ASSERT_TRUE(wa.has_value()) << wa.status().message();
    ASSERT_TRUE(wb.has_value()) << wb.status().message();
    expect_identical(*wa, *wb);
  }
  void check(const std::vector<std::string>& model) {
    for (int devices : {2, 4}) {
      SCOPED_TRACE(std::to_string(devices) + " processes");
      train(model, devices, "on");
      if (HasFatalFailure()) return;
      train(model, devices, "off");
      if (HasFatalFailure()) return;
      expect_same_runs(devices);
    }
  }
};

TEST_F(OverlapMpi, Gpt2FixtureOnTwoAndFourProcesses) {
  check({fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors")});
}

// DP 2 x TP 2: the tensor-parallel all-reduces of the backward pass interleave with the moved DP all-reduces (over
// other groups); every rank must still issue them in one consistent order.
TEST_F(OverlapMpi, Gpt2DataAndTensorParallelOnFourProcesses) {
  const std::vector<std::string> model = {fixture("gpt2", "model.onnx"), "--data",
                                          fixture("gpt2", "samples.safetensors")};
  const std::vector<std::string> plan = {"--global-tp-deg", "2", "--default-dp-type", "ddp", "--chunks", "1"};
  train(model, 4, "on", plan);
  if (HasFatalFailure()) return;
  train(model, 4, "off", plan);
  if (HasFatalFailure()) return;
  expect_same_runs(4);
}

// ZeRO-2 (`--default-dp-type zero2`): async reduce-scatters in the backward pass and async parameter gathers.
TEST_F(OverlapMpi, Gpt2Zero2OnTwoProcesses) {
  const std::vector<std::string> model = {fixture("gpt2", "model.onnx"), "--data",
                                          fixture("gpt2", "samples.safetensors")};
  const std::vector<std::string> plan = {"--default-dp-type", "zero2", "--chunks", "1"};
  train(model, 2, "on", plan);
  if (HasFatalFailure()) return;
  train(model, 2, "off", plan);
  if (HasFatalFailure()) return;
  expect_same_runs(2);
}

TEST_F(OverlapMpi, ZooGptTinyOnTwoAndFourProcesses) {
  check({"--model-type", "gpt", "--model-size", "gpt-tiny", "--seq-length", "32", "--data",
         fixture("gpt2", "samples.safetensors")});
}

class OverlapFlag : public Cli {};

TEST_F(OverlapFlag, BadValueIsAUsageError) {
  auto r = run({"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--steps",
                "1", "--quiet", "--overlap-grad-sync", "maybe"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--overlap-grad-sync must be on or off"), std::string::npos) << r.err;
  // Not a plan flag: a single-process run with it trains as usual.
  r = run({"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--steps", "1",
           "--quiet", "--device", "cpu", "--overlap-grad-sync", "off"});
  EXPECT_EQ(r.code, 0) << r.err;
}

}  // namespace
}  // namespace gv
