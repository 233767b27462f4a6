// One communication interface for parallel training: collectives over the ranks of one group. Backends: a single
// process (every collective is the identity) and MPI on CPUs (runtime/mpi_communicator.cpp, built where MPI is
// found). Buffers are host memory; dtypes float32 and float64.
#pragma once
#include <cstddef>
#include <memory>

#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv {

enum class ReduceOp { kSum, kAvg };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with the element-wise sum (or mean) of all ranks' buffers.
  virtual Status all_reduce(void* data, size_t count, DType dtype, ReduceOp op) = 0;
  // In place: every rank ends with `root`'s bytes.
  virtual Status broadcast(void* data, size_t bytes, int root) = 0;
  virtual Status barrier() = 0;
  // "mpi" or "single".
  virtual const char* backend_name() const = 0;
};

// One rank of one: collectives leave buffers as they are.
std::unique_ptr<Communicator> make_single_process_communicator();

// True when this process was started by mpirun (OpenMPI's or a PMI launcher's variables are set).
bool launched_under_mpi();
// True when the MPI backend was built (CMake found MPI).
bool mpi_backend_built();

// The world communicator: MPI's when launched under mpirun (initialising MPI; finalised when it is destroyed), else a
// single process. Fails when launched under mpirun with more than one rank but the MPI backend was not built.
Expected<std::unique_ptr<Communicator>> make_communicator();

}  // namespace gv
