// sum_grads_in_products (runtime/fusion.h): autograd's sums of gradient contributions, where a contribution is a
// float32 FusedMatMul, added by that product into the running sum in place (galvatron MatMulAccumulate, cuBLAS's
// beta = 1):
//
//   S = Add(P, FusedMatMul(A, B))   ->   MatMulAccumulate(P, A, B) where the product stood; S's readers read P
//
// A value read by several products (Llama's normed input by the Q, K and V projections, by the gate and the up
// projections) gets one dX product per reader, and autograd sums them with Adds, each reading two full float32
// tensors and writing a third; folded, each product adds its result into the first one's buffer as it stores. The CPU
// kernel adds the product's float32 result to P as the Add did: the same bits.
// Conditions: the product's output is read only by the Add; P is float32 of the same shape, an activation read only
// by this Add, complete before the product runs (its producer, and any product that already added into it, come
// earlier); S is not a graph output nor in `keep` (gradients the training graph holds by id). Chains fold one after
// another (P, then P + dX2, then P + dX2 + dX3 all in P's buffer).
#include <map>
#include <set>
#include <vector>

#include "runtime/fusion.h"
#include "runtime/op_registry.h"

namespace gv {

Status sum_grads_in_products(Graph& g, size_t backward_begin, const std::set<ValueId>& keep, int* fused) {
  const std::vector<int> uses = g.use_counts();
  const std::set<ValueId> outputs(g.outputs.begin(), g.outputs.end());
  std::vector<char> gone(g.nodes.size(), 0);
  std::map<ValueId, ValueId> renamed;    // a folded Add's output -> the accumulator that now holds it
  std::map<ValueId, NodeId> last_write;  // accumulator -> the last product that added into it
  auto resolve = [&](ValueId v) {
    for (auto it = renamed.find(v); it != renamed.end(); it = renamed.find(v)) v = it->second;
    return v;
  };
  int count = 0;
  for (NodeId id = static_cast<NodeId>(backward_begin); id < static_cast<NodeId>(g.nodes.size()); ++id) {
    const Node& add = g.nodes[id];
    if (add.op_type != "Add" || !add.domain.empty() || add.inputs.size() != 2 || add.outputs.size() != 1) continue;
    const ValueId s = add.outputs[0];
    if (outputs.count(s) || keep.count(s) || g.value(s).dtype != DType::kFloat32) continue;
    for (int slot = 0; slot < 2; ++slot) {
      const ValueId prod = add.inputs[slot], given = add.inputs[1 - slot];
      if (prod == given || uses[prod] != 1 || uses[given] != 1 || outputs.count(prod) || outputs.count(given)) continue;
      const NodeId p = g.value(prod).producer;
      if (p < static_cast<NodeId>(backward_begin) || gone[p]) continue;
      const Node& mm = g.nodes[p];
      if (mm.op_type != "FusedMatMul" || mm.domain != kGalvatronDomain || mm.outputs.size() != 1 ||
          mm.attrs.get_int("out_dtype", 1) != 1) {
        continue;
      }
      const ValueId acc = resolve(given);
      const Value &av = g.value(acc), &pv = g.value(prod);
      if (av.kind != ValueKind::kActivation || av.dtype != DType::kFloat32 || pv.dtype != DType::kFloat32 ||
          av.shape != pv.shape || g.value(s).shape != pv.shape || outputs.count(acc) || keep.count(acc)) {
        continue;
      }
      const NodeId written = last_write.count(acc) ? last_write[acc] : av.producer;
      if (written < 0 || written >= p) continue;
      Node& n = g.nodes[p];
      n.op_type = "MatMulAccumulate";
      n.inputs.insert(n.inputs.begin(), acc);
      n.outputs.clear();
      n.attrs.erase("out_dtype");
      g.value(prod).producer = -1;
      last_write[acc] = p;
      renamed[s] = acc;
      gone[id] = 1;
      ++count;
      break;
    }
  }
  if (count == 0) return Status::ok();
  for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
    if (gone[id]) continue;
    for (ValueId& v : g.nodes[id].inputs)
      if (v != kNoValue) v = resolve(v);
  }
  g.erase_nodes(gone);
  *fused += count;
  return Status::ok();
}

}  // namespace gv
