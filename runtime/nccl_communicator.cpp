// The NCCL backend of runtime/communicator.h: see runtime/nccl_communicator.h for the design (device buffers through
// NCCL on the compute stream, host buffers forwarded to the host communicator, bootstrap and groups through it,
// point-to-point staged through the host unless GALVATRON_NCCL_P2P=1). Compiled always; the NCCL code only with
// GALVATRON_HAVE_NCCL (set on this file alone by runtime/CMakeLists.txt where CUDA and NCCL are found).
#include "runtime/nccl_communicator.h"

#include <cstdlib>
#include <string>

#ifdef GALVATRON_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "kernels/cuda/device.h"
#endif

namespace gv {

namespace {
int local_rank_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMIX_LOCAL_RANK"}) {
    const char* v = std::getenv(name);
    if (v && *v) return std::atoi(v);
  }
  return 0;
}
}  // namespace

#ifndef GALVATRON_HAVE_NCCL

bool nccl_backend_built() { return false; }
int select_cuda_device_for_local_rank() {
  (void)local_rank_from_env;
  return -1;
}
Expected<std::unique_ptr<Communicator>> make_nccl_communicator(std::unique_ptr<Communicator>) {
  return unsupported("galvatron was built without NCCL (CUDA and nccl.h / libnccl were not both found)");
}

#else

bool nccl_backend_built() { return true; }

int select_cuda_device_for_local_rank() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    return -1;
  }
  const int dev = local_rank_from_env() % n;
  if (cudaSetDevice(dev) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return dev;
}

namespace {

Status nccl_status(ncclResult_t rc, const char* what) {
  if (rc == ncclSuccess) return Status::ok();
  return internal_error(std::string("NCCL ") + what + " failed: " + ncclGetErrorString(rc));
}
Status cuda_status(cudaError_t rc, const char* what) {
  if (rc == cudaSuccess) return Status::ok();
  cudaGetLastError();
  return internal_error(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(rc));
}

// Device (or managed) memory: NCCL's; anything else (pageable or pinned host memory): the host communicator's.
bool on_device(const void* p) {
  if (!p) return false;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // older runtimes fail on unregistered host memory
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

Expected<ncclDataType_t> reducible_type(DType t, const char* what) {
  switch (t) {
    case DType::kFloat32: return ncclFloat32;
    case DType::kFloat64: return ncclFloat64;
    case DType::kBFloat16: return ncclBfloat16;
    case DType::kFloat16: return ncclFloat16;
    default: break;
  }
  return unsupported(std::string(what) + " of " + dtype_name(t) + " (float32, float64, bfloat16, float16 only)");
}

bool nccl_p2p_enabled() {
  const char* v = std::getenv("GALVATRON_NCCL_P2P");
  return v && std::strcmp(v, "1") == 0;
}

// The compute stream (kernels/cuda/device.h): the project's kernels and copies run there.
cudaStream_t compute() { return static_cast<cudaStream_t>(cuda::compute_stream()); }

// Async collectives (all_reduce_async) of one process, shared by the world communicator and all its groups: one
// communication stream (non-blocking, so the legacy default stream does not implicitly synchronise with it) on which
// every async collective of every group runs in issue order, and whether any was issued since the last fence.
// See runtime/nccl_communicator.h for the ordering rules.
struct AsyncState {
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;  // recorded on the compute stream before each async collective
  cudaEvent_t done = nullptr;   // recorded on the comm stream by fence()
  bool pending = false;         // async work issued that the compute stream was not yet made to wait for
  // Partial waits (fence_but_last): async collective i's end is recorded on the comm stream, into ends[i % size], when
  // collective i + 1 begins; a wait on it is enqueued before the slot is recorded again (size collectives later).
  static constexpr size_t kEnds = 1024;
  std::vector<cudaEvent_t> ends;
  uint64_t issued = 0;  // async collectives begun so far

  ~AsyncState() {
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    if (ready) cudaEventDestroy(ready);
    if (done) cudaEventDestroy(done);
    for (cudaEvent_t e : ends) cudaEventDestroy(e);
    cudaGetLastError();
  }
  Status ensure() {
    if (stream) return Status::ok();
    GV_RETURN_IF_ERROR(cuda_status(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "event creation"));
    GV_RETURN_IF_ERROR(cuda_status(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "event creation"));
    return cuda_status(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "communication stream creation");
  }
  // The comm stream, after waiting for everything enqueued on the compute stream so far.
  Expected<cudaStream_t> begin() {
    GV_RETURN_IF_ERROR(ensure());
    if (issued > 0) GV_RETURN_IF_ERROR(record_end(issued - 1));
    ++issued;
    GV_RETURN_IF_ERROR(cuda_status(cudaEventRecord(ready, compute()), "event record (compute stream)"));
    GV_RETURN_IF_ERROR(cuda_status(cudaStreamWaitEvent(stream, ready, 0), "comm stream wait"));
    pending = true;
    return stream;
  }
  // Stream 0 waits (on the device; the host goes on) for every async collective issued so far.
  Status fence() {
    if (!pending) return Status::ok();
    pending = false;
    GV_RETURN_IF_ERROR(cuda_status(cudaEventRecord(done, stream), "event record (comm stream)"));
    return cuda_status(cudaStreamWaitEvent(compute(), done, 0), "compute stream wait");
  }
  // fence() for all async collectives issued so far but the last `keep` (which may run on beside later compute-stream
  // work).
  Status fence_but_last(int keep) {
    if (keep <= 0 || static_cast<uint64_t>(keep) >= issued) return keep <= 0 ? fence() : Status::ok();
    if (!pending) return Status::ok();
    const uint64_t target = issued - 1 - static_cast<uint64_t>(keep);  // its end was recorded when target + 1 began
    if (issued - 1 - target >= kEnds) return fence();                  // its slot was recorded again since
    return cuda_status(cudaStreamWaitEvent(compute(), ends[target % kEnds], 0), "compute stream wait");
  }

 private:
  Status record_end(uint64_t i) {
    if (ends.empty()) {
      ends.resize(kEnds, nullptr);
      for (cudaEvent_t& e : ends) {
        GV_RETURN_IF_ERROR(cuda_status(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event creation"));
      }
    }
    return cuda_status(cudaEventRecord(ends[i % kEnds], stream), "event record (comm stream)");
  }
};

// A ncclComm_t over the ranks of `host` (its rank and size): rank 0 makes the id, the host broadcasts it.
Expected<ncclComm_t> init_over(Communicator& host) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (host.rank() == 0) GV_RETURN_IF_ERROR(nccl_status(ncclGetUniqueId(&id), "creating the unique id"));
  if (host.size() > 1) {
    GV_RETURN_IF_ERROR(host.broadcast(&id, sizeof id, 0).with_context("broadcasting the NCCL unique id"));
  }
  ncclComm_t comm = nullptr;
  GV_RETURN_IF_ERROR(nccl_status(ncclCommInitRank(&comm, host.size(), id, host.rank()), "communicator init"));
  return comm;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator* host, std::unique_ptr<Communicator> owned_host, ncclComm_t comm,
                   std::shared_ptr<AsyncState> async)
      : host_(host), owned_host_(std::move(owned_host)), comm_(comm), rank_(host->rank()), size_(host->size()),
        async_(std::move(async)) {}
  ~NcclCommunicator() override {
    (void)wait_sends();  // fences and completes async collectives too
    if (async_ && async_->stream) cudaStreamSynchronize(async_->stream);
    groups_.clear();  // sub-communicators first
    if (scratch_) cudaFree(scratch_);
    if (comm_) ncclCommDestroy(comm_);
    // owned_host_ (the world's MPI communicator, finalising MPI) goes last, with the members.
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override {
    if (!on_device(data)) return host_->all_reduce(data, count, dtype, op);
    GV_ASSIGN_OR_RETURN(ncclDataType_t t, reducible_type(dtype, "all_reduce"));
    if (count == 0) return Status::ok();
    GV_RETURN_IF_ERROR(async_->fence());
    return nccl_status(ncclAllReduce(data, data, count, t, nccl_op(op), comm_, compute()), "all-reduce");
  }

  // Device buffers: on the shared comm stream after the compute work enqueued so far (the reduction, ncclAvg
  // included, happens there); host buffers: the blocking host all-reduce.
  Status all_reduce_async(void* data, size_t count, DType dtype, ReduceOp op) override {
    if (!on_device(data)) return host_->all_reduce(data, count, dtype, op);
    GV_ASSIGN_OR_RETURN(ncclDataType_t t, reducible_type(dtype, "all_reduce_async"));
    if (count == 0) return Status::ok();
    GV_ASSIGN_OR_RETURN(cudaStream_t s, async_->begin());
    return nccl_status(ncclAllReduce(data, data, count, t, nccl_op(op), comm_, s), "async all-reduce");
  }

  Status wait_async() override { return async_->fence(); }
  Status wait_async_but_last(int keep_pending) override { return async_->fence_but_last(keep_pending); }

  // Where a collective goes: async, the comm stream (after the compute-stream work so far); blocking, the compute
  // stream after the pending async collectives (the ordering rules in runtime/nccl_communicator.h).
  Expected<cudaStream_t> collective_stream(bool async) {
    if (async) return async_->begin();
    GV_RETURN_IF_ERROR(async_->fence());
    return compute();
  }

  Status broadcast(void* data, size_t bytes, int root) override {
    GV_RETURN_IF_ERROR(check_peer(root, "broadcast root"));
    if (!on_device(data)) return host_->broadcast(data, bytes, root);
    if (bytes == 0 || size_ == 1) return Status::ok();
    GV_RETURN_IF_ERROR(async_->fence());
    return nccl_status(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, compute()), "broadcast");
  }

  // A one-element all-reduce on the device and a wait for the stream: every rank enqueued everything before it.
  Status barrier() override {
    GV_RETURN_IF_ERROR(ensure_scratch(sizeof(float)));
    GV_RETURN_IF_ERROR(async_->fence());
    GV_RETURN_IF_ERROR(
        nccl_status(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, compute()), "barrier"));
    return cuda_status(cudaStreamSynchronize(compute()), "barrier synchronize");
  }

  Status all_gather(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) override {
    return gather(send, recv, counts, dtype, false);
  }
  Status all_gather_async(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) override {
    return gather(send, recv, counts, dtype, true);
  }
  // all_gather (async: on the comm stream, after the compute-stream work so far, including the staging copy below).
  Status gather(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype, bool async) {
    GV_RETURN_IF_ERROR(check_counts(counts, "all_gather"));
    if (!on_device(recv)) {
      if (on_device(send)) return invalid_argument("all_gather from device memory into host memory");
      return host_->all_gather(send, recv, counts, dtype);
    }
    const size_t elem = dtype_size(dtype);
    char* out = static_cast<char*>(recv);
    size_t my_off = 0, total = 0;
    for (int r = 0; r < size_; ++r) {
      if (r < rank_) my_off += counts[r];
      total += counts[r];
    }
    const void* src = send;
    if (counts[rank_] && !on_device(send)) {  // a host piece: stage it at its place in the output
      GV_RETURN_IF_ERROR(cuda_status(
          cudaMemcpyAsync(out + my_off * elem, send, counts[rank_] * elem, cudaMemcpyHostToDevice, compute()),
          "staging an all_gather piece"));
      src = out + my_off * elem;
    }
    if (total == 0) return Status::ok();
    if (size_ == 1) {
      if (src != out) {
        return cuda_status(cudaMemcpyAsync(out, src, counts[0] * elem, cudaMemcpyDeviceToDevice, compute()),
                           "all_gather copy");
      }
      return Status::ok();
    }
    const bool equal = std::all_of(counts.begin(), counts.end(), [&](size_t c) { return c == counts[0]; });
    if (!equal && counts[rank_] && src != out + my_off * elem) {
      GV_RETURN_IF_ERROR(cuda_status(
          cudaMemcpyAsync(out + my_off * elem, src, counts[rank_] * elem, cudaMemcpyDeviceToDevice, compute()),
          "all_gather copy"));
    }
    GV_ASSIGN_OR_RETURN(cudaStream_t stream, collective_stream(async));
    if (equal) {
      return nccl_status(ncclAllGather(src, out, counts[0] * elem, ncclUint8, comm_, stream), "all-gather");
    }
    // Unequal counts: each rank broadcasts its piece (copied to its place above) in place.
    GV_RETURN_IF_ERROR(nccl_status(ncclGroupStart(), "group start"));
    size_t off = 0;
    Status st;
    for (int r = 0; r < size_ && st.is_ok(); ++r) {
      if (counts[r]) {
        char* p = out + off * elem;
        st = nccl_status(ncclBroadcast(p, p, counts[r] * elem, ncclUint8, r, comm_, stream), "all-gather (bcast)");
      }
      off += counts[r];
    }
    Status end = nccl_status(ncclGroupEnd(), "all-gather (group end)");
    return st.is_ok() ? end : st;
  }

  Status reduce_scatter(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype,
                        ReduceOp op) override {
    return scatter(send, recv, counts, dtype, op, false);
  }
  Status reduce_scatter_async(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype,
                              ReduceOp op) override {
    return scatter(send, recv, counts, dtype, op, true);
  }
  // reduce_scatter (async: on the comm stream, after the compute-stream work so far).
  Status scatter(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype, ReduceOp op,
                 bool async) {
    GV_RETURN_IF_ERROR(check_counts(counts, "reduce_scatter"));
    if (!on_device(send)) {
      if (on_device(recv)) return invalid_argument("reduce_scatter from host memory into device memory");
      return host_->reduce_scatter(send, recv, counts, dtype, op);
    }
    GV_ASSIGN_OR_RETURN(ncclDataType_t t, reducible_type(dtype, "reduce_scatter"));
    const size_t elem = dtype_size(dtype);
    const char* in = static_cast<const char*>(send);
    size_t total = 0;
    for (size_t c : counts) total += c;
    if (total == 0) return Status::ok();
    if (size_ == 1) {
      if (send != recv) {
        return cuda_status(cudaMemcpyAsync(recv, send, counts[0] * elem, cudaMemcpyDeviceToDevice, compute()),
                           "reduce_scatter copy");
      }
      return Status::ok();
    }
    GV_ASSIGN_OR_RETURN(cudaStream_t stream, collective_stream(async));
    const bool equal = std::all_of(counts.begin(), counts.end(), [&](size_t c) { return c == counts[0]; });
    if (equal) {
      return nccl_status(ncclReduceScatter(send, recv, counts[0], t, nccl_op(op), comm_, stream), "reduce-scatter");
    }
    // Unequal counts: one reduction to each rank in turn, grouped.
    GV_RETURN_IF_ERROR(nccl_status(ncclGroupStart(), "group start"));
    size_t off = 0;
    Status st;
    for (int r = 0; r < size_ && st.is_ok(); ++r) {
      if (counts[r]) {
        void* dst = r == rank_ ? recv : const_cast<char*>(in + off * elem);  // written at the root only
        st = nccl_status(ncclReduce(in + off * elem, dst, counts[r], t, nccl_op(op), r, comm_, stream),
                         "reduce-scatter (reduce)");
      }
      off += counts[r];
    }
    Status end = nccl_status(ncclGroupEnd(), "reduce-scatter (group end)");
    return st.is_ok() ? end : st;
  }

  Status send(const void* data, size_t bytes, int dst, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(dst, "send to"));
    if (!on_device(data)) return host_->send(data, bytes, dst, tag);
    if (p2p_ && dst != rank_) {
      if (bytes == 0) return Status::ok();
      GV_RETURN_IF_ERROR(async_->fence());
      return nccl_status(ncclSend(data, bytes, ncclUint8, dst, comm_, compute()), "send");
    }
    std::vector<char> h(bytes);
    if (bytes) GV_RETURN_IF_ERROR(cuda_status(cudaMemcpy(h.data(), data, bytes, cudaMemcpyDeviceToHost), "send staging"));
    return host_->send(h.data(), bytes, dst, tag);
  }

  Status recv(void* data, size_t bytes, int src, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(src, "recv from"));
    if (!on_device(data)) return host_->recv(data, bytes, src, tag);
    if (p2p_ && src != rank_) {
      if (bytes == 0) return Status::ok();
      GV_RETURN_IF_ERROR(async_->fence());
      return nccl_status(ncclRecv(data, bytes, ncclUint8, src, comm_, compute()), "recv");
    }
    std::vector<char> h(bytes);
    GV_RETURN_IF_ERROR(host_->recv(h.data(), bytes, src, tag));
    if (!bytes) return Status::ok();
    // Synchronous (the host buffer dies here); ordered after earlier work on the compute stream.
    return cuda_status(cudaMemcpy(data, h.data(), bytes, cudaMemcpyHostToDevice), "recv staging");
  }

  Status wait_sends() override {
    Status f = async_->fence();  // so that synchronising the compute stream completes the async collectives too
    if (!f.is_ok()) return f;
    Status s = host_->wait_sends();
    Status c = cuda_status(cudaStreamSynchronize(compute()), "completing sends");
    return s.is_ok() ? c : s;
  }

  Expected<Communicator*> group(const std::vector<int>& ranks) override {
    bool whole = static_cast<int>(ranks.size()) == size_;
    for (int i = 0; whole && i < size_; ++i) whole = ranks[i] == i;
    if (whole) return static_cast<Communicator*>(this);
    auto it = groups_.find(ranks);
    if (it != groups_.end()) return static_cast<Communicator*>(it->second.get());
    auto hg = host_->group(ranks);  // checks the list and membership
    if (!hg) return hg.status();
    auto comm = init_over(**hg);
    if (!comm) return comm.status().with_context("creating the NCCL communicator of group " + rank_list(ranks));
    auto c = std::make_unique<NcclCommunicator>(*hg, nullptr, *comm, async_);
    Communicator* raw = c.get();
    groups_[ranks] = std::move(c);
    return raw;
  }

  const char* backend_name() const override { return "nccl"; }

 private:
  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kAvg ? ncclAvg : ncclSum; }

  Status ensure_scratch(size_t bytes) {
    if (scratch_bytes_ >= bytes) return Status::ok();
    if (scratch_) cudaFree(scratch_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    GV_RETURN_IF_ERROR(cuda_status(cudaMalloc(&scratch_, bytes), "scratch allocation"));
    GV_RETURN_IF_ERROR(cuda_status(cudaMemsetAsync(scratch_, 0, bytes, compute()), "scratch memset"));
    scratch_bytes_ = bytes;
    return Status::ok();
  }
  Status check_peer(int peer, const char* what) const {
    if (peer >= 0 && peer < size_) return Status::ok();
    return invalid_argument(std::string(what) + " rank " + std::to_string(peer) + " of a communicator of " +
                            std::to_string(size_) + " ranks");
  }
  Status check_counts(const std::vector<size_t>& counts, const char* what) const {
    if (static_cast<int>(counts.size()) == size_) return Status::ok();
    return invalid_argument(std::string(what) + " with " + std::to_string(counts.size()) + " counts over " +
                            std::to_string(size_) + " ranks (one count per rank expected)");
  }

  Communicator* host_;
  std::unique_ptr<Communicator> owned_host_;
  ncclComm_t comm_;
  int rank_, size_;
  std::shared_ptr<AsyncState> async_;  // shared with the world and every group
  bool p2p_ = nccl_p2p_enabled();
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  std::map<std::vector<int>, std::unique_ptr<NcclCommunicator>> groups_;
};

}  // namespace

Expected<std::unique_ptr<Communicator>> make_nccl_communicator(std::unique_ptr<Communicator> host) {
  if (!host) return invalid_argument("make_nccl_communicator needs a host communicator");
  // Several processes: the legacy stream, on which these collectives and their fences were proven (a 2-GPU run of
  // stop 24's created compute stream hung); their steps are never recorded as CUDA graphs anyway.
  if (host->size() > 1) cuda::use_legacy_stream();
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return unsupported("NCCL communicator: no CUDA device is visible");
  }
  auto comm = init_over(*host);
  if (!comm) return comm.status().with_context("creating the NCCL world communicator");
  Communicator* raw = host.get();
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(raw, std::move(host), *comm, std::make_shared<AsyncState>()));
}

#endif

}  // namespace gv
