// The movement op family (runtime/ops/movement_*.cpp) on the CPU: values against hand-computed references, opset
// differences, negative axes, and errors for out-of-range indices and bad shapes.
#include <gtest/gtest.h>

#include <climits>
#include <numeric>

#include "tests/op_test_util.h"

namespace gv::testing {
namespace {

Tensor f32(const std::vector<float>& v, Shape s) { return Tensor::from_f32(v, std::move(s)); }
Tensor i64(const std::vector<int64_t>& v, Shape s) { return Tensor::from_i64(v, std::move(s)); }
Tensor i64(const std::vector<int64_t>& v) { return Tensor::from_i64(v, {static_cast<int64_t>(v.size())}); }
Tensor iota(Shape s) {
  Tensor t(DType::kFloat32, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = static_cast<float>(i);
  return t;
}
std::vector<float> fvals(const Tensor& t) {
  Tensor c = t.cast(DType::kFloat32);
  return std::vector<float>(c.data_as<float>(), c.data_as<float>() + c.numel());
}
std::vector<int64_t> ivals(const Tensor& t) { return t.to_i64_vector(); }

// Runs the op and returns its outputs, failing the test on error.
std::vector<Tensor> run(const std::string& op, const std::vector<Tensor>& inputs, Attributes attrs = {},
                        std::vector<bool> as_constants = {}, int num_outputs = 1, int opset = 20,
                        const std::string& domain = "") {
  auto r = run_op(op, inputs, std::move(attrs), num_outputs, opset, std::move(as_constants), domain);
  EXPECT_TRUE(r.has_value()) << op << ": " << r.status().message();
  return r ? r->outputs : std::vector<Tensor>(num_outputs);
}

// Runs the op expecting failure; returns the message.
std::string error_of(const std::string& op, const std::vector<Tensor>& inputs, Attributes attrs = {},
                     std::vector<bool> as_constants = {}, int num_outputs = 1, int opset = 20,
                     const std::string& domain = "") {
  auto r = run_op(op, inputs, std::move(attrs), num_outputs, opset, std::move(as_constants), domain);
  EXPECT_FALSE(r.has_value()) << op << " should have failed";
  return r ? "" : r.status().message();
}

Attributes ints_attr(const std::string& name, std::vector<int64_t> v) {
  Attributes a;
  a.set_ints(name, std::move(v));
  return a;
}
Attributes int_attr(const std::string& name, int64_t v) {
  Attributes a;
  a.set_int(name, v);
  return a;
}

// ---- shape-only ops --------------------------------------------------------------------------------------------

TEST(MovementReshape, ZeroCopiesDimAndMinusOneInfers) {
  auto out = run("Reshape", {iota({2, 3, 4}), i64({0, -1})}, {}, {false, true});
  EXPECT_EQ(out[0].shape(), (Shape{2, 12}));
  EXPECT_EQ(fvals(out[0])[13], 13.0f);
}

TEST(MovementReshape, AllowZeroOnlyFromOpset14) {
  Attributes a = int_attr("allowzero", 1);
  // Opset 13 has no allowzero: 0 copies the input dim.
  auto out = run("Reshape", {iota({2, 3, 4}), i64({0, 12})}, a, {false, true}, 1, 13);
  EXPECT_EQ(out[0].shape(), (Shape{2, 12}));
  // Opset 14: 0 is a zero-size dim, so 24 elements cannot fit.
  EXPECT_NE(error_of("Reshape", {iota({2, 3, 4}), i64({0, 12})}, a, {false, true}, 1, 14).find("cannot reshape"),
            std::string::npos);
  auto empty = run("Reshape", {iota({0, 3}), i64({3, 0})}, a, {false, true}, 1, 14);
  EXPECT_EQ(empty[0].shape(), (Shape{3, 0}));
}

TEST(MovementReshape, Errors) {
  EXPECT_NE(error_of("Reshape", {iota({6}), i64({2, 3})}).find("must be a constant after shape folding"),
            std::string::npos);
  EXPECT_NE(error_of("Reshape", {iota({6}), i64({-1, -1})}, {}, {false, true}).find("more than one -1"),
            std::string::npos);
  EXPECT_NE(error_of("Reshape", {iota({6}), i64({4, -1})}, {}, {false, true}).find("cannot reshape"),
            std::string::npos);
  EXPECT_NE(error_of("Reshape", {Tensor(), i64({6})}, {}, {false, true}).find("input 0 is required"),
            std::string::npos);
  std::string msg = error_of("Reshape", {iota({6}), i64({5})}, {}, {false, true});
  EXPECT_NE(msg.find("test_node"), std::string::npos);
  EXPECT_NE(msg.find("Reshape"), std::string::npos);
}

TEST(MovementFlatten, AxisVariants) {
  EXPECT_EQ(run("Flatten", {iota({2, 3, 4})})[0].shape(), (Shape{2, 12}));
  EXPECT_EQ(run("Flatten", {iota({2, 3, 4})}, int_attr("axis", 0))[0].shape(), (Shape{1, 24}));
  EXPECT_EQ(run("Flatten", {iota({2, 3, 4})}, int_attr("axis", 3))[0].shape(), (Shape{24, 1}));
  EXPECT_EQ(run("Flatten", {iota({2, 3, 4})}, int_attr("axis", -1))[0].shape(), (Shape{6, 4}));
  error_of("Flatten", {iota({2, 3})}, int_attr("axis", 3));
}

TEST(MovementSqueeze, AxesInputAndDefault) {
  EXPECT_EQ(run("Squeeze", {iota({1, 3, 1, 2}), i64({-2})}, {}, {false, true})[0].shape(), (Shape{1, 3, 2}));
  EXPECT_EQ(run("Squeeze", {iota({1, 3, 1, 2})})[0].shape(), (Shape{3, 2}));
  EXPECT_NE(error_of("Squeeze", {iota({1, 3}), i64({1})}, {}, {false, true}).find("cannot squeeze"), std::string::npos);
  // Before opset 13 the axes were an attribute.
  EXPECT_EQ(run("Squeeze", {iota({1, 3, 1})}, ints_attr("axes", {0}), {}, 1, 11)[0].shape(), (Shape{3, 1}));
}

TEST(MovementUnsqueeze, UnsortedAndNegativeAxes) {
  auto out = run("Unsqueeze", {iota({3, 4, 5}), i64({5, 4, 2})}, {}, {false, true});
  EXPECT_EQ(out[0].shape(), (Shape{3, 4, 1, 5, 1, 1}));
  EXPECT_EQ(run("Unsqueeze", {iota({3, 4}), i64({-1, 0})}, {}, {false, true})[0].shape(), (Shape{1, 3, 4, 1}));
  EXPECT_EQ(run("Unsqueeze", {iota({}), i64({0})}, {}, {false, true})[0].shape(), (Shape{1}));
  EXPECT_NE(error_of("Unsqueeze", {iota({3}), i64({0, 0})}, {}, {false, true}).find("twice"), std::string::npos);
  error_of("Unsqueeze", {iota({3}), i64({3})}, {}, {false, true});
}

TEST(MovementShape, StartEndAndSize) {
  Tensor x = iota({2, 3, 4, 5});
  EXPECT_EQ(ivals(run("Shape", {x})[0]), (std::vector<int64_t>{2, 3, 4, 5}));
  Attributes a;
  a.set_int("start", 1);
  a.set_int("end", -1);
  EXPECT_EQ(ivals(run("Shape", {x}, a)[0]), (std::vector<int64_t>{3, 4}));
  Attributes clip;
  clip.set_int("start", -10);
  clip.set_int("end", 10);
  EXPECT_EQ(ivals(run("Shape", {x}, clip)[0]), (std::vector<int64_t>{2, 3, 4, 5}));
  auto size = run("Size", {x});
  EXPECT_EQ(size[0].shape(), Shape{});
  EXPECT_EQ(size[0].scalar_i64(), 120);
}

TEST(MovementConstant, ValueAttributes) {
  Attributes t;
  t.set_tensor("value", f32({1, 2, 3, 4}, {2, 2}));
  auto out = run("Constant", {}, t);
  EXPECT_EQ(out[0].shape(), (Shape{2, 2}));
  EXPECT_EQ(fvals(out[0]), (std::vector<float>{1, 2, 3, 4}));
  Attributes fs;
  fs.set_floats("value_floats", {0.5f, 1.5f});
  EXPECT_EQ(fvals(run("Constant", {}, fs)[0]), (std::vector<float>{0.5f, 1.5f}));
  auto vi = run("Constant", {}, int_attr("value_int", 7));
  EXPECT_EQ(vi[0].dtype(), DType::kInt64);
  EXPECT_EQ(vi[0].shape(), Shape{});
  EXPECT_EQ(ivals(run("Constant", {}, ints_attr("value_ints", {4, 5}))[0]), (std::vector<int64_t>{4, 5}));
  EXPECT_NE(error_of("Constant", {}).find("exactly one"), std::string::npos);
  Attributes s;
  s.set_string("value_string", "x");
  EXPECT_NE(error_of("Constant", {}, s).find("not supported"), std::string::npos);
}

TEST(MovementConstantOfShape, DefaultValueAndEmpty) {
  auto z = run("ConstantOfShape", {i64({2, 3})}, {}, {true});
  EXPECT_EQ(z[0].dtype(), DType::kFloat32);
  EXPECT_EQ(fvals(z[0]), std::vector<float>(6, 0.0f));
  Attributes a;
  a.set_tensor("value", Tensor::from_i64({7}, {1}));
  auto sevens = run("ConstantOfShape", {i64({3})}, a, {true});
  EXPECT_EQ(ivals(sevens[0]), (std::vector<int64_t>{7, 7, 7}));
  EXPECT_EQ(run("ConstantOfShape", {i64({0})}, a, {true})[0].shape(), (Shape{0}));
  EXPECT_EQ(run("ConstantOfShape", {i64({}, {0})}, a, {true})[0].shape(), Shape{});
  error_of("ConstantOfShape", {i64({2, -1})}, {}, {true});
  EXPECT_NE(error_of("ConstantOfShape", {i64({2})}).find("must be a constant"), std::string::npos);
}

TEST(MovementRange, FloatAndNegativeIntDelta) {
  auto f =
      run("Range",
          {Tensor::scalar(DType::kFloat32, 1), Tensor::scalar(DType::kFloat32, 5), Tensor::scalar(DType::kFloat32, 2)},
          {}, {true, true, true});
  EXPECT_EQ(fvals(f[0]), (std::vector<float>{1, 3}));
  auto i = run("Range",
               {Tensor::scalar(DType::kInt32, 10), Tensor::scalar(DType::kInt32, 4), Tensor::scalar(DType::kInt32, -3)},
               {}, {true, true, true});
  EXPECT_EQ(i[0].dtype(), DType::kInt32);
  EXPECT_EQ(ivals(i[0]), (std::vector<int64_t>{10, 7}));
  auto empty = run(
      "Range", {Tensor::scalar(DType::kInt64, 3), Tensor::scalar(DType::kInt64, 1), Tensor::scalar(DType::kInt64, 1)},
      {}, {true, true, true});
  EXPECT_EQ(empty[0].shape(), (Shape{0}));
  EXPECT_NE(error_of("Range", {Tensor::scalar(DType::kInt64, 0), Tensor::scalar(DType::kInt64, 4),
                               Tensor::scalar(DType::kInt64, 1)})
                .find("must be a constant"),
            std::string::npos);
}

// ---- layout ops ------------------------------------------------------------------------------------------------

TEST(MovementTranspose, DefaultAndPerm) {
  auto d = run("Transpose", {iota({2, 3})});
  EXPECT_EQ(d[0].shape(), (Shape{3, 2}));
  EXPECT_EQ(fvals(d[0]), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  // A larger case against a direct loop (exercises the threaded path).
  const Shape s = {64, 33, 17};
  auto p = run("Transpose", {iota(s)}, ints_attr("perm", {2, 0, 1}));
  ASSERT_EQ(p[0].shape(), (Shape{17, 64, 33}));
  std::vector<float> got = fvals(p[0]);
  bool same = true;
  for (int64_t a = 0; a < 17; ++a)
    for (int64_t b = 0; b < 64; ++b)
      for (int64_t c = 0; c < 33; ++c) same = same && got[(a * 64 + b) * 33 + c] == (b * 33 + c) * 17 + a;
  EXPECT_TRUE(same);
  // Swapping the last two dims under batch dims (attention's K transpose), with partial tiles.
  auto kt = run("Transpose", {iota({2, 3, 37, 45})}, ints_attr("perm", {0, 1, 3, 2}));
  ASSERT_EQ(kt[0].shape(), (Shape{2, 3, 45, 37}));
  got = fvals(kt[0]);
  same = true;
  for (int64_t b = 0; b < 6; ++b)
    for (int64_t i = 0; i < 45; ++i)
      for (int64_t j = 0; j < 37; ++j) same = same && got[(b * 45 + i) * 37 + j] == (b * 37 + j) * 45 + i;
  EXPECT_TRUE(same);
  EXPECT_NE(error_of("Transpose", {iota({2, 3})}, ints_attr("perm", {0, 0})).find("permutation"), std::string::npos);
}

TEST(MovementConcat, NegativeAxisAndShapeMismatch) {
  Attributes a = int_attr("axis", -1);
  auto out = run("Concat", {f32({1, 2, 3, 4}, {2, 2}), f32({5, 6}, {2, 1})}, a);
  EXPECT_EQ(out[0].shape(), (Shape{2, 3}));
  EXPECT_EQ(fvals(out[0]), (std::vector<float>{1, 2, 5, 3, 4, 6}));
  EXPECT_NE(error_of("Concat", {f32({1, 2, 3, 4}, {2, 2}), f32({5, 6}, {1, 2})}, a).find("does not match"),
            std::string::npos);
  error_of("Concat", {f32({1, 2}, {2})});  // axis is required
}

TEST(MovementSplit, SizesInputEqualPartsAndOpset18Chunks) {
  auto parts = run("Split", {iota({6}), i64({2, 4})}, {}, {false, true}, 2);
  EXPECT_EQ(fvals(parts[0]), (std::vector<float>{0, 1}));
  EXPECT_EQ(fvals(parts[1]), (std::vector<float>{2, 3, 4, 5}));
  auto eq = run("Split", {iota({2, 4})}, int_attr("axis", -1), {}, 2, 13);
  EXPECT_EQ(fvals(eq[0]), (std::vector<float>{0, 1, 4, 5}));
  EXPECT_EQ(fvals(eq[1]), (std::vector<float>{2, 3, 6, 7}));
  // Opset 18: num_outputs with an uneven split makes the last chunk smaller.
  auto chunks = run("Split", {iota({5})}, int_attr("num_outputs", 3), {}, 3, 18);
  EXPECT_EQ(chunks[2].shape(), (Shape{1}));
  EXPECT_EQ(fvals(chunks[1]), (std::vector<float>{2, 3}));
  // Before opset 18 an uneven equal split is an error.
  EXPECT_NE(error_of("Split", {iota({5})}, {}, {}, 3, 13).find("evenly"), std::string::npos);
  auto zero = run("Split", {iota({3}), i64({0, 3, 0})}, {}, {false, true}, 3);
  EXPECT_EQ(zero[0].shape(), (Shape{0}));
  EXPECT_EQ(fvals(zero[1]), (std::vector<float>{0, 1, 2}));
  EXPECT_NE(error_of("Split", {iota({6}), i64({2, 3})}, {}, {false, true}, 2).find("sums to"), std::string::npos);
}

TEST(MovementSlice, StepsClampingAndNegativeAxes) {
  const std::vector<bool> c = {false, true, true, true, true};
  // Reverse the whole axis: start -1, end "minus infinity", step -1.
  auto rev = run("Slice", {iota({5}), i64({-1}), i64({INT64_MIN}), i64({0}), i64({-1})}, {}, c);
  EXPECT_EQ(fvals(rev[0]), (std::vector<float>{4, 3, 2, 1, 0}));
  // Ends past the dim clamp; default axes and steps.
  auto clamp = run("Slice", {iota({2, 5}), i64({0, 1}), i64({1000, 1000})}, {}, c);
  EXPECT_EQ(clamp[0].shape(), (Shape{2, 4}));
  EXPECT_EQ(fvals(clamp[0])[4], 6.0f);
  // Negative axis with step 2 and a negative step on another axis.
  auto mixed = run("Slice", {iota({3, 6}), i64({0, 2}), i64({6, -10}), i64({-1, 0}), i64({2, -2})}, {}, c);
  EXPECT_EQ(mixed[0].shape(), (Shape{2, 3}));
  EXPECT_EQ(fvals(mixed[0]), (std::vector<float>{12, 14, 16, 0, 2, 4}));
  // Start beyond the end: empty.
  EXPECT_EQ(run("Slice", {iota({4}), i64({10}), i64({20})}, {}, c)[0].shape(), (Shape{0}));
  EXPECT_NE(error_of("Slice", {iota({4}), i64({0}), i64({2}), i64({0}), i64({0})}, {}, c).find("steps"),
            std::string::npos);
  EXPECT_NE(error_of("Slice", {iota({4}), i64({0}), i64({2})}).find("must be a constant"), std::string::npos);
  EXPECT_NE(error_of("Slice", {iota({4}), i64({0}), i64({2}), i64({1})}, {}, c).find("out of range"),
            std::string::npos);
}

TEST(MovementExpand, BidirectionalBroadcast) {
  auto out = run("Expand", {f32({1, 2, 3}, {3, 1}), i64({2, 1, 2})}, {}, {false, true});
  EXPECT_EQ(out[0].shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(fvals(out[0]), (std::vector<float>{1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(run("Expand", {iota({2, 3}), i64({1, 1})}, {}, {false, true})[0].shape(), (Shape{2, 3}));
  EXPECT_NE(error_of("Expand", {iota({2, 3}), i64({4, 3})}, {}, {false, true}).find("cannot broadcast"),
            std::string::npos);
}

TEST(MovementTile, Repeats) {
  auto out = run("Tile", {f32({1, 2, 3, 4}, {2, 2}), i64({2, 2})}, {}, {false, true});
  EXPECT_EQ(out[0].shape(), (Shape{4, 4}));
  EXPECT_EQ(fvals(out[0]), (std::vector<float>{1, 2, 1, 2, 3, 4, 3, 4, 1, 2, 1, 2, 3, 4, 3, 4}));
  EXPECT_NE(error_of("Tile", {iota({2, 2}), i64({2})}, {}, {false, true}).find("one entry per"), std::string::npos);
}

TEST(MovementTrilu, UpperLowerWithK) {
  Tensor x = f32({1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3});
  EXPECT_EQ(fvals(run("Trilu", {x})[0]), (std::vector<float>{1, 2, 3, 0, 5, 6, 0, 0, 9}));
  auto lower = run("Trilu", {x, Tensor::from_i64({-1}, {})}, int_attr("upper", 0));
  EXPECT_EQ(fvals(lower[0]), (std::vector<float>{0, 0, 0, 4, 0, 0, 7, 8, 0}));
  auto up1 = run("Trilu", {f32({1, 2, 3, 4, 5, 6}, {2, 3}), Tensor::from_i64({1}, {})});
  EXPECT_EQ(fvals(up1[0]), (std::vector<float>{0, 2, 3, 0, 0, 6}));
  error_of("Trilu", {iota({3})});
}

TEST(MovementCumSum, ExclusiveReverseAndAxes) {
  Tensor x = f32({1, 2, 3, 4, 5}, {5});
  Tensor axis0 = Tensor::from_i64({0}, {});
  EXPECT_EQ(fvals(run("CumSum", {x, axis0})[0]), (std::vector<float>{1, 3, 6, 10, 15}));
  EXPECT_EQ(fvals(run("CumSum", {x, axis0}, int_attr("exclusive", 1))[0]), (std::vector<float>{0, 1, 3, 6, 10}));
  EXPECT_EQ(fvals(run("CumSum", {x, axis0}, int_attr("reverse", 1))[0]), (std::vector<float>{15, 14, 12, 9, 5}));
  Attributes both = int_attr("reverse", 1);
  both.set_int("exclusive", 1);
  EXPECT_EQ(fvals(run("CumSum", {x, axis0}, both)[0]), (std::vector<float>{14, 12, 9, 5, 0}));
  Tensor m = f32({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(fvals(run("CumSum", {m, Tensor::from_i64({-1}, {})})[0]), (std::vector<float>{1, 3, 6, 4, 9, 15}));
  auto ints = run("CumSum", {i64({1, 2, 3, 4, 5, 6}, {2, 3}), Tensor::from_i64({0}, {}).cast(DType::kInt32)});
  EXPECT_EQ(ivals(ints[0]), (std::vector<int64_t>{1, 2, 3, 5, 7, 9}));
  auto half = run("CumSum", {x.cast(DType::kFloat16), axis0});
  EXPECT_EQ(half[0].dtype(), DType::kFloat16);
  EXPECT_EQ(fvals(half[0]), (std::vector<float>{1, 3, 6, 10, 15}));
  error_of("CumSum", {x, Tensor::from_i64({1}, {})}, {}, {false, true});
}

TEST(MovementPad, ConstantReflectEdgeWrapAndCrop) {
  Tensor x = f32({1, 2, 3, 4, 5, 6}, {2, 3});
  std::vector<bool> c = {false, true, true, true};
  auto cst = run("Pad", {x, i64({0, 1, 1, 0}), Tensor::from_f32({9}, {})}, {}, c);
  EXPECT_EQ(cst[0].shape(), (Shape{3, 4}));
  EXPECT_EQ(fvals(cst[0]), (std::vector<float>{9, 1, 2, 3, 9, 4, 5, 6, 9, 9, 9, 9}));
  Attributes reflect;
  reflect.set_string("mode", "reflect");
  EXPECT_EQ(fvals(run("Pad", {x, i64({0, 2, 0, 1})}, reflect, c)[0]),
            (std::vector<float>{3, 2, 1, 2, 3, 2, 6, 5, 4, 5, 6, 5}));
  Attributes edge;
  edge.set_string("mode", "edge");
  EXPECT_EQ(fvals(run("Pad", {x, i64({1, 0, 0, 1})}, edge, c)[0]),
            (std::vector<float>{1, 2, 3, 3, 1, 2, 3, 3, 4, 5, 6, 6}));
  Attributes wrap;
  wrap.set_string("mode", "wrap");
  EXPECT_EQ(fvals(run("Pad", {x, i64({0, 1, 0, 1})}, wrap, c, 1, 19)[0]),
            (std::vector<float>{3, 1, 2, 3, 1, 6, 4, 5, 6, 4}));
  // Negative pads crop.
  auto crop = run("Pad", {x, i64({0, -1, 0, 1})}, {}, c);
  EXPECT_EQ(fvals(crop[0]), (std::vector<float>{2, 3, 0, 5, 6, 0}));
  // Opset 18 axes input: pads apply to the listed axes only.
  auto axes = run("Pad", {x, i64({1, 1}), Tensor(), i64({-1})}, {}, c, 1, 18);
  EXPECT_EQ(axes[0].shape(), (Shape{2, 5}));
  EXPECT_NE(error_of("Pad", {x, i64({1, 1})}, {}, c).find("2 entries per"), std::string::npos);
  EXPECT_NE(error_of("Pad", {x, i64({0, -4, 0, 0})}, {}, c).find("crop"), std::string::npos);
}

// ---- index ops -------------------------------------------------------------------------------------------------

TEST(MovementGather, AxesNegativeIndicesAndErrors) {
  Tensor data = f32({1, 2, 3, 4, 5, 6}, {3, 2});
  auto rows = run("Gather", {data, i64({2, 0, 2}, {3})});
  EXPECT_EQ(rows[0].shape(), (Shape{3, 2}));
  EXPECT_EQ(fvals(rows[0]), (std::vector<float>{5, 6, 1, 2, 5, 6}));
  auto cols = run("Gather", {data, i64({-1}, {1, 1})}, int_attr("axis", -1));
  EXPECT_EQ(cols[0].shape(), (Shape{3, 1, 1}));
  EXPECT_EQ(fvals(cols[0]), (std::vector<float>{2, 4, 6}));
  auto scalar = run("Gather", {data, Tensor::from_i64({1}, {}).cast(DType::kInt32)});
  EXPECT_EQ(scalar[0].shape(), (Shape{2}));
  EXPECT_EQ(fvals(scalar[0]), (std::vector<float>{3, 4}));
  auto half = run("Gather", {data.cast(DType::kBFloat16), i64({1})});
  EXPECT_EQ(fvals(half[0]), (std::vector<float>{3, 4}));
  std::string msg = error_of("Gather", {data, i64({0, 3})});
  EXPECT_NE(msg.find("index 3 at position 1 is out of range"), std::string::npos) << msg;
  error_of("Gather", {data, i64({-4})});
  // Constant indices are checked at inference already.
  EXPECT_NE(error_of("Gather", {data, i64({5})}, {}, {false, true}).find("index 5 at position 0"), std::string::npos);
  error_of("Gather", {data, i64({0})}, int_attr("axis", 2));
}

TEST(MovementGatherGrad, DuplicatesAddAndNegativeIndices) {
  Attributes a = ints_attr("shape", {3, 2});
  a.set_int("axis", 0);
  auto out = run("GatherGrad", {f32({1, 2, 3, 4, 5, 6}, {3, 2}), i64({1, -2, 0})}, a, {}, 1, 1, "galvatron");
  EXPECT_EQ(out[0].shape(), (Shape{3, 2}));
  EXPECT_EQ(fvals(out[0]), (std::vector<float>{5, 6, 4, 6, 0, 0}));
  error_of("GatherGrad", {f32({1, 2}, {1, 2}), i64({3})}, a, {}, 1, 1, "galvatron");
  // padding_idx (PyTorch's Embedding padding row): lookups of that row add nothing.
  Attributes pad = a;
  pad.set_int("padding_idx", -2);
  auto padded = run("GatherGrad", {f32({1, 2, 3, 4, 5, 6}, {3, 2}), i64({1, -2, 0})}, pad, {}, 1, 1, "galvatron");
  EXPECT_EQ(fvals(padded[0]), (std::vector<float>{5, 6, 0, 0, 0, 0}));
  pad.set_int("padding_idx", 3);
  error_of("GatherGrad", {f32({1, 2}, {1, 2}), i64({0})}, pad, {}, 1, 1, "galvatron");
  // A large embedding backward against a direct loop (threaded path).
  const int64_t vocab = 50, dim = 300, n = 400;
  Tensor g = iota({n, dim});
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = (i * 7) % vocab - (i % 3 == 0 ? vocab : 0);
  Attributes big = ints_attr("shape", {vocab, dim});
  auto dx = run("GatherGrad", {g, i64(idx)}, big, {}, 1, 1, "galvatron");
  std::vector<double> ref(vocab * dim, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = idx[i] < 0 ? idx[i] + vocab : idx[i];
    for (int64_t j = 0; j < dim; ++j) ref[row * dim + j] += static_cast<double>(i * dim + j);
  }
  std::vector<float> got = fvals(dx[0]);
  bool same = true;
  for (size_t i = 0; i < ref.size(); ++i) same = same && got[i] == static_cast<float>(ref[i]);
  EXPECT_TRUE(same);
}

TEST(MovementGatherElements, AxisAndErrors) {
  Tensor data = f32({1, 2, 3, 4}, {2, 2});
  auto out = run("GatherElements", {data, i64({0, 0, 1, 0}, {2, 2})}, int_attr("axis", 1));
  EXPECT_EQ(fvals(out[0]), (std::vector<float>{1, 1, 4, 3}));
  auto neg = run("GatherElements", {f32({1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3}), i64({-1, -2, 0, -3, 0, 0}, {2, 3})});
  EXPECT_EQ(fvals(neg[0]), (std::vector<float>{7, 5, 3, 1, 2, 3}));
  EXPECT_NE(error_of("GatherElements", {data, i64({0, 2}, {1, 2})}).find("out of range"), std::string::npos);
  error_of("GatherElements", {data, i64({0, 1}, {2})});
}

TEST(MovementGatherND, BatchDims) {
  auto basic = run("GatherND", {f32({0, 1, 2, 3}, {2, 2}), i64({0, 0, 1, 1}, {2, 2})});
  EXPECT_EQ(fvals(basic[0]), (std::vector<float>{0, 3}));
  auto slices = run("GatherND", {f32({0, 1, 2, 3}, {2, 2}), i64({1, 0}, {2, 1})});
  EXPECT_EQ(fvals(slices[0]), (std::vector<float>{2, 3, 0, 1}));
  auto batched = run("GatherND", {iota({2, 2, 2}), i64({1, 0}, {2, 1})}, int_attr("batch_dims", 1));
  EXPECT_EQ(batched[0].shape(), (Shape{2, 2}));
  EXPECT_EQ(fvals(batched[0]), (std::vector<float>{2, 3, 4, 5}));
  EXPECT_NE(error_of("GatherND", {iota({2, 2}), i64({0, 2}, {1, 2})}).find("out of range"), std::string::npos);
  error_of("GatherND", {iota({2, 2}), i64({0, 0, 0}, {1, 3})});
}

TEST(MovementScatterND, NoneAndAddWithDuplicates) {
  Tensor data = f32({1, 2, 3, 4, 5, 6, 7, 8}, {8});
  auto none = run("ScatterND", {data, i64({4, 3, 1, 7}, {4, 1}), f32({9, 10, 11, 12}, {4})});
  EXPECT_EQ(fvals(none[0]), (std::vector<float>{1, 11, 3, 10, 9, 6, 7, 12}));
  Attributes add;
  add.set_string("reduction", "add");
  auto sum = run("ScatterND", {data, i64({0, 0, -1}, {3, 1}), f32({10, 20, 30}, {3})}, add);
  EXPECT_EQ(fvals(sum[0]), (std::vector<float>{31, 2, 3, 4, 5, 6, 7, 38}));
  auto rows = run("ScatterND", {iota({2, 3}), i64({1}, {1, 1}), f32({7, 8, 9}, {1, 3})});
  EXPECT_EQ(fvals(rows[0]), (std::vector<float>{0, 1, 2, 7, 8, 9}));
  error_of("ScatterND", {data, i64({8}, {1, 1}), f32({1}, {1})});
  error_of("ScatterND", {data, i64({1}, {1, 1}), f32({1, 2}, {2})});
}

TEST(MovementScatterElements, NoneAddAndNegativeIndices) {
  Tensor data(DType::kFloat32, {3, 3});
  auto none = run("ScatterElements", {data, i64({1, 0, 2, 0, 2, 1}, {2, 3}), f32({1, 2, 3, 4, 5, 6}, {2, 3})});
  EXPECT_EQ(fvals(none[0]), (std::vector<float>{4, 2, 0, 1, 0, 6, 0, 5, 3}));
  Attributes add = int_attr("axis", 1);
  add.set_string("reduction", "add");
  auto sum =
      run("ScatterElements", {f32({1, 2, 3, 4, 5}, {1, 5}), i64({1, 1}, {1, 2}), f32({1.1f, 2.1f}, {1, 2})}, add);
  EXPECT_FLOAT_EQ(fvals(sum[0])[1], 5.2f);
  auto neg = run("ScatterElements", {f32({1, 2, 3, 4, 5}, {1, 5}), i64({1, -3}, {1, 2}), f32({1.1f, 2.1f}, {1, 2})},
                 int_attr("axis", 1));
  EXPECT_EQ(fvals(neg[0]), (std::vector<float>{1, 1.1f, 2.1f, 4, 5}));
  error_of("ScatterElements", {f32({1, 2}, {2}), i64({2}), f32({1}, {1})});
  Attributes bad;
  bad.set_string("reduction", "avg");
  error_of("ScatterElements", {f32({1, 2}, {2}), i64({0}), f32({1}, {1})}, bad);
}

// Tensors large enough for the threaded and chunked paths, against direct loops.
TEST(MovementLarge, ThreadedPathsMatchLoops) {
  const int64_t rows = 20, cols = 5000;
  auto ex = run("Expand", {iota({1, cols}), i64({rows, cols})}, {}, {false, true});
  std::vector<float> e = fvals(ex[0]);
  bool same = true;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) same = same && e[r * cols + c] == c;
  EXPECT_TRUE(same);
  auto cat = run("Concat", {iota({rows, cols}), iota({rows, 3})}, int_attr("axis", 1));
  std::vector<float> k = fvals(cat[0]);
  same = true;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) same = same && k[r * (cols + 3) + c] == r * cols + c;
    for (int64_t c = 0; c < 3; ++c) same = same && k[r * (cols + 3) + cols + c] == r * 3 + c;
  }
  EXPECT_TRUE(same);
  const std::vector<bool> c = {false, true, true, true, true};
  auto sl = run("Slice", {iota({rows, cols}), i64({-2}), i64({INT64_MIN}), i64({1}), i64({-3})}, {}, c);
  ASSERT_EQ(sl[0].shape(), (Shape{rows, 1667}));
  std::vector<float> v = fvals(sl[0]);
  same = true;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < 1667; ++j) same = same && v[r * 1667 + j] == r * cols + (cols - 2 - 3 * j);
  EXPECT_TRUE(same);
  auto cs =
      run("CumSum", {Tensor::from_i64(std::vector<int64_t>(rows * cols, 1), {rows, cols}), Tensor::from_i64({0}, {})});
  EXPECT_EQ(ivals(cs[0])[(rows - 1) * cols + 17], rows);
}

TEST(MovementIdentity, Copies) { EXPECT_EQ(fvals(run("Identity", {f32({1, 2}, {2})})[0]), (std::vector<float>{1, 2})); }

TEST(MovementSliceGrad, ScattersIntoZeros) {
  Attributes a = ints_attr("shape", {2, 4});
  a.set_ints("starts", {1, 3});
  a.set_ints("steps", {1, -2});
  auto out = run("SliceGrad", {f32({1, 2}, {1, 2})}, a, {}, 1, 1, "galvatron");
  EXPECT_EQ(fvals(out[0]), (std::vector<float>{0, 0, 0, 0, 0, 2, 0, 1}));
  a.set_ints("steps", {1, 2});
  error_of("SliceGrad", {f32({1, 2}, {1, 2})}, a, {}, 1, 1, "galvatron");
}

}  // namespace
}  // namespace gv::testing
