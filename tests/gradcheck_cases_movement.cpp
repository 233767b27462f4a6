// Finite-difference cases for the movement ops' backward rules (runtime/ops/movement_*.cpp). Index, shape and axes
// inputs are int64 (never differentiated); Gather-family cases repeat indices so that scatter-adds are exercised.
#include <climits>
#include <cmath>

#include "tests/gradcheck_cases.h"

namespace gv::testing {
namespace {

// Distinct, irregular float64 values.
Tensor f64(const Shape& s, double seed = 0.0) {
  Tensor t(DType::kFloat64, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<double>()[i] = std::sin(1.3 * static_cast<double>(i) + 0.7 + seed);
  return t;
}
Tensor i64(const std::vector<int64_t>& v, Shape s) { return Tensor::from_i64(v, std::move(s)); }
Tensor i64(const std::vector<int64_t>& v) { return Tensor::from_i64(v, {static_cast<int64_t>(v.size())}); }

GradCase make(std::string op, std::vector<Tensor> inputs, Attributes attrs = {}, std::string label = "",
              int num_outputs = 1, int opset = 20) {
  GradCase c;
  c.op = std::move(op);
  c.inputs = std::move(inputs);
  c.attrs = std::move(attrs);
  c.num_outputs = num_outputs;
  c.opset = opset;
  c.label = std::move(label);
  for (const Tensor& t : c.inputs) c.as_constants.push_back(t.defined() && !dtype_is_float(t.dtype()));
  return c;
}

Attributes attr_int(const std::string& k, int64_t v) {
  Attributes a;
  a.set_int(k, v);
  return a;
}
Attributes attr_str(const std::string& k, const std::string& v) {
  Attributes a;
  a.set_string(k, v);
  return a;
}

}  // namespace

std::vector<GradCase> gradcheck_cases_movement() {
  std::vector<GradCase> cases;
  // Shape-only ops.
  cases.push_back(make("Reshape", {f64({2, 3}), i64({3, -1})}));
  cases.push_back(make("Flatten", {f64({2, 3, 2})}, attr_int("axis", 2)));
  cases.push_back(make("Squeeze", {f64({1, 3, 1}), i64({0})}));
  cases.push_back(make("Unsqueeze", {f64({3}), i64({0, -1})}));
  cases.push_back(make("Identity", {f64({2, 2})}));
  // Layout ops.
  Attributes perm;
  perm.set_ints("perm", {1, 2, 0});
  cases.push_back(make("Transpose", {f64({2, 3, 4})}, perm));
  cases.push_back(make("Concat", {f64({2, 1}), f64({2, 3}, 1.0)}, attr_int("axis", -1)));
  cases.push_back(make("Split", {f64({5, 2}), i64({2, 3})}, {}, "sizes", 2));
  Attributes chunks = attr_int("num_outputs", 3);
  chunks.set_int("axis", 1);
  cases.push_back(make("Split", {f64({2, 5})}, chunks, "opset18 uneven", 3, 18));
  cases.push_back(
      make("Slice", {f64({3, 4}), i64({-1, 1}), i64({INT64_MIN, 4}), i64({0, -1}), i64({-1, 2})}, {}, "negative step"));
  cases.push_back(make("Slice", {f64({4, 3}), i64({1}), i64({3})}, {}, "default axes"));
  cases.push_back(make("Expand", {f64({3, 1}), i64({2, 3, 4})}));
  cases.push_back(make("Tile", {f64({2, 3}), i64({2, 2})}));
  cases.push_back(make("Pad", {f64({2, 3}), i64({1, 0, 0, 2})}, {}, "pad"));
  cases.push_back(make("Pad", {f64({3, 4}), i64({-1, 1, 1, -2})}, {}, "crop"));
  cases.push_back(make("CumSum", {f64({2, 3}), Tensor::from_i64({1}, {})}, {}, "inclusive"));
  Attributes rev_excl = attr_int("reverse", 1);
  rev_excl.set_int("exclusive", 1);
  cases.push_back(make("CumSum", {f64({3, 2}), Tensor::from_i64({0}, {})}, rev_excl, "reverse exclusive"));
  cases.push_back(make("Trilu", {f64({3, 4}), Tensor::from_i64({1}, {})}, {}, "upper"));
  cases.push_back(make("Trilu", {f64({2, 3, 3}), Tensor::from_i64({-1}, {})}, attr_int("upper", 0), "lower"));
  // Index ops, with repeated indices.
  cases.push_back(make("Gather", {f64({4, 3}), i64({0, 2, 0, -1})}, {}, "rows"));
  cases.push_back(make("Gather", {f64({2, 3}), i64({2, -1, 0, 0}, {2, 2})}, attr_int("axis", 1), "axis 1"));
  cases.push_back(make("GatherElements", {f64({3, 2}), i64({0, 0, 2, 0, 0, -1}, {3, 2})}));
  cases.push_back(make("GatherND", {f64({2, 3}), i64({0, 1, 0, 1, 1, 2}, {3, 2})}, {}, "elements"));
  cases.push_back(
      make("GatherND", {f64({2, 3, 2}), i64({1, 1, 0, 2}, {2, 2, 1})}, attr_int("batch_dims", 1), "batch_dims"));
  cases.push_back(make("ScatterND", {f64({4, 2}), i64({1, 3}, {2, 1}), f64({2, 2}, 2.0)}, {}, "none"));
  cases.push_back(
      make("ScatterND", {f64({4}), i64({1, 1, 3}, {3, 1}), f64({3}, 2.0)}, attr_str("reduction", "add"), "add"));
  cases.push_back(
      make("ScatterElements", {f64({2, 3}), i64({2, 0}, {1, 2}), f64({1, 2}, 2.0)}, attr_int("axis", 1), "none"));
  Attributes add = attr_str("reduction", "add");
  add.set_int("axis", 0);
  cases.push_back(make("ScatterElements", {f64({3, 2}), i64({1, 1, 1, 0}, {2, 2}), f64({2, 2}, 2.0)}, add, "add"));
  return cases;
}

}  // namespace gv::testing
