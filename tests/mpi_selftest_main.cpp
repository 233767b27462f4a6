// Runs the collective checks of tests/communicator_checks.h on the MPI communicator. Started by
// tests/communicator_test.cpp as `mpirun -np 4 gv_mpi_selftest`; exits non-zero when any rank fails any check.
// Every rank runs every check (they are collective); failures are counted across ranks with an all_reduce.
#include <cstdio>

#include "tests/communicator_checks.h"

int main() {
  auto world = gv::make_communicator();
  if (!world) {
    std::fprintf(stderr, "mpi selftest: %s\n", world.status().message().c_str());
    return 2;
  }
  gv::Communicator& c = **world;
  if (std::string(c.backend_name()) != "mpi") {
    std::fprintf(stderr, "mpi selftest: expected the MPI backend, got '%s' (run it under mpirun)\n", c.backend_name());
    return 2;
  }
  double failures = 0;
  for (const auto& check : gv::comm_checks::all_checks()) {
    gv::Status s = check.fn(c);
    if (!s.is_ok()) {
      std::fprintf(stderr, "mpi selftest: rank %d: %s failed: %s\n", c.rank(), check.name, s.message().c_str());
      failures += 1;
    }
  }
  gv::Status s = c.all_reduce(&failures, 1, gv::DType::kFloat64, gv::ReduceOp::kSum);
  if (!s.is_ok() || failures > 0) {
    if (c.rank() == 0) std::fprintf(stderr, "mpi selftest: %g failures over all ranks\n", failures);
    return 1;
  }
  if (c.rank() == 0) std::printf("mpi selftest: all checks passed on %d ranks\n", c.size());
  return 0;
}
