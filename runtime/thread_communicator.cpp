// A communicator whose ranks are threads of one process (runtime/communicator.h, make_thread_communicators): lets
// tests run multi-rank graphs without mpirun. Every group of ranks shares one rendezvous: a barrier, a table where
// each rank posts its buffers for the current collective, and mailboxes for point-to-point messages.
//
// A collective runs in two barrier phases: (1) each rank posts its buffer pointers and waits for all; (2) each rank
// computes its result into a private buffer from the others' posted inputs, waits for all (so no input is changed
// while someone still reads it), then writes its own output. Reductions add in rank order, so results are
// deterministic. A wait longer than kTimeout fails (a test with mismatched calls reports instead of hanging).
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "runtime/communicator.h"

namespace gv {
namespace {

constexpr auto kTimeout = std::chrono::seconds(60);

// What one rank posts for the current collective.
struct Posted {
  const void* in = nullptr;
  void* out = nullptr;
  const std::vector<size_t>* counts = nullptr;
  DType dtype = DType::kUndefined;
  int root = 0;
};

// The state shared by the members of one group (or the world).
struct Rendezvous {
  explicit Rendezvous(std::vector<int> world) : world_ranks(std::move(world)), posted(world_ranks.size()) {}
  const std::vector<int> world_ranks;  // member i is this world rank
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<Posted> posted;
  std::map<std::tuple<int, int, int>, std::deque<std::vector<char>>> mail;  // (src, dst, tag) -> messages
  int size() const { return static_cast<int>(world_ranks.size()); }
};

// Every group of one world, created on first use by any member.
struct World {
  std::mutex mu;
  std::map<std::vector<int>, std::shared_ptr<Rendezvous>> groups;
};

// dst[i] += src[i] (float32 / float64).
void add_into(void* dst, const void* src, size_t count, DType dtype) {
  if (dtype == DType::kFloat32) {
    float* d = static_cast<float*>(dst);
    const float* s = static_cast<const float*>(src);
    for (size_t i = 0; i < count; ++i) d[i] += s[i];
  } else {
    double* d = static_cast<double*>(dst);
    const double* s = static_cast<const double*>(src);
    for (size_t i = 0; i < count; ++i) d[i] += s[i];
  }
}

void divide(void* data, size_t count, DType dtype, int n) {
  if (dtype == DType::kFloat32) {
    float* f = static_cast<float*>(data);
    const float inv = 1.0f / static_cast<float>(n);
    for (size_t i = 0; i < count; ++i) f[i] *= inv;
  } else {
    double* d = static_cast<double*>(data);
    for (size_t i = 0; i < count; ++i) d[i] /= n;
  }
}

Status check_reducible(DType dtype, const char* what) {
  if (dtype == DType::kFloat32 || dtype == DType::kFloat64) return Status::ok();
  return unsupported(std::string(what) + " of " + dtype_name(dtype) + " (float32 and float64 only)");
}

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<World> world, std::shared_ptr<Rendezvous> rv, int rank)
      : world_(std::move(world)), rv_(std::move(rv)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return rv_->size(); }

  Status barrier() override { return wait_all("barrier"); }

  Status all_reduce(void* data, size_t count, DType dtype, ReduceOp op) override {
    if (dtype == DType::kBFloat16) return all_reduce_bf16_widened(*this, data, count, op);
    GV_RETURN_IF_ERROR(check_reducible(dtype, "all_reduce"));
    std::vector<size_t> counts(size(), count);
    return reduce(data, data, counts, dtype, op, /*scatter=*/false, "all_reduce");
  }

  Status reduce_scatter(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype,
                        ReduceOp op) override {
    GV_RETURN_IF_ERROR(check_count_list(counts, "reduce_scatter"));
    if (dtype == DType::kBFloat16) return reduce_scatter_bf16_widened(*this, send, recv, counts, op);
    GV_RETURN_IF_ERROR(check_reducible(dtype, "reduce_scatter"));
    return reduce(send, recv, counts, dtype, op, /*scatter=*/true, "reduce_scatter");
  }

  Status all_gather(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype) override {
    GV_RETURN_IF_ERROR(check_count_list(counts, "all_gather"));
    GV_RETURN_IF_ERROR(post({send, recv, &counts, dtype, 0}, "all_gather"));
    Status agree = check_agreement("all_gather");
    const size_t elem = dtype_size(dtype);
    std::vector<char> result;
    if (agree.is_ok()) {
      for (int r = 0; r < size(); ++r) {
        const char* p = static_cast<const char*>(rv_->posted[r].in);
        result.insert(result.end(), p, p + counts[r] * elem);
      }
    }
    GV_RETURN_IF_ERROR(wait_all("all_gather"));
    GV_RETURN_IF_ERROR(agree);
    if (!result.empty()) std::memcpy(recv, result.data(), result.size());
    return Status::ok();
  }

  Status broadcast(void* data, size_t bytes, int root) override {
    if (root < 0 || root >= size()) {
      return invalid_argument("broadcast root " + std::to_string(root) + " of " + std::to_string(size()) + " ranks");
    }
    std::vector<size_t> counts(size(), bytes);
    GV_RETURN_IF_ERROR(post({data, data, &counts, DType::kUInt8, root}, "broadcast"));
    Status agree = check_agreement("broadcast");
    if (agree.is_ok() && rank_ != root && bytes) std::memcpy(data, rv_->posted[root].in, bytes);
    GV_RETURN_IF_ERROR(wait_all("broadcast"));
    return agree;
  }

  Status send(const void* data, size_t bytes, int dst, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(dst, "send to"));
    const char* p = static_cast<const char*>(data);
    {
      std::lock_guard<std::mutex> lk(rv_->mu);
      rv_->mail[{rank_, dst, tag}].emplace_back(p, p + bytes);
    }
    rv_->cv.notify_all();
    return Status::ok();
  }

  Status recv(void* data, size_t bytes, int src, int tag) override {
    GV_RETURN_IF_ERROR(check_peer(src, "recv from"));
    std::unique_lock<std::mutex> lk(rv_->mu);
    const auto key = std::make_tuple(src, rank_, tag);
    bool arrived = rv_->cv.wait_for(lk, kTimeout, [&] {
      auto it = rv_->mail.find(key);
      return it != rv_->mail.end() && !it->second.empty();
    });
    if (!arrived) {
      return internal_error("rank " + std::to_string(rank_) + ": recv from rank " + std::to_string(src) + " tag " +
                            std::to_string(tag) + " timed out (no matching send)");
    }
    auto it = rv_->mail.find(key);
    std::vector<char> m = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) rv_->mail.erase(it);
    lk.unlock();
    if (m.size() != bytes) {
      return invalid_argument("recv from rank " + std::to_string(src) + " tag " + std::to_string(tag) + " expects " +
                              std::to_string(bytes) + " bytes, the message sent has " + std::to_string(m.size()));
    }
    if (bytes) std::memcpy(data, m.data(), bytes);
    return Status::ok();
  }

  Status wait_sends() override { return Status::ok(); }  // sends complete when they are queued

  Expected<Communicator*> group(const std::vector<int>& ranks) override {
    std::vector<int> sorted = ranks;
    std::sort(sorted.begin(), sorted.end());
    if (ranks.empty() || std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end() || sorted.front() < 0 ||
        sorted.back() >= size()) {
      return invalid_argument("group " + rank_list(ranks) + ": ranks must be distinct, in [0, " +
                              std::to_string(size()) + ")");
    }
    auto me = std::find(ranks.begin(), ranks.end(), rank_);
    if (me == ranks.end()) {
      return invalid_argument("group " + rank_list(ranks) + " requested by rank " + std::to_string(rank_) +
                              ", which is not a member");
    }
    bool whole = static_cast<int>(ranks.size()) == size();
    for (int i = 0; whole && i < size(); ++i) whole = ranks[i] == i;
    if (whole) return static_cast<Communicator*>(this);
    auto cached = groups_.find(ranks);
    if (cached != groups_.end()) return static_cast<Communicator*>(cached->second.get());
    std::vector<int> world_ranks;
    for (int r : ranks) world_ranks.push_back(rv_->world_ranks[r]);
    std::shared_ptr<Rendezvous> rv;
    {
      std::lock_guard<std::mutex> lk(world_->mu);
      auto& slot = world_->groups[world_ranks];
      if (!slot) slot = std::make_shared<Rendezvous>(world_ranks);
      rv = slot;
    }
    auto c = std::make_unique<ThreadCommunicator>(world_, rv, static_cast<int>(me - ranks.begin()));
    Communicator* raw = c.get();
    groups_[ranks] = std::move(c);
    return raw;
  }

  const char* backend_name() const override { return "thread"; }

 private:
  // Waits until every member arrived (one barrier generation).
  Status wait_all(const char* what) {
    std::unique_lock<std::mutex> lk(rv_->mu);
    const uint64_t gen = rv_->generation;
    if (++rv_->arrived == size()) {
      rv_->arrived = 0;
      ++rv_->generation;
      lk.unlock();
      rv_->cv.notify_all();
      return Status::ok();
    }
    if (!rv_->cv.wait_for(lk, kTimeout, [&] { return rv_->generation != gen; })) {
      return internal_error(std::string(what) + " on rank " + std::to_string(rank_) +
                            " timed out: not every rank of the group called it");
    }
    return Status::ok();
  }

  Status post(Posted p, const char* what) {
    {
      std::lock_guard<std::mutex> lk(rv_->mu);
      rv_->posted[rank_] = p;
    }
    return wait_all(what);
  }

  // After post(): every rank checks every rank's arguments against rank 0's, so all of them agree on the outcome.
  Status check_agreement(const char* what) const {
    const Posted& p0 = rv_->posted[0];
    for (int r = 1; r < size(); ++r) {
      const Posted& p = rv_->posted[r];
      if (p.dtype != p0.dtype || p.root != p0.root || *p.counts != *p0.counts) {
        return invalid_argument(std::string(what) + ": rank " + std::to_string(r) +
                                " passed other counts, dtype or root than rank 0");
      }
    }
    return Status::ok();
  }

  // all_reduce (scatter = false: every rank gets all counts[rank] elements) and reduce_scatter.
  Status reduce(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype, ReduceOp op,
                bool scatter, const char* what) {
    GV_RETURN_IF_ERROR(post({send, recv, &counts, dtype, 0}, what));
    Status agree = check_agreement(what);
    const size_t elem = dtype_size(dtype);
    size_t off = 0;
    if (scatter) {
      for (int r = 0; r < rank_; ++r) off += counts[r];
    }
    const size_t n = counts[rank_];
    std::vector<char> acc(n * elem);
    if (agree.is_ok() && n) {
      std::memcpy(acc.data(), static_cast<const char*>(rv_->posted[0].in) + off * elem, n * elem);
      for (int r = 1; r < size(); ++r) {
        add_into(acc.data(), static_cast<const char*>(rv_->posted[r].in) + off * elem, n, dtype);
      }
      if (op == ReduceOp::kAvg) divide(acc.data(), n, dtype, size());
    }
    GV_RETURN_IF_ERROR(wait_all(what));
    GV_RETURN_IF_ERROR(agree);
    if (n) std::memcpy(recv, acc.data(), n * elem);
    return Status::ok();
  }

  Status check_peer(int peer, const char* what) const {
    if (peer >= 0 && peer < size()) return Status::ok();
    return invalid_argument(std::string(what) + " rank " + std::to_string(peer) + " of a communicator of " +
                            std::to_string(size()) + " ranks");
  }
  Status check_count_list(const std::vector<size_t>& counts, const char* what) const {
    if (static_cast<int>(counts.size()) == size()) return Status::ok();
    return invalid_argument(std::string(what) + " with " + std::to_string(counts.size()) + " counts over " +
                            std::to_string(size()) + " ranks (one count per rank expected)");
  }

  std::shared_ptr<World> world_;
  std::shared_ptr<Rendezvous> rv_;
  int rank_;
  std::map<std::vector<int>, std::unique_ptr<ThreadCommunicator>> groups_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_thread_communicators(int n) {
  std::vector<std::unique_ptr<Communicator>> out;
  if (n < 1) return out;
  auto world = std::make_shared<World>();
  std::vector<int> all(n);
  for (int i = 0; i < n; ++i) all[i] = i;
  auto rv = std::make_shared<Rendezvous>(all);
  for (int i = 0; i < n; ++i) out.push_back(std::make_unique<ThreadCommunicator>(world, rv, i));
  return out;
}

}  // namespace gv
