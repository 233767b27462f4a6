// NumPy .npy files (format versions 1.0, 2.0 and 3.0): a reader and a writer for host tensors, plus the header parser
// that the token-stream data loader uses to read token arrays without widening them.
// Not here: .npz archives, pickled object arrays, structured dtypes, big-endian data, Fortran-order arrays.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv {

// The parsed header of a .npy file.
struct NpyHeader {
  std::string descr;         // as written, e.g. "<u2", "<f4", "|b1"
  char kind = 0;             // 'b' bool, 'i' signed int, 'u' unsigned int, 'f' float
  size_t itemsize = 0;       // bytes per element
  Shape shape;               // () for a scalar
  size_t data_offset = 0;    // bytes from the start of the file to the first element
  int64_t numel() const { return shape_numel(shape); }
};

// Parses the header of the .npy bytes [data, data+size). `path` only names the file in error messages.
// Fails on a bad magic, a malformed header, big-endian or non-numeric dtypes, Fortran order, and data shorter than
// the shape says (truncated file).
Expected<NpyHeader> parse_npy_header(const uint8_t* data, size_t size, const std::string& path);

// Reads a .npy file. Element types map to DType: b1 bool, i1 int8, u1 uint8, i4 int32, i8 int64, f2 float16,
// f4 float32, f8 float64; u2 and i2 are widened to int32 and u4 to int64 (DType has no 16-bit or unsigned 32-bit
// integers). u8 (uint64) is refused.
Expected<Tensor> read_npy(const std::string& path);

// Writes a .npy (version 1.0, little-endian, C order) through a temporary file and a rename. bfloat16 has no
// NumPy dtype and is refused: cast to float32 first.
Status write_npy(const std::string& path, const Tensor& tensor);

// Reads a whole file. Errors name the file: missing, a directory, unreadable.
Expected<std::vector<uint8_t>> read_file_bytes(const std::string& path);
// Writes bytes to path + ".tmp" then renames it over path, so readers never see a half-written file.
Status write_file_atomic(const std::string& path, const void* data, size_t size);

}  // namespace gv
