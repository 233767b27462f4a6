// The elementwise op family of the ONNX default domain, plus its fused gradient ops (domain "galvatron").
// The entries live in runtime/ops/elementwise_*.cpp by kind; the loops in kernels/cpu/elementwise_*.cpp.
#include "runtime/op_registry.h"
#include "runtime/ops/all_ops.h"
#include "runtime/ops/elementwise_common.h"

namespace gv {

void register_elementwise_ops(OpRegistry& r) {
  elementwise::register_unary_math_ops(r);  // Neg Abs Sign Sqrt Reciprocal Exp Log Cos Sin Floor Ceil Round
                                            // IsNaN IsInf Not Clip
  elementwise::register_activation_ops(r);  // Relu LeakyRelu Sigmoid Tanh Erf Gelu Softplus HardSigmoid, *Grad
  elementwise::register_binary_ops(r);      // Add Sub Mul Div Pow Mod, comparisons, And Or Xor
  elementwise::register_variadic_ops(r);    // Max Min Sum Mean Where
  elementwise::register_cast_ops(r);        // Cast CastLike Identity
}

}  // namespace gv
