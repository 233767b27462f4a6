// The residual stream kept in bf16 (runtime/bf16_residual_stream.cpp) on the CPU: SkipLayerNormalization with
// sum_dtype 16 stores the rounding of X + Skip and normalizes exactly that row (the same bits as LayerNormalization of
// it, a bf16 Skip as its float32 widening); LayerNormalizationGrad with a bf16 X, Addend and dY the same bits as on
// their float32 widenings; bad requests are errors naming the node; the memory plan gives no buffer to a gradient's
// unread float32 dX (OpSchema::skippable_outputs); on gpt-tiny's CUDA-like graph every layer's Sums go bf16 (two per
// layer, the embeddings' sum stays float32), the gradients read each other's bf16 copies and their products' dY in
// bf16, and the loss and gradients stay within bf16 rounding of the float32 stream's (BERT's post-norm stream and
// Llama's RMSNorm stream too).
#include <gtest/gtest.h>

#include "runtime/bf16_operands.h"
#include "runtime/memory_plan.h"
#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::run_op;
using testing::same_bits;
Tensor randn(const Shape& s, uint64_t seed) { return testing::randn_f32(s, seed); }
Tensor bf16(const Tensor& t) { return t.cast(DType::kBFloat16); }
Tensor f32(const Tensor& t) { return t.cast(DType::kFloat32); }

TEST(Bf16ResidualStream, SkipNormRoundsTheSumAndNormalizesIt) {
  const Tensor x = bf16(randn({4, 3, 16}, 1)), skip = randn({4, 3, 16}, 2), scale = randn({16}, 3),
               bias = randn({16}, 4);
  Tensor want_sum = f32(x);
  for (int64_t i = 0; i < want_sum.numel(); ++i) want_sum.data_as<float>()[i] += skip.data_as<float>()[i];
  want_sum = bf16(want_sum);
  for (int64_t out : {1, 16}) {
    SCOPED_TRACE("out_dtype " + std::to_string(out));
    Attributes a;
    a.set_int("out_dtype", out);
    a.set_int("sum_dtype", 16);
    auto got = run_op("SkipLayerNormalization", {x, skip, scale, bias}, a, 4, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(got.has_value()) << got.status().message();
    EXPECT_TRUE(same_bits(got->outputs[3], want_sum)) << "Sum: the rounding of X + Skip";
    Attributes ln;
    ln.set_int("out_dtype", out);
    auto norm = run_op("LayerNormalization", {f32(want_sum), scale, bias}, ln, 3, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(norm.has_value()) << norm.status().message();
    for (int o = 0; o < 3; ++o) EXPECT_TRUE(same_bits(got->outputs[o], norm->outputs[o])) << "output " << o;
    // A bf16 Skip (the previous layer's stream) is its float32 widening.
    const Tensor skip16 = bf16(skip);
    auto from16 = run_op("SkipLayerNormalization", {x, skip16, scale, bias}, a, 4, 1, {}, kGalvatronDomain);
    auto from32 = run_op("SkipLayerNormalization", {x, f32(skip16), scale, bias}, a, 4, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(from16.has_value() && from32.has_value());
    for (int o = 0; o < 4; ++o) EXPECT_TRUE(same_bits(from16->outputs[o], from32->outputs[o])) << "output " << o;
  }
}

TEST(Bf16ResidualStream, NormGradReadsTheStreamWidened) {
  const Tensor dy = randn({4, 3, 16}, 5), x = bf16(randn({4, 3, 16}, 6)), scale = randn({16}, 7),
               add = bf16(randn({4, 3, 16}, 8));
  auto stats = run_op("LayerNormalization", {f32(x), scale}, {}, 3, 17);
  ASSERT_TRUE(stats.has_value()) << stats.status().message();
  const Tensor mean = stats->outputs[1], inv_std = stats->outputs[2];
  for (int variant = 0; variant < 3; ++variant) {
    const bool addend = variant > 0, dy16 = variant == 2;
    SCOPED_TRACE(std::string(addend ? "with addend" : "without addend") + (dy16 ? ", bf16 dY" : ""));
    const Tensor none, d = dy16 ? bf16(dy) : dy;
    auto got = run_op("LayerNormalizationGrad", {d, x, scale, mean, inv_std, none, none, addend ? add : none}, {}, 5, 1,
                      {}, kGalvatronDomain);
    auto want =
        run_op("LayerNormalizationGrad", {f32(d), f32(x), scale, mean, inv_std, none, none, addend ? f32(add) : none},
               {}, 5, 1, {}, kGalvatronDomain);
    ASSERT_TRUE(got.has_value()) << got.status().message();
    ASSERT_TRUE(want.has_value()) << want.status().message();
    for (int o = 0; o < 5; ++o) EXPECT_TRUE(same_bits(got->outputs[o], want->outputs[o])) << "output " << o;
  }
}

TEST(Bf16ResidualStream, BadRequestsNameTheNode) {
  const Tensor x = bf16(randn({3, 8}, 1)), skip = randn({3, 8}, 2), scale = randn({8}, 3);
  auto skip_error = [&](const Tensor& s, int64_t sum_dtype) {
    Attributes a;
    a.set_int("sum_dtype", sum_dtype);
    auto out = run_op("SkipLayerNormalization", {x, s, scale}, a, 4, 1, {}, kGalvatronDomain);
    return out.has_value() ? std::string("ok") : out.status().message();
  };
  auto grad_error = [&](const Tensor& dy, const Tensor& xs, const Tensor& add) {
    const Tensor none;
    auto out =
        run_op("LayerNormalizationGrad", {dy, xs, scale, none, none, none, none, add}, {}, 3, 1, {}, kGalvatronDomain);
    return out.has_value() ? std::string("ok") : out.status().message();
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {skip_error(skip, 7), "sum_dtype must be 1 (float32) or 16 (bfloat16)"},
      {skip_error(bf16(skip), 1), "Skip must be float32 of X's shape"},
      {grad_error(bf16(skip), randn({3, 8}, 9), Tensor()), "dY must be float32 of X's shape"},
      {grad_error(bf16(skip).cast(DType::kFloat64), x, Tensor()), "dY must be float32 or bfloat16"},
      {grad_error(randn({3, 8}, 4), randn({3, 8}, 5), bf16(skip).cast(DType::kFloat64)), "Addend must match X"},
  };
  for (const auto& [msg, want] : cases) {
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_node"), std::string::npos) << msg;
  }
  EXPECT_EQ(skip_error(bf16(skip), 16), "ok");
  EXPECT_EQ(grad_error(randn({3, 8}, 4), x, bf16(skip)), "ok");
  // RMSNormalizationGrad's stream likewise: a bf16 X takes float32 or bf16 dY and Addend, nothing else.
  auto rms_error = [&](const Tensor& dy, const Tensor& add) {
    auto out = run_op("RMSNormalizationGrad", {dy, x, scale, add}, {}, 3, 1, {}, kGalvatronDomain);
    return out.has_value() ? std::string("ok") : out.status().message();
  };
  const std::string dy64 = rms_error(randn({3, 8}, 4).cast(DType::kFloat64), bf16(skip));
  EXPECT_NE(dy64.find("dY must match X"), std::string::npos) << dy64;
  EXPECT_NE(dy64.find("test_node"), std::string::npos) << dy64;
  const std::string add64 = rms_error(bf16(randn({3, 8}, 4)), skip.cast(DType::kFloat64));
  EXPECT_NE(add64.find("Addend must match X"), std::string::npos) << add64;
  EXPECT_EQ(rms_error(randn({3, 8}, 4), bf16(skip)), "ok");
  EXPECT_EQ(rms_error(bf16(randn({3, 8}, 4)), skip), "ok");
}

// A tiny zoo model's step with the float32 stream and with the stream in bf16 (the CUDA-like bf16 options); the
// backend and model outlive the trainers that use them.
struct StreamRuns {
  std::unique_ptr<Backend> backend;
  testing::TinyModel tiny;
  int layers = 0;
  testing::TinyRunPair runs;
};
Expected<std::unique_ptr<StreamRuns>> stream_runs(const std::string& name) {
  auto r = std::make_unique<StreamRuns>();
  GV_ASSIGN_OR_RETURN(r->tiny, testing::tiny_model(name));
  r->layers = r->tiny.im.graph.num_layers;
  r->backend = make_cpu_backend();
  GV_ASSIGN_OR_RETURN(r->runs, testing::train_tiny_off_on(r->tiny, *r->backend, testing::cuda_bf16_stream_config));
  return r;
}

// Float32 dX values of norm gradients that get no buffer in the training graph's memory plan.
int unbuffered_norm_grads(const Graph& g) {
  std::vector<NodeId> order(g.nodes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<NodeId>(i);
  const MemoryPlan plan = plan_memory(g, order, {});
  int n = 0;
  for (const Node& node : g.nodes) {
    const bool grad = node.op_type == "LayerNormalizationGrad" || node.op_type == "RMSNormalizationGrad";
    if (grad && plan.offset[node.outputs[0]] < 0) ++n;
  }
  return n;
}

TEST(Bf16ResidualStream, GptStreamInBf16GradientsWithinRounding) {
  auto got = stream_runs("gpt-tiny");
  ASSERT_TRUE(got.has_value()) << got.status().message();
  const int layers = (*got)->layers;
  const testing::TinyRunPair* runs = &(*got)->runs;
  const Graph& g = runs->on.trainer->training_graph().graph;
  const Graph& plain = runs->off.trainer->training_graph().graph;
  // Two Sums per layer, and the dY of every norm gradient but the final norm's (the fused head's dX).
  EXPECT_EQ(runs->on.trainer->training_graph().fused.bf16_residual_stream, 2 * layers + 2 * layers - 1);
  EXPECT_EQ(runs->off.trainer->training_graph().fused.bf16_residual_stream, 0);
  int bf16_sums = 0, bf16_x = 0, bf16_addends = 0, bf16_dy = 0;
  for (const Node& n : g.nodes) {
    if (n.op_type == "SkipLayerNormalization") {
      bf16_sums += g.value(n.outputs[3]).dtype == DType::kBFloat16;
      EXPECT_EQ(n.attrs.get_int("sum_dtype", 1), 16) << n.name;
    }
    if (n.op_type == "LayerNormalizationGrad") {
      const bool x16 = g.value(n.inputs[1]).dtype == DType::kBFloat16;
      bf16_x += x16;
      bf16_dy += g.value(n.inputs[0]).dtype == DType::kBFloat16;
      if (n.inputs.size() > 7 && n.inputs[7] != kNoValue) {
        const bool a16 = g.value(n.inputs[7]).dtype == DType::kBFloat16;
        bf16_addends += a16;
        EXPECT_EQ(a16, x16) << n.name << ": X and Addend in one type";
      }
    }
  }
  // Every layer's two Sums; the first norm reads the embeddings' float32 sum, its gradient float32 X and Addend.
  EXPECT_EQ(bf16_sums, 2 * layers);
  EXPECT_EQ(bf16_x, 2 * layers);
  EXPECT_EQ(bf16_addends, 2 * layers - 1);
  EXPECT_EQ(bf16_dy, 2 * layers - 1);
  // The float32 dX of every gradient whose reader took its bf16 copy has no buffer; the first layer's MLP norm
  // gradient keeps its dX for the first norm's float32 Addend.
  EXPECT_EQ(unbuffered_norm_grads(g), 2 * layers - 1);
  EXPECT_EQ(unbuffered_norm_grads(plain), 0);
  testing::expect_inference_agrees(g);
  // bf16 rounding of the stream and its gradient at every layer: a few 1e-3 apart at most.
  EXPECT_NEAR(runs->on.loss, runs->off.loss, 5e-3 * std::fabs(runs->off.loss));
  testing::expect_gradients_close(runs->off.grads, runs->on.grads, 2e-2, "gpt-tiny, bf16 stream");
}

TEST(Bf16ResidualStream, BertAndLlamaWithinRounding) {
  // BERT's post-norm stream (each norm's output is the stream the next layer adds to; its Sums only the gradients
  // read) and Llama's RMSNorm stream (SkipRMSNormalization, RMSNormalizationGrad), whose norms' dY sum two products
  // in place and so stay float32.
  for (const std::string name : {"bert-tiny", "llama-tiny"}) {
    SCOPED_TRACE(name);
    auto got = stream_runs(name);
    ASSERT_TRUE(got.has_value()) << got.status().message();
    const int layers = (*got)->layers;
    const testing::TinyRunPair* runs = &(*got)->runs;
    const Graph& g = runs->on.trainer->training_graph().graph;
    int sums = 0;
    for (const Node& n : g.nodes) {
      if (n.op_type == "SkipLayerNormalization" || n.op_type == "SkipRMSNormalization") {
        sums += g.value(n.outputs.back()).dtype == DType::kBFloat16;
      }
    }
    EXPECT_EQ(sums, 2 * layers);
    EXPECT_GE(runs->on.trainer->training_graph().fused.bf16_residual_stream, sums);
    // Llama's stream gradient as GPT's: only the first layer's MLP norm keeps a float32 dX. (In BERT's post-norm
    // layers each norm's gradient feeds the branch's products as well, through float32 values.)
    if (name == "llama-tiny") EXPECT_EQ(unbuffered_norm_grads(g), 2 * layers - 1);
    testing::expect_inference_agrees(g);
    EXPECT_NEAR(runs->on.loss, runs->off.loss, 5e-3 * std::fabs(runs->off.loss));
    testing::expect_gradients_close(runs->off.grads, runs->on.grads, 2e-2, name + ", bf16 stream");
  }
}

}  // namespace
}  // namespace gv
