// A non-owning view of a contiguous row-major tensor: what every kernel receives.
#pragma once
#include "kernels/dtype.h"

namespace gv {

struct TensorRef {
  DType dtype = DType::kUndefined;
  Shape shape;
  void* data = nullptr;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int rank() const { return static_cast<int>(shape.size()); }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
};

}  // namespace gv
