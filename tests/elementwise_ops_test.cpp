// Elementwise ops (runtime/ops/elementwise_*.cpp): values against hand-computed or std:: references, broadcasting,
// dtypes, and the errors of inference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "runtime/autograd.h"
#include "tests/op_test_util.h"

namespace gv::testing {
namespace {

template <typename T>
Tensor make(DType dt, Shape shape, const std::vector<T>& v) {
  Tensor t(dt, std::move(shape));
  EXPECT_EQ(static_cast<int64_t>(v.size()), t.numel());
  if (!v.empty()) std::memcpy(t.data(), v.data(), v.size() * sizeof(T));
  return t;
}
Tensor f32(Shape s, const std::vector<float>& v) { return make(DType::kFloat32, std::move(s), v); }
Tensor f64(Shape s, const std::vector<double>& v) { return make(DType::kFloat64, std::move(s), v); }
Tensor i64(Shape s, const std::vector<int64_t>& v) { return make(DType::kInt64, std::move(s), v); }
Tensor i32(Shape s, const std::vector<int32_t>& v) { return make(DType::kInt32, std::move(s), v); }
Tensor u8(Shape s, const std::vector<uint8_t>& v) { return make(DType::kUInt8, std::move(s), v); }
Tensor boolean(Shape s, const std::vector<uint8_t>& v) { return make(DType::kBool, std::move(s), v); }

template <typename T>
std::vector<T> values(const Tensor& t) {
  return std::vector<T>(t.data_as<T>(), t.data_as<T>() + t.numel());
}

// Runs a one-node graph and returns its single output; fails the test on error.
Tensor run1(const std::string& op, const std::vector<Tensor>& inputs, Attributes attrs = {}, int opset = 20,
            const std::string& domain = "") {
  auto r = run_op(op, inputs, std::move(attrs), 1, opset, {}, domain);
  EXPECT_TRUE(r.has_value()) << op << ": " << r.status().message();
  return r ? r->outputs[0] : Tensor();
}

// The error message of a run that must fail.
std::string run_error(const std::string& op, const std::vector<Tensor>& inputs, Attributes attrs = {}) {
  auto r = run_op(op, inputs, std::move(attrs));
  EXPECT_FALSE(r.has_value()) << op << " should have failed";
  return r ? std::string() : r.status().message();
}

Attributes int_attr(const std::string& name, int64_t v) {
  Attributes a;
  a.set_int(name, v);
  return a;
}

// ---- binary arithmetic ----

TEST(ElementwiseBinary, SameShapeFloat) {
  Tensor a = f32({2, 2}, {1, 2, 3, 4}), b = f32({2, 2}, {0.5f, -1, 2, 8});
  EXPECT_EQ(values<float>(run1("Add", {a, b})), (std::vector<float>{1.5f, 1, 5, 12}));
  EXPECT_EQ(values<float>(run1("Sub", {a, b})), (std::vector<float>{0.5f, 3, 1, -4}));
  EXPECT_EQ(values<float>(run1("Mul", {a, b})), (std::vector<float>{0.5f, -2, 6, 32}));
  EXPECT_EQ(values<float>(run1("Div", {a, b})), (std::vector<float>{2, -2, 1.5f, 0.5f}));
}

TEST(ElementwiseBinary, Broadcasting) {
  // [2,3] + [3] (a bias), [2,1] * [1,3] (outer product), [] - [2,2] (scalar first)
  Tensor out = run1("Add", {f64({2, 3}, {1, 2, 3, 4, 5, 6}), f64({3}, {10, 20, 30})});
  EXPECT_EQ(out.shape(), (Shape{2, 3}));
  EXPECT_EQ(values<double>(out), (std::vector<double>{11, 22, 33, 14, 25, 36}));
  out = run1("Mul", {f64({2, 1}, {2, 3}), f64({1, 3}, {1, 10, 100})});
  EXPECT_EQ(out.shape(), (Shape{2, 3}));
  EXPECT_EQ(values<double>(out), (std::vector<double>{2, 20, 200, 3, 30, 300}));
  out = run1("Sub", {f64({}, {1}), f64({2, 2}, {1, 2, 3, 4})});
  EXPECT_EQ(values<double>(out), (std::vector<double>{0, -1, -2, -3}));
  // Rank difference with a broadcast middle dim: [2,1,2] / [3,1]
  out = run1("Div", {f64({2, 1, 2}, {2, 4, 6, 8}), f64({3, 1}, {1, 2, 4})});
  EXPECT_EQ(out.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(values<double>(out), (std::vector<double>{2, 4, 1, 2, 0.5, 1, 6, 8, 3, 4, 1.5, 2}));
}

TEST(ElementwiseBinary, EmptyTensors) {
  Tensor out = run1("Add", {f32({0, 3}, {}), f32({3}, {1, 2, 3})});
  EXPECT_EQ(out.shape(), (Shape{0, 3}));
  EXPECT_EQ(run1("Exp", {f32({0}, {})}).numel(), 0);
  run_error("Add", {f32({0}, {}), f32({3}, {1, 2, 3})});  // 0 and 3 do not broadcast
}

TEST(ElementwiseBinary, Integers) {
  EXPECT_EQ(values<int64_t>(run1("Add", {i64({3}, {1, -2, 3}), i64({1}, {5})})), (std::vector<int64_t>{6, 3, 8}));
  EXPECT_EQ(values<int32_t>(run1("Mul", {i32({2}, {7, -3}), i32({2}, {6, 5})})), (std::vector<int32_t>{42, -15}));
  // Division truncates toward zero (as C and the ONNX reference); division by zero gives 0 instead of trapping.
  EXPECT_EQ(values<int64_t>(run1("Div", {i64({5}, {7, -7, 7, -7, 3}), i64({5}, {2, 2, -2, -2, 0})})),
            (std::vector<int64_t>{3, -3, -3, 3, 0}));
  EXPECT_EQ(values<int32_t>(run1("Div", {i32({1}, {std::numeric_limits<int32_t>::min()}), i32({1}, {-1})})),
            (std::vector<int32_t>{std::numeric_limits<int32_t>::min()}));
  // uint8 wraps around.
  EXPECT_EQ(values<uint8_t>(run1("Add", {u8({2}, {250, 3}), u8({2}, {10, 4})})), (std::vector<uint8_t>{4, 7}));
  EXPECT_EQ(values<uint8_t>(run1("Sub", {u8({1}, {3}), u8({1}, {4})})), (std::vector<uint8_t>{255}));
}

TEST(ElementwiseBinary, Mod) {
  // fmod = 0: the result takes the divisor's sign (numpy.mod); fmod = 1: the dividend's (C fmod).
  Tensor a = i64({4}, {-4, 4, -4, 7}), b = i64({4}, {3, -3, -3, 0});
  EXPECT_EQ(values<int64_t>(run1("Mod", {a, b})), (std::vector<int64_t>{2, -2, -1, 0}));
  EXPECT_EQ(values<int64_t>(run1("Mod", {a, b}, int_attr("fmod", 1))), (std::vector<int64_t>{-1, 1, -1, 0}));
  Tensor x = f64({3}, {-4.5, 4.5, 5.0}), y = f64({1}, {2.0});
  EXPECT_EQ(values<double>(run1("Mod", {x, y}, int_attr("fmod", 1))), (std::vector<double>{-0.5, 0.5, 1.0}));
  EXPECT_EQ(values<double>(run1("Mod", {x, y})), (std::vector<double>{1.5, 0.5, 1.0}));
}

TEST(ElementwiseBinary, Pow) {
  EXPECT_EQ(values<float>(run1("Pow", {f32({3}, {1, 2, 3}), f32({3}, {4, 5, 6})})),
            (std::vector<float>{1, 32, 729}));
  // Scalar exponents (the fast paths for 2 and 3) and an int64 exponent.
  EXPECT_EQ(values<float>(run1("Pow", {f32({3}, {1, -2, 3}), f32({}, {2})})), (std::vector<float>{1, 4, 9}));
  EXPECT_EQ(values<double>(run1("Pow", {f64({2}, {-2, 1.5}), f64({1}, {3})})), (std::vector<double>{-8, 3.375}));
  EXPECT_EQ(values<float>(run1("Pow", {f32({2}, {4, 9}), i64({}, {2})})), (std::vector<float>{16, 81}));
  Tensor sq = run1("Pow", {f64({2}, {4, 2}), f64({1}, {0.5})});
  EXPECT_DOUBLE_EQ(values<double>(sq)[1], std::sqrt(2.0));
  // Integer bases: exact; negative exponents truncate 1/b^e; float exponents truncate the result.
  EXPECT_EQ(values<int64_t>(run1("Pow", {i64({4}, {3, -2, 2, -1}), i64({4}, {4, 3, -1, -3})})),
            (std::vector<int64_t>{81, -8, 0, -1}));
  EXPECT_EQ(values<int32_t>(run1("Pow", {i32({2}, {4, 2}), f32({2}, {0.5f, 1.5f})})), (std::vector<int32_t>{2, 2}));
  // Broadcast exponent array.
  EXPECT_EQ(values<int64_t>(run1("Pow", {i64({2, 2}, {1, 2, 3, 4}), i64({2}, {1, 2})})),
            (std::vector<int64_t>{1, 4, 3, 16}));
}

TEST(ElementwiseBinary, Half) {
  // float16 and bfloat16 compute through float32.
  Tensor a = f32({3}, {1.5f, -2, 0.25f}).cast(DType::kFloat16), b = f32({3}, {2, 4, 1}).cast(DType::kFloat16);
  Tensor out = run1("Mul", {a, b});
  EXPECT_EQ(out.dtype(), DType::kFloat16);
  EXPECT_EQ(values<float>(out.cast(DType::kFloat32)), (std::vector<float>{3, -8, 0.25f}));
  Tensor h = f32({2}, {1, 4}).cast(DType::kBFloat16);
  EXPECT_EQ(values<float>(run1("Sqrt", {h}).cast(DType::kFloat32)), (std::vector<float>{1, 2}));
  EXPECT_EQ(values<uint8_t>(run1("Less", {a, b})), (std::vector<uint8_t>{1, 1, 1}));
}

// ---- unary math and activations against std:: references ----

struct UnaryCase {
  std::string op;
  std::function<double(double)> ref;
  std::vector<double> inputs;
  Attributes attrs;
};

std::vector<UnaryCase> unary_cases() {
  const std::vector<double> any = {-2.5, -1.0, -0.3, 0.0, 0.4, 1.0, 2.5, 7.0};
  const std::vector<double> pos = {0.01, 0.3, 1.0, 2.0, 9.0, 100.0};
  auto sigmoid = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  auto gelu = [](double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); };
  auto gelu_tanh = [](double x) {
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  };
  Attributes tanh_attr, leaky, hard;
  tanh_attr.set_string("approximate", "tanh");
  leaky.set_float("alpha", 0.1);
  hard.set_float("alpha", 0.25);
  hard.set_float("beta", 0.4);
  return {
      {"Neg", [](double x) { return -x; }, any, {}},
      {"Abs", [](double x) { return std::fabs(x); }, any, {}},
      {"Sign", [](double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }, any, {}},
      {"Sqrt", [](double x) { return std::sqrt(x); }, pos, {}},
      {"Reciprocal", [](double x) { return 1.0 / x; }, pos, {}},
      {"Exp", [](double x) { return std::exp(x); }, any, {}},
      {"Log", [](double x) { return std::log(x); }, pos, {}},
      {"Tanh", [](double x) { return std::tanh(x); }, any, {}},
      {"Erf", [](double x) { return std::erf(x); }, any, {}},
      {"Sigmoid", sigmoid, {-800.0, -20.0, -1.0, 0.0, 0.5, 20.0, 800.0}, {}},
      {"Relu", [](double x) { return x > 0 ? x : 0.0; }, any, {}},
      {"Gelu", gelu, any, {}},
      {"Gelu", gelu_tanh, any, tanh_attr},
      {"Cos", [](double x) { return std::cos(x); }, any, {}},
      {"Sin", [](double x) { return std::sin(x); }, any, {}},
      {"LeakyRelu", [](double x) { return x < 0 ? double(0.01f) * x : x; }, any, {}},
      {"LeakyRelu", [](double x) { return x < 0 ? double(0.1f) * x : x; }, any, leaky},
      {"Softplus", [](double x) { return std::log1p(std::exp(x)); }, {-30.0, -1.0, 0.0, 0.5, 3.0}, {}},
      {"Softplus", [](double x) { return x; }, {800.0}, {}},  // no overflow
      {"HardSigmoid", [](double x) { return std::max(0.0, std::min(1.0, double(0.2f) * x + 0.5)); }, any, {}},
      {"HardSigmoid", [](double x) { return std::max(0.0, std::min(1.0, 0.25 * x + double(0.4f))); }, any, hard},
      {"Floor", [](double x) { return std::floor(x); }, any, {}},
      {"Ceil", [](double x) { return std::ceil(x); }, any, {}},
      {"Round", [](double x) { return std::nearbyint(x); }, {-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.6, -2.4}, {}},
  };
}

TEST(ElementwiseUnary, MatchesStdFloat64) {
  for (const UnaryCase& c : unary_cases()) {
    const int64_t n = static_cast<int64_t>(c.inputs.size());
    Tensor out = run1(c.op, {f64({n}, c.inputs)}, c.attrs);
    ASSERT_EQ(out.dtype(), DType::kFloat64) << c.op;
    for (int64_t i = 0; i < n; ++i) {
      const double ref = c.ref(c.inputs[i]);
      EXPECT_NEAR(out.data_as<double>()[i], ref, 1e-12 * std::max(1.0, std::fabs(ref)))
          << c.op << "(" << c.inputs[i] << ")";
    }
  }
}

TEST(ElementwiseUnary, MatchesStdFloat32) {
  for (const UnaryCase& c : unary_cases()) {
    const int64_t n = static_cast<int64_t>(c.inputs.size());
    std::vector<float> in(c.inputs.begin(), c.inputs.end());
    Tensor out = run1(c.op, {f32({n}, in)}, c.attrs);
    for (int64_t i = 0; i < n; ++i) {
      const double ref = c.ref(in[i]);
      EXPECT_NEAR(out.data_as<float>()[i], ref, 2e-6 * std::max(1.0, std::fabs(ref))) << c.op << "(" << in[i] << ")";
    }
  }
}

TEST(ElementwiseUnary, RoundHalfToEvenAndIntegers) {
  EXPECT_EQ(values<float>(run1("Round", {f32({6}, {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 2.51f})})),
            (std::vector<float>{0, 2, 2, -0.0f, -2, 3}));
  EXPECT_EQ(values<int64_t>(run1("Neg", {i64({2}, {3, -4})})), (std::vector<int64_t>{-3, 4}));
  EXPECT_EQ(values<int32_t>(run1("Abs", {i32({2}, {-3, 4})})), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(values<int64_t>(run1("Relu", {i64({3}, {-3, 0, 4})})), (std::vector<int64_t>{0, 0, 4}));
  EXPECT_EQ(values<int64_t>(run1("Sign", {i64({3}, {-3, 0, 4})})), (std::vector<int64_t>{-1, 0, 1}));
}

TEST(ElementwiseUnary, Predicates) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  Tensor x = f32({4}, {1.0f, nan, inf, -inf});
  EXPECT_EQ(values<uint8_t>(run1("IsNaN", {x})), (std::vector<uint8_t>{0, 1, 0, 0}));
  Tensor inf_out = run1("IsInf", {x});
  EXPECT_EQ(inf_out.dtype(), DType::kBool);
  EXPECT_EQ(values<uint8_t>(inf_out), (std::vector<uint8_t>{0, 0, 1, 1}));
  EXPECT_EQ(values<uint8_t>(run1("IsInf", {x}, int_attr("detect_negative", 0))), (std::vector<uint8_t>{0, 0, 1, 0}));
  EXPECT_EQ(values<uint8_t>(run1("IsInf", {x}, int_attr("detect_positive", 0))), (std::vector<uint8_t>{0, 0, 0, 1}));
  EXPECT_EQ(values<uint8_t>(run1("Not", {boolean({3}, {1, 0, 1})})), (std::vector<uint8_t>{0, 1, 0}));
}

TEST(ElementwiseUnary, Clip) {
  Tensor x = f32({5}, {-3, -1, 0, 2, 5});
  Tensor none;  // an omitted optional input
  EXPECT_EQ(values<float>(run1("Clip", {x, f32({}, {-1.5f}), f32({}, {2.5f})})),
            (std::vector<float>{-1.5f, -1, 0, 2, 2.5f}));
  EXPECT_EQ(values<float>(run1("Clip", {x, f32({}, {0})})), (std::vector<float>{0, 0, 0, 2, 5}));
  EXPECT_EQ(values<float>(run1("Clip", {x, none, f32({}, {1})})), (std::vector<float>{-3, -1, 0, 1, 1}));
  EXPECT_EQ(values<float>(run1("Clip", {x})), (std::vector<float>{-3, -1, 0, 2, 5}));
  // min > max: everything becomes max.
  EXPECT_EQ(values<float>(run1("Clip", {x, f32({}, {2}), f32({}, {1})})), (std::vector<float>{1, 1, 1, 1, 1}));
  Tensor i8 = make<int8_t>(DType::kInt8, {3}, {-100, 5, 100});
  Tensor lo = make<int8_t>(DType::kInt8, {}, {-10});
  EXPECT_EQ(values<int8_t>(run1("Clip", {i8, lo})), (std::vector<int8_t>{-10, 5, 100}));
}

// ---- comparisons and logic ----

TEST(ElementwiseCompare, ComparisonsBroadcast) {
  Tensor a = f32({2, 2}, {1, 2, 3, 4}), b = f32({2}, {2, 3});
  EXPECT_EQ(values<uint8_t>(run1("Equal", {a, b})), (std::vector<uint8_t>{0, 0, 0, 0}));
  EXPECT_EQ(values<uint8_t>(run1("Less", {a, b})), (std::vector<uint8_t>{1, 1, 0, 0}));
  EXPECT_EQ(values<uint8_t>(run1("LessOrEqual", {a, b})), (std::vector<uint8_t>{1, 1, 0, 0}));
  EXPECT_EQ(values<uint8_t>(run1("Greater", {a, b})), (std::vector<uint8_t>{0, 0, 1, 1}));
  Tensor ge = run1("GreaterOrEqual", {a, f32({2, 1}, {1, 4})});
  EXPECT_EQ(ge.dtype(), DType::kBool);
  EXPECT_EQ(values<uint8_t>(ge), (std::vector<uint8_t>{1, 1, 0, 1}));
  EXPECT_EQ(values<uint8_t>(run1("Equal", {i64({3}, {1, 2, 3}), i64({}, {2})})), (std::vector<uint8_t>{0, 1, 0}));
  EXPECT_EQ(values<uint8_t>(run1("Equal", {boolean({2}, {1, 0}), boolean({2}, {1, 1})})), (std::vector<uint8_t>{1, 0}));
}

TEST(ElementwiseCompare, Logic) {
  Tensor a = boolean({2, 2}, {0, 0, 1, 1}), b = boolean({2}, {0, 1});
  EXPECT_EQ(values<uint8_t>(run1("And", {a, b})), (std::vector<uint8_t>{0, 0, 0, 1}));
  EXPECT_EQ(values<uint8_t>(run1("Or", {a, b})), (std::vector<uint8_t>{0, 1, 1, 1}));
  EXPECT_EQ(values<uint8_t>(run1("Xor", {a, b})), (std::vector<uint8_t>{0, 1, 1, 0}));
}

// ---- variadic ops and Where ----

TEST(ElementwiseVariadic, MaxMinSumMean) {
  Tensor a = f64({3}, {1, 5, 3}), b = f64({2, 1}, {2, 4}), c = f64({}, {3.5});
  Tensor mx = run1("Max", {a, b, c});
  EXPECT_EQ(mx.shape(), (Shape{2, 3}));
  EXPECT_EQ(values<double>(mx), (std::vector<double>{3.5, 5, 3.5, 4, 5, 4}));
  EXPECT_EQ(values<double>(run1("Min", {a, b, c})), (std::vector<double>{1, 2, 2, 1, 3.5, 3}));
  EXPECT_EQ(values<double>(run1("Sum", {a, b, c})), (std::vector<double>{6.5, 10.5, 8.5, 8.5, 12.5, 10.5}));
  EXPECT_EQ(values<double>(run1("Mean", {a, b})), (std::vector<double>{1.5, 3.5, 2.5, 2.5, 4.5, 3.5}));
  EXPECT_EQ(values<double>(run1("Max", {a})), (std::vector<double>{1, 5, 3}));
  EXPECT_EQ(values<int64_t>(run1("Max", {i64({2}, {-1, 7}), i64({2}, {3, 2})})), (std::vector<int64_t>{3, 7}));
  // NaN propagates from either side.
  Tensor m = run1("Max", {f32({2}, {std::nanf(""), 1}), f32({2}, {1, std::nanf("")})});
  EXPECT_TRUE(std::isnan(values<float>(m)[0]) && std::isnan(values<float>(m)[1]));
}

TEST(ElementwiseVariadic, Where) {
  Tensor cond = boolean({2, 1}, {1, 0});
  Tensor out = run1("Where", {cond, f32({3}, {1, 2, 3}), f32({}, {-1})});
  EXPECT_EQ(out.shape(), (Shape{2, 3}));
  EXPECT_EQ(values<float>(out), (std::vector<float>{1, 2, 3, -1, -1, -1}));
  Tensor c2 = boolean({3}, {1, 0, 1});
  EXPECT_EQ(values<int64_t>(run1("Where", {c2, i64({2, 1}, {7, 8}), i64({2, 3}, {0, 1, 2, 3, 4, 5})})),
            (std::vector<int64_t>{7, 1, 7, 8, 4, 8}));
  Tensor h = run1("Where", {c2, f32({3}, {1, 2, 3}).cast(DType::kFloat16), f32({3}, {4, 5, 6}).cast(DType::kFloat16)});
  EXPECT_EQ(values<float>(h.cast(DType::kFloat32)), (std::vector<float>{1, 5, 3}));
}

// Large broadcasts run in parallel segments that start mid-row: compare against a naive loop.
TEST(ElementwiseVariadic, LargeBroadcastMatchesNaive) {
  const int64_t B = 3, H = 2, S = 97;
  Tensor a(DType::kFloat32, {B, H, S, S}), mask(DType::kFloat32, {B, 1, 1, S});
  for (int64_t i = 0; i < a.numel(); ++i) a.data_as<float>()[i] = static_cast<float>(i % 1013) * 0.5f;
  for (int64_t i = 0; i < mask.numel(); ++i) mask.data_as<float>()[i] = static_cast<float>(i);
  Tensor out = run1("Add", {a, mask});
  ASSERT_EQ(out.shape(), (Shape{B, H, S, S}));
  int64_t bad = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t j = 0; j < S; ++j) {
          const int64_t o = ((b * H + h) * S + i) * S + j;
          bad += out.data_as<float>()[o] != a.data_as<float>()[o] + mask.data_as<float>()[b * S + j];
        }
  EXPECT_EQ(bad, 0);
  // [R,1,C] with [1,K,1] and a third operand: Where over 3 broadcast inputs.
  const int64_t R = 37, K = 41, C = 29;
  Tensor x(DType::kFloat64, {R, 1, C}), y(DType::kFloat64, {1, K, 1}), c(DType::kBool, {K, C});
  for (int64_t i = 0; i < x.numel(); ++i) x.data_as<double>()[i] = static_cast<double>(i);
  for (int64_t i = 0; i < y.numel(); ++i) y.data_as<double>()[i] = -static_cast<double>(i);
  for (int64_t i = 0; i < c.numel(); ++i) c.data_as<uint8_t>()[i] = (i * 7) % 3 == 0;
  Tensor w = run1("Where", {c, x, y});
  ASSERT_EQ(w.shape(), (Shape{R, K, C}));
  bad = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < C; ++j) {
        double ref = c.data_as<uint8_t>()[k * C + j] ? x.data_as<double>()[r * C + j] : y.data_as<double>()[k];
        bad += w.data_as<double>()[(r * K + k) * C + j] != ref;
      }
  EXPECT_EQ(bad, 0);
}

// ---- Cast, CastLike, Identity ----

TEST(ElementwiseCast, Conversions) {
  Tensor x = f32({4}, {1.7f, -1.7f, 0.0f, 3.0f});
  Tensor i = run1("Cast", {x}, int_attr("to", 7));
  EXPECT_EQ(i.dtype(), DType::kInt64);
  EXPECT_EQ(values<int64_t>(i), (std::vector<int64_t>{1, -1, 0, 3}));  // truncation toward zero
  EXPECT_EQ(values<uint8_t>(run1("Cast", {x}, int_attr("to", 9))), (std::vector<uint8_t>{1, 1, 0, 1}));
  Tensor h = run1("Cast", {x}, int_attr("to", 10));
  EXPECT_EQ(h.dtype(), DType::kFloat16);
  EXPECT_NEAR(values<float>(h.cast(DType::kFloat32))[0], 1.7f, 1e-3);
  Tensor like = run1("CastLike", {i64({2}, {2, -5}), f64({}, {0})});
  EXPECT_EQ(like.dtype(), DType::kFloat64);
  EXPECT_EQ(values<double>(like), (std::vector<double>{2, -5}));
  EXPECT_EQ(values<float>(run1("Identity", {x})), values<float>(x));
  // Large enough to convert in parallel chunks.
  Tensor big(DType::kFloat64, {100003});
  for (int64_t k = 0; k < big.numel(); ++k) big.data_as<double>()[k] = static_cast<double>(k) + 0.25;
  Tensor bf = run1("Cast", {big}, int_attr("to", 1));
  EXPECT_EQ(bf.data_as<float>()[100002], 100002.25f);
  EXPECT_EQ(bf.data_as<float>()[7], 7.25f);
}

// ---- errors name the node and op ----

TEST(ElementwiseErrors, DtypesAndShapes) {
  std::string e = run_error("Add", {f32({2}, {1, 2}), i64({2}, {1, 2})});
  EXPECT_NE(e.find("test_node"), std::string::npos) << e;
  EXPECT_NE(e.find("(Add)"), std::string::npos) << e;
  EXPECT_NE(e.find("same dtype"), std::string::npos) << e;
  e = run_error("Mul", {f32({2, 3}, {1, 2, 3, 4, 5, 6}), f32({4}, {1, 2, 3, 4})});
  EXPECT_NE(e.find("[2,3]"), std::string::npos) << e;
  EXPECT_NE(e.find("broadcast"), std::string::npos) << e;
  e = run_error("Sqrt", {i64({1}, {4})});
  EXPECT_NE(e.find("int64"), std::string::npos) << e;
  run_error("Not", {f32({1}, {1})});
  run_error("And", {i64({1}, {1}), i64({1}, {1})});
  run_error("Where", {f32({1}, {1}), f32({1}, {1}), f32({1}, {1})});
  run_error("Where", {boolean({1}, {1}), f32({1}, {1}), f64({1}, {1})});
  run_error("Where", {boolean({3}, {1, 0, 1}), f32({2}, {1, 2}), f32({1}, {1})});
  run_error("Max", {f32({2}, {1, 2}), f32({3}, {1, 2, 3})});
  run_error("Mean", {i64({1}, {1})});
  run_error("Pow", {u8({1}, {2}), u8({1}, {2})});
  e = run_error("Clip", {f32({2}, {1, 2}), f32({2}, {0, 0})});
  EXPECT_NE(e.find("min"), std::string::npos) << e;
  run_error("Mod", {i64({1}, {1}), i64({1}, {1})}, int_attr("fmod", 2));
  Attributes bad_gelu;
  bad_gelu.set_string("approximate", "fast");
  run_error("Gelu", {f32({1}, {1})}, bad_gelu);
  e = run_error("Cast", {f32({1}, {1})}, int_attr("to", 8));  // string
  EXPECT_NE(e.find("cast to ONNX data type 8"), std::string::npos) << e;
  run_error("Cast", {f32({1}, {1})});  // no `to`
}

// ---- fused gradient ops (domain "galvatron") against central differences of the forward op ----

TEST(ElementwiseFusedGrad, MatchFiniteDifferences) {
  struct Case {
    const char* grad_op;
    const char* fwd_op;
    bool from_output;
    const char* approximate;
  };
  const Case cases[] = {{"SigmoidGrad", "Sigmoid", true, nullptr},
                        {"TanhGrad", "Tanh", true, nullptr},
                        {"ErfGrad", "Erf", false, nullptr},
                        {"GeluGrad", "Gelu", false, "none"},
                        {"GeluGrad", "Gelu", false, "tanh"}};
  const std::vector<double> xs = {-3.0, -1.2, -0.4, 0.0, 0.3, 1.1, 2.7};
  const std::vector<double> dy = {0.5, -1.0, 2.0, 1.5, -0.7, 1.0, 0.3};
  const int64_t n = static_cast<int64_t>(xs.size());
  for (const Case& c : cases) {
    Attributes a;
    if (c.approximate) a.set_string("approximate", c.approximate);
    Tensor x = f64({n}, xs);
    Tensor y = run1(c.fwd_op, {x}, a);
    Tensor dx = run1(c.grad_op, {f64({n}, dy), c.from_output ? y : x}, a, 1, kGalvatronDomain);
    const double eps = 1e-6;
    std::vector<double> xp = xs, xm = xs;
    for (double& v : xp) v += eps;
    for (double& v : xm) v -= eps;
    Tensor yp = run1(c.fwd_op, {f64({n}, xp)}, a), ym = run1(c.fwd_op, {f64({n}, xm)}, a);
    for (int64_t i = 0; i < n; ++i) {
      const double fd = dy[i] * (yp.data_as<double>()[i] - ym.data_as<double>()[i]) / (2 * eps);
      EXPECT_NEAR(dx.data_as<double>()[i], fd, 1e-7) << c.grad_op << " " << (c.approximate ? c.approximate : "")
                                                     << " at " << xs[i];
    }
  }
}

// A float32 -> float64 Cast: the gradient arrives in float64 and is cast back to the parameter's float32.
TEST(ElementwiseBackward, CastGradientIsCastBack) {
  Graph g;
  g.opsets[""] = 20;
  ValueId x = g.add_initializer("x", f32({}, {1.5f}), ValueKind::kParameter);
  Node cast;
  cast.name = "cast";
  cast.op_type = "Cast";
  cast.opset = 20;
  cast.attrs.set_int("to", static_cast<int64_t>(DType::kFloat64));
  cast.inputs = {x};
  auto y = g.add_node(cast);
  ASSERT_TRUE(y.has_value()) << y.status().message();
  Node sq;
  sq.name = "square";
  sq.op_type = "Mul";
  sq.opset = 20;
  sq.inputs = {(*y)[0], (*y)[0]};
  auto loss = g.add_node(sq);
  ASSERT_TRUE(loss.has_value()) << loss.status().message();
  g.outputs = {(*loss)[0]};
  auto ag = build_backward(g, (*loss)[0], {x});
  ASSERT_TRUE(ag.has_value()) << ag.status().message();
  ValueId gx = ag->grads[x];
  ASSERT_NE(gx, kNoValue);
  EXPECT_EQ(g.value(gx).dtype, DType::kFloat32);
  auto backend = make_cpu_backend();
  ExecutorOptions opts;
  opts.keep_alive = {gx};
  auto ex = Executor::create(g, *backend, opts);
  ASSERT_TRUE(ex.has_value()) << ex.status().message();
  ASSERT_TRUE((*ex)->run().is_ok());
  auto t = (*ex)->fetch(gx);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->data_as<float>()[0], 3.0f);  // d(x^2)/dx at 1.5
}

}  // namespace
}  // namespace gv::testing
