// ZeRO-2's last step of an update: every rank of a data-parallel group updated its own flat range of a parameter
// (AdamW / SGD with shard_offset); GatherShardsInPlace(param) gives every rank the whole updated parameter.
// ZeroBuffer(buf) clears a buffer in place (the accumulated gradient, once reduce-scattered).
// Attributes of GatherShardsInPlace: group (world ranks, in shard order; absent = the whole world), sizes (elements of
// each rank's range, in group order, adding up to the parameter's size), async (1: the CUDA kernel returns before the
// data moved and a later WaitCollectives orders it; overlap_grad_sync, runtime/training_graph.h).
#include <cstring>
#include <vector>

#include "runtime/communicator.h"
#include "runtime/op_registry.h"

namespace gv {
namespace {

Status infer_gather_shards(InferContext& ctx) {
  auto sizes = ctx.attrs().get_ints("sizes");
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) return ctx.fail("attribute sizes has a negative entry");
    total += s;
  }
  if (total != shape_numel(ctx.shape(0))) {
    return ctx.fail("attribute sizes adds up to " + std::to_string(total) + " elements, the parameter has " +
                    std::to_string(shape_numel(ctx.shape(0))));
  }
  return Status::ok();
}

Status gather_shards_cpu(KernelContext& ctx) {
  const TensorRef& p = ctx.inputs[0];
  auto sizes64 = ctx.attrs().get_ints("sizes");
  if (!ctx.comm) {
    if (sizes64.size() > 1) return ctx.fail("needs a communicator of " + std::to_string(sizes64.size()) + " ranks");
    return Status::ok();
  }
  auto g = communicator_of_group(ctx.comm, ctx.attrs().get_ints("group"));
  if (!g) return ctx.fail(g.status().message());
  Communicator& c = **g;
  std::vector<size_t> counts(sizes64.begin(), sizes64.end());
  if (counts.size() != static_cast<size_t>(c.size())) return ctx.fail("attribute sizes does not match the group");
  size_t offset = 0;
  for (int i = 0; i < c.rank(); ++i) offset += counts[i];
  const size_t elem = dtype_size(p.dtype);
  // The gather reads this rank's range while writing the others': send from a copy.
  std::vector<unsigned char> mine(counts[c.rank()] * elem);
  const auto* base = static_cast<const unsigned char*>(p.data);
  std::copy(base + offset * elem, base + (offset + counts[c.rank()]) * elem, mine.begin());
  Status st = c.all_gather(mine.data(), p.data, counts, p.dtype);
  return st.is_ok() ? st : ctx.fail(st.message());
}

Status zero_buffer_cpu(KernelContext& ctx) {
  const TensorRef& b = ctx.inputs[0];
  std::memset(b.data, 0, static_cast<size_t>(b.numel()) * dtype_size(b.dtype));
  return Status::ok();
}

Status infer_nothing(InferContext&) { return Status::ok(); }

}  // namespace

// An in-place op of one input and no outputs.
static OpSchema in_place_unary(const char* name, InferFn infer, KernelFn cpu, const char* doc) {
  OpSchema s;
  s.domain = kGalvatronDomain;
  s.name = name;
  s.min_inputs = s.max_inputs = 1;
  s.min_outputs = s.max_outputs = 0;
  s.infer = infer;
  s.cpu = cpu;
  s.doc = doc;
  return s;
}

void register_sharded_update_ops(OpRegistry& r) {
  r.add(in_place_unary("GatherShardsInPlace", infer_gather_shards, gather_shards_cpu,
                       "ZeRO-2: all-gather, in place, the flat ranges of a parameter that the ranks of a group updated"));
  r.add(in_place_unary("ZeroBuffer", infer_nothing, zero_buffer_cpu,
                       "sets a buffer to zero in place (ZeRO-2: the accumulated gradient once it was reduce-scattered)"));
}

}  // namespace gv
