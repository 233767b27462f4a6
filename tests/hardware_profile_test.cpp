// `galvatron profile --hardware --devices N` measures the hardware files through the project's communicator (MPI on
// CPUs here) and `galvatron search` accepts them.
#include <nlohmann/json.hpp>

#include "runtime/communicator.h"
#include "tests/parallel_equivalence.h"

namespace gv {
namespace {

class HardwareProfile : public Cli {
 protected:
  void SetUp() override {
    Cli::SetUp();
#if defined(__SANITIZE_ADDRESS__)
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1);  // OpenMPI's plugins inside the workers: see data_parallel_test.cpp
#endif
  }
};

TEST_F(HardwareProfile, MeasuredFilesHaveGalvatronsKeysAndFeedTheSearch) {
  if (!mpi_backend_built()) GTEST_SKIP() << "galvatron was built without MPI";
  if (!mpirun_on_path()) GTEST_SKIP() << "mpirun is not on PATH";
  setenv("OMP_NUM_THREADS", "1", 1);
  auto r = run({"profile", "--hardware", "--devices", "4", "--device", "cpu", "--start-mb", "1", "--end-mb", "2",
                "--output-dir", path("hw")});
  ASSERT_EQ(r.code, 0) << r.err;
  auto ar = nlohmann::json::parse(slurp(path("hw/allreduce_bandwidth_1nodes_4gpus_per_node.json")));
  for (const char* key : {"allreduce_size_2_consec_1", "allreduce_size_2_consec_0", "allreduce_size_4_consec_1"}) {
    ASSERT_TRUE(ar.contains(key)) << key << " missing from " << ar.dump();
    EXPECT_GT(ar[key].get<double>(), 0.0) << key;
  }
  auto p2p = nlohmann::json::parse(slurp(path("hw/p2p_bandwidth_1nodes_4gpus_per_node.json")));
  EXPECT_GT(p2p.at("pp_size_2").get<double>(), 0.0);
  EXPECT_GT(p2p.at("pp_size_4").get<double>(), 0.0);
  auto ov = nlohmann::json::parse(slurp(path("hw/overlap_coefficient.json")));
  EXPECT_GE(ov.at("overlap_coe").get<double>(), 1.0);
  auto sp = nlohmann::json::parse(slurp(path("hw/sp_time_1nodes_4gpus_per_node.json")));
  EXPECT_TRUE(sp.contains("allreduce_size_4_1024MB_time"));
  EXPECT_TRUE(sp.contains("all2all_size_2_1MB_time"));
  r = run({"search", fixture("gpt2", "model.onnx"), "--seq-length", "32", "--num-gpus-per-node", "4", "--settle-bsz",
           "16", "--disable-vtp", "1", "--memory-constraint", "8", "--hardware-profiling-path", path("hw"),
           "--output-config-path", path("plan.json")});
  ASSERT_EQ(r.code, 0) << r.err;
  auto plan = nlohmann::json::parse(slurp(path("plan.json")));
  EXPECT_TRUE(plan.contains("tp_sizes_enc"));
}

TEST_F(HardwareProfile, GpusWithoutNcclAreAClearError) {
  if (!mpi_backend_built() || !mpirun_on_path()) GTEST_SKIP() << "no MPI";
  auto r = run({"profile", "--hardware", "--devices", "2", "--device", "cuda", "--output-dir", path("hw")});
  EXPECT_NE(r.code, 0);
  EXPECT_FALSE(r.err.empty());
}

}  // namespace
}  // namespace gv
