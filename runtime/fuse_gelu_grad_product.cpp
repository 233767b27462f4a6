// fuse_gelu_grad_products (runtime/fusion.h): in a training graph's backward pass, the product into a GELU's output
// and the GELU's gradient, with what reads it,
//
//   FusedMatMul(dY, W) -> dH [-> Reshapes] -> GeluGrad(dH, Pre) -> dP -> { Cast to bf16 (a shared bf16 copy),
//                                                           ReduceSum over the leading axes (the layer's bias grad) }
//
// becomes one galvatron GeluGradMatMul(dY, W, Pre) -> (dP in bf16 where the Cast was, dBias [N]) with the
// ReduceSum turned into a Reshape of dBias to its output's shape (runtime/ops/math_gelu_grad_product.cpp). The CUDA
// backend runs it as one cuBLASLt product with a DGELU epilogue and one column-sum pass. The fused node takes
// GeluGrad's place (every input is ready there, even a Pre that activation checkpointing recomputes after the
// product). Only chains whose intermediates nothing else reads are taken; values stay numbered (dH and the float32
// dP become orphans).
#include <algorithm>
#include <string>
#include <vector>

#include "runtime/bias_sum.h"
#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

bool is_galvatron(const Node& n, const char* op) { return n.op_type == op && n.domain == kGalvatronDomain; }

bool is_bf16_copy(const Node& n) {
  return n.op_type == "Cast" && n.domain.empty() && n.attrs.get_int("to", 0) == 16 &&
         n.name.rfind("bf16_copy/", 0) == 0;
}

}  // namespace

Status fuse_gelu_grad_products(Graph& g, size_t backward_begin, int* fused) {
  const std::vector<int> uses = g.use_counts();
  std::vector<std::vector<NodeId>> readers(g.values.size());
  for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
    for (ValueId v : g.nodes[id].inputs)
      if (v != kNoValue) readers[v].push_back(id);
  }
  std::vector<char> is_output(g.values.size(), 0);
  for (ValueId v : g.outputs) is_output[v] = 1;
  std::vector<char> gone(g.nodes.size(), 0);
  int count = 0;
  for (NodeId gid = static_cast<NodeId>(backward_begin); gid < static_cast<NodeId>(g.nodes.size()); ++gid) {
    const Node& gelu = g.nodes[gid];
    if (!is_galvatron(gelu, "GeluGrad") || gelu.inputs.size() != 2 || gone[gid]) continue;
    const ValueId pre = gelu.inputs[1], dp = gelu.outputs[0];
    ValueId dh = gelu.inputs[0];
    if (uses[dh] != 1 || is_output[dp]) continue;
    // The product may reach the GELU through Reshapes (GPT-2's Gemm: [M, N] products of [B, T, N] activations).
    std::vector<NodeId> views;
    bool shared = false;
    for (NodeId v = g.value(dh).producer; v >= 0 && g.nodes[v].op_type == "Reshape" && g.nodes[v].domain.empty();
         v = g.value(dh).producer) {
      views.push_back(v);
      dh = g.nodes[v].inputs[0];
      shared = shared || uses[dh] != 1;
    }
    if (shared) continue;
    const NodeId mid = g.value(dh).producer;
    if (mid < static_cast<NodeId>(backward_begin) || gone[mid]) continue;
    const Node& mm = g.nodes[mid];
    if (!is_galvatron(mm, "FusedMatMul") || mm.outputs[0] != dh || mm.attrs.get_int("transA", 0) != 0 ||
        mm.attrs.has("out_batch") || mm.attrs.get_double("alpha", 1.0) != 1.0 ||
        mm.attrs.get_int("out_dtype", 1) != 1) {
      continue;
    }
    const Shape& w = g.value(mm.inputs[1]).shape;
    if (g.value(mm.inputs[0]).shape.size() < 2 || w.size() != 2 || g.value(dh).dtype != DType::kFloat32 ||
        g.value(dp).dtype != DType::kFloat32 || g.value(pre).shape.empty() ||
        g.value(pre).shape.back() != g.value(dh).shape.back() ||
        shape_numel(g.value(pre).shape) != shape_numel(g.value(dh).shape)) {
      continue;
    }
    NodeId cast = -1, sum = -1;
    bool other = false;
    for (NodeId r : readers[dp]) {
      if (is_bf16_copy(g.nodes[r]) && cast < 0 && !is_output[g.nodes[r].outputs[0]]) cast = r;
      else if (is_bias_sum(g, g.nodes[r], dp) && sum < 0) sum = r;
      else other = true;
    }
    if (other || (cast < 0 && sum < 0) || static_cast<int>(readers[dp].size()) != uses[dp]) continue;
    Node f;
    f.op_type = "GeluGradMatMul";
    f.domain = kGalvatronDomain;
    f.opset = 1;
    f.name = g.unique_name(mm.name + "/gelu_grad");
    f.inputs = {mm.inputs[0], mm.inputs[1], pre};
    f.attrs.set_int("transB", mm.attrs.get_int("transB", 0));
    f.attrs.set_string("approximate", gelu.attrs.get_string("approximate", "none"));
    f.attrs.set_int("out_dtype", cast >= 0 ? 16 : 1);
    f.place = gelu.place;
    f.outputs = {cast >= 0 ? g.nodes[cast].outputs[0] : dp};
    if (sum >= 0) {
      const int64_t n = w[mm.attrs.get_int("transB", 0) != 0 ? 0 : 1];
      Value db;
      db.name = g.unique_name(f.name + "/bias_grad");
      db.dtype = DType::kFloat32;
      db.shape = {n};
      const ValueId dbias = g.add_value(std::move(db));
      f.outputs.push_back(dbias);
      const Shape out = g.value(g.nodes[sum].outputs[0]).shape;
      const ValueId shape = g.add_initializer(g.unique_name(f.name + "/bias_grad_shape"),
                                              Tensor::from_i64(out, {static_cast<int64_t>(out.size())}),
                                              ValueKind::kConstant);
      Node& reshape = g.nodes[sum];
      reshape.op_type = "Reshape";
      reshape.attrs = Attributes();
      reshape.inputs = {dbias, shape};
      if (!g.opsets.count("") || g.opsets.at("") < 5) reshape.opset = 14;
    }
    gone[mid] = 1;
    for (NodeId v : views) gone[v] = 1;
    if (cast >= 0) gone[cast] = 1;
    g.nodes[gid] = std::move(f);
    ++count;
  }
  if (count == 0) return Status::ok();
  g.erase_nodes(gone);  // reindexes: producers of the moved outputs
  *fused += count;
  return Status::ok();
}

}  // namespace gv
