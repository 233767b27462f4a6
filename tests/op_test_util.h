// Runs one op on the CPU for tests: inputs given as host tensors, outputs returned as host tensors.
#pragma once
#include <string>
#include <vector>

#include "runtime/executor.h"

namespace gv::testing {

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
  auto backend = make_cpu_backend();
  auto ex = Executor::create(g, *backend);
  if (!ex) return ex.status();
  GV_RETURN_IF_ERROR((*ex)->set_inputs(feeds));
  GV_RETURN_IF_ERROR((*ex)->run());
  for (ValueId o : g.outputs) {
    auto t = (*ex)->fetch(o);
    if (!t) return t.status();
    r.outputs.push_back(*t);
  }
  return r;
}

}  // namespace gv::testing
