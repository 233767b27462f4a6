// Finite-difference cases of the elementwise ops' backward rules (runtime/ops/elementwise_*.cpp). Inputs are tiny
// float64 tensors kept away from the points where an op is not differentiable (Relu/Abs at 0, Clip at its bounds,
// ties of Max/Min); binary and variadic ops include broadcast operands so that sum_to_shape is exercised.
#include <cmath>

#include "tests/gradcheck_cases.h"

namespace gv::testing {
namespace {

// Deterministic, well-spread values in [lo, hi] (a golden-ratio sequence; `seed` shifts it).
Tensor spread(const Shape& shape, double lo, double hi, int seed = 0) {
  Tensor t(DType::kFloat64, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double f = std::fmod(0.6180339887 * static_cast<double>(i + 1) + 0.2371 * seed, 1.0);
    t.data_as<double>()[i] = lo + (hi - lo) * f;
  }
  return t;
}

// Values of magnitude in [0.1, 1.5] with alternating signs: no element near 0.
Tensor nonzero(const Shape& shape, int seed = 0) {
  Tensor t = spread(shape, 0.1, 1.5, seed);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if ((i + seed) % 2) t.data_as<double>()[i] = -t.data_as<double>()[i];
  }
  return t;
}

Tensor f64(const Shape& shape, const std::vector<double>& v) {
  Tensor t(DType::kFloat64, shape);
  for (size_t i = 0; i < v.size(); ++i) t.data_as<double>()[i] = v[i];
  return t;
}

GradCase make_case(const std::string& op, std::vector<Tensor> inputs, const std::string& label = "",
                   std::vector<bool> as_constants = {}) {
  GradCase c;
  c.op = op;
  c.inputs = std::move(inputs);
  c.label = label;
  c.as_constants = std::move(as_constants);
  return c;
}

}  // namespace

std::vector<GradCase> gradcheck_cases_elementwise() {
  std::vector<GradCase> cases;
  auto add = [&](GradCase c) { cases.push_back(std::move(c)); };
  const Shape s23 = {2, 3};

  // Binary arithmetic: same shapes and broadcasting in either operand.
  add(make_case("Add", {spread(s23, -1, 1), spread(s23, -1, 1, 1)}, "same shape"));
  add(make_case("Add", {spread(s23, -1, 1), spread({3}, -1, 1, 1)}, "bias"));
  add(make_case("Add", {spread({2, 1}, -1, 1), spread({1, 3}, -1, 1, 1)}, "outer"));
  add(make_case("Sub", {spread(s23, -1, 1), spread(s23, -1, 1, 1)}, "same shape"));
  add(make_case("Sub", {spread({3}, -1, 1), spread(s23, -1, 1, 1)}, "broadcast first"));
  add(make_case("Mul", {spread(s23, -1, 1), spread(s23, -1, 1, 1)}, "same shape"));
  add(make_case("Mul", {spread({2, 3, 2}, -1, 1), spread({3, 1}, -1, 1, 1)}, "broadcast"));
  add(make_case("Mul", {spread({}, -1, 1), spread(s23, -1, 1, 1)}, "scalar"));
  add(make_case("Div", {spread(s23, -1, 1), spread(s23, 0.5, 2, 1)}, "same shape"));
  add(make_case("Div", {spread(s23, -1, 1), spread({3}, 0.5, 2, 1)}, "broadcast"));
  add(make_case("Div", {spread({2, 1}, -1, 1), spread({1, 3}, 0.5, 2, 1)}, "outer"));

  // Pow: both operands differentiable (positive base), broadcast exponent, constant scalar exponents.
  add(make_case("Pow", {spread(s23, 0.5, 2), spread(s23, -1.5, 1.5, 1)}, "tensor exponent"));
  add(make_case("Pow", {spread(s23, 0.5, 2), spread({3}, -1.5, 1.5, 1)}, "broadcast exponent"));
  add(make_case("Pow", {spread(s23, -2, 2), f64({}, {3.0})}, "constant cube", {false, true}));
  add(make_case("Pow", {spread(s23, -2, 2), f64({}, {2.0})}, "constant square", {false, true}));
  add(make_case("Pow", {spread(s23, 0.5, 2), f64({}, {-0.5})}, "constant rsqrt", {false, true}));
  add(make_case("Pow", {spread(s23, -2, 2), Tensor::from_i64({2}, {})}, "int64 exponent"));

  // Unary math.
  add(make_case("Neg", {spread(s23, -1, 1)}));
  add(make_case("Abs", {nonzero(s23)}));
  add(make_case("Sqrt", {spread(s23, 0.5, 2)}));
  add(make_case("Reciprocal", {nonzero(s23)}));
  add(make_case("Exp", {spread(s23, -1.5, 1.5)}));
  add(make_case("Log", {spread(s23, 0.5, 2)}));
  add(make_case("Cos", {spread(s23, -3, 3)}));
  add(make_case("Sin", {spread(s23, -3, 3)}));

  // Activations.
  add(make_case("Tanh", {spread(s23, -2, 2)}));
  add(make_case("Erf", {spread(s23, -2, 2)}));
  add(make_case("Sigmoid", {spread(s23, -3, 3)}));
  add(make_case("Relu", {nonzero(s23)}));
  add(make_case("Softplus", {spread(s23, -3, 3)}));
  add(make_case("LeakyRelu", {nonzero(s23)}, "default alpha"));
  {
    GradCase c = make_case("LeakyRelu", {nonzero(s23, 1)}, "alpha 0.3");
    c.attrs.set_float("alpha", 0.3);
    add(c);
  }
  // Linear region (-2.5, 2.5) and both clamped sides, away from the kinks.
  add(make_case("HardSigmoid", {f64(s23, {-3.5, -2.0, -0.5, 0.7, 1.9, 3.1})}));
  add(make_case("Gelu", {spread(s23, -3, 3)}, "erf"));
  {
    GradCase c = make_case("Gelu", {spread(s23, -3, 3, 1)}, "tanh");
    c.attrs.set_string("approximate", "tanh");
    add(c);
  }

  // Clip with constant bounds; elements inside and outside, none at a bound.
  add(make_case("Clip", {f64(s23, {-1.7, -0.6, 0.2, 0.9, 1.4, -1.2}), f64({}, {-1.0}), f64({}, {1.0})}, "both bounds",
                {false, true, true}));
  add(make_case("Clip", {f64(s23, {-1.7, -0.6, 0.2, 0.9, 1.4, -1.2}), f64({}, {0.0})}, "min only", {false, true}));

  // Variadic ops over broadcast inputs (distinct values, so Max/Min have no ties).
  add(make_case("Max", {spread(s23, -1, 1), spread({3}, -1, 1, 1), spread({2, 1}, -1, 1, 2)}, "three broadcast"));
  add(make_case("Max", {spread(s23, -1, 1)}, "one input"));
  add(make_case("Min", {spread(s23, -1, 1), spread({3}, -1, 1, 1), spread({2, 1}, -1, 1, 2)}, "three broadcast"));
  add(make_case("Sum", {spread(s23, -1, 1), spread({3}, -1, 1, 1), spread({2, 1}, -1, 1, 2)}, "three broadcast"));
  add(make_case("Mean", {spread(s23, -1, 1), spread({3}, -1, 1, 1)}, "two broadcast"));

  // Where: the bool condition is not differentiable; X and Y broadcast differently.
  {
    Tensor cond(DType::kBool, s23);
    const uint8_t bits[] = {1, 0, 0, 1, 1, 0};
    for (int i = 0; i < 6; ++i) cond.data_as<uint8_t>()[i] = bits[i];
    add(make_case("Where", {cond, spread(s23, -1, 1), spread({3}, -1, 1, 1)}, "broadcast Y"));
    add(make_case("Where", {cond, spread({2, 1}, -1, 1), spread(s23, -1, 1, 1)}, "broadcast X"));
  }

  // Casts (the harness differentiates float64 values, so the casts stay in float64) and Identity.
  {
    GradCase c = make_case("Cast", {spread(s23, -1, 1)});
    c.attrs.set_int("to", static_cast<int64_t>(DType::kFloat64));
    add(c);
  }
  add(make_case("CastLike", {spread(s23, -1, 1), f64({}, {0.0})}, "", {false, true}));
  add(make_case("Identity", {spread(s23, -1, 1)}));
  return cases;
}

}  // namespace gv::testing
