// Layer detection: a synthetic pre-norm stack (names and structure only) and the five HF fixtures (2 layers each,
// found from names and, with names ignored, from structure alone).
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "importer/importer_test_ops.h"
#include "importer/layer_detection.h"
#include "importer/onnx_importer.h"

namespace gv {
namespace {

using testing::kTestDomain;

std::string place_str(const Placement& p) {
  return p.kind == Placement::Kind::kLayer ? "layer" + std::to_string(p.layer) : placement_kind_name(p.kind);
}

// x -> embed -> L x [a = scale(e); b = a @ fc1; c = b @ fc2; e = c + e] -> scale -> @ head.
struct Stack {
  Graph g;
  std::map<std::string, std::string> expected;  // node name -> place
};

Stack make_stack(int layers, bool names) {
  testing::register_importer_test_ops();
  Stack s;
  Graph& g = s.g;
  auto param = [&](const std::string& name, Shape shape, int i) {
    Tensor t(DType::kFloat32, shape);
    for (int64_t k = 0; k < t.numel(); ++k) t.data_as<float>()[k] = 0.01f * static_cast<float>(k + i);
    return g.add_initializer(names ? name : "p" + std::to_string(i), t, ValueKind::kParameter);
  };
  int pid = 0;
  auto node = [&](const std::string& name, const std::string& op, std::vector<ValueId> in, const std::string& place,
                  float alpha = 1.0f) {
    Node n;
    n.name = names ? name : "n" + std::to_string(g.nodes.size());
    n.op_type = op;
    n.domain = kTestDomain;
    n.opset = 1;
    n.inputs = std::move(in);
    if (op == "TestScale") n.attrs.set_float("alpha", alpha);
    s.expected[n.name] = place;
    auto outs = g.add_node(std::move(n));
    EXPECT_TRUE(outs) << outs.status().message();
    return (*outs)[0];
  };
  ValueId x = g.add_input("x", DType::kFloat32, {2, 4});
  ValueId e = node("embed", "TestAdd", {x, param("embed.weight", {2, 4}, pid++)}, "embedding");
  for (int i = 0; i < layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    const std::string place = "layer" + std::to_string(i);
    ValueId a = node(p + "norm", "TestScale", {e}, place, 0.5f);
    ValueId b = node(p + "fc1", "TestLinear", {a, param(p + "fc1.weight", {4, 8}, pid++)}, place);
    ValueId c = node(p + "fc2", "TestLinear", {b, param(p + "fc2.weight", {8, 4}, pid++)}, place);
    e = node(p + "residual", "TestAdd", {c, e}, place);
  }
  ValueId n = node("final_norm", "TestScale", {e}, "head", 2.0f);
  ValueId y = node("lm_head", "TestLinear", {n, param("lm_head.weight", {4, 6}, pid++)}, "head");
  g.outputs.push_back(y);
  return s;
}

void expect_places(const Stack& s) {
  for (const Node& n : s.g.nodes) EXPECT_EQ(place_str(n.place), s.expected.at(n.name)) << n.name;
}

TEST(LayerDetection, NamesFromParametersAndNodes) {
  int key_index = -1;
  std::string key;
  ASSERT_TRUE(layer_index_from_name("transformer.h.11.attn.c_attn.weight", &key, &key_index));
  EXPECT_EQ(key, "transformer.h");
  EXPECT_EQ(key_index, 11);
  ASSERT_TRUE(layer_index_from_name("/bert/encoder/layer.1/attention/self/query/MatMul", &key, &key_index));
  EXPECT_EQ(key, "encoder.layer");
  EXPECT_EQ(key_index, 1);
  ASSERT_TRUE(layer_index_from_name("model.layers.3.mlp.up_proj.weight", &key, &key_index));
  EXPECT_EQ(key_index, 3);
  ASSERT_TRUE(layer_index_from_name("blocks.7.ln", &key, &key_index));
  EXPECT_EQ(key_index, 7);
  EXPECT_FALSE(layer_index_from_name("node_layer_norm_4", &key, &key_index));
  EXPECT_FALSE(layer_index_from_name("val_12", &key, &key_index));
  EXPECT_FALSE(layer_index_from_name("transformer.ln_f.weight", &key, &key_index));
}

TEST(LayerDetection, SyntheticStackFromNames) {
  Stack s = make_stack(3, true);
  detect_layers(s.g);
  EXPECT_EQ(s.g.num_layers, 3);
  expect_places(s);
}

TEST(LayerDetection, SyntheticStackFromStructure) {
  Stack s = make_stack(3, false);
  detect_layers(s.g);
  EXPECT_EQ(s.g.num_layers, 3);
  expect_places(s);
  // With names present but ignored: the same answer.
  Stack named = make_stack(4, true);
  LayerDetectionOptions opt;
  opt.use_names = false;
  detect_layers(named.g, opt);
  EXPECT_EQ(named.g.num_layers, 4);
  expect_places(named);
}

TEST(LayerDetection, NoRepetitionMeansNoLayers) {
  Stack s = make_stack(1, false);
  detect_layers(s.g);
  EXPECT_EQ(s.g.num_layers, 0);
  for (const Node& n : s.g.nodes) EXPECT_EQ(n.place.kind, Placement::Kind::kUnknown);
}

// ---- fixtures ----

const std::vector<std::string> kFixtures = {"gpt2", "gpt2_loss", "llama", "bert", "bert_opset14"};

class LayerDetectionFixture : public ::testing::TestWithParam<std::string> {};

// Layer i's ops, as a sorted multiset.
std::multiset<std::string> layer_ops(const Graph& g, int layer) {
  std::multiset<std::string> ops;
  for (const Node& n : g.nodes) {
    if (n.place.kind == Placement::Kind::kLayer && n.place.layer == layer) ops.insert(n.op_type);
  }
  return ops;
}

void check_fixture_places(const Graph& g, const std::string& what) {
  ASSERT_EQ(g.num_layers, 2) << what;
  // Every node is placed, the places never go backwards in graph order, the layers have the same ops, and the
  // embedding and head are not empty.
  int last = -2;
  std::map<int, int> count;
  for (const Node& n : g.nodes) {
    ASSERT_NE(n.place.kind, Placement::Kind::kUnknown) << what << ": " << n.name;
    int ord = n.place.kind == Placement::Kind::kEmbedding ? -1 : n.place.kind == Placement::Kind::kHead ? 2 : n.place.layer;
    EXPECT_GE(ord, last) << what << ": node " << n.name << " (" << n.op_type << ") is " << place_str(n.place)
                         << " after a later place";
    last = std::max(last, ord);
    ++count[ord];
  }
  EXPECT_GT(count[-1], 0) << what << ": empty embedding";
  EXPECT_GT(count[2], 0) << what << ": empty head";
  EXPECT_GT(count[0], 10) << what;
  EXPECT_EQ(layer_ops(g, 0), layer_ops(g, 1)) << what << ": layers 0 and 1 differ";
}

TEST_P(LayerDetectionFixture, TwoLayersFromNamesAndFromStructure) {
  const std::string name = GetParam();
  ImportOptions opt;
  opt.batch = 2;
  opt.seq = 32;
  auto model = import_onnx(std::string(GV_FIXTURES_DIR) + "/" + name + "/model.onnx", opt);
  ASSERT_TRUE(model) << model.status().message();
  Graph& g = model->graph;
  check_fixture_places(g, name + " (names)");
  // Parameters named for layer i are read by layer i's nodes.
  for (const Node& n : g.nodes) {
    for (ValueId in : n.inputs) {
      if (in == kNoValue || g.value(in).kind != ValueKind::kParameter) continue;
      std::string key;
      int idx = -1;
      if (layer_index_from_name(g.value(in).name, &key, &idx)) {
        EXPECT_EQ(place_str(n.place), "layer" + std::to_string(idx)) << name << ": " << n.name << " reads "
                                                                      << g.value(in).name;
      }
    }
  }
  std::vector<Placement> by_names;
  for (const Node& n : g.nodes) by_names.push_back(n.place);

  // Structure only: rename every parameter and node so that names carry nothing.
  for (ValueId v = 0; v < static_cast<ValueId>(g.values.size()); ++v) g.values[v].name = "value_" + std::to_string(v);
  for (size_t i = 0; i < g.nodes.size(); ++i) g.nodes[i].name = "node_" + std::to_string(i);
  g.reindex();
  LayerDetectionOptions structure_only;
  structure_only.use_names = false;
  detect_layers(g, structure_only);
  check_fixture_places(g, name + " (structure)");
  size_t same = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    same += g.nodes[i].place.kind == by_names[i].kind && g.nodes[i].place.layer == by_names[i].layer;
  }
  EXPECT_GE(same, g.nodes.size() * 95 / 100) << name << ": structure and names disagree on " << g.nodes.size() - same
                                           << " of " << g.nodes.size() << " nodes";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LayerDetectionFixture, ::testing::ValuesIn(kFixtures),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace gv
