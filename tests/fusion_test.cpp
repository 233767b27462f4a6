// The fusion passes (runtime/fusion.h): on every HF fixture and the zoo's tiny models, one Attention per layer, and
// training with fuse_ops gives the loss and gradients of training without it; hand-built attention chains (scale on
// Q and K, causal Where, constant and run-time masks, identity Dropout, the dynamo SDPA decomposition's 3-D transpose
// of K and NaN guard) fuse into nodes computing the same outputs;
// chains whose intermediates are read elsewhere, or whose mask replaces scores by a moderate value, stay as they are.
#include "runtime/fusion.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "runtime/executor.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"
#include "runtime/training_graph.h"
#include "tests/graph_checks.h"
#include "tests/hf_fixtures.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::relative_gap;

int count_ops(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op;
  return n;
}

// ---- whole models ----------------------------------------------------------------------------------------------

// Every parameter of `plain` has a gradient in `fused` within `tol` (relative).
void expect_gradients_close(const TensorMap& fused, const TensorMap& plain, double tol, const std::string& model) {
  ASSERT_EQ(plain.size(), fused.size());
  for (const auto& [param, g] : plain) {
    ASSERT_TRUE(fused.count(param)) << param;
    EXPECT_LE(relative_gap(fused.at(param), g), tol) << model << ": gradient of " << param;
  }
}

struct Model {
  Graph graph;
  TensorMap batch;
  int64_t padding_idx = -1;
};

Expected<Model> load(const std::string& name) {
  Model m;
  if (name.rfind("zoo:", 0) == 0) {
    GV_ASSIGN_OR_RETURN(ModelConfig cfg, zoo_config("", name.substr(4)));
    GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(cfg, 2, 16, WeightInit::kHuggingFace, 3));
    m.graph = std::move(im.graph);
    std::mt19937_64 rng(5);
    Tensor ids(DType::kInt64, {2, 16}), labels(DType::kInt64, {2, 16});
    for (int64_t i = 0; i < 32; ++i) {
      ids.data_as<int64_t>()[i] = static_cast<int64_t>(rng() % cfg.vocab_size);
      labels.data_as<int64_t>()[i] = static_cast<int64_t>(rng() % cfg.vocab_size);
    }
    m.batch = {{"input_ids", ids}, {"labels", labels}};
    return m;
  }
  ImportOptions io;
  io.batch = 2;
  io.seq = 32;
  GV_ASSIGN_OR_RETURN(ImportedModel im, import_onnx(testing::fixture_dir(name) + "/model.onnx", io));
  m.graph = std::move(im.graph);
  GV_ASSIGN_OR_RETURN(TensorMap ref, read_safetensors(testing::fixture_dir(name) + "/reference.safetensors"));
  m.batch = {{"input_ids", ref.at("input_ids")}, {"labels", ref.at("labels")}};
  const nlohmann::json pad = testing::read_meta(name)["config"]["pad_token_id"];
  if (pad.is_number_integer()) m.padding_idx = pad.get<int64_t>();
  return m;
}

class ModelFusion : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelFusion, OneAttentionPerLayerAndTheSameGradients) {
  auto model = load(GetParam());
  ASSERT_TRUE(model.has_value()) << model.status().message();
  const int layers = model->graph.num_layers;
  ASSERT_GT(layers, 0);
  {
    Graph g = model->graph;
    const int softmax_before = count_ops(g, "Softmax");
    auto counts = fuse_forward_graph(g);
    ASSERT_TRUE(counts.has_value()) << counts.status().message();
    EXPECT_EQ(counts->attention, layers) << counts->summary();
    EXPECT_EQ(count_ops(g, "Attention"), layers);
    EXPECT_EQ(count_ops(g, "Softmax"), softmax_before - layers);
    for (const Node& n : g.nodes) {
      if (n.op_type == "Attention") {
        EXPECT_EQ(n.place.kind, Placement::Kind::kLayer) << n.name;
      }
    }
    // Heads split by Reshape + Transpose go to the 3-D form, so no Transpose touches an Attention node; Llama's rotary
    // embeddings (fused first) move into the 3-D form with their attention.
    EXPECT_EQ(counts->attention_3d, layers) << counts->summary();
    for (const Node& n : g.nodes) {
      if (n.op_type != "Transpose") continue;
      for (const Node& m : g.nodes) {
        if (m.op_type != "Attention" && m.op_type != "RotaryEmbedding") continue;
        for (ValueId in : m.inputs) EXPECT_NE(in, n.outputs[0]) << n.name << " feeds " << m.name;
        EXPECT_NE(n.inputs[0], m.outputs[0]) << m.name << " feeds " << n.name;
      }
    }
  }
  auto backend = make_cpu_backend();
  auto run = [&](bool fuse, double* loss, bool lse = false, bool checkpoint = false) -> Expected<TensorMap> {
    TrainerConfig cfg;
    cfg.graph.fuse_ops = fuse;
    cfg.graph.save_attention_lse = lse;
    if (checkpoint) {
      for (int l = 0; l < layers; ++l) cfg.graph.checkpoint_layers.insert(l);
    }
    cfg.graph.padding_idx = model->padding_idx;
    GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(model->graph, cfg, *backend));
    EXPECT_EQ(trainer->training_graph().fused.attention, fuse ? layers : 0);
    // The language models' bias-free heads fuse with the loss (gpt2_loss's own loss too); BERT's MLM head has a bias.
    const bool lm_head = GetParam().find("bert") == std::string::npos;
    EXPECT_EQ(trainer->training_graph().fused.linear_cross_entropy, fuse && lm_head ? 1 : 0) << GetParam();
    // The fused node returns the gradients for dLoss = 1 itself: no LinearCrossEntropyGrad recomputes the logits.
    for (const Node& n : trainer->training_graph().graph.nodes) {
      if (n.op_type == "LinearCrossEntropy") {
        EXPECT_EQ(n.outputs.size(), 3u);
      }
    }
    EXPECT_EQ(count_ops(trainer->training_graph().graph, "LinearCrossEntropyGrad"), 0);
    // Masked attention (BERT's padding mask) keeps the plain op; the others all keep their LSE when asked (a
    // checkpointed layer also has the recomputing copy).
    const int lse_nodes = count_ops(trainer->training_graph().graph, "AttentionWithLse");
    const int copies = checkpoint ? 2 : 1;
    EXPECT_EQ(trainer->training_graph().fused.attention_lse * copies, lse_nodes);
    if (!lse) {
      EXPECT_EQ(lse_nodes, 0);
    } else if (GetParam().find("bert") == std::string::npos) {
      EXPECT_EQ(lse_nodes, layers * copies) << GetParam();
    }
    return trainer->compute_gradients(model->batch, loss);
  };
  double loss_plain = 0, loss_fused = 0;
  auto plain = run(false, &loss_plain);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto fused = run(true, &loss_fused);
  ASSERT_TRUE(fused.has_value()) << fused.status().message();
  {
    // Attention nodes keeping their LSE for the backward (what the CUDA backend asks for in bf16): the same loss and
    // gradients, bit for bit on the CPU (its AttentionGrad recomputes the statistics either way).
    double loss_lse = 0;
    auto with_lse = run(true, &loss_lse, true);
    ASSERT_TRUE(with_lse.has_value()) << with_lse.status().message();
    EXPECT_EQ(loss_lse, loss_fused);
    for (const auto& [name, g] : *fused) {
      ASSERT_TRUE(with_lse->count(name)) << name;
      EXPECT_EQ(std::memcmp(g.data(), with_lse->at(name).data(), g.nbytes()), 0) << GetParam() << ": " << name;
    }
    // With every layer checkpointed, the recomputed AttentionWithLse feeds the backward its Y and LSE.
    double loss_ckpt = 0;
    auto ckpt = run(true, &loss_ckpt, true, true);
    ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
    EXPECT_EQ(loss_ckpt, loss_fused);
    for (const auto& [name, g] : *fused) {
      ASSERT_TRUE(ckpt->count(name)) << name;
      ASSERT_EQ(ckpt->at(name).shape(), g.shape()) << name;
      EXPECT_LE(relative_gap(ckpt->at(name), g), 1e-6) << GetParam() << ": checkpointed " << name;
    }
  }
  EXPECT_NEAR(loss_fused, loss_plain, 1e-5 * std::fabs(loss_plain));
  ASSERT_EQ(plain->size(), fused->size());
  for (const auto& [name, g] : *plain) {
    ASSERT_TRUE(fused->count(name)) << name;
    const Tensor& f = fused->at(name);
    ASSERT_EQ(f.shape(), g.shape()) << name;
    EXPECT_LE(relative_gap(f, g), 1e-5) << GetParam() << ": gradient of " << name;
  }
}

// fuse_linear (the CUDA backend's cuBLASLt epilogues): products with their bias Add and Gelu, and products of a
// Transpose'd weight, become galvatron Linear; the loss and gradients stay those of the unfused graph.
TEST_P(ModelFusion, LinearFusionSameGradients) {
  auto model = load(GetParam());
  ASSERT_TRUE(model.has_value()) << model.status().message();
  const int layers = model->graph.num_layers;
  auto backend = make_cpu_backend();
  int linear = 0, gelu_left = 0, linear_gelu = 0;
  auto run = [&](bool fuse_linear, double* loss) -> Expected<TensorMap> {
    TrainerConfig cfg;
    cfg.graph.fuse_linear = fuse_linear;
    cfg.graph.padding_idx = model->padding_idx;
    GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(model->graph, cfg, *backend));
    const Graph& g = trainer->training_graph().graph;
    if (fuse_linear) {
      linear = count_ops(g, "Linear");
      gelu_left = count_ops(g, "Gelu");
      for (const Node& n : g.nodes) {
        if (n.op_type == "Linear" && n.attrs.get_string("activation", "none") != "none") ++linear_gelu;
      }
      EXPECT_EQ(trainer->training_graph().fused.linear, linear);
    }
    return trainer->compute_gradients(model->batch, loss);
  };
  double loss_plain = 0, loss_fused = 0;
  auto plain = run(false, &loss_plain);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto fused = run(true, &loss_fused);
  ASSERT_TRUE(fused.has_value()) << fused.status().message();
  const std::string name = GetParam();
  if (name.find("gpt") != std::string::npos) {
    // c_attn, attention c_proj, c_fc with its GELU, mlp c_proj: four per layer, every GELU taken.
    EXPECT_EQ(linear, 4 * layers) << name;
    EXPECT_EQ(linear_gelu, layers) << name;
    EXPECT_EQ(gelu_left, 0) << name;
  } else if (name.rfind("zoo:", 0) == 0) {
    EXPECT_GE(linear, 4 * layers) << name;  // the zoo's nn.Linear weights are read through a Transpose
  }
  EXPECT_NEAR(loss_fused, loss_plain, 1e-5 * std::fabs(loss_plain));
  expect_gradients_close(*fused, *plain, 1e-5, name);
}

// fuse_gelu_grad_products (the CUDA backend's DGELU_BGRAD epilogue), on a graph with Linear and shared bf16 operands
// as the CUDA backend builds it in bf16: each tanh-GELU layer's backward product, GeluGrad, bf16 copy and bias sum
// become one GeluGradMatMul; the loss and gradients equal those of the unfused graph (the bf16 copy of dP is the same
// rounding of the same float32 values; the bias sums differ in order only), also with every layer checkpointed (the
// pre-activation then recomputed after the product it used to follow).
TEST_P(ModelFusion, GeluGradProductSameGradients) {
  auto model = load(GetParam());
  ASSERT_TRUE(model.has_value()) << model.status().message();
  const int layers = model->graph.num_layers;
  auto backend = make_cpu_backend();
  auto run = [&](bool fuse, bool checkpoint, double* loss, int* fused) -> Expected<TensorMap> {
    TrainerConfig cfg;
    cfg.graph.fuse_linear = true;
    cfg.graph.bf16_operands = true;
    cfg.graph.bf16_operand_options.min_mn = 1;
    cfg.graph.fuse_gelu_grad_product = fuse;
    if (checkpoint) {
      for (int l = 0; l < layers; ++l) cfg.graph.checkpoint_layers.insert(l);
    }
    cfg.graph.padding_idx = model->padding_idx;
    GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(model->graph, cfg, *backend));
    const Graph& g = trainer->training_graph().graph;
    *fused = trainer->training_graph().fused.gelu_grad_products;
    EXPECT_EQ(count_ops(g, "GeluGradMatMul"), *fused);
    if (fuse && *fused > 0) {
      for (const Node& n : g.nodes) {
        if (n.op_type != "GeluGradMatMul") continue;
        EXPECT_EQ(n.attrs.get_int("out_dtype", 0), 16) << n.name;  // it writes the shared bf16 copy
        EXPECT_EQ(n.outputs.size(), 2u) << n.name;                  // and the bias gradient
      }
    }
    return trainer->compute_gradients(model->batch, loss);
  };
  const std::string name = GetParam();
  for (bool checkpoint : {false, true}) {
    SCOPED_TRACE(checkpoint ? "checkpointed" : "plain");
    double loss_plain = 0, loss_fused = 0;
    int fused_plain = -1, fused = -1;
    auto plain = run(false, checkpoint, &loss_plain, &fused_plain);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    auto with = run(true, checkpoint, &loss_fused, &fused);
    ASSERT_TRUE(with.has_value()) << with.status().message();
    EXPECT_EQ(fused_plain, 0);
    // GPT-2's gelu_new and the zoo gpt's tanh GELU: one per layer; BERT's erf GELU too (the CPU and the fallback
    // take it; the GPU epilogue only the tanh form); Llama has no GELU.
    EXPECT_EQ(fused, name.find("llama") != std::string::npos ? 0 : layers) << name;
    EXPECT_EQ(loss_fused, loss_plain);
    expect_gradients_close(*with, *plain, 1e-5, name);
  }
}

// fuse_sibling_linears (runtime/fuse_sibling_linears.cpp), on graphs with Linear nodes as the CUDA backend builds
// them: the grouped-query Llama models' K and V products (N = 32 against K = 64) become one Linear and a Split per
// layer; GPT's packed QKV and BERT's full-width Q, K, V stay alone. The loss and gradients equal the unfused graph's
// (the same products over the same operands, in one call).
TEST_P(ModelFusion, SiblingLinearsSameGradients) {
  auto model = load(GetParam());
  ASSERT_TRUE(model.has_value()) << model.status().message();
  const int layers = model->graph.num_layers;
  auto backend = make_cpu_backend();
  auto run = [&](bool fuse, double* loss, int* fused) -> Expected<TensorMap> {
    TrainerConfig cfg;
    cfg.graph.fuse_linear = true;
    cfg.graph.fuse_sibling_linears = fuse;
    cfg.graph.padding_idx = model->padding_idx;
    GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(model->graph, cfg, *backend));
    const Graph& g = trainer->training_graph().graph;
    *fused = trainer->training_graph().fused.sibling_linears;
    int joint = 0;
    for (const Node& n : g.nodes) {
      if (n.op_type != "Linear" || n.name.find("/siblings") == std::string::npos) continue;
      ++joint;
      int splits = 0;
      for (const Node& m : g.nodes) {
        if (m.inputs.empty() || m.inputs[0] != n.outputs[0]) continue;
        EXPECT_EQ(m.op_type, "Split") << n.name;
        EXPECT_EQ(m.outputs.size(), 2u) << n.name;  // K and V
        ++splits;
      }
      EXPECT_EQ(splits, 1) << n.name;
    }
    EXPECT_EQ(joint, *fused);
    return trainer->compute_gradients(model->batch, loss);
  };
  const std::string name = GetParam();
  double loss_plain = 0, loss_fused = 0;
  int fused_plain = -1, fused = -1;
  auto plain = run(false, &loss_plain, &fused_plain);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto with = run(true, &loss_fused, &fused);
  ASSERT_TRUE(with.has_value()) << with.status().message();
  EXPECT_EQ(fused_plain, 0);
  EXPECT_EQ(fused, name.find("llama") != std::string::npos ? layers : 0) << name;
  EXPECT_NEAR(loss_fused, loss_plain, 1e-6 * std::fabs(loss_plain));
  expect_gradients_close(*with, *plain, 1e-5, name);
}

// bf16_residual_stream (runtime/bf16_residual_stream.cpp) on the imported HF exports and the zoo's models, with the
// CUDA backend's bf16 options: every layer's two residual Sums go bf16 (BERT's post-norm Sums too; opset 14's
// decomposed LayerNorms have none), and the loss and
// gradients stay within bf16 rounding of the float32 stream's (5e-3 relative loss, 2e-2 relative L2 gradients).
TEST_P(ModelFusion, Bf16ResidualStreamWithinRounding) {
  auto model = load(GetParam());
  ASSERT_TRUE(model.has_value()) << model.status().message();
  const int layers = model->graph.num_layers;
  auto backend = make_cpu_backend();
  auto run = [&](bool on, double* loss, int* sums) -> Expected<TensorMap> {
    TrainerConfig cfg = testing::cuda_bf16_stream_config(on);
    cfg.graph.padding_idx = model->padding_idx;
    GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(model->graph, cfg, *backend));
    const Graph& g = trainer->training_graph().graph;
    *sums = 0;
    for (const Node& n : g.nodes) {
      if (n.op_type == "SkipLayerNormalization" || n.op_type == "SkipRMSNormalization") {
        *sums += g.value(n.outputs.back()).dtype == DType::kBFloat16;
      }
    }
    testing::expect_inference_agrees(g);
    return trainer->compute_gradients(model->batch, loss);
  };
  const std::string name = GetParam();
  double loss_plain = 0, loss_on = 0;
  int sums_plain = -1, sums_on = -1;
  auto plain = run(false, &loss_plain, &sums_plain);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto on = run(true, &loss_on, &sums_on);
  ASSERT_TRUE(on.has_value()) << on.status().message();
  EXPECT_EQ(sums_plain, 0);
  // bert_opset14's LayerNorms are opset-14 chains of elementwise ops: no skip norms, nothing to keep in bf16.
  EXPECT_EQ(sums_on, name == "bert_opset14" ? 0 : 2 * layers) << name;
  EXPECT_NEAR(loss_on, loss_plain, 5e-3 * std::fabs(loss_plain)) << name;
  testing::expect_gradients_close(*plain, *on, 2e-2, name);
}

// pack_attention_qkv (the CUDA flash kernels' packed heads): Split(QKV) -> AttentionWithLse becomes AttentionPacked
// on the GPT models (one fused QKV product per layer), not on Llama's or BERT's separate projections; the loss and
// gradients are bit-identical to the split graph's on the CPU.
TEST_P(ModelFusion, PackedQkvSameGradients) {
  auto model = load(GetParam());
  ASSERT_TRUE(model.has_value()) << model.status().message();
  const int layers = model->graph.num_layers;
  auto backend = make_cpu_backend();
  int packed = 0, splits = -1, concats = -1, splits_before = -1;
  auto run = [&](bool pack, double* loss) -> Expected<TensorMap> {
    TrainerConfig cfg;
    cfg.graph.save_attention_lse = true;
    cfg.graph.pack_attention_qkv = pack;
    cfg.graph.padding_idx = model->padding_idx;
    GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(model->graph, cfg, *backend));
    const Graph& g = trainer->training_graph().graph;
    if (pack) {
      packed = trainer->training_graph().fused.attention_packed;
      EXPECT_EQ(count_ops(g, "AttentionPacked"), packed);
      EXPECT_EQ(count_ops(g, "AttentionPackedGrad"), packed);
      splits = count_ops(g, "Split");
      concats = count_ops(g, "Concat");
    } else {
      splits_before = count_ops(g, "Split");
    }
    return trainer->compute_gradients(model->batch, loss);
  };
  double loss_split = 0, loss_packed = 0;
  auto split = run(false, &loss_split);
  ASSERT_TRUE(split.has_value()) << split.status().message();
  auto packed_grads = run(true, &loss_packed);
  ASSERT_TRUE(packed_grads.has_value()) << packed_grads.status().message();
  const std::string name = GetParam();
  if (name.find("gpt") != std::string::npos) {
    EXPECT_EQ(packed, layers) << name;
    EXPECT_EQ(splits, splits_before - layers) << name;
  } else {
    EXPECT_EQ(packed, 0) << name;
  }
  EXPECT_EQ(loss_packed, loss_split);
  for (const auto& [param, g] : *split) {
    ASSERT_TRUE(packed_grads->count(param)) << param;
    EXPECT_EQ(std::memcmp(g.data(), packed_grads->at(param).data(), g.nbytes()), 0) << name << ": " << param;
  }
  (void)concats;
}

// GPT-2's and Llama's exports (HF fixtures, either attention, either exporter) reach the CUDA backend's graph as the
// zoo's do: GPT-2's Conv1D products (Gemm between flattening reshapes) unflattened, then every product a Linear
// (Llama's weights stored transposed by the dynamo exporter too), both residual adds of each layer in a Linear
// epilogue and moved into the following norm, attention in the 3-D form (GPT's packed).
TEST_P(ModelFusion, ExportsGetTheZoosFusions) {
  const std::string name = GetParam();
  const bool gpt = name.find("gpt") != std::string::npos, llama = name.find("llama") != std::string::npos;
  if (!gpt && !llama) GTEST_SKIP() << "GPT and Llama graphs only";
  auto model = load(name);
  ASSERT_TRUE(model.has_value()) << model.status().message();
  const int layers = model->graph.num_layers;
  TrainingGraphOptions go;
  go.padding_idx = model->padding_idx;
  go.save_attention_lse = go.bf16_operands = go.fuse_linear = go.pack_attention_qkv = true;
  go.bf16_operand_options.min_mn = 8;
  go.fuse_residual_add = true;
  go.fuse_skip_norm = 16;
  auto tg = build_training_graph(model->graph, go);
  ASSERT_TRUE(tg.has_value()) << tg.status().message();
  const FusionCounts& f = tg->fused;
  EXPECT_EQ(f.unflattened_gemms, gpt && name.rfind("zoo:", 0) != 0 ? 4 * layers : 0) << f.summary();
  EXPECT_EQ(f.linear, (gpt ? 4 : 7) * layers) << f.summary();
  EXPECT_EQ(f.attention_3d, layers) << f.summary();
  EXPECT_EQ(f.attention_packed, gpt ? layers : 0) << f.summary();
  EXPECT_EQ(f.residual_adds, 2 * layers) << f.summary();
  EXPECT_EQ(f.skip_norms, 2 * layers) << f.summary();
  EXPECT_EQ(count_ops(tg->graph, "Gemm"), 0);
}

std::vector<std::string> model_names() {
  std::vector<std::string> n = testing::kHfFixtures;
  for (const char* z : {"zoo:gpt-tiny", "zoo:llama-tiny", "zoo:bert-tiny"}) n.push_back(z);
  return n;
}

INSTANTIATE_TEST_SUITE_P(Models, ModelFusion, ::testing::ValuesIn(model_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           for (char& c : s) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return s;
                         });

// ---- hand-built chains -----------------------------------------------------------------------------------------

constexpr int64_t B = 2, H = 4, S = 6, D = 8;

Tensor randn(const Shape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Tensor t(DType::kFloat32, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = d(rng);
  return t;
}

struct Builder {
  Graph g;
  Builder() { g.opsets[""] = 20; }
  ValueId node(const std::string& op, std::vector<ValueId> in, Attributes a = {}) {
    Node n;
    n.op_type = op;
    n.opset = 20;
    n.name = g.unique_name(op);
    n.inputs = std::move(in);
    n.attrs = std::move(a);
    n.place = {Placement::Kind::kLayer, 0};
    auto r = g.add_node(std::move(n));
    EXPECT_TRUE(r.has_value()) << r.status().message();
    return r ? (*r)[0] : kNoValue;
  }
  ValueId constant(Tensor t) { return g.add_initializer(g.unique_name("c"), std::move(t), ValueKind::kConstant); }
  ValueId scalar(float v) { return constant(Tensor::scalar(DType::kFloat32, v)); }
  ValueId transpose(ValueId x, std::vector<int64_t> perm) {
    Attributes a;
    a.set_ints("perm", perm);
    return node("Transpose", {x}, a);
  }
};

// q [B,H,S,D], k as [B,H,S,D] transposed to Kt, v [B,H,S,D] (graph inputs).
struct Chain {
  Builder b;
  ValueId q, k, v, kt;
  Chain() {
    q = b.g.add_input("q", DType::kFloat32, {B, H, S, D});
    k = b.g.add_input("k", DType::kFloat32, {B, H, S, D});
    v = b.g.add_input("v", DType::kFloat32, {B, H, S, D});
    kt = b.transpose(k, {0, 1, 3, 2});
  }
};

std::map<std::string, Tensor> feeds(const Graph& g) {
  std::map<std::string, Tensor> f;
  uint64_t seed = 11;
  for (ValueId in : g.inputs) f[g.value(in).name] = randn(g.value(in).shape, seed++);
  return f;
}

std::vector<Tensor> run(const Graph& g) {
  auto backend = make_cpu_backend();
  auto ex = Executor::create(g, *backend);
  EXPECT_TRUE(ex.has_value()) << ex.status().message();
  if (!ex) return {};
  EXPECT_TRUE((*ex)->set_inputs(feeds(g)).is_ok());
  EXPECT_TRUE((*ex)->run().is_ok());
  std::vector<Tensor> out;
  for (ValueId o : g.outputs) out.push_back(*(*ex)->fetch(o));
  return out;
}

// Fuses a copy of `g`; checks the count and that every output is unchanged (NaN where the original had NaN).
Graph fuse_and_compare(const Graph& g, int expected) {
  Graph f = g;
  int fused = 0;
  EXPECT_TRUE(fuse_attention(f, &fused).is_ok());
  EXPECT_EQ(fused, expected);
  const std::vector<Tensor> a = run(g), b = run(f);
  EXPECT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    EXPECT_EQ(a[i].shape(), b[i].shape());
    if (a[i].shape() != b[i].shape()) continue;
    for (int64_t j = 0; j < a[i].numel(); ++j) {
      const float x = a[i].data_as<float>()[j], y = b[i].data_as<float>()[j];
      if (std::isnan(x)) continue;
      EXPECT_NEAR(x, y, 1e-5f) << "output " << i << " element " << j;
    }
  }
  return f;
}

Tensor causal_bool() {
  Tensor t(DType::kBool, {1, 1, S, S});
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = 0; j < S; ++j) t.data_as<uint8_t>()[i * S + j] = j <= i;
  return t;
}

const Node* find_op(const Graph& g, const std::string& op) {
  for (const Node& n : g.nodes)
    if (n.op_type == op) return &n;
  return nullptr;
}

TEST(FuseAttention, CausalWhereDivAndDropoutBecomeIsCausal) {
  Chain c;
  Builder& b = c.b;
  ValueId s = b.node("MatMul", {c.q, c.kt});
  s = b.node("Div", {s, b.scalar(std::sqrt(static_cast<float>(D)))});
  s = b.node("Where", {b.constant(causal_bool()), s, b.scalar(-std::numeric_limits<float>::infinity())});
  ValueId p = b.node("Softmax", {s});
  p = b.node("Dropout", {p});
  b.g.outputs = {b.node("MatMul", {p, c.v})};
  Graph f = fuse_and_compare(b.g, 1);
  const Node* a = find_op(f, "Attention");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->attrs.get_int("is_causal", 0), 1);
  EXPECT_FLOAT_EQ(a->attrs.get_float("scale", 0), 1.0f / std::sqrt(static_cast<float>(D)));
  EXPECT_EQ(a->inputs.size(), 3u);
  EXPECT_EQ(a->inputs[1], f.find("k"));  // the two transposes cancel: K read directly
  EXPECT_EQ(f.nodes.size(), 1u);         // everything else removed
  EXPECT_EQ(a->place.kind, Placement::Kind::kLayer);
}

TEST(FuseAttention, SqrtScaleOnBothSidesAndConstantMask) {
  Chain c;
  Builder& b = c.b;
  const float r = 1.0f / std::sqrt(std::sqrt(static_cast<float>(D)));
  ValueId qs = b.node("Mul", {c.q, b.scalar(r)});
  ValueId ks = b.node("Mul", {b.scalar(r), c.kt});
  ValueId s = b.node("MatMul", {qs, ks});
  Tensor mask(DType::kFloat32, {B, 1, 1, S});  // padding: the last key of batch 1, finfo.min
  for (int64_t i = 0; i < mask.numel(); ++i) mask.data_as<float>()[i] = 0.0f;
  mask.data_as<float>()[2 * S - 1] = std::numeric_limits<float>::lowest();
  s = b.node("Add", {s, b.constant(mask)});
  b.g.outputs = {b.node("MatMul", {b.node("Softmax", {s}), c.v})};
  Graph f = fuse_and_compare(b.g, 1);
  const Node* a = find_op(f, "Attention");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->attrs.get_int("is_causal", 1), 0);
  EXPECT_NEAR(a->attrs.get_float("scale", 0), 1.0f / std::sqrt(static_cast<float>(D)), 1e-7);
  ASSERT_EQ(a->inputs.size(), 4u);
  EXPECT_EQ(f.value(a->inputs[3]).shape, (Shape{B, 1, 1, S}));
  EXPECT_EQ(count_ops(f, "Mul"), 0);
}

// Two layers adding one constant mask read it as it is; a mask scaled after it is added becomes a new constant.
TEST(FuseAttention, ConstantMaskSharedOrScaled) {
  Chain c;
  Builder& b = c.b;
  Tensor mask = randn({1, 1, S, S}, 3);
  mask.data_as<float>()[1] = -std::numeric_limits<float>::infinity();
  const ValueId m = b.constant(mask);
  ValueId s1 = b.node("Add", {b.node("Mul", {b.node("MatMul", {c.q, c.kt}), b.scalar(0.25f)}), m});
  ValueId y1 = b.node("MatMul", {b.node("Softmax", {s1}), c.v});
  ValueId s2 = b.node("Add", {b.node("MatMul", {c.q, c.kt}), m});
  s2 = b.node("Mul", {s2, b.scalar(0.5f)});
  ValueId y2 = b.node("MatMul", {b.node("Softmax", {s2}), c.v});
  b.g.outputs = {y1, y2};
  Graph f = fuse_and_compare(b.g, 2);
  std::vector<const Node*> att;
  for (const Node& n : f.nodes)
    if (n.op_type == "Attention") att.push_back(&n);
  ASSERT_EQ(att.size(), 2u);
  ASSERT_EQ(att[0]->inputs.size(), 4u);
  ASSERT_EQ(att[1]->inputs.size(), 4u);
  EXPECT_EQ(f.value(att[0]->inputs[3]).name, b.g.value(m).name);  // as it is
  EXPECT_NE(f.value(att[1]->inputs[3]).name, b.g.value(m).name);  // scaled by 0.5: a new constant
  EXPECT_FLOAT_EQ(att[1]->attrs.get_float("scale", 0), 0.5f);
}

TEST(FuseAttention, RuntimeMaskAndCausalTogether) {
  Chain c;
  Builder& b = c.b;
  ValueId pad = b.g.add_input("pad", DType::kFloat32, {B, 1, 1, S});
  ValueId s = b.node("Mul", {b.node("MatMul", {c.q, c.kt}), b.scalar(0.3f)});
  Tensor causal(DType::kFloat32, {S, S});
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = 0; j < S; ++j) causal.data_as<float>()[i * S + j] = j <= i ? 0.0f : std::numeric_limits<float>::lowest();
  s = b.node("Add", {b.constant(causal), s});
  s = b.node("Add", {s, pad});
  b.g.outputs = {b.node("MatMul", {b.node("Softmax", {s}), c.v})};
  Graph f = fuse_and_compare(b.g, 1);
  const Node* a = find_op(f, "Attention");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->attrs.get_int("is_causal", 0), 1);
  ASSERT_EQ(a->inputs.size(), 4u);
  EXPECT_EQ(a->inputs[3], f.find("pad"));
}

// HF's repeat_kv: [B, kv, S, D] -> Unsqueeze(2) -> Expand [B, kv, H / kv, S, D] -> Reshape [B, H, S, D].
ValueId gqa_repeat(Builder& b, ValueId x, int64_t kv) {
  ValueId u = b.node("Unsqueeze", {x, b.constant(Tensor::from_i64({2}, {1}))});
  ValueId e = b.node("Expand", {u, b.constant(Tensor::from_i64({B, kv, H / kv, S, D}, {5}))});
  return b.node("Reshape", {e, b.constant(Tensor::from_i64({B, H, S, D}, {4}))});
}

// The whole chain is one Attention reading the graph inputs k and v (the grouped-query repeats skipped).
void expect_one_attention_on_kv_heads(const Graph& f) {
  const Node* a = find_op(f, "Attention");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->inputs[1], f.find("k"));
  EXPECT_EQ(a->inputs[2], f.find("v"));
  EXPECT_EQ(f.nodes.size(), 1u);
}

TEST(FuseAttention, GroupedQueryRepeatIsSkipped) {
  Builder b;
  const int64_t kv = 2;
  ValueId q = b.g.add_input("q", DType::kFloat32, {B, H, S, D});
  ValueId k = b.g.add_input("k", DType::kFloat32, {B, kv, S, D});
  ValueId v = b.g.add_input("v", DType::kFloat32, {B, kv, S, D});
  auto repeat = [&](ValueId x) { return gqa_repeat(b, x, kv); };
  ValueId s = b.node("MatMul", {q, b.transpose(repeat(k), {0, 1, 3, 2})});
  s = b.node("Mul", {s, b.scalar(0.25f)});
  b.g.outputs = {b.node("MatMul", {b.node("Softmax", {s}), repeat(v)})};
  expect_one_attention_on_kv_heads(fuse_and_compare(b.g, 1));
}

TEST(FuseAttention, ProbabilitiesAlsoAnOutputAreNotFused) {
  Chain c;
  Builder& b = c.b;
  ValueId s = b.node("Mul", {b.node("MatMul", {c.q, c.kt}), b.scalar(0.25f)});
  ValueId p = b.node("Softmax", {s});
  b.g.outputs = {b.node("MatMul", {p, c.v}), p};
  const size_t before = b.g.nodes.size();
  Graph f = fuse_and_compare(b.g, 0);
  EXPECT_EQ(f.nodes.size(), before);
  EXPECT_EQ(count_ops(f, "Attention"), 0);
}

TEST(FuseAttention, ScoresReadElsewhereAreNotFused) {
  Chain c;
  Builder& b = c.b;
  ValueId s = b.node("MatMul", {c.q, c.kt});
  ValueId p = b.node("Softmax", {b.node("Mul", {s, b.scalar(0.25f)})});
  b.g.outputs = {b.node("MatMul", {p, c.v}), b.node("ReduceSum", {s})};
  fuse_and_compare(b.g, 0);
}

TEST(FuseAttention, ModerateWhereFillIsNotFused) {
  Chain c;
  Builder& b = c.b;
  ValueId s = b.node("MatMul", {c.q, c.kt});
  s = b.node("Where", {b.constant(causal_bool()), s, b.scalar(-10000.0f)});
  b.g.outputs = {b.node("MatMul", {b.node("Softmax", {s}), c.v})};
  fuse_and_compare(b.g, 0);
}

TEST(FuseAttention, LiveDropoutIsNotFused) {
  Chain c;
  Builder& b = c.b;
  Tensor on(DType::kBool, {});
  on.data_as<uint8_t>()[0] = 1;
  ValueId p = b.node("Softmax", {b.node("MatMul", {c.q, c.kt})});
  p = b.node("Dropout", {p, b.scalar(0.1f), b.constant(on)});
  b.g.outputs = {b.node("MatMul", {p, c.v})};
  Graph f = b.g;
  int fused = 0;
  ASSERT_TRUE(fuse_attention(f, &fused).is_ok());
  EXPECT_EQ(fused, 0);
}

// torch.onnx dynamo's decomposition of scaled_dot_product_attention: sqrt(scale) on Q and on Kt, Kt made in 3-D
// (Reshape [B*H, L, D], Transpose (0, 2, 1), Reshape [B, H, D, L]), a mask added, and Where(IsNaN(P), 0, P) after the
// Softmax.
struct SdpaChain {
  Builder b;
  ValueId q, k, v;
  SdpaChain(int64_t kv_heads = H) {
    q = b.g.add_input("q", DType::kFloat32, {B, H, S, D});
    k = b.g.add_input("k", DType::kFloat32, {B, kv_heads, S, D});
    v = b.g.add_input("v", DType::kFloat32, {B, kv_heads, S, D});
  }
  ValueId kt_3d(ValueId x) {
    ValueId r = b.node("Reshape", {x, b.constant(Tensor::from_i64({B * H, S, D}, {3}))});
    ValueId t = b.transpose(r, {0, 2, 1});
    return b.node("Reshape", {t, b.constant(Tensor::from_i64({B, H, D, S}, {4}))});
  }
  // Scores of q and kt plus `mask` (a value), softmax, NaN guard, product with `values`.
  ValueId attend(ValueId kt, ValueId mask, ValueId values) {
    const float r = 1.0f / std::sqrt(std::sqrt(static_cast<float>(D)));
    ValueId s = b.node("MatMul", {b.node("Mul", {q, b.scalar(r)}), b.node("Mul", {kt, b.scalar(r)})});
    s = b.node("Add", {s, mask});
    ValueId p = b.node("Softmax", {s});
    ValueId guarded = b.node("Where", {b.node("IsNaN", {p}), b.scalar(0.0f), p});
    return b.node("MatMul", {guarded, values});
  }
};

Tensor additive_causal(float fill) {
  Tensor t(DType::kFloat32, {1, 1, S, S});
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = 0; j < S; ++j) t.data_as<float>()[i * S + j] = j <= i ? 0.0f : fill;
  return t;
}

TEST(FuseAttention, DynamoSdpaDecompositionWithNanGuard) {
  SdpaChain c;
  Builder& b = c.b;
  const float inf = std::numeric_limits<float>::infinity();
  b.g.outputs = {c.attend(c.kt_3d(c.k), b.constant(additive_causal(-inf)), c.v)};
  Graph f = fuse_and_compare(b.g, 1);
  const Node* a = find_op(f, "Attention");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->attrs.get_int("is_causal", 0), 1);
  EXPECT_NEAR(a->attrs.get_float("scale", 0), 1.0f / std::sqrt(static_cast<float>(D)), 1e-7);
  EXPECT_EQ(a->inputs.size(), 3u);
  EXPECT_EQ(a->inputs[1], f.find("k"));  // the 3-D transpose undone: K read directly
  EXPECT_EQ(f.nodes.size(), 1u);         // the reshapes, transpose, scales, guard and mask all gone
}

TEST(FuseAttention, DynamoSdpaWithGroupedQueryRepeat) {
  const int64_t kv = 2;
  SdpaChain c(kv);
  Builder& b = c.b;
  auto repeat = [&](ValueId x) { return gqa_repeat(b, x, kv); };
  b.g.outputs = {
      c.attend(c.kt_3d(repeat(c.k)), b.constant(additive_causal(std::numeric_limits<float>::lowest())), repeat(c.v))};
  expect_one_attention_on_kv_heads(fuse_and_compare(b.g, 1));
}

TEST(FuseAttention, NanGuardOverAFullyMaskedRowIsNotFused) {
  // Row 0 of batch 1 masks every key with -inf: the Softmax gives NaN there and the guard zeroes it, which the
  // Attention node would not do.
  SdpaChain c;
  Builder& b = c.b;
  Tensor mask(DType::kFloat32, {B, 1, S, S});
  for (int64_t i = 0; i < mask.numel(); ++i) mask.data_as<float>()[i] = 0.0f;
  for (int64_t j = 0; j < S; ++j) mask.data_as<float>()[S * S + j] = -std::numeric_limits<float>::infinity();
  b.g.outputs = {c.attend(c.kt_3d(c.k), b.constant(mask), c.v)};
  Graph f = fuse_and_compare(b.g, 0);
  EXPECT_EQ(count_ops(f, "IsNaN"), 1);
  // A key left in every row: the guard is the identity, and the chain fuses with the mask as an input.
  SdpaChain c2;
  mask.data_as<float>()[S * S + 2] = 0.0f;
  c2.b.g.outputs = {c2.attend(c2.kt_3d(c2.k), c2.b.constant(mask), c2.v)};
  Graph f2 = fuse_and_compare(c2.b.g, 1);
  EXPECT_EQ(count_ops(f2, "IsNaN"), 0);
}

TEST(FuseAttention, NanGuardWithRuntimeMaskIsNotFused) {
  SdpaChain c;
  Builder& b = c.b;
  ValueId pad = b.g.add_input("pad", DType::kFloat32, {B, 1, 1, S});
  b.g.outputs = {c.attend(c.kt_3d(c.k), pad, c.v)};
  fuse_and_compare(b.g, 0);
}

// ---- Gemm between flattening reshapes (unflatten_gemms) ---------------------------------------------------------

// X [B, S, K] (or [B, S, 2, K / 2] with `heads`) -> Reshape [B*S, K] -> Gemm(W [K, N] or [N, K], bias?) -> Reshape
// [B, S, N]: rewritten into MatMul (+ Add) on X with the same outputs.
Graph flattened_gemm(bool trans_b, bool bias, bool heads, bool extra_reader = false) {
  constexpr int64_t K = 8, N = 6;
  Builder b;
  const Shape xs = heads ? Shape{B, S, 2, K / 2} : Shape{B, S, K};
  ValueId x = b.g.add_input("x", DType::kFloat32, xs);
  ValueId flat = b.node("Reshape", {x, b.constant(Tensor::from_i64({B * S, K}, {2}))});
  ValueId w = b.constant(randn(trans_b ? Shape{N, K} : Shape{K, N}, 3));
  std::vector<ValueId> in = {flat, w};
  if (bias) in.push_back(b.constant(randn({N}, 4)));
  Attributes a;
  a.set_int("transB", trans_b ? 1 : 0);
  ValueId y2 = b.node("Gemm", in, a);
  b.g.outputs = {b.node("Reshape", {y2, b.constant(Tensor::from_i64({B, S, N}, {3}))})};
  if (extra_reader) b.g.outputs.push_back(b.node("Relu", {flat}));
  return b.g;
}

void expect_same_outputs(const Graph& a, const Graph& b) {
  const std::vector<Tensor> x = run(a), y = run(b);
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(x[i].shape(), y[i].shape());
    for (int64_t j = 0; j < x[i].numel(); ++j) EXPECT_NEAR(x[i].data_as<float>()[j], y[i].data_as<float>()[j], 1e-5f);
  }
}

TEST(UnflattenGemms, ProductsOnTheUnflattenedInput) {
  for (bool trans_b : {false, true}) {
    for (bool bias : {false, true}) {
      for (bool heads : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "transB " << trans_b << " bias " << bias << " heads " << heads);
        const Graph g = flattened_gemm(trans_b, bias, heads);
        Graph f = g;
        int n = 0;
        ASSERT_TRUE(unflatten_gemms(f, &n).is_ok());
        EXPECT_EQ(n, 1);
        EXPECT_EQ(count_ops(f, "Gemm"), 0);
        EXPECT_EQ(count_ops(f, "MatMul"), 1);
        EXPECT_EQ(count_ops(f, "Add"), bias ? 1 : 0);
        EXPECT_EQ(count_ops(f, "Transpose"), trans_b ? 1 : 0);
        EXPECT_EQ(count_ops(f, "Reshape"), heads ? 1 : 0);  // [B, S, 2, K/2] viewed as [B, S, K]
        const Node* mm = find_op(f, "MatMul");
        ASSERT_NE(mm, nullptr);
        EXPECT_EQ(f.value(mm->inputs[0]).shape, (Shape{B, S, 8}));
        EXPECT_EQ(f.value(f.outputs[0]).shape, (Shape{B, S, 6}));
        expect_same_outputs(g, f);
      }
    }
  }
}

TEST(UnflattenGemms, FlattenedInputReadElsewhereStays) {
  const Graph g = flattened_gemm(false, true, false, true);
  Graph f = g;
  int n = 0;
  ASSERT_TRUE(unflatten_gemms(f, &n).is_ok());
  EXPECT_EQ(n, 0);
  EXPECT_EQ(count_ops(f, "Gemm"), 1);
  EXPECT_EQ(f.nodes.size(), g.nodes.size());
}

}  // namespace
}  // namespace gv
