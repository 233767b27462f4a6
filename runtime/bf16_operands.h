// Mixed precision for the matrix products of a training graph: one bfloat16 copy per float32 product operand that
// several products read, instead of each product converting it again. A layer's weight is read by its forward
// product and by the backward's dX product; its input activation by the forward product and the dW product; the
// output gradient by the dX and dW products: each is converted once (a Cast node) and the products read the copy.
// Where the products were the float32 activation's only readers past the forward, only the half-size copy is kept
// for the backward.
//
// Not a change of meaning beyond rounding: the backends that ask for it (Backend::shares_bf16_operands: CUDA in
// bf16) round these operands to bfloat16 inside every product already. The products become galvatron FusedMatMul
// with out_dtype float32 (float32 accumulation and result, as before).
#pragma once
#include "runtime/graph.h"
#include "runtime/status.h"

namespace gv {

struct Bf16OperandOptions {
  // A product qualifies when m*n >= min_mn * (m + n): its arithmetic outweighs an operand conversion (the CUDA
  // backend's own threshold for converting, kernels/cuda/blas.cu bf16_min_mn).
  double min_mn = 128.0;
  // Operands whose rows are not a multiple of this many elements stay float32 (bf16 rows 16-byte aligned).
  int64_t row_multiple = 8;
};

// Rewrites `graph` in place. The Cast nodes are inserted before each copy's first reader, so node indices shift:
// *boundary (optional; a node index such as TrainingGraph::backward_begin) moves by the number of nodes inserted
// (or removed) before it. Adds the number of copies made to *copies. A copy of an output that nothing else reads is
// then written by its producer itself in bf16 where the op's schema says it can (OpSchema::bf16_outputs, out_dtype 16:
// a galvatron Linear, with its pre-activation when only GeluGrad reads that; SiluMul, SiluMulGrad's two gradients
// together; AttentionPackedGrad's dQKV; a LayerNormalization's or RMSNormalization's Y, through its galvatron twin):
// the copies folded so are counted in *norm_outputs (the norms'; optional), *attention_grads (optional) and
// *linear_outputs (the others'). Bias-gradient sums (ReduceSum over the leading axes) of a copied value read the copy
// instead (galvatron BiasGrad): they no longer keep the float32 value alive.
Status share_bf16_operands(Graph& graph, const Bf16OperandOptions& options, size_t* boundary, int* copies,
                           int* linear_outputs, int* attention_grads = nullptr, int* norm_outputs = nullptr);

// bf16 attention I/O (runtime/bf16_attention_io.cpp), after share_bf16_operands: cuDNN's fused attention reads and
// writes bfloat16, so the float32 values around galvatron AttentionPacked / AttentionPackedGrad are stored in bf16
// where only attention nodes read them: the QKV (its Linear writes bf16: out_dtype 16), Y (the node writes Y's shared
// bf16 copy itself: y_dtype 16; the copy's Cast goes and the backward reads the copy) and dY (its FusedMatMul writes
// bf16). cuDNN's path rounds these values to bf16 itself, so it computes the same, except that the QKV product's bias
// is added in bf16 (cuBLASLt's bf16 epilogue); elsewhere the attention computes on the bf16-rounded values. Likewise
// for Q, K, V apart (galvatron AttentionWithLse / AttentionGrad, Llama's 3-D form, all eight values or none): Q, K, V
// (their Linears write bf16, a RotaryEmbedding between follows), Y, dY, and dQ, dK, dV (the backward, or the rotation
// after it, writes each gradient's shared copy); the rotations then round where cuDNN's copies rounded. *boundary as
// above; adds the number of values turned bf16 to *values.
Status bf16_attention_io(Graph& graph, size_t* boundary, int* values);

// The residual stream in bf16 (runtime/bf16_residual_stream.cpp), after fuse_skip_layer_norms and
// fuse_norm_grad_outputs: each SkipLayerNormalization's Sum that only later skip norms and its LayerNorm gradient
// read is written in bf16 (sum_dtype 16), and those gradients read their X in bf16, their Addend as the previous
// gradient's bf16 copy and their dY from the product before in bf16; float32 dX values nobody reads then get no
// buffer. Adds the number of Sums and dYs turned bf16 to *values.
Status bf16_residual_stream(Graph& graph, int* values);

// Persistent parameter copies (runtime/bf16_param_copies.cpp), on a whole training graph (after its optimizer nodes):
// the shared bf16 copy (Cast) of a float32 parameter that one AdamW node updates, and nothing else writes (a
// whole-parameter update, or a ZeRO-2 shard update whose copy a GatherShardsInPlace fills), becomes a kState value
// that the AdamW rewrites from the updated weights (its input 7, ParamBf16): the Cast no longer runs every step. Those
// Casts move to the front of the graph, nodes [0, *prologue_end), which the trainer runs before its first step and
// after it loads parameters; the rest of the graph never writes their inputs but through the AdamW. Only Casts before
// backward_begin move (so backward_begin and later indices keep their nodes). Adds the number of copies kept to *kept.
Status keep_bf16_param_copies(Graph& graph, size_t backward_begin, size_t* prologue_end, int* kept);
// Whether `n` is share_bf16_operands' Cast of a float32 parameter (the copies keep_bf16_param_copies may keep).
bool is_bf16_param_copy(const Graph& g, const Node& n);

}  // namespace gv
