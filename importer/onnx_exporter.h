// Writes trained weights back into an ONNX model: the same graph, the same names, new initializer data. Models whose
// weights exceed protobuf's 2 GB limit (or that used external data already) get their weights in an external data
// file beside the output. Files are written to temporary names and renamed, so a failure never leaves a partial file.
#pragma once
#include <map>
#include <string>

#include "runtime/tensor.h"
#include "runtime/status.h"

namespace gv {

// Copies `source_model` to `out_path`, replacing each initializer named in `weights` (dtype and shape must match).
Status export_onnx_with_weights(const std::string& source_model, const std::string& out_path,
                                const std::map<std::string, Tensor>& weights);

}  // namespace gv
