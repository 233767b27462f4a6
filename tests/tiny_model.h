// A zoo model at a tiny size, imported for CPU training tests: batch 2 x 16, HuggingFace initialisation (seed 3),
// with a random language-model batch of that shape.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/zoo.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"

namespace gv::testing {

struct TinyModel {
  ImportedModel im;
  TensorMap batch;
};

// The training-graph options the CUDA backend asks for in bf16 (shared bf16 operands, fused Linear, saved attention
// statistics, packed QKV), for the CPU; min_mn lowered so that the tiny models' products qualify.
inline TrainerConfig cuda_bf16_like_config(bool packed_qkv = true) {
  TrainerConfig tc;
  tc.graph.bf16_operands = true;
  tc.graph.fuse_linear = true;
  tc.graph.fuse_sibling_linears = true;
  tc.graph.bf16_operand_options.min_mn = 8;
  tc.graph.save_attention_lse = true;
  tc.graph.pack_attention_qkv = packed_qkv;
  return tc;
}

// cuda_bf16_like_config with the norm passes the CUDA backend asks for in bf16 (residual adds in the following norms,
// the norm gradients' addends and bf16 copies, saved statistics, bf16 attention I/O) and the residual stream between
// the norms in bf16 or not (runtime/bf16_residual_stream.cpp).
inline TrainerConfig cuda_bf16_stream_config(bool bf16_stream) {
  TrainerConfig tc = cuda_bf16_like_config();
  tc.graph.fuse_residual_add = true;
  tc.graph.fuse_norm_grad_add = true;
  tc.graph.fuse_norm_grad_outputs = true;
  tc.graph.save_norm_statistics = true;
  tc.graph.bf16_attention_io = true;
  tc.graph.fuse_skip_norm = 16;
  tc.graph.bf16_residual_stream = bf16_stream;
  return tc;
}

// One training step's forward and backward of a tiny model under `tc`: the trainer (its training graph), the loss
// and every parameter's gradient. The pass tests run it twice with one option toggled.
struct TinyRun {
  std::unique_ptr<Trainer> trainer;
  TensorMap grads;
  double loss = 0;
};
inline Expected<TinyRun> train_tiny(const TinyModel& tiny, Backend& backend, const TrainerConfig& tc) {
  TinyRun r;
  GV_ASSIGN_OR_RETURN(r.trainer, Trainer::create(tiny.im.graph, tc, backend));
  GV_ASSIGN_OR_RETURN(r.grads, r.trainer->compute_gradients(tiny.batch, &r.loss));
  return r;
}

// The same step with a pass off and on (config(false), config(true)): what the pass tests compare.
struct TinyRunPair {
  TinyRun off, on;
};
template <typename Config>
Expected<TinyRunPair> train_tiny_off_on(const TinyModel& tiny, Backend& backend, Config&& config) {
  TinyRunPair r;
  GV_ASSIGN_OR_RETURN(r.off, train_tiny(tiny, backend, config(false)));
  GV_ASSIGN_OR_RETURN(r.on, train_tiny(tiny, backend, config(true)));
  return r;
}

// A copy of a graph with its own initializer buffers: the CPU trains them in place, so each run starts from a copy.
inline Graph fresh_graph(const Graph& g) {
  Graph out = g;
  for (Value& v : out.values)
    if (v.data.defined()) v.data = v.data.clone();
  return out;
}

// Two runs' parameters, bit for bit (the same names, the same bytes).
inline void expect_same_bits(const TensorMap& a, const TensorMap& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, p] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_EQ(std::memcmp(p.data(), b.at(name).data(), p.nbytes()), 0) << name;
  }
}

// Several CPU training steps of a tiny model under `tc` (lr 1e-3), each over `batches` (micro-batches: several with
// tc.graph.grad_accum_steps), from a fresh copy of its weights: the losses, gradient norms and final parameters, and
// the trainer's fusion counts. The pass tests compare two such runs with one option toggled, bit for bit.
struct TrainedRun {
  TensorMap params;
  std::vector<double> losses, norms;
  FusionCounts fused;
};
inline Expected<TrainedRun> train_steps(const TinyModel& tiny, TrainerConfig tc, const std::vector<TensorMap>& batches,
                                        int steps = 3) {
  auto backend = make_cpu_backend();
  tc.lr = 1e-3;
  GV_ASSIGN_OR_RETURN(auto t, Trainer::create(fresh_graph(tiny.im.graph), tc, *backend));
  TrainedRun r;
  r.fused = t->training_graph().fused;
  for (int s = 0; s < steps; ++s) {
    GV_ASSIGN_OR_RETURN(StepMetrics m, t->step(batches));
    r.losses.push_back(m.loss);
    r.norms.push_back(m.grad_norm);
  }
  GV_ASSIGN_OR_RETURN(r.params, t->parameters());
  return r;
}
// Bit-equal losses and parameters; gradient norms bit-equal too, or with norm_rel_tol > 0 within that relative
// tolerance (a norm summed in another order).
inline void expect_same_training(const TrainedRun& a, const TrainedRun& b, double norm_rel_tol = 0.0) {
  EXPECT_EQ(a.losses, b.losses);
  if (norm_rel_tol == 0.0) {
    EXPECT_EQ(a.norms, b.norms);
  } else {
    ASSERT_EQ(a.norms.size(), b.norms.size());
    for (size_t i = 0; i < a.norms.size(); ++i) EXPECT_NEAR(a.norms[i], b.norms[i], norm_rel_tol * a.norms[i]) << i;
  }
  expect_same_bits(a.params, b.params);
}

inline Expected<TinyModel> tiny_model(const std::string& name, uint64_t batch_seed = 5) {
  GV_ASSIGN_OR_RETURN(ModelConfig cfg, zoo_config("", name));
  GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(cfg, 2, 16, WeightInit::kHuggingFace, 3));
  return TinyModel{std::move(im), random_lm_batch(cfg.vocab_size, 2, 16, batch_seed)};
}

}  // namespace gv::testing
