// `galvatron profile --hardware --devices N`: measures what Galvatron's hardware files hold on this machine's devices,
// through the project's own communicator (NCCL on GPUs, MPI on CPUs): all-reduce bus bandwidth per group size laid
// out consecutive and strided, pipeline send/recv bandwidth per stage count, the compute/communication overlap
// slowdown, and all-reduce / all-gather times over message sizes (the sp_time file).
#pragma once
#include "cli/commands.h"
#include "partitioner/profiler.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"

namespace gv::cli {

struct HardwareMeasureOptions {
  double start_mb = 16, end_mb = 512;  // all-reduce message sizes (doubling); the bandwidth is the largest's
  int iters = 5;                       // timed repeats per size (after one warm-up); the median is kept
};

// Every rank calls it together; the result is the same on every rank.
Expected<partitioner::MeasuredHardware> measure_hardware(Communicator& world, Backend& backend,
                                                         const HardwareMeasureOptions& o, CommandContext& ctx);

}  // namespace gv::cli
