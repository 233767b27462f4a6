// One communication interface for parallel training: collectives over the ranks of one group, and point-to-point
// messages. Backends: a single process (every collective is the identity) and MPI on CPUs
// (runtime/mpi_communicator.cpp, built where MPI is found), and NCCL on GPUs (runtime/nccl_communicator.h: device buffers
// through NCCL, host buffers forwarded to the MPI communicator it was bootstrapped from).
//
// Groups: group(ranks) gives a communicator over a subset of the world's ranks (a TP group, a DP group, the ranks
// holding a tied weight), in the order given; rank() inside it is the position in that list. Groups are created
// collectively by their members: call prepare_groups() with every group a process will use, in the same order on
// every process (sorted), before the first collective, so that no two processes create groups in different orders.
// Buffers are host memory for the MPI backend.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv {

enum class ReduceOp { kSum, kAvg };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with the element-wise sum (or mean) of all ranks' buffers. float32 / float64, and
  // bfloat16 (data-parallel gradients reduced in bf16, TrainingGraphOptions::bf16_grad_reduce): NCCL natively, the
  // other backends through all_reduce_bf16_widened.
  virtual Status all_reduce(void* data, size_t count, DType dtype, ReduceOp op) = 0;
  // all_reduce that may return before the reduction is done (overlapping it with later work), for data-parallel
  // gradient sums issued during the backward pass. The buffer must not be read or written until wait_async()
  // returned, or, for device buffers, until work the caller enqueues on the compute stream after wait_async() runs.
  // Every rank issues the same async and blocking collectives in the same order (program order), as for all_reduce.
  // Default: the blocking all_reduce (MPI, thread and single-process communicators: the buffer is final on return).
  // NCCL (runtime/nccl_communicator.h): device buffers are reduced on a separate communication stream, ordered after
  // the compute work enqueued so far; host buffers block as all_reduce does.
  virtual Status all_reduce_async(void* data, size_t count, DType dtype, ReduceOp op) {
    return all_reduce(data, count, dtype, op);
  }
  // Orders every async collective issued so far in this process (on any group of this world) before later work:
  // NCCL makes the compute stream wait for them without blocking the host. Default: nothing to wait for.
  virtual Status wait_async() { return Status::ok(); }
  // wait_async for all but the last `keep_pending` async collectives issued (in issue order; 0: all of them), so that
  // later ones may still run beside the work after it (ZeRO-2's prefetched weight gathers). Default: wait_async.
  virtual Status wait_async_but_last(int keep_pending) { return keep_pending > 0 ? Status::ok() : wait_async(); }
  // In place: every rank ends with `root`'s bytes.
  virtual Status broadcast(void* data, size_t bytes, int root) = 0;
  virtual Status barrier() = 0;
  // Rank i contributes counts[i] elements (`send` holds counts[rank()]); `recv` receives all of them concatenated in
  // rank order (sum(counts) elements). Any dtype; counts may differ and may be 0.
  virtual Status all_gather(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) = 0;
  // `send` holds sum(counts) elements; rank i receives the element-wise sum (or mean) over all ranks of the
  // counts[i] elements at offset counts[0] + ... + counts[i-1]. float32 / float64.
  virtual Status reduce_scatter(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype,
                                ReduceOp op) = 0;
  // all_gather / reduce_scatter that may return before the data moved, as all_reduce_async (the same ordering rules:
  // neither buffer may be touched until wait_async()). ZeRO-2's gradient reduce-scatters during the backward pass and
  // its parameter gathers during the optimizer step. Default: the blocking collectives.
  virtual Status all_gather_async(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) {
    return all_gather(send, recv, counts, dtype);
  }
  virtual Status reduce_scatter_async(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype,
                                      ReduceOp op) {
    return reduce_scatter(send, recv, counts, dtype, op);
  }
  // Point to point, ranks of this communicator. send() does not wait for the matching recv() (the bytes are copied
  // out first); recv() blocks until the message with that tag from `src` arrived. wait_sends() completes every send
  // started so far (call it at the end of a step).
  virtual Status send(const void* data, size_t bytes, int dst, int tag) = 0;
  virtual Status recv(void* data, size_t bytes, int src, int tag) = 0;
  virtual Status wait_sends() = 0;
  // The communicator over `ranks` (world ranks of this communicator, this process among them), created on first
  // use and cached. A group of the whole world in world order is this communicator itself.
  virtual Expected<Communicator*> group(const std::vector<int>& ranks) = 0;
  // Creates every listed group this process belongs to, in the given order (see the file comment).
  Status prepare_groups(const std::vector<std::vector<int>>& groups);
  // "single", "mpi", "thread" or "nccl".
  virtual const char* backend_name() const = 0;
};

// "{0,2,4}", for messages.
std::string rank_list(const std::vector<int>& ranks);

// The communicator of a node's `group` attribute (world ranks): `world` itself for an empty group, world->group(ranks)
// otherwise; null when `world` is null and the group is empty or {0} (one process). Errors name the group.
Expected<Communicator*> communicator_of_group(Communicator* world, const std::vector<int64_t>& group);

// bfloat16 all_reduce for communicators without a native bfloat16 sum (MPI, threads): the buffer widened to float32,
// reduced by c.all_reduce, and rounded to bfloat16 once (round to nearest even). The result is the correctly rounded
// float32 sum of the ranks' bf16 values; NCCL's ring rounds partial sums on the way, so the two may differ in the last
// bf16 bit.
Status all_reduce_bf16_widened(Communicator& c, void* data, size_t count, ReduceOp op);
// bfloat16 reduce_scatter likewise (ZeRO-2's bf16 gradients): `send` widened, c.reduce_scatter in float32, this rank's
// range rounded to bfloat16 once.
Status reduce_scatter_bf16_widened(Communicator& c, const void* send, void* recv, const std::vector<size_t>& counts,
                                   ReduceOp op);

// One rank of one: collectives leave buffers as they are (copying send to recv where they differ).
std::unique_ptr<Communicator> make_single_process_communicator();

// n communicators of one world inside this process, rank i = element i, each to be used from its own thread (tests
// run multi-rank graphs without mpirun). Every method works: collectives (sums in rank order, so deterministic),
// groups, and point-to-point messages matched by source and tag. backend_name() is "thread".
std::vector<std::unique_ptr<Communicator>> make_thread_communicators(int n);

// True when this process was started by mpirun (OpenMPI's or a PMI launcher's variables are set).
bool launched_under_mpi();
// True when the MPI backend was built (CMake found MPI).
bool mpi_backend_built();

// The world communicator: MPI's when launched under mpirun (initialising MPI; finalised when it is destroyed), else a
// single process. Fails when launched under mpirun with more than one rank but the MPI backend was not built.
Expected<std::unique_ptr<Communicator>> make_communicator();

}  // namespace gv
