#include "partitioner/comm_volume.h"

namespace gv::partitioner {

CommVolume predict_comm_volume(const ParallelPlan& plan, const RankLayout& r, const Graph& g, int64_t micro_rows,
                               double dp_bytes_scale) {
  CommVolume v;
  // Parameter bytes per place (layer i, or -1 for the embedding and head), and the hidden state's bytes per row.
  std::map<int, double> param_bytes;
  std::map<ValueId, int> owner;
  for (const Node& n : g.nodes) {
    const int place = n.place.kind == Placement::Kind::kLayer ? n.place.layer : -1;
    for (ValueId in : n.inputs) {
      if (in == kNoValue || g.value(in).kind != ValueKind::kParameter || owner.count(in)) continue;
      owner[in] = place;
      param_bytes[place] += static_cast<double>(g.value(in).data.nbytes());
    }
  }
  // The residual stream: the first layer's input, [rows, seq, hidden] floats.
  double act_bytes_per_micro = 0;
  for (const Node& n : g.nodes) {
    if (n.place.kind != Placement::Kind::kLayer || n.place.layer != 0) continue;
    for (ValueId in : n.inputs) {
      if (in == kNoValue || g.value(in).kind != ValueKind::kActivation) continue;
      const NodeId p = g.value(in).producer;
      if (p >= 0 && g.nodes[p].place.kind == Placement::Kind::kEmbedding && dtype_is_float(g.value(in).dtype)) {
        act_bytes_per_micro = std::max(act_bytes_per_micro,
                                       static_cast<double>(shape_numel(g.value(in).shape)) * 4.0);
      }
    }
  }
  const int chunks = std::max(plan.chunks, 1);
  auto dp_msg = [](double d, double bytes) { return d > 1 ? 2.0 * (d - 1) / d * bytes : 0.0; };
  for (int i = 0; i < static_cast<int>(r.layers.size()); ++i) {
    const LayerLayout& l = r.layers[i];
    if (l.stage != r.stage) continue;
    const double p = param_bytes[i] / l.tp;
    const double m = dp_msg(l.dp, p);
    v.dp += l.zero3 ? m : m * dp_bytes_scale;
    if (l.zero3) v.zero3_extra += 0.5 * m;
    if (l.tp > 1) {
      // Activations of this rank's rows over the whole step.
      const double act = act_bytes_per_micro / static_cast<double>(micro_rows) * (micro_rows / l.dp) * chunks;
      double msg = 2.0 * (l.tp - 1) / l.tp * act * 4;
      if (l.checkpoint) msg *= 1.5;
      v.tp += msg;
    }
  }
  // Embedding and head: data parallel over the stage (vtp 1).
  // (ZeRO-2 in bf16 syncs a tied embedding in float32: its Gather reads the float32 weight.)
  const double embedding_scale = plan.default_dp_type == DpType::kZero2 ? 1.0 : dp_bytes_scale;
  if (r.stage == 0 || r.stage == plan.pp_deg - 1) v.dp += dp_msg(r.embedding.dp, param_bytes[-1]) * embedding_scale;
  if (plan.pp_deg > 1) {
    // One activation forward (except the last stage) and one gradient backward (except the first) per micro-batch.
    const double act = act_bytes_per_micro / static_cast<double>(micro_rows) * (micro_rows / r.embedding.dp);
    const int links = (r.stage > 0) + (r.stage < plan.pp_deg - 1);
    v.pp = act * chunks * links;
  }
  return v;
}

CommVolume measured_comm_volume(const std::map<std::string, double>& b) {
  CommVolume v;
  for (const auto& [op, bytes] : b) {
    if (op == "AllReduce" || op == "ReduceScatter" || op == "GatherShardsInPlace") v.dp += bytes;
    else if (op == "AllGather") v.zero3_extra += bytes;
    else if (op == "TensorParallelReduce") v.tp += bytes;
    else if (op == "Send") v.pp += bytes;
  }
  return v;
}

}  // namespace gv::partitioner
