// Helpers shared by the movement op family (runtime/ops/movement_*.cpp): axis and constant-input reading for
// inference, dispatch from dtypes to kernel instantiations, and small pieces of backward rules.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/autograd.h"
#include "runtime/op_registry.h"

namespace gv::movement {

// GatherGrad's and GatherGradAdd's row that receives nothing: attr padding_idx wrapped into [0, dim) (validated by
// inference), or -1 without it. Also read by the CUDA kernels' wrappers.
inline int64_t gather_grad_skip_row(const Attributes& attrs, int64_t dim) {
  if (!attrs.has("padding_idx")) return -1;
  const int64_t pad = attrs.get_int("padding_idx", -1);
  return pad < 0 ? pad + dim : pad;
}

// The family's parts, each adding its entries (called by register_movement_ops).
void register_shape_ops(OpRegistry& r);   // Reshape Flatten Squeeze Unsqueeze Identity Shape Size Constant ...
void register_layout_ops(OpRegistry& r);  // Transpose Concat Split Expand Tile Trilu CumSum
void register_slice_ops(OpRegistry& r);   // Slice Pad (+ galvatron SliceGrad)
void register_index_ops(OpRegistry& r);   // Gather GatherElements GatherND ScatterND ScatterElements (+ grads)

// A default-domain entry with one output. Callers adjust the rest (outputs, domain) on the returned value.
inline OpSchema make_op(std::string name, int min_inputs, int max_inputs, InferFn infer, KernelFn cpu, GradFn grad,
                        std::vector<int> nondiff_inputs, std::string doc) {
  OpSchema s;
  s.name = std::move(name);
  s.min_inputs = min_inputs;
  s.max_inputs = max_inputs;
  s.infer = infer;
  s.cpu = cpu;
  s.grad = grad;
  s.nondiff_inputs = std::move(nondiff_inputs);
  s.doc = std::move(doc);
  return s;
}

// Maps axis from [-rank, rank) to [0, rank); false when out of range.
inline bool normalize_axis(int64_t& axis, int64_t rank) {
  if (axis < -rank || axis >= rank) return false;
  if (axis < 0) axis += rank;
  return true;
}

// Fails unless the node's axis lies in [-rank, rank); otherwise normalizes it.
Status check_axis(const InferContext& ctx, int64_t& axis, int64_t rank, const std::string& what = "axis");

// Fails unless inputs 0..n-1 are all present (an ONNX node may leave any input name empty).
Status require_inputs(const InferContext& ctx, int n);

// Reads an integer constant input (scalar or 1-D) into `out`. Fails when the input is missing, not constant (it must
// be a constant after shape folding) or not an integer tensor. `what` names the input in messages ("shape").
Status constant_ints(const InferContext& ctx, int input, const std::string& what, std::vector<int64_t>& out);

// Reads an index input at run time (CumSum's axis, Trilu's k): the first element of an int32/int64 tensor.
int64_t read_int_input(const TensorRef& t);
// All elements of an int32/int64 tensor (a constant input read again by a CPU kernel: Slice's starts, Pad's pads).
std::vector<int64_t> read_ints(const TensorRef& t);

// The unsigned integer type of each element size, for kernels that only move elements.
template <typename F>
bool dispatch_by_size(size_t elem_size, F&& f) {
  switch (elem_size) {
    case 1: f(uint8_t{}); return true;
    case 2: f(uint16_t{}); return true;
    case 4: f(uint32_t{}); return true;
    case 8: f(uint64_t{}); return true;
    default: return false;
  }
}

// Arithmetic element types. 16-bit floats are not here: callers widen them first (run_widened).
template <typename F>
bool dispatch_arith(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: f(float{}); return true;
    case DType::kFloat64: f(double{}); return true;
    case DType::kInt32: f(int32_t{}); return true;
    case DType::kInt64: f(int64_t{}); return true;
    default: return false;
  }
}

template <typename F>
bool dispatch_index(DType t, F&& f) {
  switch (t) {
    case DType::kInt32: f(int32_t{}); return true;
    case DType::kInt64: f(int64_t{}); return true;
    default: return false;
  }
}

inline bool is_index_dtype(DType t) { return t == DType::kInt32 || t == DType::kInt64; }
inline bool is_half(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16; }

// Runs `kernel` with every float16/bfloat16 input and output widened to float32, then narrows the outputs back:
// accumulating kernels (CumSum, scatter-adds) sum in float32.
Status run_widened(KernelContext& ctx, KernelFn kernel);

// Strided box copy (cpu::strided_copy) by element size; false for an element size no kernel handles.
bool copy_box(DType dtype, const void* src, const Shape& src_strides, void* dst, const Shape& dst_strides,
              const Shape& dims);

// Copies input 0 to output 0 byte for byte (Reshape, Flatten, Squeeze, Unsqueeze, Identity).
Status copy_kernel(KernelContext& ctx);

// Backward of ops that only reinterpret the shape: the gradient reshaped back to input 0's shape.
Status reshape_back_grad(GradBuilder& gb);

// Emits a zero tensor of this dtype and shape (ConstantOfShape), for gradients that nothing reaches.
ValueId emit_zeros(GradBuilder& gb, DType dtype, const Shape& shape);

// A 1-element tensor holding `v` in `dtype` (ConstantOfShape's value attribute).
Tensor one_element(DType dtype, double v);

// Slice after ONNX normalization: for every dim of the input, the first element, the step and the output extent.
struct SliceBox {
  std::vector<int64_t> starts, steps;
  Shape out_shape;
};
// Normalizes starts/ends/axes/steps (clamping, negative values, default axes and steps) against `in_shape`.
// On error returns a message without node context.
std::string normalize_slice(const Shape& in_shape, const std::vector<int64_t>& starts, const std::vector<int64_t>& ends,
                            std::vector<int64_t> axes, std::vector<int64_t> steps, SliceBox& box);

// "[1, 2, 3]"
std::string ints_str(const std::vector<int64_t>& v);

}  // namespace gv::movement
