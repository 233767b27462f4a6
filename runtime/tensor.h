// An owning host tensor: initializers, constants, feeds and results. Copies share the buffer (a handle);
// clone() makes a deep copy.
#pragma once
#include <cstring>
#include <memory>

#include "kernels/tensor_ref.h"

namespace gv {

class Tensor {
 public:
  Tensor() = default;
  // Allocates a zero-filled tensor.
  Tensor(DType dtype, Shape shape);
  // Allocates without zero-filling, for a caller that writes every element next (a copy, a file read): a large
  // tensor then costs one pass over its memory instead of two.
  static Tensor uninitialized(DType dtype, Shape shape);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool defined() const { return dtype_ != DType::kUndefined; }

  void* data() { return buf_.get(); }
  const void* data() const { return buf_.get(); }
  template <typename T>
  T* data_as() { return reinterpret_cast<T*>(buf_.get()); }
  template <typename T>
  const T* data_as() const { return reinterpret_cast<const T*>(buf_.get()); }

  TensorRef ref() { return TensorRef{dtype_, shape_, buf_.get()}; }
  TensorRef ref() const { return TensorRef{dtype_, shape_, const_cast<uint8_t*>(buf_.get())}; }

  Tensor clone() const;
  // Same buffer, new shape of equal numel.
  Tensor reshaped(Shape shape) const;
  // Reads element i as double / int64, whatever the dtype (for small host-side tensors: shapes, scalars).
  double scalar_f64(int64_t i = 0) const;
  int64_t scalar_i64(int64_t i = 0) const;
  std::vector<int64_t> to_i64_vector() const;
  // Converts to another dtype (float <-> int <-> bool).
  Tensor cast(DType to) const;

  static Tensor from_i64(const std::vector<int64_t>& v, Shape shape);
  static Tensor from_f32(const std::vector<float>& v, Shape shape);
  static Tensor scalar(DType dtype, double value);

 private:
  DType dtype_ = DType::kUndefined;
  Shape shape_;
  std::shared_ptr<uint8_t[]> buf_;
};

// One bfloat16 value (bits) as float32 (exact), and a float32 rounded to bfloat16 (nearest even; NaN stays NaN).
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

// Converts between element types (all supported dtypes; float16/bfloat16 round to nearest even).
void convert_elements(const void* src, DType from, void* dst, DType to, int64_t n);

}  // namespace gv
