// Persistent bf16 parameter copies kept by AdamW (runtime/bf16_operands.h keep_bf16_param_copies) on the CPU: AdamW's
// ParamBf16 input is the rounding of the updated weights, as a Cast of them gives; in gpt-tiny's training graph as the
// CUDA backend builds it, every weight copy moves to the prologue and its AdamW rewrites it, and training gives the
// same losses and weights bit for bit as converting the weights every step, also across a checkpoint reload into a
// trainer that had already used its own (stale) copies.
#include <gtest/gtest.h>

#include <cstring>

#include "runtime/trainer.h"
#include "tests/graph_checks.h"
#include "tests/in_place_op.h"
#include "tests/op_test_util.h"
#include "tests/scratch_dir.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

using testing::run_op;

using testing::same_bits;

// The op on its own: the parameter updates as without the copy, and the copy is the bf16 Cast of the result.
TEST(Bf16ParamCopies, AdamWRewritesTheCopyFromTheUpdate) {
  const Tensor p = testing::randn_f32({6, 10}, 1), g = testing::randn_f32({6, 10}, 2);
  const Tensor m = testing::randn_f32({6, 10}, 3), v = testing::randn_f32({6, 10}, 4);
  Tensor v_pos = v.clone();
  for (int64_t i = 0; i < v_pos.numel(); ++i) v_pos.data_as<float>()[i] = std::abs(v.data_as<float>()[i]);
  const Tensor lr = Tensor::scalar(DType::kFloat64, 1e-2), step = Tensor::from_i64({3}, {});
  auto run = [&](bool with_copy) {
    std::vector<Tensor> in = {p, g, m, v_pos, lr, step, Tensor()};  // no grad norm
    if (with_copy) in.push_back(Tensor(DType::kBFloat16, {6, 10}));
    return testing::run_in_place_op("AdamW", in, testing::adamw_attrs());
  };
  auto plain = run(false);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto with = run(true);
  ASSERT_TRUE(with.has_value()) << with.status().message();
  EXPECT_TRUE(same_bits((*with)[0], (*plain)[0]));
  EXPECT_TRUE(same_bits((*with)[7], (*plain)[0].cast(DType::kBFloat16)));
  EXPECT_FALSE(same_bits((*plain)[0], p));  // the update did something
}

TEST(Bf16ParamCopies, BadCopiesNameTheNode) {
  const Tensor p = testing::randn_f32({4, 8}, 1);
  const Tensor lr = Tensor::scalar(DType::kFloat64, 1e-2), step = Tensor::from_i64({1}, {});
  auto error_of = [&](const Tensor& copy, Attributes a) {
    auto r = run_op("AdamW", {p, p, p, p, lr, step, Tensor(), copy}, a, 0, 1, {}, kGalvatronDomain);
    return r.has_value() ? std::string("ok") : r.status().message();
  };
  const std::string shape = error_of(Tensor(DType::kBFloat16, {8, 4}), testing::adamw_attrs());
  EXPECT_NE(shape.find("ParamBf16 must be the bfloat16 twin of the float32 parameter [4,8], got bfloat16 [8,4]"),
            std::string::npos)
      << shape;
  EXPECT_NE(shape.find("test_node"), std::string::npos) << shape;
  const std::string type = error_of(p, testing::adamw_attrs());
  EXPECT_NE(type.find("got float32 [4,8]"), std::string::npos) << type;
  // A bf16 gradient (a reduced copy) needs a float32 parameter and float32 moments of its shape.
  auto grad_error = [&](const Tensor& param, const Tensor& m) {
    auto r = run_op("AdamW", {param, p.cast(DType::kBFloat16), m, p, lr, step}, testing::adamw_attrs(), 0, 1, {},
                    kGalvatronDomain);
    return r.has_value() ? std::string("ok") : r.status().message();
  };
  EXPECT_EQ(grad_error(p, p), "ok");
  const std::string f64 = grad_error(p.cast(DType::kFloat64), p);
  EXPECT_NE(f64.find("a bf16 gradient needs a float32 parameter"), std::string::npos) << f64;
  const std::string moments = grad_error(p, p.cast(DType::kBFloat16));
  EXPECT_NE(moments.find("the moments must be float32 beside a bf16 gradient"), std::string::npos) << moments;
  EXPECT_NE(moments.find("test_node"), std::string::npos) << moments;
}

struct Run {
  std::vector<double> losses;
  TensorMap params;
  int kept = 0;
};

TrainerConfig config(bool keep_copies) {
  TrainerConfig tc = testing::cuda_bf16_like_config();
  tc.graph.optimizer_bf16_copies = keep_copies;
  tc.graph.split_masters = false;  // the copies beside float32 masters (split ones: tests/split_masters_test.cpp)
  tc.graph.optimizer.weight_decay = 0.1;
  tc.lr = 1e-2;
  return tc;
}

// gpt-tiny trained `steps` AdamW steps on one batch, with or without the kept copies; with `reload_after` > 0 the run
// stops there, saves a checkpoint, and a second trainer (which first evaluates the loss with its own initial copies)
// loads it and goes on.
Expected<Run> train(bool keep_copies, int steps, int reload_after = 0, const std::string& ckpt = "") {
  GV_ASSIGN_OR_RETURN(testing::TinyModel tiny, testing::tiny_model("gpt-tiny"));
  auto backend = make_cpu_backend();
  Run r;
  GV_ASSIGN_OR_RETURN(auto t, Trainer::create(tiny.im.graph, config(keep_copies), *backend));
  r.kept = t->training_graph().fused.bf16_param_copies;
  for (int s = 0; s < steps; ++s) {
    if (reload_after > 0 && s == reload_after) {
      GV_RETURN_IF_ERROR(t->save_checkpoint(ckpt, {}));
      // A model of its own: on the CPU a trainer updates its graph's weight tensors in place (shared with `tiny`).
      GV_ASSIGN_OR_RETURN(testing::TinyModel other, testing::tiny_model("gpt-tiny"));
      GV_ASSIGN_OR_RETURN(auto fresh, Trainer::create(other.im.graph, config(keep_copies), *backend));
      GV_RETURN_IF_ERROR(fresh->evaluate_loss(tiny.batch).status());  // builds its copies from its initial weights
      GV_RETURN_IF_ERROR(fresh->load_checkpoint(ckpt).status());
      t = std::move(fresh);
    }
    GV_ASSIGN_OR_RETURN(StepMetrics m, t->step({tiny.batch}));
    r.losses.push_back(m.loss);
  }
  GV_ASSIGN_OR_RETURN(r.params, t->parameters());
  return r;
}

TEST(Bf16ParamCopies, GptTinyGraphKeepsEveryWeightCopy) {
  auto tiny = testing::tiny_model("gpt-tiny");
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto backend = make_cpu_backend();
  auto plain = Trainer::create(tiny->im.graph, config(false), *backend);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto kept = Trainer::create(tiny->im.graph, config(true), *backend);
  ASSERT_TRUE(kept.has_value()) << kept.status().message();
  const TrainingGraph &tp = (*plain)->training_graph(), &tk = (*kept)->training_graph();
  // The plain graph's weight Casts, one per weight matrix that two products read.
  int weight_casts = 0;
  for (const Node& n : tp.graph.nodes) {
    weight_casts += n.op_type == "Cast" && tp.graph.value(n.inputs[0]).kind == ValueKind::kParameter;
  }
  EXPECT_GE(weight_casts, 4 * tiny->im.graph.num_layers);  // c_attn, attention c_proj, c_fc, MLP c_proj
  EXPECT_EQ(tp.prologue_end, 0u);
  EXPECT_EQ(tk.fused.bf16_param_copies, weight_casts);
  ASSERT_EQ(tk.prologue_end, static_cast<size_t>(weight_casts));
  int adamw_copies = 0;
  for (size_t i = 0; i < tk.graph.nodes.size(); ++i) {
    const Node& n = tk.graph.nodes[i];
    const bool param_cast = n.op_type == "Cast" && tk.graph.value(n.inputs[0]).kind == ValueKind::kParameter;
    EXPECT_EQ(param_cast, i < tk.prologue_end) << n.name;
    if (param_cast) {
      EXPECT_EQ(tk.graph.value(n.outputs[0]).kind, ValueKind::kState) << n.name;
    }
    if (n.op_type == "AdamW" && n.inputs.size() == 8 && n.inputs[7] != kNoValue) {
      ++adamw_copies;
      EXPECT_LT(static_cast<size_t>(tk.graph.value(n.inputs[7]).producer), tk.prologue_end) << n.name;
    }
  }
  EXPECT_EQ(adamw_copies, weight_casts);
  testing::expect_inference_agrees(tk.graph);
}

class Bf16ParamCopiesTraining : public testing::ScratchDirTest {};

TEST_F(Bf16ParamCopiesTraining, SameTrainingBitForBitAcrossACheckpointReload) {
  constexpr int kSteps = 4;
  auto plain = train(false, kSteps);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto kept = train(true, kSteps);
  ASSERT_TRUE(kept.has_value()) << kept.status().message();
  auto reloaded = train(true, kSteps, 2, path("step2.safetensors"));
  ASSERT_TRUE(reloaded.has_value()) << reloaded.status().message();
  EXPECT_EQ(plain->kept, 0);
  EXPECT_GT(kept->kept, 0);
  EXPECT_EQ(kept->losses, plain->losses);
  EXPECT_EQ(reloaded->losses, plain->losses);
  EXPECT_LT(plain->losses.back(), plain->losses.front());  // it trains
  for (const auto& [name, p] : plain->params) {
    EXPECT_TRUE(same_bits(kept->params.at(name), p)) << name;
    EXPECT_TRUE(same_bits(reloaded->params.at(name), p)) << name;
  }
}

}  // namespace
}  // namespace gv
