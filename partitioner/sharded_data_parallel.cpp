#include "partitioner/sharded_data_parallel.h"

#include <algorithm>
#include <cstring>

#include "runtime/op_registry.h"
#include "runtime/sharded_tensor.h"

namespace gv::partitioner {

Expected<std::map<std::string, std::pair<int64_t, int64_t>>> apply_sharded_data_parallel(
    Graph& g, const std::vector<ShardedParam>& params) {
  std::map<std::string, std::pair<int64_t, int64_t>> ranges;
  // Nodes to insert before position i of the current node list.
  std::map<size_t, std::vector<Node>> insert_before;
  for (const ShardedParam& sp : params) {
    const ValueId p = g.find(sp.name);
    if (p == kNoValue || g.value(p).kind != ValueKind::kParameter) {
      return not_found("ZeRO-3: no parameter named '" + sp.name + "'");
    }
    const int d = static_cast<int>(sp.group.size());
    const int64_t n = shape_numel(g.value(p).shape);
    const std::vector<int64_t> sizes = flat_shard_sizes(n, d);
    if (std::any_of(sizes.begin(), sizes.end(), [](int64_t s) { return s == 0; })) continue;
    size_t first_use = g.nodes.size();
    for (size_t i = 0; i < g.nodes.size() && first_use == g.nodes.size(); ++i) {
      for (ValueId in : g.nodes[i].inputs) {
        if (in == p) {
          first_use = i;
          break;
        }
      }
    }
    if (first_use == g.nodes.size()) continue;
    int64_t begin = 0;
    for (int i = 0; i < sp.index; ++i) begin += sizes[i];
    const int64_t len = sizes[sp.index];
    ranges[sp.name] = {begin, begin + len};

    // The shard: a new parameter with the original name (checkpoints and optimizer state follow the name).
    Value whole = g.value(p);
    Tensor shard(whole.dtype, {len});
    const size_t elem = dtype_size(whole.dtype);
    std::memcpy(shard.data(), static_cast<const char*>(whole.data.data()) + begin * elem, len * elem);
    Value& gathered = g.value(p);
    gathered.name = sp.name + "/gathered";
    gathered.kind = ValueKind::kActivation;
    gathered.data = Tensor();
    Value sv;
    sv.name = sp.name;
    sv.dtype = whole.dtype;
    sv.shape = {len};
    sv.kind = ValueKind::kParameter;
    sv.data = std::move(shard);
    const ValueId shard_id = g.add_value(std::move(sv));
    Value flat;
    flat.name = sp.name + "/gathered_flat";
    flat.dtype = whole.dtype;
    flat.shape = {n};
    const ValueId flat_id = g.add_value(std::move(flat));
    const ValueId shape_id = g.add_initializer(g.unique_name(sp.name + "/shape"),
                                               Tensor::from_i64(whole.shape, {static_cast<int64_t>(whole.shape.size())}),
                                               ValueKind::kConstant);
    const Placement place = g.nodes[first_use].place;
    Node gather;
    gather.op_type = "AllGather";
    gather.domain = kGalvatronDomain;
    gather.opset = 1;
    gather.name = "zero3/all_gather/" + sp.name;
    gather.inputs = {shard_id};
    gather.outputs = {flat_id};
    gather.attrs.set_ints("group", std::vector<int64_t>(sp.group.begin(), sp.group.end()));
    gather.attrs.set_ints("sizes", sizes);
    gather.attrs.set_string("backward", "reduce_scatter");
    // Gathered again right before the backward pass uses it, so the whole parameter does not live in between.
    const int64_t chain = static_cast<int64_t>(ranges.size());
    gather.attrs.set_int("rematerialize", chain);
    gather.place = place;
    Node reshape;
    reshape.op_type = "Reshape";
    reshape.opset = g.opsets.count("") ? g.opsets.at("") : 17;
    reshape.name = "zero3/reshape/" + sp.name;
    reshape.inputs = {flat_id, shape_id};
    reshape.outputs = {p};
    reshape.attrs.set_int("rematerialize", chain);
    reshape.place = place;
    insert_before[first_use].push_back(std::move(gather));
    insert_before[first_use].push_back(std::move(reshape));
  }
  std::vector<Node> nodes;
  nodes.reserve(g.nodes.size() + 2 * params.size());
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (auto it = insert_before.find(i); it != insert_before.end()) {
      for (Node& n : it->second) nodes.push_back(std::move(n));
    }
    nodes.push_back(std::move(g.nodes[i]));
  }
  g.nodes = std::move(nodes);
  g.reindex();
  return ranges;
}

}  // namespace gv::partitioner
