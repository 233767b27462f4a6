// Finite-difference gradient cases, one or more per differentiable op. Each op family lists its cases in
// tests/gradcheck_cases_<family>.cpp; tests/gradcheck_test.cpp runs them all and fails for any op of the registry that
// has a backward rule and no case.
#pragma once
#include <string>
#include <vector>

#include "runtime/attributes.h"

namespace gv::testing {

struct GradCase {
  std::string op;                // op type, default domain unless `domain` is set
  std::vector<Tensor> inputs;    // float inputs should be float64; kUndefined = omitted optional input
  Attributes attrs;
  std::vector<bool> as_constants;  // inputs fed as constants (never differentiated: shapes, indices, axes)
  int num_outputs = 1;
  int opset = 20;
  std::string domain;
  std::string label;             // distinguishes several cases of one op
  std::vector<int> nondiff_outputs;  // outputs left out of the checked loss (declared non-differentiable by the op)
};

std::vector<GradCase> gradcheck_cases_elementwise();
std::vector<GradCase> gradcheck_cases_movement();
std::vector<GradCase> gradcheck_cases_math();
std::vector<GradCase> gradcheck_cases_parallel();

}  // namespace gv::testing
