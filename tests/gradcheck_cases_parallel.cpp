// Gradient-check cases of the parallel ops (runtime/ops/parallel_ops.cpp) on one process, where every group is {0}:
// the rules must still give the right single-rank gradients. Their multi-rank gradients are checked against unsplit
// computations in tests/parallel_ops_test.cpp, and so is Send (its gradient is a message from the peer).
#include <random>

#include "tests/gradcheck_cases.h"

namespace gv::testing {
namespace {

Tensor rand64(const Shape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  Tensor t(DType::kFloat64, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<double>()[i] = d(rng);
  return t;
}

GradCase make(const std::string& op, const Shape& shape, uint64_t seed, Attributes attrs, const std::string& label) {
  GradCase c;
  c.op = op;
  c.domain = "galvatron";
  c.inputs = {rand64(shape, seed)};
  c.attrs = std::move(attrs);
  c.label = label;
  return c;
}

Attributes sized(std::vector<int64_t> group, int64_t rows, const std::string& backward = "") {
  Attributes a;
  if (!group.empty()) a.set_ints("group", std::move(group));
  a.set_ints("sizes", {rows});
  if (!backward.empty()) a.set_string("backward", backward);
  return a;
}

}  // namespace

std::vector<GradCase> gradcheck_cases_parallel() {
  std::vector<GradCase> cases;
  cases.push_back(make("AllGather", {3, 2}, 1, sized({}, 3), "backward reduce_scatter"));
  cases.push_back(make("AllGather", {3, 2}, 2, sized({0}, 3, "split"), "backward split, group {0}"));
  cases.push_back(make("ReduceScatter", {4, 3}, 3, sized({}, 4), "whole world"));
  cases.push_back(make("SplitToGroup", {2, 2, 2}, 4, sized({0}, 2), "group {0}"));
  cases.push_back(make("TensorParallelCopy", {2, 3}, 5, {}, ""));
  cases.push_back(make("TensorParallelReduce", {2, 3}, 6, {}, ""));
  {  // one rank holding the whole vocabulary; row 2 ignored
    Attributes a;
    a.set_int("vocab_start", 0);
    a.set_int("vocab_size", 5);
    a.set_int("ignore_index", -100);
    GradCase c = make("VocabParallelCrossEntropy", {4, 5}, 7, a, "one rank");
    c.inputs.push_back(Tensor::from_i64({1, 4, -100, 0}, {4}));
    c.as_constants = {false, true};
    cases.push_back(c);
  }
  return cases;
}

}  // namespace gv::testing
