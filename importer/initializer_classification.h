// Which initializers are trainable parameters (ValueKind::kParameter) and which are constants (kConstant, folded
// with the shape arithmetic they feed). Decided on the flattened ONNX graph before anything is folded.
//
// A floating-point initializer is a parameter when its data reaches a graph output (not only through Shape/Size) and
//  - its name looks like a weight (HF module paths, "weight", "bias", "embed", ...) and it is not a known buffer
//    (inv_freq, position_ids, running_mean, ...); or
//  - it has a generic name (val_12, onnx::MatMul_383, embedding_1) and at least two elements, and it feeds, directly
//    or through data-movement ops (Transpose, Reshape, Gather, ...), an op that also reads non-constant data (so it is
//    not folded away with other constants, like a RoPE inv_freq table), and its elements are not all equal (a fill,
//    like an all-zero attention bias) unless that op is a MatMul/Gemm/Conv reading it as an operand (a zero-initialized
//    linear layer);
// and its values do not look like a mask (only 0, 1 and infinities or values beyond 1e30, with at least one of those;
// or a rank >= 2 tensor of zeros and ones). Everything else is a constant.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "importer/function_inliner.h"
#include "runtime/tensor.h"

namespace gv::onnx_import {

bool name_looks_like_weight(const std::string& name);
bool name_looks_like_buffer(const std::string& name);

// `order`: the nodes in a topological order; `bound_inputs`: graph inputs bound to fixed values (constants).
// Returns the names of the initializers that are parameters.
std::set<std::string> classify_parameters(const std::vector<FlatNode>& nodes, const std::vector<int>& order,
                                          const std::map<std::string, Tensor>& initializers,
                                          const std::vector<std::string>& outputs,
                                          const std::set<std::string>& bound_inputs = {});

// Ops whose result is not a function of their inputs (never folded, never make a value constant).
bool is_nondeterministic_op(const std::string& domain, const std::string& op);

}  // namespace gv::onnx_import
