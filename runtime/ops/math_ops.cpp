// The math op family: matrix products, softmax, normalization, reductions, losses and Dropout. Each idea lives in its
// own file (runtime/ops/math_*.cpp, norm_ops.cpp, reduce_ops.cpp, loss_ops.cpp); this registers them all.
#include "runtime/ops/all_ops.h"
#include "runtime/ops/math_common.h"

namespace gv {

void register_math_ops(OpRegistry& r) {
  math::register_matmul_ops(r);
  math::register_softmax_ops(r);
  math::register_dropout_ops(r);
  math::register_norm_ops(r);
  math::register_skip_norm_ops(r);
  math::register_reduce_ops(r);
  math::register_loss_ops(r);
  math::register_linear_cross_entropy_ops(r);
  math::register_linear_ops(r);
  math::register_gelu_grad_product_ops(r);
  math::register_bias_grad_ops(r);
  math::register_silu_mul_ops(r);
  math::register_rotary_embedding_ops(r);
}

}  // namespace gv
