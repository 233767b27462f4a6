// Ops of the domain "gv.test", registered by the importer's tests so that loading, folding, inlining and layer
// detection can be tested without the real ONNX op families:
//   TestAdd(a, b) -> a + b        (float32, equal shapes)
//   TestScale(x) -> x * alpha     (float32, attribute alpha, default 1)
//   TestNoKernel(x) -> x          (shape inference only, no CPU kernel)
//   TestLinear(x, w) -> x @ w     (float32, x [..., n], w [n, m])
#pragma once
#include "runtime/op_registry.h"

namespace gv::testing {

inline const char* kTestDomain = "gv.test";

inline void register_importer_test_ops() {
  OpRegistry& r = OpRegistry::global();
  if (r.find(kTestDomain, "TestAdd")) return;
  auto same_as_input0 = [](InferContext& c) -> Status {
    for (int i = 0; i < c.num_inputs(); ++i) {
      if (c.dtype(i) != DType::kFloat32) return c.fail("expects float32 inputs");
      if (c.shape(i) != c.shape(0)) return c.fail("expects inputs of equal shapes");
    }
    c.set_output(0, c.dtype(0), c.shape(0));
    return Status::ok();
  };
  OpSchema add;
  add.domain = kTestDomain;
  add.name = "TestAdd";
  add.min_inputs = add.max_inputs = 2;
  add.infer = same_as_input0;
  add.cpu = [](KernelContext& k) -> Status {
    const float* a = static_cast<const float*>(k.inputs[0].data);
    const float* b = static_cast<const float*>(k.inputs[1].data);
    float* y = static_cast<float*>(k.outputs[0].data);
    for (int64_t i = 0; i < shape_numel(k.outputs[0].shape); ++i) y[i] = a[i] + b[i];
    return Status::ok();
  };
  r.add(add);
  OpSchema scale;
  scale.domain = kTestDomain;
  scale.name = "TestScale";
  scale.min_inputs = scale.max_inputs = 1;
  scale.infer = same_as_input0;
  scale.cpu = [](KernelContext& k) -> Status {
    const float alpha = k.attrs().get_float("alpha", 1.0f);
    const float* x = static_cast<const float*>(k.inputs[0].data);
    float* y = static_cast<float*>(k.outputs[0].data);
    for (int64_t i = 0; i < shape_numel(k.outputs[0].shape); ++i) y[i] = x[i] * alpha;
    return Status::ok();
  };
  r.add(scale);
  OpSchema nokernel;
  nokernel.domain = kTestDomain;
  nokernel.name = "TestNoKernel";
  nokernel.min_inputs = nokernel.max_inputs = 1;
  nokernel.infer = same_as_input0;
  r.add(nokernel);
  OpSchema linear;
  linear.domain = kTestDomain;
  linear.name = "TestLinear";
  linear.min_inputs = linear.max_inputs = 2;
  linear.infer = [](InferContext& c) -> Status {
    if (c.rank(0) < 1 || c.rank(1) != 2 || c.shape(0).back() != c.shape(1)[0]) return c.fail("shape mismatch");
    Shape s = c.shape(0);
    s.back() = c.shape(1)[1];
    c.set_output(0, DType::kFloat32, s);
    return Status::ok();
  };
  linear.cpu = [](KernelContext& k) -> Status {
    const int64_t n = k.inputs[1].shape[0], m = k.inputs[1].shape[1], rows = k.inputs[0].numel() / n;
    const float* x = k.inputs[0].as<float>();
    const float* w = k.inputs[1].as<float>();
    float* y = k.outputs[0].as<float>();
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < m; ++j) {
        float acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += x[r * n + i] * w[i * m + j];
        y[r * m + j] = acc;
      }
    }
    return Status::ok();
  };
  r.add(linear);
}

}  // namespace gv::testing
