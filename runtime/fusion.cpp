// The fusion pass runner (runtime/fusion.h): Gemms on flattened inputs unflattened first (the other passes match
// the unflattened form), then rotary embeddings (the attention layout carries them along), then
// attention (its chains contain no GELU), its layout, GELU, RMSNorm and the SwiGLU gate; and the chain replacement
// the GELU, RMSNorm, SwiGLU and rotary passes share.
#include "runtime/fusion.h"

#include <algorithm>
#include <map>
#include <set>

#include "runtime/op_registry.h"

namespace gv {

std::string FusionCounts::summary() const {
  std::string notes;
  if (attention_3d) notes += std::to_string(attention_3d) + " in the 3-D form";
  if (attention_lse) notes += (notes.empty() ? "" : ", ") + std::to_string(attention_lse) + " keeping their LSE";
  if (attention_packed) notes += (notes.empty() ? "" : ", ") + std::to_string(attention_packed) + " on packed QKV";
  if (attention_saved_heads) {
    notes += (notes.empty() ? "" : ", ") + std::to_string(attention_saved_heads) + " keeping padded heads";
  }
  // ", <n> <what>" for the rewrites that happened.
  auto part = [](int n, const char* what) { return n ? ", " + std::to_string(n) + " " + what : std::string(); };
  return std::to_string(attention) + " attention" + (notes.empty() ? "" : " (" + notes + ")") + ", " +
         std::to_string(gelu) + " gelu" + part(rms_norm, "RMSNorm") + part(silu_mul, "SwiGLU gates") +
         part(rotary, "rotary embeddings") + part(linear_cross_entropy, "linear cross-entropy") +
         part(linear, "linear") + part(sibling_linears, "groups of narrow linears as one product") +
         part(unflattened_gemms, "Gemm on flattened inputs as products on [.., K]") +
         part(norm_statistics, "LayerNorms keeping their statistics") + part(bf16_operands, "shared bf16 operands") +
         (bf16_linear_outputs ? " (" + std::to_string(bf16_linear_outputs) + " written in bf16 by their producer)"
                              : "") +
         part(bf16_attention_grads, "dQKV written in bf16") + part(bf16_norm_outputs, "norm outputs in bf16") +
         part(bf16_attention_io, "attention inputs and outputs in bf16") +
         part(gelu_grad_products, "GELU gradients in product epilogues") +
         part(residual_adds, "residual adds in Linear epilogues") +
         part(norm_grad_adds, "residual gradient adds in norm gradients") +
         part(norm_grad_outputs, "norm gradients writing their bf16 copies") +
         part(attention_bias_sums, "attention gradients summing the QKV bias gradient") +
         part(bf16_param_copies, "weight bf16 copies kept by AdamW") +
         part(bf16_weight_grads, "weight gradients in bf16") +
         part(gather_grad_adds, "embedding gradient sums in one node") +
         part(skip_norms, "residual adds moved into the following norm") +
         part(bf16_residual_stream, "residual stream values and norm gradients' inputs in bf16") +
         part(bf16_sharded_updates, "ZeRO-2 updates in bf16 (gradient shards and weight gathers)") +
         part(accumulating_products, "weight-gradient products adding into their accumulators") +
         part(grad_sums_in_products, "gradient sums added by their products") +
         part(split_masters, "float32 masters split into their bf16 copies and low halves") +
         part(updates_in_backward, "optimizer updates beside the backward") +
         (grad_norm_in_updates ? " (summing the gradient norm)" : "");
}

ValueId new_node_output(Graph& graph, NodeId node, const std::string& prefix, DType dtype, Shape shape) {
  Value v;
  v.name = graph.unique_name(prefix);
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.kind = ValueKind::kActivation;
  v.producer = node;
  return graph.add_value(std::move(v));
}

ValueId add_node_output(Graph& graph, NodeId node, const std::string& prefix, DType dtype, Shape shape) {
  const ValueId id = new_node_output(graph, node, prefix, dtype, std::move(shape));
  graph.nodes[node].outputs.push_back(id);
  return id;
}

Expected<FusionCounts> fuse_forward_graph(Graph& graph) {
  FusionCounts counts;
  GV_RETURN_IF_ERROR(unflatten_gemms(graph, &counts.unflattened_gemms));
  GV_RETURN_IF_ERROR(fuse_rotary(graph, &counts.rotary));
  GV_RETURN_IF_ERROR(fuse_attention(graph, &counts.attention));
  GV_RETURN_IF_ERROR(fuse_attention_layout(graph, &counts.attention_3d));
  GV_RETURN_IF_ERROR(fuse_gelu(graph, &counts.gelu));
  GV_RETURN_IF_ERROR(fuse_rms_norm(graph, &counts.rms_norm));
  GV_RETURN_IF_ERROR(fuse_silu_mul(graph, &counts.silu_mul));
  return counts;
}

void add_chain_values(const Graph& graph, ChainReplacement* c) {
  for (NodeId id : c->removed) {
    for (ValueId v : graph.nodes[id].outputs) c->maybe_dead.push_back(v);
    for (ValueId v : graph.nodes[id].inputs)
      if (v != kNoValue && graph.is_constant(v)) c->maybe_dead.push_back(v);
  }
}

int fused_node_opset(const Graph& graph, int since) {
  const auto it = graph.opsets.find("");
  return std::max(since, it != graph.opsets.end() ? it->second : 0);
}

bool replacement_infers(const Graph& graph, const OpSchema& schema, const Node& node) {
  InferContext ctx(graph, node);
  if (!schema.infer(ctx).is_ok() || node.outputs.empty()) return false;
  const Value& y = graph.value(node.outputs[0]);
  return ctx.out_dtypes[0] == y.dtype && ctx.out_shapes[0] == y.shape;
}

void fuse_matches(Graph& graph, const OpSchema& schema, int opset,
                  const std::function<bool(NodeId, ChainReplacement*)>& match, int* fused) {
  std::set<std::string> names;
  for (const Node& n : graph.nodes) names.insert(n.name);
  std::vector<ChainReplacement> chains;
  std::vector<char> claimed(graph.nodes.size(), 0);
  for (NodeId i = 0; i < static_cast<NodeId>(graph.nodes.size()); ++i) {
    ChainReplacement c;
    if (!match(i, &c)) continue;
    bool overlap = claimed[c.final_node] != 0;
    for (NodeId r : c.removed) overlap = overlap || claimed[r] != 0;
    if (overlap) continue;
    std::string name = c.replacement.name;
    for (int k = 1; names.count(name); ++k) name = c.replacement.name + "_" + std::to_string(k);
    names.insert(name);
    c.replacement.name = name;
    c.replacement.opset = opset;
    if (!replacement_infers(graph, schema, c.replacement)) continue;
    claimed[c.final_node] = 1;
    for (NodeId r : c.removed) claimed[r] = 1;
    chains.push_back(std::move(c));
  }
  replace_chains(graph, chains);
  if (fused) *fused += static_cast<int>(chains.size());
}

void replace_chains(Graph& graph, const std::vector<ChainReplacement>& chains) {
  if (chains.empty()) return;
  std::map<NodeId, const ChainReplacement*> by_final;
  std::vector<char> removed(graph.nodes.size(), 0);
  std::set<ValueId> maybe_dead;
  for (const ChainReplacement& c : chains) {
    by_final[c.final_node] = &c;
    for (NodeId r : c.removed) removed[r] = 1;
    maybe_dead.insert(c.maybe_dead.begin(), c.maybe_dead.end());
  }
  std::vector<Node> nodes;
  nodes.reserve(graph.nodes.size());
  for (NodeId i = 0; i < static_cast<NodeId>(graph.nodes.size()); ++i) {
    if (auto it = by_final.find(i); it != by_final.end()) {
      nodes.push_back(it->second->replacement);
    } else if (!removed[i]) {
      nodes.push_back(std::move(graph.nodes[i]));
    }
  }
  graph.nodes = std::move(nodes);
  std::vector<char> referenced(graph.values.size(), 0);
  for (const Node& n : graph.nodes) {
    for (ValueId v : n.inputs)
      if (v != kNoValue) referenced[v] = 1;
    for (ValueId v : n.outputs)
      if (v != kNoValue) referenced[v] = 1;
  }
  for (ValueId v : graph.inputs) referenced[v] = 1;
  for (ValueId v : graph.outputs) referenced[v] = 1;
  std::vector<char> drop(graph.values.size(), 0);
  for (ValueId v : maybe_dead) drop[v] = !referenced[v];
  graph.drop_values(drop);
}

}  // namespace gv
