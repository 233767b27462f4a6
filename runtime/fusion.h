// Fusion passes over a forward graph: patterns the exporters emit, rewritten into single ops of exactly the same
// meaning (same outputs for every input, up to float rounding), so that autograd, the memory planner and the kernels
// see one node instead of a chain. build_training_graph runs them (TrainingGraphOptions::fuse_ops) before autograd,
// after the partitioner has cut the graph for this rank, so they see each rank's own heads and columns.
// Fused nodes keep the placement (layer) of the nodes they replace; values the pattern leaves unused are removed.
#pragma once
#include <functional>
#include <set>
#include <string>

#include "runtime/graph.h"
#include "runtime/status.h"

namespace gv {

struct FusionCounts {
  int unflattened_gemms = 0;  // Reshape -> Gemm -> Reshape around [.., K] inputs -> MatMul + Add (unflatten_gemms)
  int attention = 0;  // MatMul-scale-mask-Softmax-MatMul chains -> Attention (ONNX opset 23 semantics, 4-D form)
  int gelu = 0;       // tanh- or erf-approximation chains -> Gelu
  int rms_norm = 0;   // RMSNorm chains -> RMSNormalization (fuse_rms_norm)
  int silu_mul = 0;   // Sigmoid / Mul / Mul gates -> galvatron SiluMul (fuse_silu_mul)
  int rotary = 0;     // rotate_half chains -> RotaryEmbedding (fuse_rotary)
  int attention_3d = 0;  // Attention nodes between head transposes -> the 3-D form (counted apart from `attention`)
  int attention_lse = 0;  // Attention nodes that keep their log-sum-exp for the backward (save_attention_lse)
  int attention_saved_heads = 0;  // attention gradients reading the forward's padded heads (save_attention_heads)
  int norm_statistics = 0;  // LayerNormalization nodes that keep their Mean and InvStdDev (save_norm_statistics)
  int attention_packed = 0;  // of those, the ones reading their Q, K, V in place from one QKV tensor (pack_attention_qkv)
  int linear_cross_entropy = 0;  // head MatMul + SoftmaxCrossEntropyLoss -> LinearCrossEntropy (after the loss is attached)
  int linear = 0;  // MatMul [+ bias Add [+ Gelu]] or MatMul(X, Transpose(W)) -> Linear (fuse_linear)
  int sibling_linears = 0;  // groups of narrow Linears of one input -> one Linear and a Split (fuse_sibling_linears)
  int bf16_operands = 0;  // not a fusion: product operands given one shared bf16 copy (runtime/bf16_operands.h)
  int bf16_linear_outputs = 0;   // of those copies, the ones a Linear (or SiluMul, SiluMulGrad) writes itself
  int bf16_attention_grads = 0;  // and the dQKV copies an AttentionPackedGrad writes itself
  int bf16_norm_outputs = 0;     // and the LayerNormalization / RMSNormalization outputs written in bf16
  int bf16_attention_io = 0;     // QKV, Y and dY values around packed attention stored in bf16 (bf16_attention_io)
  int bf16_residual_stream = 0;  // the residual stream's Sums and the norms' dY in bf16 (bf16_residual_stream)
  int gelu_grad_products = 0;   // backward product + GeluGrad (+ bf16 copy, bias sum) -> GeluGradMatMul
  int residual_adds = 0;        // Add(Linear, R) -> Linear with a residual input (fuse_linear_residual_adds)
  int norm_grad_adds = 0;       // Add(LayerNormalizationGrad's dX, G) -> the grad with an addend
  int attention_bias_sums = 0;  // attention gradients writing the QKV bias gradient (fuse_attention_grad_bias_sums)
  int norm_grad_outputs = 0;    // norm gradients writing their bf16 copy (and bias sums) (fuse_norm_grad_outputs)
  int bf16_param_copies = 0;    // weights' bf16 copies kept by AdamW (keep_bf16_param_copies)
  int split_masters = 0;        // of those, float32 masters held as (copy, low halves) (split_float32_masters)
  int bf16_weight_grads = 0;    // weight gradients written in bf16 by their dW products (bf16_weight_grads)
  int gather_grad_adds = 0;     // Add(GatherGrad, D) -> GatherGradAdd(D, ..) (fold_gather_grad_adds)
  int skip_norms = 0;  // Linear(.., R) -> LayerNorm / RMSNorm pairs -> Linear + Skip*Normalization (fuse_skip_norm)
  int accumulating_products = 0;  // FusedMatMul + AccumulateGrad -> MatMulAccumulate (accumulate_in_products)
  int grad_sums_in_products = 0;  // Add(P, FusedMatMul) -> MatMulAccumulate(P, ..) (sum_grads_in_products)
  int updates_in_backward = 0;  // not a fusion: optimizer updates beside the backward (move_updates_into_backward)
  int grad_norm_in_updates = 0;  // updates summing the gradient norm's squares (grad_norm_in_updates)
  int bf16_sharded_updates = 0;  // not a fusion: ZeRO-2 updates reduce-scattering and gathering bf16 (training graph)
  // "2 attention (2 in the 3-D form, 2 keeping their LSE), 2 gelu, 1 linear cross-entropy, 40 shared bf16 operands"
  std::string summary() const;
};

// Every pass below, in order. Returns what was fused.
Expected<FusionCounts> fuse_forward_graph(Graph& graph);

// The passes (runtime/fuse_attention.cpp, runtime/fuse_attention_layout.cpp, runtime/fuse_gelu.cpp); each adds the number of patterns it rewrote.
Status fuse_attention(Graph& graph, int* fused);
// runtime/fuse_flattened_gemm.cpp: Gemm between the reshapes flattening and restoring its input's leading dims ->
// MatMul (+ Add) on the unflattened input, the form the later passes match (run first).
Status unflatten_gemms(Graph& graph, int* rewritten);
Status fuse_gelu(Graph& graph, int* fused);
Status fuse_attention_layout(Graph& graph, int* rewritten);
// Not a fusion: Attention nodes the flash kernels take -> galvatron AttentionWithLse, whose row statistics the
// backward reuses (runtime/attention_lse.cpp). build_training_graph runs it after the passes above when
// TrainingGraphOptions::save_attention_lse is set (the trainer sets it from Backend::saves_attention_statistics).
Status save_attention_lse(Graph& graph, int* rewritten);
// One chain of nodes a forward fusion rewrites into one node: `replacement` takes final_node's place (writing its
// outputs, so the order stays topological), the `removed` nodes go, and of `maybe_dead` (the removed nodes' outputs,
// constants they read) the values nothing refers to any more are dropped. Value ids are renumbered (fuse_gelu,
// fuse_rms_norm run before anything holds them).
struct OpSchema;
struct ChainReplacement {
  NodeId final_node = -1;
  std::vector<NodeId> removed;
  std::vector<ValueId> maybe_dead;
  Node replacement;
};
void replace_chains(Graph& graph, const std::vector<ChainReplacement>& chains);
// The loop of the chain fusions: `match` is tried at every node; each match that overlaps no earlier one and whose
// replacement (given a unique name and `opset`) passes replacement_infers is kept, and the kept chains are replaced.
// Adds their number to *fused.
void fuse_matches(Graph& graph, const OpSchema& schema, int opset,
                  const std::function<bool(NodeId, ChainReplacement*)>& match, int* fused);
// A fusion's check of its replacement node: the op's inference accepts it as written and gives the output value it
// takes over (output 0's dtype and shape).
bool replacement_infers(const Graph& graph, const OpSchema& schema, const Node& node);
// Appends to c->maybe_dead the outputs of c->removed's nodes and the constants they read.
void add_chain_values(const Graph& graph, ChainReplacement* c);
// The opset a default-domain node formed by a fusion gets: `since` (the op's first opset) or the graph's, if later,
// so that the registry runs it for a graph imported at any opset.
int fused_node_opset(const Graph& graph, int since);
// HF's LlamaRMSNorm as the exporters write it, w * (x * Reciprocal(Sqrt(ReduceMean(Pow(x, 2)) + eps))) (or x / Sqrt,
// Mul(x, x), an identity Cast before the weight), over the last axis -> one ONNX RMSNormalization(x, w)
// (runtime/fuse_rms_norm.cpp).
Status fuse_rms_norm(Graph& graph, int* fused);
// HF's SwiGLU gate Mul(Mul(g, Sigmoid(g)), u) -> galvatron SiluMul(g, u) (runtime/fuse_silu_mul.cpp).
Status fuse_silu_mul(Graph& graph, int* fused);
// HF's rotary embedding x * cos + rotate_half(x) * sin over [B, H, S, D] heads, with constant tables whose two halves
// repeat, -> ONNX RotaryEmbedding(x, cos_cache, sin_cache) (runtime/fuse_rotary.cpp). Runs before
// fuse_attention_layout, which carries such a node into the 3-D form with its attention.
Status fuse_rotary(Graph& graph, int* fused);
// For passes that ask an existing node for an optional output: appends to `node`'s outputs a new activation value
// named from `prefix`, of the given type and shape. The pass calls graph.reindex() when done.
ValueId add_node_output(Graph& graph, NodeId node, const std::string& prefix, DType dtype, Shape shape);
// The value alone (producer `node`), for a pass that places it in an output slot itself.
ValueId new_node_output(Graph& graph, NodeId node, const std::string& prefix, DType dtype, Shape shape);
// LayerNormalization nodes (float32 X, float32 statistics) without the Mean and InvStdDev outputs get them, so that
// their gradients read the saved statistics (runtime/norm_statistics.cpp). build_training_graph runs it before the
// autograd when TrainingGraphOptions::save_norm_statistics is set (from Backend::saves_norm_statistics).
Status save_norm_statistics(Graph& graph, int* rewritten);
// AttentionPacked nodes whose head size is not a multiple of `multiple` (> 0) keep their bf16 QKV and Y with heads
// padded to it (outputs QKVp, Yp; attribute saved_head_dim) and their AttentionPackedGrad reads them
// (runtime/attention_saved_heads.cpp). build_training_graph runs it after the backward's passes when
// TrainingGraphOptions::attention_saved_head_multiple is set (from Backend::attention_saved_head_multiple).
Status save_attention_heads(Graph& graph, int64_t multiple, int* rewritten);
// Split(QKV) -> AttentionWithLse(q, k, v) -> galvatron AttentionPacked(QKV), read in place by the flash kernels; the
// backward then writes dQKV without a Concat (runtime/attention_packed.cpp). build_training_graph runs it after
// save_attention_lse when TrainingGraphOptions::pack_attention_qkv is set (from Backend::packs_attention_qkv).
Status pack_attention_qkv(Graph& graph, int* rewritten);
// The loss's head product and SoftmaxCrossEntropyLoss -> galvatron LinearCrossEntropy, which never holds the [N, V]
// logits whole (runtime/fuse_linear_cross_entropy.cpp). build_training_graph runs it after attaching the loss;
// values named in `keep` (gradients reported by name) are not fused away.
Status fuse_linear_cross_entropy(Graph& graph, const std::set<std::string>& keep, int* fused);
// Products with their bias Add and Gelu, or with a transposed weight -> galvatron Linear (runtime/fuse_linear.cpp),
// run by the CUDA backend as one cuBLASLt product with a bias / GELU epilogue. build_training_graph runs it after
// fuse_linear_cross_entropy when TrainingGraphOptions::fuse_linear is set (from Backend::fuses_linear).
Status fuse_linear(Graph& graph, const std::set<std::string>& keep, int* fused);
// Narrow Linears reading the same input (a grouped-query model's K and V products) -> one Linear over their weights'
// Concat and a Split of its output (runtime/fuse_sibling_linears.cpp). build_training_graph runs it after fuse_linear
// when TrainingGraphOptions::fuse_sibling_linears is set too; not in graphs that communicate.
Status fuse_sibling_linears(Graph& graph, int* fused);
// In a training graph (nodes from backward_begin on): FusedMatMul -> GeluGrad -> (bf16 copy, bias-gradient ReduceSum)
// -> galvatron GeluGradMatMul, which the CUDA backend runs as one cuBLASLt product with a DGELU epilogue
// (runtime/fuse_gelu_grad_product.cpp). build_training_graph runs it after share_bf16_operands when
// TrainingGraphOptions::fuse_gelu_grad_product is set (from Backend::fuses_gelu_grad_product).
Status fuse_gelu_grad_products(Graph& graph, size_t backward_begin, int* fused);
// Residual adds folded into their producer (runtime/fuse_residual_add.cpp): before autograd, Add(Linear(..), R) ->
// Linear(.., R) (a Linear without activation; the CUDA backend adds R in cuBLASLt's epilogue); after it, from
// backward_begin on, Add(LayerNormalizationGrad(..).dX, G) -> LayerNormalizationGrad(.., Addend = G). build_training_graph
// runs them when TrainingGraphOptions::fuse_residual_add (fuse_norm_grad_add) is set (from the Backend queries of those
// names); values named in `keep` are not fused away.
Status fuse_linear_residual_adds(Graph& graph, const std::set<std::string>& keep, int* fused);
Status fuse_norm_grad_residual_adds(Graph& graph, size_t backward_begin, int* fused);
// From backward_begin on: LayerNormalizationGrad whose float32 dX has a shared bf16 copy (Cast, bf16_copy/) writes
// that copy itself, and the column sums of a keepdims BiasGrad reading the copy (outputs dXBf16, dXBf16Sums;
// runtime/fuse_norm_grad_outputs.cpp); RMSNormalizationGrad likewise its copy (output dXBf16). build_training_graph
// runs it after share_bf16_operands when TrainingGraphOptions::fuse_norm_grad_outputs is set (from
// Backend::fuses_norm_grad_outputs).
Status fuse_norm_grad_outputs(Graph& graph, size_t backward_begin, int* fused);
// From backward_begin on: a keepdims BiasGrad of an AttentionPackedGrad's dQKV becomes that node's second output
// (dQKVSums; runtime/attention_grad_bias_sums.cpp). build_training_graph runs it last among the fusions when
// TrainingGraphOptions::fuse_attention_bias_sums is set.
Status fuse_attention_grad_bias_sums(Graph& graph, size_t backward_begin, int* fused);
// After autograd, from backward_begin on: Add(GatherGrad(g, idx), D) -> GatherGradAdd(D, g, idx), which copies D and
// adds the looked-up rows (a tied embedding's gradient sum; runtime/fuse_gather_grad_add.cpp). build_training_graph
// runs it when TrainingGraphOptions::fold_gather_grad_adds is set.
Status fold_gather_grad_adds(Graph& graph, size_t backward_begin, int* fused);
// After autograd: Linear(X, W, bias?, R) -> S whose LayerNormalization reads S -> Linear(X, W, bias?) -> P (of type
// `branch`, float32 or bfloat16) and galvatron SkipLayerNormalization(P, R, Scale, B) -> (Y, Mean, InvStdDev, S): the
// residual add moves from the product's epilogue into the norm's row kernel; the backward is unchanged
// (runtime/fuse_skip_norm.cpp). build_training_graph runs it last among the passes when
// TrainingGraphOptions::fuse_skip_norm is set (from Backend::skip_norm_branch).
Status fuse_skip_layer_norms(Graph& graph, DType branch, int* fused);
// After autograd, from backward_begin on: a gradient sum Add(P, FusedMatMul(A, B)) whose product the Add alone reads
// -> MatMulAccumulate(P, A, B) adding into P in place where the product stood; the Add's readers read P
// (runtime/grad_sums_in_products.cpp; the dX sums of products sharing an input, Llama's Q, K, V and gate, up).
// Values in `keep` (gradients the training graph holds by id) are not renamed. build_training_graph runs it after the
// bf16 operand copies when TrainingGraphOptions::sum_grads_in_products is set.
Status sum_grads_in_products(Graph& graph, size_t backward_begin, const std::set<ValueId>& keep, int* fused);

}  // namespace gv
