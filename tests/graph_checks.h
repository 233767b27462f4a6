// Checks on whole graphs shared by the pass tests.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "runtime/executor.h"
#include "runtime/graph.h"
#include "runtime/trainer.h"

namespace gv::testing {

// A hand-built default-domain graph at one opset, for the chain fusion tests: node() appends a node named after its op
// and returns its first output (kNoValue, and a test failure, when the registry rejects it).
struct ChainBuilder {
  Graph g;
  int opset;
  explicit ChainBuilder(int opset_ = 17) : opset(opset_) { g.opsets[""] = opset; }
  ValueId node(const std::string& op, std::vector<ValueId> in, Attributes a = {}) {
    Node n;
    n.name = op + std::to_string(g.nodes.size());
    n.op_type = op;
    n.opset = opset;
    n.inputs = std::move(in);
    n.attrs = std::move(a);
    auto out = g.add_node(std::move(n));
    EXPECT_TRUE(out.has_value()) << out.status().message();
    return out ? (*out)[0] : kNoValue;
  }
  ValueId ints(std::vector<int64_t> v) {
    return g.add_initializer(g.unique_name("c"), Tensor::from_i64(v, {static_cast<int64_t>(v.size())}),
                             ValueKind::kConstant);
  }
  ValueId scalar(const std::string& name, float c) {
    return g.add_initializer(name, Tensor::scalar(DType::kFloat32, c), ValueKind::kConstant);
  }
};

// Every node's inputs re-inferred in a graph of their own give the output types and shapes the graph records.
inline void expect_inference_agrees(const Graph& g) {
  for (const Node& n : g.nodes) {
    Graph one;
    one.opsets = g.opsets;
    Node copy = n;
    copy.inputs.clear();
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      if (n.inputs[i] == kNoValue) {
        copy.inputs.push_back(kNoValue);
        continue;
      }
      const Value& v = g.value(n.inputs[i]);
      if (v.kind == ValueKind::kConstant && v.data.defined()) {
        copy.inputs.push_back(one.add_initializer("in" + std::to_string(i), v.data, ValueKind::kConstant));
      } else {
        copy.inputs.push_back(one.add_input("in" + std::to_string(i), v.dtype, v.shape));
      }
    }
    std::vector<std::string> names;
    for (size_t i = 0; i < n.outputs.size(); ++i) names.push_back("out" + std::to_string(i));
    auto outs = one.add_node(copy, names);
    ASSERT_TRUE(outs.has_value()) << n.name << ": " << outs.status().message();
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      if (n.outputs[i] == kNoValue) continue;
      EXPECT_EQ(one.value((*outs)[i]).dtype, g.value(n.outputs[i]).dtype) << n.name << " output " << i;
      EXPECT_EQ(one.value((*outs)[i]).shape, g.value(n.outputs[i]).shape) << n.name << " output " << i;
    }
  }
}

// Two training graphs' loss and every named gradient, bit for bit (a rewrite that must not change a bit).
inline void expect_same_loss_and_gradients(double loss_a, const TensorMap& a, double loss_b, const TensorMap& b) {
  EXPECT_EQ(loss_a, loss_b);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, g] : b) {
    auto it = a.find(name);
    ASSERT_NE(it, a.end()) << name;
    const Tensor& t = it->second;
    EXPECT_TRUE(t.dtype() == g.dtype() && t.shape() == g.shape() && std::memcmp(t.data(), g.data(), t.nbytes()) == 0)
        << name;
  }
}

// Counting, well-formedness and numeric comparisons for the forward fusion tests (fuse_gelu, fuse_rms_norm).
inline int count_ops(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op ? 1 : 0;
  return n;
}

// Topological order, producer links and the name index are consistent; every value is referenced.
inline void expect_well_formed(const Graph& g) {
  std::vector<char> ready(g.values.size(), 0);
  for (ValueId v = 0; v < static_cast<ValueId>(g.values.size()); ++v) {
    ready[v] = g.values[v].kind != ValueKind::kActivation;
  }
  std::vector<char> referenced(g.values.size(), 0);
  for (ValueId v : g.inputs) referenced[v] = 1;
  for (ValueId v : g.outputs) referenced[v] = 1;
  for (NodeId n = 0; n < static_cast<NodeId>(g.nodes.size()); ++n) {
    for (ValueId v : g.nodes[n].inputs) {
      if (v == kNoValue) continue;
      ASSERT_GE(v, 0);
      ASSERT_LT(v, static_cast<ValueId>(g.values.size()));
      EXPECT_TRUE(ready[v]) << "node " << g.nodes[n].name << " reads " << g.values[v].name << " before it is made";
      referenced[v] = 1;
    }
    for (ValueId v : g.nodes[n].outputs) {
      ASSERT_GE(v, 0);
      EXPECT_EQ(g.values[v].producer, n) << g.values[v].name;
      ready[v] = 1;
      referenced[v] = 1;
    }
  }
  for (ValueId v = 0; v < static_cast<ValueId>(g.values.size()); ++v) {
    EXPECT_EQ(g.find(g.values[v].name), v) << g.values[v].name;
    if (g.values[v].kind == ValueKind::kActivation || g.values[v].kind == ValueKind::kConstant) {
      EXPECT_TRUE(referenced[v]) << "value " << g.values[v].name << " is left unused";
    }
  }
}

inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    num = std::max(num, std::fabs(a.scalar_f64(i) - b.scalar_f64(i)));
    den = std::max(den, std::fabs(b.scalar_f64(i)));
  }
  return num / std::max(den, 1e-30);
}

inline double l2(const Tensor& a) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.scalar_f64(i) * a.scalar_f64(i);
  return std::sqrt(s);
}

// ||a - b|| / ||b||, with ||b|| taken as at least `floor`.
inline double rel_l2(const Tensor& a, const Tensor& b, double floor = 1e-12) {
  EXPECT_EQ(a.shape(), b.shape());
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = a.scalar_f64(i) - b.scalar_f64(i);
    num += d * d;
    den += b.scalar_f64(i) * b.scalar_f64(i);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), floor);
}

// Runs the forward graph once; returns its outputs.
inline std::vector<Tensor> run_forward(const Graph& g, const std::map<std::string, Tensor>& feeds) {
  auto backend = make_cpu_backend();
  auto ex = Executor::create(g, *backend);
  EXPECT_TRUE(ex.has_value()) << ex.status().message();
  if (!ex) return {};
  Status st = (*ex)->set_inputs(feeds);
  EXPECT_TRUE(st.is_ok()) << st.message();
  st = (*ex)->run();
  EXPECT_TRUE(st.is_ok()) << st.message();
  std::vector<Tensor> outs;
  for (ValueId o : g.outputs) {
    auto t = (*ex)->fetch(o);
    EXPECT_TRUE(t.has_value());
    if (t) outs.push_back(t->clone());
  }
  return outs;
}

// Every gradient of `b` within `tol` (relative L2) of `a`'s. Gradients that are zero in exact arithmetic (attention
// key biases) are float32 noise of about 1e-11, which two graphs round differently: each is compared relative to at
// least 1e-4 of the largest of a's.
inline void expect_gradients_close(const TensorMap& a, const TensorMap& b, double tol, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double largest = 0;
  for (const auto& [param, grad] : a) largest = std::max(largest, l2(grad));
  ASSERT_GT(largest, 0) << what;
  for (const auto& [param, grad] : a) {
    auto it = b.find(param);
    ASSERT_NE(it, b.end()) << what << ": " << param;
    EXPECT_LE(rel_l2(it->second, grad, 1e-4 * largest), tol) << what << ": gradient of " << param;
  }
}

// One step of two trainers of the same model (a graph and its fused twin, `what` names the pair): losses within 1e-5
// relative, every gradient within expect_gradients_close's 1e-5. Returns the second trainer's loss (NaN on failure).
inline double expect_same_step(Trainer& plain, Trainer& fused, const TensorMap& batch, const std::string& what) {
  double loss_plain = 0, loss_fused = 0;
  auto g_plain = plain.compute_gradients(batch, &loss_plain);
  auto g_fused = fused.compute_gradients(batch, &loss_fused);
  EXPECT_TRUE(g_plain.has_value()) << what << ": " << g_plain.status().message();
  EXPECT_TRUE(g_fused.has_value()) << what << ": " << g_fused.status().message();
  if (!g_plain || !g_fused) return std::nan("");
  EXPECT_NEAR(loss_fused, loss_plain, 1e-5 * std::fabs(loss_plain)) << what;
  expect_gradients_close(*g_plain, *g_fused, 1e-5, what);
  return loss_fused;
}

}  // namespace gv::testing
