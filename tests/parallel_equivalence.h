// Shared by the parallel-execution tests: a run's metrics and final checkpoint against the single-process run's.
// Ten steps of loss within 1e-5 relative, and final weights within 1e-5 (relative to max(|w|, 1)), except elements
// whose gradient is zero in exact arithmetic (GPT-2's key bias: softmax ignores a constant shift): their gradients
// are rounding noise (~1e-11) that Adam scales up to lr-sized steps of either sign in any run; they are recognised by
// the single-process run's second moment, left out, and counted (a small minority).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "runtime/safetensors.h"
#include "tests/cli_fixture.h"

namespace gv {

inline std::vector<nlohmann::json> read_metrics(const std::string& file) {
  std::vector<nlohmann::json> out;
  for (const auto& line : lines_of(slurp(file))) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline double rel_diff(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

// Compares metrics (JSONL) and checkpoints (safetensors) of run `b` against reference run `a`.
inline void expect_same_training(const std::string& metrics_a, const std::string& metrics_b, const std::string& ckpt_a,
                                 const std::string& ckpt_b, size_t steps) {
  auto a = read_metrics(metrics_a), b = read_metrics(metrics_b);
  ASSERT_EQ(a.size(), steps);
  ASSERT_EQ(b.size(), steps) << "rank 0 alone writes the metrics";
  for (size_t i = 0; i < steps; ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_LT(rel_diff(b[i]["loss"].get<double>(), a[i]["loss"].get<double>()), 1e-5)
        << "step " << i + 1 << ": loss " << b[i]["loss"] << " vs " << a[i]["loss"];
    EXPECT_LT(rel_diff(b[i]["grad_norm"].get<double>(), a[i]["grad_norm"].get<double>()), 1e-4)
        << "step " << i + 1 << ": grad norm " << b[i]["grad_norm"] << " vs " << a[i]["grad_norm"];
  }
  auto wa = read_safetensors(ckpt_a);
  auto wb = read_safetensors(ckpt_b);
  ASSERT_TRUE(wa.has_value()) << wa.status().message();
  ASSERT_TRUE(wb.has_value()) << wb.status().message();
  ASSERT_EQ(wa->size(), wb->size()) << "the checkpoints hold different tensors";
  int64_t compared = 0, noise_only = 0;
  for (const auto& [name, t] : *wa) {
    ASSERT_TRUE(wb->count(name)) << name;
    const Tensor& u = wb->at(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    if (name.rfind("optimizer.", 0) == 0 || t.dtype() != DType::kFloat32) continue;  // the weights
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

inline bool mpirun_on_path() {
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

// A CLI test that starts galvatron under mpirun (`--devices N` on the CPU): skipped where galvatron was built without
// MPI or mpirun is missing; one OpenMP thread per rank.
class MpiCli : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
    if (!mpi_backend_built()) GTEST_SKIP() << "galvatron was built without MPI (install libopenmpi-dev)";
    if (!mpirun_on_path()) GTEST_SKIP() << "mpirun is not on PATH (install openmpi-bin)";
#if defined(__SANITIZE_ADDRESS__)
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1);  // see data_parallel_test.cpp
#endif
    setenv("OMP_NUM_THREADS", "1", 1);
  }
};

}  // namespace gv
