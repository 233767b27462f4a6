// How the CUDA backend runs a training step, against the plain way of running it: a gpt of 2 layers, hidden 256,
// sequence 256 (products large enough for the bf16 weight copies that AdamW rewrites), six bf16 AdamW steps on
// batches of distinct tokens.
//  - Updates beside the backward (runtime/updates_in_backward.cpp: the AdamW kernels on the second stream, WaitUpdates
//    joining it, the gradient norm summed by them) against the updates after the backward (the norm by GradNorm:
//    the same up to the order of its sums).
//  - The step recorded as one CUDA graph and replayed (Trainer::run_whole_step, Backend::record) against kernels
//    launched one by one (GALVATRON_CUDA_GRAPHS=0).
// Each gives the reference's bits when the reference repeats bit for bit, and otherwise stays within its run-to-run
// spread; a race (an update overwriting a weight copy that a backward product still reads, a gradient buffer reused
// before its update read it) or a stale recorded argument (a learning rate or step baked into the graph) would not.
// Label `gpu`: skipped where no CUDA device is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "models/zoo.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"

namespace gv {
namespace {

double rel_diff(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

struct TrainingRun {
  std::vector<double> loss, norm;
  int moved = 0, copies = 0, norm_in_updates = 0;
  bool recorded = false;
  std::string not_recorded;
  TensorMap params;
};

class CudaTrainingStep : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = make_backend("cuda");
    if (!b) GTEST_SKIP() << b.status().message();
    cuda_ = std::move(*b);
    ASSERT_TRUE(cuda_->set_precision("bf16").is_ok());
    auto cfg = zoo_config("", "gpt-tiny");
    ASSERT_TRUE(cfg.has_value()) << cfg.status().message();
    cfg_ = *cfg;
    cfg_.hidden_size = 256;
    cfg_.num_heads = 4;
    cfg_.num_layers = 2;
    cfg_.max_positions = 256;
    cfg_.vocab_size = 1024;
    auto im = build_and_import(cfg_, kBatch, kSeq, WeightInit::kHuggingFace, 3);
    ASSERT_TRUE(im.has_value()) << im.status().message();
    im_ = std::move(*im);
  }
  void TearDown() override {
    if (cuda_) EXPECT_TRUE(cuda_->set_precision("fp32").is_ok());
    unsetenv("GALVATRON_CUDA_GRAPHS");
  }

  // Distinct tokens in every batch: each embedding row gets at most one gradient row, so that the embedding
  // gradients' atomics add in no particular order only where the order cannot matter.
  TensorMap batch_of(int s) const {
    std::mt19937_64 rng(100 + s);
    std::vector<int64_t> ids(cfg_.vocab_size);
    for (int64_t i = 0; i < cfg_.vocab_size; ++i) ids[i] = i;
    std::shuffle(ids.begin(), ids.end(), rng);
    TensorMap b = testing::random_lm_batch(cfg_.vocab_size, kBatch, kSeq, 100 + s);
    std::copy(ids.begin(), ids.begin() + kBatch * kSeq, b.at("input_ids").data_as<int64_t>());
    return b;
  }

  // Six steps at a cosine learning rate (it changes every step: a graph that baked it in would drift).
  Expected<TrainingRun> train(bool in_backward, bool graphs) {
    if (graphs)
      unsetenv("GALVATRON_CUDA_GRAPHS");
    else
      setenv("GALVATRON_CUDA_GRAPHS", "0", 1);
    TrainerConfig tc;
    tc.lr = 1e-3;
    tc.schedule = LrSchedule::kCosine;
    tc.total_steps = 6;
    tc.graph.updates_in_backward = in_backward;
    GV_ASSIGN_OR_RETURN(auto t, Trainer::create(im_.graph, tc, *cuda_));
    TrainingRun r;
    r.moved = t->training_graph().fused.updates_in_backward;
    r.norm_in_updates = t->training_graph().fused.grad_norm_in_updates;
    r.copies = t->training_graph().fused.bf16_param_copies;
    for (int s = 0; s < 6; ++s) {
      GV_ASSIGN_OR_RETURN(StepMetrics m, t->step({batch_of(s)}));
      r.loss.push_back(m.loss);
      r.norm.push_back(m.grad_norm);
    }
    r.recorded = t->step_recorded();
    r.not_recorded = t->step_not_recorded_because();
    GV_ASSIGN_OR_RETURN(r.params, t->parameters());
    return r;
  }

  // Relative L2 distance of two runs' parameters.
  static double distance(const TrainingRun& a, const TrainingRun& b) {
    double num = 0, den = 0;
    for (const auto& [name, want] : a.params) {
      const Tensor& got = b.params.at(name);
      for (int64_t i = 0; i < want.numel(); ++i) {
        const double x = got.scalar_f64(i), y = want.scalar_f64(i);
        num += (x - y) * (x - y);
        den += y * y;
      }
    }
    return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
  }

  // `got` against `ref`, given a second run of the reference for its spread.
  static void expect_same_training(const TrainingRun& ref, const TrainingRun& ref_again, const TrainingRun& got,
                                   const char* what) {
    const double spread = distance(ref, ref_again), d = distance(ref, got);
    if (spread == 0) {
      EXPECT_EQ(got.loss, ref.loss);
      if (got.norm_in_updates == ref.norm_in_updates) {
        EXPECT_EQ(got.norm, ref.norm);
      } else {  // the squares summed in another order: the float32 norm within a rounding
        for (size_t s = 0; s < ref.norm.size(); ++s) EXPECT_LT(rel_diff(got.norm[s], ref.norm[s]), 2.5e-7) << s;
      }
      EXPECT_EQ(d, 0.0);
    } else {
      for (size_t s = 0; s < ref.loss.size(); ++s) {
        EXPECT_LT(rel_diff(got.loss[s], ref.loss[s]), 1e-4) << "step " << s + 1;
        EXPECT_LT(rel_diff(got.norm[s], ref.norm[s]), 1e-3) << "step " << s + 1;
      }
      EXPECT_LE(d, 3 * spread);
    }
    std::printf("[ %s ] step 6 loss %.8g vs %.8g; parameters %.3g apart (the reference twice: %.3g)\n", what,
                got.loss.back(), ref.loss.back(), d, spread);
  }

  static constexpr int64_t kBatch = 2, kSeq = 256;
  std::unique_ptr<Backend> cuda_;
  ModelConfig cfg_;
  ImportedModel im_;
};

TEST_F(CudaTrainingStep, UpdatesBesideTheBackwardTrainAsAfterIt) {
  auto after = train(false, false);
  ASSERT_TRUE(after.has_value()) << after.status().message();
  auto again = train(false, false);
  ASSERT_TRUE(again.has_value()) << again.status().message();
  auto inside = train(true, false);
  ASSERT_TRUE(inside.has_value()) << inside.status().message();
  EXPECT_EQ(after->moved, 0);
  EXPECT_GT(inside->moved, 0);
  EXPECT_GT(inside->copies, 0) << "no weight copy is rewritten by AdamW: the test would miss copy races";
  EXPECT_EQ(inside->norm_in_updates, 1);
  EXPECT_EQ(after->norm_in_updates, 0);
  expect_same_training(*after, *again, *inside, "updates beside the backward");
}

TEST_F(CudaTrainingStep, RecordedStepTrainsAsKernelsOneByOne) {
  auto plain = train(true, false);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  auto again = train(true, false);
  ASSERT_TRUE(again.has_value()) << again.status().message();
  auto graphed = train(true, true);
  ASSERT_TRUE(graphed.has_value()) << graphed.status().message();
  EXPECT_FALSE(plain->recorded);
  EXPECT_NE(plain->not_recorded.find("GALVATRON_CUDA_GRAPHS=0"), std::string::npos) << plain->not_recorded;
  ASSERT_TRUE(graphed->recorded) << graphed->not_recorded;
  EXPECT_EQ(graphed->not_recorded, "");
  expect_same_training(*plain, *again, *graphed, "recorded step");
}

}  // namespace
}  // namespace gv
