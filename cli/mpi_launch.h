// Starting N local worker processes: a command given --devices N re-runs itself as `mpirun -np N` (OpenMPI from
// Debian's packages), one MPI rank per worker; the workers then take their ranks from MPI.
#pragma once
#include <cstdint>

#include "runtime/status.h"

namespace gv::cli {

// Replaces this process by `mpirun -np N` running this same command line; returns only on failure. Sets
// OMP_NUM_THREADS to cores / N unless the user chose.
Status relaunch_under_mpirun(int64_t n);

}  // namespace gv::cli
