// The model zoo (models/zoo.h): the named sizes and their parameter counts, the generated ONNX graphs' structure,
// HF-style initialization, writing models, and fidelity: the tiny gpt / llama / bert graphs, given the weights of the
// HF fixtures (../shared/fixtures/hf), reproduce PyTorch's logits through the importer and the CPU executor.
//
// Set GV_ZOO_DUMP_DIR to also write the three tiny models with the fixture weights (and the fixtures' reference
// files) there, for checking the graphs with onnxruntime.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "importer/onnx_proto_reader.h"
#include "models/zoo.h"
#include "runtime/backend.h"
#include "runtime/executor.h"
#include "runtime/safetensors.h"

namespace gv {
namespace {

namespace fs = std::filesystem;

std::string fixture_dir(const std::string& name) { return std::string(GV_FIXTURES_DIR) + "/" + name; }

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A fresh empty folder under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() / (std::string("gv_zoo_") + info->test_suite_name() + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

const onnx::TensorProto* find_initializer(const onnx::ModelProto& m, const std::string& name) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

const float* floats_of(const onnx::TensorProto& t) { return reinterpret_cast<const float*>(t.raw_data().data()); }

int64_t numel_of(const onnx::TensorProto& t) {
  int64_t n = 1;
  for (int64_t d : t.dims()) n *= d;
  return n;
}

// ---- the list and the parameter counts -------------------------------------------------------------------------------

TEST(ZooList, CoversEverySize) {
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"gpt", "gpt-0.3b"},     {"gpt", "gpt-1.5b"},       {"gpt", "gpt-2.7b"},        {"gpt", "gpt-6.7b"},
      {"gpt", "gpt2"},         {"gpt", "gpt2-medium"},    {"gpt", "gpt2-large"},      {"gpt", "gpt2-xl"},
      {"gpt", "gpt-tiny"},     {"llama", "llama-7b"},     {"llama", "llama-13b"},     {"llama", "llama-tiny"},
      {"bert", "bert-base"},   {"bert", "bert-large"},    {"bert", "bert-huge-32"},   {"bert", "bert-huge-48"},
      {"bert", "bert-tiny"}};
  std::vector<ZooEntry> list = zoo_list();
  std::set<std::string> names;
  for (const ZooEntry& e : list) {
    EXPECT_TRUE(names.insert(e.size).second) << "duplicate size " << e.size;
    EXPECT_TRUE(e.config.validate().is_ok()) << e.size << ": " << e.config.validate().message();
    EXPECT_EQ(e.type, model_type_name(e.config.type));
    EXPECT_EQ(e.parameters, parameter_count(e.config)) << e.size;
    EXPECT_GT(e.config.seq_length, 0) << e.size;
    EXPECT_FALSE(e.source.empty());
  }
  for (const auto& [type, size] : expected) {
    EXPECT_TRUE(names.count(size)) << size << " is missing from zoo_list()";
    auto c = zoo_config(type, size);
    ASSERT_TRUE(c.has_value()) << c.status().message();
    EXPECT_EQ(c->size, size);
    EXPECT_EQ(model_type_name(c->type), type);
    auto by_size = zoo_config("", size);  // sizes are unique across types
    ASSERT_TRUE(by_size.has_value());
    EXPECT_EQ(by_size->hidden_size, c->hidden_size);
  }
}

TEST(ZooList, NamedShapes) {
  struct Row {
    const char* size;
    int64_t hidden, layers, heads, seq, ffn, vocab;
  };
  const Row rows[] = {{"gpt-0.3b", 1024, 24, 16, 1024, 4096, 50257},    {"gpt-1.5b", 1600, 48, 32, 1024, 6400, 50257},
                      {"gpt-2.7b", 2560, 32, 32, 2048, 10240, 50257},   {"gpt-6.7b", 4096, 32, 32, 2048, 16384, 50257},
                      {"llama-7b", 4096, 32, 32, 2048, 11008, 32000},   {"llama-13b", 5120, 40, 40, 4096, 13824, 32000},
                      {"bert-base", 768, 12, 12, 512, 3072, 30522},     {"bert-large", 1024, 24, 16, 512, 4096, 30522},
                      {"bert-huge-32", 1280, 32, 16, 512, 5120, 30522}, {"bert-huge-48", 1280, 48, 16, 512, 5120, 30522},
                      {"gpt2", 768, 12, 12, 1024, 3072, 50257},         {"gpt2-medium", 1024, 24, 16, 1024, 4096, 50257},
                      {"gpt2-large", 1280, 36, 20, 1024, 5120, 50257},  {"gpt2-xl", 1600, 48, 25, 1024, 6400, 50257}};
  for (const Row& r : rows) {
    auto c = zoo_config("", r.size);
    ASSERT_TRUE(c.has_value()) << r.size;
    EXPECT_EQ(c->hidden_size, r.hidden) << r.size;
    EXPECT_EQ(c->num_layers, r.layers) << r.size;
    EXPECT_EQ(c->num_heads, r.heads) << r.size;
    EXPECT_EQ(c->seq_length, r.seq) << r.size;
    EXPECT_EQ(c->resolved_ffn(), r.ffn) << r.size;
    EXPECT_EQ(c->vocab_size, r.vocab) << r.size;
  }
}

TEST(ZooList, ErrorsNameTheChoices) {
  auto unknown = zoo_config("gpt", "gpt-99b");
  ASSERT_FALSE(unknown.has_value());
  EXPECT_NE(unknown.status().message().find("gpt-1.5b"), std::string::npos) << unknown.status().message();
  EXPECT_EQ(unknown.status().message().find("llama-7b"), std::string::npos) << "lists only gpt sizes";
  auto wrong_type = zoo_config("bert", "gpt-1.5b");
  ASSERT_FALSE(wrong_type.has_value());
  EXPECT_NE(wrong_type.status().message().find("gpt"), std::string::npos);
  EXPECT_FALSE(zoo_config("t5", "t5-large").has_value());
}

// Closed forms, written independently of parameter_specs().
int64_t gpt_params(int64_t V, int64_t P, int64_t H, int64_t L, int64_t F) {
  const int64_t layer = 2 * H + (H * 3 * H + 3 * H) + (H * H + H) + 2 * H + (H * F + F) + (F * H + H);
  return V * H + P * H + L * layer + 2 * H;
}
int64_t llama_params(int64_t V, int64_t H, int64_t L, int64_t F, int64_t kv_width) {
  const int64_t layer = 2 * H * H + 2 * H * kv_width + 3 * H * F + 2 * H;
  return 2 * V * H + L * layer + H;
}
int64_t bert_params(int64_t V, int64_t P, int64_t T, int64_t H, int64_t L, int64_t F) {
  const int64_t layer = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H;
  return (V + P + T) * H + 2 * H + L * layer + (H * H + H) + 2 * H + V;
}

TEST(ZooParameters, CountsOfNamedSizes) {
  auto count = [](const char* size) { return parameter_count(*zoo_config("", size)); };
  // HF's own numbers (tied embeddings counted once).
  EXPECT_EQ(count("gpt2"), 124439808);
  EXPECT_EQ(count("gpt2-medium"), 354823168);
  EXPECT_EQ(count("gpt2-large"), 774030080);
  EXPECT_EQ(count("gpt2-xl"), 1557611200);
  EXPECT_EQ(count("llama-7b"), 6738415616);
  EXPECT_EQ(count("llama-13b"), 13015864320);
  EXPECT_EQ(count("bert-base"), 109514298);  // BertForMaskedLM (no pooler)
  EXPECT_EQ(count("bert-large"), 335174458);
  // Galvatron's sizes against the closed forms, and against their names.
  EXPECT_EQ(count("gpt-0.3b"), gpt_params(50257, 1024, 1024, 24, 4096));
  EXPECT_EQ(count("gpt-1.5b"), gpt_params(50257, 1024, 1600, 48, 6400));
  EXPECT_EQ(count("gpt-2.7b"), gpt_params(50257, 2048, 2560, 32, 10240));
  EXPECT_EQ(count("gpt-6.7b"), gpt_params(50257, 2048, 4096, 32, 16384));
  EXPECT_EQ(count("llama-7b"), llama_params(32000, 4096, 32, 11008, 4096));
  EXPECT_EQ(count("llama-13b"), llama_params(32000, 5120, 40, 13824, 5120));
  EXPECT_EQ(count("bert-huge-32"), bert_params(30522, 512, 2, 1280, 32, 5120));
  EXPECT_EQ(count("bert-huge-48"), bert_params(30522, 512, 2, 1280, 48, 5120));
  auto about = [&](const char* size, double billions) {
    const double b = static_cast<double>(count(size)) / 1e9;
    EXPECT_NEAR(b, billions, 0.12 * billions) << size << " has " << count(size) << " parameters";
  };
  about("gpt-0.3b", 0.35);
  about("gpt-1.5b", 1.5);
  about("gpt-2.7b", 2.7);
  about("gpt-6.7b", 6.7);
  about("llama-7b", 6.7);
  about("llama-13b", 13.0);
  // Tiny sizes match their fixtures.
  EXPECT_EQ(count("gpt-tiny"), gpt_params(256, 64, 64, 2, 256));
  EXPECT_EQ(count("llama-tiny"), llama_params(256, 64, 2, 172, 32));
  EXPECT_EQ(count("bert-tiny"), bert_params(256, 64, 2, 64, 2, 128));
  EXPECT_EQ(parameter_bytes(*zoo_config("", "gpt2")), 4 * 124439808);
  EXPECT_EQ(parameter_bytes(*zoo_config("", "gpt2"), DType::kBFloat16), 2 * 124439808);
}

TEST(ZooParameters, SpecsArePlacedAndNamedLikeHf) {
  auto specs = parameter_specs(*zoo_config("llama", "llama-7b"));  // no allocation: 6.7B parameters listed
  ASSERT_FALSE(specs.empty());
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs.front().place.kind, Placement::Kind::kEmbedding);
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  EXPECT_EQ(specs.back().place.kind, Placement::Kind::kHead);
  bool found = false;
  for (const ParamSpec& p : specs) {
    if (p.name == "model.layers.31.self_attn.k_proj.weight") {
      found = true;
      EXPECT_EQ(p.shape, (Shape{4096, 4096}));
      EXPECT_EQ(p.place.kind, Placement::Kind::kLayer);
      EXPECT_EQ(p.place.layer, 31);
    }
    EXPECT_EQ(p.name.find(".bias"), std::string::npos) << "llama has no biases: " << p.name;
  }
  EXPECT_TRUE(found);
  auto tiny = parameter_specs(*zoo_config("llama", "llama-tiny"));
  for (const ParamSpec& p : tiny) {
    if (p.name == "model.layers.0.self_attn.k_proj.weight") {
      EXPECT_EQ(p.shape, (Shape{32, 64}));  // 2 kv heads
    }
  }
  auto gpt = parameter_specs(*zoo_config("gpt", "gpt2"));
  for (const ParamSpec& p : gpt) {
    if (p.name == "transformer.h.0.attn.c_attn.weight") {
      EXPECT_EQ(p.shape, (Shape{768, 2304}));  // Conv1D [in, out]
    }
    if (p.name == "transformer.h.0.mlp.c_proj.weight") {
      EXPECT_NEAR(p.stddev, 0.02 / std::sqrt(24.0), 1e-12);
    }
    EXPECT_NE(p.name, "lm_head.weight") << "tied to transformer.wte.weight";
  }
  auto bert = parameter_specs(*zoo_config("bert", "bert-base"));
  EXPECT_EQ(bert.front().name, "bert.embeddings.word_embeddings.weight");
  EXPECT_EQ(bert.front().zero_row, 0);  // padding_idx
  for (const ParamSpec& p : bert) {
    if (p.name == "bert.encoder.layer.0.intermediate.dense.weight") {
      EXPECT_EQ(p.shape, (Shape{3072, 768}));
    }
  }
}

TEST(ZooConfig, ValidationNamesTheField) {
  ModelConfig c = *zoo_config("llama", "llama-tiny");
  c.kv_heads = 3;
  Status st = c.validate();
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("kv_heads"), std::string::npos) << st.message();
  ModelConfig g = *zoo_config("gpt", "gpt-tiny");
  g.num_heads = 5;
  EXPECT_NE(g.validate().message().find("num_heads"), std::string::npos);
  auto too_long = build_model(*zoo_config("gpt", "gpt-tiny"), 1, 65, WeightInit::kNone, 0);
  ASSERT_FALSE(too_long.has_value());
  EXPECT_NE(too_long.status().message().find("positions"), std::string::npos) << too_long.status().message();
  EXPECT_FALSE(build_model(g, 1, 8, WeightInit::kNone, 0).has_value());
  EXPECT_FALSE(build_model(*zoo_config("gpt", "gpt-tiny"), 0, 8, WeightInit::kNone, 0).has_value());
}

TEST(ZooConfig, FromHfConfigOfTheFixtures) {
  const std::pair<const char*, const char*> cases[] = {{"gpt2", "gpt-tiny"}, {"llama", "llama-tiny"}, {"bert", "bert-tiny"}};
  for (const auto& [fixture, size] : cases) {
    auto hf = config_from_hf_json(read_text(fixture_dir(fixture) + "/meta.json"));
    ASSERT_TRUE(hf.has_value()) << fixture << ": " << hf.status().message();
    ModelConfig z = *zoo_config("", size);
    EXPECT_EQ(hf->type, z.type) << fixture;
    EXPECT_EQ(hf->hidden_size, z.hidden_size) << fixture;
    EXPECT_EQ(hf->num_layers, z.num_layers) << fixture;
    EXPECT_EQ(hf->num_heads, z.num_heads) << fixture;
    EXPECT_EQ(hf->resolved_kv_heads(), z.resolved_kv_heads()) << fixture;
    EXPECT_EQ(hf->resolved_head_dim(), z.resolved_head_dim()) << fixture;
    EXPECT_EQ(hf->resolved_ffn(), z.resolved_ffn()) << fixture;
    EXPECT_EQ(hf->vocab_size, z.vocab_size) << fixture;
    EXPECT_EQ(hf->max_positions, z.max_positions) << fixture;
    EXPECT_EQ(hf->norm_eps, z.norm_eps) << fixture;
    EXPECT_EQ(hf->tie_word_embeddings, z.tie_word_embeddings) << fixture;
    EXPECT_EQ(hf->pad_token_id, z.pad_token_id) << fixture;
    EXPECT_EQ(parameter_count(*hf), parameter_count(z)) << fixture;
  }
  EXPECT_FALSE(config_from_hf_json(R"({"model_type": "t5"})").has_value());
  EXPECT_FALSE(config_from_hf_json(R"({"model_type": "llama", "hidden_act": "gelu"})").has_value());
  EXPECT_FALSE(config_from_hf_json("not json").has_value());
  EXPECT_FALSE(config_from_hf_json(R"({"model_type": "llama", "rope_scaling": {"rope_type": 7}})").has_value());
  auto gqa = config_from_hf_json(R"({"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8,
      "num_key_value_heads": 2, "num_hidden_layers": 3, "intermediate_size": 512, "vocab_size": 1000,
      "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}})");
  ASSERT_TRUE(gqa.has_value()) << gqa.status().message();
  EXPECT_EQ(gqa->resolved_kv_heads(), 2);
  EXPECT_EQ(gqa->rope_theta, 500000.0);
  EXPECT_FALSE(gqa->tie_word_embeddings);
}

// ---- the generator ---------------------------------------------------------------------------------------------------

TEST(ZooRng, SeededNormalIsReproducible) {
  const int64_t n = kNormalBlock + 1001;  // two blocks, the second partial and odd
  std::vector<float> a(n), b(n), c(n), d(kNormalBlock);
  normal_fill(a.data(), n, 0.02, 7, "w");
  normal_fill(b.data(), n, 0.02, 7, "w");
  normal_fill(c.data(), n, 0.02, 8, "w");
  normal_fill(d.data(), kNormalBlock, 0.02, 7, "w");
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_TRUE(std::equal(d.begin(), d.end(), a.begin())) << "a block does not depend on the length";
  double sum = 0, sq = 0;
  for (float v : a) {
    sum += v;
    sq += static_cast<double>(v) * v;
  }
  const double mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 1e-4);
  EXPECT_NEAR(sd, 0.02, 1e-4);
  // Pinned values: the recipe in models/README.md must not change silently (it keys every zoo checkpoint).
  std::vector<float> first(4), second(4);
  normal_fill(first.data(), 4, 1.0, 0, "transformer.wte.weight");
  normal_fill(second.data(), 4, 1.0, 1234, "model.layers.0.mlp.up_proj.weight");
  const float pinned_first[4] = {-0.144829527f, 0.548640192f, 1.27372944f, -0.629087389f};
  const float pinned_second[4] = {-0.639189243f, -1.6856364f, 0.430961311f, 1.06388605f};
  for (int i = 0; i < 4; ++i) {
    EXPECT_FLOAT_EQ(first[i], pinned_first[i]) << i;
    EXPECT_FLOAT_EQ(second[i], pinned_second[i]) << i;
  }
}

// ---- graph structure -------------------------------------------------------------------------------------------------

struct Expect {
  const char* size;
  std::set<std::string> ops;  // exactly the op types of the graph
};

TEST(ZooBuild, GraphStructure) {
  const Expect cases[] = {
      {"gpt-tiny",
       {"Constant", "Gather", "Add", "LayerNormalization", "MatMul", "Split", "Reshape", "Transpose", "Mul", "Softmax",
        "Gelu"}},
      {"llama-tiny",
       {"Constant", "Gather", "Add", "Pow", "ReduceMean", "Sqrt", "Reciprocal", "Mul", "Transpose", "MatMul", "Reshape",
        "Slice", "Neg", "Concat", "Unsqueeze", "Expand", "Softmax", "Sigmoid"}},
      {"bert-tiny",
       {"Constant", "Gather", "Add", "LayerNormalization", "Transpose", "MatMul", "Reshape", "Mul", "Softmax", "Gelu"}}};
  const int64_t B = 2, S = 16;
  for (const Expect& e : cases) {
    SCOPED_TRACE(e.size);
    ModelConfig c = *zoo_config("", e.size);
    auto built = build_model(c, B, S, WeightInit::kHuggingFace, 1);
    ASSERT_TRUE(built.has_value()) << built.status().message();
    const onnx::ModelProto& m = *built;
    EXPECT_EQ(m.ir_version(), 10);
    ASSERT_EQ(m.opset_import_size(), 1);
    EXPECT_EQ(m.opset_import(0).domain(), "");
    EXPECT_EQ(m.opset_import(0).version(), 20);
    const auto& g = m.graph();
    ASSERT_EQ(g.input_size(), 1);
    EXPECT_EQ(g.input(0).name(), "input_ids");
    EXPECT_EQ(g.input(0).type().tensor_type().elem_type(), onnx::TensorProto::INT64);
    ASSERT_EQ(g.input(0).type().tensor_type().shape().dim_size(), 2);
    EXPECT_EQ(g.input(0).type().tensor_type().shape().dim(0).dim_value(), B);
    EXPECT_EQ(g.input(0).type().tensor_type().shape().dim(1).dim_value(), S);
    ASSERT_EQ(g.output_size(), 1);
    EXPECT_EQ(g.output(0).name(), "logits");
    EXPECT_EQ(g.output(0).type().tensor_type().elem_type(), onnx::TensorProto::FLOAT);
    ASSERT_EQ(g.output(0).type().tensor_type().shape().dim_size(), 3);
    EXPECT_EQ(g.output(0).type().tensor_type().shape().dim(2).dim_value(), c.vocab_size);

    // Initializers are exactly the parameters, in HF order, with HF shapes.
    auto specs = parameter_specs(c);
    ASSERT_EQ(g.initializer_size(), static_cast<int>(specs.size()));
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto& t = g.initializer(static_cast<int>(i));
      EXPECT_EQ(t.name(), specs[i].name);
      EXPECT_EQ(Shape(t.dims().begin(), t.dims().end()), specs[i].shape) << t.name();
      EXPECT_EQ(t.data_type(), onnx::TensorProto::FLOAT);
      EXPECT_EQ(static_cast<int64_t>(t.raw_data().size()), specs[i].numel() * 4) << t.name();
    }

    // Every input is defined before use; names are unique; every initializer is read; ops are as expected.
    std::set<std::string> defined = {"input_ids"};
    for (const auto& t : g.initializer()) defined.insert(t.name());
    std::set<std::string> used, node_names, ops;
    for (const auto& n : g.node()) {
      EXPECT_EQ(n.domain(), "");
      EXPECT_TRUE(node_names.insert(n.name()).second) << "duplicate node name " << n.name();
      ops.insert(n.op_type());
      for (const auto& in : n.input()) {
        EXPECT_TRUE(defined.count(in)) << n.name() << " reads '" << in << "' before it is defined";
        used.insert(in);
      }
      for (const auto& out : n.output()) EXPECT_TRUE(defined.insert(out).second) << "'" << out << "' defined twice";
      if (n.op_type() == "Gelu") {
        const bool tanh = n.attribute_size() == 1 && n.attribute(0).s() == "tanh";
        EXPECT_EQ(tanh, c.type == ModelType::kGpt) << n.name();
      }
    }
    EXPECT_TRUE(defined.count("logits"));
    for (const auto& t : g.initializer()) EXPECT_TRUE(used.count(t.name())) << t.name() << " is never read";
    EXPECT_EQ(ops, e.ops);
    // Node names carry the layer index of the HF module path.
    const std::string layer1 = c.type == ModelType::kGpt     ? "/transformer/h.1/"
                               : c.type == ModelType::kLlama ? "/model/layers.1/"
                                                             : "/bert/encoder/layer.1/";
    EXPECT_TRUE(node_names.count(layer1 + (c.type == ModelType::kBert ? "attention/self/Softmax" : "attn/Softmax")) ||
                node_names.count(layer1 + "self_attn/Softmax"))
        << "no softmax node under " << layer1;
  }
}

TEST(ZooBuild, HuggingFaceInitialization) {
  ModelConfig c = *zoo_config("gpt", "gpt-tiny");
  auto m1 = build_model(c, 1, 8, WeightInit::kHuggingFace, 42);
  auto m2 = build_model(c, 1, 8, WeightInit::kHuggingFace, 42);
  auto m3 = build_model(c, 1, 8, WeightInit::kHuggingFace, 43);
  ASSERT_TRUE(m1 && m2 && m3);
  EXPECT_EQ(m1->graph().initializer(0).raw_data(), m2->graph().initializer(0).raw_data());
  EXPECT_NE(m1->graph().initializer(0).raw_data(), m3->graph().initializer(0).raw_data());
  auto stats = [](const onnx::TensorProto& t, double* mean, double* sd) {
    const float* p = floats_of(t);
    const int64_t n = numel_of(t);
    double s = 0, q = 0;
    for (int64_t i = 0; i < n; ++i) {
      s += p[i];
      q += static_cast<double>(p[i]) * p[i];
    }
    *mean = s / n;
    *sd = std::sqrt(q / n - *mean * *mean);
  };
  double mean, sd;
  stats(*find_initializer(*m1, "transformer.wte.weight"), &mean, &sd);
  EXPECT_NEAR(sd, 0.02, 0.001);
  stats(*find_initializer(*m1, "transformer.h.0.mlp.c_fc.weight"), &mean, &sd);
  EXPECT_NEAR(sd, 0.02, 0.001);
  stats(*find_initializer(*m1, "transformer.h.1.mlp.c_proj.weight"), &mean, &sd);
  EXPECT_NEAR(sd, 0.02 / 2.0, 0.0005);  // 1 / sqrt(2 * n_layer)
  stats(*find_initializer(*m1, "transformer.h.0.ln_1.weight"), &mean, &sd);
  EXPECT_EQ(mean, 1.0);
  EXPECT_EQ(sd, 0.0);
  stats(*find_initializer(*m1, "transformer.h.0.attn.c_attn.bias"), &mean, &sd);
  EXPECT_EQ(mean, 0.0);
  EXPECT_EQ(sd, 0.0);
  // kNone: zeros, no generator.
  auto none = build_model(c, 1, 8, WeightInit::kNone, 42);
  ASSERT_TRUE(none.has_value());
  for (const auto& t : none->graph().initializer()) {
    EXPECT_EQ(t.raw_data(), std::string(t.raw_data().size(), '\0')) << t.name();
  }
  // BERT zeroes the padding row of the word embedding.
  auto bert = build_model(*zoo_config("bert", "bert-tiny"), 1, 8, WeightInit::kHuggingFace, 42);
  ASSERT_TRUE(bert.has_value());
  const onnx::TensorProto* w = find_initializer(*bert, "bert.embeddings.word_embeddings.weight");
  for (int64_t j = 0; j < 64; ++j) EXPECT_EQ(floats_of(*w)[j], 0.0f);
  EXPECT_NE(floats_of(*w)[64], 0.0f);
}

// `train` under a parallel plan imports a zoo model zero-filled (WeightInit::kNone) for its structure only: the
// importer must find the same parameters (names, shapes), layers and tied weights as with the seeded weights, even
// though zero tensors look like fills.
TEST(ZooBuild, ZeroFilledImportHasTheSeededStructure) {
  for (const auto& [type, size] : std::vector<std::pair<std::string, std::string>>{
           {"gpt", "gpt-tiny"}, {"llama", "llama-tiny"}, {"bert", "bert-tiny"}}) {
    SCOPED_TRACE(size);
    auto c = zoo_config(type, size);
    ASSERT_TRUE(c.has_value());
    auto seeded = build_and_import(*c, 2, 16, WeightInit::kHuggingFace, 3);
    auto zero = build_and_import(*c, 2, 16, WeightInit::kNone);
    ASSERT_TRUE(seeded.has_value()) << seeded.status().message();
    ASSERT_TRUE(zero.has_value()) << zero.status().message();
    EXPECT_EQ(zero->graph.num_layers, seeded->graph.num_layers);
    std::map<std::string, Shape> a, b;
    for (ValueId p : seeded->graph.parameters()) a[seeded->graph.value(p).name] = seeded->graph.value(p).shape;
    for (ValueId p : zero->graph.parameters()) b[zero->graph.value(p).name] = zero->graph.value(p).shape;
    EXPECT_EQ(a, b);
    EXPECT_EQ(zero->tied_parameters.size(), seeded->tied_parameters.size());
    EXPECT_EQ(zero->graph.nodes.size(), seeded->graph.nodes.size());
  }
}

TEST(ZooBuild, TiedAndUntiedHeads) {
  auto names_of = [](const onnx::ModelProto& m) {
    std::set<std::string> names;
    for (const auto& t : m.graph().initializer()) names.insert(t.name());
    return names;
  };
  // The lm head is the last node; which weight it reads (through its Transpose) tells the tie.
  auto head_weight = [](const onnx::ModelProto& m) {
    const auto& g = m.graph();
    const std::string& matmul_in = g.node(g.node_size() - 1).op_type() == "MatMul" ? g.node(g.node_size() - 1).input(1)
                                                                                    : g.node(g.node_size() - 2).input(1);
    for (const auto& n : g.node()) {
      if (n.output(0) == matmul_in) return n.input(0);
    }
    return std::string();
  };
  ModelConfig gpt = *zoo_config("gpt", "gpt-tiny");
  EXPECT_EQ(head_weight(*build_model(gpt, 1, 4, WeightInit::kNone, 0)), "transformer.wte.weight");
  gpt.tie_word_embeddings = false;
  auto gpt_untied = build_model(gpt, 1, 4, WeightInit::kNone, 0);
  ASSERT_TRUE(gpt_untied.has_value());
  EXPECT_TRUE(names_of(*gpt_untied).count("lm_head.weight"));
  EXPECT_EQ(head_weight(*gpt_untied), "lm_head.weight");
  EXPECT_EQ(parameter_count(gpt), parameter_count(*zoo_config("gpt", "gpt-tiny")) + 256 * 64);

  ModelConfig llama = *zoo_config("llama", "llama-tiny");
  EXPECT_EQ(head_weight(*build_model(llama, 1, 4, WeightInit::kNone, 0)), "lm_head.weight");
  llama.tie_word_embeddings = true;
  auto llama_tied = build_model(llama, 1, 4, WeightInit::kNone, 0);
  ASSERT_TRUE(llama_tied.has_value());
  EXPECT_FALSE(names_of(*llama_tied).count("lm_head.weight"));
  EXPECT_EQ(head_weight(*llama_tied), "model.embed_tokens.weight");

  ModelConfig bert = *zoo_config("bert", "bert-tiny");
  EXPECT_EQ(head_weight(*build_model(bert, 1, 4, WeightInit::kNone, 0)), "bert.embeddings.word_embeddings.weight");
  bert.tie_word_embeddings = false;
  auto bert_untied = build_model(bert, 1, 4, WeightInit::kNone, 0);
  ASSERT_TRUE(bert_untied.has_value());
  auto names = names_of(*bert_untied);
  EXPECT_TRUE(names.count("cls.predictions.decoder.weight"));
  EXPECT_TRUE(names.count("cls.predictions.decoder.bias"));
  EXPECT_FALSE(names.count("cls.predictions.bias"));
  EXPECT_EQ(head_weight(*bert_untied), "cls.predictions.decoder.weight");
}

TEST(ZooBuild, SetHfWeightsByNameAndAlias) {
  ModelConfig c = *zoo_config("gpt", "gpt-tiny");
  auto m = build_model(c, 1, 8, WeightInit::kNone, 0);
  ASSERT_TRUE(m.has_value());
  Tensor wte(DType::kFloat32, {256, 64});
  wte.data_as<float>()[5] = 3.0f;
  Tensor bias64(DType::kFloat64, {64});
  bias64.data_as<double>()[1] = 0.5;
  auto n = set_hf_weights(&*m, {{"lm_head.weight", wte},                 // tied alias
                                {"h.0.ln_1.bias", bias64},               // hub checkpoints omit "transformer."
                                {"transformer.h.0.attn.bias", Tensor(DType::kFloat32, {1, 1, 64, 64})}});  // buffer
  ASSERT_TRUE(n.has_value()) << n.status().message();
  EXPECT_EQ(*n, 2);
  EXPECT_EQ(floats_of(*find_initializer(*m, "transformer.wte.weight"))[5], 3.0f);
  EXPECT_EQ(floats_of(*find_initializer(*m, "transformer.h.0.ln_1.bias"))[1], 0.5f);
  auto bad_shape = set_hf_weights(&*m, {{"transformer.wte.weight", Tensor(DType::kFloat32, {64, 256})}});
  ASSERT_FALSE(bad_shape.has_value());
  EXPECT_NE(bad_shape.status().message().find("[256,64]"), std::string::npos) << bad_shape.status().message();
  EXPECT_FALSE(set_hf_weights(&*m, {{"transformer.h.9.ln_1.bias", bias64}}).has_value());
  EXPECT_FALSE(set_hf_weights(&*m, {{"transformer.wte.weight", wte}}, /*require_all=*/true).has_value());
}

// ---- writing ---------------------------------------------------------------------------------------------------------

TEST(ZooWrite, InlineAndExternalData) {
  TempDir dir;
  auto m = build_model(*zoo_config("llama", "llama-tiny"), 2, 8, WeightInit::kHuggingFace, 3);
  ASSERT_TRUE(m.has_value());
  for (int64_t limit : {kInlineWeightLimit, int64_t{0}}) {
    SCOPED_TRACE(limit == 0 ? "external" : "inline");
    const std::string path = dir.file(limit == 0 ? "ext.onnx" : "inline.onnx");
    ASSERT_TRUE(write_model(*m, path, limit).is_ok());
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    EXPECT_EQ(fs::exists(path + ".data"), limit == 0);
    onnx::ModelProto back;
    ASSERT_TRUE(onnx_import::read_model_proto(path, &back).is_ok());
    EXPECT_EQ(back.graph().node_size(), m->graph().node_size());
    ASSERT_EQ(back.graph().initializer_size(), m->graph().initializer_size());
    for (int i = 0; i < back.graph().initializer_size(); ++i) {
      const auto& t = back.graph().initializer(i);
      EXPECT_EQ(t.data_location() == onnx::TensorProto::EXTERNAL, limit == 0);
      auto tensor = onnx_import::tensor_from_proto(t, {dir.file(""), path});
      ASSERT_TRUE(tensor.has_value()) << tensor.status().message();
      const std::string& want = m->graph().initializer(i).raw_data();
      ASSERT_EQ(tensor->nbytes(), want.size());
      EXPECT_EQ(std::memcmp(tensor->data(), want.data(), want.size()), 0) << t.name();
    }
  }
}

// ---- importing and running -------------------------------------------------------------------------------------------

// The importer is still being written: its stub says "not implemented"; skip, naming the blocker, until it lands.
#define SKIP_IF_IMPORTER_MISSING(expected)                                                              \
  if (!(expected).has_value() && (expected).status().message().find("not implemented") != std::string::npos) \
  GTEST_SKIP() << "blocked on the importer: " << (expected).status().message()

TEST(ZooImport, TinyModelsImportWithTwoLayers) {
  for (const char* size : {"gpt-tiny", "llama-tiny", "bert-tiny"}) {
    SCOPED_TRACE(size);
    ModelConfig c = *zoo_config("", size);
    auto imported = build_and_import(c, 2, 16, WeightInit::kHuggingFace, 5);
    SKIP_IF_IMPORTER_MISSING(imported);
    ASSERT_TRUE(imported.has_value()) << imported.status().message();
    const Graph& g = imported->graph;
    EXPECT_EQ(g.num_layers, 2);
    EXPECT_EQ(imported->path, "zoo:" + c.size);
    std::set<std::string> params;
    int64_t n = 0;
    for (ValueId v : g.parameters()) {
      params.insert(g.value(v).name);
      n += shape_numel(g.value(v).shape);
    }
    EXPECT_EQ(n, parameter_count(c));
    for (const ParamSpec& p : parameter_specs(c)) EXPECT_TRUE(params.count(p.name)) << p.name << " is not a parameter";
    int layered = 0;
    for (const Node& node : g.nodes) layered += node.place.kind == Placement::Kind::kLayer;
    EXPECT_GT(layered, 0);
  }
}

// Maps a fixture's ONNX initializers to HF names (meta.json `initializers`), transposing back where flagged.
std::map<std::string, Tensor> fixture_hf_weights(const std::string& name) {
  std::map<std::string, Tensor> out;
  const std::string path = fixture_dir(name) + "/model.onnx";
  onnx::ModelProto proto;
  Status st = onnx_import::read_model_proto(path, &proto);
  EXPECT_TRUE(st.is_ok()) << st.message();
  nlohmann::json meta = nlohmann::json::parse(read_text(fixture_dir(name) + "/meta.json"));
  for (const auto& t : proto.graph().initializer()) {
    if (!meta["initializers"].contains(t.name())) continue;
    const auto& info = meta["initializers"][t.name()];
    auto tensor = onnx_import::tensor_from_proto(t, {fixture_dir(name), path});
    EXPECT_TRUE(tensor.has_value()) << tensor.status().message();
    if (!tensor) continue;
    Tensor w = *tensor;
    if (info["transposed"].get<bool>()) {
      const int64_t R = w.shape()[0], C = w.shape()[1];
      Tensor tr(w.dtype(), {C, R});
      for (int64_t i = 0; i < R; ++i)
        for (int64_t j = 0; j < C; ++j) tr.data_as<float>()[j * R + i] = w.data_as<float>()[i * C + j];
      w = tr;
    }
    out[info["hf"].get<std::string>()] = w;
  }
  return out;
}

class ZooFidelity : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(ZooFidelity, MatchesHfFixtureLogits) {
  const auto& [fixture, size] = GetParam();
  auto ref = read_safetensors(fixture_dir(fixture) + "/reference.safetensors");
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  const Tensor& ids = ref->at("input_ids");
  const Tensor& want = ref->at("logits");
  const int64_t B = ids.shape()[0], S = ids.shape()[1];

  auto model = build_model(*zoo_config("", size), B, S, WeightInit::kNone, 0);
  ASSERT_TRUE(model.has_value()) << model.status().message();
  auto weights = fixture_hf_weights(fixture);
  auto n = set_hf_weights(&*model, weights, /*require_all=*/true);
  ASSERT_TRUE(n.has_value()) << n.status().message();

  if (const char* dump = std::getenv("GV_ZOO_DUMP_DIR")) {
    fs::create_directories(dump);
    ASSERT_TRUE(write_model(*model, std::string(dump) + "/" + size + ".onnx").is_ok());
    const std::string ref_copy = std::string(dump) + "/" + size + ".reference.safetensors";
    std::error_code ec;
    fs::remove(ref_copy, ec);
    fs::copy_file(fixture_dir(fixture) + "/reference.safetensors", ref_copy, ec);
    EXPECT_FALSE(ec) << ec.message();
  }

  ImportOptions io;
  io.batch = B;
  io.seq = S;
  auto imported = import_model_proto(*model, io);
  SKIP_IF_IMPORTER_MISSING(imported);
  ASSERT_TRUE(imported.has_value()) << imported.status().message();
  auto backend = make_cpu_backend();
  auto exec = Executor::create(imported->graph, *backend);
  ASSERT_TRUE(exec.has_value()) << exec.status().message();
  ASSERT_TRUE((*exec)->set_inputs({{"input_ids", ids}}).is_ok());
  Status run = (*exec)->run();
  ASSERT_TRUE(run.is_ok()) << run.message();
  ASSERT_EQ(imported->graph.outputs.size(), 1u);
  auto got = (*exec)->fetch(imported->graph.outputs[0]);
  ASSERT_TRUE(got.has_value()) << got.status().message();
  ASSERT_EQ(got->shape(), want.shape());
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double a = got->scalar_f64(i), b = want.scalar_f64(i);
    max_diff = std::max(max_diff, std::fabs(a - b));
    max_ref = std::max(max_ref, std::fabs(b));
  }
  std::ostringstream err;
  err << max_diff / max_ref;
  RecordProperty("max_relative_error", err.str());
  EXPECT_LE(max_diff / max_ref, 1e-5) << "max |a - b| = " << max_diff << ", max |b| = " << max_ref;
}

INSTANTIATE_TEST_SUITE_P(Zoo, ZooFidelity,
                         ::testing::Values(std::make_pair(std::string("gpt2"), std::string("gpt-tiny")),
                                           std::make_pair(std::string("llama"), std::string("llama-tiny")),
                                           std::make_pair(std::string("bert"), std::string("bert-tiny"))),
                         [](const auto& info) { return info.param.first; });

}  // namespace
}  // namespace gv
