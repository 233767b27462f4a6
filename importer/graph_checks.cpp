#include "importer/graph_checks.h"

#include <queue>
#include <unordered_map>
#include <unordered_set>

namespace gv::onnx_import {

namespace {
std::string node_desc(const FlatNode& n) { return "node '" + n.proto.name() + "' (" + n.proto.op_type() + ")"; }
}  // namespace

void name_nodes(std::vector<FlatNode>& nodes) {
  std::unordered_set<std::string> used;
  for (const FlatNode& n : nodes) {
    if (!n.proto.name().empty()) used.insert(n.proto.name());
  }
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < nodes.size(); ++i) {
    onnx::NodeProto& p = nodes[i].proto;
    if (!p.name().empty() && seen.insert(p.name()).second) continue;
    std::string base = p.name().empty() ? p.op_type() + "_" + std::to_string(i) : p.name();
    std::string name = base;
    for (int k = 1; used.count(name) || seen.count(name); ++k) name = base + "_" + std::to_string(k);
    used.insert(name);
    seen.insert(name);
    p.set_name(name);
  }
}

Expected<std::vector<int>> check_and_sort(const std::vector<FlatNode>& nodes, const GraphSources& sources,
                                          const std::string& path) {
  const std::string in = "'" + path + "': ";
  if (nodes.empty()) return corrupt(in + "the graph has no nodes (the file is truncated or empty)");
  if (sources.outputs.empty()) return corrupt(in + "the graph has no outputs");

  // Where each value comes from: -1 initializer, -2 graph input, >= 0 the producing node.
  std::unordered_map<std::string, int> source;
  for (const std::string& n : sources.initializers) {
    if (!source.emplace(n, -1).second) return corrupt(in + "initializer '" + n + "' is defined twice");
  }
  for (const std::string& n : sources.inputs) {
    if (!source.emplace(n, -2).second) return corrupt(in + "graph input '" + n + "' is listed twice");
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const std::string& o : nodes[i].proto.output()) {
      if (o.empty()) continue;
      auto [it, inserted] = source.emplace(o, static_cast<int>(i));
      if (inserted) continue;
      std::string other = it->second == -1   ? "an initializer"
                          : it->second == -2 ? "a graph input"
                                             : node_desc(nodes[it->second]);
      return corrupt(in + "value '" + o + "' is produced by " + node_desc(nodes[i]) + " and is also " + other +
                     " (duplicated output name)");
    }
  }
  // Dependencies.
  std::vector<int> pending(nodes.size(), 0);
  std::vector<std::vector<int>> users(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const std::string& name : nodes[i].proto.input()) {
      if (name.empty()) continue;
      auto it = source.find(name);
      if (it == source.end()) {
        return corrupt(in + node_desc(nodes[i]) + " reads '" + name +
                       "', which no node, initializer or graph input produces (dangling input name)");
      }
      if (it->second >= 0) {
        if (it->second == static_cast<int>(i)) return corrupt(in + node_desc(nodes[i]) + " reads its own output '" + name + "'");
        users[it->second].push_back(static_cast<int>(i));
        ++pending[i];
      }
    }
  }
  std::unordered_set<std::string> out_seen;
  for (const std::string& o : sources.outputs) {
    if (!source.count(o)) {
      return corrupt(in + "graph output '" + o + "' is not produced by any node, initializer or graph input");
    }
    if (!out_seen.insert(o).second) return corrupt(in + "graph output '" + o + "' is listed twice");
  }
  // Kahn's algorithm, always taking the earliest ready node: keeps the file's order when it is already valid.
  std::priority_queue<int, std::vector<int>, std::greater<int>> ready;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (pending[i] == 0) ready.push(static_cast<int>(i));
  }
  std::vector<int> order;
  order.reserve(nodes.size());
  while (!ready.empty()) {
    int n = ready.top();
    ready.pop();
    order.push_back(n);
    for (int u : users[n]) {
      if (--pending[u] == 0) ready.push(u);
    }
  }
  if (order.size() != nodes.size()) {
    // Walk back through unplaced producers until a node repeats: that node is on a cycle.
    int cur = -1;
    for (size_t i = 0; i < nodes.size() && cur < 0; ++i) {
      if (pending[i] > 0) cur = static_cast<int>(i);
    }
    std::vector<char> visited(nodes.size(), 0);
    while (cur >= 0 && !visited[cur]) {
      visited[cur] = 1;
      int next = -1;
      for (const std::string& name : nodes[cur].proto.input()) {
        auto it = name.empty() ? source.end() : source.find(name);
        if (it != source.end() && it->second >= 0 && pending[it->second] > 0) {
          next = it->second;
          break;
        }
      }
      cur = next;
    }
    std::string desc = cur >= 0 ? node_desc(nodes[cur]) : std::string("a node");
    return corrupt(in + "the graph has a cycle through " + desc + " (" + std::to_string(nodes.size() - order.size()) +
                   " nodes cannot be ordered)");
  }
  return order;
}

}  // namespace gv::onnx_import
