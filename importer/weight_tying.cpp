#include "importer/weight_tying.h"

#include <cstring>
#include <numeric>
#include <unordered_set>

#include "importer/initializer_classification.h"

namespace gv::onnx_import {

namespace {

constexpr int kSamples = 16;

uint64_t bits(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// A few elements at fixed positions: equal tensors have equal fingerprints.
std::vector<uint64_t> fingerprint(const Tensor& t) {
  std::vector<uint64_t> fp;
  const int64_t n = t.numel();
  for (int k = 0; k < kSamples && n > 0; ++k) fp.push_back(bits(t.scalar_f64(k * (n - 1) / (kSamples - 1))));
  return fp;
}

// Sample positions of an [r, c] matrix.
std::pair<int64_t, int64_t> sample_at(int k, int64_t r, int64_t c) {
  return {k * (r - 1) / (kSamples - 1), ((k * 7) % kSamples) * (c - 1) / (kSamples - 1)};
}

// The fingerprint of a 2-D tensor's transpose, taken in the transpose's coordinates.
std::vector<uint64_t> fingerprint_2d(const Tensor& t, bool transposed) {
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  const int64_t r = transposed ? cols : rows, c = transposed ? rows : cols;  // shape of the matrix sampled
  std::vector<uint64_t> fp;
  if (r == 0 || c == 0) return fp;
  for (int k = 0; k < kSamples; ++k) {
    auto [i, j] = sample_at(k, r, c);
    fp.push_back(bits(t.scalar_f64(transposed ? j * cols + i : i * cols + j)));
  }
  return fp;
}

bool equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// b == a^T, both 2-D.
bool transposed_equal(const Tensor& a, const Tensor& b) {
  if (a.rank() != 2 || b.rank() != 2 || a.dtype() != b.dtype()) return false;
  const int64_t r = a.shape()[0], c = a.shape()[1];
  if (b.shape()[0] != c || b.shape()[1] != r) return false;
  const size_t es = dtype_size(a.dtype());
  const auto* pa = static_cast<const uint8_t*>(a.data());
  const auto* pb = static_cast<const uint8_t*>(b.data());
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < c; ++j) {
      if (std::memcmp(pa + (i * c + j) * es, pb + (j * r + i) * es, es) != 0) return false;
    }
  }
  return true;
}

// Every element has the first one's bytes: the buffer equals itself shifted by one element.
bool all_equal(const Tensor& t) {
  const int64_t n = t.numel();
  if (n <= 1) return true;
  const size_t es = dtype_size(t.dtype());
  const auto* p = static_cast<const uint8_t*>(t.data());
  return std::memcmp(p, p + es, static_cast<size_t>(n - 1) * es) == 0;
}

}  // namespace

std::map<std::string, TiedParameter> find_tied_parameters(const std::vector<FlatNode>& nodes,
                                                          const std::map<std::string, Tensor>& initializers,
                                                          const std::set<std::string>& params,
                                                          const std::vector<std::string>& file_order) {
  // How the parameters are read.
  std::unordered_set<std::string> gather_tables, matmul_operands;
  for (const FlatNode& n : nodes) {
    if (!n.domain.empty()) continue;
    const std::string& op = n.proto.op_type();
    if (op == "Gather" && n.proto.input_size() > 0) gather_tables.insert(n.proto.input(0));
    if (op == "MatMul" || op == "Gemm") {
      for (int k = 0; k < std::min(2, n.proto.input_size()); ++k) matmul_operands.insert(n.proto.input(k));
    }
  }
  // Candidates, in file order.
  std::vector<std::string> names;
  for (const std::string& name : file_order) {
    auto it = initializers.find(name);
    if (!params.count(name) || it == initializers.end() || it->second.numel() < 2 || all_equal(it->second)) continue;
    names.push_back(name);
  }
  const int n = static_cast<int>(names.size());
  auto tensor = [&](int i) -> const Tensor& { return initializers.at(names[i]); };
  // Union-find over the matching pairs.
  std::vector<int> parent(n);
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](int i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  };
  std::map<std::pair<Shape, std::vector<uint64_t>>, std::vector<int>> by_fp, by_fp_2d;
  for (int i = 0; i < n; ++i) {
    by_fp[{tensor(i).shape(), fingerprint(tensor(i))}].push_back(i);
    if (tensor(i).rank() == 2) by_fp_2d[{tensor(i).shape(), fingerprint_2d(tensor(i), false)}].push_back(i);
  }
  bool any = false;
  for (int b = 0; b < n; ++b) {
    const Tensor& tb = tensor(b);
    // Identical copies: an embedding table and a matrix-product operand.
    for (int a : by_fp[{tb.shape(), fingerprint(tb)}]) {
      if (a >= b) continue;
      const bool gather_a = gather_tables.count(names[a]), gather_b = gather_tables.count(names[b]);
      const bool mm_a = matmul_operands.count(names[a]), mm_b = matmul_operands.count(names[b]);
      if (((gather_a && mm_b && !gather_b) || (gather_b && mm_a && !gather_a)) && equal(tensor(a), tb)) {
        parent[find(b)] = find(a);
        any = true;
      }
    }
    // Transposed copies.
    if (tb.rank() != 2) continue;
    Shape ts = {tb.shape()[1], tb.shape()[0]};
    auto it = by_fp_2d.find({ts, fingerprint_2d(tb, true)});
    if (it == by_fp_2d.end()) continue;
    for (int a : it->second) {
      if (a != b && find(a) != find(b) && transposed_equal(tensor(a), tb)) {
        parent[find(b)] = find(a);
        any = true;
      }
    }
  }
  std::map<std::string, TiedParameter> tied;
  if (!any) return tied;
  std::map<int, std::vector<int>> groups;
  for (int i = 0; i < n; ++i) groups[find(i)].push_back(i);
  for (const auto& [root, members] : groups) {
    if (members.size() < 2) continue;
    int keep = members[0];
    for (int m : members) {
      if (name_looks_like_weight(names[m])) {
        keep = m;
        break;
      }
    }
    for (int m : members) {
      if (m == keep) continue;
      if (equal(tensor(keep), tensor(m))) tied[names[m]] = {names[keep], false};
      else if (transposed_equal(tensor(keep), tensor(m))) tied[names[m]] = {names[keep], true};
      // else: related only through another copy (A^T and A^T): leave it a parameter
    }
  }
  return tied;
}

}  // namespace gv::onnx_import
