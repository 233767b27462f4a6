// Collective checks of a Communicator, shared by tests/communicator_test.cpp (thread communicators) and
// tests/mpi_selftest_main.cpp (the MPI communicator under mpirun). Every check is collective: all ranks of the world
// call it, in the same order. Expected values are computed independently from the rank numbers, never through the
// communicator. A check returns a Status naming the first mismatch.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "runtime/communicator.h"

namespace gv::comm_checks {

// The value rank r contributes at element i (exact in float32 for the sizes used here).
inline double value_of(int r, size_t i) { return r * 1000.0 + static_cast<double>(i) + 0.25; }

inline Status mismatch(const std::string& check, int rank, size_t i, double got, double want) {
  return internal_error(check + ": rank " + std::to_string(rank) + " element " + std::to_string(i) + " is " +
                        std::to_string(got) + ", expected " + std::to_string(want));
}

template <typename T>
Status expect_near(const std::string& check, int rank, const std::vector<T>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return internal_error(check + ": size mismatch on rank " + std::to_string(rank));
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::fabs(static_cast<double>(got[i]) - want[i]) > 1e-6 * std::max(1.0, std::fabs(want[i]))) {
      return mismatch(check, rank, i, static_cast<double>(got[i]), want[i]);
    }
  }
  return Status::ok();
}

inline Status all_reduce_sum_f32(Communicator& c) {
  const int n = c.size(), me = c.rank();
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(value_of(me, i));
  GV_RETURN_IF_ERROR(c.all_reduce(x.data(), x.size(), DType::kFloat32, ReduceOp::kSum));
  std::vector<double> want(x.size(), 0.0);
  for (int r = 0; r < n; ++r)
    for (size_t i = 0; i < want.size(); ++i) want[i] += value_of(r, i);
  GV_RETURN_IF_ERROR(c.all_reduce(nullptr, 0, DType::kFloat32, ReduceOp::kSum));  // an empty buffer works too
  return expect_near("all_reduce sum", me, x, want);
}

inline Status all_reduce_avg_f64(Communicator& c) {
  const int n = c.size(), me = c.rank();
  std::vector<double> x(77);
  for (size_t i = 0; i < x.size(); ++i) x[i] = value_of(me, i);
  GV_RETURN_IF_ERROR(c.all_reduce(x.data(), x.size(), DType::kFloat64, ReduceOp::kAvg));
  std::vector<double> want(x.size(), 0.0);
  for (int r = 0; r < n; ++r)
    for (size_t i = 0; i < want.size(); ++i) want[i] += value_of(r, i) / n;
  return expect_near("all_reduce avg", me, x, want);
}

inline Status all_reduce_rejects_ints(Communicator& c) {
  int64_t v = 1;
  if (c.all_reduce(&v, 1, DType::kInt64, ReduceOp::kSum).is_ok()) {
    return internal_error("all_reduce of int64 should be an unsupported-dtype error");
  }
  return Status::ok();
}

// Uneven counts, some 0: rank r contributes (r % 3 == 1) ? 0 : r + 2 int64 elements.
inline std::vector<size_t> uneven_counts(int n) {
  std::vector<size_t> counts(n);
  for (int r = 0; r < n; ++r) counts[r] = r % 3 == 1 ? 0 : static_cast<size_t>(r + 2);
  return counts;
}

inline Status all_gather_uneven(Communicator& c) {
  const int n = c.size(), me = c.rank();
  const std::vector<size_t> counts = uneven_counts(n);
  std::vector<int64_t> mine(counts[me]);
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = me * 100 + static_cast<int64_t>(i);
  size_t total = 0;
  for (size_t k : counts) total += k;
  std::vector<int64_t> all(total, -1);
  GV_RETURN_IF_ERROR(c.all_gather(mine.data(), all.data(), counts, DType::kInt64));
  size_t pos = 0;
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < counts[r]; ++i, ++pos) {
      const int64_t want = r * 100 + static_cast<int64_t>(i);
      if (all[pos] != want) return mismatch("all_gather", me, pos, static_cast<double>(all[pos]), want);
    }
  }
  return Status::ok();
}

inline Status all_gather_wrong_count_list_is_error(Communicator& c) {
  std::vector<size_t> counts(c.size() + 1, 1);
  std::vector<float> buf(c.size() + 1);
  if (c.all_gather(buf.data(), buf.data(), counts, DType::kFloat32).is_ok()) {
    return internal_error("all_gather with one count too many should fail");
  }
  return Status::ok();
}

inline Status reduce_scatter_uneven(Communicator& c) {
  const int n = c.size(), me = c.rank();
  std::vector<size_t> counts(n);
  for (int r = 0; r < n; ++r) counts[r] = r == 1 ? 0 : static_cast<size_t>(2 * r + 1);
  size_t total = 0, off = 0;
  for (size_t k : counts) total += k;
  for (int r = 0; r < me; ++r) off += counts[r];
  std::vector<float> send(total);
  std::vector<double> send64(total);
  for (size_t i = 0; i < total; ++i) send[i] = static_cast<float>(send64[i] = value_of(me, i));
  std::vector<float> got(counts[me], -1.0f);
  std::vector<double> got64(counts[me], -1.0);
  GV_RETURN_IF_ERROR(c.reduce_scatter(send.data(), got.data(), counts, DType::kFloat32, ReduceOp::kSum));
  GV_RETURN_IF_ERROR(c.reduce_scatter(send64.data(), got64.data(), counts, DType::kFloat64, ReduceOp::kAvg));
  std::vector<double> want(counts[me], 0.0), want_avg(counts[me], 0.0);
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < counts[me]; ++i) {
      want[i] += value_of(r, off + i);
      want_avg[i] += value_of(r, off + i) / n;
    }
  }
  GV_RETURN_IF_ERROR(expect_near("reduce_scatter sum", me, got, want));
  return expect_near("reduce_scatter avg", me, got64, want_avg);
}

inline Status broadcast_from_last(Communicator& c) {
  const int n = c.size(), me = c.rank();
  std::vector<double> x(33);
  for (size_t i = 0; i < x.size(); ++i) x[i] = value_of(me, i);
  GV_RETURN_IF_ERROR(c.broadcast(x.data(), x.size() * sizeof(double), n - 1));
  std::vector<double> want(x.size());
  for (size_t i = 0; i < want.size(); ++i) want[i] = value_of(n - 1, i);
  return expect_near("broadcast", me, x, want);
}

inline Status barrier_works(Communicator& c) { return c.barrier(); }

// In a group: rank(), size(), an all_reduce sum and an all_gather in group order, against world-rank arithmetic.
inline Status check_in_group(Communicator& world, const std::vector<int>& members, const std::string& name) {
  const int me = world.rank();
  auto g = world.group(members);
  if (!g) return g.status();
  Communicator& c = **g;
  int pos = -1;
  for (size_t i = 0; i < members.size(); ++i) if (members[i] == me) pos = static_cast<int>(i);
  if (c.size() != static_cast<int>(members.size()) || c.rank() != pos) {
    return internal_error(name + ": rank " + std::to_string(me) + " got group rank " + std::to_string(c.rank()) +
                          " of " + std::to_string(c.size()) + ", expected " + std::to_string(pos));
  }
  std::vector<float> x(10);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(value_of(me, i));
  GV_RETURN_IF_ERROR(c.all_reduce(x.data(), x.size(), DType::kFloat32, ReduceOp::kSum));
  std::vector<double> want(x.size(), 0.0);
  for (int r : members)
    for (size_t i = 0; i < want.size(); ++i) want[i] += value_of(r, i);
  GV_RETURN_IF_ERROR(expect_near(name + " all_reduce", me, x, want));
  // Gather each member's world rank, one element per member: the result lists the members in group order.
  std::vector<size_t> counts(members.size(), 1);
  int32_t mine = me;
  std::vector<int32_t> all(members.size(), -1);
  GV_RETURN_IF_ERROR(c.all_gather(&mine, all.data(), counts, DType::kInt32));
  for (size_t i = 0; i < members.size(); ++i) {
    if (all[i] != members[i]) return mismatch(name + " all_gather", me, i, all[i], members[i]);
  }
  // The cached communicator comes back on the second request.
  auto again = world.group(members);
  if (!again || *again != &c) return internal_error(name + ": group() did not return the cached communicator");
  return Status::ok();
}

// Even and odd world ranks; the first and second half; the whole world in reverse order.
inline std::vector<std::vector<int>> test_groups(int n) {
  std::vector<int> even, odd, first, second, reversed;
  for (int r = 0; r < n; ++r) {
    (r % 2 ? odd : even).push_back(r);
    (r < (n + 1) / 2 ? first : second).push_back(r);
    reversed.insert(reversed.begin(), r);
  }
  std::vector<std::vector<int>> groups;
  for (auto* g : {&even, &odd, &first, &second, &reversed}) {
    if (!g->empty()) groups.push_back(*g);
  }
  return groups;
}

inline Status groups(Communicator& c) {
  const auto all = test_groups(c.size());
  GV_RETURN_IF_ERROR(c.prepare_groups(all));
  for (size_t k = 0; k < all.size(); ++k) {
    bool member = false;
    for (int r : all[k]) member = member || r == c.rank();
    if (member) GV_RETURN_IF_ERROR(check_in_group(c, all[k], "group #" + std::to_string(k)));
  }
  // The whole world in order is the communicator itself.
  std::vector<int> world(c.size());
  for (int r = 0; r < c.size(); ++r) world[r] = r;
  auto self = c.group(world);
  if (!self || *self != &c) return internal_error("group(whole world) should return the communicator itself");
  // A group without this rank is an error (no communication happens).
  if (c.size() > 1) {
    std::vector<int> others;
    for (int r = 0; r < c.size(); ++r) if (r != c.rank()) others.push_back(r);
    if (c.group(others).has_value()) return internal_error("group() without this rank should fail");
  }
  return Status::ok();
}

// The message rank `from` sends to rank `to` with `tag`: `n` doubles.
inline std::vector<double> message(int from, int to, int tag, size_t n) {
  std::vector<double> m(n);
  for (size_t i = 0; i < n; ++i) m[i] = from * 1e6 + to * 1e4 + tag * 100 + static_cast<double>(i);
  return m;
}

// Every rank sends to every other rank (crossing pairs: 0 -> 1 while 1 -> 0) before any rank receives: two tags,
// one large message (past MPI's eager limit: send must not wait for the receive) and one empty message; messages
// are received in another order than sent. The send buffers are overwritten right after send().
inline Status send_recv_crossing(Communicator& c) {
  const int n = c.size(), me = c.rank();
  constexpr size_t kLarge = 300000;  // 2.4 MB
  for (int peer = 0; peer < n; ++peer) {
    if (peer == me && n > 1) continue;
    for (auto [tag, len] : {std::pair<int, size_t>{3, kLarge}, {9, 5}}) {
      std::vector<double> m = message(me, peer, tag, len);
      GV_RETURN_IF_ERROR(c.send(m.data(), m.size() * sizeof(double), peer, tag));
      std::fill(m.begin(), m.end(), -1.0);
    }
    GV_RETURN_IF_ERROR(c.send(nullptr, 0, peer, 11));
  }
  for (int peer = n - 1; peer >= 0; --peer) {
    if (peer == me && n > 1) continue;
    for (auto [tag, len] : {std::pair<int, size_t>{9, 5}, {3, kLarge}}) {
      std::vector<double> got(len, -2.0);
      GV_RETURN_IF_ERROR(c.recv(got.data(), got.size() * sizeof(double), peer, tag));
      std::vector<double> want = message(peer, me, tag, len);
      for (size_t i = 0; i < len; ++i) {
        if (got[i] != want[i]) return mismatch("send/recv tag " + std::to_string(tag), me, i, got[i], want[i]);
      }
    }
    GV_RETURN_IF_ERROR(c.recv(nullptr, 0, peer, 11));
  }
  return c.wait_sends();
}

// A ring inside the odd-ranked group: each member sends its group rank to the next member.
inline Status send_recv_in_group(Communicator& c) {
  std::vector<int> odd;
  for (int r = 1; r < c.size(); r += 2) odd.push_back(r);
  if (odd.empty() || c.rank() % 2 == 0) return c.barrier();
  auto g = c.group(odd);
  if (!g) return g.status();
  Communicator& gc = **g;
  const int k = gc.size(), me = gc.rank();
  int64_t out = 1000 + me, in = -1;
  GV_RETURN_IF_ERROR(gc.send(&out, sizeof out, (me + 1) % k, 5));
  GV_RETURN_IF_ERROR(gc.recv(&in, sizeof in, (me + k - 1) % k, 5));
  GV_RETURN_IF_ERROR(gc.wait_sends());
  if (in != 1000 + (me + k - 1) % k) return mismatch("group ring", c.rank(), 0, static_cast<double>(in), 1000 + (me + k - 1) % k);
  return c.barrier();
}

struct NamedCheck {
  const char* name;
  Status (*fn)(Communicator&);
};

inline std::vector<NamedCheck> all_checks() {
  return {{"all_reduce_sum_f32", all_reduce_sum_f32},
          {"all_reduce_avg_f64", all_reduce_avg_f64},
          {"all_reduce_rejects_ints", all_reduce_rejects_ints},
          {"all_gather_uneven", all_gather_uneven},
          {"all_gather_wrong_count_list_is_error", all_gather_wrong_count_list_is_error},
          {"reduce_scatter_uneven", reduce_scatter_uneven},
          {"broadcast_from_last", broadcast_from_last},
          {"barrier", barrier_works},
          {"groups", groups},
          {"send_recv_crossing", send_recv_crossing},
          {"send_recv_in_group", send_recv_in_group}};
}

}  // namespace gv::comm_checks
