// Vocabulary parallelism (partitioner/vocab_parallel.h) and its loss op (runtime/ops/vocab_parallel_ops.cpp).
//
// The op: VocabParallelCrossEntropy over the pieces of an [N, V] score matrix (vtp 1, 2, 4 thread ranks) gives the
// unsplit SoftmaxCrossEntropyLoss's loss, and its gradient is the matching piece of the unsplit gradient.
// The pass: which parameters it cuts (tied GPT-2 once, Llama's separate embedding and [D, V] head), the nodes it
// inserts, clear errors; numerically, on the gpt2 / gpt2_loss / llama fixtures and a 4-layer zoo GPT (vtp 2 and 4,
// and together with tensor parallelism), every rank's loss is the unsplit graph's cross-entropy and every parameter's
// gradient is the matching piece of the unsplit gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>

#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "partitioner/tensor_parallel.h"
#include "partitioner/vocab_parallel.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"
#include "runtime/executor.h"
#include "runtime/op_registry.h"
#include "runtime/safetensors.h"
#include "runtime/sharded_tensor.h"
#include "runtime/training_graph.h"
#include "tests/hf_fixtures.h"

namespace gv {
namespace {

using partitioner::apply_tensor_parallel;
using partitioner::apply_vocab_parallel;
using partitioner::VocabParallel;
using TensorMap = std::map<std::string, Tensor>;

struct Model {
  Graph graph;
  TensorMap batch;  // input_ids, labels
};

TensorMap token_batch(int64_t batch, int64_t seq, int64_t vocab) {
  Tensor ids(DType::kInt64, {batch, seq}), labels(DType::kInt64, {batch, seq});
  uint64_t x = 987654321;
  for (int64_t i = 0; i < batch * seq; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    ids.data_as<int64_t>()[i] = static_cast<int64_t>((x >> 33) % vocab);
    labels.data_as<int64_t>()[i] = static_cast<int64_t>((x >> 17) % vocab);
  }
  return {{"input_ids", ids}, {"labels", labels}};
}

// "gpt2", "gpt2_loss", "llama": the HF fixtures; "zoo-gpt": a 4-layer zoo GPT (tied embedding). A few labels are
// ignore_index (-100).
Expected<Model> load_model(const std::string& name) {
  Model m;
  if (name == "zoo-gpt") {
    ModelConfig c;
    c.type = ModelType::kGpt;
    c.hidden_size = 64;
    c.num_layers = 4;
    c.num_heads = 4;
    c.vocab_size = 128;
    c.max_positions = 64;
    c.seq_length = 16;
    GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(c, 2, 16, WeightInit::kHuggingFace, 11));
    m.graph = std::move(im.graph);
    m.batch = token_batch(2, 16, c.vocab_size);
  } else {
    ImportOptions io;
    io.batch = 2;
    io.seq = 32;
    GV_ASSIGN_OR_RETURN(ImportedModel im, import_onnx(testing::fixture_dir(name) + "/model.onnx", io));
    m.graph = std::move(im.graph);
    GV_ASSIGN_OR_RETURN(TensorMap ref, read_safetensors(testing::fixture_dir(name) + "/reference.safetensors"));
    m.batch = {{"input_ids", ref.at("input_ids")}, {"labels", ref.at("labels")}};
  }
  Tensor labels = m.batch.at("labels");  // a copy: Tensor may share storage
  Tensor fresh(labels.dtype(), labels.shape());
  for (int64_t i = 0; i < labels.numel(); ++i) fresh.data_as<int64_t>()[i] = i % 7 == 3 ? -100 : labels.data_as<int64_t>()[i];
  m.batch["labels"] = fresh;
  return m;
}

VocabParallel vp_of(int vtp, int index) {
  VocabParallel vp;
  vp.vtp = vtp;
  vp.index = index;
  for (int i = 0; i < vtp; ++i) vp.group.push_back(i);
  return vp;
}

int count_op(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op;
  return n;
}

struct RunResult {
  double loss = 0;
  TensorMap grads;
};

// Forward and backward on one rank: the loss and every parameter's gradient.
Expected<RunResult> forward_backward(Graph g, const TensorMap& batch, Communicator* comm) {
  TrainingGraphOptions opts;
  GV_ASSIGN_OR_RETURN(TrainingGraph tg, build_training_graph(std::move(g), opts));
  auto backend = make_cpu_backend();
  ExecutorOptions eo;
  eo.comm = comm;
  eo.keep_alive = {tg.loss};
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(tg.graph, *backend, eo));
  for (ValueId in : tg.graph.inputs) {
    if (in == tg.lr || in == tg.step) continue;
    auto it = batch.find(tg.graph.value(in).name);
    if (it == batch.end()) return not_found("the batch has no '" + tg.graph.value(in).name + "'");
    GV_RETURN_IF_ERROR(ex->set_value(in, it->second));
  }
  GV_RETURN_IF_ERROR(ex->run_steps(0, tg.optimizer_begin));
  RunResult r;
  GV_ASSIGN_OR_RETURN(Tensor loss, ex->fetch(tg.loss));
  r.loss = loss.scalar_f64(0);
  for (ValueId p : tg.params) {
    GV_ASSIGN_OR_RETURN(Tensor grad, ex->fetch(tg.grads.at(p)));
    r.grads[tg.graph.value(p).name] = grad;
  }
  return r;
}

double rel_l2(const Tensor& a, const Tensor& b, double floor) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = a.scalar_f64(i) - b.scalar_f64(i);
    num += d * d;
    den += b.scalar_f64(i) * b.scalar_f64(i);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

double l2(const Tensor& t) {
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.scalar_f64(i) * t.scalar_f64(i);
  return std::sqrt(s);
}

// Runs one graph per rank on its own thread.
std::vector<Expected<RunResult>> run_ranks(std::vector<Graph>& graphs, const TensorMap& batch) {
  const int n = static_cast<int>(graphs.size());
  auto comms = make_thread_communicators(n);
  std::vector<Expected<RunResult>> results(n, Expected<RunResult>(internal_error("not run")));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] { results[r] = forward_backward(std::move(graphs[r]), batch, comms[r].get()); });
  }
  for (auto& t : threads) t.join();
  return results;
}

// ---- the op ------------------------------------------------------------------------------------------------------

// scores [N, V] as a parameter -> loss; `vtp` 0: the unsplit SoftmaxCrossEntropyLoss, else rank `index`'s
// VocabParallelCrossEntropy over its columns.
Graph loss_graph(const Tensor& scores, int vtp, int index) {
  Graph g;
  g.opsets[""] = 17;
  g.opsets[kGalvatronDomain] = 1;
  const int64_t n = scores.shape()[0], v = scores.shape()[1];
  Tensor piece = scores;
  if (vtp > 0) {
    TensorShard s;
    s.global_shape = scores.shape();
    s.axis = 1;
    s.parts = vtp;
    s.index = index;
    piece = *extract_piece(scores, s);
  }
  const ValueId p = g.add_initializer("scores", piece, ValueKind::kParameter);
  const ValueId labels = g.add_input("labels", DType::kInt64, {n});
  Node node;
  node.name = "ce";
  node.inputs = {p, labels};
  if (vtp == 0) {
    node.op_type = "SoftmaxCrossEntropyLoss";
    node.opset = 17;
    node.attrs.set_string("reduction", "mean");
    node.attrs.set_int("ignore_index", -100);
  } else {
    node.op_type = partitioner::kVocabParallelCrossEntropyOp;
    node.domain = kGalvatronDomain;
    node.opset = 1;
    std::vector<int64_t> group;
    for (int i = 0; i < vtp; ++i) group.push_back(i);
    node.attrs.set_ints("group", group);
    node.attrs.set_int("vocab_start", index * (v / vtp));
    node.attrs.set_int("vocab_size", v);
    node.attrs.set_int("ignore_index", -100);
  }
  auto outs = g.add_node(node, {"loss"});
  EXPECT_TRUE(outs.has_value()) << outs.status().message();
  if (outs) g.outputs = {(*outs)[0]};
  return g;
}

TEST(VocabParallelCrossEntropy, PiecesGiveTheUnsplitLossAndGradient) {
  const int64_t n = 9, v = 16;
  Tensor scores(DType::kFloat32, {n, v});
  uint64_t x = 42;
  for (int64_t i = 0; i < scores.numel(); ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    scores.data_as<float>()[i] = static_cast<float>(static_cast<double>(x >> 40) / (1 << 24) * 8.0 - 4.0);
  }
  Tensor labels(DType::kInt64, {n});
  for (int64_t i = 0; i < n; ++i) labels.data_as<int64_t>()[i] = (i * 5 + 3) % v;
  labels.data_as<int64_t>()[4] = -100;
  labels.data_as<int64_t>()[2] = v - 1;  // the last column, owned by the last rank
  const TensorMap batch = {{"labels", labels}};
  auto ref = forward_backward(loss_graph(scores, 0, 0), batch, nullptr);
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  ASSERT_GT(ref->loss, 0.5);
  for (int vtp : {1, 2, 4}) {
    std::vector<Graph> graphs;
    for (int r = 0; r < vtp; ++r) graphs.push_back(loss_graph(scores, vtp, r));
    auto results = run_ranks(graphs, batch);
    for (int r = 0; r < vtp; ++r) {
      ASSERT_TRUE(results[r].has_value()) << "vtp " << vtp << " rank " << r << ": " << results[r].status().message();
      EXPECT_NEAR(results[r]->loss, ref->loss, 1e-6 * ref->loss) << "vtp " << vtp << " rank " << r;
      TensorShard s;
      s.global_shape = {n, v};
      s.axis = 1;
      s.parts = vtp;
      s.index = r;
      Tensor want = *extract_piece(ref->grads.at("scores"), s);
      const Tensor& got = results[r]->grads.at("scores");
      ASSERT_EQ(got.shape(), want.shape());
      EXPECT_LE(rel_l2(got, want, 1e-30), 1e-6) << "vtp " << vtp << " rank " << r;
      // Ignored row: no gradient.
      for (int64_t j = 0; j < v / vtp; ++j) EXPECT_EQ(got.scalar_f64(4 * (v / vtp) + j), 0.0);
    }
  }
  // Finite differences of the vtp-1 op (one process, no communicator) in float64.
  Tensor s64(DType::kFloat64, {n, v});
  for (int64_t i = 0; i < s64.numel(); ++i) s64.data_as<double>()[i] = scores.data_as<float>()[i];
  auto g1 = forward_backward(loss_graph(s64, 1, 0), batch, nullptr);
  ASSERT_TRUE(g1.has_value()) << g1.status().message();
  for (int64_t k : std::vector<int64_t>{0, 7, 2 * v + 15, 5 * v + 3}) {
    const double h = 1e-6;
    Tensor plus(DType::kFloat64, {n, v}), minus(DType::kFloat64, {n, v});
    for (int64_t i = 0; i < s64.numel(); ++i) {
      plus.data_as<double>()[i] = minus.data_as<double>()[i] = s64.data_as<double>()[i];
    }
    plus.data_as<double>()[k] += h;
    minus.data_as<double>()[k] -= h;
    auto lp = forward_backward(loss_graph(plus, 1, 0), batch, nullptr);
    auto lm = forward_backward(loss_graph(minus, 1, 0), batch, nullptr);
    ASSERT_TRUE(lp.has_value() && lm.has_value());
    EXPECT_NEAR((lp->loss - lm->loss) / (2 * h), g1->grads.at("scores").scalar_f64(k), 1e-7) << "element " << k;
  }
}

TEST(VocabParallelCrossEntropy, BadLabelsAndAttrsAreErrors) {
  Tensor scores(DType::kFloat32, {2, 8});
  Tensor labels = Tensor::from_i64({1, 8}, {2});  // 8 is outside [0, 8)
  auto r = forward_backward(loss_graph(scores, 1, 0), {{"labels", labels}}, nullptr);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("label 8"), std::string::npos) << r.status().message();
  Graph g = loss_graph(scores, 1, 0);
  Node bad = g.nodes[0];
  bad.name = "ce2";
  bad.attrs.set_int("vocab_size", 4);  // smaller than the piece
  auto outs = g.add_node(bad);
  ASSERT_FALSE(outs.has_value());
  EXPECT_NE(outs.status().message().find("vocab_size 4"), std::string::npos) << outs.status().message();
}

// ---- the pass: structure and errors ------------------------------------------------------------------------------

TEST(VocabParallel, Gpt2CutsTheTiedEmbeddingOnce) {
  auto m = load_model("gpt2");
  ASSERT_TRUE(m.has_value()) << m.status().message();
  Graph& g = m->graph;
  auto shards = apply_vocab_parallel(g, vp_of(2, 1));
  ASSERT_TRUE(shards.has_value()) << shards.status().message();
  ASSERT_EQ(shards->size(), 1u);
  const TensorShard& s = shards->at("lm_head.weight");
  EXPECT_EQ(s.axis, 0);
  EXPECT_EQ(s.parts, 2);
  EXPECT_EQ(s.index, 1);
  EXPECT_EQ(s.global_shape, (Shape{256, 64}));
  EXPECT_EQ(g.value(g.find("lm_head.weight")).shape, (Shape{128, 64}));
  EXPECT_EQ(count_op(g, partitioner::kTensorParallelCopyOp), 1);
  EXPECT_EQ(count_op(g, partitioner::kTensorParallelReduceOp), 1);
  EXPECT_EQ(count_op(g, partitioner::kVocabParallelCrossEntropyOp), 1);
  EXPECT_EQ(g.value(g.find("logits")).shape, (Shape{2, 32, 128}));
  EXPECT_EQ(g.value(g.find("embedding")).shape, (Shape{2, 32, 64}));
  ASSERT_EQ(g.outputs.size(), 1u);
  EXPECT_EQ(g.value(g.outputs[0]).shape, Shape{});
  ASSERT_NE(g.find("labels"), kNoValue);
  EXPECT_EQ(g.value(g.find("labels")).shape, (Shape{2, 32}));
  for (const Node& n : g.nodes) {
    if (n.op_type == partitioner::kVocabParallelCrossEntropyOp) {
      EXPECT_EQ(n.attrs.get_int("vocab_start", -1), 128);
      EXPECT_EQ(n.attrs.get_int("vocab_size", -1), 256);
      EXPECT_EQ(n.attrs.get_int("ignore_index", 0), -100);
      EXPECT_EQ(n.attrs.get_ints("group"), (std::vector<int64_t>{0, 1}));
    }
  }
}

TEST(VocabParallel, LlamaCutsEmbeddingRowsAndHeadColumns) {
  auto m = load_model("llama");
  ASSERT_TRUE(m.has_value()) << m.status().message();
  Graph& g = m->graph;
  auto shards = apply_vocab_parallel(g, vp_of(4, 2));
  ASSERT_TRUE(shards.has_value()) << shards.status().message();
  ASSERT_EQ(shards->size(), 2u);
  EXPECT_EQ(shards->at("model.embed_tokens.weight").axis, 0);
  EXPECT_EQ(g.value(g.find("model.embed_tokens.weight")).shape, (Shape{64, 64}));
  // The head's weight is stored [D, V]: its columns are cut.
  for (const auto& [name, s] : *shards) {
    if (name == "model.embed_tokens.weight") continue;
    EXPECT_EQ(s.axis, 1) << name;
    EXPECT_EQ(s.global_shape, (Shape{64, 256})) << name;
    EXPECT_EQ(s.index, 2);
  }
}

TEST(VocabParallel, GraphWithItsOwnLossKeepsItsLabels) {
  auto m = load_model("gpt2_loss");
  ASSERT_TRUE(m.has_value()) << m.status().message();
  Graph& g = m->graph;
  const size_t inputs = g.inputs.size();
  auto shards = apply_vocab_parallel(g, vp_of(2, 0));
  ASSERT_TRUE(shards.has_value()) << shards.status().message();
  EXPECT_EQ(g.inputs.size(), inputs);
  EXPECT_EQ(count_op(g, "SoftmaxCrossEntropyLoss"), 0);
  EXPECT_EQ(count_op(g, partitioner::kVocabParallelCrossEntropyOp), 1);
  ASSERT_EQ(g.outputs.size(), 1u);
  EXPECT_EQ(g.value(g.outputs[0]).name, "loss");
}

TEST(VocabParallel, OneRankLeavesTheGraphAlone) {
  auto m = load_model("gpt2");
  ASSERT_TRUE(m.has_value());
  const size_t nodes = m->graph.nodes.size();
  auto shards = apply_vocab_parallel(m->graph, vp_of(1, 0));
  ASSERT_TRUE(shards.has_value()) << shards.status().message();
  EXPECT_TRUE(shards->empty());
  EXPECT_EQ(m->graph.nodes.size(), nodes);
}

void expect_error(const std::string& model, const VocabParallel& vp, const std::vector<std::string>& fragments,
                  const std::function<void(Graph&)>& edit = nullptr) {
  auto m = load_model(model);
  ASSERT_TRUE(m.has_value()) << m.status().message();
  if (edit) edit(m->graph);
  auto r = apply_vocab_parallel(m->graph, vp);
  ASSERT_FALSE(r.has_value()) << model << " vtp " << vp.vtp << " should not split";
  for (const std::string& f : fragments) {
    EXPECT_NE(r.status().message().find(f), std::string::npos) << "'" << f << "' not in: " << r.status().message();
  }
}

TEST(VocabParallel, ErrorsNameTheProblem) {
  expect_error("gpt2", vp_of(3, 0), {"vocabulary size 256", "not divisible by vtp 3"});
  expect_error("zoo-gpt", vp_of(3, 1), {"vocabulary size 128", "not divisible by vtp 3"});
  // A head that is not a plain product.
  expect_error("gpt2", vp_of(2, 0), {"not a plain product", "node_linear", "Einsum"}, [](Graph& g) {
    for (Node& n : g.nodes) {
      if (n.place.kind == Placement::Kind::kHead && n.op_type == "MatMul") n.op_type = "Einsum";
    }
  });
  expect_error("gpt2", vp_of(2, 0), {"not a plain product", "computed by", "Neg"}, [](Graph& g) {
    for (Node& n : g.nodes) {
      if (n.place.kind == Placement::Kind::kHead && n.op_type == "Transpose") n.op_type = "Neg";
    }
  });
  // Logits read by something that cannot run on a piece.
  expect_error("llama", vp_of(2, 0), {"logits", "Softplus"}, [](Graph& g) {
    Node n;
    n.name = "extra";
    n.op_type = "Softplus";
    n.opset = g.opsets[""];
    n.inputs = {g.find("logits")};
    n.place.kind = Placement::Kind::kHead;
    auto outs = g.add_node(n, {"soft"});
    ASSERT_TRUE(outs.has_value()) << outs.status().message();
  });
  // Bad plans.
  expect_error("gpt2", VocabParallel{2, 0, {0}}, {"group"});
  expect_error("gpt2", VocabParallel{2, 2, {0, 1}}, {"index 2"});
}

// ---- the pass: numerics ------------------------------------------------------------------------------------------

struct VpCase {
  std::string model;
  int vtp;
  bool with_tp = false;  // tensor parallelism over the same group in every layer first
};

void PrintTo(const VpCase& c, std::ostream* os) { *os << c.model << " vtp " << c.vtp << (c.with_tp ? " + tp" : ""); }

std::string case_name(const ::testing::TestParamInfo<VpCase>& info) {
  std::string s = info.param.model + "_vtp" + std::to_string(info.param.vtp) + (info.param.with_tp ? "_tp" : "");
  for (char& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
}

class VocabParallelNumerics : public ::testing::TestWithParam<VpCase> {};

TEST_P(VocabParallelNumerics, LossAndGradientPiecesMatchTheUnsplitGraph) {
  const VpCase& vc = GetParam();
  auto base = load_model(vc.model);
  ASSERT_TRUE(base.has_value()) << base.status().message();
  const TensorMap batch = base->batch;
  auto ref = forward_backward(std::move(base->graph), batch, nullptr);
  ASSERT_TRUE(ref.has_value()) << ref.status().message();

  std::vector<Graph> graphs(vc.vtp);
  std::vector<std::map<std::string, TensorShard>> shards(vc.vtp);
  for (int r = 0; r < vc.vtp; ++r) {
    auto m = load_model(vc.model);
    ASSERT_TRUE(m.has_value());
    if (vc.with_tp) {
      std::vector<partitioner::TensorParallelLayer> layers;
      for (int l = 0; l < m->graph.num_layers; ++l) layers.push_back({l, vc.vtp, r, vp_of(vc.vtp, r).group});
      auto t = apply_tensor_parallel(m->graph, layers);
      ASSERT_TRUE(t.has_value()) << "rank " << r << ": " << t.status().message();
      shards[r] = *t;
    }
    auto s = apply_vocab_parallel(m->graph, vp_of(vc.vtp, r));
    ASSERT_TRUE(s.has_value()) << "rank " << r << ": " << s.status().message();
    ASSERT_FALSE(s->empty());
    for (const auto& kv : *s) shards[r][kv.first] = kv.second;
    graphs[r] = std::move(m->graph);
  }
  auto results = run_ranks(graphs, batch);

  double global = 0;
  for (const auto& kv : ref->grads) global += l2(kv.second) * l2(kv.second);
  const double floor = 1e-4 * std::sqrt(global);  // exact-zero gradients (key biases) hold rounding noise only
  for (int r = 0; r < vc.vtp; ++r) {
    ASSERT_TRUE(results[r].has_value()) << "rank " << r << ": " << results[r].status().message();
    const RunResult& got = *results[r];
    EXPECT_NEAR(got.loss, ref->loss, 1e-6 * std::fabs(ref->loss)) << "rank " << r << " loss";
    ASSERT_EQ(got.grads.size(), ref->grads.size());
    for (const auto& [name, whole] : ref->grads) {
      auto it = got.grads.find(name);
      ASSERT_NE(it, got.grads.end()) << "rank " << r << " has no gradient for " << name;
      Tensor want = whole;
      auto sh = shards[r].find(name);
      if (sh != shards[r].end()) {
        auto piece = extract_piece(whole, sh->second);
        ASSERT_TRUE(piece.has_value()) << piece.status().message();
        want = *piece;
      }
      ASSERT_EQ(it->second.shape(), want.shape()) << "rank " << r << " " << name;
      EXPECT_LE(rel_l2(it->second, want, floor), 1e-5) << "rank " << r << " gradient of " << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, VocabParallelNumerics,
                         ::testing::Values(VpCase{"gpt2", 2}, VpCase{"gpt2", 4}, VpCase{"gpt2_loss", 2},
                                           VpCase{"llama", 2}, VpCase{"llama", 4}, VpCase{"zoo-gpt", 2},
                                           VpCase{"zoo-gpt", 4}, VpCase{"zoo-gpt", 2, true},
                                           VpCase{"llama", 2, true}),
                         case_name);

}  // namespace
}  // namespace gv
