// Running one output-less (in-place) op on the CPU: the executor writes such a node's inputs in place, so the op runs
// as a one-node graph over state buffers and the inputs are read back afterwards.
#pragma once

#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/executor.h"
#include "runtime/graph.h"
#include "tests/op_test_util.h"

namespace gv::testing {

// Each defined input becomes a state buffer (an undefined Tensor: the input is absent); returns every input after
// the run (undefined where absent).
inline Expected<std::vector<Tensor>> run_in_place_op(const std::string& op_type, const std::vector<Tensor>& inputs,
                                                     Attributes attrs, const std::string& domain = kGalvatronDomain) {
  Graph gr;
  gr.opsets[domain] = 1;
  Node n;
  n.name = "node";
  n.op_type = op_type;
  n.domain = domain;
  n.opset = 1;
  n.attrs = std::move(attrs);
  for (size_t i = 0; i < inputs.size(); ++i) {
    n.inputs.push_back(inputs[i].defined()
                           ? gr.add_initializer("in" + std::to_string(i), inputs[i].clone(), ValueKind::kState)
                           : kNoValue);
  }
  const std::vector<ValueId> ins = n.inputs;
  GV_RETURN_IF_ERROR(gr.add_node(std::move(n), {}).status());
  auto backend = make_cpu_backend();
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(gr, *backend));
  GV_RETURN_IF_ERROR(ex->run());
  std::vector<Tensor> out;
  for (ValueId v : ins) {
    if (v == kNoValue) {
      out.emplace_back();
      continue;
    }
    GV_ASSIGN_OR_RETURN(Tensor t, ex->fetch(v));
    out.push_back(t);
  }
  return out;
}

}  // namespace gv::testing
