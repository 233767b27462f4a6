// fuse_rotary and fuse_silu_mul (runtime/fuse_rotary.cpp, runtime/fuse_silu_mul.cpp): the rotary embeddings and SwiGLU
// gates of real Llama exports become one RotaryEmbedding / SiluMul node each, with the same forward outputs, loss
// (against PyTorch's, in the fixture) and gradients within float32 rounding; fuse_attention_layout then carries the
// rotary embeddings into the 3-D attention. Also RotaryEmbedding's arithmetic on hand-made values (interleaved pairs,
// the 3-D and 4-D forms, a partial rotation with position_ids) and chains that must stay.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "importer/onnx_importer.h"
#include "models/zoo.h"
#include "runtime/executor.h"
#include "runtime/fusion.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/hf_fixtures.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::ChainBuilder;
using testing::count_ops;
using testing::expect_well_formed;
using testing::max_rel_diff;
using testing::run_forward;

// The forward outputs, loss and every gradient of `plain` and `fused` agree within float32 rounding (training graphs
// built without further fusion); returns the fused loss.
double expect_same_model(Graph plain, Graph fused, const TensorMap& batch) {
  std::vector<Tensor> a = run_forward(plain, batch);
  std::vector<Tensor> b = run_forward(fused, batch);
  EXPECT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) EXPECT_LE(max_rel_diff(b[i], a[i]), 1e-5) << "output " << i;
  TrainerConfig cfg;
  cfg.graph.fuse_ops = false;
  auto backend = make_cpu_backend();
  auto t_plain = Trainer::create(std::move(plain), cfg, *backend);
  auto t_fused = Trainer::create(std::move(fused), cfg, *backend);
  EXPECT_TRUE(t_plain.has_value()) << t_plain.status().message();
  EXPECT_TRUE(t_fused.has_value()) << t_fused.status().message();
  if (!t_plain || !t_fused) return std::nan("");
  return testing::expect_same_step(**t_plain, **t_fused, batch, "fused rotary embeddings and SwiGLU gates");
}

// The HF fixture (torch.onnx dynamo export of LlamaForCausalLM, 2 layers, 4 query and 2 key/value heads).
TEST(FuseLlamaOps, FixtureSameOutputsLossAndGradients) {
  ImportOptions io;
  io.batch = 2;
  io.seq = 32;
  auto plain = import_onnx(testing::fixture_dir("llama") + "/model.onnx", io);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  Graph fused = plain->graph;
  int rotary = 0, silu = 0;
  ASSERT_TRUE(fuse_rotary(fused, &rotary).is_ok());
  ASSERT_TRUE(fuse_silu_mul(fused, &silu).is_ok());
  EXPECT_EQ(rotary, 4);  // Q and K of each layer
  EXPECT_EQ(silu, 2);
  expect_well_formed(fused);
  EXPECT_EQ(count_ops(fused, "RotaryEmbedding"), 4);
  EXPECT_EQ(count_ops(fused, "SiluMul"), 2);
  EXPECT_EQ(count_ops(fused, "Neg"), 0);
  EXPECT_EQ(count_ops(fused, "Sigmoid"), 0);
  int again = 0;
  ASSERT_TRUE(fuse_rotary(fused, &again).is_ok());
  ASSERT_TRUE(fuse_silu_mul(fused, &again).is_ok());
  EXPECT_EQ(again, 0);
  auto ref = read_safetensors(testing::fixture_dir("llama") + "/reference.safetensors");
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  const TensorMap batch = {{"input_ids", ref->at("input_ids")}, {"labels", ref->at("labels")}};
  const double loss = expect_same_model(plain->graph, fused, batch);
  const double ref_loss = ref->at("loss").scalar_f64(0);
  EXPECT_NEAR(loss, ref_loss, 1e-5 * std::fabs(ref_loss));
}

// The zoo's llama through every forward pass: the rotary embeddings end in the 3-D attention's form (num_heads set, no
// head transposes left), the gates fused.
TEST(FuseLlamaOps, ZooLlamaAllForwardPasses) {
  auto cfg = zoo_config("", "llama-tiny");
  ASSERT_TRUE(cfg.has_value()) << cfg.status().message();
  auto im = build_and_import(*cfg, 2, 16, WeightInit::kHuggingFace, 3);
  ASSERT_TRUE(im.has_value()) << im.status().message();
  Graph fused = im->graph;
  auto counts = fuse_forward_graph(fused);
  ASSERT_TRUE(counts.has_value()) << counts.status().message();
  const int layers = static_cast<int>(cfg->num_layers);
  EXPECT_EQ(counts->rotary, 2 * layers);
  EXPECT_EQ(counts->silu_mul, layers);
  EXPECT_EQ(counts->attention_3d, layers);
  expect_well_formed(fused);
  int three_d = 0;
  for (const Node& n : fused.nodes) {
    if (n.op_type == "RotaryEmbedding" && n.attrs.get_int("num_heads", 0) > 0) ++three_d;
  }
  EXPECT_EQ(three_d, 2 * layers);
  for (const Node& n : fused.nodes) {  // the Transposes left are the weights' (fuse_linear takes them later)
    if (n.op_type == "Transpose") EXPECT_TRUE(fused.value(n.inputs[0]).kind == ValueKind::kParameter) << n.name;
  }
  expect_same_model(im->graph, fused, testing::random_lm_batch(cfg->vocab_size, 2, 16, 7));
}

// As the CUDA backend builds it (bf16 operand copies, Linear; the MLP 176 wide so its rows qualify): the gate's inputs
// are written in bf16 by their Linears, its output and both its gradients by SiluMul / SiluMulGrad, the gradient's dY
// by the down projection's dX product, each norm's output by the galvatron RMSNormalization; the loss and gradients
// stay the float32 graph's within bf16 rounding.
TEST(FuseLlamaOps, ZooLlamaBf16Outputs) {
  auto cfg = zoo_config("", "llama-tiny");
  ASSERT_TRUE(cfg.has_value()) << cfg.status().message();
  cfg->ffn_size = 176;
  auto im = build_and_import(*cfg, 2, 16, WeightInit::kHuggingFace, 3);
  ASSERT_TRUE(im.has_value()) << im.status().message();
  const TensorMap batch = testing::random_lm_batch(cfg->vocab_size, 2, 16, 7);
  auto backend = make_cpu_backend();
  auto t32 = Trainer::create(im->graph, TrainerConfig{}, *backend);
  auto t16 = Trainer::create(im->graph, testing::cuda_bf16_like_config(false), *backend);
  ASSERT_TRUE(t32.has_value()) << t32.status().message();
  ASSERT_TRUE(t16.has_value()) << t16.status().message();
  const Graph& g = (*t16)->training_graph().graph;
  testing::expect_inference_agrees(g);  // (the folds leave the float32 outputs as orphan values, by design)
  const int layers = static_cast<int>(cfg->num_layers);
  int gates = 0, gate_grads = 0, norms = 0;
  for (const Node& n : g.nodes) {
    const bool bf16 = n.attrs.get_int("out_dtype", 1) == 16;
    gates += n.op_type == "SiluMul" && bf16;
    gate_grads += n.op_type == "SiluMulGrad" && bf16;
    norms += n.op_type == "RMSNormalization" && n.domain == kGalvatronDomain && bf16;
    if (bf16 && (n.op_type == "SiluMul" || n.op_type == "SiluMulGrad" || n.op_type == "RMSNormalization")) {
      for (ValueId o : n.outputs) EXPECT_EQ(g.value(o).dtype, DType::kBFloat16) << n.name;
    }
  }
  EXPECT_EQ(gates, layers);
  EXPECT_EQ(gate_grads, layers);
  EXPECT_EQ(norms, 2 * layers);
  // The gate and up products write bf16 for the gate and its gradient (their only readers).
  int bf16_gate_inputs = 0;
  for (const Node& n : g.nodes) {
    if (n.op_type != "SiluMul") continue;
    for (ValueId in : n.inputs) {
      const NodeId p = g.value(in).producer;
      bf16_gate_inputs += g.value(in).dtype == DType::kBFloat16 && p >= 0 && g.nodes[p].op_type == "Linear" &&
                          g.nodes[p].attrs.get_int("out_dtype", 1) == 16;
    }
  }
  EXPECT_EQ(bf16_gate_inputs, 2 * layers);
  // The gate's gradient reads its dY in bf16, written so by the down projection's dX product (its only reader).
  int bf16_gate_dy = 0;
  for (const Node& n : g.nodes) {
    if (n.op_type != "SiluMulGrad") continue;
    const NodeId p = g.value(n.inputs[0]).producer;
    bf16_gate_dy += g.value(n.inputs[0]).dtype == DType::kBFloat16 && p >= 0 && g.nodes[p].op_type == "FusedMatMul" &&
                    g.nodes[p].attrs.get_int("out_dtype", 1) == 16;
  }
  EXPECT_EQ(bf16_gate_dy, layers);
  double loss32 = 0, loss16 = 0;
  auto g32 = (*t32)->compute_gradients(batch, &loss32);
  auto g16 = (*t16)->compute_gradients(batch, &loss16);
  ASSERT_TRUE(g32.has_value()) << g32.status().message();
  ASSERT_TRUE(g16.has_value()) << g16.status().message();
  EXPECT_NEAR(loss16, loss32, 1e-2 * std::fabs(loss32));
  for (const auto& [name, grad] : *g32) {
    ASSERT_TRUE(g16->count(name)) << name;
    EXPECT_LE(testing::rel_l2(g16->at(name), grad), 3e-2) << "gradient of " << name;
  }
}

// ---- hand-built chains that fuse or must stay -----------------------------------------------------------------------

// HF's rotate_half form over x [1, 2, 4, 8] with [4, 8] tables; `repeat` makes each row's halves equal.
Graph rope_chain(bool repeat, bool rotated_is_output) {
  ChainBuilder b;
  const ValueId x = b.g.add_input("x", DType::kFloat32, {1, 2, 4, 8});
  Tensor cos = testing::randn_f32({4, 8}, 31), sin = testing::randn_f32({4, 8}, 32);
  for (Tensor* t : {&cos, &sin})
    for (int64_t r = 0; r < 4 && repeat; ++r)
      for (int64_t i = 0; i < 4; ++i) t->data_as<float>()[r * 8 + 4 + i] = t->data_as<float>()[r * 8 + i];
  const ValueId c = b.g.add_initializer("cos", cos, ValueKind::kConstant);
  const ValueId sn = b.g.add_initializer("sin", sin, ValueKind::kConstant);
  const ValueId x1 = b.node("Slice", {x, b.ints({0}), b.ints({4}), b.ints({-1})});
  const ValueId x2 = b.node("Slice", {x, b.ints({4}), b.ints({INT64_MAX}), b.ints({-1})});
  Attributes cat;
  cat.set_int("axis", -1);
  const ValueId rot = b.node("Concat", {b.node("Neg", {x2}), x1}, cat);
  b.g.outputs = {b.node("Add", {b.node("Mul", {x, c}), b.node("Mul", {rot, sn})})};
  if (rotated_is_output) b.g.outputs.push_back(rot);
  return std::move(b.g);
}

TEST(FuseLlamaOps, RotaryChainsFuseOnlyWithRepeatingTables) {
  const TensorMap feed = {{"x", testing::randn_f32({1, 2, 4, 8}, 33)}};
  Graph plain = rope_chain(true, false), fused = rope_chain(true, false);
  int n = 0;
  ASSERT_TRUE(fuse_rotary(fused, &n).is_ok());
  EXPECT_EQ(n, 1);
  expect_well_formed(fused);
  ASSERT_EQ(fused.nodes.size(), 1u);
  EXPECT_EQ(fused.nodes[0].op_type, "RotaryEmbedding");
  EXPECT_GE(fused.nodes[0].opset, 23);
  const auto a = run_forward(plain, feed), b = run_forward(fused, feed);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_LE(max_rel_diff(b[0], a[0]), 1e-6);
  for (int which = 0; which < 2; ++which) {
    SCOPED_TRACE(which == 0 ? "tables whose halves differ" : "rotate_half(x) is a graph output");
    Graph g = rope_chain(which != 0, which == 1);
    const size_t nodes = g.nodes.size();
    int none = 0;
    ASSERT_TRUE(fuse_rotary(g, &none).is_ok());
    EXPECT_EQ(none, 0);
    EXPECT_EQ(g.nodes.size(), nodes);
  }
}

TEST(FuseLlamaOps, GateChainsFuseUnlessShared) {
  for (bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "silu(g) is a graph output" : "plain");
    ChainBuilder b;
    const ValueId gate = b.g.add_input("g", DType::kFloat32, {3, 16});
    const ValueId up = b.g.add_input("u", DType::kFloat32, {3, 16});
    const ValueId act = b.node("Mul", {b.node("Sigmoid", {gate}), gate});
    b.g.outputs = {b.node("Mul", {up, act})};
    if (shared) b.g.outputs.push_back(act);
    Graph plain = b.g;
    int n = 0;
    ASSERT_TRUE(fuse_silu_mul(b.g, &n).is_ok());
    EXPECT_EQ(n, shared ? 0 : 1);
    if (shared) continue;
    expect_well_formed(b.g);
    ASSERT_EQ(b.g.nodes.size(), 1u);
    EXPECT_EQ(b.g.nodes[0].op_type, "SiluMul");
    const TensorMap feed = {{"g", testing::randn_f32({3, 16}, 34)}, {"u", testing::randn_f32({3, 16}, 35)}};
    const auto x = run_forward(plain, feed), y = run_forward(b.g, feed);
    ASSERT_EQ(x.size(), 1u);
    ASSERT_EQ(y.size(), 1u);
    EXPECT_LE(max_rel_diff(y[0], x[0]), 1e-6);
  }
}

// SiluMul's operands must agree; out_dtype is float32 or bfloat16; each error names the node.
TEST(FuseLlamaOps, BadGateOperandsAreClearErrors) {
  const Tensor a = testing::randn_f32({3, 4}, 1);
  Attributes f16;
  f16.set_int("out_dtype", 10);
  const std::vector<std::tuple<std::vector<Tensor>, Attributes, std::string>> cases = {
      {{a, testing::randn_f32({3, 5}, 2)}, {}, "B (float32 [3,5]) must have A's dtype and shape (float32 [3,4])"},
      {{a, a.cast(DType::kBFloat16)}, {}, "must have A's dtype and shape"},
      {{a, a}, f16, "out_dtype must be 1 (float32) or 16 (bfloat16), got 10"},
  };
  for (const auto& [in, attrs, want] : cases) {
    auto r = testing::run_op("SiluMul", in, attrs, 1, 1, {}, kGalvatronDomain);
    ASSERT_FALSE(r.has_value()) << want;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("test_node"), std::string::npos) << r.status().message();
  }
}

// ---- RotaryEmbedding on hand-made values ----------------------------------------------------------------------------

Graph rotary_graph(const Shape& x, const Shape& table, Attributes a, bool positions) {
  Graph g;
  g.opsets[""] = 23;
  std::vector<ValueId> in = {g.add_input("x", DType::kFloat32, x), g.add_input("cos", DType::kFloat32, table),
                             g.add_input("sin", DType::kFloat32, table)};
  if (positions) in.push_back(g.add_input("pos", DType::kInt64, {x[0], x.size() == 4 ? x[2] : x[1]}));
  Node n;
  n.name = "rope";
  n.op_type = "RotaryEmbedding";
  n.opset = 23;
  n.inputs = in;
  n.attrs = std::move(a);
  auto out = g.add_node(std::move(n));
  EXPECT_TRUE(out.has_value()) << out.status().message();
  if (out) g.outputs = {(*out)[0]};
  return g;
}

// One head of 4 with quarter and half turns: interleaved pairs (0,1), (2,3); halves pairs (0,2), (1,3).
TEST(RotaryEmbeddingOp, QuarterTurnsByHand) {
  const Tensor x = Tensor::from_f32({1, 2, 3, 4}, {1, 1, 4});
  const Tensor cos = Tensor::from_f32({0, -1}, {1, 1, 2}), sin = Tensor::from_f32({1, 0}, {1, 1, 2});
  for (int interleaved : {0, 1}) {
    Attributes a;
    a.set_int("num_heads", 1);
    a.set_int("interleaved", interleaved);
    const std::vector<Tensor> y =
        run_forward(rotary_graph({1, 1, 4}, {1, 1, 2}, a, false), {{"x", x}, {"cos", cos}, {"sin", sin}});
    ASSERT_EQ(y.size(), 1u);
    // pair (x1, x2) with (c, s): (c x1 - s x2, s x1 + c x2). Interleaved: (1,2) by (0,1) -> (-2, 1); (3,4) by (-1,0)
    // -> (-3, -4). Halves: (1,3) by (0,1) -> (-3, 1); (2,4) by (-1,0) -> (-2, -4).
    const std::vector<float> want = interleaved ? std::vector<float>{-2, 1, -3, -4} : std::vector<float>{-3, -2, 1, -4};
    for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(y[0].data_as<float>()[i], want[i]) << "element " << i;
  }
}

// The 3-D form of X [B, S, H * D] equals the 4-D form of its head transpose; a partial rotation copies the rest; the
// tables by position_ids equal the gathered rows.
TEST(RotaryEmbeddingOp, FormsAndPositionsAgree) {
  const int64_t B = 2, S = 3, H = 2, D = 6;
  const Tensor x3 = testing::randn_f32({B, S, H * D}, 21);
  Tensor x4(DType::kFloat32, {B, H, S, D});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d)
          x4.data_as<float>()[((b * H + h) * S + s) * D + d] = x3.data_as<float>()[(b * S + s) * H * D + h * D + d];
  const Tensor table_c = testing::randn_f32({5, 2}, 22), table_s = testing::randn_f32({5, 2}, 23);
  const std::vector<int64_t> pos = {4, 1, 0, 2, 2, 3};
  Tensor cos(DType::kFloat32, {B, S, 2}), sin(DType::kFloat32, {B, S, 2});
  for (int64_t t = 0; t < B * S; ++t) {
    for (int i = 0; i < 2; ++i) {
      cos.data_as<float>()[t * 2 + i] = table_c.data_as<float>()[pos[t] * 2 + i];
      sin.data_as<float>()[t * 2 + i] = table_s.data_as<float>()[pos[t] * 2 + i];
    }
  }
  Attributes a3;
  a3.set_int("num_heads", H);
  a3.set_int("rotary_embedding_dim", 4);
  Attributes a4;
  a4.set_int("rotary_embedding_dim", 4);
  const auto y3 =
      run_forward(rotary_graph({B, S, H * D}, {B, S, 2}, a3, false), {{"x", x3}, {"cos", cos}, {"sin", sin}});
  const auto y4 =
      run_forward(rotary_graph({B, H, S, D}, {B, S, 2}, a4, false), {{"x", x4}, {"cos", cos}, {"sin", sin}});
  const auto yp = run_forward(rotary_graph({B, S, H * D}, {5, 2}, a3, true),
                              {{"x", x3}, {"cos", table_c}, {"sin", table_s}, {"pos", Tensor::from_i64(pos, {B, S})}});
  ASSERT_EQ(y3.size(), 1u);
  ASSERT_EQ(y4.size(), 1u);
  ASSERT_EQ(yp.size(), 1u);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t i3 = (b * S + s) * H * D + h * D + d, i4 = ((b * H + h) * S + s) * D + d;
          EXPECT_EQ(y3[0].data_as<float>()[i3], y4[0].data_as<float>()[i4]);
          EXPECT_EQ(y3[0].data_as<float>()[i3], yp[0].data_as<float>()[i3]);
          if (d >= 4) EXPECT_EQ(y3[0].data_as<float>()[i3], x3.data_as<float>()[i3]);
        }
}

TEST(RotaryEmbeddingOp, BadShapesAndPositionsAreClearErrors) {
  Graph g;
  g.opsets[""] = 23;
  const ValueId x = g.add_input("x", DType::kFloat32, {1, 2, 8});  // 3-D without num_heads
  const ValueId c = g.add_input("cos", DType::kFloat32, {1, 2, 4});
  Node n;
  n.name = "rope";
  n.op_type = "RotaryEmbedding";
  n.opset = 23;
  n.inputs = {x, c, c};
  auto out = g.add_node(n);
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.status().message().find("num_heads"), std::string::npos) << out.status().message();
  Attributes a;
  a.set_int("num_heads", 2);
  a.set_int("rotary_embedding_dim", 2);
  const Graph pg = rotary_graph({1, 2, 8}, {3, 1}, a, true);
  auto backend = make_cpu_backend();
  auto ex = Executor::create(pg, *backend);
  ASSERT_TRUE(ex.has_value()) << ex.status().message();
  const Tensor t = testing::randn_f32({3, 1}, 4);
  ASSERT_TRUE((*ex)
                  ->set_inputs({{"x", testing::randn_f32({1, 2, 8}, 3)},
                                {"cos", t},
                                {"sin", t},
                                {"pos", Tensor::from_i64({0, 3}, {1, 2})}})
                  .is_ok());
  const Status st = (*ex)->run();
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("position_ids holds 3"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace gv
