// Finite-difference gradient check, in float64, of every op of the registry that has a backward rule. The cases live
// in tests/gradcheck_cases_<family>.cpp; an op with a backward rule and no case fails here.
#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <random>

#include "runtime/autograd.h"
#include "runtime/executor.h"
#include "tests/gradcheck_cases.h"

namespace gv::testing {
namespace {

std::vector<GradCase> all_cases() {
  std::vector<GradCase> all;
  for (auto f : {gradcheck_cases_elementwise, gradcheck_cases_movement, gradcheck_cases_math,
                 gradcheck_cases_parallel}) {
    auto c = f();
    all.insert(all.end(), c.begin(), c.end());
  }
  return all;
}

std::vector<std::string> differentiable_ops() {
  std::vector<std::string> names;
  for (const OpSchema* s : OpRegistry::global().all()) {
    // Send's gradient is a message from its peer: tests/parallel_ops_test.cpp checks it across two ranks.
    if (s->domain == kGalvatronDomain && s->name == "Send") continue;
    if (s->grad) names.push_back(s->domain.empty() ? s->name : s->domain + "." + s->name);
  }
  return names;
}

Tensor random_f64(const Shape& shape, std::mt19937_64& rng) {
  Tensor t(DType::kFloat64, shape);
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<double>()[i] = d(rng);
  return t;
}

// Builds loss = sum_k sum(output_k * W_k) over the case's float outputs, with fixed random W_k.
Status run_case(const GradCase& c) {
  Graph g;
  g.opsets[""] = c.opset;
  g.opsets[kGalvatronDomain] = 1;
  Node n;
  n.name = "op";
  n.op_type = c.op;
  n.domain = c.domain;
  n.opset = c.domain.empty() ? c.opset : 1;
  n.attrs = c.attrs;
  std::vector<ValueId> params;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const Tensor& t = c.inputs[i];
    if (!t.defined()) {
      n.inputs.push_back(kNoValue);
      continue;
    }
    bool constant = (i < c.as_constants.size() && c.as_constants[i]) || !dtype_is_float(t.dtype());
    ValueId v = g.add_initializer("in" + std::to_string(i), t.clone(), constant ? ValueKind::kConstant : ValueKind::kParameter);
    if (!constant) params.push_back(v);
    n.inputs.push_back(v);
  }
  if (params.empty()) return invalid_argument("case has no differentiable input");
  std::vector<std::string> out_names;
  for (int i = 0; i < c.num_outputs; ++i) out_names.push_back("out" + std::to_string(i));
  GV_ASSIGN_OR_RETURN(std::vector<ValueId> outs, g.add_node(n, out_names));

  std::mt19937_64 rng(1234);
  ValueId loss = kNoValue;
  for (size_t oi = 0; oi < outs.size(); ++oi) {
    const ValueId o = outs[oi];
    if (g.value(o).dtype != DType::kFloat64) continue;
    if (std::find(c.nondiff_outputs.begin(), c.nondiff_outputs.end(), static_cast<int>(oi)) !=
        c.nondiff_outputs.end()) {
      continue;
    }
    ValueId w = g.add_initializer(g.unique_name("w"), random_f64(g.value(o).shape, rng), ValueKind::kConstant);
    Node mul;
    mul.op_type = "Mul";
    mul.opset = c.opset;
    mul.inputs = {o, w};
    GV_ASSIGN_OR_RETURN(auto m, g.add_node(mul));
    Node sum;
    sum.op_type = "ReduceSum";
    sum.opset = c.opset;
    sum.attrs.set_int("keepdims", 0);
    sum.inputs = {m[0]};
    GV_ASSIGN_OR_RETURN(auto s, g.add_node(sum));
    if (loss == kNoValue) {
      loss = s[0];
    } else {
      Node add;
      add.op_type = "Add";
      add.opset = c.opset;
      add.inputs = {loss, s[0]};
      GV_ASSIGN_OR_RETURN(auto a, g.add_node(add));
      loss = a[0];
    }
  }
  if (loss == kNoValue) return invalid_argument("case has no float64 output");
  g.outputs = {loss};
  GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(g, loss, params));
  std::vector<ValueId> keep;
  for (auto& kv : ag.grads) keep.push_back(kv.second);
  auto backend = make_cpu_backend();
  ExecutorOptions opts;
  opts.keep_alive = keep;
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(g, *backend, opts));
  GV_RETURN_IF_ERROR(ex->run());
  auto eval_loss = [&]() -> double {
    if (!ex->run().is_ok()) return NAN;
    auto t = ex->fetch(loss);
    return t ? t->scalar_f64(0) : NAN;
  };
  const double eps = 1e-6;
  for (ValueId p : params) {
    ValueId gid = ag.grads[p];
    Tensor analytic;
    if (gid == kNoValue) {
      analytic = Tensor(DType::kFloat64, g.value(p).shape);
    } else {
      GV_RETURN_IF_ERROR(ex->run());
      GV_ASSIGN_OR_RETURN(analytic, ex->fetch(gid));
    }
    // The CPU executor reads parameters in place, so perturbing the graph's tensor perturbs the next run.
    double* x = g.value(p).data.data_as<double>();
    for (int64_t i = 0; i < g.value(p).data.numel(); ++i) {
      double orig = x[i];
      x[i] = orig + eps;
      double lp = eval_loss();
      x[i] = orig - eps;
      double lm = eval_loss();
      x[i] = orig;
      double numeric = (lp - lm) / (2 * eps);
      double a = analytic.data_as<double>()[i];
      double tol = 1e-6 + 1e-5 * std::fabs(numeric);
      if (!(std::fabs(a - numeric) <= tol)) {
        return internal_error("input '" + g.value(p).name + "' element " + std::to_string(i) + ": analytic " +
                              std::to_string(a) + " vs finite difference " + std::to_string(numeric));
      }
    }
  }
  return Status::ok();
}

class GradCheck : public ::testing::TestWithParam<std::string> {};

TEST_P(GradCheck, MatchesFiniteDifferences) {
  const std::string& name = GetParam();
  int n = 0;
  for (const GradCase& c : all_cases()) {
    std::string full = c.domain.empty() ? c.op : c.domain + "." + c.op;
    if (full != name) continue;
    ++n;
    Status st = run_case(c);
    EXPECT_TRUE(st.is_ok()) << name << (c.label.empty() ? "" : " [" + c.label + "]") << ": " << st.message();
  }
  EXPECT_GT(n, 0) << name << " has a backward rule and no gradient-check case in tests/gradcheck_cases_*.cpp";
}

std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
}

INSTANTIATE_TEST_SUITE_P(Registry, GradCheck, ::testing::ValuesIn(differentiable_ops()), param_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GradCheck);

}  // namespace
}  // namespace gv::testing
