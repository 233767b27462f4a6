#include "importer/layer_detection.h"

#include <algorithm>
#include <climits>
#include <cctype>
#include <map>
#include <set>
#include <unordered_map>

#include "importer/initializer_classification.h"

namespace gv {

namespace {

// Places as ordinals: -1 embedding, 0..L-1 layers, L head.
constexpr int kNegInf = INT_MIN / 2;
constexpr int kPosInf = INT_MAX / 2;
constexpr int kEmbed = -1;
// Anchor of a node reading a named parameter that has no layer index: embedding or head, decided by position.
constexpr int kNonLayer = INT_MIN / 4;
constexpr int kNoAnchor = INT_MIN;

bool is_number(const std::string& s) {
  return !s.empty() && s.size() < 9 && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

// The graph seen by layer detection: which values are static (parameters, constants and what parameter-only nodes
// compute from them), the parameters each static value derives from, and the users of each value.
struct Analysis {
  explicit Analysis(const Graph& g) : g(g) {
    const size_t nv = g.values.size();
    users.resize(nv);
    is_static.assign(nv, 0);
    is_output.assign(nv, 0);
    roots.resize(nv);
    static_node.assign(g.nodes.size(), 0);
    for (ValueId v : g.outputs) is_output[v] = 1;
    for (ValueId v = 0; v < static_cast<ValueId>(nv); ++v) {
      ValueKind k = g.values[v].kind;
      if (k == ValueKind::kParameter || k == ValueKind::kConstant || k == ValueKind::kState) is_static[v] = 1;
      if (k == ValueKind::kParameter) roots[v].push_back(v);
    }
    for (NodeId n = 0; n < static_cast<NodeId>(g.nodes.size()); ++n) {
      const Node& node = g.nodes[n];
      bool all_static = true;
      for (ValueId in : node.inputs) {
        if (in == kNoValue) continue;
        users[in].push_back(n);
        all_static = all_static && is_static[in];
      }
      if (!all_static) continue;
      static_node[n] = 1;
      std::vector<ValueId> r;
      for (ValueId in : node.inputs) {
        if (in != kNoValue) r.insert(r.end(), roots[in].begin(), roots[in].end());
      }
      std::sort(r.begin(), r.end());
      r.erase(std::unique(r.begin(), r.end()), r.end());
      for (ValueId o : node.outputs) {
        is_static[o] = 1;
        roots[o] = r;
      }
    }
  }

  // Parameters read by a (non-static) node, through its static inputs, in input-slot order.
  std::vector<std::pair<int, ValueId>> params_read(NodeId n) const {
    std::vector<std::pair<int, ValueId>> r;
    const Node& node = g.nodes[n];
    for (size_t j = 0; j < node.inputs.size(); ++j) {
      ValueId in = node.inputs[j];
      if (in == kNoValue || !is_static[in]) continue;
      for (ValueId p : roots[in]) r.emplace_back(static_cast<int>(j), p);
    }
    return r;
  }

  const Graph& g;
  std::vector<std::vector<NodeId>> users;
  std::vector<char> is_static, is_output, static_node;
  std::vector<std::vector<ValueId>> roots;
};

// ---- Anchors from names ----

// Returns the number of layers, filling `anchor` (kNoAnchor, kNonLayer or a layer index).
int anchors_from_names(const Analysis& a, std::vector<int>* anchor) {
  const Graph& g = a.g;
  const size_t N = g.nodes.size();
  // Raw (key, index) per node: from the node's name, else the largest of the parameters it reads.
  std::vector<std::pair<std::string, int>> raw(N, {"", -1});
  std::vector<char> non_layer(N, 0);
  std::map<std::string, size_t> key_first;  // key -> first node that names it
  std::map<std::string, std::set<int>> key_indices;
  for (size_t n = 0; n < N; ++n) {
    if (a.static_node[n]) continue;
    std::string key;
    int idx = -1;
    if (!layer_index_from_name(g.nodes[n].name, &key, &idx)) {
      for (const auto& [slot, p] : a.params_read(static_cast<NodeId>(n))) {
        std::string k;
        int i = -1;
        if (layer_index_from_name(g.values[p].name, &k, &i)) {
          if (idx < 0 || i > idx) {
            idx = i;
            key = k;
          }
        } else if (onnx_import::name_looks_like_weight(g.values[p].name)) {
          non_layer[n] = 1;
        }
      }
    }
    if (idx < 0) continue;
    raw[n] = {key, idx};
    key_first.emplace(key, n);
    key_indices[key].insert(idx);
  }
  // Global numbering: keys in order of first appearance, indices in numeric order within a key.
  std::vector<std::pair<size_t, std::string>> keys;
  for (const auto& [k, first] : key_first) keys.emplace_back(first, k);
  std::sort(keys.begin(), keys.end());
  std::map<std::pair<std::string, int>, int> global;
  int L = 0;
  for (const auto& [first, k] : keys) {
    for (int i : key_indices[k]) global[{k, i}] = L++;
  }
  anchor->assign(N, kNoAnchor);
  for (size_t n = 0; n < N; ++n) {
    if (raw[n].second >= 0) (*anchor)[n] = global[raw[n]];
    else if (non_layer[n]) (*anchor)[n] = kNonLayer;
  }
  return L;
}

// ---- Anchors from structure ----

// The parameter-reading events of the graph, in order: (node, signature of op, input slot and parameter shape).
struct Event {
  NodeId node;
  int sig;
};

std::vector<Event> parameter_events(const Analysis& a) {
  const Graph& g = a.g;
  std::vector<Event> events;
  std::map<std::string, int> sig_ids;
  for (size_t n = 0; n < g.nodes.size(); ++n) {
    if (a.static_node[n]) continue;
    for (const auto& [slot, p] : a.params_read(static_cast<NodeId>(n))) {
      const Value& pv = g.values[p];
      std::string s = g.nodes[n].domain + "::" + g.nodes[n].op_type + "#" + std::to_string(slot) + ":" +
                      dtype_name(pv.dtype) + shape_str(pv.shape);
      auto it = sig_ids.emplace(s, static_cast<int>(sig_ids.size())).first;
      events.push_back({static_cast<NodeId>(n), it->second});
    }
  }
  return events;
}

// `count` consecutive repetitions of `period` events from `start`.
struct Run {
  int start = 0, period = 0, count = 0;
};

// The runs that cover the most events (then: the most repetitions). Several phases of the same run can tie (a
// pre-norm layer's norm can open its own segment or close the previous one); the caller picks among them.
std::vector<Run> best_runs(const std::vector<Event>& events) {
  const int E = static_cast<int>(events.size());
  std::vector<Run> best;
  int64_t best_cov = 0;
  int best_count = 0;
  for (int p = 1; p <= E / 2; ++p) {
    int i = 0;
    while (i + p < E) {
      if (events[i].sig != events[i + p].sig) {
        ++i;
        continue;
      }
      int j = i;
      while (j + p < E && events[j].sig == events[j + p].sig) ++j;
      const int m = j - i;  // events[t] == events[t + p] for t in [i, j)
      const int k = m / p + 1;
      const int64_t cov = int64_t{p} * k;
      if (k >= 2 && (cov > best_cov || (cov == best_cov && k >= best_count))) {
        if (cov > best_cov || k > best_count) best.clear();
        best_cov = cov;
        best_count = k;
        for (int s = i; s <= i + m - (k - 1) * p && best.size() < 64; ++s) best.push_back({s, p, k});
      }
      i = j;
    }
  }
  return best;
}

std::vector<int> anchors_from_run(const Analysis& a, const std::vector<Event>& events, const Run& run) {
  std::vector<int> anchor(a.g.nodes.size(), kNoAnchor);
  const int L = run.count;
  for (int e = 0; e < static_cast<int>(events.size()); ++e) {
    int seg = e < run.start ? kEmbed : e >= run.start + run.period * run.count ? L : (e - run.start) / run.period;
    int& an = anchor[events[e].node];
    if (an == kNoAnchor) {
      an = seg;
    } else if (seg >= 0 && seg < L) {
      an = (an >= 0 && an < L) ? std::max(an, seg) : seg;
    }
  }
  return anchor;
}

// ---- Placement ----

// The place of every node as an ordinal (-1 embedding, 0..L-1 layers, L head).
std::vector<int> compute_places(const Graph& g, const Analysis& a, std::vector<int> anchor, int L) {
  const int N = static_cast<int>(g.nodes.size());
  const int H = L;
  std::vector<NodeId> producer(g.values.size(), -1);
  for (NodeId n = 0; n < N; ++n) {
    for (ValueId o : g.nodes[n].outputs) producer[o] = n;
  }
  // Resolve non-layer anchors and drop anchors that contradict the graph order (a parameter named for layer 0 that
  // is shared by later layers), walking in topological order.
  std::vector<int> after_layer(N, kNegInf);
  for (NodeId n = 0; n < N; ++n) {
    if (a.static_node[n]) continue;
    int in_max = kNegInf;
    for (ValueId in : g.nodes[n].inputs) {
      if (in != kNoValue && producer[in] >= 0 && !a.static_node[producer[in]]) {
        in_max = std::max(in_max, after_layer[producer[in]]);
      }
    }
    int& an = anchor[n];
    if (an == kNonLayer) an = in_max == kNegInf ? kEmbed : H;
    else if (an >= 0 && an < L && an < in_max) an = kNoAnchor;
    after_layer[n] = (an >= 0 && an < L) ? std::max(in_max, an) : in_max;
  }
  // Latest anchored place among ancestors, earliest among descendants (graph outputs count as the head).
  std::vector<int> after(N, kNegInf), before(N, kPosInf);
  for (NodeId n = 0; n < N; ++n) {
    if (a.static_node[n]) continue;
    int v = anchor[n] == kNoAnchor ? kNegInf : anchor[n];
    for (ValueId in : g.nodes[n].inputs) {
      if (in != kNoValue && producer[in] >= 0 && !a.static_node[producer[in]]) v = std::max(v, after[producer[in]]);
    }
    after[n] = v;
  }
  for (NodeId n = N - 1; n >= 0; --n) {
    if (a.static_node[n]) continue;
    int v = anchor[n] == kNoAnchor ? kPosInf : anchor[n];
    for (ValueId o : g.nodes[n].outputs) {
      if (a.is_output[o]) v = std::min(v, H);
      for (NodeId u : a.users[o]) {
        if (!a.static_node[u]) v = std::min(v, before[u]);
      }
    }
    before[n] = v;
  }
  constexpr int kUnplaced = INT_MIN;
  std::vector<int> place(N, kUnplaced);
  std::map<std::pair<int, int>, std::vector<NodeId>> uncertain;
  for (NodeId n = 0; n < N; ++n) {
    if (a.static_node[n]) continue;
    if (anchor[n] != kNoAnchor) place[n] = anchor[n];
    else if (after[n] == before[n]) place[n] = after[n];
    else if (after[n] == kNegInf) place[n] = before[n] == H ? H : kEmbed;
    else if (before[n] == kPosInf || after[n] > before[n]) place[n] = after[n];
    else uncertain[{after[n], before[n]}].push_back(n);
  }
  // Between places p and q: the uncertain nodes that compute the boundary value belong to p, the rest to q. Groups go
  // in order, so that a group's sources include the nodes earlier groups placed.
  for (const auto& [pq, U] : uncertain) {
    const int p = pq.first, q = pq.second;
    std::vector<char> in_u(N, 0);
    for (NodeId n : U) in_u[n] = 1;
    // Sources: values computed at or before p (and the graph inputs) that feed an uncertain node.
    std::vector<ValueId> sources;
    auto add_source = [&](ValueId v) {
      for (NodeId u : a.users[v]) {
        if (in_u[u]) {
          sources.push_back(v);
          return;
        }
      }
    };
    for (NodeId n = 0; n < N; ++n) {
      if (a.static_node[n] || in_u[n] || place[n] == kUnplaced || place[n] > p) continue;
      for (ValueId o : g.nodes[n].outputs) add_source(o);
    }
    for (ValueId v : g.inputs) add_source(v);
    // Is there a path source -> uncertain nodes -> a node that depends on q (or a graph output, for the head)
    // avoiding `blocked`?
    auto reaches_sink = [&](ValueId blocked) {
      std::vector<char> seen(g.values.size(), 0);
      std::vector<ValueId> stack;
      for (ValueId s : sources) {
        if (s != blocked && !seen[s]) {
          seen[s] = 1;
          stack.push_back(s);
        }
      }
      while (!stack.empty()) {
        ValueId v = stack.back();
        stack.pop_back();
        const bool from_u = producer[v] >= 0 && in_u[producer[v]];
        if (from_u && q == H && a.is_output[v]) return true;
        for (NodeId u : a.users[v]) {
          if (a.static_node[u]) continue;
          if (in_u[u]) {
            for (ValueId o : g.nodes[u].outputs) {
              if (o != blocked && !seen[o]) {
                seen[o] = 1;
                stack.push_back(o);
              }
            }
          } else if (from_u && after[u] >= q) {  // depends on q's nodes: placed at q or later
            return true;
          }
        }
      }
      return false;
    };
    // The boundary is the earliest value that all those paths go through (the residual stream between the two).
    std::vector<char> to_p(N, 0);
    if (reaches_sink(kNoValue) && U.size() <= 4096) {
      std::vector<ValueId> candidates = sources;
      for (NodeId n : U) candidates.insert(candidates.end(), g.nodes[n].outputs.begin(), g.nodes[n].outputs.end());
      std::stable_sort(candidates.begin(), candidates.end(),
                       [&](ValueId x, ValueId y) { return producer[x] < producer[y]; });
      ValueId boundary = kNoValue;
      for (ValueId c : candidates) {
        if (!reaches_sink(c)) {
          boundary = c;
          break;
        }
      }
      if (boundary != kNoValue) {
        std::vector<NodeId> stack;
        if (producer[boundary] >= 0 && in_u[producer[boundary]]) stack.push_back(producer[boundary]);
        while (!stack.empty()) {
          NodeId n = stack.back();
          stack.pop_back();
          if (to_p[n]) continue;
          to_p[n] = 1;
          for (ValueId in : g.nodes[n].inputs) {
            if (in != kNoValue && producer[in] >= 0 && in_u[producer[in]]) stack.push_back(producer[in]);
          }
        }
      } else {
        for (NodeId n : U) to_p[n] = 1;
      }
    } else {
      for (NodeId n : U) to_p[n] = 1;
    }
    for (NodeId n : U) place[n] = to_p[n] ? p : q;
  }
  // Parameter-only nodes (a Transpose of a weight) go with their earliest user.
  for (NodeId n = N - 1; n >= 0; --n) {
    if (!a.static_node[n]) continue;
    int v = kPosInf;
    for (ValueId o : g.nodes[n].outputs) {
      if (a.is_output[o]) v = std::min(v, H);
      for (NodeId u : a.users[o]) v = std::min(v, place[u]);
    }
    place[n] = v == kPosInf ? H : v;
  }
  return place;
}

void apply_places(Graph& g, const std::vector<int>& place, int L) {
  for (size_t n = 0; n < g.nodes.size(); ++n) {
    Placement& pl = g.nodes[n].place;
    int v = place[n];
    if (v <= kEmbed) pl = {Placement::Kind::kEmbedding, -1};
    else if (v >= L) pl = {Placement::Kind::kHead, -1};
    else pl = {Placement::Kind::kLayer, v};
  }
  g.num_layers = L;
}

// How many activations cross the boundaries between consecutive layers (the residual stream alone, at the right cut).
int64_t cut_width(const Graph& g, const Analysis& a, const std::vector<int>& place, int L) {
  int64_t width = 0;
  for (size_t n = 0; n < g.nodes.size(); ++n) {
    if (a.static_node[n]) continue;
    for (ValueId o : g.nodes[n].outputs) {
      int last = place[n];
      for (NodeId u : a.users[o]) last = std::max(last, place[u]);
      // Crosses every layer boundary b|b+1 with place[n] <= b < last.
      for (int b = std::max(place[n], 0); b < last && b < L - 1; ++b) ++width;
    }
  }
  return width;
}

// How strongly the value entering a segment's first node fans out (the residual stream does).
int64_t fan_out(const Analysis& a, const std::vector<Event>& events, const Run& run) {
  int64_t f = 0;
  for (int rep = 0; rep < run.count; ++rep) {
    for (ValueId in : a.g.nodes[events[run.start + rep * run.period].node].inputs) {
      if (in != kNoValue && !a.is_static[in]) f += static_cast<int64_t>(a.users[in].size()) + a.is_output[in];
    }
  }
  return f;
}

}  // namespace

bool layer_index_from_name(const std::string& name, std::string* key, int* index) {
  static const std::set<std::string> kWords = {"h",      "layer",      "layers",         "block",
                                               "blocks", "blk",        "transformer_blocks", "resblocks",
                                               "encoder_layers", "decoder_layers"};
  std::vector<std::string> tokens;
  std::string cur;
  for (char c : name) {
    if (c == '.' || c == '/' || c == ':') {
      if (!cur.empty()) tokens.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) tokens.push_back(cur);
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string word, num;
    if (kWords.count(tokens[i]) && i + 1 < tokens.size() && is_number(tokens[i + 1])) {
      word = tokens[i];
      num = tokens[i + 1];
    } else {
      size_t u = tokens[i].rfind('_');
      if (u == std::string::npos || u == 0) continue;
      std::string w = tokens[i].substr(0, u), n = tokens[i].substr(u + 1);
      if (w == "h" || !kWords.count(w) || !is_number(n)) continue;
      word = w;
      num = n;
    }
    *key = (i > 0 ? tokens[i - 1] + "." : std::string()) + word;
    *index = std::stoi(num);
    return true;
  }
  return false;
}

void detect_layers(Graph& graph) { detect_layers(graph, LayerDetectionOptions{}); }

void detect_layers(Graph& graph, const LayerDetectionOptions& options) {
  for (Node& n : graph.nodes) n.place = Placement{};
  graph.num_layers = 0;
  if (graph.nodes.empty()) return;
  Analysis a(graph);
  if (options.use_names) {
    std::vector<int> anchor;
    const int L = anchors_from_names(a, &anchor);
    if (L > 0) {
      apply_places(graph, compute_places(graph, a, std::move(anchor), L), L);
      return;
    }
  }
  const std::vector<Event> events = parameter_events(a);
  const std::vector<Run> runs = best_runs(events);
  if (runs.empty()) return;
  // Among tied phases: the narrowest cuts between layers, then the widest fan-out at segment starts, then the earliest.
  std::vector<int> best_place;
  int64_t best_width = 0, best_fan = 0;
  for (const Run& run : runs) {
    std::vector<int> place = compute_places(graph, a, anchors_from_run(a, events, run), run.count);
    const int64_t width = cut_width(graph, a, place, run.count), fan = fan_out(a, events, run);
    if (best_place.empty() || width < best_width || (width == best_width && fan > best_fan)) {
      best_place = std::move(place);
      best_width = width;
      best_fan = fan;
    }
  }
  apply_places(graph, best_place, runs.front().count);
}

}  // namespace gv
