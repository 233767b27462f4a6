// Memory profile from the IR (ir_profile.h).
//
// Tensor-parallel split, by data flow over the forward nodes (the standard Megatron split): a "weight matmul" is a
// MatMul/Gemm with one operand derived from parameters only. Its output is sharded when its activation operand is
// replicated (column parallel: Q/K/V, FFN up/gate, LM head over the vocabulary) and replicated when the operand is
// sharded (row parallel: attention output and FFN down projections, after their all-reduce). Every other node's output
// is sharded when one of its activation inputs is sharded. So the attention and FFN interiors are divided by the TP
// degree and the residual stream, norms and embedding output are held by every rank.
#include "partitioner/ir_profile.h"

#include <algorithm>
#include <set>

#include "runtime/training_graph.h"

namespace gv::partitioner {
namespace {

constexpr double kMB = 1024.0 * 1024.0;

bool is_weight_matmul_op(const std::string& op) {
  return op == "MatMul" || op == "Gemm" || op.find("MatMul") != std::string::npos;
}

// Values computed from parameters (and constants) only: parameters, their transposes / casts / reshapes.
std::vector<char> param_derived(const Graph& g) {
  std::vector<char> pd(g.values.size(), 0);
  for (size_t v = 0; v < g.values.size(); ++v) pd[v] = g.values[v].kind == ValueKind::kParameter;
  for (const Node& n : g.nodes) {
    bool any = false, all = true;
    for (ValueId in : n.inputs) {
      if (in == kNoValue) continue;
      const Value& v = g.value(in);
      if (pd[in]) any = true;
      else if (v.kind != ValueKind::kConstant) all = false;
    }
    if (any && all)
      for (ValueId o : n.outputs) pd[o] = 1;
  }
  return pd;
}

// Sharded flags of the values produced by nodes [0, end).
std::vector<char> tp_sharded(const Graph& g, size_t end, const std::vector<char>& pd) {
  std::vector<char> sh(g.values.size(), 0);
  for (size_t i = 0; i < end && i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    bool out = false;
    int weights = 0;
    bool act_sharded = false;
    for (ValueId in : n.inputs) {
      if (in == kNoValue) continue;
      if (pd[in]) ++weights;
      else if (sh[in]) act_sharded = true;
    }
    if (is_weight_matmul_op(n.op_type) && weights >= 1 && n.inputs.size() >= 2) {
      out = !act_sharded;  // column parallel when fed a replicated activation, row parallel otherwise
    } else {
      out = act_sharded;
    }
    for (ValueId o : n.outputs) sh[o] = out && !pd[o];
  }
  return sh;
}

int64_t value_bytes(const Value& v, int float_bytes) {
  int64_t per = dtype_is_float(v.dtype) ? float_bytes : static_cast<int64_t>(dtype_size(v.dtype));
  return shape_numel(v.shape) * per;
}

int64_t find_vocab(const Graph& g, int64_t given) {
  if (given > 0) return given;
  for (ValueId v : g.outputs) {
    const Value& val = g.value(v);
    if (dtype_is_float(val.dtype) && val.shape.size() >= 2) return val.shape.back();
  }
  return 0;
}

struct SavedActs {
  std::vector<SplitBytes> layers;
  SplitBytes embed, head;
  int64_t unplaced = 0;
};

// Forward values ([0, backward_begin)) read by a node at index >= backward_begin, attributed to their producer's place.
SavedActs saved_activations(const Graph& g, size_t backward_begin, int num_layers, int float_bytes) {
  std::vector<char> pd = param_derived(g);
  std::vector<char> sh = tp_sharded(g, backward_begin, pd);
  std::vector<char> read_late(g.values.size(), 0);
  for (size_t i = backward_begin; i < g.nodes.size(); ++i)
    for (ValueId in : g.nodes[i].inputs)
      if (in != kNoValue) read_late[in] = 1;
  SavedActs s;
  s.layers.resize(std::max(num_layers, 0));
  for (size_t i = 0; i < backward_begin && i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    for (ValueId o : n.outputs) {
      if (o == kNoValue || !read_late[o] || pd[o] || g.value(o).kind != ValueKind::kActivation) continue;
      read_late[o] = 0;  // count once
      int64_t b = value_bytes(g.value(o), float_bytes);
      SplitBytes* dst = nullptr;
      if (n.place.kind == Placement::Kind::kLayer && n.place.layer >= 0 && n.place.layer < num_layers) {
        dst = &s.layers[n.place.layer];
      } else if (n.place.kind == Placement::Kind::kEmbedding) {
        dst = &s.embed;
      } else if (n.place.kind == Placement::Kind::kHead) {
        dst = &s.head;
      }
      if (!dst) {
        s.unplaced += b;
        continue;
      }
      (sh[o] ? dst->sharded : dst->replicated) += b;
    }
  }
  return s;
}

int64_t input_batch(const Graph& g) {
  for (ValueId v : g.inputs)
    if (!g.value(v).shape.empty()) return g.value(v).shape[0];
  return 0;
}
int64_t input_seq(const Graph& g) {
  for (ValueId v : g.inputs)
    if (g.value(v).shape.size() >= 2) return g.value(v).shape[1];
  return 0;
}

}  // namespace

Expected<IrMemory> measure_ir_memory(const Graph& forward, const IrMemoryOptions& opt) {
  if (forward.num_layers <= 0) {
    return invalid_argument("the model has no detected transformer layers (Node::place); the search needs them");
  }
  IrMemory m;
  m.batch = input_batch(forward);
  m.seq = input_seq(forward);
  if (m.batch <= 0) return invalid_argument("cannot read the batch size from the model's inputs");
  const int L = forward.num_layers;
  m.layers.resize(L);
  const int64_t vocab = find_vocab(forward, opt.vocab_size);

  // Parameters, by the places of the nodes that read them (through transposes / casts of the parameter).
  std::vector<char> pd = param_derived(forward);
  std::vector<std::set<ValueId>> roots(forward.values.size());
  for (size_t v = 0; v < forward.values.size(); ++v)
    if (forward.values[v].kind == ValueKind::kParameter) roots[v].insert(static_cast<ValueId>(v));
  std::vector<std::set<int>> layers_of(forward.values.size());
  std::vector<char> in_embed(forward.values.size(), 0), in_head(forward.values.size(), 0);
  for (const Node& n : forward.nodes) {
    std::set<ValueId> rs;
    for (ValueId in : n.inputs)
      if (in != kNoValue && pd[in]) rs.insert(roots[in].begin(), roots[in].end());
    bool out_pd = !n.outputs.empty() && n.outputs[0] != kNoValue && pd[n.outputs[0]];
    if (out_pd) {
      for (ValueId o : n.outputs)
        if (o != kNoValue) roots[o].insert(rs.begin(), rs.end());
      continue;  // a transpose of a weight: its consumer decides the place
    }
    for (ValueId p : rs) {
      if (n.place.kind == Placement::Kind::kLayer && n.place.layer >= 0 && n.place.layer < L) layers_of[p].insert(n.place.layer);
      if (n.place.kind == Placement::Kind::kEmbedding) in_embed[p] = 1;
      if (n.place.kind == Placement::Kind::kHead) in_head[p] = 1;
    }
  }
  for (size_t v = 0; v < forward.values.size(); ++v) {
    const Value& val = forward.values[v];
    if (val.kind != ValueKind::kParameter) continue;
    const int64_t bytes = shape_numel(val.shape) * 4;  // fp32 accounting, as Galvatron's parameter_size
    const bool vocab_dim = vocab > 0 && std::find(val.shape.begin(), val.shape.end(), vocab) != val.shape.end();
    if (!layers_of[v].empty() && !in_embed[v] && !in_head[v]) {
      int l = *layers_of[v].begin();
      m.layers[l].param_bytes += bytes;
      m.layers[l].param_count += shape_numel(val.shape);
      continue;
    }
    auto add = [&](SplitBytes& s) { (vocab_dim ? s.sharded : s.replicated) += bytes; };
    if (in_embed[v]) add(m.embed_params);
    if (in_head[v]) add(m.head_params);
    // Neither (or a layer parameter shared with the embedding/head): counted with the embedding.
    if (!in_embed[v] && !in_head[v]) add(m.embed_params);
    add(m.other_params);
  }

  // Activations: the training graph's backward reads.
  TrainingGraphOptions to;
  GV_ASSIGN_OR_RETURN(TrainingGraph tg, build_training_graph(forward, to));
  SavedActs s = saved_activations(tg.graph, tg.backward_begin, L, opt.float_bytes);
  for (int l = 0; l < L; ++l) m.layers[l].act = s.layers[l];
  m.embed_act = s.embed;
  m.head_act = s.head;
  m.unplaced_act = s.unplaced;
  if (opt.checkpoint) {
    TrainingGraphOptions tc;
    for (int l = 0; l < L; ++l) tc.checkpoint_layers.insert(l);
    GV_ASSIGN_OR_RETURN(TrainingGraph tgc, build_training_graph(forward, tc));
    SavedActs c = saved_activations(tgc.graph, tgc.backward_begin, L, opt.float_bytes);
    for (int l = 0; l < L; ++l) m.layers[l].act_checkpoint = c.layers[l].total();
  }
  // hidden size: the last dimension of the first layer's replicated activations is not tracked; read it from the
  // embedding's output-sized parameters instead (the widest non-vocab dimension of a replicated embedding tensor).
  for (const Value& val : forward.values) {
    if (val.kind != ValueKind::kParameter || val.shape.size() != 2) continue;
    if (vocab > 0 && val.shape[0] == vocab) {
      m.hidden_size = val.shape[1];
      break;
    }
  }
  return m;
}

Expected<IrMemory> measure_zoo_memory(const ModelConfig& config, int64_t batch, int64_t seq, int float_bytes) {
  GV_RETURN_IF_ERROR(config.validate());
  if (seq <= 0) seq = config.seq_length;
  const int64_t v1 = 128, v2 = 256;
  auto small = [&](int64_t vocab) -> Expected<IrMemory> {
    ModelConfig c = config;
    c.num_layers = 1;
    c.vocab_size = vocab;
    if (c.pad_token_id >= vocab) c.pad_token_id = 0;
    GV_ASSIGN_OR_RETURN(ImportedModel im, build_and_import(c, batch, seq, WeightInit::kNone));
    IrMemoryOptions o;
    o.vocab_size = vocab;
    o.float_bytes = float_bytes;
    return measure_ir_memory(im.graph, o);
  };
  GV_ASSIGN_OR_RETURN(IrMemory a, small(v1));
  GV_ASSIGN_OR_RETURN(IrMemory b, small(v2));
  IrMemory m;
  m.batch = batch;
  m.seq = seq;
  m.hidden_size = config.hidden_size;
  m.layers.assign(config.num_layers, a.layers[0]);
  auto extrapolate = [&](const SplitBytes& x, const SplitBytes& y) {
    SplitBytes r;
    const int64_t dv = config.vocab_size - v1;
    r.sharded = x.sharded + (y.sharded - x.sharded) * dv / (v2 - v1);
    r.replicated = x.replicated + (y.replicated - x.replicated) * dv / (v2 - v1);
    return r;
  };
  m.embed_act = extrapolate(a.embed_act, b.embed_act);
  m.head_act = extrapolate(a.head_act, b.head_act);
  m.unplaced_act = a.unplaced_act;
  // Parameters: exact, from the specs (no allocation). The tied word embedding is read by the head too.
  std::vector<int64_t> layer_params(config.num_layers, 0);
  for (const ParamSpec& p : parameter_specs(config)) {
    const int64_t bytes = p.numel() * 4;
    const bool vocab_dim = std::find(p.shape.begin(), p.shape.end(), config.vocab_size) != p.shape.end();
    auto add = [&](SplitBytes& s) { (vocab_dim ? s.sharded : s.replicated) += bytes; };
    if (p.place.kind == Placement::Kind::kLayer && p.place.layer >= 0 && p.place.layer < config.num_layers) {
      m.layers[p.place.layer].param_bytes = 0;  // reset below
      layer_params[p.place.layer] += p.numel();
      continue;
    }
    add(m.other_params);
    if (p.place.kind == Placement::Kind::kHead) {
      add(m.head_params);
    } else {
      add(m.embed_params);
      const bool tied_word = config.tie_word_embeddings && vocab_dim && p.shape.size() == 2 &&
                             p.shape[0] == config.vocab_size;
      if (tied_word) add(m.head_params);
    }
  }
  for (int l = 0; l < config.num_layers; ++l) {
    m.layers[l].param_count = layer_params[l];
    m.layers[l].param_bytes = layer_params[l] * 4;
  }
  return m;
}

ModelProfile model_profile_from_ir(const IrMemory& m, const IrProfileOptions& opt, bool sp) {
  ModelProfile p;
  p.name = opt.name;
  p.source = "IR (training graph of " + std::to_string(m.batch) + " x " + std::to_string(m.seq) + " tokens)";
  LayerTypeProfile lt;
  lt.hidden_size = static_cast<int>(m.hidden_size);
  lt.seq_length = static_cast<int>(m.seq);
  lt.layer_num = static_cast<int>(m.layers.size());
  // Layers are alike; take the largest (exactly equal for zoo models).
  IrLayerMemory worst;
  for (const auto& l : m.layers) {
    worst.param_bytes = std::max(worst.param_bytes, l.param_bytes);
    if (l.act.total() > worst.act.total()) worst.act = l.act;
    worst.act_checkpoint = std::max(worst.act_checkpoint, l.act_checkpoint);
  }
  const double b = static_cast<double>(m.batch);
  lt.parameter_size_mb = worst.param_bytes / kMB;
  for (int tp : opt.tp_degrees) {
    double bytes = sp ? worst.act.total() / static_cast<double>(tp) : worst.act.at_tp(tp);
    lt.act_per_sample_mb[tp] = bytes / b / kMB;
  }
  lt.act_checkpoint_mb = worst.act_checkpoint / b / kMB;
  lt.has_checkpoint = worst.act_checkpoint > 0;
  p.layer_types.push_back(lt);
  auto other = [&](const SplitBytes& params, const SplitBytes& act, OtherMemory* out) {
    for (int k : opt.tp_degrees) {
      out->model_states_mb[k] = 4.0 * params.at_tp(k) / kMB;
      double a = sp ? act.total() / static_cast<double>(k) : act.at_tp(k);
      out->activation_mb[k] = a / b / kMB;
    }
  };
  SplitBytes both_act{m.embed_act.sharded + m.head_act.sharded, m.embed_act.replicated + m.head_act.replicated};
  other(m.other_params, both_act, &p.pp_off);
  other(m.embed_params, m.embed_act, &p.pp_on_first);
  other(m.head_params, m.head_act, &p.pp_on_last);
  return p;
}

}  // namespace gv::partitioner
