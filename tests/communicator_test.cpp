// The communicator backends that run in one process: thread communicators of 1 to 4 ranks run every collective
// check of tests/communicator_checks.h (one thread per rank), and the single-process communicator's own behaviour.
// The MPI communicator runs the same checks under mpirun: tests/mpi_selftest_main.cpp, started by MpiSelfTest below.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <thread>

#include "tests/communicator_checks.h"

namespace gv {
namespace {

// Runs fn(rank's communicator) on n threads; returns each rank's status.
std::vector<Status> on_threads(int n, const std::function<Status(Communicator&)>& fn) {
  auto comms = make_thread_communicators(n);
  std::vector<Status> out(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { out[r] = fn(*comms[r]); });
  for (auto& t : threads) t.join();
  return out;
}

class ThreadCommunicatorChecks : public ::testing::TestWithParam<int> {};

TEST_P(ThreadCommunicatorChecks, EveryCheckPassesOnEveryRank) {
  const int n = GetParam();
  for (const auto& check : comm_checks::all_checks()) {
    auto results = on_threads(n, check.fn);
    for (int r = 0; r < n; ++r) EXPECT_TRUE(results[r].is_ok()) << check.name << " rank " << r << ": " << results[r].message();
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, ThreadCommunicatorChecks, ::testing::Values(1, 2, 3, 4));

TEST(ThreadCommunicator, ReportsItsRanksAndBackend) {
  auto comms = make_thread_communicators(3);
  ASSERT_EQ(comms.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(comms[r]->rank(), r);
    EXPECT_EQ(comms[r]->size(), 3);
    EXPECT_STREQ(comms[r]->backend_name(), "thread");
  }
  EXPECT_TRUE(make_thread_communicators(0).empty());
}

TEST(ThreadCommunicator, SumsInRankOrder) {
  // 1e8 + 1 - 1e8 in float32 depends on the order: rank order gives (1e8 + 1) - 1e8 = 0 on every rank.
  auto results = on_threads(3, [](Communicator& c) -> Status {
    const float v[3] = {1e8f, 1.0f, -1e8f};
    float x = v[c.rank()];
    GV_RETURN_IF_ERROR(c.all_reduce(&x, 1, DType::kFloat32, ReduceOp::kSum));
    float want = (v[0] + v[1]) + v[2];
    if (x != want) return internal_error("got " + std::to_string(x) + " want " + std::to_string(want));
    return Status::ok();
  });
  for (const Status& s : results) EXPECT_TRUE(s.is_ok()) << s.message();
}

TEST(ThreadCommunicator, MismatchedCountsAreAnErrorOnEveryRank) {
  auto results = on_threads(2, [](Communicator& c) -> Status {
    std::vector<size_t> counts = {1, c.rank() == 0 ? size_t(1) : size_t(2)};
    float send[2] = {1, 2}, recv[3];
    return c.all_gather(send, recv, counts, DType::kFloat32);
  });
  for (const Status& s : results) EXPECT_FALSE(s.is_ok());
}

TEST(ThreadCommunicator, RecvOfTheWrongSizeIsAnError) {
  auto results = on_threads(2, [](Communicator& c) -> Status {
    double x[2] = {1, 2};
    if (c.rank() == 0) return c.send(x, sizeof x, 1, 0);
    Status s = c.recv(x, sizeof(double), 0, 0);
    return s.is_ok() ? internal_error("a recv of 8 bytes accepted a 16-byte message") : Status::ok();
  });
  for (const Status& s : results) EXPECT_TRUE(s.is_ok()) << s.message();
}

TEST(SingleProcessCommunicator, RunsEveryCheck) {
  auto c = make_single_process_communicator();
  for (const auto& check : comm_checks::all_checks()) {
    Status s = check.fn(*c);
    EXPECT_TRUE(s.is_ok()) << check.name << ": " << s.message();
  }
}

TEST(SingleProcessCommunicator, GroupsAndMessagesToItself) {
  auto c = make_single_process_communicator();
  auto g = c->group({0});
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(*g, c.get());
  EXPECT_FALSE(c->group({0, 1}).has_value());
  EXPECT_FALSE(c->prepare_groups({{0, 1}}).is_ok());  // rank 1 does not exist
  EXPECT_TRUE(c->prepare_groups({{1}, {0}}).is_ok());  // a group without this rank is skipped
  // Two messages with different tags, received in the other order; a recv with nothing sent fails at once.
  float a = 1.5f, b = 2.5f, got = 0;
  ASSERT_TRUE(c->send(&a, sizeof a, 0, 1).is_ok());
  ASSERT_TRUE(c->send(&b, sizeof b, 0, 2).is_ok());
  ASSERT_TRUE(c->recv(&got, sizeof got, 0, 2).is_ok());
  EXPECT_EQ(got, 2.5f);
  ASSERT_TRUE(c->recv(&got, sizeof got, 0, 1).is_ok());
  EXPECT_EQ(got, 1.5f);
  Status s = c->recv(&got, sizeof got, 0, 1);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("tag 1"), std::string::npos) << s.message();
  EXPECT_FALSE(c->send(&a, sizeof a, 1, 0).is_ok());
}

bool on_path(const char* exe) {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t colon = p.find(':', pos);
    std::string dir = p.substr(pos, colon == std::string::npos ? std::string::npos : colon - pos);
    if (!dir.empty() && ::access((dir + "/" + exe).c_str(), X_OK) == 0) return true;
    if (colon == std::string::npos) break;
    pos = colon + 1;
  }
  return false;
}

// The MPI communicator: the same checks on 4 processes (tests/mpi_selftest_main.cpp).
TEST(MpiSelfTest, FourRanksPassEveryCheck) {
  if (!mpi_backend_built()) GTEST_SKIP() << "galvatron was built without MPI (install libopenmpi-dev)";
  if (!on_path("mpirun")) GTEST_SKIP() << "mpirun is not on PATH (install openmpi-bin)";
  const std::string exe = std::string(GV_BINARY_DIR) + "/tests/gv_mpi_selftest";
  ASSERT_EQ(::access(exe.c_str(), X_OK), 0) << exe << " was not built";
#if defined(__SANITIZE_ADDRESS__)
  setenv("ASAN_OPTIONS", "detect_leaks=0", 1);  // OpenMPI's plugins keep allocations until exit
#endif
  const std::string cmd = "mpirun --allow-run-as-root --oversubscribe -np 4 " + exe + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  const int rc = ::pclose(p);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("mpi selftest: all checks passed on 4 ranks"), std::string::npos) << out;
}

}  // namespace
}  // namespace gv
