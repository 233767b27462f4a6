#include "partitioner/rank_program.h"

#include <algorithm>

#include "partitioner/sharded_data_parallel.h"
#include "partitioner/tensor_parallel.h"
#include "partitioner/vocab_parallel.h"
#include "runtime/op_registry.h"

namespace gv::partitioner {
namespace {

// A node of the galvatron domain (communication ops).
Node galvatron_node(const char* op, std::string name) {
  Node n;
  n.op_type = op;
  n.domain = kGalvatronDomain;
  n.opset = 1;
  n.name = std::move(name);
  return n;
}

Attributes group_attr(const std::vector<int>& group) {
  Attributes a;
  a.set_ints("group", std::vector<int64_t>(group.begin(), group.end()));
  return a;
}

// Builds one rank's forward graph out of the imports of the model at each batch slice its layers use.
class StageAssembler {
 public:
  StageAssembler(const ParallelPlan& plan, const RankLayout& layout, int64_t micro_rows, const ImportAtRows& import)
      : plan_(plan), r_(layout), micro_rows_(micro_rows), import_(import) {}

  Status run(RankProgram& out);

 private:
  Expected<const Graph*> import_at(int64_t rows) {
    auto it = imports_.find(rows);
    if (it != imports_.end()) return &it->second;
    GV_ASSIGN_OR_RETURN(Graph g, import_(rows));
    if (!imports_.empty()) {
      const Graph& first = imports_.begin()->second;
      if (first.nodes.size() != g.nodes.size()) {
        return internal_error("the model imported with " + std::to_string(rows) + " rows per batch has " +
                              std::to_string(g.nodes.size()) + " nodes, with " +
                              std::to_string(imports_.begin()->first) + " rows " + std::to_string(first.nodes.size()) +
                              ": the graph's structure depends on the batch size, so layers cannot take different "
                              "batch slices (use one TP degree for every layer)");
      }
    }
    return &imports_.emplace(rows, std::move(g)).first->second;
  }
  const LayerLayout& layout_of(const Placement& p) const {
    if (p.kind == Placement::Kind::kLayer) return r_.layers[p.layer];
    if (p.kind == Placement::Kind::kHead) return r_.head;
    return r_.embedding;
  }
  int64_t rows_of(const LayerLayout& l) const { return micro_rows_ / l.dp; }
  // Redistributes value `x` (layout a, rows ra) to the batch slice of layout b.
  Expected<ValueId> redistribute(ValueId x, const std::string& name, const LayerLayout& a, const LayerLayout& b);
  Expected<ValueId> resolve(const Graph& src, ValueId vid, const LayerLayout& consumer);
  Expected<ValueId> add_node(Node n, std::vector<Value> outs);

  const ParallelPlan& plan_;
  const RankLayout& r_;
  int64_t micro_rows_;
  const ImportAtRows& import_;
  std::map<int64_t, Graph> imports_;
  Graph g_;
  std::vector<int> node_stage_;
  std::map<std::string, int> producer_node_;  // value name -> node index producing it (full graph)
  std::map<std::pair<std::string, int64_t>, ValueId> made_;   // (value name, rows) -> value of g_
  std::map<std::string, ValueId> params_;                     // parameter name -> value of g_
  std::map<std::string, const LayerLayout*> made_layout_;     // value name -> layout of its first version
  std::map<std::tuple<std::string, int, int>, ValueId> redistributed_;  // (name, dp, dp_index) -> value
  std::map<std::pair<std::string, int>, int> p2p_tag_;        // (value name, consumer stage) -> tag
  std::vector<std::pair<ValueId, const LayerLayout*>> input_layouts_;
  std::set<std::string> requires_grad_;

 public:
  std::map<std::string, std::set<int>> param_stages;  // parameter name -> stages whose nodes read it (whole model)
};

Expected<ValueId> StageAssembler::add_node(Node n, std::vector<Value> outs) {
  n.outputs.clear();
  for (Value& v : outs) {
    v.kind = ValueKind::kActivation;
    v.producer = -1;
    n.outputs.push_back(g_.add_value(std::move(v)));
  }
  ValueId first = n.outputs.empty() ? kNoValue : n.outputs[0];
  g_.nodes.push_back(std::move(n));
  return first;
}

Expected<ValueId> StageAssembler::redistribute(ValueId x, const std::string& name, const LayerLayout& a,
                                               const LayerLayout& b) {
  // Decided by the two layouts over the whole stage, not by this rank's slices alone: where they differ, every rank
  // takes part in the collectives (a rank whose own slice happens to stay must still serve the others).
  if (a.dp == b.dp && a.stage_slices == b.stage_slices) return x;
  auto key = std::make_tuple(name, b.dp, b.dp_index);
  if (auto it = redistributed_.find(key); it != redistributed_.end()) return it->second;
  // Does the value carry the batch? Its shape changes with the rows of the import.
  const int64_t ra = rows_of(a);
  GV_ASSIGN_OR_RETURN(const Graph* probe, import_at(ra * 2));
  GV_ASSIGN_OR_RETURN(const Graph* at_a, import_at(ra));
  ValueId va = at_a->find(name), vp = probe->find(name);
  if (va == kNoValue || vp == kNoValue) return internal_error("value '" + name + "' missing from an import");
  const Shape sa = at_a->value(va).shape, sp = probe->value(vp).shape;
  if (sa == sp) return x;  // no batch axis: the same on every rank
  for (size_t i = 1; i < sa.size(); ++i) {
    if (sa.size() != sp.size() || sa[i] != sp[i]) {
      return unsupported("value '" + name + "' crosses from a layer with " + std::to_string(a.dp) + " batch slices to "
                         "one with " + std::to_string(b.dp) + ", but its batch is not its first axis (shape " +
                         shape_str(sa) + "); use one TP degree for the layers around it");
    }
  }
  ValueId cur = x;
  Shape shape = sa;
  Placement none;
  if (a.dp > 1) {
    Node n = galvatron_node("AllGather", g_.unique_name("redistribute/gather/" + name));
    n.inputs = {cur};
    n.attrs = group_attr(a.dp_group);
    n.attrs.set_ints("sizes", std::vector<int64_t>(a.dp, shape[0]));
    n.attrs.set_string("backward", "split");
    Value v = g_.value(cur);
    v.name = g_.unique_name(name + "/gathered");
    shape[0] *= a.dp;
    v.shape = shape;
    GV_ASSIGN_OR_RETURN(cur, add_node(std::move(n), {v}));
  }
  if (b.dp > 1) {
    Node n = galvatron_node("SplitToGroup", g_.unique_name("redistribute/split/" + name));
    n.inputs = {cur};
    n.attrs = group_attr(b.dp_group);
    n.attrs.set_ints("sizes", std::vector<int64_t>(b.dp, shape[0] / b.dp));
    Value v = g_.value(cur);
    v.name = g_.unique_name(name + "/slice");
    shape[0] /= b.dp;
    v.shape = shape;
    GV_ASSIGN_OR_RETURN(cur, add_node(std::move(n), {v}));
  }
  redistributed_[key] = cur;
  return cur;
}

Expected<ValueId> StageAssembler::resolve(const Graph& src, ValueId vid, const LayerLayout& consumer) {
  if (vid == kNoValue) return kNoValue;
  const Value& v = src.value(vid);
  const int64_t rows = rows_of(consumer);
  if (v.kind == ValueKind::kParameter) {
    if (auto it = params_.find(v.name); it != params_.end()) return it->second;
    Value copy = v;
    copy.producer = -1;
    return params_[v.name] = g_.add_value(std::move(copy));
  }
  if (v.kind == ValueKind::kConstant || v.kind == ValueKind::kState) {
    auto key = std::make_pair(v.name, rows);
    if (auto it = made_.find(key); it != made_.end()) return it->second;
    Value copy = v;
    copy.producer = -1;
    if (g_.find(copy.name) != kNoValue) copy.name = g_.unique_name(copy.name);
    return made_[key] = g_.add_value(std::move(copy));
  }
  // Activations and graph inputs: the first version made (the producer's layout, or the input's first consumer's),
  // redistributed to this consumer's batch slice.
  auto first = made_layout_.find(v.name);
  if (first == made_layout_.end()) {
    if (v.kind == ValueKind::kInput) {
      Value in = v;
      in.producer = -1;
      ValueId id = g_.add_value(std::move(in));
      g_.inputs.push_back(id);
      made_[{v.name, rows}] = id;
      made_layout_[v.name] = &consumer;
      input_layouts_.push_back({id, &consumer});
      first = made_layout_.find(v.name);
    } else {
      // Produced by another stage: received from the rank at this position there.
      const int pnode = producer_node_.at(v.name);
      const int pstage = node_stage_[pnode];
      if (pstage >= r_.stage) {
        return internal_error("value '" + v.name + "' is read before it is produced in stage order");
      }
      const LayerLayout& play = layout_of(imports_.begin()->second.nodes[pnode].place);
      GV_ASSIGN_OR_RETURN(const Graph* at_p, import_at(rows_of(play)));
      const Value& pv = at_p->value(at_p->find(v.name));
      Node n = galvatron_node("Recv", g_.unique_name("pipeline/recv/" + v.name));
      n.attrs.set_int("peer", pstage * r_.stage_size + r_.position);
      n.attrs.set_int("tag", p2p_tag_.at({v.name, r_.stage}));
      n.attrs.set_ints("shape", pv.shape);
      n.attrs.set_int("dtype", static_cast<int64_t>(pv.dtype));
      n.attrs.set_int("requires_grad", requires_grad_.count(v.name) ? 1 : 0);
      Value out = pv;
      GV_ASSIGN_OR_RETURN(ValueId id, add_node(std::move(n), {out}));
      made_[{v.name, rows_of(play)}] = id;
      made_layout_[v.name] = &play;
      first = made_layout_.find(v.name);
    }
  }
  const LayerLayout& from = *first->second;
  ValueId base = made_.at({v.name, rows_of(from)});
  return redistribute(base, v.name, from, consumer);
}

Status StageAssembler::run(RankProgram& out) {
  // The import at the embedding's rows gives the structure every rank agrees on (names and order).
  GV_ASSIGN_OR_RETURN(const Graph* base, import_at(rows_of(r_.embedding)));
  const Graph& full = *base;
  if (full.num_layers == 0 && (plan_.pp_deg > 1 || r_.world > 1)) {
    return invalid_argument("no transformer layers were found in the model, so a parallel plan cannot be applied "
                            "(run `galvatron inspect` to see its layer detection)");
  }
  g_.opsets = full.opsets;
  if (!g_.opsets.count(kGalvatronDomain)) g_.opsets[kGalvatronDomain] = 1;
  g_.num_layers = full.num_layers;
  node_stage_.resize(full.nodes.size());
  for (size_t i = 0; i < full.nodes.size(); ++i) {
    const Node& n = full.nodes[i];
    node_stage_[i] = layout_of(n.place).stage;
    for (ValueId o : n.outputs) producer_node_[full.value(o).name] = static_cast<int>(i);
  }
  for (size_t i = 0; i < full.nodes.size(); ++i) {
    for (ValueId in : full.nodes[i].inputs) {
      if (in != kNoValue && full.value(in).kind == ValueKind::kParameter) {
        param_stages[full.value(in).name].insert(node_stage_[i]);
      }
    }
  }
  // Values that depend on a parameter (their gradient flows back through a pipeline boundary).
  {
    std::set<ValueId> dep;
    for (ValueId p : full.parameters()) dep.insert(p);
    for (const Node& n : full.nodes) {
      bool any = false;
      for (ValueId in : n.inputs) any = any || (in != kNoValue && dep.count(in));
      if (!any) continue;
      for (ValueId o : n.outputs) {
        if (dtype_is_float(full.value(o).dtype)) dep.insert(o), requires_grad_.insert(full.value(o).name);
      }
    }
  }
  // Every (value, consumer stage) pair that crosses stages gets a tag pair (2k forward, 2k + 1 gradient), numbered
  // in graph order so that every rank agrees.
  std::map<std::pair<std::string, int>, int> sends_of_mine;  // (name, dest stage)
  for (size_t i = 0; i < full.nodes.size(); ++i) {
    for (ValueId in : full.nodes[i].inputs) {
      if (in == kNoValue || full.value(in).kind != ValueKind::kActivation) continue;
      const std::string& name = full.value(in).name;
      const int pstage = node_stage_[producer_node_.at(name)];
      const int cstage = node_stage_[i];
      if (pstage == cstage) continue;
      auto key = std::make_pair(name, cstage);
      if (!p2p_tag_.count(key)) {
        const int k = static_cast<int>(p2p_tag_.size());
        if (k >= 16384) return unsupported("more than 16384 values cross pipeline stages");
        p2p_tag_[key] = 2 * k;
        if (pstage == r_.stage) sends_of_mine[key] = 2 * k;
      }
    }
  }
  // This stage's nodes, each from the import at its layout's rows.
  std::vector<ValueId> tokens;
  auto emit_sends_for = [&](const std::string& name, ValueId id) -> Status {
    for (const auto& [key, tag] : sends_of_mine) {
      if (key.first != name) continue;
      Node n = galvatron_node("Send", g_.unique_name("pipeline/send/" + name));
      n.inputs = {id};
      n.attrs.set_int("peer", key.second * r_.stage_size + r_.position);
      n.attrs.set_int("tag", tag);
      n.attrs.set_int("requires_grad", requires_grad_.count(name) ? 1 : 0);
      Value token;
      token.name = g_.unique_name("pipeline/token/" + name);
      token.dtype = DType::kFloat32;
      token.shape = {};
      GV_ASSIGN_OR_RETURN(ValueId t, add_node(std::move(n), {token}));
      tokens.push_back(t);
    }
    return Status::ok();
  };
  for (size_t i = 0; i < full.nodes.size(); ++i) {
    if (node_stage_[i] != r_.stage) continue;
    const LayerLayout& lay = layout_of(full.nodes[i].place);
    GV_ASSIGN_OR_RETURN(const Graph* src, import_at(rows_of(lay)));
    const Node& sn = src->nodes[i];
    if (sn.name != full.nodes[i].name || sn.op_type != full.nodes[i].op_type) {
      return internal_error("imports at different batch sizes disagree at node '" + sn.name + "'");
    }
    Node n = sn;
    for (ValueId& in : n.inputs) {
      GV_ASSIGN_OR_RETURN(in, resolve(*src, in, lay));
    }
    std::vector<Value> outs;
    for (ValueId o : sn.outputs) outs.push_back(src->value(o));
    n.outputs.clear();
    GV_RETURN_IF_ERROR(add_node(std::move(n), outs).status());
    const Node& added = g_.nodes.back();
    for (size_t k = 0; k < sn.outputs.size(); ++k) {
      const std::string& name = src->value(sn.outputs[k]).name;
      made_[{name, rows_of(lay)}] = added.outputs[k];
      made_layout_[name] = &lay;
    }
    const std::vector<ValueId> produced = g_.nodes.back().outputs;
    for (size_t k = 0; k < sn.outputs.size(); ++k) {
      GV_RETURN_IF_ERROR(emit_sends_for(src->value(sn.outputs[k]).name, produced[k]));
    }
  }
  // Outputs: the model's own on the last stage; elsewhere the sum of the send tokens stands in for the loss, so that
  // the backward pass reaches every Send.
  if (r_.stage == plan_.pp_deg - 1) {
    GV_ASSIGN_OR_RETURN(const Graph* at_head, import_at(rows_of(r_.head)));
    for (ValueId o : at_head->outputs) {
      auto it = made_.find({at_head->value(o).name, rows_of(r_.head)});
      if (it == made_.end()) return internal_error("graph output '" + at_head->value(o).name + "' was not built");
      g_.outputs.push_back(it->second);
    }
  } else {
    if (tokens.empty()) return internal_error("pipeline stage " + std::to_string(r_.stage) + " sends nothing");
    Node n;
    n.op_type = "Sum";
    n.opset = g_.opsets.count("") ? g_.opsets.at("") : 17;
    n.name = "pipeline/loss_tokens";
    n.inputs = tokens;
    Value v;
    v.name = "pipeline.loss_tokens";
    v.dtype = DType::kFloat32;
    v.shape = {};
    GV_ASSIGN_OR_RETURN(ValueId sum, add_node(std::move(n), {v}));
    g_.outputs.push_back(sum);
  }
  g_.reindex();
  for (const auto& [id, lay] : input_layouts_) out.input_slices[g_.value(id).name] = {lay->dp_index, lay->dp};
  out.input_slices["labels"] = {r_.head.dp_index, r_.head.dp};
  out.forward = std::move(g_);
  return Status::ok();
}

}  // namespace

std::vector<TrainerConfig::PipelineStep> pipeline_schedule(const std::string& type, int stages, int stage, int m,
                                                           int* in_flight) {
  std::vector<TrainerConfig::PipelineStep> s;
  if (type == "gpipe" || stages == 1) {
    if (stages == 1) {
      for (int i = 0; i < m; ++i) s.push_back({false, i}), s.push_back({true, i});
      *in_flight = 1;
      return s;
    }
    for (int i = 0; i < m; ++i) s.push_back({false, i});
    for (int i = 0; i < m; ++i) s.push_back({true, i});
    *in_flight = m;
    return s;
  }
  const int warmup = std::min(stages - stage - 1, m);
  for (int i = 0; i < warmup; ++i) s.push_back({false, i});
  for (int i = 0; i < m - warmup; ++i) s.push_back({false, warmup + i}), s.push_back({true, i});
  for (int i = m - warmup; i < m; ++i) s.push_back({true, i});
  *in_flight = std::min(warmup + 1, m);
  return s;
}

Expected<RankProgram> build_rank_program(const ParallelPlan& plan, int world, int rank, int64_t global_batch,
                                         const ImportAtRows& import_at_rows) {
  RankProgram out;
  const int L = static_cast<int>(plan.tp_sizes.size());
  GV_RETURN_IF_ERROR(validate_plan(plan, L, world, static_cast<int>(global_batch)));
  GV_ASSIGN_OR_RETURN(out.layout, rank_layout(plan, L, world, rank));
  const RankLayout& r = out.layout;
  out.chunks = std::max(plan.chunks, 1);
  const int64_t micro_rows = global_batch / out.chunks;
  StageAssembler assembler(plan, r, micro_rows, import_at_rows);
  GV_RETURN_IF_ERROR(assembler.run(out));
  Graph& g = out.forward;
  if (g.num_layers != L) {
    return invalid_argument("the plan is for " + std::to_string(L) + " layers, the model has " +
                            std::to_string(g.num_layers));
  }

  // Tensor parallelism of this stage's layers.
  std::vector<TensorParallelLayer> tp_layers;
  for (int i = 0; i < L; ++i) {
    const LayerLayout& l = r.layers[i];
    if (l.stage != r.stage || l.tp == 1) continue;
    tp_layers.push_back({i, l.tp, l.tp_index, l.tp_group});
  }
  std::map<std::string, TensorShard> tp_shards;
  if (!tp_layers.empty()) {
    GV_ASSIGN_OR_RETURN(tp_shards, apply_tensor_parallel(g, tp_layers));
  }

  // Vocabulary parallelism of the embedding and head (the same TP group at this position of the first and last
  // stage); the graph then computes its own vocabulary-parallel loss.
  if (plan.vtp > 1 && (r.stage == 0 || r.stage == plan.pp_deg - 1)) {
    const LayerLayout& v = r.stage == plan.pp_deg - 1 ? r.head : r.embedding;
    GV_ASSIGN_OR_RETURN(auto vocab_shards, apply_vocab_parallel(g, {plan.vtp, v.tp_index, v.tp_group}));
    for (auto& [name, shard] : vocab_shards) tp_shards[name] = shard;
  }

  // Which layout each parameter belongs to (its consumers' place), which stages hold it (tied weights).
  auto layout_of = [&](const Placement& p) -> const LayerLayout& {
    if (p.kind == Placement::Kind::kLayer) return r.layers[p.layer];
    if (p.kind == Placement::Kind::kHead) return r.head;
    return r.embedding;
  };
  std::map<std::string, const LayerLayout*> param_layout;  // by name: ZeRO-3 gives a parameter a new value
  for (const Node& n : g.nodes) {
    for (ValueId in : n.inputs) {
      if (in == kNoValue || g.value(in).kind != ValueKind::kParameter) continue;
      const LayerLayout& l = layout_of(n.place);
      auto [it, fresh] = param_layout.emplace(g.value(in).name, &l);
      if (!fresh && !(*it->second == l)) {
        return unsupported("parameter '" + g.value(in).name + "' is used by parts of the model with different "
                           "parallel layouts (e.g. layers of different TP degree); give them one strategy");
      }
    }
  }
  // Stages using each parameter, over the whole model (tied weights).
  const std::map<std::string, std::set<int>>& param_stages = assembler.param_stages;

  // ZeRO-3 layers: shard their parameters over the DP group, gathered before use.
  std::vector<ShardedParam> zero3;
  for (const auto& [name, l] : param_layout) {
    if (l->zero3 && l->dp > 1 && shape_numel(g.value(g.find(name)).shape) >= l->dp) {
      zero3.push_back({name, l->dp_group, l->dp_index});
    }
  }
  std::map<std::string, Shape> piece_shapes;  // before ZeRO-3 flattens them: the TP piece (or whole) shape
  for (ValueId p : g.parameters()) piece_shapes[g.value(p).name] = g.value(p).shape;
  std::map<std::string, std::pair<int64_t, int64_t>> zero3_ranges;
  if (!zero3.empty()) {
    GV_ASSIGN_OR_RETURN(zero3_ranges, apply_sharded_data_parallel(g, zero3));
  }

  // Every parameter: its piece of the whole tensor, its gradient synchronisation, its weight in the global norm.
  for (ValueId p : g.parameters()) {
    const std::string& name = g.value(p).name;
    auto pl = param_layout.find(name);
    if (pl == param_layout.end()) {
      return internal_error("parameter '" + name + "' is read by no node of this rank's graph");
    }
    const LayerLayout& l = *pl->second;
    static const std::set<int> kNone;
    auto ps_it = param_stages.find(name);
    const std::set<int>& stages = ps_it == param_stages.end() ? kNone : ps_it->second;
    TensorShard s;
    if (auto it = tp_shards.find(name); it != tp_shards.end()) {
      s = it->second;
    } else {
      s.global_name = name;
      s.global_shape = piece_shapes.at(name);
    }
    const bool tp_split = s.axis >= 0;
    const bool first_stage_copy = stages.empty() || *stages.begin() == r.stage;
    const bool zero3_sharded = zero3_ranges.count(name) > 0;
    if (zero3_sharded) {
      s.flat_begin = zero3_ranges[name].first;
      s.flat_end = zero3_ranges[name].second;
    }
    s.owner = (tp_split || l.tp_index == 0) && (zero3_sharded || l.dp_index == 0) && first_stage_copy;
    s.owner_of_dp_range = (tp_split || l.tp_index == 0) && first_stage_copy;
    out.shards[name] = s;

    TrainingGraphOptions::ParamSync sync;
    // ZeRO-2 shards matrices; vectors (biases, norm scales) are all-reduced and updated whole, as under DDP: sharding
    // one saves a few KB per rank but costs its own reduce-scatter, gather and update launch (~40 us per step each;
    // gpt-1.5b has ~390), where DDP's small all-reduces hide in the backward pass and its updates go 48 per launch.
    const bool zero2 = plan.default_dp_type == DpType::kZero2 && !zero3_sharded && piece_shapes.at(name).size() >= 2;
    if (!zero3_sharded) sync.dp_group = l.dp_group;
    sync.zero2 = zero2;
    if (stages.size() > 1) {
      for (int st : stages) sync.tied_group.push_back(st * r.stage_size + r.position);
    }
    double copies = (tp_split ? 1 : l.tp) *
                    (zero3_sharded || (zero2 && l.dp > 1 && shape_numel(piece_shapes.at(name)) >= l.dp) ? 1 : l.dp) *
                    std::max<size_t>(stages.size(), 1);
    sync.norm_weight = 1.0 / copies;
    out.param_sync[name] = sync;
  }

  for (int i = 0; i < L; ++i) {
    if (r.layers[i].stage == r.stage && r.layers[i].checkpoint) out.checkpoint_layers.insert(i);
  }
  out.schedule = pipeline_schedule(plan.pipeline_type, plan.pp_deg, r.stage, out.chunks, &out.in_flight);
  out.loss_replicas = r.head.dp;
  out.loss_divisor = r.stage_size;
  return out;
}

}  // namespace gv::partitioner
