// The ops that let a tied embedding's update run in two parts (runtime/split_lookup_updates.cpp): the rows of the
// table that no token of the batch looked up have their whole gradient once the LM head's part is made, the others
// only after the lookup's gradient is added to them.
//
//   RowsLookedUp(indices) attr rows -> uint8 [rows]: 1 at every row some index names (negative indices count from
//     the end), 0 elsewhere. AdamW's input 9 (RowMask) selects the rows of one part with it.
//   GatherGradAddInPlace(Base, grad, indices) attrs axis (0), padding_idx: GatherGradAdd writing into Base itself, so
//     that the rows it does not touch can be read (by the first part's update) while it runs.
#include <cstdint>
#include <cstring>
#include <string>

#include "runtime/op_registry.h"
#include "runtime/ops/movement_common.h"

namespace gv::movement {
namespace {

Status infer_rows_looked_up(InferContext& ctx) {
  if (!is_index_dtype(ctx.dtype(0))) {
    return ctx.fail("indices must be int32 or int64, got " + std::string(dtype_name(ctx.dtype(0))));
  }
  const int64_t rows = ctx.attrs().get_int("rows", -1);
  if (rows <= 0) return ctx.fail("attr rows (the table's rows) must be positive, got " + std::to_string(rows));
  ctx.set_output(0, DType::kUInt8, {rows});
  return Status::ok();
}

Status rows_looked_up_cpu(KernelContext& ctx) {
  const TensorRef &idx = ctx.inputs[0], &mask = ctx.outputs[0];
  const int64_t rows = mask.numel(), n = idx.numel();
  uint8_t* m = static_cast<uint8_t*>(mask.data);
  std::memset(m, 0, static_cast<size_t>(rows));
  int64_t bad = -1, value = 0;
  const bool ok = dispatch_index(idx.dtype, [&](auto tag) {
    using I = decltype(tag);
    const I* p = idx.as<I>();
    for (int64_t k = 0; k < n && bad < 0; ++k) {
      int64_t r = static_cast<int64_t>(p[k]);
      if (r < 0) r += rows;
      if (r < 0 || r >= rows) {
        bad = k;
        value = static_cast<int64_t>(p[k]);
      } else {
        m[r] = 1;
      }
    }
  });
  if (!ok) return ctx.fail("indices must be int32 or int64");
  if (bad >= 0) {
    return ctx.fail("index " + std::to_string(value) + " at position " + std::to_string(bad) +
                    " is out of range for a table of " + std::to_string(rows) + " rows");
  }
  return Status::ok();
}

Status infer_gather_grad_add_in_place(InferContext& ctx) {
  if (ctx.dtype(1) != ctx.dtype(0)) return ctx.fail("grad's dtype differs from Base's");
  return infer_gather_grad_rows(ctx, ctx.shape(0), 1, 2);
}

Status gather_grad_add_in_place_cpu(KernelContext& ctx) {
  return add_gather_grad_rows(ctx, ctx.inputs[1], ctx.inputs[2], ctx.inputs[0], false);
}

}  // namespace

void register_lookup_rows_ops(OpRegistry& r) {
  OpSchema rows = make_op("RowsLookedUp", 1, 1, infer_rows_looked_up, rows_looked_up_cpu, nullptr, {},
                          "uint8 [attr rows]: 1 at the rows the indices name, 0 elsewhere (the looked-up rows of a "
                          "table, for AdamW's RowMask)");
  rows.domain = kGalvatronDomain;
  r.add(rows);
  OpSchema gga =
      make_op("GatherGradAddInPlace", 3, 3, infer_gather_grad_add_in_place, gather_grad_add_in_place_cpu, nullptr, {},
              "Base += GatherGrad(grad, indices), in place (GatherGradAdd without the copy; formed when a "
              "tied embedding's update is split)");
  gga.domain = kGalvatronDomain;
  gga.min_outputs = 0;
  gga.max_outputs = 0;
  gga.writes_first_input_only = true;
  r.add(gga);
}

}  // namespace gv::movement
