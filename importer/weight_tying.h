// Tied weights stored twice. PyTorch ties the LM head to the word embedding (one parameter); exporters may still
// write two initializers: the TorchScript exporter keeps the embedding for the Gather and a transposed copy for the
// head's MatMul (bert_opset14's `onnx::MatMul_410`); others keep an identical copy for a Gemm. Trained as two
// parameters they drift apart and AdamW no longer follows PyTorch; the importer makes the copy read the parameter.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "importer/function_inliner.h"
#include "importer/onnx_importer.h"

namespace gv::onnx_import {

// Among the parameters `params`, the copies of another: B == A^T (both 2-D), or B == A when one of them is read by a
// Gather as its table and the other by a MatMul/Gemm. A tensor whose elements are all equal is never tied (two fresh
// LayerNorm weights are equal without being the same parameter). Of each group, the parameter kept is the first (in
// `file_order`) whose name looks like a weight, else the first. Returns copy -> kept parameter.
std::map<std::string, TiedParameter> find_tied_parameters(const std::vector<FlatNode>& nodes,
                                                          const std::map<std::string, Tensor>& initializers,
                                                          const std::set<std::string>& params,
                                                          const std::vector<std::string>& file_order);

}  // namespace gv::onnx_import
