#include "runtime/executor.h"

#include "runtime/communicator.h"

namespace gv {
namespace {

// Bytes one rank sends for a communication node, as ring algorithms do (0 for other nodes).
double comm_bytes_of(const Node& n, const std::vector<TensorRef>& in, const std::vector<TensorRef>& out,
                     int world) {
  if (n.domain != kGalvatronDomain) return 0;
  auto bytes = [](const TensorRef& t) { return static_cast<double>(t.numel()) * dtype_size(t.dtype); };
  const auto group = n.attrs.get_ints("group");
  const double g = group.empty() ? world : static_cast<double>(group.size());
  if (g <= 1 && n.op_type != "Send") return 0;
  const std::string& op = n.op_type;
  if (op == "AllReduce" || op == "TensorParallelReduce") return 2 * (g - 1) / g * bytes(in[0]);
  if (op == "AllGather") return (g - 1) / g * bytes(out[0]);
  if (op == "ReduceScatter" || op == "GatherShardsInPlace") return (g - 1) / g * bytes(in[0]);
  if (op == "Send") return bytes(in[0]);
  return 0;
}

Status nothing_to_do(KernelContext&) { return Status::ok(); }

}  // namespace

Executor::~Executor() {
  if (arena_) backend_.release(arena_);
  for (void* p : owned_) backend_.release(p);
}

Expected<std::unique_ptr<Executor>> Executor::create(const Graph& graph, Backend& backend, ExecutorOptions options) {
  std::unique_ptr<Executor> ex(new Executor(graph, backend));
  ex->options_ = std::move(options);
  const OpRegistry& reg = OpRegistry::global();

  std::vector<NodeId> order(graph.nodes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<NodeId>(i);
  ex->plan_ = plan_memory(graph, order, ex->options_.keep_alive);

  if (ex->plan_.arena_bytes) {
    auto arena = backend.allocate(ex->plan_.arena_bytes);
    if (!arena) return arena.status().with_context("allocating the activation arena");
    ex->arena_ = *arena;
  }
  ex->ptrs_.assign(graph.values.size(), nullptr);
  for (ValueId v = 0; v < static_cast<ValueId>(graph.values.size()); ++v) {
    const Value& val = graph.values[v];
    if (ex->plan_.offset[v] >= 0) {
      ex->ptrs_[v] = static_cast<uint8_t*>(ex->arena_) + ex->plan_.offset[v];
    } else if (val.kind == ValueKind::kParameter || val.kind == ValueKind::kConstant || val.kind == ValueKind::kState) {
      if (ex->options_.share_persistent_with) {
        ex->ptrs_[v] = ex->options_.share_persistent_with->data(v);
        continue;
      }
      if (val.stored_in != kNoValue) continue;  // placed below, inside its host value's buffer
      ex->constant_bytes_ += val.data.nbytes();
      if (backend.kind() == DeviceKind::kCpu) {
        ex->ptrs_[v] = const_cast<void*>(val.data.data());
      } else {
        auto p = backend.allocate(val.data.nbytes());
        if (!p) return p.status().with_context("allocating '" + val.name + "'");
        ex->owned_.push_back(*p);
        GV_RETURN_IF_ERROR(backend.copy_from_host(*p, val.data.data(), val.data.nbytes()));
        ex->ptrs_[v] = *p;
      }
    }
  }
  for (ValueId v = 0; v < static_cast<ValueId>(graph.values.size()); ++v) {
    const Value& val = graph.values[v];
    if (val.stored_in == kNoValue || ex->options_.share_persistent_with) continue;
    const Value& host = graph.value(val.stored_in);
    const int64_t bytes = shape_numel(val.shape) * static_cast<int64_t>(dtype_size(val.dtype));
    if (host.stored_in != kNoValue || ex->ptrs_[val.stored_in] == nullptr || val.stored_at < 0 ||
        val.stored_at + bytes > shape_numel(host.shape) * static_cast<int64_t>(dtype_size(host.dtype))) {
      return internal_error("value '" + val.name + "' (" + std::to_string(bytes) + " bytes at " +
                            std::to_string(val.stored_at) + ") does not fit inside the persistent buffer of '" +
                            host.name + "'");
    }
    ex->ptrs_[v] = static_cast<uint8_t*>(ex->ptrs_[val.stored_in]) + val.stored_at;
  }
  for (NodeId nid : order) {
    const Node& n = graph.nodes[nid];
    const OpSchema* schema = reg.find(n.domain, n.op_type);
    KernelFn k = schema ? backend.kernel(*schema) : nullptr;
    // A view whose output shares its input's buffer has nothing to do (the step stays: steps are node indices).
    if (!n.outputs.empty() && ex->plan_.alias_of[n.outputs[0]] != kNoValue) k = nothing_to_do;
    if (!k) {
      return unsupported("node '" + n.name + "' (" + n.op_type + "): no " + backend.name() + " kernel for this op");
    }
    Step s;
    s.node = nid;
    s.kernel = k;
    s.ctx.node = &graph.nodes[nid];
    s.ctx.rng_seed = ex->options_.rng_seed;
    s.ctx.comm = ex->options_.comm;
    for (ValueId in : n.inputs) {
      if (in == kNoValue) {
        s.ctx.inputs.push_back(TensorRef{});
        s.ctx.host_inputs.push_back(nullptr);
      } else {
        const Value& v = graph.values[in];
        s.ctx.inputs.push_back(TensorRef{v.dtype, v.shape, ex->ptrs_[in]});
        s.ctx.host_inputs.push_back(v.kind == ValueKind::kConstant && v.data.nbytes() ? v.data.data() : nullptr);
      }
    }
    for (ValueId o : n.outputs) {
      const Value& v = graph.values[o];
      s.ctx.outputs.push_back(TensorRef{v.dtype, v.shape, ex->ptrs_[o]});
    }
    if (ex->options_.comm) s.comm_bytes = comm_bytes_of(n, s.ctx.inputs, s.ctx.outputs, ex->options_.comm->size());
    ex->steps_.push_back(std::move(s));
  }
  return ex;
}

Status Executor::set_value(ValueId v, const Tensor& host) {
  const Value& val = graph_.values[v];
  if (host.dtype() != val.dtype) {
    return invalid_argument("'" + val.name + "' must be " + dtype_name(val.dtype) + ", got " + dtype_name(host.dtype()));
  }
  if (host.shape() != val.shape) {
    return invalid_argument("'" + val.name + "' must have shape " + shape_str(val.shape) + ", got " +
                            shape_str(host.shape()));
  }
  if (!ptrs_[v]) return internal_error("'" + val.name + "' has no buffer");
  return backend_.copy_from_host(ptrs_[v], host.data(), host.nbytes());
}

Status Executor::set_inputs(const std::map<std::string, Tensor>& feeds, const std::string& source) {
  for (ValueId in : graph_.inputs) {
    const Value& v = graph_.values[in];
    auto it = feeds.find(v.name);
    if (it == feeds.end()) {
      return not_found(source + ": no tensor named '" + v.name + "' for graph input '" + v.name + "' (" +
                       dtype_name(v.dtype) + " " + shape_str(v.shape) + ")");
    }
    Tensor t = it->second;
    GV_RETURN_IF_ERROR(set_value(in, t).with_context(source + ": input"));
  }
  return Status::ok();
}

Status Executor::run() { return run_steps(0, steps_.size()); }

Status Executor::run_steps(size_t begin, size_t end) {
  for (size_t i = begin; i < end && i < steps_.size(); ++i) {
    Step& s = steps_[i];
    s.ctx.rng_counter = rng_counter;
    s.ctx.micro_batch = micro_batch;
    Status st = s.kernel(s.ctx);
    if (!st.is_ok()) return st;
    if (s.comm_bytes > 0) comm_bytes[s.ctx.node->op_type] += s.comm_bytes;
  }
  return Status::ok();
}

Expected<Tensor> Executor::fetch(ValueId v) const {
  const Value& val = graph_.values[v];
  if (!ptrs_[v]) return internal_error("'" + val.name + "' has no buffer");
  Tensor t(val.dtype, val.shape);
  GV_RETURN_IF_ERROR(backend_.copy_to_host(t.data(), ptrs_[v], t.nbytes()));
  return t;
}

}  // namespace gv
