// bf16_residual_stream (runtime/bf16_operands.h): the residual stream between the norms of a pre-norm transformer
// kept in bf16 (Megatron's default without --fp32-residual-connection; llm.c's), forward and backward.
//
// After fuse_skip_layer_norms every layer's residual add sits in a galvatron SkipLayerNormalization (or, in Llama's
// layers, SkipRMSNormalization; the same below with RMSNormalizationGrad), whose Sum output is the stream: read by
// the next SkipLayerNormalization (its Skip) and by the norm's own gradient (LayerNormalizationGrad's X). Its gradient
// flows back through the LayerNormalizationGrads: each one's dX is the next (earlier) one's Addend, and its bf16 copy
// dXBf16 (fuse_norm_grad_outputs) is what the branch's products read. Kept in float32 (PyTorch autocast's choice) the
// stream costs each norm kernel a float32 row in and out, forward and backward, which is most of their bytes:
// gpt-1.5b's norms move ~196 MB per layer and step that way.
//
// The rewrite:
//   Sum     SkipLayerNormalization writes it in bf16 (attr sum_dtype 16: rounded, and the norm reads the rounded row)
//           where every reader is another SkipLayerNormalization's Skip or a LayerNormalizationGrad's X;
//   Addend  such a gradient node reads its Addend as the bf16 copy of the previous gradient (dXBf16) instead of the
//           float32 dX; a dX that nothing else reads then gets no buffer (OpSchema::skippable_outputs), so the norm
//           kernel stores only the bf16 copy;
//   dY      and its dY, where a FusedMatMul writes it for this gradient only, comes from the product in bf16 (the
//           rounding PyTorch's autocast gives a product's input gradient).
// A norm gradient reads its X and Addend in one type (the CUDA row kernels take both float32 or both bf16),
// so a Sum goes bf16 only where each of its gradient readers can take its Addend in bf16 (none, or the dXBf16 of
// another LayerNormalizationGrad), and a stream that has gone bf16 stays bf16 downstream (a SkipLayerNormalization
// reads a float32 or bf16 Skip but writes its Sum in bf16 only from a bf16 Skip): the candidates shrink to a fixed
// point. The embedding's float32 sum before the first layer stays float32, and so does the first norm gradient's dX
// (the embedding gradients read it).
//
// Numerics: the stream, its gradient and the norms' output gradients are rounded to bf16 at every layer (as Megatron
// and llm.c do in bf16 training); the norms still compute in float32 and the weights, gradients' reductions and
// optimizer stay float32.
#include <vector>

#include "runtime/bf16_operands.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

constexpr int64_t kOnnxBFloat16 = 16;

// Where the two kinds of norm keep the stream: the skip op's Sum output, and its gradient's Addend input and dX bf16
// copy output (X is input 1 and dY input 0 of both gradients); whether the gradient reads saved statistics (inputs 3
// and 4, LayerNorm's; the RMS gradient recomputes its one).
struct NormKind {
  const char* skip;
  const char* grad;
  size_t sum_out, addend_in, copy_out;
  bool saved_statistics;
};
constexpr NormKind kLayerNorm{"SkipLayerNormalization", "LayerNormalizationGrad", 3, 7, 3, true};
constexpr NormKind kRmsNorm{"SkipRMSNormalization", "RMSNormalizationGrad", 1, 3, 2, false};

bool is_galvatron(const Node& n, const char* op) { return n.op_type == op && n.domain == kGalvatronDomain; }

bool has(const Node& m, size_t i) { return m.inputs.size() > i && m.inputs[i] != kNoValue; }

// A norm gradient the bf16 row kernels take: dY given, the last axis normalized, and for LayerNorm the saved
// statistics given without gradients of them.
bool grad_takes_bf16(const Graph& g, const Node& m, const NormKind& k) {
  if (!has(m, 0) || !has(m, 1)) return false;
  if (k.saved_statistics && (!has(m, 3) || !has(m, 4) || has(m, 5) || has(m, 6))) return false;
  const int64_t axis = m.attrs.get_int("axis", -1), rank = static_cast<int64_t>(g.value(m.inputs[1]).shape.size());
  return axis == -1 || axis == rank - 1;
}

struct Reader {
  NodeId node;
  int slot;
};

// One kind of norm's stream in bf16; the number of values turned bf16. Reads the graph as the previous kind left it.
int stream_in_bf16(Graph& g, const NormKind& k) {
  const int n_values = static_cast<int>(g.values.size());
  std::vector<std::vector<Reader>> readers(n_values);
  for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
    const Node& n = g.nodes[id];
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      if (n.inputs[i] != kNoValue) readers[n.inputs[i]].push_back({id, static_cast<int>(i)});
    }
  }
  std::vector<char> is_output(n_values, 0);
  for (ValueId o : g.outputs) is_output[o] = 1;
  // Candidates: the float32 Sums of skip norms with a bf16 branch, read only as a Skip or as the gradient's X.
  std::vector<char> cand(n_values, 0);
  std::vector<NodeId> skips;
  for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
    const Node& n = g.nodes[id];
    if (!is_galvatron(n, k.skip) || n.outputs.size() <= k.sum_out || n.inputs.size() < 3) continue;
    const ValueId sum = n.outputs[k.sum_out];
    if (g.value(sum).dtype != DType::kFloat32 || g.value(n.inputs[0]).dtype != DType::kBFloat16 || is_output[sum]) {
      continue;
    }
    bool ok = !readers[sum].empty();
    for (const Reader& r : readers[sum]) {
      const Node& m = g.nodes[r.node];
      ok = ok && r.slot == 1 && (is_galvatron(m, k.skip) || (is_galvatron(m, k.grad) && grad_takes_bf16(g, m, k)));
    }
    if (ok) cand[sum] = 1, skips.push_back(id);
  }
  // The bf16 Addend a gradient node would read: the dX bf16 copy of the gradient writing its float32 Addend,
  // kNoValue if there is none.
  auto bf16_addend = [&](const Node& m) -> ValueId {
    if (!has(m, k.addend_in)) return kNoValue;
    const Value& a = g.value(m.inputs[k.addend_in]);
    if (a.producer < 0) return kNoValue;
    const Node& p = g.nodes[a.producer];
    if (!is_galvatron(p, k.grad) || p.outputs.size() <= k.copy_out || p.outputs[0] != m.inputs[k.addend_in]) {
      return kNoValue;
    }
    return p.outputs[k.copy_out];
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (NodeId id : skips) {
      const Node& n = g.nodes[id];
      const ValueId sum = n.outputs[k.sum_out], skip = n.inputs[1];
      if (!cand[sum]) continue;
      bool ok = true;
      for (const Reader& r : readers[sum]) {
        const Node& m = g.nodes[r.node];
        if (is_galvatron(m, k.grad)) ok = ok && (!has(m, k.addend_in) || bf16_addend(m) != kNoValue);
      }
      if (!ok) {
        cand[sum] = 0;
        changed = true;
      }
      // A bf16 Skip needs a bf16 Sum: where this Sum stays float32, so must the Skip it was made from.
      if (!cand[sum] && cand[skip]) {
        cand[skip] = 0;
        changed = true;
      }
    }
  }
  int count = 0;
  for (NodeId id : skips) {
    Node& n = g.nodes[id];
    const ValueId sum = n.outputs[k.sum_out];
    if (!cand[sum]) continue;
    n.attrs.set_int("sum_dtype", kOnnxBFloat16);
    g.value(sum).dtype = DType::kBFloat16;
    ++count;
    for (const Reader& r : readers[sum]) {
      Node& m = g.nodes[r.node];
      if (!is_galvatron(m, k.grad)) continue;
      const ValueId a = bf16_addend(m);
      if (a != kNoValue) m.inputs[k.addend_in] = a;  // the float32 dX, if nothing else reads it, gets no buffer
      // dY from a product read by this gradient only: the product writes it in bf16, as autocast's products give it.
      const ValueId dy = m.inputs[0];
      const Value& dv = g.value(dy);
      if (dv.dtype != DType::kFloat32 || dv.producer < 0 || is_output[dy] || readers[dy].size() != 1) continue;
      Node& p = g.nodes[dv.producer];
      if (!is_galvatron(p, "FusedMatMul") || p.outputs.size() != 1 || p.attrs.get_int("out_dtype", 1) != 1) continue;
      p.attrs.set_int("out_dtype", kOnnxBFloat16);
      g.value(dy).dtype = DType::kBFloat16;
      ++count;
    }
  }
  return count;
}

}  // namespace

Status bf16_residual_stream(Graph& g, int* values) {
  const int count = stream_in_bf16(g, kLayerNorm) + stream_in_bf16(g, kRmsNorm);
  if (values) *values += count;
  return Status::ok();
}

}  // namespace gv
