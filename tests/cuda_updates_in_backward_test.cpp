// Updates beside the backward on CUDA (runtime/updates_in_backward.cpp; the AdamW kernels on the second stream,
// WaitUpdates joining it): a gpt of 2 layers, hidden 256, sequence 256 (products large enough for the bf16 weight
// copies that AdamW rewrites), six bf16 AdamW steps on batches of distinct tokens give the bits of the run with the
// updates after the backward when that run repeats bit for bit, and otherwise stay within its run-to-run spread; a
// race (an update overwriting a weight copy that a backward product still reads, or a gradient buffer reused before
// its update read it) would not. Label `gpu`: skipped where no CUDA device is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "models/zoo.h"
#include "runtime/trainer.h"
#include "tests/op_test_util.h"

namespace gv {
namespace {

double rel_diff(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

TEST(CudaUpdatesInBackward, Bf16TrainingFollowsUpdatesAfterTheBackward) {
  auto b = make_backend("cuda");
  if (!b) GTEST_SKIP() << b.status().message();
  std::unique_ptr<Backend> cuda = std::move(*b);
  ASSERT_TRUE(cuda->set_precision("bf16").is_ok());
  struct Restore {
    Backend& b;
    ~Restore() { EXPECT_TRUE(b.set_precision("fp32").is_ok()); }
  } restore{*cuda};
  auto cfg = zoo_config("", "gpt-tiny");
  ASSERT_TRUE(cfg.has_value()) << cfg.status().message();
  cfg->hidden_size = 256;
  cfg->num_heads = 4;
  cfg->num_layers = 2;
  cfg->max_positions = 256;
  cfg->vocab_size = 1024;
  const int64_t batch = 2, seq = 256;
  auto im = build_and_import(*cfg, batch, seq, WeightInit::kHuggingFace, 3);
  ASSERT_TRUE(im.has_value()) << im.status().message();
  // Distinct tokens in every batch: each embedding row gets at most one gradient row, so that the embedding
  // gradients' atomics add in no particular order only where the order cannot matter.
  auto batch_of = [&](int s) {
    std::mt19937_64 rng(100 + s);
    std::vector<int64_t> ids(cfg->vocab_size);
    for (int64_t i = 0; i < cfg->vocab_size; ++i) ids[i] = i;
    std::shuffle(ids.begin(), ids.end(), rng);
    TensorMap b = testing::random_lm_batch(cfg->vocab_size, batch, seq, 100 + s);
    std::copy(ids.begin(), ids.begin() + batch * seq, b.at("input_ids").data_as<int64_t>());
    return b;
  };
  struct Run {
    std::vector<double> loss, norm;
    int moved = 0, copies = 0;
    TensorMap params;
  };
  auto train = [&](bool in_backward) -> Expected<Run> {
    TrainerConfig tc;
    tc.lr = 1e-3;
    tc.graph.updates_in_backward = in_backward;
    GV_ASSIGN_OR_RETURN(auto t, Trainer::create(im->graph, tc, *cuda));
    Run r;
    r.moved = t->training_graph().fused.updates_in_backward;
    r.copies = t->training_graph().fused.bf16_param_copies;
    for (int s = 0; s < 6; ++s) {
      GV_ASSIGN_OR_RETURN(StepMetrics m, t->step({batch_of(s)}));
      r.loss.push_back(m.loss);
      r.norm.push_back(m.grad_norm);
    }
    GV_ASSIGN_OR_RETURN(r.params, t->parameters());
    return r;
  };
  // Relative L2 distance of two runs' parameters.
  auto distance = [](const Run& a, const Run& b) {
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
  };
  auto after = train(false);
  ASSERT_TRUE(after.has_value()) << after.status().message();
  auto again = train(false);
  ASSERT_TRUE(again.has_value()) << again.status().message();
  auto inside = train(true);
  ASSERT_TRUE(inside.has_value()) << inside.status().message();
  EXPECT_EQ(after->moved, 0);
  EXPECT_GT(inside->moved, 0);
  EXPECT_GT(inside->copies, 0) << "no weight copy is rewritten by AdamW: the test would miss copy races";
  const double spread = distance(*after, *again), d = distance(*after, *inside);
  if (spread == 0) {
    // The run repeats bit for bit: the updates on the second stream must give the same bits.
    EXPECT_EQ(inside->loss, after->loss);
    EXPECT_EQ(inside->norm, after->norm);
    EXPECT_EQ(d, 0.0);
  } else {
    // Otherwise within the run-to-run spread.
    for (size_t s = 0; s < after->loss.size(); ++s) {
      EXPECT_LT(rel_diff(inside->loss[s], after->loss[s]), 1e-4) << "step " << s + 1;
      EXPECT_LT(rel_diff(inside->norm[s], after->norm[s]), 1e-3) << "step " << s + 1;
    }
    EXPECT_LE(d, 3 * spread);
  }
  std::printf("[ updates beside the backward ] %d updates moved; step 6 loss %.8g vs %.8g; parameters %.3g apart "
              "(two runs with the updates after the backward: %.3g)\n",
              inside->moved, inside->loss.back(), after->loss.back(), d, spread);
}

}  // namespace
}  // namespace gv
