#include "cli/world_communicator.h"

#include <cstdio>

#include "runtime/nccl_communicator.h"

namespace gv::cli {

Expected<std::unique_ptr<Communicator>> make_world_communicator(bool cuda, int64_t devices, CommandContext& ctx) {
  const int gpu = cuda ? select_cuda_device_for_local_rank() : -1;
  GV_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, make_communicator());
  if (cuda && gpu >= 0 && nccl_backend_built()) {
    const int size = comm->size();
    auto nccl = make_nccl_communicator(std::move(comm));
    if (nccl) {
      comm = std::move(*nccl);
    } else if (size == 1) {  // one GPU: nothing is communicated anyway
      if (!ctx.quiet) std::fprintf(stderr, "note: no NCCL communicator (%s)\n", nccl.status().message().c_str());
      GV_ASSIGN_OR_RETURN(comm, make_communicator());
    } else {
      return nccl.status().with_context("creating the NCCL communicator of " + std::to_string(size) + " GPUs");
    }
  } else if (cuda && devices > 1 && !ctx.quiet) {
    std::fprintf(stderr, "note: galvatron was built without NCCL: the GPUs communicate through MPI and host copies\n");
  }
  if (comm->size() != devices) {
    return ctx.usage("launched with " + std::to_string(comm->size()) + " MPI ranks but --devices " +
                     std::to_string(devices) + "; they must agree");
  }
  return comm;
}

}  // namespace gv::cli
