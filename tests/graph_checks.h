// Checks on whole graphs shared by the pass tests.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "runtime/graph.h"
#include "runtime/trainer.h"

namespace gv::testing {

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

}  // namespace gv::testing
