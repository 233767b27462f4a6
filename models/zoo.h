// The model zoo: GPT-2, LLaMA and BERT (masked LM) written in C++ as ONNX graphs, the same graphs a HuggingFace export
// gives, so that users, benchmarks and the partitioner can name a model ("gpt", "gpt-1.5b") instead of bringing a file.
//
// Conventions (models/README.md has the details):
// - Every initializer is a trainable parameter, stored under its HuggingFace state-dict name, in HF's own shape and
//   layout (nn.Linear weights stay [out, in] and the graph reads them through a Transpose node; GPT-2's Conv1D weights
//   are [in, out] and feed MatMul directly). An HF checkpoint therefore loads by name, without transposes.
// - Everything non-trainable (position ids, the causal mask, RoPE cos/sin tables, shape vectors, scalars) is a
//   `Constant` node, never an initializer: the importer folds those into constants.
// - Inputs: `input_ids` int64 [batch, seq]; output: `logits` float32 [batch, seq, vocab]. Opset 20, default domain.
// - Node names follow the HF module path ("/transformer/h.3/attn/MatMul_2"), which carries the layer index.
#pragma once
#include <onnx/onnx_pb.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "importer/onnx_importer.h"
#include "runtime/graph.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

namespace gv {

enum class ModelType { kGpt, kLlama, kBert };

// "gpt", "llama", "bert".
const char* model_type_name(ModelType t);
// Accepts "gpt" (also "gpt2", "gpt_hf"), "llama" (also "llama_hf"), "bert" (also "bert_mlm"); case-insensitive.
Expected<ModelType> parse_model_type(const std::string& s);

struct ModelConfig {
  ModelType type = ModelType::kGpt;
  std::string size = "custom";  // the zoo name ("gpt-1.5b"), or "custom"
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t kv_heads = 0;         // llama: key/value heads (grouped-query attention); 0 means num_heads
  int64_t head_dim = 0;         // llama only: 0 means hidden_size / num_heads
  int64_t ffn_size = 0;         // 0 means 4 * hidden_size (gpt, bert); required for llama
  int64_t seq_length = 0;       // the default training sequence length (Galvatron's `seq_length`)
  int64_t vocab_size = 0;
  int64_t max_positions = 0;    // gpt/bert: rows of the learned position table; llama: max_position_embeddings
  int64_t type_vocab_size = 2;  // bert: rows of token_type_embeddings
  double norm_eps = 1e-5;       // LayerNorm epsilon (gpt 1e-5, bert 1e-12) or RMSNorm epsilon (llama 1e-6)
  double rope_theta = 10000.0;  // llama
  double initializer_range = 0.02;
  bool tie_word_embeddings = true;  // gpt/bert: the lm head reads the word embedding; llama: false (lm_head.weight)
  int64_t pad_token_id = -1;        // >= 0: that row of the word embedding is zeroed at init (HF: bert uses 0)

  int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : (num_heads > 0 ? hidden_size / num_heads : 0); }
  int64_t resolved_kv_heads() const { return kv_heads > 0 ? kv_heads : num_heads; }
  int64_t resolved_ffn() const { return ffn_size > 0 ? ffn_size : 4 * hidden_size; }
  // Checks sizes and divisibility; errors name the field and what to change.
  Status validate() const;
  // "gpt-1.5b (gpt: hidden 1600, 48 layers, 32 heads, ffn 6400, vocab 50257, seq 1024)".
  std::string describe() const;
};

// One named size of the zoo.
struct ZooEntry {
  std::string type;    // "gpt", "llama", "bert"
  std::string size;    // "gpt-1.5b"
  std::string source;  // "galvatron" (Galvatron's meta_configs), "huggingface" (HF hub configs), "test" (fixture sizes)
  ModelConfig config;
  int64_t parameters = 0;
};

// The named sizes, in a fixed order (by type, then size).
std::vector<ZooEntry> zoo_list();
// The config of a named size. `type` may be empty (sizes are unique across types); a size of another type, or an
// unknown one, is an error listing the sizes of `type`.
Expected<ModelConfig> zoo_config(const std::string& type, const std::string& size);

// A ModelConfig from a HuggingFace config.json (model_type gpt2, llama or bert; the fields HF writes). Settings the
// zoo does not build (another activation, biases in llama, RoPE scaling, ...) are an error naming the field.
Expected<ModelConfig> config_from_hf_json(const std::string& json_text);

// ---- parameters, without allocating ------------------------------------------------------------------------------

enum class ParamInit { kNormal, kZeros, kOnes };

// One trainable tensor, in HF's named_parameters() order (tied weights appear once, under the embedding's name).
struct ParamSpec {
  std::string name;  // HF state-dict name
  Shape shape;       // HF layout
  Placement place;   // embedding / layer i / head (the final norm and the lm head are the head)
  ParamInit init = ParamInit::kZeros;
  double stddev = 0.0;        // for kNormal
  int64_t zero_row = -1;      // >= 0: that row is zeroed after init (padding index)
  int64_t numel() const { return shape_numel(shape); }
};

std::vector<ParamSpec> parameter_specs(const ModelConfig& config);
// Sum of numel over parameter_specs (tied embeddings counted once): gpt2 is 124,439,808.
int64_t parameter_count(const ModelConfig& config);
// Bytes of the parameters in `dtype` (float32: 4 * parameter_count).
int64_t parameter_bytes(const ModelConfig& config, DType dtype = DType::kFloat32);

// ---- building ----------------------------------------------------------------------------------------------------

enum class WeightInit {
  kHuggingFace,  // HF's _init_weights, seeded (see below)
  kNone,         // every parameter zero-filled: valid ONNX, no RNG; for structure, timing and memory work. To plan a
                 // model without allocating its weights at all, use parameter_specs() / parameter_count().
};

// Builds the graph for `batch` x `seq` tokens. gpt/bert need seq <= max_positions.
// kHuggingFace: normal(0, initializer_range) for Linear/Conv1D/Embedding weights, zeros for biases, ones for norm
// weights; GPT-2's attn.c_proj.weight and mlp.c_proj.weight use initializer_range / sqrt(2 * num_layers); the padding
// row (pad_token_id) is zero. The numbers come from normal_fill() keyed by (seed, parameter name): the same on every
// machine and thread count, and independent of the other parameters.
Expected<onnx::ModelProto> build_model(const ModelConfig& config, int64_t batch, int64_t seq, WeightInit init,
                                       uint64_t seed = 0);

// Replaces initializers by HF name (dtype float32 and shape must match; a float64 tensor is converted). Also accepts
// HF's aliases of tied weights ("lm_head.weight" and "cls.predictions.decoder.weight" for the word embedding,
// "cls.predictions.decoder.bias") and ignores HF buffers that are not parameters ("*.attn.bias", "*.masked_bias",
// "*.rotary_emb.inv_freq", "bert.embeddings.position_ids", "bert.embeddings.token_type_ids", and the unused
// "cls.predictions.bias" of an untied BERT). An unknown name is an
// error; with `require_all`, so is an initializer that `weights` does not cover. Returns how many were set.
Expected<int64_t> set_hf_weights(onnx::ModelProto* model, const std::map<std::string, Tensor>& weights,
                                 bool require_all = false);

// Writes the model to `path` through a temporary file and a rename. When the initializers exceed `inline_limit`
// bytes (default: under protobuf's 2 GB limit), they all go to an external data file `<file name>.data` beside it
// (each at a 4 KB aligned offset) and the initializers point there.
constexpr int64_t kInlineWeightLimit = int64_t{1800} * 1024 * 1024;
Status write_model(const onnx::ModelProto& model, const std::string& path, int64_t inline_limit = kInlineWeightLimit);

// Builds the model and imports it from memory (no file is written): batch and seq go to ImportOptions, the other
// options are taken from `options`. The imported model's `path` is "zoo:<size>".
Expected<ImportedModel> build_and_import(const ModelConfig& config, int64_t batch, int64_t seq, WeightInit init,
                                         uint64_t seed = 0, ImportOptions options = {});
// Imports a zoo model held in memory (through the importer's import_onnx_model).
Expected<ImportedModel> import_model_proto(const onnx::ModelProto& model, const ImportOptions& options = {});

// ---- the generator -----------------------------------------------------------------------------------------------

// Fills out[0..n) with normal(0, stddev) floats: splitmix64 + Box-Muller. The stream is keyed by (seed, key) and cut
// into blocks of kNormalBlock elements, each with its own splitmix64 state, so blocks can be generated in parallel
// and the result does not depend on the thread count. models/README.md gives the exact recipe.
constexpr int64_t kNormalBlock = int64_t{1} << 20;
void normal_fill(float* out, int64_t n, double stddev, uint64_t seed, const std::string& key);

}  // namespace gv
