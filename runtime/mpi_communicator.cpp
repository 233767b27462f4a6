// The MPI backend of runtime/communicator.h (built only where CMake finds MPI). MPI is initialised by the first
// communicator and finalised when it is destroyed; one world communicator per process. Groups are MPI communicators
// made with MPI_Comm_create_group (only the members take part), cached per rank list and freed with their parent.
// Errors come back as Status values: the world communicator's error handler is MPI_ERRORS_RETURN.
// The C API only: OpenMPI's deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <map>
#include <string>

#include "runtime/communicator.h"

namespace gv {
namespace {

// MPI counts are int: messages and reductions go in pieces of at most this many elements (or bytes).
constexpr size_t kChunk = size_t(1) << 30;

Status mpi_status(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return Status::ok();
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return internal_error(std::string("MPI ") + what + " failed: " + std::string(msg, len));
}

Expected<MPI_Datatype> float_type(DType dtype, const char* what) {
  if (dtype == DType::kFloat32) return MPI_FLOAT;
  if (dtype == DType::kFloat64) return MPI_DOUBLE;
  return unsupported(std::string(what) + " of " + dtype_name(dtype) + " (float32 and float64 only)");
}

// Divides `count` elements by n in place (ReduceOp::kAvg after a sum).
void divide(void* data, size_t count, DType dtype, int n) {
  if (n <= 1) return;
  if (dtype == DType::kFloat32) {
    float* f = static_cast<float*>(data);
    const float inv = 1.0f / static_cast<float>(n);
    for (size_t i = 0; i < count; ++i) f[i] *= inv;
  } else {
    double* d = static_cast<double*>(data);
    for (size_t i = 0; i < count; ++i) d[i] /= n;
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, bool owns_init, bool owns_comm, int tag_ub)
      : comm_(comm), owns_init_(owns_init), owns_comm_(owns_comm), tag_ub_(tag_ub) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    (void)wait_sends();
    groups_.clear();  // sub-communicators are freed before their parent (and before MPI_Finalize)
    if (owns_comm_) MPI_Comm_free(&comm_);
    if (owns_init_) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override {
    if (dtype == DType::kBFloat16) return all_reduce_bf16_widened(*this, data, count, op);
    GV_ASSIGN_OR_RETURN(MPI_Datatype t, float_type(dtype, "all_reduce"));
    const size_t elem = dtype_size(dtype);
    for (size_t off = 0; off < count; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, count - off));
      char* p = static_cast<char*>(data) + off * elem;
      GV_RETURN_IF_ERROR(mpi_status(MPI_Allreduce(MPI_IN_PLACE, p, n, t, MPI_SUM, comm_), "all-reduce"));
    }
    if (op == ReduceOp::kAvg) divide(data, count, dtype, size_);
    return Status::ok();
  }

  Status broadcast(void* data, size_t bytes, int root) override {
    GV_RETURN_IF_ERROR(check_peer(root, "broadcast root"));
    return chunked_bcast(static_cast<char*>(data), bytes, root);
  }

  Status barrier() override { return mpi_status(MPI_Barrier(comm_), "barrier"); }

  Status all_gather(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) override {
    GV_RETURN_IF_ERROR(check_counts(counts, "all_gather"));
    const size_t elem = dtype_size(dtype);
    size_t total = 0;
    for (size_t c : counts) total += c;
    char* out = static_cast<char*>(recv);
    size_t my_off = 0;
    for (int r = 0; r < rank_; ++r) my_off += counts[r];
    if (total * elem <= static_cast<size_t>(INT_MAX)) {
      // One Allgatherv in bytes.
      std::vector<int> cnt(size_), displ(size_);
      size_t off = 0;
      for (int r = 0; r < size_; ++r) {
        cnt[r] = static_cast<int>(counts[r] * elem);
        displ[r] = static_cast<int>(off * elem);
        off += counts[r];
      }
      const void* src = send == out + my_off * elem ? MPI_IN_PLACE : send;
      return mpi_status(MPI_Allgatherv(src, cnt[rank_], MPI_BYTE, out, cnt.data(), displ.data(), MPI_BYTE, comm_),
                        "all-gather");
    }
    // Too large for int displacements: each rank broadcasts its piece, in chunks.
    if (send != out + my_off * elem && counts[rank_]) std::memmove(out + my_off * elem, send, counts[rank_] * elem);
    size_t off = 0;
    for (int r = 0; r < size_; ++r) {
      GV_RETURN_IF_ERROR(chunked_bcast(out + off * elem, counts[r] * elem, r));
      off += counts[r];
    }
    return Status::ok();
  }

  Status reduce_scatter(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype,
                        ReduceOp op) override {
    GV_RETURN_IF_ERROR(check_counts(counts, "reduce_scatter"));
    if (dtype == DType::kBFloat16) return reduce_scatter_bf16_widened(*this, send, recv, counts, op);
    GV_ASSIGN_OR_RETURN(MPI_Datatype t, float_type(dtype, "reduce_scatter"));
    const size_t elem = dtype_size(dtype);
    size_t total = 0;
    for (size_t c : counts) total += c;
    if (total <= static_cast<size_t>(INT_MAX)) {
      std::vector<int> cnt(counts.begin(), counts.end());
      GV_RETURN_IF_ERROR(mpi_status(MPI_Reduce_scatter(send, recv, cnt.data(), t, MPI_SUM, comm_), "reduce-scatter"));
    } else {
      // Too large for int counts: one chunked reduction to each rank in turn.
      const char* in = static_cast<const char*>(send);
      size_t off = 0;
      for (int r = 0; r < size_; ++r) {
        for (size_t c = 0; c < counts[r]; c += kChunk) {
          const int n = static_cast<int>(std::min(kChunk, counts[r] - c));
          char* dst = r == rank_ ? static_cast<char*>(recv) + c * elem : nullptr;
          GV_RETURN_IF_ERROR(
              mpi_status(MPI_Reduce(in + (off + c) * elem, dst, n, t, MPI_SUM, r, comm_), "reduce-scatter"));
        }
        off += counts[r];
      }
    }
    if (op == ReduceOp::kAvg) divide(recv, counts[rank_], dtype, size_);
    return Status::ok();
  }

  // The bytes are copied into a buffer owned until the send completes, so the caller may reuse `data` at once.
  Status send(const void* data, size_t bytes, int dst, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(dst, "send to"));
    GV_RETURN_IF_ERROR(check_tag(tag));
    GV_RETURN_IF_ERROR(complete_finished_sends());
    PendingSend p;
    p.buffer.assign(static_cast<const char*>(data), static_cast<const char*>(data) + bytes);
    for (size_t off = 0; off == 0 || off < bytes; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, bytes - off));
      MPI_Request req;
      GV_RETURN_IF_ERROR(mpi_status(MPI_Isend(p.buffer.data() + off, n, MPI_BYTE, dst, tag, comm_, &req), "send"));
      p.requests.push_back(req);
      if (bytes == 0) break;
    }
    pending_.push_back(std::move(p));
    return Status::ok();
  }

  Status recv(void* data, size_t bytes, int src, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(src, "recv from"));
    GV_RETURN_IF_ERROR(check_tag(tag));
    for (size_t off = 0; off == 0 || off < bytes; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, bytes - off));
      MPI_Status st;
      Status s = mpi_status(MPI_Recv(static_cast<char*>(data) + off, n, MPI_BYTE, src, tag, comm_, &st), "recv");
      if (!s.is_ok()) {
        return s.with_context("recv of " + std::to_string(bytes) + " bytes from rank " + std::to_string(src) +
                              " tag " + std::to_string(tag) + " (a larger message was sent?)");
      }
      int got = 0;
      MPI_Get_count(&st, MPI_BYTE, &got);
      if (got != n) {
        return invalid_argument("recv from rank " + std::to_string(src) + " tag " + std::to_string(tag) + " expected " +
                                std::to_string(bytes) + " bytes, the message sent was smaller");
      }
      if (bytes == 0) break;
    }
    return Status::ok();
  }

  Status wait_sends() override {
    Status first;
    for (PendingSend& p : pending_) {
      Status s = mpi_status(MPI_Waitall(static_cast<int>(p.requests.size()), p.requests.data(), MPI_STATUSES_IGNORE),
                            "completing a send");
      if (first.is_ok()) first = s;
    }
    pending_.clear();
    return first;
  }

  Expected<Communicator*> group(const std::vector<int>& ranks) override {
    GV_RETURN_IF_ERROR(check_group(ranks));
    bool whole = static_cast<int>(ranks.size()) == size_;
    for (int i = 0; whole && i < size_; ++i) whole = ranks[i] == i;
    if (whole) return static_cast<Communicator*>(this);
    auto it = groups_.find(ranks);
    if (it != groups_.end()) return static_cast<Communicator*>(it->second.get());
    MPI_Group all, sub;
    GV_RETURN_IF_ERROR(mpi_status(MPI_Comm_group(comm_, &all), "group creation"));
    int rc = MPI_Group_incl(all, static_cast<int>(ranks.size()), ranks.data(), &sub);
    MPI_Group_free(&all);
    GV_RETURN_IF_ERROR(mpi_status(rc, "group creation"));
    MPI_Comm comm = MPI_COMM_NULL;
    rc = MPI_Comm_create_group(comm_, sub, /*tag=*/0, &comm);
    MPI_Group_free(&sub);
    GV_RETURN_IF_ERROR(mpi_status(rc, ("creating group " + rank_list(ranks)).c_str()));
    auto c = std::make_unique<MpiCommunicator>(comm, false, true, tag_ub_);
    Communicator* raw = c.get();
    groups_[ranks] = std::move(c);
    return raw;
  }

  const char* backend_name() const override { return "mpi"; }

 private:
  struct PendingSend {
    std::vector<char> buffer;
    std::vector<MPI_Request> requests;
  };

  Status chunked_bcast(char* data, size_t bytes, int root) {
    for (size_t off = 0; off < bytes; off += kChunk) {
      const int n = static_cast<int>(std::min(kChunk, bytes - off));
      GV_RETURN_IF_ERROR(mpi_status(MPI_Bcast(data + off, n, MPI_BYTE, root, comm_), "broadcast"));
    }
    return Status::ok();
  }

  // Frees the buffers of sends that already completed, without waiting for the others.
  Status complete_finished_sends() {
    Status first;
    std::vector<PendingSend> still;
    for (PendingSend& p : pending_) {
      int done = 0;
      Status s = mpi_status(
          MPI_Testall(static_cast<int>(p.requests.size()), p.requests.data(), &done, MPI_STATUSES_IGNORE),
          "completing a send");
      if (first.is_ok()) first = s;
      if (!done && s.is_ok()) still.push_back(std::move(p));
    }
    pending_ = std::move(still);
    return first;
  }

  Status check_peer(int peer, const char* what) const {
    if (peer >= 0 && peer < size_) return Status::ok();
    return invalid_argument(std::string(what) + " rank " + std::to_string(peer) + " of a communicator of " +
                            std::to_string(size_) + " ranks");
  }
  Status check_tag(int tag) const {
    if (tag >= 0 && tag <= tag_ub_) return Status::ok();
    return invalid_argument("message tag " + std::to_string(tag) + " is outside MPI's range [0, " +
                            std::to_string(tag_ub_) + "] (MPI_TAG_UB of this MPI library): use fewer micro-batches "
                            "or smaller tags");
  }
  Status check_counts(const std::vector<size_t>& counts, const char* what) const {
    if (static_cast<int>(counts.size()) == size_) return Status::ok();
    return invalid_argument(std::string(what) + " with " + std::to_string(counts.size()) + " counts over " +
                            std::to_string(size_) + " ranks (one count per rank expected)");
  }
  Status check_group(const std::vector<int>& ranks) const {
    std::vector<int> sorted = ranks;
    std::sort(sorted.begin(), sorted.end());
    bool ok = !ranks.empty() && std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end() &&
              sorted.front() >= 0 && sorted.back() < size_;
    if (!ok) {
      return invalid_argument("group " + rank_list(ranks) + ": ranks must be distinct, in [0, " +
                              std::to_string(size_) + ")");
    }
    if (std::find(ranks.begin(), ranks.end(), rank_) == ranks.end()) {
      return invalid_argument("group " + rank_list(ranks) + " requested by rank " + std::to_string(rank_) +
                              ", which is not a member (only members create and use a group)");
    }
    return Status::ok();
  }

  MPI_Comm comm_;
  bool owns_init_;
  bool owns_comm_;
  int tag_ub_;
  int rank_ = 0, size_ = 1;
  std::vector<PendingSend> pending_;
  std::map<std::vector<int>, std::unique_ptr<MpiCommunicator>> groups_;
};

}  // namespace

Expected<std::unique_ptr<Communicator>> make_mpi_communicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    GV_RETURN_IF_ERROR(mpi_status(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init"));
  }
  int tag_ub = 32767;  // the least MPI guarantees
  int* ub = nullptr;
  int flag = 0;
  if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag) == MPI_SUCCESS && flag && ub) tag_ub = *ub;
  return std::unique_ptr<Communicator>(new MpiCommunicator(MPI_COMM_WORLD, !initialized, false, tag_ub));
}

}  // namespace gv
