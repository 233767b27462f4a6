#include "runtime/communicator.h"

#include <cstdlib>
#include <string>

namespace gv {

#ifdef GALVATRON_HAVE_MPI
Expected<std::unique_ptr<Communicator>> make_mpi_communicator();  // runtime/mpi_communicator.cpp
#endif

namespace {

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Status all_reduce(void*, size_t, DType dtype, ReduceOp) override {
    if (dtype != DType::kFloat32 && dtype != DType::kFloat64) {
      return unsupported(std::string("all_reduce of ") + dtype_name(dtype) + " (float32 and float64 only)");
    }
    return Status::ok();
  }
  Status broadcast(void*, size_t, int root) override {
    return root == 0 ? Status::ok() : invalid_argument("broadcast root " + std::to_string(root) + " of 1 rank");
  }
  Status barrier() override { return Status::ok(); }
  const char* backend_name() const override { return "single"; }
};

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : -1;
}

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

bool launched_under_mpi() {
  return env_int("OMPI_COMM_WORLD_SIZE") > 0 || env_int("PMI_SIZE") > 0 || env_int("PMIX_SIZE") > 0 ||
         std::getenv("PMIX_RANK") != nullptr;
}

bool mpi_backend_built() {
#ifdef GALVATRON_HAVE_MPI
  return true;
#else
  return false;
#endif
}

Expected<std::unique_ptr<Communicator>> make_communicator() {
  if (!launched_under_mpi()) return make_single_process_communicator();
#ifdef GALVATRON_HAVE_MPI
  return make_mpi_communicator();
#else
  int n = env_int("OMPI_COMM_WORLD_SIZE");
  if (n < 0) n = env_int("PMI_SIZE");
  if (n > 1) {
    return unsupported("launched under mpirun with " + std::to_string(n) +
                       " ranks, but galvatron was built without MPI (install libopenmpi-dev and rebuild)");
  }
  return make_single_process_communicator();
#endif
}

}  // namespace gv
