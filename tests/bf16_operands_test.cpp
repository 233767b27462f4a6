// share_bf16_operands (runtime/bf16_operands.h) and FusedMatMul's mixed-precision operands, on the CPU: a bf16
// operand gives exactly the float32 product of the rounded values; in whole training graphs every weight, layer input
// and output gradient read by two products is converted once, no product reads a float32 value that has a copy, and
// the loss and gradients stay those of the float32 graph within bf16 rounding; products too small to qualify, values
// read once, rows of an odd width and values written in place keep float32 operands.
#include "runtime/bf16_operands.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>

#include "models/zoo.h"
#include "runtime/executor.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::relative_gap;
using testing::run_graph;
Tensor randn(const Shape& s, uint64_t seed) { return testing::randn_f32(s, seed); }


Node product(const std::string& name, ValueId a, ValueId b, bool fused = false, bool tb = false) {
  Node n;
  n.name = name;
  n.op_type = fused ? "FusedMatMul" : "MatMul";
  n.domain = fused ? kGalvatronDomain : "";
  n.opset = fused ? 1 : 13;
  n.inputs = {a, b};
  if (fused) {
    n.attrs.set_int("transA", 0);
    n.attrs.set_int("transB", tb);
  }
  return n;
}

TEST(Bf16Operands, MixedFusedMatMulIsTheProductOfTheRoundedOperands) {
  const Tensor a = randn({3, 16, 24}, 1), b = randn({40, 24}, 2);
  const Tensor a16 = a.cast(DType::kBFloat16), b16 = b.cast(DType::kBFloat16);
  const Tensor a_rounded = a16.cast(DType::kFloat32), b_rounded = b16.cast(DType::kFloat32);
  auto run = [](const Tensor& x, const Tensor& y, int64_t out_dtype) -> Expected<Tensor> {
    Graph g;
    g.opsets[""] = 13;
    g.opsets[kGalvatronDomain] = 1;
    Node n = product("p", g.add_input("a", x.dtype(), x.shape()), g.add_input("b", y.dtype(), y.shape()), true, true);
    if (out_dtype) n.attrs.set_int("out_dtype", out_dtype);
    GV_ASSIGN_OR_RETURN(g.outputs, g.add_node(std::move(n), {"y"}));
    GV_ASSIGN_OR_RETURN(auto out, run_graph(g, {{"a", x}, {"b", y}}));
    return out[0];
  };
  auto want = run(a_rounded, b_rounded, 0);
  ASSERT_TRUE(want.has_value()) << want.status().message();
  for (auto [x, y] : {std::pair{a16, b}, std::pair{a, b16}, std::pair{a16, b16}}) {
    // Against the float32 product of the same values (the bf16 operands widened exactly).
    const Tensor xr = x.dtype() == DType::kBFloat16 ? a_rounded : a;
    const Tensor yr = y.dtype() == DType::kBFloat16 ? b_rounded : b;
    auto expect = run(xr, yr, 0);
    auto got = run(x, y, 1);
    ASSERT_TRUE(expect.has_value() && got.has_value()) << got.status().message();
    ASSERT_EQ(got->dtype(), DType::kFloat32);
    ASSERT_EQ(got->shape(), (Shape{3, 16, 40}));
    EXPECT_EQ(std::memcmp(got->data(), expect->data(), got->nbytes()), 0) << dtype_name(x.dtype()) << " x "
                                                                           << dtype_name(y.dtype());
  }
  // Both bf16 without out_dtype: a bf16 result (the operands' type), the float32 product rounded.
  auto both = run(a16, b16, 0);
  ASSERT_TRUE(both.has_value()) << both.status().message();
  ASSERT_EQ(both->dtype(), DType::kBFloat16);
  const Tensor rounded = want->cast(DType::kBFloat16);
  EXPECT_EQ(std::memcmp(both->data(), rounded.data(), rounded.nbytes()), 0);
  // Other mixes are refused at inference with the node named.
  Graph g;
  g.opsets[kGalvatronDomain] = 1;
  Node n = product("mixed_int", g.add_input("a", DType::kFloat32, {4, 8}), g.add_input("b", DType::kInt64, {8, 4}),
                   true);
  auto bad = g.add_node(std::move(n));
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("mixed_int"), std::string::npos) << bad.status().message();
}

// X read by two products and W1 by one; X [64, 64] qualifies with min_mn 16, not with the default 128.
struct SmallGraph {
  Graph g;
  ValueId x, w1, w2, w3;
};

SmallGraph small_graph(int64_t width) {
  SmallGraph s;
  Graph& g = s.g;
  g.opsets[""] = 13;
  s.x = g.add_input("x", DType::kFloat32, {64, width});
  s.w1 = g.add_input("w1", DType::kFloat32, {width, 48});
  s.w2 = g.add_input("w2", DType::kFloat32, {width, 48});
  s.w3 = g.add_input("w3", DType::kFloat32, {48, 48});
  auto y1 = g.add_node(product("p1", s.x, s.w1), {"y1"});
  auto y2 = g.add_node(product("p2", s.x, s.w2), {"y2"});
  auto y3 = g.add_node(product("p3", (*y1)[0], s.w3), {"y3"});
  g.outputs = {(*y2)[0], (*y3)[0]};
  return s;
}

int count_casts(const Graph& g) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == "Cast";
  return n;
}

TEST(Bf16Operands, SharesOnlyValuesReadByTwoQualifyingProducts) {
  Bf16OperandOptions opt;
  opt.min_mn = 16;
  {
    SmallGraph s = small_graph(64);
    size_t boundary = 2;  // a node index after the first reader: moves with the inserted copy
    int copies = 0, folded = 0;
    ASSERT_TRUE(share_bf16_operands(s.g, opt, &boundary, &copies, &folded).is_ok());
    EXPECT_EQ(copies, 1);
    EXPECT_EQ(boundary, 3u);
    ASSERT_EQ(s.g.nodes.size(), 4u);
    EXPECT_EQ(s.g.nodes[0].op_type, "Cast");  // before the first reader
    EXPECT_EQ(s.g.nodes[0].inputs[0], s.x);
    const ValueId copy = s.g.nodes[0].outputs[0];
    EXPECT_EQ(s.g.value(copy).dtype, DType::kBFloat16);
    for (int i : {1, 2}) {
      EXPECT_EQ(s.g.nodes[i].op_type, "FusedMatMul");
      EXPECT_EQ(s.g.nodes[i].inputs[0], copy);
      EXPECT_EQ(s.g.nodes[i].attrs.get_int("out_dtype", 0), 1);
      EXPECT_EQ(s.g.value(s.g.nodes[i].outputs[0]).dtype, DType::kFloat32);
    }
    EXPECT_EQ(s.g.nodes[3].op_type, "MatMul");  // its operands are read once each
    // The rewritten graph computes the products of the rounded X.
    const Tensor x = randn({64, 64}, 3), w1 = randn({64, 48}, 4), w2 = randn({64, 48}, 5), w3 = randn({48, 48}, 6);
    auto got = run_graph(s.g, {{"x", x}, {"w1", w1}, {"w2", w2}, {"w3", w3}});
    SmallGraph ref = small_graph(64);
    auto want = run_graph(ref.g, {{"x", x.cast(DType::kBFloat16).cast(DType::kFloat32)}, {"w1", w1}, {"w2", w2},
                                  {"w3", w3}});
    ASSERT_TRUE(got.has_value() && want.has_value()) << got.status().message();
    for (size_t i = 0; i < want->size(); ++i) {
      EXPECT_EQ(std::memcmp((*got)[i].data(), (*want)[i].data(), (*want)[i].nbytes()), 0) << "output " << i;
    }
  }
  {  // too small for the default threshold
    SmallGraph s = small_graph(64);
    int copies = 0, folded = 0;
    ASSERT_TRUE(share_bf16_operands(s.g, Bf16OperandOptions(), nullptr, &copies, &folded).is_ok());
    EXPECT_EQ(copies, 0);
    EXPECT_EQ(count_casts(s.g), 0);
  }
  {  // rows of 60 elements: not 16-byte aligned in bf16
    SmallGraph s = small_graph(60);
    int copies = 0, folded = 0;
    ASSERT_TRUE(share_bf16_operands(s.g, opt, nullptr, &copies, &folded).is_ok());
    EXPECT_EQ(copies, 0);
  }
  {  // X is also updated in place (an accumulation after its readers): no copy could stay current
    SmallGraph s = small_graph(64);
    Node acc;
    acc.name = "accumulate";
    acc.op_type = "AccumulateGrad";
    acc.domain = kGalvatronDomain;
    acc.opset = 1;
    acc.inputs = {s.x, s.x};
    ASSERT_TRUE(s.g.add_node(std::move(acc)).has_value());
    int copies = 0, folded = 0;
    ASSERT_TRUE(share_bf16_operands(s.g, opt, nullptr, &copies, &folded).is_ok());
    EXPECT_EQ(copies, 0);
  }
}

// (zoo model, fuse_linear): with galvatron Linear nodes too, as the CUDA backend builds its graphs.
class ModelBf16Operands : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(ModelBf16Operands, EveryProductOperandConvertedOnceSameGradientsWithinBf16) {
  const std::string model = std::get<0>(GetParam());
  auto tiny = testing::tiny_model(model);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const ImportedModel* im = &tiny->im;
  const TensorMap& batch = tiny->batch;
  auto backend = make_cpu_backend();
  auto run = [&](bool share, double* loss, const Graph** graph, std::unique_ptr<Trainer>* keep) -> Expected<TensorMap> {
    TrainerConfig tc;
    tc.graph.bf16_operands = share;
    tc.graph.fuse_linear = std::get<1>(GetParam());
    tc.graph.bf16_operand_options.min_mn = 8;  // the tiny models' products (32 rows) qualify
    GV_ASSIGN_OR_RETURN(*keep, Trainer::create(im->graph, tc, *backend));
    *graph = &(*keep)->training_graph().graph;
    return (*keep)->compute_gradients(batch, loss);
  };
  double loss32 = 0, loss16 = 0;
  const Graph *g32 = nullptr, *g16 = nullptr;
  std::unique_ptr<Trainer> t32, t16;
  auto grads32 = run(false, &loss32, &g32, &t32);
  ASSERT_TRUE(grads32.has_value()) << grads32.status().message();
  auto grads16 = run(true, &loss16, &g16, &t16);
  ASSERT_TRUE(grads16.has_value()) << grads16.status().message();

  const Graph& g = *g16;
  const FusionCounts& fc = t16->training_graph().fused;
  EXPECT_EQ(fc.bf16_operands - fc.bf16_linear_outputs - fc.bf16_attention_grads - fc.bf16_norm_outputs,
            count_casts(g) - count_casts(*g32));
  // Norm outputs that only products read are written in bf16 by the norm itself (the galvatron twins of
  // LayerNormalization and RMSNormalization): the two norms of every layer (the final norm's output reaches the LM
  // head's products through a Reshape, which keeps the Cast).
  int bf16_norms = 0;
  for (const Node& n : g.nodes) {
    if ((n.op_type != "LayerNormalization" && n.op_type != "RMSNormalization") || n.domain != kGalvatronDomain)
      continue;
    ++bf16_norms;
    EXPECT_EQ(n.attrs.get_int("out_dtype", 1), 16) << n.name;
    EXPECT_EQ(g.value(n.outputs[0]).dtype, DType::kBFloat16) << n.name;
    for (const Node& m : g.nodes) {
      for (ValueId in : m.inputs) {
        if (in == n.outputs[0]) {
          EXPECT_TRUE(m.op_type == "FusedMatMul" || m.op_type == "Linear") << n.name << " read by " << m.name;
        }
      }
    }
  }
  EXPECT_EQ(bf16_norms, fc.bf16_norm_outputs);
  if (model == "gpt-tiny" || model == "llama-tiny") {
    EXPECT_EQ(fc.bf16_norm_outputs, 2 * im->graph.num_layers);
  }
  if (std::get<1>(GetParam()) && model == "gpt-tiny") {
    // The MLP's c_fc Linear (its GELU output read only by c_proj's products) writes bf16 itself, pre-activation too.
    EXPECT_EQ(fc.bf16_linear_outputs, im->graph.num_layers);
    int bf16_linears = 0;
    for (const Node& n : g.nodes) {
      if (n.op_type != "Linear" || n.attrs.get_int("out_dtype", 1) != 16) continue;
      ++bf16_linears;
      for (ValueId o : n.outputs) EXPECT_EQ(g.value(o).dtype, DType::kBFloat16) << n.name;
    }
    EXPECT_EQ(bf16_linears, fc.bf16_linear_outputs);
  } else if (!std::get<1>(GetParam())) {
    // (llama-tiny's SwiGLU gate has 172 columns, which stay float32: tests/fuse_llama_ops_test.cpp has its bf16 fold.)
    EXPECT_EQ(fc.bf16_linear_outputs, 0);
  }
  // Each copy is read by two or more products and by nothing else but bias-gradient sums (BiasGrad); no product reads
  // a value that has a copy.
  std::map<ValueId, ValueId> copy_of;
  for (const Node& n : g.nodes) {
    if (n.op_type == "Cast" && n.name.rfind("bf16_copy/", 0) == 0) copy_of[n.inputs[0]] = n.outputs[0];
  }
  ASSERT_GT(copy_of.size(), 0u);
  std::map<ValueId, int> readers;
  for (const Node& n : g.nodes) {
    for (ValueId in : n.inputs) {
      if (in == kNoValue) continue;
      const bool is_copy = g.value(in).dtype == DType::kBFloat16;
      if (is_copy) {
        // Products (MatMulAccumulate: a dX product adding into a gradient sum), GeluGrad reading a Linear's bf16
        // pre-activation, bias sums of an output gradient's copy.
        // SwiGLU gates and their gradients reading the gate and up products' bf16 outputs.
        EXPECT_TRUE(n.op_type == "FusedMatMul" || n.op_type == "Linear" || n.op_type == "MatMulAccumulate" ||
                    n.op_type == "GeluGrad" || n.op_type == "BiasGrad" || n.op_type == "SiluMul" ||
                    n.op_type == "SiluMulGrad")
            << n.name;
        if (n.op_type != "BiasGrad" && n.op_type != "SiluMul" && n.op_type != "SiluMulGrad") ++readers[in];
      }
      if (n.op_type == "FusedMatMul" || n.op_type == "MatMul" || n.op_type == "Linear" ||
          (n.op_type == "MatMulAccumulate" && in != n.inputs[0])) {
        EXPECT_FALSE(copy_of.count(in)) << n.name << " reads float32 " << g.value(in).name << ", which has a copy";
      }
    }
  }
  for (const auto& [v, c] : copy_of) EXPECT_GE(readers[c], 2) << g.value(v).name;
  // A Linear's X and W are read again by its backward products in the same shapes (no reshaped views), so both
  // always have their copies.
  for (const Node& n : g.nodes) {
    if (n.op_type != "Linear") continue;
    for (int slot : {0, 1}) {
      if (g.value(n.inputs[slot]).shape.back() % 8 != 0) continue;  // rows not 16-byte aligned in bf16: float32
      EXPECT_EQ(g.value(n.inputs[slot]).dtype, DType::kBFloat16) << model << ": " << n.name << " input " << slot;
    }
  }
  // Every 2-D weight the forward products read (directly, or through the Transpose of an [out, in] Linear weight)
  // has its copy: the forward and dX products share it.
  int weights = 0;
  for (ValueId p : t16->training_graph().params) {
    const Value& pv = g.value(p);
    if (pv.shape.size() != 2) continue;
    ValueId operand = p;
    for (const Node& n : g.nodes) {
      if (n.op_type == "Transpose" && n.inputs[0] == p) operand = n.outputs[0];
    }
    bool product_reads = false;
    for (const Node& n : g.nodes) {
      if (n.op_type != "MatMul" && n.op_type != "FusedMatMul" && n.op_type != "Linear") continue;
      for (ValueId in : n.inputs) {
        product_reads = product_reads || in == operand || (copy_of.count(operand) && in == copy_of[operand]);
      }
    }
    if (!product_reads || g.value(operand).shape.back() % 8 != 0) continue;
    ++weights;
    EXPECT_TRUE(copy_of.count(operand)) << model << ": weight " << pv.name << " has no bf16 copy";
  }
  EXPECT_GE(weights, 4 * im->graph.num_layers) << model;
  // Same loss and gradients within bf16 operand rounding (2^-9 relative per operand, summed over the layers).
  EXPECT_NEAR(loss16, loss32, 1e-2 * std::fabs(loss32)) << model;
  EXPECT_NE(loss16, loss32) << "the copies changed nothing: are they read?";
  for (const auto& [name, g32t] : *grads32) {
    ASSERT_TRUE(grads16->count(name)) << name;
    EXPECT_LE(relative_gap(grads16->at(name), g32t), 3e-2) << model << ": gradient of " << name;
  }
}

// galvatron BiasGrad: the column sums of dY over its leading dims, from float32, bf16 or float64, against sums in
// double of the same (widened) values; keepdims keeps ReduceSum's shape.
// OpSchema::bf16_outputs against each op's own inference: for every op that declares outputs it can write in bf16
// (the fold in share_bf16_operands trusts the declaration), a node with out_dtype 16 (on the twin, where the schema
// names one) infers bf16 for exactly the declared copies and companions and keeps the other outputs' types. Every op
// declaring them needs a case here, so a new declaration is checked too.
TEST(Bf16Operands, SchemaBf16OutputsAgreeWithInference) {
  struct OpCase {
    std::string domain, op;
    std::vector<Tensor> inputs;
    Attributes attrs;
    int outputs, opset;
  };
  auto r = [](Shape s, uint64_t seed) { return testing::randn_f32(std::move(s), seed); };
  Attributes linear;
  linear.set_string("activation", "gelu_tanh");
  Attributes heads;
  heads.set_int("num_heads", 2);
  heads.set_int("is_causal", 1);
  const std::string G = kGalvatronDomain;
  const std::vector<OpCase> cases = {
      {G, "Linear", {r({4, 8}, 1), r({8, 6}, 2), r({6}, 3)}, linear, 2, 1},
      {G, "SiluMul", {r({4, 6}, 4), r({4, 6}, 5)}, {}, 1, 1},
      {G, "SiluMulGrad", {r({4, 6}, 6), r({4, 6}, 7), r({4, 6}, 8)}, {}, 2, 1},
      {G, "AttentionPackedGrad", {r({1, 4, 18}, 9), r({1, 4, 6}, 10), r({1, 4, 6}, 11), r({1, 2, 4}, 12)}, heads, 1, 1},
      {"", "LayerNormalization", {r({4, 8}, 13), r({8}, 14), r({8}, 15)}, {}, 3, 17},
      {G, "LayerNormalization", {r({4, 8}, 13), r({8}, 14), r({8}, 15)}, {}, 3, 1},
      {"", "RMSNormalization", {r({4, 8}, 16), r({8}, 17)}, {}, 1, 23},
      {G, "RMSNormalization", {r({4, 8}, 16), r({8}, 17)}, {}, 1, 1},
  };
  int declared = 0;
  for (const OpSchema* schema : OpRegistry::global().all()) declared += !schema->bf16_outputs.copies.empty();
  EXPECT_EQ(declared, static_cast<int>(cases.size())) << "an op declares bf16_outputs without a case here";
  for (const OpCase& c : cases) {
    SCOPED_TRACE(c.domain + "::" + c.op);
    const OpSchema* schema = OpRegistry::global().find(c.domain, c.op);
    ASSERT_NE(schema, nullptr);
    const Bf16Outputs& b = schema->bf16_outputs;
    ASSERT_FALSE(b.copies.empty()) << "declares no bf16 outputs";
    Attributes a = c.attrs;
    a.set_int("out_dtype", 16);
    const std::string domain = b.twin.empty() ? c.domain : b.twin;
    auto ran = testing::run_op(c.op, c.inputs, a, c.outputs, b.twin.empty() ? c.opset : 1, {}, domain);
    ASSERT_TRUE(ran.has_value()) << ran.status().message();
    for (int o = 0; o < c.outputs; ++o) {
      const bool bf16 =
          std::count(b.copies.begin(), b.copies.end(), o) + std::count(b.companions.begin(), b.companions.end(), o) > 0;
      EXPECT_EQ(ran->outputs[o].dtype(), bf16 ? DType::kBFloat16 : DType::kFloat32) << "output " << o;
    }
  }
}

TEST(Bf16Operands, BiasGradSumsTheLeadingDims) {
  const Tensor x = randn({3, 5, 16}, 7);
  std::vector<double> want(16, 0.0);
  for (DType t : {DType::kFloat32, DType::kBFloat16, DType::kFloat64}) {
    SCOPED_TRACE(dtype_name(t));
    const Tensor in = x.cast(t);
    const Tensor wide = in.cast(DType::kFloat64);
    std::fill(want.begin(), want.end(), 0.0);
    for (int64_t i = 0; i < 15; ++i)
      for (int64_t c = 0; c < 16; ++c) want[c] += wide.data_as<double>()[i * 16 + c];
    for (int keep : {0, 1}) {
      Attributes a;
      a.set_int("keepdims", keep);
      auto r = testing::run_op("BiasGrad", {in}, a, 1, 1, {}, kGalvatronDomain);
      ASSERT_TRUE(r.has_value()) << r.status().message();
      const Tensor& out = r->outputs[0];
      EXPECT_EQ(out.shape(), keep ? Shape({1, 1, 16}) : Shape({16}));
      EXPECT_EQ(out.dtype(), t == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32);
      const Tensor o = out.cast(DType::kFloat64);
      for (int64_t c = 0; c < 16; ++c) EXPECT_NEAR(o.data_as<double>()[c], want[c], 1e-5) << c;
    }
  }
  auto bad = testing::run_op("BiasGrad", {Tensor(DType::kInt64, {2, 3})}, {}, 1, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("dY must be float32, bfloat16 or float64"), std::string::npos)
      << bad.status().message();
}

// galvatron LayerNormalization (a LayerNorm writing its output in bf16): out_dtype 1 or 16, 16 only for a float32 X;
// the errors name the node. With out_dtype 16 its Y is the rounding of ONNX LayerNormalization's, statistics equal.
TEST(Bf16Operands, GalvatronLayerNormOutDtype) {
  const Tensor x = randn({3, 5, 16}, 7), scale = randn({16}, 8), bias = randn({16}, 9);
  Attributes a16;
  a16.set_int("out_dtype", 16);
  auto ref = testing::run_op("LayerNormalization", {x, scale, bias}, {}, 3, 17);
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  auto got = testing::run_op("LayerNormalization", {x, scale, bias}, a16, 3, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(got.has_value()) << got.status().message();
  const Tensor want = ref->outputs[0].cast(DType::kBFloat16);
  ASSERT_EQ(got->outputs[0].dtype(), DType::kBFloat16);
  EXPECT_EQ(std::memcmp(got->outputs[0].data(), want.data(), want.nbytes()), 0);
  for (int o : {1, 2}) {
    EXPECT_EQ(std::memcmp(got->outputs[o].data(), ref->outputs[o].data(), ref->outputs[o].nbytes()), 0) << o;
  }
  for (const auto& [dtype, code, needle] :
       std::vector<std::tuple<DType, int64_t, std::string>>{{DType::kFloat32, 10, "out_dtype must be 1"},
                                                           {DType::kFloat64, 16, "out_dtype 16 needs a float32 X"}}) {
    SCOPED_TRACE(needle);
    Attributes a;
    a.set_int("out_dtype", code);
    auto r = testing::run_op("LayerNormalization", {x.cast(dtype), scale.cast(dtype), bias.cast(dtype)}, a, 1, 1, {},
                             kGalvatronDomain);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.status().message().find("test_node"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  }
}

// AttentionPackedGrad's out_dtype: 1 or 16, and 16 only for float32 inputs; the errors name the node.
TEST(Bf16Operands, AttentionPackedGradOutDtypeErrors) {
  for (const auto& [dtype, code, needle] :
       std::vector<std::tuple<DType, int64_t, std::string>>{{DType::kFloat32, 10, "out_dtype must be 1"},
                                                           {DType::kFloat64, 16, "out_dtype 16 needs float32 or bfloat16 inputs"}}) {
    SCOPED_TRACE(needle);
    Graph g;
    g.opsets[kGalvatronDomain] = 1;
    Node n;
    n.name = "my_grad";
    n.op_type = "AttentionPackedGrad";
    n.domain = kGalvatronDomain;
    n.opset = 1;
    n.attrs.set_int("num_heads", 2);
    n.attrs.set_int("out_dtype", code);
    n.inputs = {g.add_input("qkv", dtype, {1, 4, 24}), g.add_input("dy", dtype, {1, 4, 8}),
                g.add_input("y", dtype, {1, 4, 8}), g.add_input("lse", dtype, {1, 2, 4})};
    auto r = g.add_node(n);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.status().message().find("my_grad"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  }
}

// Packed-QKV attention (as the CUDA backend builds it in bf16): each AttentionPackedGrad's dQKV is read only by its bf16
// copy (the QKV product's dX and dW; the bias sum reads the copy too, as galvatron BiasGrad), so the attention backward
// writes bf16 itself (out_dtype 16) and the Cast goes; the copy holds the same rounding of the same float32 values, so
// the gradients equal those of the split Q, K, V graph with the same copies (whose bias sums read their copies too).
TEST(Bf16Operands, PackedAttentionGradientWritesItsBf16Copy) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const ImportedModel* im = &tiny->im;
  const TensorMap& batch = tiny->batch;
  auto backend = make_cpu_backend();
  auto run = [&](bool packed, int* folded, int* bf16_grads, int* bias_grads) -> Expected<TensorMap> {
    TrainerConfig tc = testing::cuda_bf16_like_config(packed);
    // The QKV bias sum stays a BiasGrad here (not AttentionPackedGrad's own output: attention_grad_bias_sums_test).
    tc.graph.fuse_attention_bias_sums = false;
    GV_ASSIGN_OR_RETURN(auto t, Trainer::create(im->graph, tc, *backend));
    *folded = t->training_graph().fused.bf16_attention_grads;
    *bf16_grads = *bias_grads = 0;
    const Graph& g = t->training_graph().graph;
    for (const Node& n : g.nodes) {
      if (n.op_type == "AttentionPackedGrad" && g.value(n.outputs[0]).dtype == DType::kBFloat16 &&
          n.attrs.get_int("out_dtype", 1) == 16) {
        ++*bf16_grads;
      }
      if (n.op_type == "BiasGrad") {
        ++*bias_grads;
        EXPECT_EQ(g.value(n.inputs[0]).dtype, DType::kBFloat16) << n.name;
      }
    }
    double loss = 0;
    return t->compute_gradients(batch, &loss);
  };
  int folded = -1, bf16_grads = -1, bias_grads = -1, folded_split = -1, unused = -1, bias_split = -1;
  auto packed = run(true, &folded, &bf16_grads, &bias_grads);
  ASSERT_TRUE(packed.has_value()) << packed.status().message();
  auto split = run(false, &folded_split, &unused, &bias_split);
  ASSERT_TRUE(split.has_value()) << split.status().message();
  const int layers = im->graph.num_layers;
  EXPECT_EQ(folded, layers);
  EXPECT_EQ(bf16_grads, folded);
  EXPECT_EQ(folded_split, 0);
  // Per layer: the QKV, attention-projection and MLP down-projection biases sum their output gradient's copy (the
  // MLP up-projection's sum stays with its GeluGrad).
  EXPECT_EQ(bias_grads, 3 * layers);
  EXPECT_EQ(bias_split, 3 * layers);
  for (const auto& [name, g] : *split) {
    ASSERT_TRUE(packed->count(name)) << name;
    EXPECT_LE(relative_gap(packed->at(name), g), 1e-6) << "gradient of " << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Zoo, ModelBf16Operands,
                         ::testing::Combine(::testing::Values("gpt-tiny", "llama-tiny", "bert-tiny"),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<std::string, bool>>& i) {
                           std::string s = std::get<0>(i.param) + (std::get<1>(i.param) ? "_linear" : "");
                           for (char& c : s) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return s;
                         });

}  // namespace
}  // namespace gv
