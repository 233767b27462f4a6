// Tensor parallelism (partitioner/tensor_parallel.h) and tensor pieces (runtime/sharded_tensor.h).
//
// Pieces: shapes, extraction and placement for interleaved (outer > 1) and flat-range pieces of any dtype.
// The pass: which parameters it cuts and how, the Copy / Reduce nodes it inserts, clear errors for splits that cannot
// work; and numerically, on the gpt2 / llama / bert fixtures and 4-layer zoo GPT / Llama models, every rank of a TP
// group (one thread each, thread communicators) computes the unsplit graph's logits, and each parameter's gradient
// is the matching piece of the unsplit gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>

#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "partitioner/tensor_parallel.h"
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
using partitioner::TensorParallelLayer;
using TensorMap = std::map<std::string, Tensor>;

// ---- pieces ------------------------------------------------------------------------------------------------------

Tensor iota_f32(Shape shape) {
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = static_cast<float>(i);
  return t;
}

TEST(ShardedTensor, PieceShapes) {
  TensorShard s;
  s.global_shape = {64, 192};
  EXPECT_EQ(tp_piece_shape(s), (Shape{64, 192}));
  s.axis = 1;
  s.outer = 3;
  s.parts = 2;
  EXPECT_EQ(tp_piece_shape(s), (Shape{64, 96}));
  EXPECT_EQ(piece_shape(s), (Shape{64, 96}));
  s.flat_begin = 100;
  s.flat_end = 250;
  EXPECT_EQ(piece_shape(s), (Shape{150}));
}

TEST(ShardedTensor, InterleavedPieceHoldsItsPartOfEachOuterBlock) {
  // [2, 12] with axis 1 viewed as [outer 3, parts 2, inner 2]: part 1 holds columns 2,3 | 6,7 | 10,11.
  Tensor whole = iota_f32({2, 12});
  TensorShard s;
  s.global_name = "w";
  s.global_shape = {2, 12};
  s.axis = 1;
  s.outer = 3;
  s.parts = 2;
  s.index = 1;
  auto piece = extract_piece(whole, s);
  ASSERT_TRUE(piece.has_value()) << piece.status().message();
  ASSERT_EQ(piece->shape(), (Shape{2, 6}));
  const std::vector<float> want = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23};
  for (int i = 0; i < 12; ++i) EXPECT_EQ(piece->data_as<float>()[i], want[i]) << i;
}

TEST(ShardedTensor, PlacingEveryPieceRebuildsTheWhole) {
  for (int axis = 0; axis < 3; ++axis) {
    const Shape shape = {6, 4, 12};
    Tensor whole = iota_f32(shape);
    Tensor rebuilt(DType::kFloat32, shape);
    for (int index = 0; index < 2; ++index) {
      TensorShard s;
      s.global_shape = shape;
      s.axis = axis;
      s.outer = axis == 1 ? 1 : 3;
      s.parts = 2;
      s.index = index;
      auto piece = extract_piece(whole, s);
      ASSERT_TRUE(piece.has_value()) << piece.status().message();
      ASSERT_TRUE(place_piece(rebuilt, *piece, s).is_ok());
    }
    for (int64_t i = 0; i < whole.numel(); ++i) ASSERT_EQ(rebuilt.data_as<float>()[i], whole.data_as<float>()[i]);
  }
}

TEST(ShardedTensor, FlatRangesOfATpPieceAnyDtype) {
  const Shape shape = {4, 6};
  Tensor whole(DType::kInt64, shape);
  for (int64_t i = 0; i < whole.numel(); ++i) whole.data_as<int64_t>()[i] = 1000 + i;
  TensorShard tp;
  tp.global_shape = shape;
  tp.axis = 1;
  tp.parts = 3;
  tp.index = 2;
  auto tp_piece = extract_piece(whole, tp);  // columns 4, 5: [4, 2]
  ASSERT_TRUE(tp_piece.has_value());
  Tensor rebuilt(DType::kInt64, shape);
  ASSERT_TRUE(place_piece(rebuilt, *tp_piece, tp).is_ok());
  const std::vector<int64_t> sizes = {3, 3, 2};  // sharded data parallelism's ranges of 8 elements over 3 ranks
  int64_t begin = 0;
  Tensor from_flat(DType::kInt64, shape);
  for (int64_t n : sizes) {
    TensorShard s = tp;
    s.flat_begin = begin;
    s.flat_end = begin + n;
    auto piece = extract_piece(whole, s);
    ASSERT_TRUE(piece.has_value()) << piece.status().message();
    ASSERT_EQ(piece->shape(), (Shape{n}));
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(piece->data_as<int64_t>()[i], tp_piece->data_as<int64_t>()[begin + i]);
    ASSERT_TRUE(place_piece(from_flat, *piece, s).is_ok());
    begin += n;
  }
  for (int64_t i = 0; i < whole.numel(); ++i) {
    EXPECT_EQ(from_flat.data_as<int64_t>()[i], rebuilt.data_as<int64_t>()[i]) << i;
  }
  // bool / float16 pieces move bytes like any other dtype.
  Tensor b(DType::kFloat16, {2, 4});
  for (int i = 0; i < 8; ++i) b.data_as<uint16_t>()[i] = static_cast<uint16_t>(i);
  TensorShard hs;
  hs.global_shape = {2, 4};
  hs.axis = 0;
  hs.parts = 2;
  hs.index = 1;
  auto hp = extract_piece(b, hs);
  ASSERT_TRUE(hp.has_value());
  EXPECT_EQ(hp->data_as<uint16_t>()[0], 4);
  EXPECT_EQ(hp->data_as<uint16_t>()[3], 7);
}

TEST(ShardedTensor, BadPiecesAreErrors) {
  Tensor whole = iota_f32({4, 6});
  TensorShard s;
  s.global_name = "w";
  s.global_shape = {4, 6};
  s.axis = 1;
  s.parts = 4;  // 6 is not divisible by 4
  EXPECT_FALSE(extract_piece(whole, s).has_value());
  s.parts = 2;
  s.global_shape = {4, 8};
  EXPECT_FALSE(extract_piece(whole, s).has_value());  // shape mismatch
  s.global_shape = {4, 6};
  s.flat_begin = 5;
  s.flat_end = 13;  // the TP piece has 12 elements
  EXPECT_FALSE(extract_piece(whole, s).has_value());
  s.flat_end = -1;
  Tensor wrong = iota_f32({4, 2});
  EXPECT_FALSE(place_piece(whole, wrong, s).is_ok());
  EXPECT_TRUE(place_piece(whole, iota_f32({4, 3}), s).is_ok());
}

// ---- models ------------------------------------------------------------------------------------------------------

struct Model {
  Graph graph;
  TensorMap batch;  // input_ids, labels
};

ModelConfig zoo_gpt_config() {
  ModelConfig c;
  c.type = ModelType::kGpt;
  c.hidden_size = 64;
  c.num_layers = 4;
  c.num_heads = 4;
  c.vocab_size = 128;
  c.max_positions = 64;
  c.seq_length = 16;
  return c;
}

ModelConfig zoo_llama_config() {
  ModelConfig c;
  c.type = ModelType::kLlama;
  c.hidden_size = 64;
  c.num_layers = 4;
  c.num_heads = 4;
  c.kv_heads = 2;
  c.ffn_size = 96;
  c.vocab_size = 128;
  c.max_positions = 64;
  c.seq_length = 16;
  c.norm_eps = 1e-6;
  c.tie_word_embeddings = false;
  return c;
}

TensorMap token_batch(int64_t batch, int64_t seq, int64_t vocab) {
  Tensor ids(DType::kInt64, {batch, seq}), labels(DType::kInt64, {batch, seq});
  uint64_t x = 12345;
  for (int64_t i = 0; i < batch * seq; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    ids.data_as<int64_t>()[i] = static_cast<int64_t>((x >> 33) % vocab);
    labels.data_as<int64_t>()[i] = static_cast<int64_t>((x >> 17) % vocab);
  }
  return {{"input_ids", ids}, {"labels", labels}};
}

// "gpt2", "llama", "bert": the HF fixtures; "zoo-gpt", "zoo-llama": 4-layer zoo models.
Expected<Model> load_model(const std::string& name) {
  Model m;
  if (name == "zoo-gpt" || name == "zoo-llama") {
    const ModelConfig c = name == "zoo-gpt" ? zoo_gpt_config() : zoo_llama_config();
    GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(c, 2, 16, WeightInit::kHuggingFace, 7));
    m.graph = std::move(im.graph);
    m.batch = token_batch(2, 16, c.vocab_size);
    return m;
  }
  ImportOptions io;
  io.batch = 2;
  io.seq = 32;
  GV_ASSIGN_OR_RETURN(ImportedModel im, import_onnx(testing::fixture_dir(name) + "/model.onnx", io));
  m.graph = std::move(im.graph);
  GV_ASSIGN_OR_RETURN(TensorMap ref, read_safetensors(testing::fixture_dir(name) + "/reference.safetensors"));
  m.batch = {{"input_ids", ref.at("input_ids")}, {"labels", ref.at("labels")}};
  return m;
}

std::vector<TensorParallelLayer> tp_layers(int tp, int rank, const std::vector<int>& layers) {
  std::vector<TensorParallelLayer> out;
  std::vector<int> group(tp);
  for (int i = 0; i < tp; ++i) group[i] = i;
  for (int l : layers) out.push_back(TensorParallelLayer{l, tp, rank, group});
  return out;
}

std::vector<int> all_layers(const Graph& g) {
  std::vector<int> v(g.num_layers);
  for (int i = 0; i < g.num_layers; ++i) v[i] = i;
  return v;
}

int count_op(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op;
  return n;
}

// ---- structure ---------------------------------------------------------------------------------------------------

TEST(TensorParallel, Gpt2CutsFusedQkvPerPartAndInsertsCopiesAndReduces) {
  auto m = load_model("gpt2");
  ASSERT_TRUE(m.has_value()) << m.status().message();
  Graph& g = m->graph;
  auto shards = apply_tensor_parallel(g, tp_layers(2, 1, all_layers(g)));
  ASSERT_TRUE(shards.has_value()) << shards.status().message();
  const TensorShard& qkv = shards->at("transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(qkv.axis, 1);
  EXPECT_EQ(qkv.outer, 3);
  EXPECT_EQ(qkv.parts, 2);
  EXPECT_EQ(qkv.index, 1);
  EXPECT_EQ(qkv.global_shape, (Shape{64, 192}));
  EXPECT_EQ(g.value(g.find("transformer.h.0.attn.c_attn.weight")).shape, (Shape{64, 96}));
  EXPECT_EQ(shards->at("transformer.h.1.attn.c_attn.bias").outer, 3);
  EXPECT_EQ(shards->at("transformer.h.0.attn.c_proj.weight").axis, 0);
  EXPECT_EQ(shards->at("transformer.h.0.mlp.c_fc.weight").axis, 1);
  EXPECT_EQ(shards->at("transformer.h.0.mlp.c_fc.bias").axis, 0);
  EXPECT_EQ(shards->at("transformer.h.1.mlp.c_proj.weight").axis, 0);
  EXPECT_EQ(g.value(g.find("transformer.h.1.mlp.c_proj.weight")).shape, (Shape{128, 64}));
  // Row-parallel biases, norms and the embedding stay whole.
  EXPECT_FALSE(shards->count("transformer.h.0.attn.c_proj.bias"));
  EXPECT_FALSE(shards->count("transformer.h.0.ln_1.weight"));
  EXPECT_EQ(shards->size(), 12u);  // 6 per layer
  EXPECT_EQ(count_op(g, partitioner::kTensorParallelCopyOp), 4);
  EXPECT_EQ(count_op(g, partitioner::kTensorParallelReduceOp), 4);
  for (const Node& n : g.nodes) {
    if (n.op_type == partitioner::kTensorParallelReduceOp) {
      EXPECT_EQ(n.attrs.get_ints("group"), (std::vector<int64_t>{0, 1}));
    }
  }
}

TEST(TensorParallel, SubsetOfLayersAndTpOneLeaveTheRestUntouched) {
  auto m = load_model("llama");
  ASSERT_TRUE(m.has_value()) << m.status().message();
  Graph& g = m->graph;
  const size_t nodes_before = g.nodes.size();
  std::vector<TensorParallelLayer> layers = tp_layers(2, 0, {1});
  layers.push_back(TensorParallelLayer{0, 1, 0, {0}});
  auto shards = apply_tensor_parallel(g, layers);
  ASSERT_TRUE(shards.has_value()) << shards.status().message();
  EXPECT_EQ(shards->size(), 7u);  // q, k, v, o, gate, up, down of layer 1
  for (const auto& [name, s] : *shards) EXPECT_NE(name.find("val_"), std::string::npos) << name;
  EXPECT_FALSE(shards->count("val_67"));  // layer 0's q_proj
  EXPECT_EQ(g.value(g.find("val_67")).shape, (Shape{64, 64}));
  EXPECT_EQ(g.value(g.find("val_215")).shape, (Shape{64, 32}));  // layer 1's q_proj: [in, out], out cut
  EXPECT_EQ(g.value(g.find("val_222")).shape, (Shape{64, 16}));  // k_proj: 2 kv heads of 16 -> 1
  EXPECT_EQ(g.value(g.find("val_356")).shape, (Shape{86, 64}));  // down_proj: 172 -> 86 rows
  // Layer 1: one Copy for q/k/v's shared input, one for gate/up; two reduces.
  EXPECT_EQ(count_op(g, partitioner::kTensorParallelReduceOp), 2);
  EXPECT_GE(g.nodes.size(), nodes_before + 4);

  auto untouched = load_model("llama");
  ASSERT_TRUE(untouched.has_value());
  auto none = apply_tensor_parallel(untouched->graph, tp_layers(1, 0, {0, 1}));
  ASSERT_TRUE(none.has_value()) << none.status().message();
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(untouched->graph.nodes.size(), nodes_before);
}

void expect_error(const std::string& model, int tp, const std::vector<std::string>& fragments,
                  const std::function<void(Graph&)>& edit = nullptr) {
  auto m = load_model(model);
  ASSERT_TRUE(m.has_value()) << m.status().message();
  if (edit) edit(m->graph);
  auto r = apply_tensor_parallel(m->graph, tp_layers(tp, 0, all_layers(m->graph)));
  ASSERT_FALSE(r.has_value()) << model << " tp " << tp << " should not split";
  for (const std::string& f : fragments) {
    EXPECT_NE(r.status().message().find(f), std::string::npos) << "'" << f << "' not in: " << r.status().message();
  }
}

TEST(TensorParallel, HeadsNotDivisibleByTpAreClearErrors) {
  expect_error("gpt2", 3, {"layer 0", "4 attention heads", "not divisible by tp 3"});
  expect_error("llama", 4, {"layer 0", "2 key/value heads", "not divisible by tp 4"});
  ModelConfig c = zoo_gpt_config();
  c.hidden_size = 96;
  c.num_heads = 12;
  c.num_layers = 1;
  auto im = build_and_import(c, 1, 8, WeightInit::kNone);
  ASSERT_TRUE(im.has_value()) << im.status().message();
  auto r = apply_tensor_parallel(im->graph, tp_layers(5, 0, {0}));
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("12 attention heads"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("tp 5"), std::string::npos) << r.status().message();
}

TEST(TensorParallel, OpsThatCannotRunOnAPieceAreErrors) {
  // Softmax over the heads axis of the attention scores.
  expect_error("gpt2", 2, {"layer 0", "Softmax", "cannot split this op over heads"}, [](Graph& g) {
    for (Node& n : g.nodes) {
      if (n.op_type == "Softmax" && n.place.kind == Placement::Kind::kLayer) n.attrs.set_int("axis", 1);
    }
  });
  // An op the pass has no rule for, inside the attention.
  expect_error("zoo-gpt", 2, {"layer 0", "Softsign", "cannot split this op over heads"}, [](Graph& g) {
    for (Node& n : g.nodes) {
      if (n.op_type == "Softmax" && n.place.kind == Placement::Kind::kLayer && n.place.layer == 0) {
        n.op_type = "Softsign";
        break;
      }
    }
  });
  // Bad plans.
  auto m = load_model("gpt2");
  ASSERT_TRUE(m.has_value());
  auto r = apply_tensor_parallel(m->graph, {TensorParallelLayer{0, 2, 0, {0}}});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("group"), std::string::npos) << r.status().message();
  r = apply_tensor_parallel(m->graph, {TensorParallelLayer{7, 2, 0, {0, 1}}});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("layer 7"), std::string::npos) << r.status().message();
}

// ---- numerics ----------------------------------------------------------------------------------------------------

bool parallel_ops_registered() {
  return OpRegistry::global().find(kGalvatronDomain, partitioner::kTensorParallelCopyOp) &&
         OpRegistry::global().find(kGalvatronDomain, partitioner::kTensorParallelReduceOp);
}

struct RunResult {
  Tensor logits;
  TensorMap grads;
};

// Forward and backward of `g` on one rank: the logits and every parameter's gradient.
Expected<RunResult> forward_backward(Graph g, const TensorMap& batch, Communicator* comm) {
  TrainingGraphOptions opts;  // data_parallel stays off: gradients are combined by the TP ops alone
  opts.fuse_linear_cross_entropy = false;  // the logits are compared, so they must exist
  GV_ASSIGN_OR_RETURN(TrainingGraph tg, build_training_graph(std::move(g), opts));
  const ValueId logits = tg.graph.find("logits");
  if (logits == kNoValue) return not_found("no value named logits");
  auto backend = make_cpu_backend();
  ExecutorOptions eo;
  eo.comm = comm;
  eo.keep_alive = {logits};
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(tg.graph, *backend, eo));
  for (ValueId in : tg.graph.inputs) {
    if (in == tg.lr || in == tg.step) continue;  // the optimizer's inputs; the optimizer does not run
    auto it = batch.find(tg.graph.value(in).name);
    if (it == batch.end()) return not_found("the batch has no '" + tg.graph.value(in).name + "'");
    GV_RETURN_IF_ERROR(ex->set_value(in, it->second));
  }
  GV_RETURN_IF_ERROR(ex->run_steps(0, tg.optimizer_begin));
  RunResult r;
  GV_ASSIGN_OR_RETURN(r.logits, ex->fetch(logits));
  for (ValueId p : tg.params) {
    GV_ASSIGN_OR_RETURN(Tensor grad, ex->fetch(tg.grads.at(p)));
    r.grads[tg.graph.value(p).name] = grad;
  }
  return r;
}

// ||a - b|| / max(||b||, floor).
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

struct TpCase {
  std::string model;
  int tp;
  std::vector<int> layers;  // empty: all
};

void PrintTo(const TpCase& c, std::ostream* os) {
  *os << c.model << " tp " << c.tp << " layers";
  if (c.layers.empty()) *os << " all";
  for (int l : c.layers) *os << " " << l;
}

std::string case_name(const ::testing::TestParamInfo<TpCase>& info) {
  std::string s = info.param.model + "_tp" + std::to_string(info.param.tp);
  if (!info.param.layers.empty()) {
    s += "_layers";
    for (int l : info.param.layers) s += std::to_string(l);
  }
  for (char& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
}

class TensorParallelNumerics : public ::testing::TestWithParam<TpCase> {};

TEST_P(TensorParallelNumerics, LogitsAndGradientPiecesMatchTheUnsplitGraph) {
  if (!parallel_ops_registered()) GTEST_SKIP() << "TensorParallelCopy / TensorParallelReduce are not registered yet";
  const TpCase& tc = GetParam();
  auto base = load_model(tc.model);
  ASSERT_TRUE(base.has_value()) << base.status().message();
  const TensorMap batch = base->batch;
  const std::vector<int> layers = tc.layers.empty() ? all_layers(base->graph) : tc.layers;
  auto ref = forward_backward(std::move(base->graph), batch, nullptr);
  ASSERT_TRUE(ref.has_value()) << ref.status().message();

  std::vector<Graph> graphs(tc.tp);
  std::vector<std::map<std::string, TensorShard>> shards(tc.tp);
  for (int r = 0; r < tc.tp; ++r) {
    auto m = load_model(tc.model);
    ASSERT_TRUE(m.has_value());
    auto s = apply_tensor_parallel(m->graph, tp_layers(tc.tp, r, layers));
    ASSERT_TRUE(s.has_value()) << "rank " << r << ": " << s.status().message();
    ASSERT_FALSE(s->empty());
    shards[r] = *s;
    graphs[r] = std::move(m->graph);
  }
  auto comms = make_thread_communicators(tc.tp);
  std::vector<Expected<RunResult>> results(tc.tp, Expected<RunResult>(internal_error("not run")));
  std::vector<std::thread> threads;
  for (int r = 0; r < tc.tp; ++r) {
    threads.emplace_back([&, r] { results[r] = forward_backward(std::move(graphs[r]), batch, comms[r].get()); });
  }
  for (auto& t : threads) t.join();

  for (int r = 0; r < tc.tp; ++r) {
    ASSERT_TRUE(results[r].has_value()) << "rank " << r << ": " << results[r].status().message();
    const RunResult& got = *results[r];
    ASSERT_EQ(got.logits.shape(), ref->logits.shape());
    EXPECT_LE(rel_l2(got.logits, ref->logits, 1e-30), 1e-5) << "rank " << r << " logits";
    double max_abs = 0, max_ref = 0;
    for (int64_t i = 0; i < got.logits.numel(); ++i) {
      max_abs = std::max(max_abs, std::fabs(got.logits.scalar_f64(i) - ref->logits.scalar_f64(i)));
      max_ref = std::max(max_ref, std::fabs(ref->logits.scalar_f64(i)));
    }
    EXPECT_LE(max_abs, 1e-5 * max_ref) << "rank " << r << " logits, largest difference";
    ASSERT_EQ(got.grads.size(), ref->grads.size());
    // A gradient that is zero in exact arithmetic (attention key biases: the softmax cancels them) holds float32
    // rounding noise only; it is compared against a floor of 1e-4 of the whole model's gradient norm.
    double global = 0;
    for (const auto& kv : ref->grads) global += l2(kv.second) * l2(kv.second);
    const double floor = 1e-4 * std::sqrt(global);
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

INSTANTIATE_TEST_SUITE_P(Models, TensorParallelNumerics,
                         ::testing::Values(TpCase{"gpt2", 2, {}}, TpCase{"gpt2", 4, {}}, TpCase{"gpt2", 2, {1}},
                                           TpCase{"llama", 2, {}}, TpCase{"llama", 2, {0}}, TpCase{"bert", 2, {}},
                                           TpCase{"bert", 4, {1}}, TpCase{"zoo-gpt", 2, {}},
                                           TpCase{"zoo-gpt", 4, {}}, TpCase{"zoo-gpt", 2, {1, 2}},
                                           TpCase{"zoo-llama", 2, {}}, TpCase{"zoo-llama", 2, {0, 3}}),
                         case_name);

}  // namespace
}  // namespace gv
