// fuse_gelu (runtime/fuse_gelu.cpp): the GELU chains of real exports become one Gelu node per chain, with the same
// forward outputs and gradients; chains that are not exactly GELU, or whose intermediates are read elsewhere, stay.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "runtime/executor.h"
#include "runtime/fusion.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"
#include "runtime/training_graph.h"
#include "tests/graph_checks.h"
#include "tests/hf_fixtures.h"

namespace gv {
namespace {

using testing::fixture_dir;
using testing::read_meta;

// The baseline must not be fused by build_training_graph itself (TrainingGraphOptions::fuse_ops, where it exists).
template <class T>
auto disable_fusion(T& o, int) -> decltype(o.fuse_ops = false, void()) {
  o.fuse_ops = false;
}
template <class T>
void disable_fusion(T&, long) {}

using testing::count_ops;
using testing::expect_well_formed;
using testing::l2;
using testing::max_rel_diff;
using testing::rel_l2;
using testing::run_forward;

// ---- the HF fixtures and the zoo ---------------------------------------------------------------------------------

struct FixtureCase {
  std::string name;
  int chains;               // GELU chains the pass rewrites
  std::string approximate;  // of the fused nodes
  bool head_gelu;           // one more GELU after the layers (BERT's MLM head transform)
};

void PrintTo(const FixtureCase& c, std::ostream* os) { *os << c.name; }

const FixtureCase kCases[] = {
    {"gpt2", 2, "tanh", false},          // dynamo: Mul(x,.5) Pow(x,3) Mul(.044715) Add(x,.) Mul(k) Tanh Add(1) Mul
    {"gpt2_loss", 2, "tanh", false},     // the same chain
    {"bert_opset14", 3, "none", true},   // TorchScript: Div(x,sqrt2) Erf Add(1) Mul(x,.) Mul(.,.5), 2 layers + head
    {"bert", 0, "none", true},           // dynamo opset 20 already writes Gelu
    {"llama", 0, "none", false},         // SiLU, no GELU
};

ImportedModel import_fixture(const std::string& name) {
  ImportOptions io;
  io.batch = 2;
  io.seq = 32;
  auto m = import_onnx(fixture_dir(name) + "/model.onnx", io);
  EXPECT_TRUE(m.has_value()) << m.status().message();
  return m ? std::move(*m) : ImportedModel{};
}

TrainerConfig trainer_config(const std::string& name) {
  TrainerConfig cfg;
  cfg.lr = 1e-3;
  const nlohmann::json pad = read_meta(name)["config"]["pad_token_id"];
  if (pad.is_number_integer()) cfg.graph.padding_idx = pad.get<int64_t>();
  disable_fusion(cfg.graph, 0);
  return cfg;
}

class FuseGeluFixture : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(FuseGeluFixture, OneGeluPerLayerSameOutputsAndGradients) {
  const FixtureCase& c = GetParam();
  ImportedModel plain = import_fixture(c.name);
  ImportedModel fused = import_fixture(c.name);
  ASSERT_FALSE(plain.graph.nodes.empty());
  const int layers = plain.graph.num_layers;
  ASSERT_EQ(layers, 2);
  const int gelus_before = count_ops(plain.graph, "Gelu");

  int n = 0;
  Status st = fuse_gelu(fused.graph, &n);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(n, c.chains);
  expect_well_formed(fused.graph);
  EXPECT_EQ(count_ops(fused.graph, "Tanh"), 0);
  EXPECT_EQ(count_ops(fused.graph, "Erf"), 0);
  // One GELU per layer (and the head's), each keeping the placement of the chain it replaced.
  std::multiset<int> layer_of;
  int head = 0;
  for (const Node& node : fused.graph.nodes) {
    if (node.op_type != "Gelu") continue;
    EXPECT_EQ(node.domain, "");
    EXPECT_GE(node.opset, 20) << node.name;
    EXPECT_EQ(node.attrs.get_string("approximate", "none"), c.approximate) << node.name;
    if (node.place.kind == Placement::Kind::kLayer) layer_of.insert(node.place.layer);
    if (node.place.kind == Placement::Kind::kHead) ++head;
  }
  if (c.chains > 0 || gelus_before > 0) {
    for (int l = 0; l < layers; ++l) EXPECT_EQ(layer_of.count(l), 1u) << "layer " << l;
    EXPECT_EQ(head, c.head_gelu ? 1 : 0);
    EXPECT_EQ(count_ops(fused.graph, "Gelu"), layers + (c.head_gelu ? 1 : 0));
  }
  // Fused only the chains: everything else is left as it was.
  const int removed_per_chain = c.approximate == "tanh" ? 7 : 4;
  EXPECT_EQ(fused.graph.nodes.size(), plain.graph.nodes.size() - static_cast<size_t>(removed_per_chain * c.chains));
  // A second run finds nothing more.
  int again = 0;
  ASSERT_TRUE(fuse_gelu(fused.graph, &again).is_ok());
  EXPECT_EQ(again, 0);

  auto ref = read_safetensors(fixture_dir(c.name) + "/reference.safetensors");
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  const TensorMap batch = {{"input_ids", ref->at("input_ids")}, {"labels", ref->at("labels")}};

  // Forward outputs (logits, or gpt2_loss's loss).
  std::vector<Tensor> a = run_forward(plain.graph, batch);
  std::vector<Tensor> b = run_forward(fused.graph, batch);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LE(max_rel_diff(b[i], a[i]), 1e-5) << "output " << i;

  // The training graphs: loss and every parameter's gradient.
  auto backend = make_cpu_backend();
  auto t_plain = Trainer::create(std::move(plain.graph), trainer_config(c.name), *backend);
  ASSERT_TRUE(t_plain.has_value()) << t_plain.status().message();
  auto t_fused = Trainer::create(std::move(fused.graph), trainer_config(c.name), *backend);
  ASSERT_TRUE(t_fused.has_value()) << t_fused.status().message();
  // The baseline kept its chains; the fused graph differentiates Gelu with the fused GeluGrad.
  const Graph& tg_plain = (*t_plain)->training_graph().graph;
  const Graph& tg_fused = (*t_fused)->training_graph().graph;
  EXPECT_EQ(count_ops(tg_plain, "Tanh") + count_ops(tg_plain, "Erf"), c.chains);
  EXPECT_EQ(count_ops(tg_fused, "GeluGrad"), count_ops(tg_fused, "Gelu"));
  EXPECT_LT(tg_fused.nodes.size(), tg_plain.nodes.size() + (c.chains == 0 ? 1 : 0));

  const double loss_fused = testing::expect_same_step(**t_plain, **t_fused, batch, c.name);
  EXPECT_NEAR(loss_fused, ref->at("loss").scalar_f64(0), 1e-5 * std::fabs(ref->at("loss").scalar_f64(0)));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FuseGeluFixture, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<FixtureCase>& i) { return i.param.name; });

// The zoo writes Gelu nodes itself (gpt: tanh, bert: erf): nothing to fuse, and the pass leaves the graph alone.
TEST(FuseGeluZoo, ZooGraphsAlreadyHoldGelu) {
  for (const char* size : {"gpt-tiny", "bert-tiny"}) {
    SCOPED_TRACE(size);
    auto cfg = zoo_config("", size);
    ASSERT_TRUE(cfg.has_value());
    auto m = build_and_import(*cfg, 2, 16, WeightInit::kHuggingFace, 1);
    ASSERT_TRUE(m.has_value()) << m.status().message();
    const size_t nodes = m->graph.nodes.size(), values = m->graph.values.size();
    const int layers = m->graph.num_layers;
    int n = 0;
    ASSERT_TRUE(fuse_gelu(m->graph, &n).is_ok());
    EXPECT_EQ(n, 0);
    EXPECT_EQ(m->graph.nodes.size(), nodes);
    EXPECT_EQ(m->graph.values.size(), values);
    EXPECT_EQ(count_ops(m->graph, "Gelu"), layers + (std::string(size) == "bert-tiny" ? 1 : 0));
  }
}

// ---- hand-built chains ---------------------------------------------------------------------------------------------

const double kSqrt2OverPi = std::sqrt(2.0 / M_PI);

// A graph whose GELU input x is a parameter [2, 3, 8] (so it has a gradient), built node by node.
struct ChainBuilder {
  Graph g;
  ValueId x;
  int opset;
  explicit ChainBuilder(int opset_version = 20) : opset(opset_version) {
    g.opsets[""] = opset;
    Tensor t(DType::kFloat32, {2, 3, 8});
    std::mt19937 rng(7);
    std::normal_distribution<float> d(0.0f, 1.5f);
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = d(rng);
    x = g.add_initializer("x", t, ValueKind::kParameter);
  }
  // A float32 constant: rank 0 (scalar), 1 ([1]) or 3 ([1, 1, 1]).
  ValueId c(double v, int rank = 0) {
    Shape s(static_cast<size_t>(rank), 1);
    Tensor t(DType::kFloat32, s);
    t.data_as<float>()[0] = static_cast<float>(v);
    return g.add_initializer(g.unique_name("const"), t, ValueKind::kConstant);
  }
  ValueId op(const std::string& type, std::vector<ValueId> in, int layer = 3) {
    Node n;
    n.op_type = type;
    n.opset = opset;
    n.inputs = std::move(in);
    n.place.kind = Placement::Kind::kLayer;
    n.place.layer = layer;
    auto out = g.add_node(std::move(n));
    EXPECT_TRUE(out.has_value()) << out.status().message();
    return out ? (*out)[0] : kNoValue;
  }
  // Finishes with a scalar loss (mean of the last value) and marks the given values as graph outputs.
  void finish(ValueId y, std::vector<ValueId> also_outputs = {}) {
    Node n;
    n.op_type = "ReduceMean";
    n.opset = opset;
    n.attrs.set_int("keepdims", 0);
    n.inputs = {y};
    n.place.kind = Placement::Kind::kHead;
    auto out = g.add_node(std::move(n), {"loss"});
    ASSERT_TRUE(out.has_value()) << out.status().message();
    g.outputs = {(*out)[0], y};
    for (ValueId v : also_outputs) g.outputs.push_back(v);
  }
};

// HF gelu_new through TorchScript: constants first, 1-element tensors.
ValueId tanh_chain(ChainBuilder& b, double c3) {
  ValueId half_x = b.op("Mul", {b.c(0.5, 1), b.x});
  ValueId cube = b.op("Pow", {b.x, b.c(3.0, 1)});
  ValueId inner = b.op("Add", {b.x, b.op("Mul", {b.c(c3, 1), cube})});
  ValueId t = b.op("Tanh", {b.op("Mul", {b.c(kSqrt2OverPi, 1), inner})});
  return b.op("Mul", {half_x, b.op("Add", {b.c(1.0, 1), t})}, 5);  // final node in another layer: its place is kept
}

ValueId tanh_torchscript(ChainBuilder& b) { return tanh_chain(b, 0.044715); }

// x*x*x, k x + k c x^3 distributed, Div by 1/k, the 0.5 applied last as a Div by 2.
ValueId tanh_cubed_div(ChainBuilder& b) {
  ValueId cube = b.op("Mul", {b.op("Mul", {b.x, b.x}), b.x});
  ValueId inner = b.op("Add", {b.op("Mul", {cube, b.c(0.044715, 3)}), b.x});
  ValueId t = b.op("Tanh", {b.op("Div", {inner, b.c(1.0 / kSqrt2OverPi)})});
  ValueId y = b.op("Mul", {b.x, b.op("Add", {t, b.c(1.0)})});
  return b.op("Div", {y, b.c(2.0)}, 5);
}

// BERT through TorchScript: Div(x, sqrt 2) Erf Add(1) Mul(x, .) Mul(., 0.5).
ValueId erf_torchscript(ChainBuilder& b) {
  ValueId e = b.op("Erf", {b.op("Div", {b.x, b.c(1.41421356)})});
  ValueId y = b.op("Mul", {b.x, b.op("Add", {e, b.c(1.0)})});
  return b.op("Mul", {y, b.c(0.5)}, 5);
}

// 0.5 * x * (1 + erf(x * 1/sqrt 2)), the half applied to x first.
ValueId erf_half_first(ChainBuilder& b) {
  ValueId half_x = b.op("Mul", {b.x, b.c(0.5, 3)});
  ValueId e = b.op("Erf", {b.op("Mul", {b.c(0.70710678), b.x})});
  return b.op("Mul", {b.op("Add", {b.c(1.0), e}), half_x}, 5);
}

struct ChainCase {
  const char* name;
  ValueId (*build)(ChainBuilder&);
  const char* approximate;
  int opset;
};

class FuseGeluChain : public ::testing::TestWithParam<ChainCase> {};

TEST_P(FuseGeluChain, FusedWithSameValuesAndGradients) {
  const ChainCase& c = GetParam();
  ChainBuilder plain(c.opset), fused(c.opset);
  ValueId y_plain = c.build(plain);
  ValueId y_fused = c.build(fused);
  plain.finish(y_plain);
  fused.finish(y_fused);
  const std::string y_name = fused.g.value(y_fused).name;
  int n = 0;
  Status st = fuse_gelu(fused.g, &n);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(n, 1);
  expect_well_formed(fused.g);
  // Gelu(x) -> y (the same value, by name), then the loss.
  ASSERT_EQ(fused.g.nodes.size(), 2u);
  const Node& gelu = fused.g.nodes[0];
  EXPECT_EQ(gelu.op_type, "Gelu");
  EXPECT_EQ(gelu.domain, "");
  EXPECT_EQ(gelu.opset, std::max(20, c.opset));
  EXPECT_EQ(gelu.attrs.get_string("approximate", "none"), c.approximate);
  EXPECT_EQ(gelu.place.kind, Placement::Kind::kLayer);
  EXPECT_EQ(gelu.place.layer, 5);
  ASSERT_EQ(gelu.inputs.size(), 1u);
  EXPECT_EQ(fused.g.value(gelu.inputs[0]).name, "x");
  EXPECT_EQ(fused.g.value(gelu.outputs[0]).name, y_name);
  EXPECT_EQ(fused.g.opsets.at(""), c.opset);  // the graph's own opset is left alone
  // The chain's constants went with it: only x remains besides the two activations.
  EXPECT_EQ(fused.g.values.size(), 3u);

  std::vector<Tensor> a = run_forward(plain.g, {});
  std::vector<Tensor> b = run_forward(fused.g, {});
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_LE(max_rel_diff(b[1], a[1]), 1e-6);
  EXPECT_LE(max_rel_diff(b[0], a[0]), 1e-6);

  TrainerConfig cfg;
  cfg.graph.loss_output = "loss";
  disable_fusion(cfg.graph, 0);
  auto backend = make_cpu_backend();
  auto t_plain = Trainer::create(std::move(plain.g), cfg, *backend);
  ASSERT_TRUE(t_plain.has_value()) << t_plain.status().message();
  auto t_fused = Trainer::create(std::move(fused.g), cfg, *backend);
  ASSERT_TRUE(t_fused.has_value()) << t_fused.status().message();
  EXPECT_EQ(count_ops((*t_fused)->training_graph().graph, "GeluGrad"), 1);
  double l0 = 0, l1 = 0;
  auto g0 = (*t_plain)->compute_gradients({}, &l0);
  ASSERT_TRUE(g0.has_value()) << g0.status().message();
  auto g1 = (*t_fused)->compute_gradients({}, &l1);
  ASSERT_TRUE(g1.has_value()) << g1.status().message();
  EXPECT_NEAR(l1, l0, 1e-6 * std::fabs(l0));
  ASSERT_TRUE(g0->count("x") && g1->count("x"));
  EXPECT_LE(rel_l2(g1->at("x"), g0->at("x")), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Chains, FuseGeluChain,
    ::testing::Values(ChainCase{"tanh_torchscript", tanh_torchscript, "tanh", 20},
                      ChainCase{"tanh_cubed_div", tanh_cubed_div, "tanh", 20},
                      ChainCase{"erf_torchscript_opset14", erf_torchscript, "none", 14},
                      ChainCase{"erf_half_first_opset13", erf_half_first, "none", 13},
                      ChainCase{"tanh_opset17", tanh_torchscript, "tanh", 17}),
    [](const ::testing::TestParamInfo<ChainCase>& i) { return std::string(i.param.name); });

TEST(FuseGeluChain, WrongConstantIsNotFused) {
  ChainBuilder b;
  ValueId y = tanh_chain(b, 0.04);
  b.finish(y);
  const size_t nodes = b.g.nodes.size();
  int n = 0;
  ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
  EXPECT_EQ(n, 0);
  EXPECT_EQ(b.g.nodes.size(), nodes);
  EXPECT_EQ(count_ops(b.g, "Gelu"), 0);
}

TEST(FuseGeluChain, OtherWrongConstantsAreNotFused) {
  // sqrt(2/pi) off in the 5th digit; 1 + erf replaced by 1.01 + erf; erf of x / 1.5.
  {
    ChainBuilder b;
    ValueId half_x = b.op("Mul", {b.x, b.c(0.5)});
    ValueId cube = b.op("Pow", {b.x, b.c(3.0)});
    ValueId inner = b.op("Add", {b.x, b.op("Mul", {cube, b.c(0.044715)})});
    ValueId t = b.op("Tanh", {b.op("Mul", {inner, b.c(0.79790)})});
    b.finish(b.op("Mul", {half_x, b.op("Add", {t, b.c(1.0)})}));
    int n = 0;
    ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
    EXPECT_EQ(n, 0);
  }
  {
    ChainBuilder b;
    ValueId e = b.op("Erf", {b.op("Div", {b.x, b.c(1.41421356)})});
    b.finish(b.op("Mul", {b.op("Mul", {b.x, b.op("Add", {e, b.c(1.01)})}), b.c(0.5)}));
    int n = 0;
    ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
    EXPECT_EQ(n, 0);
  }
  {
    ChainBuilder b;
    ValueId e = b.op("Erf", {b.op("Div", {b.x, b.c(1.5)})});
    b.finish(b.op("Mul", {b.op("Mul", {b.x, b.op("Add", {e, b.c(1.0)})}), b.c(0.5)}));
    int n = 0;
    ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
    EXPECT_EQ(n, 0);
  }
}

TEST(FuseGeluChain, IntermediateGraphOutputIsNotFused) {
  // The Tanh output, then the 1 + erf value, are graph outputs: the chain must stay.
  {
    ChainBuilder b;
    ValueId half_x = b.op("Mul", {b.x, b.c(0.5)});
    ValueId cube = b.op("Pow", {b.x, b.c(3.0)});
    ValueId inner = b.op("Add", {b.x, b.op("Mul", {cube, b.c(0.044715)})});
    ValueId t = b.op("Tanh", {b.op("Mul", {inner, b.c(kSqrt2OverPi)})});
    b.finish(b.op("Mul", {half_x, b.op("Add", {t, b.c(1.0)})}), {t});
    const size_t nodes = b.g.nodes.size();
    int n = 0;
    ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
    EXPECT_EQ(n, 0);
    EXPECT_EQ(b.g.nodes.size(), nodes);
  }
  {
    ChainBuilder b;
    ValueId e = b.op("Erf", {b.op("Div", {b.x, b.c(1.41421356)})});
    ValueId s = b.op("Add", {e, b.c(1.0)});
    b.finish(b.op("Mul", {b.op("Mul", {b.x, s}), b.c(0.5)}), {s});
    int n = 0;
    ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
    EXPECT_EQ(n, 0);
  }
}

TEST(FuseGeluChain, IntermediateWithAnotherConsumerIsNotFused) {
  // 0.5 x is also read by a node outside the chain.
  ChainBuilder b;
  ValueId half_x = b.op("Mul", {b.x, b.c(0.5)});
  ValueId e = b.op("Erf", {b.op("Mul", {b.x, b.c(0.70710678)})});
  ValueId y = b.op("Mul", {half_x, b.op("Add", {e, b.c(1.0)})});
  ValueId z = b.op("Add", {y, b.op("Neg", {half_x})});
  b.finish(z);
  int n = 0;
  ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
  EXPECT_EQ(n, 0);
  EXPECT_EQ(count_ops(b.g, "Erf"), 1);
}

TEST(FuseGeluChain, FinalValueMayHaveSeveralConsumers) {
  // The chain's output is read twice (BERT's head: LayerNorm's ReduceMean and Sub); the chain itself is private.
  ChainBuilder b;
  ValueId y = erf_torchscript(b);
  ValueId z = b.op("Add", {y, b.op("Neg", {y})});
  b.finish(b.op("Mul", {z, y}));
  int n = 0;
  ASSERT_TRUE(fuse_gelu(b.g, &n).is_ok());
  EXPECT_EQ(n, 1);
  expect_well_formed(b.g);
}

}  // namespace
}  // namespace gv
