#include "runtime/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <string>

namespace gv {

#ifdef GALVATRON_HAVE_MPI
Expected<std::unique_ptr<Communicator>> make_mpi_communicator();  // runtime/mpi_communicator.cpp
#endif

Status Communicator::prepare_groups(const std::vector<std::vector<int>>& groups) {
  for (const std::vector<int>& g : groups) {
    if (std::find(g.begin(), g.end(), rank()) == g.end()) continue;
    auto c = group(g);
    if (!c) return c.status().with_context("preparing communicator groups");
  }
  return Status::ok();
}

namespace {

Status check_reducible(DType dtype, const char* what) {
  if (dtype == DType::kFloat32 || dtype == DType::kFloat64) return Status::ok();
  return unsupported(std::string(what) + " of " + dtype_name(dtype) + " (float32 and float64 only)");
}

// One rank of one. Messages a rank sends to itself wait in a queue per tag until received.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Status all_reduce(void*, size_t, DType dtype, ReduceOp) override {
    return dtype == DType::kBFloat16 ? Status::ok() : check_reducible(dtype, "all_reduce");
  }
  Status broadcast(void*, size_t, int root) override {
    return root == 0 ? Status::ok() : invalid_argument("broadcast root " + std::to_string(root) + " of 1 rank");
  }
  Status barrier() override { return Status::ok(); }

  Status all_gather(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) override {
    GV_RETURN_IF_ERROR(check_counts(counts, "all_gather"));
    copy(send, recv, counts[0] * dtype_size(dtype));
    return Status::ok();
  }
  Status reduce_scatter(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype,
                        ReduceOp) override {
    if (dtype != DType::kBFloat16) GV_RETURN_IF_ERROR(check_reducible(dtype, "reduce_scatter"));
    GV_RETURN_IF_ERROR(check_counts(counts, "reduce_scatter"));
    copy(send, recv, counts[0] * dtype_size(dtype));
    return Status::ok();
  }

  Status send(const void* data, size_t bytes, int dst, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(dst, "send to"));
    const char* p = static_cast<const char*>(data);
    queues_[tag].emplace_back(p, p + bytes);
    return Status::ok();
  }
  Status recv(void* data, size_t bytes, int src, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(src, "recv from"));
    auto it = queues_.find(tag);
    if (it == queues_.end() || it->second.empty()) {
      return invalid_argument("recv with tag " + std::to_string(tag) +
                              " on a single process: no message with this tag was sent first (it would wait forever)");
    }
    std::vector<char>& m = it->second.front();
    if (m.size() != bytes) {
      return invalid_argument("recv with tag " + std::to_string(tag) + " expects " + std::to_string(bytes) +
                              " bytes, the message sent has " + std::to_string(m.size()));
    }
    if (bytes) std::memcpy(data, m.data(), bytes);
    it->second.pop_front();
    if (it->second.empty()) queues_.erase(it);
    return Status::ok();
  }
  Status wait_sends() override { return Status::ok(); }

  Expected<Communicator*> group(const std::vector<int>& ranks) override {
    if (ranks.size() == 1 && ranks[0] == 0) return static_cast<Communicator*>(this);
    std::string list;
    for (int r : ranks) {
      if (!list.empty()) list += ',';
      list += std::to_string(r);
    }
    return invalid_argument("group {" + list + "} on a single process: the only group is {0}");
  }
  const char* backend_name() const override { return "single"; }

 private:
  static Status check_counts(const std::vector<size_t>& counts, const char* what) {
    if (counts.size() == 1) return Status::ok();
    return invalid_argument(std::string(what) + " with " + std::to_string(counts.size()) +
                            " counts on a single process (one count per rank expected)");
  }
  static Status check_peer(int peer, const char* what) {
    if (peer == 0) return Status::ok();
    return invalid_argument(std::string(what) + " rank " + std::to_string(peer) + " on a single process (rank 0 only)");
  }
  static void copy(const void* src, void* dst, size_t bytes) {
    if (src != dst && bytes) std::memmove(dst, src, bytes);
  }
  std::map<int, std::deque<std::vector<char>>> queues_;
};

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : -1;
}

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

bool launched_under_mpi() {
  return env_int("OMPI_COMM_WORLD_SIZE") > 0 || env_int("PMI_SIZE") > 0 || env_int("PMIX_SIZE") > 0 ||
         std::getenv("PMIX_RANK") != nullptr;
}

bool mpi_backend_built() {
#ifdef GALVATRON_HAVE_MPI
  return true;
#else
  return false;
#endif
}

Expected<std::unique_ptr<Communicator>> make_communicator() {
  if (!launched_under_mpi()) return make_single_process_communicator();
#ifdef GALVATRON_HAVE_MPI
  return make_mpi_communicator();
#else
  int n = env_int("OMPI_COMM_WORLD_SIZE");
  if (n < 0) n = env_int("PMI_SIZE");
  if (n > 1) {
    return unsupported("launched under mpirun with " + std::to_string(n) +
                       " ranks, but galvatron was built without MPI (install libopenmpi-dev and rebuild)");
  }
  return make_single_process_communicator();
#endif
}

Status all_reduce_bf16_widened(Communicator& c, void* data, size_t count, ReduceOp op) {
  std::vector<float> wide(count);
  convert_elements(data, DType::kBFloat16, wide.data(), DType::kFloat32, static_cast<int64_t>(count));
  GV_RETURN_IF_ERROR(c.all_reduce(wide.data(), count, DType::kFloat32, op));
  convert_elements(wide.data(), DType::kFloat32, data, DType::kBFloat16, static_cast<int64_t>(count));
  return Status::ok();
}

Status reduce_scatter_bf16_widened(Communicator& c, const void* send, void* recv, const std::vector<size_t>& counts,
                                   ReduceOp op) {
  size_t total = 0;
  for (size_t n : counts) total += n;
  if (c.rank() < 0 || c.rank() >= static_cast<int>(counts.size())) {
    return invalid_argument("reduce_scatter with " + std::to_string(counts.size()) + " counts at rank " +
                            std::to_string(c.rank()));
  }
  const size_t mine = counts[c.rank()];
  std::vector<float> wide(total), out(mine);
  convert_elements(send, DType::kBFloat16, wide.data(), DType::kFloat32, static_cast<int64_t>(total));
  GV_RETURN_IF_ERROR(c.reduce_scatter(wide.data(), out.data(), counts, DType::kFloat32, op));
  convert_elements(out.data(), DType::kFloat32, recv, DType::kBFloat16, static_cast<int64_t>(mine));
  return Status::ok();
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) {
    if (!s.empty()) s += ',';
    s += std::to_string(r);
  }
  return "{" + s + "}";
}

Expected<Communicator*> communicator_of_group(Communicator* world, const std::vector<int64_t>& group) {
  std::vector<int> ranks(group.begin(), group.end());
  if (!world) {
    if (ranks.empty() || (ranks.size() == 1 && ranks[0] == 0)) return static_cast<Communicator*>(nullptr);
    return invalid_argument("group " + rank_list(ranks) + " needs a communicator, but this executor runs a single "
                            "process (ExecutorOptions::comm is null)");
  }
  if (ranks.empty()) return world;
  auto c = world->group(ranks);
  if (!c) return c.status().with_context("group " + rank_list(ranks));
  return *c;
}

}  // namespace gv
