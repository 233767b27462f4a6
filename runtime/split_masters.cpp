// split_float32_masters (runtime/split_masters.h).
#include "runtime/split_masters.h"

#include <algorithm>
#include <map>

#include "runtime/bf16_operands.h"
#include "runtime/op_registry.h"

namespace gv {

Status split_float32_masters(TrainingGraph& tg) {
  Graph& g = tg.graph;
  std::map<ValueId, NodeId> adamw;  // parameter -> its AdamW node
  std::map<ValueId, int> readers;   // parameter -> nodes reading it, besides WaitUpdates (which only keeps it alive)
  for (NodeId id = 0; id < static_cast<NodeId>(g.nodes.size()); ++id) {
    const Node& n = g.nodes[id];
    if (n.domain == kGalvatronDomain && n.op_type == "WaitUpdates") continue;
    if (n.domain == kGalvatronDomain && n.op_type == "AdamW" && !n.inputs.empty()) adamw[n.inputs[0]] = id;
    for (ValueId v : n.inputs) {
      if (v != kNoValue && g.value(v).kind == ValueKind::kParameter) ++readers[v];
    }
  }
  for (NodeId id = 0; id < static_cast<NodeId>(tg.prologue_end); ++id) {
    Node& cast = g.nodes[id];
    if (!is_bf16_param_copy(g, cast)) continue;
    const ValueId p = cast.inputs[0], copy = cast.outputs[0];
    auto a = adamw.find(p);
    if (a == adamw.end() || readers[p] != 2 || tg.sharded_masters.count(p)) continue;
    Node& upd = g.nodes[a->second];
    if (upd.inputs.size() < 8 || upd.inputs[7] != copy || upd.attrs.get_int("shard_offset", -1) >= 0) continue;
    if (upd.inputs.size() > 9 && upd.inputs[9] != kNoValue) continue;
    const std::string pname = g.value(p).name;  // copies: add_value below may move the values
    const Shape pshape = g.value(p).shape;
    Value low;
    low.name = "split_master/" + pname + "/low16";
    low.dtype = DType::kUInt16;
    low.shape = pshape;
    low.kind = ValueKind::kState;  // no host data: it lives inside the parameter's buffer (stored_in below)
    low.producer = id;
    const ValueId lo = g.add_value(std::move(low));
    // Both halves inside the parameter's own float32 buffer (4 bytes per element): the copy first (the products'
    // operand, aligned as the buffer is), the low halves after it. The buffer holds no float32 while the halves do.
    const int64_t half_bytes = shape_numel(pshape) * 2;
    g.value(copy).stored_in = p;
    g.value(copy).stored_at = 0;
    g.value(copy).data = Tensor();  // its zeros were for a buffer of its own (2 bytes per parameter of host memory)
    g.value(lo).stored_in = p;
    g.value(lo).stored_at = half_bytes;
    Node& split = g.nodes[id];
    split.op_type = "SplitFloat32";
    split.domain = kGalvatronDomain;
    split.name = "split_master/" + pname;
    split.attrs = Attributes();
    split.outputs = {copy, lo};
    g.nodes[a->second].inputs.resize(std::max<size_t>(g.nodes[a->second].inputs.size(), 10), kNoValue);
    g.nodes[a->second].inputs[9] = lo;
    tg.split_masters[p] = {copy, lo};
  }
  tg.fused.split_masters = static_cast<int>(tg.split_masters.size());
  return Status::ok();
}

}  // namespace gv
