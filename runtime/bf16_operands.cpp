// share_bf16_operands (runtime/bf16_operands.h): a Cast to bfloat16 per float32 value that two or more large
// products read, the products rewired to the copy.
#include "runtime/bf16_operands.h"

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "runtime/bias_sum.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

constexpr int64_t kOnnxBFloat16 = 16;
constexpr int64_t kOnnxFloat = 1;

bool is_linear(const Node& n) { return n.op_type == "Linear" && n.domain == kGalvatronDomain; }

bool is_product(const Node& n) {
  return (n.op_type == "MatMul" && n.domain.empty()) || (n.op_type == "FusedMatMul" && n.domain == kGalvatronDomain) ||
         is_linear(n);
}

// The product's m, n, k when it is a float32-result product of rank >= 2 operands whose operands are float32 or
// bfloat16; false otherwise.
bool product_dims(const Graph& g, const Node& n, int64_t& m, int64_t& nn, int64_t& k) {
  const bool linear = is_linear(n);
  if (linear ? n.inputs.size() < 2 : (n.inputs.size() != 2 || n.outputs.size() != 1)) return false;
  const Value &a = g.value(n.inputs[0]), &b = g.value(n.inputs[1]);
  if (a.shape.size() < 2 || b.shape.size() < 2 || g.value(n.outputs[0]).dtype != DType::kFloat32) return false;
  for (const Value* v : {&a, &b}) {
    if (v->dtype != DType::kFloat32 && v->dtype != DType::kBFloat16) return false;
  }
  if (linear) {  // X [.., K] @ op(W): rows stacked
    k = a.shape.back();
    m = k > 0 ? shape_numel(a.shape) / k : 0;
    nn = n.attrs.get_int("transB", 0) != 0 ? b.shape[0] : b.shape[1];
    return b.shape.size() == 2;
  }
  const bool fused = n.op_type == "FusedMatMul";
  const bool ta = fused && n.attrs.get_int("transA", 0) != 0, tb = fused && n.attrs.get_int("transB", 0) != 0;
  const int64_t ar = a.shape[a.shape.size() - 2], ac = a.shape.back();
  const int64_t br = b.shape[b.shape.size() - 2], bc = b.shape.back();
  m = ta ? ac : ar;
  k = ta ? ar : ac;
  nn = tb ? br : bc;
  return true;
}

struct Use {
  NodeId node;
  int slot;
};

// Bias-gradient sums of a value that has a bf16 copy read the copy instead (galvatron BiasGrad, keepdims: the
// ReduceSum's own output value and shape), where the copy is made before the sum: half the bytes, and the float32
// value may then have no reader but its Cast. Not for GeluGrad outputs: fuse_gelu_grad_products takes those whole.
// The sums then add bf16-rounded values, as autocast's bf16 output gradients give.
void bias_sums_read_copies(Graph& graph, const std::map<ValueId, ValueId>& copy_of) {
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    Node& n = graph.nodes[id];
    if (n.op_type != "ReduceSum" || n.inputs.empty()) continue;
    const ValueId v = n.inputs[0];
    auto it = copy_of.find(v);
    if (it == copy_of.end() || !is_bias_sum(graph, n, v)) continue;
    const NodeId src = graph.value(v).producer;
    if (src >= 0 && graph.nodes[src].op_type == "GeluGrad") continue;
    if (graph.value(it->second).producer >= id) continue;  // the copy comes later
    n.op_type = "BiasGrad";
    n.domain = kGalvatronDomain;
    n.opset = 1;
    n.attrs = Attributes();
    n.attrs.set_int("keepdims", 1);
    n.inputs = {it->second};
  }
}

// The shared bf16 copies that their producer can write itself (OpSchema::bf16_outputs: a Linear's output, with its
// pre-activation when only GeluGrad reads that; SiluMul's output and SiluMulGrad's two gradients; AttentionPackedGrad's
// dQKV; a LayerNormalization's or RMSNormalization's Y, through the galvatron twin): where nothing but its Cast reads
// each such output, the node writes the copies (out_dtype 16) and the Casts go. The float32 outputs stay orphan values
// (no node writes or reads them): dropping them would renumber the values that the training graph's maps (gradients,
// optimizer state) already hold. Counted per copy: the norms' in *norm_outputs, AttentionPackedGrad's in
// *attention_grads, the others' in *folded.
Status fold_bf16_outputs(Graph& graph, size_t* boundary, int* folded, int* attention_grads, int* norm_outputs) {
  const OpRegistry& reg = OpRegistry::global();
  const std::vector<int> uses = graph.use_counts();
  std::vector<char> is_output(graph.values.size(), 0);
  for (ValueId o : graph.outputs) is_output[o] = 1;
  std::map<ValueId, NodeId> copy_cast;  // value -> the bf16_copy Cast that is its only reader
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& cast = graph.nodes[id];
    if (cast.op_type != "Cast" || !cast.domain.empty() || cast.name.rfind("bf16_copy/", 0) != 0) continue;
    if (uses[cast.inputs[0]] == 1 && !is_output[cast.inputs[0]]) copy_cast[cast.inputs[0]] = id;
  }
  std::vector<char> gone(graph.nodes.size(), 0);
  int count = 0;
  size_t removed_before_boundary = 0;
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    Node& n = graph.nodes[id];
    const OpSchema* schema = reg.find(n.domain, n.op_type);
    if (!schema || schema->bf16_outputs.copies.empty() || n.attrs.get_int("out_dtype", 1) != 1) continue;
    const Bf16Outputs& b = schema->bf16_outputs;
    bool all = true;
    for (int o : b.copies) all = all && o < static_cast<int>(n.outputs.size()) && copy_cast.count(n.outputs[o]);
    if (!all || (b.allowed && !b.allowed(graph, n))) continue;
    if (!b.twin.empty()) {
      n.domain = b.twin;
      n.opset = 1;
    }
    n.attrs.set_int("out_dtype", kOnnxBFloat16);
    for (int o : b.companions) {
      if (o < static_cast<int>(n.outputs.size()) && n.outputs[o] != kNoValue) {
        graph.value(n.outputs[o]).dtype = DType::kBFloat16;
      }
    }
    for (int o : b.copies) {
      const NodeId cast = copy_cast.at(n.outputs[o]);
      n.outputs[o] = graph.nodes[cast].outputs[0];
      gone[cast] = 1;
      if (boundary && static_cast<size_t>(cast) < *boundary) ++removed_before_boundary;
    }
    const int copies = static_cast<int>(b.copies.size());
    if (n.op_type == "LayerNormalization" || n.op_type == "RMSNormalization")
      *norm_outputs += copies;
    else if (n.op_type == "AttentionPackedGrad")
      *attention_grads += copies;
    else
      count += copies;
  }
  if (std::find(gone.begin(), gone.end(), 1) == gone.end()) return Status::ok();
  graph.erase_nodes(gone);
  if (boundary) *boundary -= removed_before_boundary;
  *folded += count;
  return Status::ok();
}

// Per value: the (node, input slot) pairs that read it.
using Readers = std::vector<std::vector<std::pair<NodeId, size_t>>>;
Readers readers_of(const Graph& graph) {
  Readers readers(graph.values.size());
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    for (size_t i = 0; i < n.inputs.size(); ++i)
      if (n.inputs[i] != kNoValue) readers[n.inputs[i]].push_back({id, i});
  }
  return readers;
}

// A SwiGLU gate whose two inputs are float32 Linear outputs read only by the gate and its gradient (SiluMul A and B,
// SiluMulGrad A and B): both Linears write bf16 (out_dtype), as PyTorch's autocast keeps them, halving what the gate
// and its gradient read. The SiluMul keeps its output's dtype through out_dtype. (No copy is folded: not counted.)
void gate_inputs_in_bf16(Graph& graph, const Readers& readers, const std::vector<char>& is_output) {
  // v (input `slot` of the gate, 0 or 1) is a float32 Linear's only output, read by gates and their gradients alone.
  auto bf16_able = [&](ValueId v, size_t slot) {
    const NodeId p = graph.value(v).producer;
    if (p < 0 || is_output[v] || graph.value(v).dtype != DType::kFloat32) return false;
    const Node& lin = graph.nodes[p];
    if (!is_linear(lin) || lin.outputs.size() != 1 || lin.inputs.size() > 3 || lin.attrs.get_int("out_dtype", 1) != 1) {
      return false;
    }
    for (const auto& [r, i] : readers[v]) {
      const Node& m = graph.nodes[r];
      if (m.domain != kGalvatronDomain) return false;
      if (!(m.op_type == "SiluMul" && i == slot) && !(m.op_type == "SiluMulGrad" && i == slot + 1)) return false;
    }
    return true;
  };
  for (Node& n : graph.nodes) {
    if (n.op_type != "SiluMul" || n.domain != kGalvatronDomain || n.inputs.size() != 2) continue;
    const ValueId a = n.inputs[0], b = n.inputs[1];
    if (a == b || !bf16_able(a, 0) || !bf16_able(b, 1)) continue;
    n.attrs.set_int("out_dtype", static_cast<int64_t>(graph.value(n.outputs[0]).dtype));
    for (ValueId v : {a, b}) {
      graph.nodes[graph.value(v).producer].attrs.set_int("out_dtype", kOnnxBFloat16);
      graph.value(v).dtype = DType::kBFloat16;
    }
  }
}

// SiluMulGrad's dY, the down projection's dX product, written in bf16 by that product when the gate's inputs are bf16
// (gate_inputs_in_bf16) and the gradient is its only reader, as autocast writes it: the kernel, which runs at
// bandwidth, reads 2 bytes of it per element instead of 4, and the product writes 2. The gradient's own outputs keep
// their dtype (out_dtype set where it was implied by dY's).
void gate_grad_input_in_bf16(Graph& graph, const Readers& readers, const std::vector<char>& is_output) {
  for (Node& n : graph.nodes) {
    if (n.op_type != "SiluMulGrad" || n.domain != kGalvatronDomain || n.inputs.size() != 3) continue;
    const ValueId dy = n.inputs[0];
    if (dy == kNoValue || is_output[dy] || readers[dy].size() != 1 || graph.value(dy).dtype != DType::kFloat32) {
      continue;
    }
    if (graph.value(n.inputs[1]).dtype != DType::kBFloat16 || graph.value(n.inputs[2]).dtype != DType::kBFloat16) {
      continue;
    }
    const NodeId p = graph.value(dy).producer;
    if (p < 0) continue;
    Node& prod = graph.nodes[p];
    if (prod.op_type != "FusedMatMul" || prod.domain != kGalvatronDomain || prod.outputs.size() != 1 ||
        prod.attrs.get_int("out_dtype", 1) != 1 || graph.value(prod.inputs[0]).dtype != DType::kBFloat16 ||
        graph.value(prod.inputs[1]).dtype != DType::kBFloat16) {
      continue;
    }
    if (!n.attrs.has("out_dtype")) n.attrs.set_int("out_dtype", static_cast<int64_t>(graph.value(n.outputs[0]).dtype));
    prod.attrs.set_int("out_dtype", kOnnxBFloat16);
    graph.value(dy).dtype = DType::kBFloat16;
  }
}

}  // namespace

Status share_bf16_operands(Graph& graph, const Bf16OperandOptions& options, size_t* boundary, int* copies,
                           int* linear_outputs, int* attention_grads, int* norm_outputs) {
  int unused = 0, unused_norms = 0;
  if (!attention_grads) attention_grads = &unused;
  if (!norm_outputs) norm_outputs = &unused_norms;
  const OpRegistry& reg = OpRegistry::global();
  // Values some node writes in place (an output-less node that is not read-only): a copy made before such a write
  // would go stale.
  std::vector<char> written(graph.values.size(), 0);
  for (const Node& n : graph.nodes) {
    if (!n.outputs.empty()) continue;
    const OpSchema* s = reg.find(n.domain, n.op_type);
    for (size_t i = 0; i < n.inputs.size(); ++i)
      if (n.inputs[i] != kNoValue && node_writes_input(s, n, i)) written[n.inputs[i]] = 1;
  }
  std::map<ValueId, std::vector<Use>> uses;
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    const Node& n = graph.nodes[id];
    if (!is_product(n)) continue;
    int64_t m, nn, k;
    if (!product_dims(graph, n, m, nn, k)) continue;
    if (static_cast<double>(m) * static_cast<double>(nn) < options.min_mn * static_cast<double>(m + nn)) continue;
    for (int slot = 0; slot < 2; ++slot) {
      const ValueId v = n.inputs[slot];
      const Value& val = graph.value(v);
      if (val.dtype != DType::kFloat32 || written[v] || val.shape.back() % options.row_multiple != 0) continue;
      uses[v].push_back({id, slot});
    }
  }
  // Each copy goes right before its first reader: new nodes by the index they precede.
  std::map<NodeId, std::vector<Node>> before;
  std::map<ValueId, ValueId> copy_of;
  int made = 0;
  for (auto& [v, list] : uses) {
    if (list.size() < 2) continue;
    const NodeId first = list.front().node;  // uses were collected in node order
    Value copy;
    copy.name = graph.unique_name(graph.value(v).name + "_bf16");
    copy.dtype = DType::kBFloat16;
    copy.shape = graph.value(v).shape;
    const ValueId c = graph.add_value(std::move(copy));
    copy_of[v] = c;
    Node cast;
    cast.name = graph.unique_name("bf16_copy/" + graph.value(v).name);
    cast.op_type = "Cast";
    cast.opset = graph.opsets.count("") ? graph.opsets.at("") : 13;
    cast.attrs.set_int("to", kOnnxBFloat16);
    cast.inputs = {v};
    cast.outputs = {c};
    cast.place = graph.nodes[first].place;
    before[first].push_back(std::move(cast));
    for (const Use& u : list) {
      Node& n = graph.nodes[u.node];
      if (n.op_type == "MatMul") {
        n.op_type = "FusedMatMul";
        n.domain = kGalvatronDomain;
        n.opset = 1;
        n.attrs = Attributes();
        n.attrs.set_int("transA", 0);
        n.attrs.set_int("transB", 0);
      }
      if (!is_linear(n)) n.attrs.set_int("out_dtype", kOnnxFloat);  // Linear's results are float32 anyway
      n.inputs[u.slot] = c;
    }
    ++made;
  }
  if (made == 0) return Status::ok();  // no copies: nothing to fold either
  if (!graph.opsets.count(kGalvatronDomain)) graph.opsets[kGalvatronDomain] = 1;
  std::vector<Node> nodes;
  nodes.reserve(graph.nodes.size() + static_cast<size_t>(made));
  size_t inserted_before_boundary = 0;
  for (NodeId id = 0; id < static_cast<NodeId>(graph.nodes.size()); ++id) {
    auto it = before.find(id);
    if (it != before.end()) {
      if (boundary && static_cast<size_t>(id) < *boundary) inserted_before_boundary += it->second.size();
      for (Node& n : it->second) nodes.push_back(std::move(n));
    }
    nodes.push_back(std::move(graph.nodes[id]));
  }
  graph.nodes = std::move(nodes);
  graph.reindex();
  if (boundary) *boundary += inserted_before_boundary;
  *copies += made;
  bias_sums_read_copies(graph, copy_of);
  GV_RETURN_IF_ERROR(fold_bf16_outputs(graph, boundary, linear_outputs, attention_grads, norm_outputs));
  // Both rewrite dtypes and attributes only, so one reader map serves them.
  const Readers readers = readers_of(graph);
  std::vector<char> is_output(graph.values.size(), 0);
  for (ValueId o : graph.outputs) is_output[o] = 1;
  gate_inputs_in_bf16(graph, readers, is_output);
  gate_grad_input_in_bf16(graph, readers, is_output);
  return Status::ok();
}

}  // namespace gv
