// Communication ops of the galvatron domain, for tensor, sequence and pipeline parallelism. Each kernel talks through
// the executor's world communicator (KernelContext::comm; null: one process, where every group is {0} and the ops
// act as one rank). Attributes shared by the collectives:
//   group  (ints)  world ranks taking part, in order; absent or empty: the whole world. Members are counted by their
//                  position in this list ("my position").
//   sizes  (ints)  each member's dim-0 size, in group order (AllGather, ReduceScatter, SplitToGroup).
//   index  (int)   optional: my position in the group (or any member's with my size). Shape inference needs it for
//                  ReduceScatter / SplitToGroup when sizes differ: the output has sizes[index] rows. Kernels check
//                  that this process's own size (sizes[my position]) matches the shapes.
// Ops:
//   AllGather(x) -> y            y = concat over members of x along axis 0; attr backward = "reduce_scatter"
//                                (default) | "split" (grad_y is identical on every member)
//   ReduceScatter(x) -> y        my rows [off, off + sizes[me]) of the element-wise sum over members
//                                (attr async = 1: the CUDA kernel returns before the data moved; WaitCollectives
//                                orders it, runtime/training_graph.h)
//   SplitToGroup(x) -> y         my rows of x (x replicated on the members); no communication
//   TensorParallelCopy(x) -> y   y = x; backward all-reduces the gradient (Megatron's f)
//   TensorParallelReduce(x) -> y y = sum of x over the group; backward is the identity (Megatron's g)
//   Send(x) -> token             sends x to world rank `peer`; token = float32 scalar 0 (summed into the loss)
//   Recv() -> y                  receives `shape`/`dtype` from world rank `peer`
// Send/Recv messages carry tag + micro_batch * 65536 (tag in [0, 65536)), so micro-batches in flight never mix.
#include <climits>
#include <cstring>
#include <numeric>
#include <string>

#include "runtime/autograd.h"
#include "runtime/communicator.h"
#include "runtime/op_registry.h"
#include "runtime/ops/all_ops.h"

namespace gv {
namespace {

constexpr int64_t kTagsPerMicroBatch = 65536;

std::string ints_str(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t x : v) {
    if (!s.empty()) s += ',';
    s += std::to_string(x);
  }
  return "[" + s + "]";
}

// ---- attributes ---------------------------------------------------------------------------------------------------

// Checks `group` (distinct, non-negative ranks) and, where the op has them, `sizes` (non-negative, one per member)
// and `index`.
Status check_group_attrs(const InferContext& ctx, bool with_sizes) {
  const std::vector<int64_t> group = ctx.attrs().get_ints("group");
  for (size_t i = 0; i < group.size(); ++i) {
    if (group[i] < 0) return ctx.fail("attr group " + ints_str(group) + " holds a negative rank");
    for (size_t j = 0; j < i; ++j) {
      if (group[j] == group[i]) return ctx.fail("attr group " + ints_str(group) + " lists a rank twice");
    }
  }
  if (!with_sizes) return Status::ok();
  const std::vector<int64_t> sizes = ctx.attrs().get_ints("sizes");
  if (sizes.empty()) return ctx.fail("attr sizes (each member's dim-0 size, in group order) is required");
  for (int64_t s : sizes) {
    if (s < 0) return ctx.fail("attr sizes " + ints_str(sizes) + " holds a negative size");
  }
  if (!group.empty() && group.size() != sizes.size()) {
    return ctx.fail("attr sizes " + ints_str(sizes) + " needs one size per member of group " + ints_str(group));
  }
  if (ctx.attrs().has("index")) {
    const int64_t index = ctx.attrs().get_int("index", 0);
    if (index < 0 || index >= static_cast<int64_t>(sizes.size())) {
      return ctx.fail("attr index " + std::to_string(index) + " is outside the " + std::to_string(sizes.size()) +
                      " members");
    }
  }
  if (ctx.num_inputs() > 0 && ctx.rank(0) < 1) return ctx.fail("input must have at least one dimension (dim 0 is split)");
  return Status::ok();
}

// The number of rows this process holds after ReduceScatter / SplitToGroup: sizes[index], or the common size.
Status my_rows(const InferContext& ctx, int64_t& rows) {
  const std::vector<int64_t> sizes = ctx.attrs().get_ints("sizes");
  if (ctx.attrs().has("index")) {
    rows = sizes[ctx.attrs().get_int("index", 0)];
    return Status::ok();
  }
  for (int64_t s : sizes) {
    if (s != sizes[0]) {
      return ctx.fail("attr sizes " + ints_str(sizes) + " differ: set attr index (this process's position in the "
                      "group) so that the output shape is known");
    }
  }
  rows = sizes[0];
  return Status::ok();
}

// The communicator of the node's group: ctx.comm's group(ranks), ctx.comm itself for the whole world, or null for one
// process (then the group must be empty or {0}).
Expected<Communicator*> group_comm(const KernelContext& ctx) {
  auto c = communicator_of_group(ctx.comm, ctx.attrs().get_ints("group"));
  if (!c) return ctx.fail(c.status().message());
  return *c;
}

// The node's group with its position, after the check every sized collective makes: one size per member.
struct GroupView {
  Communicator* comm = nullptr;  // null: one process
  int pos = 0;
  std::vector<int64_t> sizes;
  std::vector<size_t> counts;  // sizes times the elements of one row
  size_t offset = 0;           // elements before my rows
};

Expected<GroupView> sized_group(const KernelContext& ctx, int64_t row_elems) {
  GroupView v;
  GV_ASSIGN_OR_RETURN(v.comm, group_comm(ctx));
  v.pos = v.comm ? v.comm->rank() : 0;
  const int members = v.comm ? v.comm->size() : 1;
  v.sizes = ctx.attrs().get_ints("sizes");
  if (static_cast<int>(v.sizes.size()) != members) {
    return ctx.fail("attr sizes " + ints_str(v.sizes) + " has " + std::to_string(v.sizes.size()) +
                    " entries, the group has " + std::to_string(members) + " members");
  }
  for (int i = 0; i < members; ++i) {
    v.counts.push_back(static_cast<size_t>(v.sizes[i] * row_elems));
    if (i < v.pos) v.offset += v.counts.back();
  }
  return v;
}

// Elements of one dim-0 row.
int64_t row_elems(const Shape& s) {
  int64_t n = 1;
  for (size_t i = 1; i < s.size(); ++i) n *= s[i];
  return n;
}

// The attributes a backward rule hands on to the op it emits: group, sizes and my position.
Attributes sized_attrs(GradBuilder& gb, int64_t my_dim0) {
  Attributes a;
  a.set_ints("group", gb.attrs().get_ints("group"));
  const std::vector<int64_t> sizes = gb.attrs().get_ints("sizes");
  a.set_ints("sizes", sizes);
  if (gb.attrs().has("index")) {
    a.set_int("index", gb.attrs().get_int("index", 0));
  } else {
    // Any member with my row count gives the right shape; the kernel finds its own position.
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (sizes[i] == my_dim0) {
        a.set_int("index", static_cast<int64_t>(i));
        break;
      }
    }
  }
  return a;
}

Status check_float(const InferContext& ctx) {
  const DType t = ctx.dtype(0);
  if (t == DType::kFloat32 || t == DType::kFloat64) return Status::ok();
  return ctx.fail(std::string("sums ") + dtype_name(t) + " inputs; float32 and float64 only");
}

// ---- AllGather ----------------------------------------------------------------------------------------------------

Status infer_all_gather(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_group_attrs(ctx, true));
  const std::string mode = ctx.attrs().get_string("backward", "reduce_scatter");
  if (mode != "reduce_scatter" && mode != "split") {
    return ctx.fail("attr backward is '" + mode + "': use reduce_scatter or split");
  }
  const std::vector<int64_t> sizes = ctx.attrs().get_ints("sizes");
  Shape out = ctx.shape(0);
  if (ctx.attrs().has("index") && sizes[ctx.attrs().get_int("index", 0)] != out[0]) {
    return ctx.fail("input has " + std::to_string(out[0]) + " rows, attr sizes " + ints_str(sizes) + " gives member " +
                    std::to_string(ctx.attrs().get_int("index", 0)) + " another count");
  }
  out[0] = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status all_gather_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  GV_ASSIGN_OR_RETURN(GroupView g, sized_group(ctx, row_elems(x.shape)));
  if (x.shape[0] != g.sizes[g.pos]) {
    return ctx.fail("input has " + std::to_string(x.shape[0]) + " rows, attr sizes " + ints_str(g.sizes) +
                    " gives this member (" + std::to_string(g.pos) + ") " + std::to_string(g.sizes[g.pos]));
  }
  if (!g.comm) {
    if (x.nbytes()) std::memcpy(ctx.outputs[0].data, x.data, x.nbytes());
    return Status::ok();
  }
  Status st = g.comm->all_gather(x.data, ctx.outputs[0].data, g.counts, x.dtype);
  return st.is_ok() ? st : ctx.fail(st.message());
}

ValueId emit_sized(GradBuilder& gb, const char* op, ValueId gy, int64_t my_dim0, const char* backward) {
  Attributes a = sized_attrs(gb, my_dim0);
  if (backward) a.set_string("backward", backward);
  return gb.emit1(op, {gy}, a, kGalvatronDomain);
}

Status all_gather_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0) || gb.grad_output(0) == kNoValue) return Status::ok();
  const int64_t rows = gb.shape(gb.input(0))[0];
  const bool split = gb.attrs().get_string("backward", "reduce_scatter") == "split";
  gb.set_grad_input(0, emit_sized(gb, split ? "SplitToGroup" : "ReduceScatter", gb.grad_output(0), rows, nullptr));
  return Status::ok();
}

// ---- ReduceScatter, SplitToGroup ----------------------------------------------------------------------------------

Status infer_scattered(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_group_attrs(ctx, true));
  const std::vector<int64_t> sizes = ctx.attrs().get_ints("sizes");
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  Shape out = ctx.shape(0);
  if (out[0] != total) {
    return ctx.fail("input has " + std::to_string(out[0]) + " rows, attr sizes " + ints_str(sizes) + " add up to " +
                    std::to_string(total));
  }
  GV_RETURN_IF_ERROR(my_rows(ctx, out[0]));
  ctx.set_output(0, ctx.dtype(0), out);
  return Status::ok();
}

Status infer_reduce_scatter(InferContext& ctx) {
  // bfloat16 too: ZeRO-2's bf16 gradients (runtime/training_graph.h bf16_grad_reduce).
  if (ctx.dtype(0) != DType::kBFloat16) GV_RETURN_IF_ERROR(check_float(ctx));
  return infer_scattered(ctx);
}

// The kernel's view of a scattered output: my position's row count must be the output's.
Status check_my_rows(const KernelContext& ctx, const GroupView& g) {
  const int64_t rows = ctx.outputs[0].shape[0];
  if (g.sizes[g.pos] == rows) return Status::ok();
  return ctx.fail("this process is member " + std::to_string(g.pos) + " of the group with " +
                  std::to_string(g.sizes[g.pos]) + " rows (attr sizes " + ints_str(g.sizes) +
                  "), but the output was inferred with " + std::to_string(rows) + ": set attr index to this "
                  "process's position");
}

Status reduce_scatter_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  GV_ASSIGN_OR_RETURN(GroupView g, sized_group(ctx, row_elems(x.shape)));
  GV_RETURN_IF_ERROR(check_my_rows(ctx, g));
  if (!g.comm) {
    if (x.nbytes()) std::memcpy(ctx.outputs[0].data, x.data, x.nbytes());
    return Status::ok();
  }
  Status st = g.comm->reduce_scatter(x.data, ctx.outputs[0].data, g.counts, x.dtype, ReduceOp::kSum);
  return st.is_ok() ? st : ctx.fail(st.message());
}

Status split_to_group_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  GV_ASSIGN_OR_RETURN(GroupView g, sized_group(ctx, row_elems(x.shape)));
  GV_RETURN_IF_ERROR(check_my_rows(ctx, g));
  const TensorRef& y = ctx.outputs[0];
  if (y.nbytes()) std::memcpy(y.data, static_cast<const char*>(x.data) + g.offset * dtype_size(x.dtype), y.nbytes());
  return Status::ok();
}

Status reduce_scatter_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0) || gb.grad_output(0) == kNoValue) return Status::ok();
  const int64_t rows = gb.shape(gb.output(0))[0];
  gb.set_grad_input(0, emit_sized(gb, "AllGather", gb.grad_output(0), rows, "reduce_scatter"));
  return Status::ok();
}

Status split_to_group_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0) || gb.grad_output(0) == kNoValue) return Status::ok();
  const int64_t rows = gb.shape(gb.output(0))[0];
  gb.set_grad_input(0, emit_sized(gb, "AllGather", gb.grad_output(0), rows, "split"));
  return Status::ok();
}

// ---- TensorParallelCopy, TensorParallelReduce ---------------------------------------------------------------------

Status infer_tp(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_group_attrs(ctx, false));
  GV_RETURN_IF_ERROR(check_float(ctx));
  ctx.set_output(0, ctx.dtype(0), ctx.shape(0));
  return Status::ok();
}

Status tp_copy_cpu(KernelContext& ctx) {
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));  // checks the group even though nothing is sent
  (void)c;
  const TensorRef& x = ctx.inputs[0];
  if (x.nbytes() && x.data != ctx.outputs[0].data) std::memcpy(ctx.outputs[0].data, x.data, x.nbytes());
  return Status::ok();
}

Status tp_reduce_cpu(KernelContext& ctx) {
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  if (x.nbytes() && x.data != y.data) std::memcpy(y.data, x.data, x.nbytes());
  if (!c) return Status::ok();
  Status st = c->all_reduce(y.data, static_cast<size_t>(y.numel()), y.dtype, ReduceOp::kSum);
  return st.is_ok() ? st : ctx.fail(st.message());
}

Attributes group_only(const GradBuilder& gb) {
  Attributes a;
  a.set_ints("group", gb.attrs().get_ints("group"));
  return a;
}

Status tp_copy_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0) || gb.grad_output(0) == kNoValue) return Status::ok();
  gb.set_grad_input(0, gb.emit1("TensorParallelReduce", {gb.grad_output(0)}, group_only(gb), kGalvatronDomain));
  return Status::ok();
}

Status tp_reduce_grad(GradBuilder& gb) {
  if (gb.needs_grad(0)) gb.set_grad_input(0, gb.grad_output(0));
  return Status::ok();
}

// ---- Send, Recv ---------------------------------------------------------------------------------------------------

Status check_peer_tag(const InferContext& ctx) {
  if (!ctx.attrs().has("peer") || ctx.attrs().get_int("peer", -1) < 0) {
    return ctx.fail("attr peer (the other process's world rank, >= 0) is required");
  }
  const int64_t tag = ctx.attrs().get_int("tag", 0);
  if (tag < 0 || tag >= kTagsPerMicroBatch) {
    return ctx.fail("attr tag " + std::to_string(tag) + " must lie in [0, 65536) (micro-batches take the bits above)");
  }
  return Status::ok();
}

Status infer_send(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_peer_tag(ctx));
  ctx.set_output(0, DType::kFloat32, {});
  return Status::ok();
}

Status infer_recv(InferContext& ctx) {
  GV_RETURN_IF_ERROR(check_peer_tag(ctx));
  const int64_t code = ctx.attrs().get_int("dtype", 1);
  const DType t = dtype_from_onnx(static_cast<int32_t>(code));
  if (t == DType::kUndefined) return ctx.fail("attr dtype " + std::to_string(code) + " is not a supported ONNX type");
  const std::vector<int64_t> shape = ctx.attrs().get_ints("shape");
  for (int64_t d : shape) {
    if (d < 0) return ctx.fail("attr shape " + ints_str(shape) + " holds a negative dimension");
  }
  ctx.set_output(0, t, shape);
  return Status::ok();
}

// The communicator and message tag of a Send/Recv. Without a communicator (one process), a per-thread
// single-process communicator lets a graph send to itself (rank 0).
Status p2p_setup(const KernelContext& ctx, Communicator*& comm, int& peer, int& tag) {
  comm = ctx.comm;
  if (!comm) {
    thread_local std::unique_ptr<Communicator> self = make_single_process_communicator();
    comm = self.get();
  }
  peer = static_cast<int>(ctx.attrs().get_int("peer", 0));
  const int64_t t = ctx.attrs().get_int("tag", 0) + ctx.micro_batch * kTagsPerMicroBatch;
  if (ctx.micro_batch < 0 || t > INT_MAX) {
    return ctx.fail("message tag " + std::to_string(t) + " (tag + micro-batch " + std::to_string(ctx.micro_batch) +
                    " * 65536) does not fit a message tag: use fewer micro-batches per step");
  }
  tag = static_cast<int>(t);
  return Status::ok();
}

Status send_cpu(KernelContext& ctx) {
  Communicator* comm;
  int peer, tag;
  GV_RETURN_IF_ERROR(p2p_setup(ctx, comm, peer, tag));
  const TensorRef& x = ctx.inputs[0];
  Status st = comm->send(x.data, x.nbytes(), peer, tag);
  if (!st.is_ok()) return ctx.fail("send to rank " + std::to_string(peer) + ": " + st.message());
  *ctx.outputs[0].as<float>() = 0.0f;
  return Status::ok();
}

Status recv_cpu(KernelContext& ctx) {
  Communicator* comm;
  int peer, tag;
  GV_RETURN_IF_ERROR(p2p_setup(ctx, comm, peer, tag));
  const TensorRef& y = ctx.outputs[0];
  Status st = comm->recv(y.data, y.nbytes(), peer, tag);
  return st.is_ok() ? st : ctx.fail("recv from rank " + std::to_string(peer) + ": " + st.message());
}

// The gradient of x comes back from the peer: a Recv of x's shape with tag + 1.
Status send_grad(GradBuilder& gb) {
  if (!gb.needs_grad(0) || gb.attrs().get_int("requires_grad", 0) != 1) return Status::ok();
  const ValueId x = gb.input(0);
  Attributes a;
  a.set_int("peer", gb.attrs().get_int("peer", 0));
  a.set_int("tag", gb.attrs().get_int("tag", 0) + 1);
  a.set_ints("shape", gb.shape(x));
  a.set_int("dtype", static_cast<int64_t>(gb.dtype(x)));
  a.set_int("requires_grad", 0);
  gb.set_grad_input(0, gb.emit1("Recv", {}, a, kGalvatronDomain));
  return Status::ok();
}

OpSchema op(const char* name, int inputs, InferFn infer, KernelFn cpu, GradFn grad, const char* doc) {
  OpSchema s;
  s.domain = kGalvatronDomain;
  s.name = name;
  s.min_inputs = s.max_inputs = inputs;
  s.infer = infer;
  s.cpu = cpu;
  s.grad = grad;
  s.doc = doc;
  return s;
}

}  // namespace

void register_parallel_ops(OpRegistry& r) {
  r.add(op("AllGather", 1, infer_all_gather, all_gather_cpu, all_gather_grad,
           "concatenation along axis 0 of every group member's input (attrs group, sizes, backward)"));
  r.add(op("ReduceScatter", 1, infer_reduce_scatter, reduce_scatter_cpu, reduce_scatter_grad,
           "this member's rows of the element-wise sum over the group (attrs group, sizes, index)"));
  r.add(op("SplitToGroup", 1, infer_scattered, split_to_group_cpu, split_to_group_grad,
           "this member's rows of a replicated input, no communication (attrs group, sizes, index)"));
  r.add(op("TensorParallelCopy", 1, infer_tp, tp_copy_cpu, tp_copy_grad,
           "identity whose backward all-reduces the gradient over the group (Megatron's copy to the TP region)"));
  r.add(op("TensorParallelReduce", 1, infer_tp, tp_reduce_cpu, tp_reduce_grad,
           "element-wise sum over the group; identity backward (Megatron's reduce from the TP region)"));
  r.add(op("Send", 1, infer_send, send_cpu, send_grad,
           "sends the input to world rank peer (attrs peer, tag, requires_grad); a float32 zero token"));
  r.add(op("Recv", 0, infer_recv, recv_cpu, nullptr,
           "receives a tensor from world rank peer (attrs peer, tag, shape, dtype)"));
}

}  // namespace gv
