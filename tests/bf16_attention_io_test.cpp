// bf16 attention I/O (runtime/bf16_operands.h bf16_attention_io) on the CPU: the packed attention ops with bf16 QKV,
// Y and dY compute exactly what they compute on the widened float32 values, and round Y / dQKV as a Cast would; in a
// training graph the pass stores each layer's QKV, Y and dY in bf16, removes Y's Cast, keeps every node's inferred
// types true, and leaves the gradients those of the float32 attention within bf16 rounding.
#include <gtest/gtest.h>

#include <cstring>

#include "runtime/bf16_operands.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::relative_gap;
using testing::run_op;

using testing::same_bits;

Attributes packed_attrs(int64_t y_dtype = 0, int64_t out_dtype = 0) {
  Attributes a;
  a.set_int("num_heads", 2);
  a.set_int("is_causal", 1);
  if (y_dtype) a.set_int("y_dtype", y_dtype);
  if (out_dtype) a.set_int("out_dtype", out_dtype);
  return a;
}

// The loss within 1% and every gradient within `tol` (relative L2) of the float32 attention I/O's, and some gradient
// not equal (the attention sees bf16-rounded values).
void expect_close_training(const TensorMap& io, double loss_io, const TensorMap& f32, double loss_f32, double tol,
                           const char* what) {
  EXPECT_NEAR(loss_io, loss_f32, 1e-2 * std::abs(loss_f32));
  double largest = 0;
  for (const auto& [name, g] : f32) {
    ASSERT_TRUE(io.count(name)) << name;
    const double gap = relative_gap(io.at(name), g);
    largest = std::max(largest, gap);
    EXPECT_LE(gap, tol) << "gradient of " << name;
  }
  EXPECT_GT(largest, 0.0) << "the attention should see bf16-rounded values";
  std::printf("[ %s ] loss %.6f vs %.6f; largest relative gradient gap %.3g\n", what, loss_io, loss_f32, largest);
}

// B 2, S 5, H 2, D 3: QKV [2, 5, 18].
TEST(Bf16AttentionIo, PackedOpsOnBf16EqualTheWidenedFloat32) {
  const Tensor qkv16 = testing::randn_f32({2, 5, 18}, 1).cast(DType::kBFloat16);
  const Tensor qkv = qkv16.cast(DType::kFloat32);
  auto ref = run_op("AttentionPacked", {qkv}, packed_attrs(), 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  auto mixed = run_op("AttentionPacked", {qkv16}, packed_attrs(16), 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(mixed.has_value()) << mixed.status().message();
  EXPECT_TRUE(same_bits(mixed->outputs[0], ref->outputs[0].cast(DType::kBFloat16))) << "Y is Y's rounding";
  EXPECT_TRUE(same_bits(mixed->outputs[1], ref->outputs[1])) << "LSE float32, the same";

  const Tensor dy16 = testing::randn_f32({2, 5, 6}, 2).cast(DType::kBFloat16);
  const Tensor y16 = mixed->outputs[0];
  auto gref = run_op("AttentionPackedGrad",
                     {qkv, dy16.cast(DType::kFloat32), y16.cast(DType::kFloat32), ref->outputs[1]}, packed_attrs(), 1,
                     1, {}, kGalvatronDomain);
  ASSERT_TRUE(gref.has_value()) << gref.status().message();
  for (int64_t out : {1, 16}) {
    SCOPED_TRACE(out);
    auto g = run_op("AttentionPackedGrad", {qkv16, dy16, y16, ref->outputs[1]}, packed_attrs(0, out), 1, 1, {},
                    kGalvatronDomain);
    ASSERT_TRUE(g.has_value()) << g.status().message();
    const Tensor want = out == 16 ? gref->outputs[0].cast(DType::kBFloat16) : gref->outputs[0];
    EXPECT_TRUE(same_bits(g->outputs[0], want));
  }
}

TEST(Bf16AttentionIo, BadTypesNameTheNode) {
  const Tensor qkv = testing::randn_f32({1, 4, 18}, 3);
  // float64 QKV has no bf16 results; LSE must be float32 beside bf16 inputs.
  auto f64 = run_op("AttentionPacked", {qkv.cast(DType::kFloat64)}, packed_attrs(16), 2, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(f64.has_value());
  EXPECT_NE(f64.status().message().find("y_dtype 16 needs float32 or bfloat16 inputs"), std::string::npos)
      << f64.status().message();
  EXPECT_NE(f64.status().message().find("test_node"), std::string::npos) << f64.status().message();
  auto lse = run_op("AttentionPackedGrad",
                    {qkv.cast(DType::kBFloat16), testing::randn_f32({1, 4, 6}, 4), testing::randn_f32({1, 4, 6}, 5),
                     testing::randn_f32({1, 2, 4}, 6).cast(DType::kBFloat16)},
                    packed_attrs(), 1, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(lse.has_value());
  EXPECT_NE(lse.status().message().find("LSE must be float32 [1,2,4]"), std::string::npos)
      << lse.status().message();
}

// gpt-tiny as the CUDA backend builds it in bf16 (packed QKV, shared bf16 operands, fused Linear), on the CPU; with and
// without activation checkpointing (the recomputed forward's attention reads and writes bf16 too).
class GptTinyBf16AttentionIo : public ::testing::TestWithParam<bool> {};

TEST_P(GptTinyBf16AttentionIo, StoresQkvYAndDyInBf16) {
  const bool checkpoint = GetParam();
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const ImportedModel* im = &tiny->im;
  const TensorMap& batch = tiny->batch;
  auto backend = make_cpu_backend();
  const int layers = im->graph.num_layers;
  auto run = [&](bool io, double* loss) -> Expected<TensorMap> {
    TrainerConfig tc = testing::cuda_bf16_like_config();
    tc.graph.bf16_attention_io = io;
    if (checkpoint) tc.graph.checkpoint_layers = {0, 1};
    GV_ASSIGN_OR_RETURN(auto t, Trainer::create(im->graph, tc, *backend));
    const Graph& g = t->training_graph().graph;
    if (io) {
      // Per layer QKV, Y and dY; checkpointed, the recomputed QKV and Y too (the forward's Y then has no copy).
      EXPECT_EQ(t->training_graph().fused.bf16_attention_io, (checkpoint ? 4 : 3) * layers);
      int forwards = 0, backwards = 0, bf16_ys = 0;
      for (const Node& n : g.nodes) {
        if (n.op_type == "AttentionPacked") {
          ++forwards;  // per layer: the forward, and its recomputation under checkpointing
          EXPECT_EQ(g.value(n.inputs[0]).dtype, DType::kBFloat16) << n.name << ": QKV";
          bf16_ys += g.value(n.outputs[0]).dtype == DType::kBFloat16;
          EXPECT_EQ(g.value(n.outputs[1]).dtype, DType::kFloat32) << n.name << ": LSE";
          const NodeId qkv_producer = g.value(n.inputs[0]).producer;
          EXPECT_TRUE(qkv_producer >= 0 && g.nodes[qkv_producer].op_type == "Linear") << n.name;
        }
        if (n.op_type == "AttentionPackedGrad") {
          ++backwards;
          for (int i : {0, 1, 2}) EXPECT_EQ(g.value(n.inputs[i]).dtype, DType::kBFloat16) << n.name << " input " << i;
        }
        if (n.op_type == "Cast") {  // no copy of an attention output is made any more
          const NodeId p = g.value(n.inputs[0]).producer;
          EXPECT_FALSE(p >= 0 && g.nodes[p].op_type == "AttentionPacked") << n.name;
        }
      }
      EXPECT_EQ(forwards, (checkpoint ? 2 : 1) * layers);
      // Checkpointed, the first forward's Y feeds one product (no shared copy) and stays float32.
      EXPECT_EQ(bf16_ys, layers);
      EXPECT_EQ(backwards, layers);
      testing::expect_inference_agrees(g);
    } else {
      EXPECT_EQ(t->training_graph().fused.bf16_attention_io, 0);
    }
    return t->compute_gradients(batch, loss);
  };
  double loss_io = 0, loss_f32 = 0;
  auto io = run(true, &loss_io);
  ASSERT_TRUE(io.has_value()) << io.status().message();
  auto f32 = run(false, &loss_f32);
  ASSERT_TRUE(f32.has_value()) << f32.status().message();
  expect_close_training(*io, loss_io, *f32, loss_f32, 1e-2, "bf16 io");
}

INSTANTIATE_TEST_SUITE_P(Checkpointing, GptTinyBf16AttentionIo, ::testing::Bool());

// ---- Q, K, V apart (Llama's 3-D form)
// --------------------------------------------------------------------------------

Attributes separate_attrs() {
  Attributes a;
  a.set_int("q_num_heads", 4);
  a.set_int("kv_num_heads", 2);
  a.set_int("is_causal", 1);
  return a;
}

// B 2, S 5, Hq 4, Hkv 2, D 3 in the 3-D form: bf16 operands compute what the widened float32 ones compute, the results
// rounded; LSE stays float32.
TEST(Bf16AttentionIo, SeparateOpsOnBf16EqualTheWidenedFloat32) {
  const Tensor q16 = testing::randn_f32({2, 5, 12}, 11).cast(DType::kBFloat16);
  const Tensor k16 = testing::randn_f32({2, 5, 6}, 12).cast(DType::kBFloat16);
  const Tensor v16 = testing::randn_f32({2, 5, 6}, 13).cast(DType::kBFloat16);
  const Tensor dy16 = testing::randn_f32({2, 5, 12}, 14).cast(DType::kBFloat16);
  auto wide = [](const Tensor& t) { return t.cast(DType::kFloat32); };
  auto ref =
      run_op("AttentionWithLse", {wide(q16), wide(k16), wide(v16)}, separate_attrs(), 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  auto mixed = run_op("AttentionWithLse", {q16, k16, v16}, separate_attrs(), 2, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(mixed.has_value()) << mixed.status().message();
  EXPECT_TRUE(same_bits(mixed->outputs[0], ref->outputs[0].cast(DType::kBFloat16))) << "Y is Y's rounding";
  EXPECT_TRUE(same_bits(mixed->outputs[1], ref->outputs[1])) << "LSE float32, the same";

  const Tensor y16 = mixed->outputs[0];
  auto gref =
      run_op("AttentionGrad", {wide(q16), wide(k16), wide(v16), Tensor(), wide(dy16), wide(y16), ref->outputs[1]},
             separate_attrs(), 3, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(gref.has_value()) << gref.status().message();
  auto g = run_op("AttentionGrad", {q16, k16, v16, Tensor(), dy16, y16, ref->outputs[1]}, separate_attrs(), 3, 1, {},
                  kGalvatronDomain);
  ASSERT_TRUE(g.has_value()) << g.status().message();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(g->outputs[i].dtype(), DType::kBFloat16) << i;
    EXPECT_TRUE(same_bits(g->outputs[i], gref->outputs[i].cast(DType::kBFloat16))) << "gradient " << i;
  }
  // One float type: a float32 K beside bf16 Q names the node and both types; LSE must be float32 beside bf16.
  auto k32 = run_op("AttentionWithLse", {q16, wide(k16), v16}, separate_attrs(), 2, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(k32.has_value());
  EXPECT_NE(k32.status().message().find("K is float32 but Q is bfloat16"), std::string::npos) << k32.status().message();
  auto lse16 = run_op("AttentionGrad", {q16, k16, v16, Tensor(), dy16, y16, ref->outputs[1].cast(DType::kBFloat16)},
                      separate_attrs(), 3, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(lse16.has_value());
  EXPECT_NE(lse16.status().message().find("LSE must be float32"), std::string::npos) << lse16.status().message();
}

// The zoo's llama as the CUDA backend builds it in bf16 (Q, K, V apart, rotations fused, shared bf16 operands), on the
// CPU, with and without activation checkpointing: per layer Q, K, V, Y, dY, dQ, dK, dV stored in bf16 (around the
// recomputed forward when checkpointed), the Linears and rotations writing them, no copy Casts of attention values
// left; the loss and gradients those of the float32 attention I/O within bf16 rounding.
class LlamaBf16AttentionIo : public ::testing::TestWithParam<bool> {};

TEST_P(LlamaBf16AttentionIo, StoresSeparateAttentionValuesInBf16) {
  const bool checkpoint = GetParam();
  auto tiny = testing::tiny_model("llama-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const ImportedModel* im = &tiny->im;
  auto backend = make_cpu_backend();
  const int layers = im->graph.num_layers;
  auto run = [&](bool io, double* loss) -> Expected<TensorMap> {
    TrainerConfig tc = testing::cuda_bf16_like_config(false);
    tc.graph.bf16_attention_io = io;
    if (checkpoint) tc.graph.checkpoint_layers = {0, 1};
    GV_ASSIGN_OR_RETURN(auto t, Trainer::create(im->graph, tc, *backend));
    const Graph& g = t->training_graph().graph;
    if (io) {
      EXPECT_EQ(t->training_graph().fused.bf16_attention_io, 8 * layers);
      int forwards = 0, bf16_forwards = 0, backwards = 0;
      for (const Node& n : g.nodes) {
        if (n.op_type == "AttentionWithLse") {
          // Checkpointed, the first forward (whose LSE no backward reads) stays float32; its recomputation is bf16.
          ++forwards;
          if (g.value(n.inputs[0]).dtype != DType::kBFloat16) continue;
          ++bf16_forwards;
          for (int i : {1, 2}) EXPECT_EQ(g.value(n.inputs[i]).dtype, DType::kBFloat16) << n.name << " input " << i;
          EXPECT_EQ(g.value(n.outputs[0]).dtype, DType::kBFloat16) << n.name << ": Y";
          EXPECT_EQ(g.value(n.outputs[1]).dtype, DType::kFloat32) << n.name << ": LSE";
        }
        if (n.op_type == "AttentionGrad") {
          ++backwards;
          for (int i : {0, 1, 2, 4, 5}) EXPECT_EQ(g.value(n.inputs[i]).dtype, DType::kBFloat16) << n.name << " " << i;
          for (ValueId o : n.outputs) EXPECT_EQ(g.value(o).dtype, DType::kBFloat16) << n.name;
        }
        if (n.op_type == "Cast") {  // no copy of an attention value or of a rotation's result is made any more
          const NodeId p = g.value(n.inputs[0]).producer;
          const std::string op = p >= 0 ? g.nodes[p].op_type : "";
          EXPECT_TRUE(op != "AttentionWithLse" && op != "AttentionGrad" && op != "RotaryEmbedding") << n.name;
        }
      }
      EXPECT_EQ(forwards, (checkpoint ? 2 : 1) * layers);
      EXPECT_EQ(bf16_forwards, layers);
      EXPECT_EQ(backwards, layers);
      testing::expect_inference_agrees(g);
    } else {
      EXPECT_EQ(t->training_graph().fused.bf16_attention_io, 0);
    }
    return t->compute_gradients(tiny->batch, loss);
  };
  double loss_io = 0, loss_f32 = 0;
  auto io = run(true, &loss_io);
  ASSERT_TRUE(io.has_value()) << io.status().message();
  auto f32 = run(false, &loss_f32);
  ASSERT_TRUE(f32.has_value()) << f32.status().message();
  expect_close_training(*io, loss_io, *f32, loss_f32, 3e-2, "bf16 io, llama");
}

INSTANTIATE_TEST_SUITE_P(Checkpointing, LlamaBf16AttentionIo, ::testing::Bool());

}  // namespace
}  // namespace gv
