// CUDA kernels of the communication ops (runtime/ops/parallel_ops.cpp, sharded_update_ops.cpp, and the training op
// AllReduce): AllGather, ReduceScatter, SplitToGroup, TensorParallelCopy, TensorParallelReduce, Send, Recv, AllReduce,
// GatherShardsInPlace, ZeroBuffer, WaitCollectives. Registered into OpSchema::cuda by register_cuda_parallel_kernels(), which the CUDA
// backend calls after register_cuda_kernels() (so AllReduce's kernel here replaces the one there).
//
// Three cases per op:
//   - one process (no communicator; attr group empty or {0}): device-to-device copies, no communication;
//   - an NCCL communicator (runtime/nccl_communicator.h): the communicator is called with the device buffers;
//   - any other communicator (MPI with CUDA tensors, where NCCL is not built): the fallback kernel, i.e. the CPU kernel
//     on host copies of the operands (slow but right).
// SplitToGroup, TensorParallelCopy and ZeroBuffer never communicate and always run on the device. Attribute checks
// the kernels leave out (odd sizes, groups on a single process) go to the fallback, whose CPU kernel reports them.
// GradNorm keeps its kernel from runtime/cuda_kernels_ops.cpp: with attr all_reduce it falls back to the CPU kernel,
// whose all-reduce of a host double the NCCL communicator forwards to its host communicator.
#ifdef GALVATRON_HAVE_CUDA
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "runtime/communicator.h"
#include "runtime/cuda_kernels.h"

namespace gv {
namespace {

constexpr int64_t kTagsPerMicroBatch = 65536;  // as runtime/ops/parallel_ops.cpp

bool is_nccl(const Communicator* c) { return c && std::strcmp(c->backend_name(), "nccl") == 0; }

// No communicator and a trivial group: this process is the whole group.
bool single(const KernelContext& ctx) {
  const std::vector<int64_t> g = ctx.attrs().get_ints("group");
  return !ctx.comm && (g.empty() || (g.size() == 1 && g[0] == 0));
}

// The communicator of attr group (ctx.comm itself for an empty group); ctx.comm must be set.
Expected<Communicator*> group_comm(const KernelContext& ctx) {
  auto c = communicator_of_group(ctx.comm, ctx.attrs().get_ints("group"));
  if (!c) return ctx.fail(c.status().message());
  return *c;
}

Status cuda_fail(const KernelContext& ctx, const char* what) {
  return ctx.fail(std::string("CUDA ") + what + " failed: " + cuda::last_error());
}

Status copy(const KernelContext& ctx, void* dst, const void* src, size_t bytes) {
  if (!bytes || dst == src) return Status::ok();
  return cuda::memcpy_d2d_async(dst, src, bytes) ? Status::ok() : cuda_fail(ctx, "device copy");
}

Status comm_result(const KernelContext& ctx, const Status& st) { return st.is_ok() ? st : ctx.fail(st.message()); }

int64_t row_elems(const Shape& s) {
  int64_t n = 1;
  for (size_t i = 1; i < s.size(); ++i) n *= s[i];
  return n;
}

// attr sizes over a group: counts in elements and my offset. False (the fallback reports it) when sizes do not fit.
struct Sized {
  Communicator* comm = nullptr;
  int pos = 0;
  std::vector<int64_t> sizes;
  std::vector<size_t> counts;
  size_t offset = 0;
};
bool sized(Communicator* c, const KernelContext& ctx, int64_t row, Sized& s) {
  s.comm = c;
  s.pos = c ? c->rank() : 0;
  const int members = c ? c->size() : 1;
  s.sizes = ctx.attrs().get_ints("sizes");
  if (static_cast<int>(s.sizes.size()) != members) return false;
  for (int i = 0; i < members; ++i) {
    s.counts.push_back(static_cast<size_t>(s.sizes[i] * row));
    if (i < s.pos) s.offset += s.counts.back();
  }
  return true;
}

// ---- AllGather, ReduceScatter, SplitToGroup ----------------------------------------------------------------------

Status all_gather_cuda(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  Sized g;
  if (single(ctx)) {
    if (!sized(nullptr, ctx, row_elems(x.shape), g) || x.shape[0] != g.sizes[0]) return cuda_fallback_kernel(ctx);
    return copy(ctx, y.data, x.data, x.nbytes());
  }
  if (!is_nccl(ctx.comm)) return cuda_fallback_kernel(ctx);
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
  if (!sized(c, ctx, row_elems(x.shape), g) || x.shape[0] != g.sizes[g.pos]) return cuda_fallback_kernel(ctx);
  return comm_result(ctx, c->all_gather(x.data, y.data, g.counts, x.dtype));
}

Status reduce_scatter_cuda(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  Sized g;
  if (single(ctx)) {
    if (!sized(nullptr, ctx, row_elems(x.shape), g) || y.shape[0] != g.sizes[0]) return cuda_fallback_kernel(ctx);
    return copy(ctx, y.data, x.data, x.nbytes());
  }
  if (!is_nccl(ctx.comm)) return cuda_fallback_kernel(ctx);
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
  if (!sized(c, ctx, row_elems(x.shape), g) || y.shape[0] != g.sizes[g.pos]) return cuda_fallback_kernel(ctx);
  // attr async = 1 (ZeRO-2 under overlap_grad_sync): on the comm stream; a later WaitCollectives orders it.
  if (ctx.attrs().get_int("async", 0) == 1) {
    return comm_result(ctx, c->reduce_scatter_async(x.data, y.data, g.counts, x.dtype, ReduceOp::kSum));
  }
  return comm_result(ctx, c->reduce_scatter(x.data, y.data, g.counts, x.dtype, ReduceOp::kSum));
}

// My rows of a replicated input: a copy, whatever the communicator.
Status split_to_group_cuda(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  Communicator* c = nullptr;
  if (!single(ctx)) {
    if (!ctx.comm) return cuda_fallback_kernel(ctx);
    GV_ASSIGN_OR_RETURN(c, group_comm(ctx));
  }
  Sized g;
  if (!sized(c, ctx, row_elems(x.shape), g) || y.shape[0] != g.sizes[g.pos]) return cuda_fallback_kernel(ctx);
  return copy(ctx, y.data, static_cast<const char*>(x.data) + g.offset * dtype_size(x.dtype), y.nbytes());
}

// ---- TensorParallelCopy, TensorParallelReduce ---------------------------------------------------------------------

Status tp_copy_cuda(KernelContext& ctx) {
  if (!single(ctx)) {
    if (!ctx.comm) return cuda_fallback_kernel(ctx);
    GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));  // checks the group even though nothing is sent
    (void)c;
  }
  return copy(ctx, ctx.outputs[0].data, ctx.inputs[0].data, ctx.inputs[0].nbytes());
}

Status tp_reduce_cuda(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  const TensorRef& y = ctx.outputs[0];
  if (single(ctx)) return copy(ctx, y.data, x.data, x.nbytes());
  if (!is_nccl(ctx.comm)) return cuda_fallback_kernel(ctx);
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
  GV_RETURN_IF_ERROR(copy(ctx, y.data, x.data, x.nbytes()));
  return comm_result(ctx, c->all_reduce(y.data, static_cast<size_t>(y.numel()), y.dtype, ReduceOp::kSum));
}

// ---- Send, Recv ---------------------------------------------------------------------------------------------------

Status message_tag(const KernelContext& ctx, int& peer, int& tag) {
  peer = static_cast<int>(ctx.attrs().get_int("peer", 0));
  const int64_t t = ctx.attrs().get_int("tag", 0) + ctx.micro_batch * kTagsPerMicroBatch;
  if (ctx.micro_batch < 0 || t > INT_MAX) {
    return ctx.fail("message tag " + std::to_string(t) + " (tag + micro-batch " + std::to_string(ctx.micro_batch) +
                    " * 65536) does not fit a message tag: use fewer micro-batches per step");
  }
  tag = static_cast<int>(t);
  return Status::ok();
}

// Without NCCL (one process, or MPI) the CPU kernel runs on host copies: its messages are host bytes.
Status send_cuda(KernelContext& ctx) {
  if (!is_nccl(ctx.comm)) return cuda_fallback_kernel(ctx);
  int peer, tag;
  GV_RETURN_IF_ERROR(message_tag(ctx, peer, tag));
  const TensorRef& x = ctx.inputs[0];
  Status st = ctx.comm->send(x.data, x.nbytes(), peer, tag);
  if (!st.is_ok()) return ctx.fail("send to rank " + std::to_string(peer) + ": " + st.message());
  return cuda::memset_async(ctx.outputs[0].data, sizeof(float)) ? Status::ok() : cuda_fail(ctx, "memset");
}

Status recv_cuda(KernelContext& ctx) {
  if (!is_nccl(ctx.comm)) return cuda_fallback_kernel(ctx);
  int peer, tag;
  GV_RETURN_IF_ERROR(message_tag(ctx, peer, tag));
  const TensorRef& y = ctx.outputs[0];
  Status st = ctx.comm->recv(y.data, y.nbytes(), peer, tag);
  return st.is_ok() ? st : ctx.fail("recv from rank " + std::to_string(peer) + ": " + st.message());
}

// ---- AllReduce (data parallelism), GatherShardsInPlace, ZeroBuffer -----------------------------------------------

Status all_reduce_cuda(KernelContext& ctx) {
  const TensorRef& g = ctx.inputs[0];
  if (g.dtype != DType::kFloat32 && g.dtype != DType::kFloat64 && g.dtype != DType::kBFloat16) {
    return cuda_fallback_kernel(ctx);
  }
  if (single(ctx)) return Status::ok();
  if (!is_nccl(ctx.comm)) return cuda_fallback_kernel(ctx);
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
  const ReduceOp op = ctx.attrs().get_string("reduction", "mean") == "sum" ? ReduceOp::kSum : ReduceOp::kAvg;
  const size_t n = static_cast<size_t>(g.numel());
  // attr async = 1: on the communicator's comm stream, overlapping the rest of the backward pass; a later
  // WaitCollectives orders it before the optimizer (runtime/nccl_communicator.h).
  if (ctx.attrs().get_int("async", 0) == 1) return comm_result(ctx, c->all_reduce_async(g.data, n, g.dtype, op));
  return comm_result(ctx, c->all_reduce(g.data, n, g.dtype, op));
}

// Stream 0 waits (without blocking the host) for every async collective of this process's communicators.
Status wait_collectives_cuda(KernelContext& ctx) {
  if (!ctx.comm) return Status::ok();
  const int keep = static_cast<int>(ctx.attrs().get_int("keep_pending", 0));
  return comm_result(ctx, keep > 0 ? ctx.comm->wait_async_but_last(keep) : ctx.comm->wait_async());
}

// Every rank's range of the parameter, gathered in place: my range is the send buffer at its own place in the output
// (NCCL's in-place all-gather; with unequal ranges, an in-place broadcast per rank).
Status gather_shards_cuda(KernelContext& ctx) {
  const TensorRef& p = ctx.inputs[0];
  const std::vector<int64_t> sizes = ctx.attrs().get_ints("sizes");
  if (!ctx.comm) {
    if (sizes.size() > 1) return cuda_fallback_kernel(ctx);  // reports the missing communicator
    return Status::ok();
  }
  if (!is_nccl(ctx.comm)) return cuda_fallback_kernel(ctx);
  GV_ASSIGN_OR_RETURN(Communicator * c, group_comm(ctx));
  if (static_cast<int>(sizes.size()) != c->size()) return cuda_fallback_kernel(ctx);
  std::vector<size_t> counts(sizes.begin(), sizes.end());
  size_t offset = 0;
  for (int i = 0; i < c->rank(); ++i) offset += counts[i];
  const char* mine = static_cast<const char*>(p.data) + offset * dtype_size(p.dtype);
  if (ctx.attrs().get_int("async", 0) == 1) return comm_result(ctx, c->all_gather_async(mine, p.data, counts, p.dtype));
  return comm_result(ctx, c->all_gather(mine, p.data, counts, p.dtype));
}

Status zero_buffer_cuda(KernelContext& ctx) {
  const TensorRef& b = ctx.inputs[0];
  const size_t bytes = static_cast<size_t>(b.numel()) * dtype_size(b.dtype);
  if (!bytes) return Status::ok();
  return cuda::memset_async(b.data, bytes) ? Status::ok() : cuda_fail(ctx, "memset");
}

}  // namespace

// Fills OpSchema::cuda of the communication ops. Called by the CUDA backend after register_cuda_kernels().
void register_cuda_parallel_kernels(OpRegistry& r) {
  auto set = [&r](const char* name, KernelFn k) {
    if (OpSchema* s = r.find_mutable(kGalvatronDomain, name)) s->cuda = k;
  };
  set("AllGather", cuda_profiled<all_gather_cuda>);
  set("ReduceScatter", cuda_profiled<reduce_scatter_cuda>);
  set("SplitToGroup", cuda_profiled<split_to_group_cuda>);
  set("TensorParallelCopy", cuda_profiled<tp_copy_cuda>);
  set("TensorParallelReduce", cuda_profiled<tp_reduce_cuda>);
  set("Send", cuda_profiled<send_cuda>);
  set("Recv", cuda_profiled<recv_cuda>);
  set("AllReduce", cuda_profiled<all_reduce_cuda>);
  set("GatherShardsInPlace", cuda_profiled<gather_shards_cuda>);
  set("ZeroBuffer", cuda_profiled<zero_buffer_cuda>);
  set("WaitCollectives", cuda_profiled<wait_collectives_cuda>);
}

}  // namespace gv
#endif
