// HuggingFace safetensors files: an 8-byte little-endian header length N, N bytes of JSON
// ({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}), then the tensor bytes
// (offsets are relative to the first byte after the header).
// Element types: F32 F64 F16 BF16 I64 I32 I8 U8 BOOL. Other safetensors dtypes (I16, U16, U32, U64, F8_*) are refused
// with an error naming the tensor.
#pragma once
#include <map>
#include <string>

#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv {

// Reads every tensor of a safetensors file. Fails, naming the file (and the tensor where there is one), on: a missing
// or unreadable file, a header length beyond the end of the file, a header that is not a JSON object, a duplicate
// name, an entry without a valid dtype / shape / data_offsets, an unsupported dtype, offsets outside the data
// section, offsets whose length does not equal numel * element size, and tensors whose byte ranges overlap.
Expected<std::map<std::string, Tensor>> read_safetensors(const std::string& path);

// Reads only the "__metadata__" string map (empty when the file has none). Validates the header like
// read_safetensors, but reads no tensor data.
Expected<std::map<std::string, std::string>> read_safetensors_metadata(const std::string& path);

// Name, dtype and shape of one tensor, as the header describes it.
struct SafetensorsEntry {
  DType dtype = DType::kUndefined;
  Shape shape;
  uint64_t begin = 0;  // byte offsets within the data section
  uint64_t end = 0;
};
// Reads and validates the header only: the entries by name. For listing a file's contents without loading it.
Expected<std::map<std::string, SafetensorsEntry>> read_safetensors_header(const std::string& path);

// Writes the tensors (and the metadata, when not empty, as "__metadata__") to a temporary file in the directory of
// `path`, flushes it to disk and renames it over `path`: a failure never leaves a partial file under the final name.
// Tensors are laid out by decreasing element size, then by name, so that each one is aligned to its element size.
// Fails on an undefined tensor, the reserved name "__metadata__", a name or metadata string that is not valid UTF-8,
// and I/O errors (naming the file).
Status write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

// The safetensors spelling of a dtype ("F32", "BF16", ...), or nullptr when it has none.
const char* safetensors_dtype_name(DType t);
// The DType of a safetensors dtype string, kUndefined when not supported.
DType dtype_from_safetensors(const std::string& s);

}  // namespace gv
