#include "importer/initializer_classification.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

namespace gv::onnx_import {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool contains_any(const std::string& s, std::initializer_list<const char*> words) {
  for (const char* w : words) {
    if (s.find(w) != std::string::npos) return true;
  }
  return false;
}

// Ops that only move or reinterpret data: a parameter read through them is still the parameter.
bool is_data_movement_op(const std::string& op) {
  static const std::unordered_set<std::string> kOps = {
      "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "CastLike", "Expand",
      "Slice",     "Gather",  "Split",   "Concat",    "Tile",    "GatherElements"};
  return kOps.count(op) != 0;
}

bool is_shape_only_op(const std::string& op) { return op == "Shape" || op == "Size"; }

// Masks: every element is 0, 1 or "minus infinity" (inf, or beyond 1e30, like finfo.min), with at least one such
// infinity, or a rank >= 2 tensor of zeros and ones. Stops at the first ordinary value, so real weights cost nothing.
template <typename Get>
bool values_look_like_mask(int64_t n, int rank, Get get) {
  bool zero = false, one = false, huge = false;
  for (int64_t i = 0; i < n; ++i) {
    const double v = get(i);
    if (v == 0.0) zero = true;
    else if (v == 1.0) one = true;
    else if (!std::isfinite(v) || std::fabs(v) >= 1e30) huge = true;
    else return false;
  }
  return huge || (rank >= 2 && n >= 16 && zero && one);
}
bool values_look_like_mask(const Tensor& t) {
  if (t.dtype() == DType::kFloat32) {  // the common case, read directly (a zero-filled weight is read to the end)
    const float* p = t.data_as<float>();
    return values_look_like_mask(t.numel(), t.rank(), [p](int64_t i) { return static_cast<double>(p[i]); });
  }
  return values_look_like_mask(t.numel(), t.rank(), [&t](int64_t i) { return t.scalar_f64(i); });
}

// Every element compares equal to the first (as numbers: 0.0 == -0.0, a NaN equals nothing).
bool all_equal(const Tensor& t) {
  const int64_t n = t.numel();
  if (n == 0) return true;
  if (t.dtype() == DType::kFloat32) {  // read directly: a zero-filled weight is read to the end
    const float* p = t.data_as<float>();
    return std::all_of(p + 1, p + n, [first = p[0]](float v) { return v == first; });
  }
  const double first = t.scalar_f64(0);
  for (int64_t i = 1; i < n; ++i) {
    if (t.scalar_f64(i) != first) return false;
  }
  return true;
}

}  // namespace

bool is_nondeterministic_op(const std::string& domain, const std::string& op) {
  if (!domain.empty()) return false;
  static const std::unordered_set<std::string> kOps = {"Dropout",          "RandomNormal",     "RandomUniform",
                                                       "RandomNormalLike", "RandomUniformLike", "Multinomial",
                                                       "Bernoulli"};
  return kOps.count(op) != 0;
}

bool name_looks_like_buffer(const std::string& name) {
  std::string s = lower(name);
  return contains_any(s, {"inv_freq", "position_ids", "token_type_ids", "masked_bias", "_cached", "running_mean",
                          "running_var", "num_batches_tracked", "causal_mask", "attention_mask"});
}

bool name_looks_like_weight(const std::string& name) {
  if (name_looks_like_buffer(name)) return false;
  std::string s = lower(name);
  if (s.rfind("onnx::", 0) == 0) return false;  // TorchScript exporter's generated names
  if (contains_any(s, {"weight", "bias", "gamma", "beta", "embed", "kernel", "norm", "lm_head", "wte", "wpe"})) {
    return true;
  }
  // A module path: "encoder.layer.0.attention.q" (dotted, with letters in every part).
  if (s.find('.') == std::string::npos) return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('.', start);
    if (end == std::string::npos) end = s.size();
    std::string part = s.substr(start, end - start);
    if (part.empty()) return false;
    bool ok = std::all_of(part.begin(), part.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
    if (!ok) return false;
    start = end + 1;
  }
  return true;
}

std::set<std::string> classify_parameters(const std::vector<FlatNode>& nodes, const std::vector<int>& order,
                                          const std::map<std::string, Tensor>& initializers,
                                          const std::vector<std::string>& outputs,
                                          const std::set<std::string>& bound_inputs) {
  // 1. Which values are constant when every initializer is: Constant nodes, Shape/Size (shapes are static) and
  //    deterministic ops of constants.
  std::unordered_set<std::string> constant;
  for (const auto& kv : initializers) constant.insert(kv.first);
  constant.insert(bound_inputs.begin(), bound_inputs.end());
  for (int i : order) {
    const FlatNode& n = nodes[i];
    const std::string& op = n.proto.op_type();
    bool c;
    if (n.domain.empty() && (op == "Constant" || is_shape_only_op(op))) {
      c = true;
    } else if (is_nondeterministic_op(n.domain, op)) {
      c = false;
    } else {
      c = true;
      for (const std::string& in : n.proto.input()) c = c && (in.empty() || constant.count(in));
    }
    if (c) {
      for (const std::string& o : n.proto.output()) constant.insert(o);
    }
  }
  // 2. Values whose data reaches a graph output (Shape and Size read only their input's shape).
  std::unordered_set<std::string> needed(outputs.begin(), outputs.end());
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const FlatNode& n = nodes[*it];
    bool live = false;
    for (const std::string& o : n.proto.output()) live = live || (!o.empty() && needed.count(o));
    if (!live || (n.domain.empty() && is_shape_only_op(n.proto.op_type()))) continue;
    for (const std::string& in : n.proto.input()) {
      if (!in.empty()) needed.insert(in);
    }
  }
  // Consumers of each value.
  std::unordered_map<std::string, std::vector<int>> users;
  for (int i : order) {
    for (const std::string& in : nodes[i].proto.input()) {
      if (!in.empty()) users[in].push_back(i);
    }
  }
  // 3. Does the value reach, through data movement over constants, an op that also reads non-constant data?
  // Follows the value through data-movement ops over constants. Returns whether it reaches an op that also reads
  // non-constant data; `*as_weight` tells whether one such op is a MatMul/Gemm/Conv reading it as its weight operand.
  auto feeds_compute = [&](const std::string& start, bool* as_weight) {
    *as_weight = false;
    bool found = false;
    std::vector<std::string> stack{start};
    std::unordered_set<std::string> seen{start};
    while (!stack.empty()) {
      std::string v = stack.back();
      stack.pop_back();
      auto u = users.find(v);
      if (u == users.end()) continue;
      for (int i : u->second) {
        const FlatNode& n = nodes[i];
        bool reads_dynamic = false;
        for (const std::string& in : n.proto.input()) reads_dynamic = reads_dynamic || (!in.empty() && !constant.count(in));
        if (reads_dynamic) {
          found = true;
          const std::string& op = n.proto.op_type();
          const bool weight_op = n.domain.empty() && (op == "MatMul" || op == "Gemm" || op == "Conv" ||
                                                      op == "ConvTranspose");
          for (int k = 0; k < std::min(2, n.proto.input_size()) && weight_op; ++k) {
            *as_weight = *as_weight || n.proto.input(k) == v;
          }
          continue;
        }
        if (n.domain.empty() && is_data_movement_op(n.proto.op_type())) {
          for (const std::string& o : n.proto.output()) {
            if (!o.empty() && seen.insert(o).second) stack.push_back(o);
          }
        }
      }
    }
    return found;
  };

  std::set<std::string> params;
  for (const auto& [name, t] : initializers) {
    if (!dtype_is_float(t.dtype()) || !needed.count(name)) continue;
    if (values_look_like_mask(t)) continue;
    if (name_looks_like_weight(name)) {
      params.insert(name);
    } else if (!name_looks_like_buffer(name) && t.numel() >= 2) {
      // A tensor of one repeated value is a fill (an all-zero attention bias, ones), unless it is the weight of a
      // matrix product: a zero-initialized linear layer whose exporter renamed its weight.
      bool as_weight = false;
      if (feeds_compute(name, &as_weight) && (as_weight || !all_equal(t))) params.insert(name);
    }
  }
  return params;
}

}  // namespace gv::onnx_import
