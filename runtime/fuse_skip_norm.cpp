// fuse_skip_layer_norms (runtime/fusion.h): the residual add moves from the product's epilogue into the LayerNorm
// (or RMSNorm) that reads the new stream:
//
//   S = Linear(X, W, bias?, R)  ;  Y, Mean, InvStdDev = LayerNormalization(S)
//     -> P = Linear(X, W, bias?)  ;  Y, Mean, InvStdDev, S = galvatron SkipLayerNormalization(P, R, Scale, B)
//   S = Linear(X, W, bias?, R)  ;  Y = RMSNormalization(S)
//     -> P = Linear(X, W, bias?)  ;  Y, S = galvatron SkipRMSNormalization(P, R, Scale)
//
// A pre-norm transformer layer adds each branch's output projection to the residual stream and normalizes the
// result for the next branch. cuBLASLt reads a float32 C matrix in its epilogue at about a third of the bandwidth of
// a row kernel (bench/cuda_notes.md entries 30, 42), so the product writes its plain result P (in bfloat16 with
// `branch` bf16, as PyTorch's autocast rounds a linear layer's output) and the norm, which reads a row anyway, adds
// the stream to it and writes the new stream S beside its outputs.
//
// Runs after autograd, on the forward region and any recomputation: every value the backward reads keeps its id and
// meaning (S is still the stream, the norm's input; Mean and InvStdDev its statistics), so the backward is unchanged.
// With a float32 branch the rewrite is exact (the CPU kernels add P + R in the same order as the Linear did).
#include <string>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

// LayerNormalization or RMSNormalization, ONNX's or the galvatron twin writing bf16.
bool is_norm(const Node& n) {
  return (n.op_type == "LayerNormalization" || n.op_type == "RMSNormalization") &&
         (n.domain.empty() || n.domain == kGalvatronDomain);
}

// A Linear adding a residual R: no activation, one float32 result.
bool adds_residual(const Graph& g, const Node& n) {
  return n.op_type == "Linear" && n.domain == kGalvatronDomain && n.inputs.size() == 4 && n.inputs[3] != kNoValue &&
         n.outputs.size() == 1 && n.attrs.get_string("activation", "none") == "none" &&
         n.attrs.get_int("out_dtype", 1) == 1 && g.value(n.outputs[0]).dtype == DType::kFloat32;
}

// The norm over S's last axis that the skip op can take: float32 statistics, S as X only.
bool norm_takes(const Graph& g, const Node& n, ValueId s) {
  if (!is_norm(n) || n.inputs.size() < 2 || n.inputs[0] != s || n.outputs.empty()) return false;
  for (size_t i = 1; i < n.inputs.size(); ++i) {
    if (n.inputs[i] == s) return false;
    if (n.inputs[i] != kNoValue && g.value(n.inputs[i]).dtype != DType::kFloat32) return false;
  }
  const int64_t rank = static_cast<int64_t>(g.value(s).shape.size());
  const int64_t axis = n.attrs.get_int("axis", -1);
  return rank >= 1 && (axis == -1 || axis == rank - 1) && n.attrs.get_int("stash_type", 1) == 1;
}

}  // namespace

Status fuse_skip_layer_norms(Graph& g, DType branch, int* fused) {
  if (branch != DType::kFloat32 && branch != DType::kBFloat16) {
    return invalid_argument("fuse_skip_layer_norms: the branch type must be float32 or bfloat16");
  }
  std::vector<std::vector<NodeId>> readers(g.values.size());
  for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
    for (ValueId v : g.nodes[id].inputs) {
      if (v != kNoValue && (readers[v].empty() || readers[v].back() != id)) readers[v].push_back(id);
    }
  }
  int count = 0;
  for (NodeId lin = 0; lin < static_cast<NodeId>(g.nodes.size()); ++lin) {
    if (!adds_residual(g, g.nodes[lin])) continue;
    const ValueId s = g.nodes[lin].outputs[0], r = g.nodes[lin].inputs[3];
    // The one norm of S; every other reader of S runs after it (it now writes S).
    NodeId norm = -1;
    bool ok = true;
    for (NodeId id : readers[s]) {
      if (!is_norm(g.nodes[id])) continue;
      if (norm >= 0 || !norm_takes(g, g.nodes[id], s)) ok = false;
      norm = id;
    }
    if (!ok || norm < 0) continue;
    for (NodeId id : readers[s]) ok = ok && (id == norm || id > norm);
    if (!ok) continue;

    Value p;
    p.name = g.unique_name(g.value(s).name + "/branch");
    p.dtype = branch;
    p.shape = g.value(s).shape;
    p.kind = ValueKind::kActivation;
    p.producer = lin;
    const ValueId pid = g.add_value(std::move(p));
    Node& linear = g.nodes[lin];
    linear.inputs.resize(3);
    if (linear.inputs[2] == kNoValue) linear.inputs.resize(2);
    linear.outputs[0] = pid;
    if (branch == DType::kBFloat16) linear.attrs.set_int("out_dtype", 16);

    Node& n = g.nodes[norm];
    const bool rms = n.op_type == "RMSNormalization";
    const ValueId scale = n.inputs[1], bias = n.inputs.size() > 2 ? n.inputs[2] : kNoValue;
    if (rms) {  // (X, Skip, Scale) -> (Y, Sum): no statistics
      n.outputs = {n.outputs[0], s};
    } else {
      // Mean and InvStdDev are outputs 1 and 2 of the skip op: given to the norm where it lacks them (unread).
      Shape stats = g.value(s).shape;
      stats.back() = 1;
      const std::string base = n.name.empty() ? g.value(s).name : n.name;
      n.outputs.resize(3, kNoValue);
      for (size_t o = 1; o < 3; ++o) {  // (new values only: the node table, and n, stay)
        if (n.outputs[o] == kNoValue) {
          n.outputs[o] = new_node_output(g, norm, base + (o == 1 ? "_mean" : "_inv_std_dev"), DType::kFloat32, stats);
        }
      }
      n.outputs.push_back(s);
    }
    n.inputs = {pid, r, scale};
    if (bias != kNoValue) n.inputs.push_back(bias);
    if (n.domain.empty()) n.attrs.set_int("out_dtype", 1);
    n.op_type = rms ? "SkipRMSNormalization" : "SkipLayerNormalization";
    n.domain = kGalvatronDomain;
    n.opset = 1;
    n.attrs.set_int("axis", -1);
    ++count;
  }
  if (count > 0) g.reindex();
  *fused += count;
  return Status::ok();
}

}  // namespace gv
