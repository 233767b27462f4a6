// The NCCL backend of runtime/communicator.h (runtime/nccl_communicator.cpp; the real one is built only where CMake
// finds CUDA and NCCL, elsewhere the factory answers `unsupported`).
//
// Buffers: device pointers go through NCCL on the compute stream (kernels/cuda/device.h compute_stream), the stream
// every CUDA kernel of this project runs on, so collectives are ordered with the kernels without extra synchronisation
// and return before the data moved. Host pointers (the trainer's loss, checkpoint assembly, the plan broadcast, the CPU
// fallback kernels) are forwarded to the host communicator the NCCL one was bootstrapped from (MPI's, or a single
// process's). cudaPointerGetAttributes tells the two apart; device and managed memory count as device.
//
// Bootstrap: rank 0 of the host communicator creates an ncclUniqueId and broadcasts it through the host communicator;
// every rank then calls ncclCommInitRank. Groups: group(ranks) makes the host communicator's group first, then an NCCL
// communicator over it the same way (the id broadcast inside the host group, so only members take part, as
// prepare_groups requires); cached by rank list.
//
// all_gather / reduce_scatter: equal counts use ncclAllGather / ncclReduceScatter; unequal counts use one grouped
// ncclBroadcast / ncclReduce per rank (each rank's piece in place), so no padding buffers are needed.
//
// Point to point: NCCL has no tags and matches sends to a peer with receives from it in issue order, and an NCCL send
// occupies the stream until the peer posts its receive. So by default send()/recv() on device buffers are staged
// through the host: send() copies the bytes to the host (waiting for the stream) and hands them to the host
// communicator's send (buffered, tag-matched, never waits for the peer); recv() receives into a host buffer and copies
// it to the device. Every schedule that is deadlock-free over MPI stays so: this process blocks its host only where MPI
// would block it too (a collective blocks MPI until every member joined; here a later host wait on the stream can
// only wait for collectives the other members enqueue at the same program point).
// GALVATRON_NCCL_P2P=1 sends with ncclSend/ncclRecv on the compute stream instead (no host copies). That needs (1)
// every pair of ranks to post its messages in the same order on both sides (tags are checked for nothing), and (2) no
// host synchronisation (a fallback kernel's device-to-host copy, a host-buffer collective) between a send and the point
// where its peer enqueues the matching receive, since the send holds the stream until then.
// wait_sends() completes the host communicator's staged sends and synchronises the stream (async collectives too).
//
// Async collectives (all_reduce_async / wait_async: data-parallel gradient all-reduces overlapped with the backward
// pass). One communication stream per process, created with cudaStreamNonBlocking (so the compute stream does not
// implicitly synchronise with it) and shared by the world communicator and all its groups. all_reduce_async on a
// device buffer records an event on the compute stream and makes the comm stream wait for it (the gradient was written
// by the kernels enqueued so far), then enqueues ncclAllReduce on the comm stream (ncclSum or ncclAvg: the averaging
// happens there as well) and returns at once; host buffers block through the host communicator as all_reduce does.
// wait_async() records an event on the comm stream and makes the compute stream wait for it (cudaStreamWaitEvent: the
// host is not blocked); on any communicator of the world it covers the async collectives of every group.
// Ordering rules. NCCL needs every rank to launch the collectives of a communicator in the same order (program order,
// the same on every rank), and two NCCL kernels in flight at once on different streams can deadlock each other (on one
// ncclComm or several: each waits for peers whose SMs or FIFO slots the other holds). So no two NCCL operations of this
// process ever run concurrently: async collectives run one after another on the one comm stream, each after the
// compute-stream work enqueued before it; and every blocking NCCL operation on the compute stream (all_reduce,
// broadcast, barrier, all_gather, reduce_scatter, NCCL point to point, on any group) first fences, i.e. makes the
// compute stream wait for the pending async ones (as wait_async()). A blocking collective issued during the backward
// pass (a tensor-parallel reduction) therefore waits for the data-parallel all-reduces issued before it. Host-buffer
// operations (MPI) need no fence: they do not touch the GPU, and every rank issues the async collectives before any
// later host-side wait in the same program order, so each launched NCCL kernel's peers do launch theirs.
#pragma once
#include <memory>

#include "runtime/communicator.h"

namespace gv {

// True when the NCCL backend was built (CMake found CUDA and NCCL).
bool nccl_backend_built();

// Selects this process's GPU before any other CUDA call: (local rank % visible devices), the local rank read from
// OMPI_COMM_WORLD_LOCAL_RANK (or MPI_LOCALRANKID / SLURM_LOCALID; 0 when none is set). Returns the device index, or
// -1 where CUDA is not built or no device is visible.
int select_cuda_device_for_local_rank();

// An NCCL communicator over the ranks of `host` (same rank and size), bootstrapped through it; it owns `host` and
// forwards host-buffer calls to it. With a one-rank host (a single process), a one-rank NCCL communicator.
// backend_name() is "nccl". Fails where NCCL is not built or no CUDA device is visible.
Expected<std::unique_ptr<Communicator>> make_nccl_communicator(std::unique_ptr<Communicator> host);

}  // namespace gv
