// Every op family of runtime/ops. Each function adds its entries to the registry.
#pragma once

namespace gv {
class OpRegistry;
void register_elementwise_ops(OpRegistry& r);   // unary and binary math, comparisons, logic, Where, Cast, ...
void register_movement_ops(OpRegistry& r);      // Reshape, Transpose, Concat, Split, Slice, Gather*, Expand, ...
void register_math_ops(OpRegistry& r);          // MatMul, Gemm, Softmax, norms, reductions, losses, Dropout
void register_training_ops(OpRegistry& r);        // optimizer, gradient accumulation and norm ops (domain "galvatron")
void register_sharded_update_ops(OpRegistry& r);  // ZeRO-2's in-place gather of updated shards
void register_parallel_ops(OpRegistry& r);      // AllGather, ReduceScatter, TensorParallel*, Send, Recv (galvatron)
void register_vocab_parallel_ops(OpRegistry& r);  // VocabParallelCrossEntropy and its grad (galvatron)
void register_attention_ops(OpRegistry& r);         // Attention (ONNX, 4-D form) and galvatron AttentionGrad
void register_attention_packed_ops(OpRegistry& r);  // galvatron AttentionPacked(QKV) and its grad
}  // namespace gv
