// The `galvatron` binary end to end: help and version, `inspect` and `run` on the HF fixtures (parameter counts,
// layers, outputs against PyTorch), and error handling (one line on stderr, exit codes, no partial output files).
// Needs the galvatron target built first (tests/CMakeLists.txt: add_dependencies(gv_tests galvatron)).
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/safetensors.h"
#include "tests/cli_fixture.h"

namespace gv {
namespace {

namespace fs = std::filesystem;

const char* kFixtureNames[] = {"gpt2", "gpt2_loss", "llama", "bert", "bert_opset14"};

// ---- tiny hand-built models (no fixture needed) -------------------------------------------------------------------

void add_tensor_value(onnx::ValueInfoProto* v, const std::string& name, int elem_type, std::vector<int64_t> dims,
                      std::vector<std::string> params = {}) {
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem_type);
  auto* shape = tt->mutable_shape();
  for (size_t i = 0; i < dims.size(); ++i) {
    auto* d = shape->add_dim();
    if (i < params.size() && !params[i].empty()) d->set_dim_param(params[i]);
    else d->set_dim_value(dims[i]);
  }
}

// y = Relu(x) + w, x float [batch, 4] (dynamic batch), w a [4] initializer.
// With `unsupported`, an op of an unknown domain sits between Relu and Add.
std::string write_tiny_model(const std::string& path, bool unsupported) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("galvatron-test");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(17);
  if (unsupported) {
    auto* op2 = m.add_opset_import();
    op2->set_domain("com.example");
    op2->set_version(1);
  }
  auto* g = m.mutable_graph();
  g->set_name("tiny");
  add_tensor_value(g->add_input(), "x", onnx::TensorProto::FLOAT, {0, 4}, {"batch", ""});
  add_tensor_value(g->add_output(), "y", onnx::TensorProto::FLOAT, {0, 4}, {"batch", ""});
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(4);
  for (float v : {0.5f, -1.0f, 2.0f, 0.0f}) w->add_float_data(v);
  auto* relu = g->add_node();
  relu->set_op_type("Relu");
  relu->set_name("relu");
  relu->add_input("x");
  relu->add_output("h");
  std::string add_in = "h";
  if (unsupported) {
    auto* frob = g->add_node();
    frob->set_op_type("Frobnicate");
    frob->set_domain("com.example");
    frob->set_name("frob");
    frob->add_input("h");
    frob->add_output("h2");
    add_in = "h2";
  }
  auto* add = g->add_node();
  add->set_op_type("Add");
  add->set_name("add");
  add->add_input(add_in);
  add->add_input("w");
  add->add_output("y");
  std::ofstream f(path, std::ios::binary);
  m.SerializeToOstream(&f);
  return path;
}

// ---- parameter counts from meta.json and the ONNX file --------------------------------------------------------------

// The trainable parameters of a fixture, in elements: the ONNX initializers that meta.json maps to HF parameters,
// plus parameter slices the exporter folded into new initializers (gpt2_loss: `embedding_1`, rows 0..31 of
// transformer.wpe.weight, which meta.json lists under hf_params_not_in_onnx). Checked independently with a Python
// protobuf reader: gpt2 120,576; gpt2_loss 116,480 + 2,048; llama 123,712; bert 92,224; bert_opset14 108,608.
int64_t expected_parameter_count(const std::string& name) {
  nlohmann::json meta = nlohmann::json::parse(slurp(fixture(name, "meta.json")));
  // One trainable tensor per HF parameter: an exporter's second copy of a tied weight (bert_opset14's transposed
  // decoder) is tied back to it by the importer.
  std::set<std::string> params, hf_seen;
  for (const auto& [onnx_name, info] : meta["initializers"].items()) {
    if (hf_seen.insert(info["hf"].get<std::string>()).second) params.insert(onnx_name);
  }
  if (name == "gpt2_loss") params.insert("embedding_1");
  onnx::ModelProto m;
  std::ifstream f(fixture(name, "model.onnx"), std::ios::binary);
  if (!m.ParseFromIstream(&f)) return -1;
  int64_t total = 0;
  size_t found = 0;
  for (const auto& t : m.graph().initializer()) {
    if (!params.count(t.name())) continue;
    ++found;
    int64_t n = 1;
    for (int64_t d : t.dims()) n *= d;
    total += n;
  }
  return found == params.size() ? total : -1;
}

// Where the parameters sit, worked out by hand from each HF config (hidden 64, vocab 256, 2 layers); a parameter used
// from several places (a tied embedding) counts where it is first used, i.e. in the embedding.
struct Placement3 {
  int64_t per_layer, embedding, head;
};
Placement3 expected_placement(const std::string& name) {
  // gpt2: ln_1 128 + c_attn 12,480 + attn c_proj 4,160 + ln_2 128 + c_fc 16,640 + mlp c_proj 16,448 per layer;
  //   wte 16,384 + wpe 4,096 (gpt2_loss: the folded 32-row slice, 2,048); head: ln_f 128 (lm_head is tied to wte).
  if (name == "gpt2") return {49984, 20480, 128};
  if (name == "gpt2_loss") return {49984, 18432, 128};
  // llama: embed_tokens 16,384; head: norm 64 + lm_head 16,384 (untied).
  if (name == "llama") return {45440, 16384, 16448};
  // bert: q/k/v/o 4 x 4,160 + 2 LayerNorms 256 + intermediate 8,320 + output 8,256 per layer; word 16,384 +
  //   position 4,096 + token type 128 + LayerNorm 128; head: transform dense 4,160 + LayerNorm 128 + decoder bias 256
  //   (the decoder weight is tied to the word embedding; bert_opset14 stores a transposed copy, which the importer
  //   ties back to it, so both count the same).
  if (name == "bert" || name == "bert_opset14") return {33472, 20736, 4544};
  return {0, 0, 0};
}

double max_relative_error(const Tensor& got, const Tensor& want) {
  Tensor a = got.cast(DType::kFloat64), b = want.cast(DType::kFloat64);
  double max_err = 0, scale = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    max_err = std::max(max_err, std::fabs(a.data_as<double>()[i] - b.data_as<double>()[i]));
    scale = std::max(scale, std::fabs(b.data_as<double>()[i]));
  }
  return max_err / std::max(scale, 1e-30);
}

// ---- help, version, dispatch ----------------------------------------------------------------------------------------

TEST_F(Cli, HelpListsEveryCommand) {
  CliResult r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("inspect"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("run"), std::string::npos) << r.out;
  EXPECT_TRUE(r.err.empty()) << r.err;
  // No arguments: the same list, on stderr, as a usage error.
  r = run({});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("inspect"), std::string::npos);
}

TEST_F(Cli, CommandHelpDescribesEveryFlag) {
  CliResult r = run({"inspect", "--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* s : {"--batch", "--seq", "--json", "default: 1", "MODEL.onnx"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << s << " not in:\n" << r.out;
  }
  r = run({"run", "--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* s : {"--feeds", "--out", "--device", "default: cpu", "required"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << s << " not in:\n" << r.out;
  }
  CliResult h = run({"help", "run"});
  EXPECT_EQ(h.code, 0);
  EXPECT_EQ(h.out, r.out);
}

TEST_F(Cli, Version) {
  CliResult r = run({"--version"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("galvatron ", 0), 0u) << r.out;
}

TEST_F(Cli, UnknownCommand) {
  auto before = listing();
  CliResult r = run({"frobnicate", "x"});
  expect_failure(r, 2, {"unknown command", "frobnicate", "galvatron --help"}, before);
  r = run({"inpsect", "x"});
  expect_failure(r, 2, {"did you mean inspect"}, before);
}

TEST_F(Cli, UnknownFlag) {
  auto before = listing();
  CliResult r = run({"inspect", fixture("gpt2", "model.onnx"), "--jsn"});
  expect_failure(r, 2, {"galvatron inspect: error:", "--jsn", "see galvatron inspect --help"}, before);
  r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", fixture("gpt2", "reference.safetensors"), "--out",
           path("out.safetensors"), "--bogus=1"});
  expect_failure(r, 2, {"--bogus", "see galvatron run --help"}, before);
}

// The README's `galvatron export-model gpt2 -o gpt2.onnx`: one-letter flags take one dash as well as two; other
// single-dash words stay errors. A named size's dependent shapes follow overrides: llama-7b with --hidden-size 256
// --num-heads 8 gets Llama's FFN rule (768) and 8 key/value heads, not its own 11008 and 32.
TEST_F(Cli, ExportModelShortOutputFlagAndFollowingShapes) {
  CliResult r = run({"export-model", "--model-type", "gpt", "--hidden-size", "32", "--num-layers", "1", "--num-heads",
                     "2", "--vocab-size", "64", "--seq-length", "8", "-o", path("a.onnx")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(path("a.onnx")));
  r = run({"export-model", "--model-type", "gpt", "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2",
           "--vocab-size", "64", "--seq-length", "8", "-o=" + path("b.onnx")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(path("b.onnx")));
  r = run({"export-model", "gpt2", "-x", path("c.onnx")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown flag -x"), std::string::npos) << r.err;
  r = run({"export-model", "--help"});
  EXPECT_NE(r.out.find("  -o FILE.onnx"), std::string::npos) << r.out;
  r = run({"export-model", "--model-type", "llama", "--model-size", "llama-7b", "--hidden-size", "256", "--num-heads",
           "8", "--num-layers", "1", "--vocab-size", "64", "--seq-length", "8", "--no-weights", "-o", path("l.onnx")});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string all = r.out + r.err;
  EXPECT_NE(all.find("ffn 768"), std::string::npos) << all;
  EXPECT_EQ(all.find("ffn 11008"), std::string::npos) << all;
}

TEST_F(Cli, MissingAndMalformedValues) {
  auto before = listing();
  expect_failure(run({"inspect", fixture("gpt2", "model.onnx"), "--batch"}), 2, {"--batch", "value"}, before);
  expect_failure(run({"inspect", fixture("gpt2", "model.onnx"), "--batch", "--json"}), 2, {"--batch"}, before);
  expect_failure(run({"inspect", fixture("gpt2", "model.onnx"), "--batch=two"}), 2, {"--batch", "two"}, before);
  expect_failure(run({"inspect", fixture("gpt2", "model.onnx"), "--batch", "0"}), 2, {"--batch"}, before);
  expect_failure(run({"inspect"}), 2, {"MODEL.onnx"}, before);
  expect_failure(run({"inspect", "a.onnx", "b.onnx"}), 2, {"b.onnx"}, before);
  expect_failure(run({"run", fixture("gpt2", "model.onnx"), "--feeds", fixture("gpt2", "reference.safetensors")}), 2,
                 {"--out"}, before);
  expect_failure(run({"run", fixture("gpt2", "model.onnx"), "--feeds", fixture("gpt2", "reference.safetensors"),
                      "--out", path("o.safetensors"), "--device", "tpu"}),
                 2, {"--device", "tpu"}, before);
}

// ---- inspect ---------------------------------------------------------------------------------------------------------

class CliFixture : public Cli, public ::testing::WithParamInterface<std::string> {};

TEST_P(CliFixture, InspectReportsLayersAndParameters) {
  const std::string name = GetParam();
  const int64_t want_params = expected_parameter_count(name);
  ASSERT_GT(want_params, 0) << "could not read the fixture's initializers";

  CliResult r = run({"inspect", fixture(name, "model.onnx"), "--batch", "2", "--seq", "32"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("layers:      2"), std::string::npos) << r.out;
  std::string commas = std::to_string(want_params);
  for (int i = static_cast<int>(commas.size()) - 3; i > 0; i -= 3) commas.insert(i, ",");
  EXPECT_NE(r.out.find("parameters:  " + commas), std::string::npos) << r.out;

  r = run({"inspect", fixture(name, "model.onnx"), "--batch", "2", "--seq", "32", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "not JSON:\n" << r.out;
  for (const char* key : {"file", "producer", "ir_version", "opsets", "inputs", "outputs", "parameters", "constants",
                          "op_histogram", "onnx_op_histogram", "layers", "unsupported_ops"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["parameters"]["count"].get<int64_t>(), want_params);
  EXPECT_EQ(j["parameters"]["bytes"].get<int64_t>(), want_params * 4);
  EXPECT_EQ(j["layers"]["count"].get<int>(), 2);
  ASSERT_EQ(j["layers"]["params_per_layer"].size(), 2u);
  int64_t placed = j["layers"]["embedding_params"].get<int64_t>() + j["layers"]["head_params"].get<int64_t>() +
                   j["layers"]["other_params"].get<int64_t>();
  for (const auto& n : j["layers"]["params_per_layer"]) {
    EXPECT_GT(n.get<int64_t>(), 0);
    placed += n.get<int64_t>();
  }
  EXPECT_EQ(placed, want_params);
  const Placement3 want = expected_placement(name);
  EXPECT_EQ(j["layers"]["params_per_layer"], nlohmann::json::array({want.per_layer, want.per_layer}));
  EXPECT_EQ(j["layers"]["embedding_params"].get<int64_t>(), want.embedding);
  EXPECT_EQ(j["layers"]["head_params"].get<int64_t>(), want.head);
  EXPECT_EQ(j["layers"]["other_params"].get<int64_t>(), 0);
  EXPECT_TRUE(j["unsupported_ops"].empty());
  EXPECT_EQ(j["inputs"][0]["name"], "input_ids");
  EXPECT_EQ(j["inputs"][0]["dtype"], "int64");
  EXPECT_EQ(j["inputs"][0]["shape"], nlohmann::json::array({2, 32}));
  ASSERT_EQ(j["outputs"].size(), 1u);
  EXPECT_EQ(j["outputs"][0]["name"], name == "gpt2_loss" ? "loss" : "logits");
  if (name != "gpt2_loss") {
    EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json::array({2, 32, 256}));
  }
  // The histograms add up to the node counts.
  int64_t imported = 0, file = 0;
  for (const auto& [op, n] : j["op_histogram"].items()) imported += n.get<int64_t>();
  for (const auto& [op, n] : j["onnx_op_histogram"].items()) file += n.get<int64_t>();
  EXPECT_EQ(imported, j["node_count"].get<int64_t>());
  EXPECT_EQ(file, j["onnx_node_count"].get<int64_t>());
  nlohmann::json meta = nlohmann::json::parse(slurp(fixture(name, "meta.json")));
  EXPECT_EQ(file, meta["n_nodes"].get<int64_t>());
  EXPECT_LE(imported, file) << "folding should not add nodes";
}

TEST_P(CliFixture, RunMatchesPyTorch) {
  const std::string name = GetParam();
  const std::string out = path("out.safetensors");
  CliResult r = run({"run", fixture(name, "model.onnx"), "--feeds", fixture(name, "reference.safetensors"), "--out", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote " + out), std::string::npos) << r.out;
  EXPECT_EQ(listing(), std::vector<std::string>{"out.safetensors"});  // no temporary left
  auto got = read_safetensors(out);
  ASSERT_TRUE(got.has_value()) << got.status().message();
  auto ref = read_safetensors(fixture(name, "reference.safetensors"));
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  const std::string key = name == "gpt2_loss" ? "loss" : "logits";
  ASSERT_EQ(got->size(), 1u);
  ASSERT_TRUE(got->count(key)) << "outputs: " << got->begin()->first;
  const Tensor& t = got->at(key);
  const Tensor& want = ref->at(key);
  ASSERT_EQ(t.dtype(), DType::kFloat32);
  ASSERT_EQ(t.numel(), want.numel());  // the loss may come back as a scalar [] against the reference's [1]
  if (key == "logits") {
    EXPECT_EQ(t.shape(), want.shape());
  }
  EXPECT_LE(max_relative_error(t, want), 1e-5);
  auto meta = read_safetensors_metadata(out);
  ASSERT_TRUE(meta.has_value());
  EXPECT_EQ(meta->at("galvatron.model"), fixture(name, "model.onnx"));
}

// Named CliHF/... so that --gtest_filter='Cli*' selects them.
INSTANTIATE_TEST_SUITE_P(CliHF, CliFixture,
                         ::testing::ValuesIn(std::vector<std::string>(std::begin(kFixtureNames), std::end(kFixtureNames))),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST_F(Cli, InspectDefaultsTheSequenceLength) {
  CliResult r = run({"inspect", fixture("llama", "model.onnx"), "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("128"), std::string::npos) << "the default sequence length is not announced:\n" << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["seq"], 128);
  EXPECT_EQ(j["seq_defaulted"], true);
  EXPECT_EQ(j["batch"], 1);
  EXPECT_EQ(j["inputs"][0]["shape"], nlohmann::json::array({1, 128}));
  // A static model keeps its own shapes.
  r = run({"inspect", fixture("gpt2_loss", "model.onnx"), "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_TRUE(j["seq"].is_null());
  EXPECT_EQ(j["inputs"][0]["shape"], nlohmann::json::array({2, 32}));
}

TEST_F(Cli, InspectTinyModel) {
  std::string model = write_tiny_model(path("tiny.onnx"), false);
  CliResult r = run({"inspect", model, "--batch", "3", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["producer"].get<std::string>().rfind("galvatron-test", 0), 0u) << j["producer"];
  EXPECT_EQ(j["ir_version"], 8);
  EXPECT_EQ(j["opsets"]["ai.onnx"], 17);
  EXPECT_EQ(j["inputs"][0]["shape"], nlohmann::json::array({3, 4}));
  EXPECT_EQ(j["inputs"][0]["declared_shape"], nlohmann::json::parse(R"(["batch", 4])"));
  EXPECT_EQ(j["onnx_op_histogram"], nlohmann::json::parse(R"({"Add": 1, "Relu": 1})"));
  EXPECT_TRUE(j["unsupported_ops"].empty());
}

TEST_F(Cli, InspectListsUnsupportedOps) {
  std::string model = write_tiny_model(path("frob.onnx"), true);
  auto before = listing();
  CliResult r = run({"inspect", model, "--quiet"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.out.find("Frobnicate"), std::string::npos) << r.out;  // the report names it
  expect_failure(r, 1, {"Frobnicate"}, before);
  r = run({"inspect", model, "--json", "--quiet"});
  EXPECT_EQ(r.code, 1);
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  ASSERT_EQ(j["unsupported_ops"].size(), 1u);
  EXPECT_NE(j["unsupported_ops"][0].get<std::string>().find("Frobnicate"), std::string::npos);
  EXPECT_EQ(j["onnx_op_histogram"]["com.example:Frobnicate"], 1);
}

// ---- run ----------------------------------------------------------------------------------------------------------

TEST_F(Cli, RunTinyModel) {
  std::string model = write_tiny_model(path("tiny.onnx"), false);
  std::string feeds = path("feeds.safetensors");
  ASSERT_TRUE(write_safetensors(feeds, {{"x", Tensor::from_f32({1, -2, 3, -4, -1, 2, -3, 4}, {2, 4})},
                                        {"unrelated", Tensor::from_i64({7}, {1})}})
                  .is_ok());
  std::string out = path("y.safetensors");
  CliResult r = run({"run", model, "--feeds", feeds, "--out", out, "--quiet"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << "--quiet printed:\n" << r.err;
  auto y = read_safetensors(out);
  ASSERT_TRUE(y.has_value()) << y.status().message();
  ASSERT_EQ(y->count("y"), 1u);
  const Tensor& t = y->at("y");
  ASSERT_EQ(t.shape(), (Shape{2, 4}));
  const float want[] = {1.5f, -1.0f, 5.0f, 0.0f, 0.5f, 1.0f, 2.0f, 4.0f};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(t.data_as<float>()[i], want[i]) << i;
}

TEST_F(Cli, RunMissingModel) {
  auto before = listing();
  CliResult r = run({"run", path("absent.onnx"), "--feeds", fixture("gpt2", "reference.safetensors"), "--out",
                     path("out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"galvatron run: error:", "absent.onnx"}, before);
  r = run({"inspect", path("absent.onnx"), "--quiet"});
  expect_failure(r, 1, {"galvatron inspect: error:", "absent.onnx"}, before);
}

TEST_F(Cli, CorruptModel) {
  std::string model = path("garbage.onnx");
  {
    std::ofstream f(model, std::ios::binary);
    uint32_t x = 12345;
    for (int i = 0; i < 4096; ++i) {
      x = x * 1664525u + 1013904223u;
      f.put(static_cast<char>(x >> 24));
    }
  }
  auto before = listing();
  CliResult r = run({"inspect", model, "--quiet"});
  expect_failure(r, 1, {"garbage.onnx"}, before);
  r = run({"run", model, "--feeds", fixture("gpt2", "reference.safetensors"), "--out", path("out.safetensors"),
           "--quiet"});
  expect_failure(r, 1, {"garbage.onnx"}, before);
  // A text file and an empty file.
  std::ofstream(path("text.onnx")) << "this is not a model\n";
  std::ofstream(path("empty.onnx"));
  before = listing();
  expect_failure(run({"inspect", path("text.onnx"), "--quiet"}), 1, {"text.onnx"}, before);
  expect_failure(run({"inspect", path("empty.onnx"), "--quiet"}), 1, {"empty.onnx"}, before);
}

TEST_F(Cli, RunMissingFeeds) {
  auto before = listing();
  CliResult r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", path("absent.safetensors"), "--out",
                     path("out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"absent.safetensors"}, before);
  // A feeds file that is not safetensors.
  r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", fixture("gpt2", "meta.json"), "--out",
           path("out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"meta.json"}, before);
}

TEST_F(Cli, RunFeedWithWrongShape) {
  std::string feeds = path("feeds.safetensors");
  ASSERT_TRUE(write_safetensors(feeds, {{"input_ids", Tensor::from_i64(std::vector<int64_t>(64, 1), {64})}}).is_ok());
  auto before = listing();
  CliResult r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", feeds, "--out", path("out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"input_ids", "[64]"}, before);
  // A static model fed another shape.
  ASSERT_TRUE(write_safetensors(feeds, {{"input_ids", Tensor::from_i64(std::vector<int64_t>(48, 1), {3, 16})},
                                        {"labels", Tensor::from_i64(std::vector<int64_t>(48, 1), {3, 16})}})
                  .is_ok());
  before = listing();
  r = run({"run", fixture("gpt2_loss", "model.onnx"), "--feeds", feeds, "--out", path("out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"input_ids", "[3,16]"}, before);
}

TEST_F(Cli, RunFeedWithWrongDtype) {
  std::string feeds = path("feeds.safetensors");
  ASSERT_TRUE(write_safetensors(feeds, {{"input_ids", Tensor::from_f32(std::vector<float>(64, 1), {2, 32})}}).is_ok());
  auto before = listing();
  CliResult r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", feeds, "--out", path("out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"input_ids", "float32", "int64"}, before);
}

TEST_F(Cli, RunMissingInput) {
  std::string feeds = path("feeds.safetensors");
  ASSERT_TRUE(write_safetensors(feeds, {{"labels", Tensor::from_i64(std::vector<int64_t>(64, 1), {2, 32})},
                                        {"tokens", Tensor::from_i64(std::vector<int64_t>(66, 1), {2, 33})}})
                  .is_ok());
  auto before = listing();
  // gpt2_loss needs input_ids and labels; the file has labels and tokens: the message names the missing input and
  // lists what the file holds.
  CliResult r =
      run({"run", fixture("gpt2_loss", "model.onnx"), "--feeds", feeds, "--out", path("out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"input_ids", "labels", "tokens"}, before);
}

TEST_F(Cli, RunBadOutputPath) {
  auto before = listing();
  CliResult r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", fixture("gpt2", "reference.safetensors"), "--out",
                     path("no/such/dir/out.safetensors"), "--quiet"});
  expect_failure(r, 1, {"no/such/dir"}, before);
}

TEST_F(Cli, FailedRunKeepsThePreviousOutput) {
  // Token ids beyond the vocabulary fail in the forward pass (Gather); the earlier output stays as it was.
  std::string out = path("out.safetensors");
  ASSERT_TRUE(write_safetensors(out, {{"old", Tensor::from_f32({1}, {1})}}).is_ok());
  std::string feeds = path("feeds.safetensors");
  ASSERT_TRUE(
      write_safetensors(feeds, {{"input_ids", Tensor::from_i64(std::vector<int64_t>(64, 100000), {2, 32})}}).is_ok());
  auto before = listing();
  CliResult r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", feeds, "--out", out, "--quiet"});
  expect_failure(r, 1, {}, before);
  auto t = read_safetensors(out);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->count("old"), 1u);
}

TEST_F(Cli, ProgressGoesToStderrResultsToStdout) {
  std::string out = path("out.safetensors");
  CliResult r = run({"run", fixture("gpt2", "model.onnx"), "--feeds", fixture("gpt2", "reference.safetensors"), "--out", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("logits"), std::string::npos);
  EXPECT_NE(r.err.find("galvatron run: "), std::string::npos) << "no progress lines on stderr";
  EXPECT_EQ(r.err.find("error"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace gv
