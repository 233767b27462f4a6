// The MPI backend of runtime/communicator.h (built only where CMake finds MPI). MPI is initialised by the first
// communicator and finalised when it is destroyed; one world communicator per process.
// The C API only: OpenMPI's deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <string>

#include "runtime/communicator.h"

namespace gv {
namespace {

Status mpi_status(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return Status::ok();
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return internal_error(std::string("MPI ") + what + " failed: " + std::string(msg, len));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(bool owns_init) : owns_init_(owns_init) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_init_ && !finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override {
    MPI_Datatype t;
    if (dtype == DType::kFloat32) t = MPI_FLOAT;
    else if (dtype == DType::kFloat64) t = MPI_DOUBLE;
    else return unsupported(std::string("all_reduce of ") + dtype_name(dtype) + " (float32 and float64 only)");
    // MPI counts are int: reduce in chunks.
    constexpr size_t kChunk = size_t(1) << 30;
    const size_t elem = dtype == DType::kFloat32 ? 4 : 8;
    for (size_t off = 0; off < count; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, count - off));
      char* p = static_cast<char*>(data) + off * elem;
      GV_RETURN_IF_ERROR(mpi_status(MPI_Allreduce(MPI_IN_PLACE, p, n, t, MPI_SUM, MPI_COMM_WORLD), "all-reduce"));
    }
    if (op == ReduceOp::kAvg && size_ > 1) {
      if (dtype == DType::kFloat32) {
        float* f = static_cast<float*>(data);
        const float inv = 1.0f / static_cast<float>(size_);
        for (size_t i = 0; i < count; ++i) f[i] *= inv;
      } else {
        double* d = static_cast<double*>(data);
        for (size_t i = 0; i < count; ++i) d[i] /= size_;
      }
    }
    return Status::ok();
  }

  Status broadcast(void* data, size_t bytes, int root) override {
    if (root < 0 || root >= size_) {
      return invalid_argument("broadcast root " + std::to_string(root) + " of " + std::to_string(size_) + " ranks");
    }
    constexpr size_t kChunk = size_t(1) << 30;
    for (size_t off = 0; off < bytes; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, bytes - off));
      GV_RETURN_IF_ERROR(mpi_status(MPI_Bcast(static_cast<char*>(data) + off, n, MPI_BYTE, root, MPI_COMM_WORLD),
                                    "broadcast"));
    }
    return Status::ok();
  }

  Status barrier() override { return mpi_status(MPI_Barrier(MPI_COMM_WORLD), "barrier"); }
  const char* backend_name() const override { return "mpi"; }

 private:
  bool owns_init_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

Expected<std::unique_ptr<Communicator>> make_mpi_communicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    GV_RETURN_IF_ERROR(mpi_status(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init"));
  }
  return std::unique_ptr<Communicator>(new MpiCommunicator(!initialized));
}

}  // namespace gv
