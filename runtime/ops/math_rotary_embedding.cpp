// ONNX RotaryEmbedding (opset 23): rotary position embedding of X's head vectors by cos / sin tables
// (kernels/cpu/rotary.h has the arithmetic). runtime/fuse_rotary.cpp forms it from HF's rotate_half chain.
//   X: [B, H, S, D] (4-D, heads first) or [B, S, H * D] (3-D, attribute num_heads = H)
//   cos_cache, sin_cache: [B, S, R / 2] without position_ids; [P, R / 2] with position_ids [B, S] (int64) in [0, P)
//   attributes: interleaved (0: halves, 1: adjacent pairs), rotary_embedding_dim R (0: D), num_heads (3-D X)
// The tables have X's dtype, or (beyond ONNX) float32 beside a bfloat16 / float16 X.
// The backward is the inverse rotation, the same op over dY with sin negated (ordinary graph nodes); the tables and
// positions take no gradient.
#include "kernels/cpu/rotary.h"
#include "runtime/ops/elementwise_common.h"
#include "runtime/ops/math_common.h"
#include "runtime/ops/rotary_layout.h"

namespace gv::math {
namespace {

Status infer_rotary(InferContext& ctx) {
  const DType t = ctx.dtype(0);
  if (t != DType::kFloat32 && t != DType::kFloat64 && t != DType::kBFloat16 && t != DType::kFloat16) {
    return ctx.fail(std::string("X must be floating-point, got ") + dtype_name(t));
  }
  cpu::RotaryLayout l;
  if (std::string why = rotary_layout(ctx.attrs(), ctx.shape(0), l); !why.empty()) return ctx.fail(why);
  const bool positions = ctx.has_input(3);
  if (positions && (ctx.dtype(3) != DType::kInt64 || ctx.shape(3) != Shape{l.batch, l.seq})) {
    return ctx.fail("position_ids must be int64 [" + std::to_string(l.batch) + ", " + std::to_string(l.seq) +
                    "], got " + dtype_name(ctx.dtype(3)) + " " + shape_str(ctx.shape(3)));
  }
  for (int i : {1, 2}) {
    const Shape& c = ctx.shape(i);
    const bool ok =
        positions ? c.size() == 2 && c[1] == l.rotary_dim / 2 : c == Shape{l.batch, l.seq, l.rotary_dim / 2};
    const char* what = i == 1 ? "cos_cache" : "sin_cache";
    if (!ok) {
      return ctx.fail(std::string(what) + " " + shape_str(c) + " must be " +
                      (positions ? "[max_position + 1, " : "[B, S, ") + std::to_string(l.rotary_dim / 2) + "]");
    }
    const bool wide_tables = ctx.dtype(i) == DType::kFloat32 && (t == DType::kBFloat16 || t == DType::kFloat16);
    if (ctx.dtype(i) != t && !wide_tables) {
      return ctx.fail(std::string(what) + " must have X's dtype " + dtype_name(t) + " (or float32 beside 16-bit X)");
    }
  }
  ctx.set_output(0, t, ctx.shape(0));
  return Status::ok();
}

Status rotary_cpu(KernelContext& ctx) {
  const TensorRef& x = ctx.inputs[0];
  cpu::RotaryLayout l;
  if (std::string why = rotary_layout(ctx.attrs(), x.shape, l); !why.empty()) return ctx.fail(why);
  const int64_t* pos = ctx.has_input(3) ? ctx.inputs[3].as<int64_t>() : nullptr;
  if (pos) {
    const int64_t rows = ctx.inputs[1].shape[0];
    for (int64_t i = 0; i < l.batch * l.seq; ++i) {
      if (pos[i] < 0 || pos[i] >= rows) {
        return ctx.fail("position_ids holds " + std::to_string(pos[i]) + ", outside the tables' " +
                        std::to_string(rows) + " rows");
      }
    }
  }
  return dispatch_float(x.dtype, ctx, [&](auto tag) {
    using T = decltype(tag);
    cpu::rotary_embedding<T>(x.as<T>(), ctx.inputs[1].as<T>(), ctx.inputs[2].as<T>(), pos, ctx.outputs[0].as<T>(), l);
  });
}

// dX = RotaryEmbedding(dY, cos, -sin, position_ids): the rotation's transpose is the rotation by minus the angle.
Status rotary_grad(GradBuilder& gb) {
  if (gb.needs_grad(1) || gb.needs_grad(2)) {
    return unsupported("RotaryEmbedding node '" + gb.node().name +
                       "': its cos_cache / sin_cache lead to a parameter; gradients of the tables are not supported");
  }
  if (!gb.needs_grad(0)) return Status::ok();
  // A constant table (the fused models' case) is negated once here; one computed at run time gets a Neg node.
  const ValueId sin = gb.input(2);
  ValueId neg_sin = kNoValue;
  if (gb.graph().is_constant(sin) && (gb.dtype(sin) == DType::kFloat32 || gb.dtype(sin) == DType::kFloat64)) {
    Tensor t = gb.graph().value(sin).data.clone();
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (t.dtype() == DType::kFloat32) {
        t.data_as<float>()[i] = -t.data_as<float>()[i];
      } else {
        t.data_as<double>()[i] = -t.data_as<double>()[i];
      }
    }
    neg_sin = gb.constant(std::move(t));
  } else {
    neg_sin = gb.emit1("Neg", {sin});
  }
  std::vector<ValueId> in = {gb.grad_output(0), gb.input(1), neg_sin};
  if (gb.input(3) != kNoValue) in.push_back(gb.input(3));
  gb.set_grad_input(0, gb.emit1("RotaryEmbedding", in, gb.attrs()));
  return gb.status();
}

}  // namespace

void register_rotary_embedding_ops(OpRegistry& r) {
  OpSchema s = make_schema("", "RotaryEmbedding", 3, 4, 1, 1, infer_rotary, elementwise::with_half_as_float<rotary_cpu>,
                           "(X, cos_cache, sin_cache, position_ids?) -> X rotated pairwise by position (RoPE); "
                           "interleaved, rotary_embedding_dim, num_heads");
  s.grad = rotary_grad;
  r.add(s);
}

}  // namespace gv::math
