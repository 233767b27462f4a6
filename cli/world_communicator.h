// The world communicator of a command run with --devices N (after the mpirun relaunch): MPI's (or a single
// process's) on CPUs; on GPUs one GPU per process, chosen before any other CUDA call, and NCCL's communicator
// bootstrapped through MPI's (which keeps the host-buffer calls).
#pragma once
#include <memory>

#include "cli/commands.h"
#include "runtime/communicator.h"

namespace gv::cli {

Expected<std::unique_ptr<Communicator>> make_world_communicator(bool cuda, int64_t devices, CommandContext& ctx);

}  // namespace gv::cli
