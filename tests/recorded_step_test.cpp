// The trainer's recorded step (Trainer::run_whole_step, Backend::record), on the CPU through a backend that records
// by keeping the work and replays by issuing it again (what a CUDA graph does with the kernels' launches): the step
// is recorded once, at this trainer's second step, replayed from then on, and trains bit for bit as the plain CPU
// backend; a backend that fails to record, or a step that does not qualify, runs as before with the reason kept.
// The CUDA graph itself: tests/cuda_training_step_test.cpp.
#include <gtest/gtest.h>

#include <cstring>

#include "runtime/trainer.h"
#include "tests/op_test_util.h"
#include "tests/tiny_model.h"

namespace gv {
namespace {

// The CPU backend, with record() keeping the work (or failing, with `fail`), and counters.
class RecordingCpuBackend final : public Backend {
 public:
  explicit RecordingCpuBackend(bool fail) : cpu_(make_cpu_backend()), fail_(fail) {}
  DeviceKind kind() const override { return cpu_->kind(); }
  std::string name() const override { return "recording-cpu"; }
  Expected<void*> allocate(size_t bytes) override { return cpu_->allocate(bytes); }
  void release(void* ptr) override { cpu_->release(ptr); }
  Status copy_from_host(void* d, const void* s, size_t n) override { return cpu_->copy_from_host(d, s, n); }
  Status copy_to_host(void* d, const void* s, size_t n) override { return cpu_->copy_to_host(d, s, n); }
  Status copy(void* d, const void* s, size_t n) override { return cpu_->copy(d, s, n); }
  Status zero(void* p, size_t n) override { return cpu_->zero(p, n); }
  KernelFn kernel(const OpSchema& schema) const override { return cpu_->kernel(schema); }
  Expected<std::unique_ptr<RecordedWork>> record(const std::function<Status()>& issue) override {
    ++records;
    if (fail_) return internal_error("a kernel synchronized with the host while recording");
    return std::unique_ptr<RecordedWork>(new Kept(issue, &replays));
  }
  int records = 0, replays = 0;

 private:
  class Kept final : public RecordedWork {
   public:
    Kept(std::function<Status()> issue, int* count) : issue_(std::move(issue)), count_(count) {}
    Status replay() override {
      ++*count_;
      return issue_();
    }

   private:
    std::function<Status()> issue_;
    int* count_;
  };
  std::unique_ptr<Backend> cpu_;
  bool fail_;
};

struct Trained {
  std::vector<double> loss, norm;
  TensorMap params;
  bool recorded = false;
  std::string why_not;
};

Expected<Trained> train(const testing::TinyModel& tiny, Backend& backend, int accum = 1) {
  TrainerConfig tc;
  tc.lr = 1e-3;
  tc.schedule = LrSchedule::kCosine;  // the rate changes every step: a replay must read it, not keep it
  tc.total_steps = 5;
  tc.graph.grad_accum_steps = accum;
  tc.graph.updates_in_backward = true;
  GV_ASSIGN_OR_RETURN(auto t, Trainer::create(testing::fresh_graph(tiny.im.graph), tc, backend));
  Trained r;
  for (int s = 0; s < 5; ++s) {
    std::vector<TensorMap> micro(static_cast<size_t>(accum), tiny.batch);
    GV_ASSIGN_OR_RETURN(StepMetrics m, t->step(micro));
    r.loss.push_back(m.loss);
    r.norm.push_back(m.grad_norm);
  }
  r.recorded = t->step_recorded();
  r.why_not = t->step_not_recorded_because();
  GV_ASSIGN_OR_RETURN(r.params, t->parameters());
  return r;
}

void expect_identical(const Trained& a, const Trained& b) {
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.norm, b.norm);
  testing::expect_same_bits(a.params, b.params);
}

TEST(RecordedStep, RecordedOnceAtTheSecondStepAndReplayedAsThePlainRun) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto cpu = make_cpu_backend();
  auto plain = train(*tiny, *cpu);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  EXPECT_FALSE(plain->recorded);
  EXPECT_NE(plain->why_not.find("does not record"), std::string::npos) << plain->why_not;
  RecordingCpuBackend rec(false);
  auto replayed = train(*tiny, rec);
  ASSERT_TRUE(replayed.has_value()) << replayed.status().message();
  EXPECT_TRUE(replayed->recorded);
  EXPECT_EQ(replayed->why_not, "");
  EXPECT_EQ(rec.records, 1);
  EXPECT_EQ(rec.replays, 4);  // steps 2-5
  expect_identical(*plain, *replayed);
}

TEST(RecordedStep, FailedRecordingRunsTheStepsAsBeforeAndSaysWhy) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  auto cpu = make_cpu_backend();
  auto plain = train(*tiny, *cpu);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  RecordingCpuBackend failing(true);
  auto eager = train(*tiny, failing);
  ASSERT_TRUE(eager.has_value()) << eager.status().message();
  EXPECT_FALSE(eager->recorded);
  EXPECT_NE(eager->why_not.find("synchronized with the host"), std::string::npos) << eager->why_not;
  EXPECT_EQ(failing.records, 1) << "a failed recording is not tried again";
  EXPECT_EQ(failing.replays, 0);
  expect_identical(*plain, *eager);
}

TEST(RecordedStep, SeveralMicroBatchesAreNotRecorded) {
  auto tiny = testing::tiny_model("gpt-tiny", 11);
  ASSERT_TRUE(tiny.has_value()) << tiny.status().message();
  RecordingCpuBackend rec(false);
  auto r = train(*tiny, rec, 2);
  ASSERT_TRUE(r.has_value()) << r.status().message();
  EXPECT_FALSE(r->recorded);
  EXPECT_EQ(rec.records, 0);
  EXPECT_NE(r->why_not.find("micro-batches"), std::string::npos) << r->why_not;
}

}  // namespace
}  // namespace gv
