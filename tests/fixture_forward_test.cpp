// The five HF fixtures (../shared/fixtures/hf): each imports at batch 2 x seq 32, runs on the CPU and reproduces
// PyTorch's logits (gpt2_loss: its in-graph loss) to a max relative error of 1e-5; each has 2 layers, and its
// parameters are exactly the HF parameters that meta.json maps (a tied weight's second copy reads the first).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "importer/onnx_importer.h"
#include "runtime/executor.h"
#include "runtime/safetensors.h"
#include "tests/hf_fixtures.h"

namespace gv {
namespace {

const std::vector<std::string>& kFixtures = testing::kHfFixtures;

using testing::fixture_dir;
using testing::read_meta;

Expected<ImportedModel> import_fixture(const std::string& name) {
  nlohmann::json meta = read_meta(name);
  ImportOptions opt;
  opt.batch = meta["batch"].get<int64_t>();
  opt.seq = meta["seq"].get<int64_t>();
  return import_onnx(fixture_dir(name) + "/model.onnx", opt);
}

// Initializers that are trainable although meta.json maps them to no HF name: gpt2_loss's static export folded the
// position embedding's used rows into `embedding_1`.
const std::set<std::string> kTrainableUnmapped = {"gpt2_loss/embedding_1"};

class FixtureForward : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureForward, MatchesPyTorch) {
  const std::string name = GetParam();
  auto model = import_fixture(name);
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  auto ref = read_safetensors(fixture_dir(name) + "/reference.safetensors");
  ASSERT_TRUE(ref) << ref.status().message();

  auto backend = make_cpu_backend();
  auto ex = Executor::create(g, *backend);
  ASSERT_TRUE(ex) << ex.status().message();
  std::map<std::string, Tensor> feeds;
  for (ValueId in : g.inputs) {
    const std::string& n = g.value(in).name;
    ASSERT_TRUE(ref->count(n)) << name << ": no reference tensor for graph input '" << n << "'";
    feeds[n] = ref->at(n);
  }
  ASSERT_TRUE((*ex)->set_inputs(feeds).is_ok());
  Status st = (*ex)->run();
  ASSERT_TRUE(st.is_ok()) << st.message();

  const std::string out_name = name == "gpt2_loss" ? "loss" : "logits";
  ValueId out = kNoValue;
  for (ValueId o : g.outputs) {
    if (g.value(o).name == out_name) out = o;
  }
  ASSERT_NE(out, kNoValue) << name << ": no graph output '" << out_name << "'";
  auto got = (*ex)->fetch(out);
  ASSERT_TRUE(got) << got.status().message();
  const Tensor& want = ref->at(out_name);
  ASSERT_EQ(got->numel(), want.numel()) << name << ": " << shape_str(got->shape()) << " vs " << shape_str(want.shape());
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double a = got->scalar_f64(i), b = want.scalar_f64(i);
    ASSERT_TRUE(std::isfinite(a)) << name << ": element " << i << " is " << a;
    max_diff = std::max(max_diff, std::fabs(a - b));
    max_ref = std::max(max_ref, std::fabs(b));
  }
  const double rel = max_diff / std::max(max_ref, 1e-30);
  std::printf("%s: %s max relative error %.3g\n", name.c_str(), out_name.c_str(), rel);
  EXPECT_LE(rel, 1e-5) << name << ": " << out_name << " max |a-b| = " << max_diff << ", max |b| = " << max_ref;
}

TEST_P(FixtureForward, LayersAndParameters) {
  const std::string name = GetParam();
  auto model = import_fixture(name);
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  EXPECT_EQ(g.num_layers, 2) << name;

  nlohmann::json meta = read_meta(name);
  auto ref = read_safetensors(fixture_dir(name) + "/reference.safetensors");
  ASSERT_TRUE(ref) << ref.status().message();
  // Copies of tied weights read their parameter (bert_opset14's transposed word embedding): they must be copies of
  // the same HF parameter, and are not parameters themselves.
  for (const auto& [copy, tie] : model->tied_parameters) {
    ASSERT_TRUE(meta["initializers"].contains(copy)) << name << ": tied '" << copy << "' is not an HF parameter";
    ASSERT_TRUE(meta["initializers"].contains(tie.parameter)) << name << ": " << tie.parameter;
    EXPECT_EQ(meta["initializers"][copy]["hf"], meta["initializers"][tie.parameter]["hf"]) << name << ": " << copy;
    EXPECT_EQ(meta["initializers"][copy]["transposed"].get<bool>(),
              meta["initializers"][tie.parameter]["transposed"].get<bool>() != tie.transposed)
        << name << ": " << copy;
  }
  // The TorchScript exports carry a tied embedding twice (the second a copy, maybe transposed); dynamo's once.
  const bool torchscript = name == "bert_opset14" || name.find("_ts") != std::string::npos;
  EXPECT_EQ(model->tied_parameters.size(), torchscript ? 1u : 0u) << name;
  std::set<std::string> expected;
  int64_t expected_numel = 0;
  for (const auto& [onnx_name, info] : meta["initializers"].items()) {
    if (model->tied_parameters.count(onnx_name)) continue;
    expected.insert(onnx_name);
    const std::string grad = "grad/" + info["hf"].get<std::string>();
    ASSERT_TRUE(ref->count(grad)) << grad;
    expected_numel += ref->at(grad).numel();
  }
  std::set<std::string> got;
  int64_t got_numel = 0;
  for (ValueId p : g.parameters()) {
    const Value& v = g.value(p);
    got.insert(v.name);
    got_numel += shape_numel(v.shape);
    EXPECT_EQ(v.data.numel(), shape_numel(v.shape)) << v.name;
    if (kTrainableUnmapped.count(name + "/" + v.name)) expected_numel += shape_numel(v.shape);
  }
  for (const std::string& e : kTrainableUnmapped) {
    if (e.rfind(name + "/", 0) == 0) expected.insert(e.substr(name.size() + 1));
  }
  EXPECT_EQ(got, expected) << name;
  EXPECT_EQ(got_numel, expected_numel) << name;
  if (name == "gpt2" || name == "bert_opset14" || name.rfind("gpt2_sdpa", 0) == 0) {
    // every HF parameter, once (tied embeddings included)
    int64_t hf_numel = 0;
    for (const auto& [key, t] : *ref) {
      if (key.rfind("grad/", 0) == 0) hf_numel += t.numel();
    }
    EXPECT_EQ(got_numel, hf_numel);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureForward, ::testing::ValuesIn(kFixtures),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace gv
