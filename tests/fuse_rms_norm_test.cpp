// fuse_rms_norm (runtime/fuse_rms_norm.cpp): the RMSNorm chains of real Llama exports become one RMSNormalization
// node per norm, with the same forward outputs, loss (against PyTorch's, in the fixture) and gradients within float32
// rounding; chains that are not exactly an RMSNorm over the last axis, or whose intermediates are read elsewhere, stay.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "runtime/fusion.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/hf_fixtures.h"
#include "tests/op_test_util.h"

namespace gv {
namespace {

using testing::count_ops;
using testing::expect_well_formed;
using testing::fixture_dir;
using testing::max_rel_diff;
using testing::run_forward;

// The forward outputs, loss and every gradient of `plain` and of `fused` (the same graph after the pass) agree within
// float32 rounding; training graphs built without any further fusion.
void expect_same_model(Graph plain, Graph fused, const TensorMap& batch, double ref_loss) {
  std::vector<Tensor> a = run_forward(plain, batch);
  std::vector<Tensor> b = run_forward(fused, batch);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LE(max_rel_diff(b[i], a[i]), 1e-5) << "output " << i;
  TrainerConfig cfg;
  cfg.graph.fuse_ops = false;
  auto backend = make_cpu_backend();
  auto t_plain = Trainer::create(std::move(plain), cfg, *backend);
  ASSERT_TRUE(t_plain.has_value()) << t_plain.status().message();
  auto t_fused = Trainer::create(std::move(fused), cfg, *backend);
  ASSERT_TRUE(t_fused.has_value()) << t_fused.status().message();
  EXPECT_GT(count_ops((*t_fused)->training_graph().graph, "RMSNormalizationGrad"), 0);
  const double loss_fused = testing::expect_same_step(**t_plain, **t_fused, batch, "fused RMSNorm");
  if (ref_loss == ref_loss) EXPECT_NEAR(loss_fused, ref_loss, 1e-5 * std::fabs(ref_loss));
}

// Runs the pass; checks the count, the graph's shape and that a second run finds nothing.
void fuse_and_check(Graph& g, int want) {
  const size_t nodes = g.nodes.size();
  int n = 0;
  ASSERT_TRUE(fuse_rms_norm(g, &n).is_ok());
  EXPECT_EQ(n, want);
  expect_well_formed(g);
  EXPECT_EQ(count_ops(g, "RMSNormalization"), want);
  EXPECT_EQ(count_ops(g, "ReduceMean"), 0);
  EXPECT_EQ(count_ops(g, "Sqrt"), 0);
  EXPECT_EQ(nodes - g.nodes.size(), static_cast<size_t>(6 * want));  // Pow ReduceMean Add Sqrt Reciprocal Mul
  for (const Node& node : g.nodes) {
    if (node.op_type != "RMSNormalization") continue;
    EXPECT_GE(node.opset, 23) << node.name;
    EXPECT_EQ(node.attrs.get_int("axis", 0), -1);
    EXPECT_FLOAT_EQ(static_cast<float>(node.attrs.get_double("epsilon", 0.0)), 1e-6f);
  }
  int again = 0;
  ASSERT_TRUE(fuse_rms_norm(g, &again).is_ok());
  EXPECT_EQ(again, 0);
}

// The HF fixture (torch.onnx dynamo export of LlamaForCausalLM, 2 layers): two norms per layer and the final one.
TEST(FuseRmsNorm, LlamaFixtureSameOutputsLossAndGradients) {
  ImportOptions io;
  io.batch = 2;
  io.seq = 32;
  auto plain = import_onnx(fixture_dir("llama") + "/model.onnx", io);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  Graph fused = plain->graph;
  fuse_and_check(fused, 5);
  auto ref = read_safetensors(fixture_dir("llama") + "/reference.safetensors");
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  const TensorMap batch = {{"input_ids", ref->at("input_ids")}, {"labels", ref->at("labels")}};
  expect_same_model(plain->graph, fused, batch, ref->at("loss").scalar_f64(0));
}

// The zoo's llama writes the chain as HF's exporters do.
TEST(FuseRmsNorm, ZooLlama) {
  auto cfg = zoo_config("", "llama-tiny");
  ASSERT_TRUE(cfg.has_value()) << cfg.status().message();
  auto im = build_and_import(*cfg, 2, 16, WeightInit::kHuggingFace, 3);
  ASSERT_TRUE(im.has_value()) << im.status().message();
  Graph fused = im->graph;
  fuse_and_check(fused, 2 * static_cast<int>(cfg->num_layers) + 1);
  expect_same_model(im->graph, fused, testing::random_lm_batch(cfg->vocab_size, 2, 16, 7), std::nan(""));
}

// ---- hand-built chains -------------------------------------------------------------------------------------------

enum class Form { kReciprocal, kDiv, kSquareByMul, kCastBeforeWeight };
struct Variant {
  Form form = Form::kReciprocal;
  int64_t axis = -1;           // the ReduceMean axis
  bool weight_first = true;    // Mul(w, n) or Mul(n, w)
  bool var_is_output = false;  // the statistic read elsewhere
};

// y = RMSNorm(x) * w over x [2, 3, 8] as the variant writes it; x a graph input, w a parameter.
Graph chain(const Variant& v) {
  testing::ChainBuilder b;
  Graph& g = b.g;
  const ValueId x = g.add_input("x", DType::kFloat32, {2, 3, 8});
  const ValueId w = g.add_initializer("w", testing::randn_f32({8}, 5), ValueKind::kParameter);
  auto scalar = [&](const std::string& name, float c) { return b.scalar(name, c); };
  auto node = [&](const std::string& op, std::vector<ValueId> in, Attributes a = {}) {
    return b.node(op, std::move(in), std::move(a));
  };
  const ValueId sq = v.form == Form::kSquareByMul ? node("Mul", {x, x}) : node("Pow", {x, scalar("two", 2.0f)});
  Attributes ra;
  ra.set_ints("axes", {v.axis});
  ra.set_int("keepdims", 1);
  const ValueId var = node("ReduceMean", {sq}, ra);
  const ValueId s = node("Sqrt", {node("Add", {var, scalar("eps", 1e-6f)})});
  ValueId n = v.form == Form::kDiv ? node("Div", {x, s}) : node("Mul", {x, node("Reciprocal", {s})});
  if (v.form == Form::kCastBeforeWeight) {
    Attributes ca;
    ca.set_int("to", static_cast<int64_t>(DType::kFloat32));
    n = node("Cast", {n}, ca);
  }
  const ValueId y = v.weight_first ? node("Mul", {w, n}) : node("Mul", {n, w});
  g.outputs = {y};
  if (v.var_is_output) g.outputs.push_back(var);
  return g;
}

TEST(FuseRmsNorm, ChainFormsFuseWithTheSameValues) {
  const TensorMap feed = {{"x", testing::randn_f32({2, 3, 8}, 9)}};
  for (Form form : {Form::kReciprocal, Form::kDiv, Form::kSquareByMul, Form::kCastBeforeWeight}) {
    for (bool weight_first : {true, false}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(form)) + (weight_first ? " Mul(w, n)" : " Mul(n, w)"));
      Variant v;
      v.form = form;
      v.weight_first = weight_first;
      Graph plain = chain(v), fused = chain(v);
      int n = 0;
      ASSERT_TRUE(fuse_rms_norm(fused, &n).is_ok());
      EXPECT_EQ(n, 1);
      expect_well_formed(fused);
      ASSERT_EQ(fused.nodes.size(), 1u);
      EXPECT_EQ(fused.nodes[0].op_type, "RMSNormalization");
      const std::vector<Tensor> a = run_forward(plain, feed), b = run_forward(fused, feed);
      ASSERT_EQ(a.size(), 1u);
      ASSERT_EQ(b.size(), 1u);
      EXPECT_LE(max_rel_diff(b[0], a[0]), 1e-6);
    }
  }
}

TEST(FuseRmsNorm, OtherChainsStay) {
  for (int which = 0; which < 2; ++which) {
    SCOPED_TRACE(which == 0 ? "reduced over axis 1" : "the statistic is a graph output");
    Variant v;
    if (which == 0) v.axis = 1;
    if (which == 1) v.var_is_output = true;
    Graph g = chain(v);
    const size_t nodes = g.nodes.size();
    int n = 0;
    ASSERT_TRUE(fuse_rms_norm(g, &n).is_ok());
    EXPECT_EQ(n, 0);
    EXPECT_EQ(g.nodes.size(), nodes);
  }
}

}  // namespace
}  // namespace gv
