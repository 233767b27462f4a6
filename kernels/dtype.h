// Element types shared by every layer. Values match ONNX TensorProto.DataType so that the importer and the
// safetensors module can convert without tables of their own.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gv {

enum class DType : int32_t {
  kUndefined = 0,
  kFloat32 = 1,
  kUInt8 = 2,
  kInt8 = 3,
  kUInt16 = 4,  // only the runtime's own state (a float32's low halves: runtime/split_masters.h)
  kInt32 = 6,
  kInt64 = 7,
  kBool = 9,
  kFloat16 = 10,
  kFloat64 = 11,
  kBFloat16 = 16,
};

size_t dtype_size(DType t);
const char* dtype_name(DType t);
bool dtype_is_float(DType t);
bool dtype_is_integer(DType t);
// Returns kUndefined for an ONNX data type the project does not support.
DType dtype_from_onnx(int32_t onnx_type);

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);
// Row-major strides of a contiguous tensor of this shape, in elements.
Shape shape_strides(const Shape& s);

}  // namespace gv
