// Data parallelism over MPI on CPUs: `galvatron train --devices 2` re-launches itself under mpirun, each rank trains
// on half of every batch and gradients are averaged, so ten AdamW steps give the single-process run's losses and
// final weights (within float rounding of the split batch and the all-reduce).
#include <nlohmann/json.hpp>

#include <cmath>

#include "runtime/communicator.h"
#include "runtime/safetensors.h"
#include "tests/cli_fixture.h"

namespace gv {
namespace {

bool mpirun_on_path() {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t colon = p.find(':', pos);
    std::string dir = p.substr(pos, colon == std::string::npos ? std::string::npos : colon - pos);
    if (!dir.empty() && ::access((dir + "/mpirun").c_str(), X_OK) == 0) return true;
    if (colon == std::string::npos) break;
    pos = colon + 1;
  }
  return false;
}

class DataParallel : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
#if defined(__SANITIZE_ADDRESS__)
    // Sanitizer build: OpenMPI's dlopened plugins keep allocations until exit, and their frames cannot be symbolized
    // for a suppression file. Leak checking is turned off in the MPI workers only (they inherit this environment);
    // every other ASan/UBSan check stays on, and single-process runs keep leak checking.
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
#endif
  }
  std::vector<std::string> args(const std::string& metrics, const std::string& ckpt, int devices) const {
    return {"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"), "--batch-size",
            "2", "--steps", "10", "--optimizer", "adamw", "--lr", "1e-3", "--quiet", "--device", "cpu", "--devices",
            std::to_string(devices), "--metrics", path(metrics), "--checkpoint-dir", path(ckpt)};
  }
  std::vector<nlohmann::json> metrics(const std::string& file) const {
    std::vector<nlohmann::json> out;
    for (const auto& line : lines_of(slurp(path(file)))) out.push_back(nlohmann::json::parse(line));
    return out;
  }
};

double rel_diff(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

TEST_F(DataParallel, TwoRanksEqualSingleProcessLossesAndWeights) {
  if (!mpi_backend_built()) GTEST_SKIP() << "galvatron was built without MPI (install libopenmpi-dev)";
  if (!mpirun_on_path()) GTEST_SKIP() << "mpirun is not on PATH (install openmpi-bin to test data parallelism)";
  auto r = run(args("single.jsonl", "single", 1));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(args("dp.jsonl", "dp", 2));
  ASSERT_EQ(r.code, 0) << r.err;
  // Rank 0 alone prints the summary line.
  EXPECT_EQ(lines_of(r.out).size(), 1u) << r.out;
  auto a = metrics("single.jsonl"), b = metrics("dp.jsonl");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u) << "rank 0 alone writes the metrics";
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_LT(rel_diff(b[i]["loss"].get<double>(), a[i]["loss"].get<double>()), 1e-5)
        << "step " << i + 1 << ": " << b[i]["loss"] << " vs " << a[i]["loss"];
    EXPECT_LT(rel_diff(b[i]["grad_norm"].get<double>(), a[i]["grad_norm"].get<double>()), 1e-4) << "step " << i + 1;
  }
  auto wa = read_safetensors(path("single/step-000010.safetensors"));
  auto wb = read_safetensors(path("dp/step-000010.safetensors"));
  ASSERT_TRUE(wa.has_value() && wb.has_value());
  ASSERT_EQ(wa->size(), wb->size());
  // Elements whose gradient is zero in exact arithmetic (GPT-2's key bias: softmax ignores a constant shift) get
  // gradients of pure rounding noise (~1e-11), which Adam scales up to lr-sized steps of any sign in either run;
  // they are recognised by the single-process run's second moment and left out (a small, counted minority).
  int64_t compared = 0, noise_only = 0;
  for (const auto& [name, t] : *wa) {
    if (name.rfind("optimizer.", 0) == 0 || t.dtype() != DType::kFloat32) continue;  // the weights
    ASSERT_TRUE(wb->count(name)) << name;
    const Tensor& u = wb->at(name);
    ASSERT_EQ(t.numel(), u.numel()) << name;
    auto v = wa->find("optimizer.exp_avg_sq/" + name);
    ASSERT_NE(v, wa->end()) << name;
    double max_diff = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float vi = v->second.data_as<float>()[i];
      if (vi > 0 && std::sqrt(vi) < 1e-9f) {
        ++noise_only;
        continue;
      }
      ++compared;
      const double x = t.data_as<float>()[i], y = u.data_as<float>()[i];
      max_diff = std::max(max_diff, std::fabs(x - y) / std::max(std::fabs(x), 1.0));
    }
    EXPECT_LE(max_diff, 1e-5) << name << ": weights differ by " << max_diff;
  }
  EXPECT_GT(compared, 0);
  EXPECT_LT(noise_only, compared / 100) << noise_only << " weights with noise-only gradients";
}

TEST_F(DataParallel, BatchNotDivisibleByDevicesIsAClearError) {
  if (!mpi_backend_built()) GTEST_SKIP() << "galvatron was built without MPI (install libopenmpi-dev)";
  if (!mpirun_on_path()) GTEST_SKIP() << "mpirun is not on PATH";
  auto r = run({"train", fixture("gpt2", "model.onnx"), "--data", fixture("gpt2", "samples.safetensors"),
                "--batch-size", "3", "--steps", "1", "--quiet", "--devices", "2"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not divisible by --devices 2"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace gv
