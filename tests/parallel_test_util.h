// Helpers for multi-rank graph tests in one process: a small graph builder, running a graph with the executor, and
// running one function per rank on threads with thread communicators (runtime/communicator.h).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/communicator.h"
#include "runtime/executor.h"

namespace gv::testing {

// Builds a graph node by node; errors are kept (first one wins) and reported by status().
struct Builder {
  Graph g;
  Status status;
  Builder() {
    g.opsets[""] = 20;
    g.opsets[kGalvatronDomain] = 1;
  }
  ValueId param(const std::string& name, const Tensor& t) { return g.add_initializer(name, t.clone(), ValueKind::kParameter); }
  ValueId state(const std::string& name, const Tensor& t) { return g.add_initializer(name, t.clone(), ValueKind::kState); }
  ValueId constant(const std::string& name, const Tensor& t) { return g.add_initializer(name, t.clone(), ValueKind::kConstant); }
  std::vector<ValueId> node(const std::string& op, std::vector<ValueId> inputs, Attributes attrs = {},
                            const std::string& domain = "", int outputs = 1) {
    Node n;
    n.name = g.unique_name(op);
    n.op_type = op;
    n.domain = domain;
    n.opset = domain.empty() ? 20 : 1;
    n.inputs = std::move(inputs);
    n.attrs = std::move(attrs);
    n.outputs.assign(outputs, kNoValue);
    auto r = g.add_node(std::move(n));
    if (!r) {
      if (status.is_ok()) status = r.status();
      return std::vector<ValueId>(outputs, kNoValue);
    }
    return *r;
  }
  ValueId op(const std::string& op, std::vector<ValueId> inputs, Attributes attrs = {}) {
    return node(op, std::move(inputs), std::move(attrs))[0];
  }
  ValueId gv(const std::string& op, std::vector<ValueId> inputs, Attributes attrs = {}) {
    return node(op, std::move(inputs), std::move(attrs), kGalvatronDomain)[0];
  }
  // sum of all elements (a scalar)
  ValueId sum(ValueId x) {
    Attributes a;
    a.set_int("keepdims", 0);
    return op("ReduceSum", {x}, a);
  }
};

// Runs the whole graph once (on `comm`, null: one process, with micro-batch index `micro_batch`, graph inputs from
// `feeds`) and returns the listed values.
inline Expected<std::vector<Tensor>> run_graph(const Graph& g, const std::vector<ValueId>& fetch, Communicator* comm,
                                               int64_t micro_batch = 0,
                                               const std::map<std::string, Tensor>& feeds = {}) {
  auto backend = make_cpu_backend();
  ExecutorOptions o;
  o.comm = comm;
  o.keep_alive = fetch;
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(g, *backend, o));
  GV_RETURN_IF_ERROR(ex->set_inputs(feeds));
  ex->micro_batch = micro_batch;
  GV_RETURN_IF_ERROR(ex->run());
  if (comm) GV_RETURN_IF_ERROR(comm->wait_sends());
  std::vector<Tensor> out;
  for (ValueId v : fetch) {
    GV_ASSIGN_OR_RETURN(Tensor t, ex->fetch(v));
    out.push_back(t);
  }
  return out;
}

// Runs fn(rank, communicator) on n threads, one per rank; returns each rank's status.
inline std::vector<Status> on_ranks(int n, const std::function<Status(int, Communicator&)>& fn) {
  auto comms = make_thread_communicators(n);
  std::vector<Status> out(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { out[r] = fn(r, *comms[r]); });
  for (auto& t : threads) t.join();
  return out;
}

// Deterministic float64 values in [-1, 1).
inline Tensor rand64(const Shape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  Tensor t(DType::kFloat64, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<double>()[i] = d(rng);
  return t;
}

// Rows [begin, end) of a tensor (axis 0), and columns [begin, end) of a matrix.
inline Tensor rows_of(const Tensor& t, int64_t begin, int64_t end) {
  Shape s = t.shape();
  const int64_t row = t.numel() / s[0];
  s[0] = end - begin;
  Tensor out(t.dtype(), s);
  const size_t es = dtype_size(t.dtype());
  std::memcpy(out.data(), static_cast<const char*>(t.data()) + begin * row * es, out.nbytes());
  return out;
}
inline Tensor cols_of(const Tensor& t, int64_t begin, int64_t end) {
  const int64_t r = t.shape()[0], c = t.shape()[1];
  Tensor out(DType::kFloat64, {r, end - begin});
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = begin; j < end; ++j) out.data_as<double>()[i * (end - begin) + j - begin] = t.data_as<double>()[i * c + j];
  return out;
}

// Largest absolute difference between two float64 tensors of one shape (infinity when the shapes differ).
inline double max_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(a.scalar_f64(i) - b.scalar_f64(i)));
  return m;
}

}  // namespace gv::testing
