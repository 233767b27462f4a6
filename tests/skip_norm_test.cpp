// galvatron SkipLayerNormalization and SkipRMSNormalization (runtime/ops/norm_skip_ops.cpp) and the pass that forms
// them after autograd (runtime/fuse_skip_norm.cpp), on the CPU (for SkipRMSNormalization likewise on llama-tiny):
// - the op: Sum is exactly X + Skip (X float32 or bfloat16), Y, Mean and InvStdDev the same bits as ONNX
//   LayerNormalization of that Sum, Y in bf16 the rounding of the float32 Y; bad inputs are errors naming the node;
// - the pass on gpt-tiny's CUDA-like training graph: both residual adds of every layer move out of their Linear into
//   the LayerNorm that reads the stream (2 per layer), every node's types re-infer, and with a float32 branch the loss
//   and every gradient are the same bits as without the pass; with a bf16 branch (the CUDA default) within bf16
//   rounding, and not the same bits (the rounding is really there).
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "runtime/fusion.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::run_op;

using testing::same_bits;

Attributes norm_attrs(int64_t out_dtype) {
  Attributes a;
  a.set_float("epsilon", 1e-5f);
  if (out_dtype) a.set_int("out_dtype", out_dtype);
  return a;
}

TEST(SkipLayerNorm, SumAndNormAsTheAddThenLayerNorm) {
  const Shape s{3, 5, 12};
  const Tensor skip = testing::randn_f32(s, 2), scale = testing::randn_f32({12}, 3), bias = testing::randn_f32({12}, 4);
  for (DType xt : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t out : {1, 16}) {
      SCOPED_TRACE(std::string(dtype_name(xt)) + " X, out_dtype " + std::to_string(out));
      const Tensor x = testing::randn_f32(s, 1).cast(xt);
      auto fused = run_op("SkipLayerNormalization", {x, skip, scale, bias}, norm_attrs(out), 4, 1, {},
                          kGalvatronDomain);
      ASSERT_TRUE(fused.has_value()) << fused.status().message();
      // The reference: the sum in float32, then ONNX LayerNormalization of it.
      Tensor sum = x.cast(DType::kFloat32);
      for (int64_t i = 0; i < sum.numel(); ++i) sum.data_as<float>()[i] += skip.data_as<float>()[i];
      auto ln = run_op("LayerNormalization", {sum, scale, bias}, norm_attrs(0), 3, 17);
      ASSERT_TRUE(ln.has_value()) << ln.status().message();
      EXPECT_TRUE(same_bits(fused->outputs[3], sum));
      EXPECT_TRUE(same_bits(fused->outputs[1], ln->outputs[1]));
      EXPECT_TRUE(same_bits(fused->outputs[2], ln->outputs[2]));
      const Tensor want_y = out == 16 ? ln->outputs[0].cast(DType::kBFloat16) : ln->outputs[0];
      EXPECT_TRUE(same_bits(fused->outputs[0], want_y));
      EXPECT_EQ(fused->outputs[1].shape(), (Shape{3, 5, 1}));
    }
  }
  // Without B, and with Y alone: as LayerNormalization without B.
  const Tensor x = testing::randn_f32(s, 1);
  auto fused = run_op("SkipLayerNormalization", {x, skip, scale}, norm_attrs(0), 1, 1, {}, kGalvatronDomain);
  ASSERT_TRUE(fused.has_value()) << fused.status().message();
  Tensor sum = x;
  for (int64_t i = 0; i < sum.numel(); ++i) sum.data_as<float>()[i] += skip.data_as<float>()[i];
  auto ln = run_op("LayerNormalization", {sum, scale}, norm_attrs(0), 1, 17);
  ASSERT_TRUE(ln.has_value()) << ln.status().message();
  EXPECT_TRUE(same_bits(fused->outputs[0], ln->outputs[0]));
}

TEST(SkipLayerNorm, BadInputsNameTheNode) {
  const Tensor x = testing::randn_f32({2, 8}, 1), skip = testing::randn_f32({2, 8}, 2),
               scale = testing::randn_f32({8}, 3);
  struct Case {
    std::vector<Tensor> inputs;
    Attributes attrs;
    const char* says;
  };
  Attributes axis0 = norm_attrs(0), out3 = norm_attrs(3), stash = norm_attrs(0);
  axis0.set_int("axis", 0);
  stash.set_int("stash_type", 11);
  const std::vector<Case> cases = {
      {{x, testing::randn_f32({2, 4}, 2), scale}, norm_attrs(0), "Skip must be float32 of X's shape"},
      {{x, skip.cast(DType::kBFloat16), scale}, norm_attrs(0), "Skip must be float32"},
      {{x.cast(DType::kFloat64), skip, scale}, norm_attrs(0), "X must be float32 or bfloat16"},
      {{x, skip, testing::randn_f32({4}, 3)}, norm_attrs(0), "Scale must be float32 of the normalized shape"},
      {{x, skip, scale, testing::randn_f32({2, 8}, 4)}, norm_attrs(0), "B must be float32 of the normalized shape"},
      {{x, skip, scale}, axis0, "only the last axis"},
      {{x, skip, scale}, out3, "out_dtype must be 1"},
      {{x, skip, scale}, stash, "stash_type must be 1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.says);
    auto r = run_op("SkipLayerNormalization", c.inputs, c.attrs, 4, 1, {}, kGalvatronDomain);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.status().message().find("test_node"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().message();
  }
}

// gpt-tiny trained with the CUDA backend's passes on the CPU, with the skip norms off (0), on with a float32 branch (1)
// or a bf16 one (16).
Expected<testing::TinyRun> train_tiny(const testing::TinyModel& tiny, Backend& backend, int skip_norm,
                                      std::set<int> checkpoint = {}, bool saved_statistics = true,
                                      bool packed_qkv = true) {
  TrainerConfig tc = testing::cuda_bf16_like_config(packed_qkv);
  tc.graph.checkpoint_layers = std::move(checkpoint);
  tc.graph.fuse_residual_add = true;
  tc.graph.fuse_norm_grad_add = true;
  tc.graph.fuse_norm_grad_outputs = true;
  tc.graph.save_norm_statistics = saved_statistics;
  tc.graph.fuse_skip_norm = skip_norm;
  return testing::train_tiny(tiny, backend, tc);
}

TEST(SkipLayerNorm, TinyGptEveryResidualMovesSameBitsWithFloat32Branch) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  auto backend = make_cpu_backend();
  auto plain = train_tiny(*tiny, *backend, 0);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto f32 = train_tiny(*tiny, *backend, 1);
  ASSERT_TRUE(f32.has_value()) << f32.status().message();

  const TrainingGraph& tg = f32->trainer->training_graph();
  EXPECT_EQ(tg.fused.skip_norms, 2 * layers);
  EXPECT_EQ(plain->trainer->training_graph().fused.skip_norms, 0);
  int skips = 0, residual_linears = 0;
  for (const Node& n : tg.graph.nodes) {
    if (n.op_type == "SkipLayerNormalization") {
      ++skips;
      ASSERT_EQ(n.outputs.size(), 4u) << n.name;
      EXPECT_EQ(tg.graph.value(n.inputs[0]).dtype, DType::kFloat32) << n.name;
      EXPECT_GT(tg.graph.value(n.outputs[1]).name.size(), 0u);
    }
    if (n.op_type == "Linear" && n.inputs.size() > 3 && n.inputs[3] != kNoValue) ++residual_linears;
  }
  EXPECT_EQ(skips, 2 * layers);
  EXPECT_EQ(residual_linears, 0);
  EXPECT_EQ(tg.graph.nodes.size(), plain->trainer->training_graph().graph.nodes.size());
  testing::expect_inference_agrees(tg.graph);

  testing::expect_same_loss_and_gradients(f32->loss, f32->grads, plain->loss, plain->grads);
}

// With every layer recomputed in the backward: the recomputed pairs are rewritten too, the same bits as without;
// and with the norms' statistics not saved (the skip op then gets Mean and InvStdDev outputs nothing reads).
TEST(SkipLayerNorm, TinyGptWithCheckpointingOrUnsavedStatisticsSameBits) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  std::set<int> all;
  for (int l = 0; l < layers; ++l) all.insert(l);
  auto backend = make_cpu_backend();
  for (bool checkpoint : {true, false}) {
    SCOPED_TRACE(checkpoint ? "every layer checkpointed" : "statistics not saved");
    const std::set<int> layers_cp = checkpoint ? all : std::set<int>{};
    auto plain = train_tiny(*tiny, *backend, 0, layers_cp, checkpoint);
    ASSERT_TRUE(plain.has_value()) << plain.status().message();
    auto f32 = train_tiny(*tiny, *backend, 1, layers_cp, checkpoint);
    ASSERT_TRUE(f32.has_value()) << f32.status().message();
    const TrainingGraph& tg = f32->trainer->training_graph();
    if (checkpoint) {
      EXPECT_GE(tg.fused.skip_norms, 2 * layers);
    } else {
      EXPECT_EQ(tg.fused.skip_norms, 2 * layers);
    }
    for (const Node& n : tg.graph.nodes) {
      if (n.op_type != "SkipLayerNormalization") continue;
      ASSERT_EQ(n.outputs.size(), 4u) << n.name;
      for (ValueId o : n.outputs) EXPECT_NE(o, kNoValue) << n.name;
    }
    testing::expect_inference_agrees(tg.graph);
    testing::expect_same_loss_and_gradients(f32->loss, f32->grads, plain->loss, plain->grads);
  }
}

TEST(SkipLayerNorm, TinyGptBf16BranchWithinRounding) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  auto plain = train_tiny(*tiny, *backend, 0);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto bf16 = train_tiny(*tiny, *backend, 16);
  ASSERT_TRUE(bf16.has_value()) << bf16.status().message();
  const TrainingGraph& tg = bf16->trainer->training_graph();
  int bf16_branches = 0;
  for (const Node& n : tg.graph.nodes) {
    if (n.op_type == "SkipLayerNormalization" && tg.graph.value(n.inputs[0]).dtype == DType::kBFloat16) {
      ++bf16_branches;
    }
  }
  EXPECT_EQ(bf16_branches, 2 * tiny->im.graph.num_layers);
  testing::expect_inference_agrees(tg.graph);

  EXPECT_NEAR(bf16->loss, plain->loss, 1e-2 * std::fabs(plain->loss));
  EXPECT_NE(bf16->loss, plain->loss);
  for (const auto& [name, want] : plain->grads) {
    const Tensor a = bf16->grads.at(name).cast(DType::kFloat32), b = want.cast(DType::kFloat32);
    EXPECT_LE(testing::relative_gap(a, b), 2e-2) << name;
  }
}

TEST(SkipLayerNorm, BadBranchTypeIsAnError) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  auto r = train_tiny(*tiny, *backend, 7);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("fuse_skip_norm"), std::string::npos) << r.status().message();
}

// ---- galvatron SkipRMSNormalization (Llama's pre-norm layers)
// ----------------------------------------------------------

TEST(SkipRmsNorm, SumAndNormAsTheAddThenRmsNorm) {
  const Shape s{3, 5, 12};
  const Tensor skip = testing::randn_f32(s, 12), scale = testing::randn_f32({12}, 13);
  for (DType xt : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t out : {1, 16}) {
      SCOPED_TRACE(std::string(dtype_name(xt)) + " X, out_dtype " + std::to_string(out));
      const Tensor x = testing::randn_f32(s, 11).cast(xt);
      auto fused = run_op("SkipRMSNormalization", {x, skip, scale}, norm_attrs(out), 2, 1, {}, kGalvatronDomain);
      ASSERT_TRUE(fused.has_value()) << fused.status().message();
      Tensor sum = x.cast(DType::kFloat32);
      for (int64_t i = 0; i < sum.numel(); ++i) sum.data_as<float>()[i] += skip.data_as<float>()[i];
      auto rms = run_op("RMSNormalization", {sum, scale}, norm_attrs(0), 1, 23);
      ASSERT_TRUE(rms.has_value()) << rms.status().message();
      EXPECT_TRUE(same_bits(fused->outputs[1], sum));
      const Tensor want_y = out == 16 ? rms->outputs[0].cast(DType::kBFloat16) : rms->outputs[0];
      EXPECT_TRUE(same_bits(fused->outputs[0], want_y));
    }
  }
  // Bad inputs name the node and the problem.
  auto bad_skip = run_op("SkipRMSNormalization", {testing::randn_f32(s, 1), skip.cast(DType::kBFloat16), scale},
                         norm_attrs(0), 2, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(bad_skip.has_value());
  EXPECT_NE(bad_skip.status().message().find("Skip must be float32"), std::string::npos) << bad_skip.status().message();
  EXPECT_NE(bad_skip.status().message().find("test_node"), std::string::npos) << bad_skip.status().message();
  auto bad_scale = run_op("SkipRMSNormalization", {testing::randn_f32(s, 1), skip, testing::randn_f32({7}, 2)},
                          norm_attrs(0), 2, 1, {}, kGalvatronDomain);
  ASSERT_FALSE(bad_scale.has_value());
  EXPECT_NE(bad_scale.status().message().find("Scale must be float32 of the normalized shape [12]"), std::string::npos)
      << bad_scale.status().message();
}

// llama-tiny as the CUDA backend builds it: both residual adds of every layer move into the RMSNorm that reads the
// stream (the second into the next layer's, or the final norm), the same loss and gradients bit for bit with a float32
// branch, within bf16 rounding with a bf16 one.
TEST(SkipRmsNorm, TinyLlamaEveryResidualMoves) {
  auto tiny = testing::tiny_model("llama-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  const int layers = tiny->im.graph.num_layers;
  auto backend = make_cpu_backend();
  auto plain = train_tiny(*tiny, *backend, 0, {}, true, false);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto f32 = train_tiny(*tiny, *backend, 1, {}, true, false);
  ASSERT_TRUE(f32.has_value()) << f32.status().message();
  const TrainingGraph& tg = f32->trainer->training_graph();
  EXPECT_EQ(tg.fused.skip_norms, 2 * layers);
  int skips = 0, residual_linears = 0;
  for (const Node& n : tg.graph.nodes) {
    skips += n.op_type == "SkipRMSNormalization";
    if (n.op_type == "Linear" && n.inputs.size() > 3 && n.inputs[3] != kNoValue) ++residual_linears;
  }
  EXPECT_EQ(skips, 2 * layers);
  EXPECT_EQ(residual_linears, 0);
  testing::expect_inference_agrees(tg.graph);
  testing::expect_same_loss_and_gradients(f32->loss, f32->grads, plain->loss, plain->grads);

  auto bf16 = train_tiny(*tiny, *backend, 16, {}, true, false);
  ASSERT_TRUE(bf16.has_value()) << bf16.status().message();
  testing::expect_inference_agrees(bf16->trainer->training_graph().graph);
  EXPECT_NEAR(bf16->loss, plain->loss, 1e-2 * std::fabs(plain->loss));
  EXPECT_NE(bf16->loss, plain->loss);
  for (const auto& [name, want] : plain->grads) {
    const Tensor a = bf16->grads.at(name).cast(DType::kFloat32), b = want.cast(DType::kFloat32);
    EXPECT_LE(testing::relative_gap(a, b), 2e-2) << name;
  }
}

}  // namespace
}  // namespace gv
