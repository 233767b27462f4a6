// CPU helpers for tests: running one op or a whole graph on host tensors, seeded random tensors and batches, and the
// relative gap the model-level tests compare gradients with, bit-for-bit tensor equality.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "runtime/executor.h"

namespace gv::testing {

// Runs `g` on the CPU backend with `feeds` (by input name); returns its outputs in order.
inline Expected<std::vector<Tensor>> run_graph(const Graph& g, const std::map<std::string, Tensor>& feeds) {
  auto backend = make_cpu_backend();
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(g, *backend));
  GV_RETURN_IF_ERROR(ex->set_inputs(feeds));
  GV_RETURN_IF_ERROR(ex->run());
  std::vector<Tensor> out;
  for (ValueId o : g.outputs) {
    GV_ASSIGN_OR_RETURN(Tensor t, ex->fetch(o));
    out.push_back(t);
  }
  return out;
}

// float32 standard normal values, reproducible from `seed`.
inline Tensor randn_f32(const Shape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Tensor t(DType::kFloat32, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = d(rng);
  return t;
}

// ||a - b|| / ||b|| over float32 tensors of one shape; ||b|| floored at `floor` for gradients that are zero in exact
// arithmetic (attention key biases: ~1e-11 of float32 rounding either way).
inline double relative_gap(const Tensor& a, const Tensor& b, double floor = 1e-5) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = static_cast<double>(a.data_as<float>()[i]) - b.data_as<float>()[i];
    num += d * d;
    den += static_cast<double>(b.data_as<float>()[i]) * b.data_as<float>()[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

// A language model's batch: `input_ids` and `labels` [batch, seq] drawn below `vocab` from `seed`.
inline std::map<std::string, Tensor> random_lm_batch(int64_t vocab, int64_t batch, int64_t seq, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tensor ids(DType::kInt64, {batch, seq}), labels(DType::kInt64, {batch, seq});
  for (int64_t i = 0; i < batch * seq; ++i) {
    ids.data_as<int64_t>()[i] = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
    labels.data_as<int64_t>()[i] = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  }
  return {{"input_ids", ids}, {"labels", labels}};
}

struct OpRun {
  Graph graph;
  std::vector<Tensor> outputs;
};

// Builds a graph with one node of `op_type` (default domain, `opset`), whose inputs are graph inputs (or constants
// when `as_constants` is set, which shape inference may need, e.g. Reshape's shape), runs it, returns its outputs.
// An input with dtype kUndefined is an omitted optional input.
inline Expected<OpRun> run_op(const std::string& op_type, const std::vector<Tensor>& inputs, Attributes attrs = {},
                              int num_outputs = 1, int opset = 20, std::vector<bool> as_constants = {},
                              const std::string& domain = "") {
  OpRun r;
  Graph& g = r.graph;
  g.opsets[domain] = opset;
  Node n;
  n.name = "test_node";
  n.op_type = op_type;
  n.domain = domain;
  n.opset = opset;
  n.attrs = std::move(attrs);
  std::map<std::string, Tensor> feeds;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) {
      n.inputs.push_back(kNoValue);
      continue;
    }
    std::string name = "in" + std::to_string(i);
    bool constant = i < as_constants.size() && as_constants[i];
    if (constant) {
      n.inputs.push_back(g.add_initializer(name, inputs[i], ValueKind::kConstant));
    } else {
      n.inputs.push_back(g.add_input(name, inputs[i].dtype(), inputs[i].shape()));
      feeds[name] = inputs[i];
    }
  }
  std::vector<std::string> out_names;
  for (int i = 0; i < num_outputs; ++i) out_names.push_back("out" + std::to_string(i));
  auto outs = g.add_node(std::move(n), out_names);
  if (!outs) return outs.status();
  g.outputs = *outs;
  GV_ASSIGN_OR_RETURN(r.outputs, run_graph(g, feeds));
  return r;
}

// galvatron AdamW's attributes for the op tests: PyTorch's defaults with weight decay 0.1.
// Same dtype, shape and bytes: the bit-for-bit equality the fusion tests ask of a fold against the nodes it replaces.
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

inline Attributes adamw_attrs() {
  Attributes a;
  a.set_float("beta1", 0.9);
  a.set_float("beta2", 0.999);
  a.set_float("epsilon", 1e-8);
  a.set_float("weight_decay", 0.1);
  a.set_float("grad_scale", 1.0);
  return a;
}

// Adds a default-domain node of `type` (opset 20) to a hand-built graph and returns its first output.
inline ValueId add_op(Graph& g, const std::string& type, std::vector<ValueId> in, Attributes a = {}) {
  Node n;
  n.name = g.unique_name(type);
  n.op_type = type;
  n.opset = 20;
  n.inputs = std::move(in);
  n.attrs = std::move(a);
  auto r = g.add_node(std::move(n));
  EXPECT_TRUE(r.has_value()) << r.status().message();
  return r.has_value() ? (*r)[0] : kNoValue;
}

}  // namespace gv::testing
