// The zoo's graphs: GPT-2 (GPT2LMHeadModel), LLaMA (LlamaForCausalLM) and BERT (BertForMaskedLM), written as the
// ONNX graphs an HF export gives (eager attention, float32), plus seeded HF-style weight initialization.
#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "models/onnx_builder.h"
#include "models/zoo.h"

namespace gv {
namespace {

using zoo::attr_float;
using zoo::attr_int;
using zoo::attr_ints;
using zoo::attr_string;
using zoo::OnnxBuilder;

constexpr int64_t kOpset = 20;
constexpr int64_t kIrVersion = 10;  // what torch.onnx writes for opset 20 (the fixtures are IR 10)

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

// ---- graph pieces shared by the three families ----------------------------------------------------------------------

class Net {
 public:
  Net(OnnxBuilder& b, int64_t batch, int64_t seq) : b(b), batch(batch), seq(seq) {}
  OnnxBuilder& b;
  int64_t batch, seq;

  // nn.Linear: the weight stays [out, in] (HF layout), read through a Transpose.
  std::string linear(const std::string& x, const std::string& w, const std::string& bias = "") {
    std::string wt = b.node("Transpose", {w}, {attr_ints("perm", {1, 0})});
    std::string y = b.node("MatMul", {x, wt});
    return bias.empty() ? y : b.node("Add", {y, bias});
  }
  // GPT-2's Conv1D: the weight is [in, out] already.
  std::string conv1d(const std::string& x, const std::string& w, const std::string& bias) {
    return b.node("Add", {b.node("MatMul", {x, w}), bias});
  }
  std::string layer_norm(const std::string& x, const std::string& w, const std::string& bias, double eps) {
    return b.node("LayerNormalization", {x, w, bias},
                  {attr_int("axis", -1), attr_float("epsilon", static_cast<float>(eps))});
  }
  // HF's LlamaRMSNorm as the exporter writes it: w * (x * 1 / sqrt(mean(x^2) + eps)).
  std::string rms_norm(const std::string& x, const std::string& w, double eps) {
    std::string sq = b.node("Pow", {x, b.scalar_f32(2.0f)});
    std::string var = b.node("ReduceMean", {sq, b.const_i64({-1})}, {attr_int("keepdims", 1)});
    std::string den = b.node("Sqrt", {b.node("Add", {var, b.scalar_f32(static_cast<float>(eps))})});
    std::string normed = b.node("Mul", {x, b.node("Reciprocal", {den})});
    return b.node("Mul", {w, normed});
  }
  // [B, S, heads * hd] -> [B, heads, S, hd] (perm {0, 2, 1, 3}) or [B, heads, hd, S] (perm {0, 2, 3, 1}).
  std::string split_heads(const std::string& x, int64_t heads, int64_t hd, const std::vector<int64_t>& perm) {
    std::string r = b.node("Reshape", {x, b.const_i64({0, 0, heads, hd})});
    return b.node("Transpose", {r}, {attr_ints("perm", perm)});
  }
  // [B, heads, S, hd] -> [B, S, heads * hd].
  std::string merge_heads(const std::string& x, int64_t width) {
    std::string t = b.node("Transpose", {x}, {attr_ints("perm", {0, 2, 1, 3})});
    return b.node("Reshape", {t, b.const_i64({0, 0, width})});
  }
  // softmax(q @ kT * scale + mask) @ v; `mask` may be empty.
  std::string attention(const std::string& q, const std::string& kt, const std::string& v, int64_t hd,
                        const std::string& mask) {
    std::string s = b.node("MatMul", {q, kt});
    s = b.node("Mul", {s, b.scalar_f32(static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))))});
    if (!mask.empty()) s = b.node("Add", {s, mask});
    std::string p = b.node("Softmax", {s}, {attr_int("axis", -1)});
    return b.node("MatMul", {p, v});
  }
  // Constant [1, 1, S, S]: 0 where key <= query, the lowest float elsewhere (HF fills masked scores with
  // torch.finfo(float32).min; adding it gives the same softmax).
  std::string causal_mask() {
    Tensor m(DType::kFloat32, {1, 1, seq, seq});
    float* p = m.data_as<float>();
    for (int64_t i = 0; i < seq; ++i)
      for (int64_t j = 0; j < seq; ++j) p[i * seq + j] = j <= i ? 0.0f : std::numeric_limits<float>::lowest();
    return b.constant(m, b.scope + "/causal_mask");
  }
  // Constant int64 [1, S]: 0, 1, ..., S-1.
  std::string position_ids() {
    std::vector<int64_t> v(static_cast<size_t>(seq));
    for (int64_t i = 0; i < seq; ++i) v[i] = i;
    return b.constant(Tensor::from_i64(v, {1, seq}), b.scope + "/position_ids");
  }
};

// ---- GPT-2 (GPT2LMHeadModel) ----------------------------------------------------------------------------------------

std::string build_gpt(const ModelConfig& c, Net& n, const std::string& ids) {
  OnnxBuilder& b = n.b;
  const int64_t H = c.hidden_size, nh = c.num_heads, hd = H / nh;
  b.scope = "/transformer";
  std::string mask = n.causal_mask();
  std::string pos = n.position_ids();
  b.scope = "/transformer/wte";
  std::string tok = b.node("Gather", {"transformer.wte.weight", ids}, {attr_int("axis", 0)});
  b.scope = "/transformer/wpe";
  std::string pe = b.node("Gather", {"transformer.wpe.weight", pos}, {attr_int("axis", 0)});
  b.scope = "/transformer";
  std::string h = b.node("Add", {tok, pe});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "transformer.h." + std::to_string(i) + ".";
    const std::string s = "/transformer/h." + std::to_string(i);
    b.scope = s + "/ln_1";
    std::string a = n.layer_norm(h, p + "ln_1.weight", p + "ln_1.bias", c.norm_eps);
    b.scope = s + "/attn/c_attn";
    std::string qkv = n.conv1d(a, p + "attn.c_attn.weight", p + "attn.c_attn.bias");
    b.scope = s + "/attn";
    std::vector<std::string> parts = b.node_n("Split", {qkv, b.const_i64({H, H, H})}, 3, {attr_int("axis", 2)});
    std::string q = n.split_heads(parts[0], nh, hd, {0, 2, 1, 3});
    std::string kt = n.split_heads(parts[1], nh, hd, {0, 2, 3, 1});
    std::string v = n.split_heads(parts[2], nh, hd, {0, 2, 1, 3});
    std::string o = n.merge_heads(n.attention(q, kt, v, hd, mask), H);
    b.scope = s + "/attn/c_proj";
    o = n.conv1d(o, p + "attn.c_proj.weight", p + "attn.c_proj.bias");
    b.scope = s;
    h = b.node("Add", {h, o});
    b.scope = s + "/ln_2";
    std::string m = n.layer_norm(h, p + "ln_2.weight", p + "ln_2.bias", c.norm_eps);
    b.scope = s + "/mlp/c_fc";
    m = n.conv1d(m, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias");
    b.scope = s + "/mlp/act";
    m = b.node("Gelu", {m}, {attr_string("approximate", "tanh")});  // HF "gelu_new"
    b.scope = s + "/mlp/c_proj";
    m = n.conv1d(m, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias");
    b.scope = s;
    h = b.node("Add", {h, m});
  }
  b.scope = "/transformer/ln_f";
  h = n.layer_norm(h, "transformer.ln_f.weight", "transformer.ln_f.bias", c.norm_eps);
  b.scope = "/lm_head";
  return n.linear(h, c.tie_word_embeddings ? "transformer.wte.weight" : "lm_head.weight");
}

// ---- LLaMA (LlamaForCausalLM) ---------------------------------------------------------------------------------------

// HF's LlamaRotaryEmbedding (rope_type "default"), computed the way it does: inv_freq and the angles in float32, then
// cos / sin. Returns [S, hd] tables (the two halves repeat, as torch.cat((freqs, freqs), -1)).
void rope_tables(const ModelConfig& c, int64_t seq, Tensor* cos_t, Tensor* sin_t) {
  const int64_t hd = c.resolved_head_dim(), half = hd / 2;
  *cos_t = Tensor(DType::kFloat32, {seq, hd});
  *sin_t = Tensor(DType::kFloat32, {seq, hd});
  std::vector<float> inv_freq(static_cast<size_t>(half));
  const float base = static_cast<float>(c.rope_theta);
  for (int64_t i = 0; i < half; ++i) {
    float expo = static_cast<float>(2 * i) / static_cast<float>(hd);
    inv_freq[i] = 1.0f / std::pow(base, expo);
  }
  for (int64_t s = 0; s < seq; ++s) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(s) * inv_freq[i];
      const float cv = static_cast<float>(std::cos(static_cast<double>(angle)));
      const float sv = static_cast<float>(std::sin(static_cast<double>(angle)));
      cos_t->data_as<float>()[s * hd + i] = cv;
      cos_t->data_as<float>()[s * hd + half + i] = cv;
      sin_t->data_as<float>()[s * hd + i] = sv;
      sin_t->data_as<float>()[s * hd + half + i] = sv;
    }
  }
}

std::string build_llama(const ModelConfig& c, Net& n, const std::string& ids) {
  OnnxBuilder& b = n.b;
  const int64_t nh = c.num_heads, nkv = c.resolved_kv_heads(), hd = c.resolved_head_dim();
  const int64_t rep = nh / nkv;
  b.scope = "/model";
  std::string mask = n.causal_mask();
  Tensor cos_t, sin_t;
  rope_tables(c, n.seq, &cos_t, &sin_t);
  b.scope = "/model/rotary_emb";
  std::string cos = b.constant(cos_t, "/model/rotary_emb/cos");
  std::string sin = b.constant(sin_t, "/model/rotary_emb/sin");
  b.scope = "/model/embed_tokens";
  std::string h = b.node("Gather", {"model.embed_tokens.weight", ids}, {attr_int("axis", 0)});

  // x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[..., hd/2:], x[..., :hd/2]).
  auto rope = [&](const std::string& x) {
    std::string x1 = b.node("Slice", {x, b.const_i64({0}), b.const_i64({hd / 2}), b.const_i64({-1})});
    std::string x2 = b.node("Slice", {x, b.const_i64({hd / 2}), b.const_i64({hd}), b.const_i64({-1})});
    std::string rot = b.node("Concat", {b.node("Neg", {x2}), x1}, {attr_int("axis", -1)});
    return b.node("Add", {b.node("Mul", {x, cos}), b.node("Mul", {rot, sin})});
  };
  // HF's repeat_kv: [B, kv, S, hd] -> [B, kv, rep, S, hd] -> [B, kv * rep, S, hd].
  auto repeat_kv = [&](const std::string& x) {
    if (rep == 1) return x;
    std::string u = b.node("Unsqueeze", {x, b.const_i64({2})});
    std::string e = b.node("Expand", {u, b.const_i64({1, 1, rep, 1, 1})});
    return b.node("Reshape", {e, b.const_i64({0, nh, -1, hd})});
  };

  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const std::string s = "/model/layers." + std::to_string(i);
    b.scope = s + "/input_layernorm";
    std::string a = n.rms_norm(h, p + "input_layernorm.weight", c.norm_eps);
    b.scope = s + "/self_attn/q_proj";
    std::string q = n.linear(a, p + "self_attn.q_proj.weight");
    b.scope = s + "/self_attn/k_proj";
    std::string k = n.linear(a, p + "self_attn.k_proj.weight");
    b.scope = s + "/self_attn/v_proj";
    std::string v = n.linear(a, p + "self_attn.v_proj.weight");
    b.scope = s + "/self_attn";
    q = rope(n.split_heads(q, nh, hd, {0, 2, 1, 3}));
    k = repeat_kv(rope(n.split_heads(k, nkv, hd, {0, 2, 1, 3})));
    v = repeat_kv(n.split_heads(v, nkv, hd, {0, 2, 1, 3}));
    std::string kt = b.node("Transpose", {k}, {attr_ints("perm", {0, 1, 3, 2})});
    std::string o = n.merge_heads(n.attention(q, kt, v, hd, mask), nh * hd);
    b.scope = s + "/self_attn/o_proj";
    o = n.linear(o, p + "self_attn.o_proj.weight");
    b.scope = s;
    h = b.node("Add", {h, o});
    b.scope = s + "/post_attention_layernorm";
    std::string m = n.rms_norm(h, p + "post_attention_layernorm.weight", c.norm_eps);
    b.scope = s + "/mlp/gate_proj";
    std::string g = n.linear(m, p + "mlp.gate_proj.weight");
    b.scope = s + "/mlp/up_proj";
    std::string u = n.linear(m, p + "mlp.up_proj.weight");
    b.scope = s + "/mlp/act_fn";
    std::string act = b.node("Mul", {g, b.node("Sigmoid", {g})});  // SiLU
    b.scope = s + "/mlp";
    std::string gu = b.node("Mul", {act, u});
    b.scope = s + "/mlp/down_proj";
    std::string d = n.linear(gu, p + "mlp.down_proj.weight");
    b.scope = s;
    h = b.node("Add", {h, d});
  }
  b.scope = "/model/norm";
  h = n.rms_norm(h, "model.norm.weight", c.norm_eps);
  b.scope = "/lm_head";
  return n.linear(h, c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
}

// ---- BERT (BertForMaskedLM) -----------------------------------------------------------------------------------------

std::string build_bert(const ModelConfig& c, Net& n, const std::string& ids) {
  OnnxBuilder& b = n.b;
  const int64_t H = c.hidden_size, nh = c.num_heads, hd = H / nh;
  const std::string e = "bert.embeddings.";
  b.scope = "/bert/embeddings";
  std::string pos = n.position_ids();
  // token_type_ids default to zeros (HF's registered buffer).
  std::string types = b.constant(Tensor(DType::kInt64, {1, n.seq}), "/bert/embeddings/token_type_ids");
  b.scope = "/bert/embeddings/word_embeddings";
  std::string w = b.node("Gather", {e + "word_embeddings.weight", ids}, {attr_int("axis", 0)});
  b.scope = "/bert/embeddings/token_type_embeddings";
  std::string t = b.node("Gather", {e + "token_type_embeddings.weight", types}, {attr_int("axis", 0)});
  b.scope = "/bert/embeddings/position_embeddings";
  std::string pe = b.node("Gather", {e + "position_embeddings.weight", pos}, {attr_int("axis", 0)});
  b.scope = "/bert/embeddings";
  std::string x = b.node("Add", {b.node("Add", {w, t}), pe});
  b.scope = "/bert/embeddings/LayerNorm";
  x = n.layer_norm(x, e + "LayerNorm.weight", e + "LayerNorm.bias", c.norm_eps);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "bert.encoder.layer." + std::to_string(i) + ".";
    const std::string s = "/bert/encoder/layer." + std::to_string(i);
    std::string proj[3];
    const char* names[3] = {"query", "key", "value"};
    for (int j = 0; j < 3; ++j) {
      b.scope = s + "/attention/self/" + names[j];
      const std::string w_name = p + "attention.self." + names[j];
      proj[j] = n.linear(x, w_name + ".weight", w_name + ".bias");
    }
    b.scope = s + "/attention/self";
    std::string q = n.split_heads(proj[0], nh, hd, {0, 2, 1, 3});
    std::string kt = n.split_heads(proj[1], nh, hd, {0, 2, 3, 1});
    std::string v = n.split_heads(proj[2], nh, hd, {0, 2, 1, 3});
    std::string ctx = n.merge_heads(n.attention(q, kt, v, hd, ""), H);
    b.scope = s + "/attention/output/dense";
    std::string a = n.linear(ctx, p + "attention.output.dense.weight", p + "attention.output.dense.bias");
    b.scope = s + "/attention/output/LayerNorm";
    a = n.layer_norm(b.node("Add", {a, x}), p + "attention.output.LayerNorm.weight",
                     p + "attention.output.LayerNorm.bias", c.norm_eps);
    b.scope = s + "/intermediate/dense";
    std::string m = n.linear(a, p + "intermediate.dense.weight", p + "intermediate.dense.bias");
    b.scope = s + "/intermediate/intermediate_act_fn";
    m = b.node("Gelu", {m});  // erf
    b.scope = s + "/output/dense";
    m = n.linear(m, p + "output.dense.weight", p + "output.dense.bias");
    b.scope = s + "/output/LayerNorm";
    x = n.layer_norm(b.node("Add", {m, a}), p + "output.LayerNorm.weight", p + "output.LayerNorm.bias", c.norm_eps);
  }
  const std::string t_ = "cls.predictions.transform.";
  b.scope = "/cls/predictions/transform/dense";
  std::string y = n.linear(x, t_ + "dense.weight", t_ + "dense.bias");
  b.scope = "/cls/predictions/transform/transform_act_fn";
  y = b.node("Gelu", {y});
  b.scope = "/cls/predictions/transform/LayerNorm";
  y = n.layer_norm(y, t_ + "LayerNorm.weight", t_ + "LayerNorm.bias", c.norm_eps);
  b.scope = "/cls/predictions/decoder";
  if (c.tie_word_embeddings) return n.linear(y, e + "word_embeddings.weight", "cls.predictions.bias");
  return n.linear(y, "cls.predictions.decoder.weight", "cls.predictions.decoder.bias");
}

void add_value_info(onnx::ValueInfoProto* vi, const std::string& name, int32_t elem, const Shape& shape) {
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem);
  for (int64_t d : shape) tt->mutable_shape()->add_dim()->set_dim_value(d);
}

std::string config_json(const ModelConfig& c) {
  nlohmann::json j = {{"type", model_type_name(c.type)},
                      {"size", c.size},
                      {"hidden_size", c.hidden_size},
                      {"num_layers", c.num_layers},
                      {"num_heads", c.num_heads},
                      {"kv_heads", c.resolved_kv_heads()},
                      {"head_dim", c.resolved_head_dim()},
                      {"ffn_size", c.resolved_ffn()},
                      {"seq_length", c.seq_length},
                      {"vocab_size", c.vocab_size},
                      {"max_positions", c.max_positions},
                      {"norm_eps", c.norm_eps},
                      {"initializer_range", c.initializer_range},
                      {"tie_word_embeddings", c.tie_word_embeddings}};
  if (c.type == ModelType::kLlama) j["rope_theta"] = c.rope_theta;
  if (c.type == ModelType::kBert) j["type_vocab_size"] = c.type_vocab_size;
  if (c.pad_token_id >= 0) j["pad_token_id"] = c.pad_token_id;
  return j.dump();
}

void add_metadata(onnx::ModelProto* m, const std::string& key, const std::string& value) {
  auto* p = m->add_metadata_props();
  p->set_key(key);
  p->set_value(value);
}

}  // namespace

void normal_fill(float* out, int64_t n, double stddev, uint64_t seed, const std::string& key) {
  const uint64_t stream = mix64(seed ^ fnv1a64(key));
  const int64_t blocks = (n + kNormalBlock - 1) / kNormalBlock;
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  constexpr double kInv53 = 1.0 / 9007199254740992.0;  // 2^-53
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    uint64_t state = mix64(stream ^ mix64(static_cast<uint64_t>(blk)));
    auto next = [&state]() {
      state += 0x9E3779B97F4A7C15ULL;
      return mix64(state);
    };
    const int64_t begin = blk * kNormalBlock, end = std::min(n, begin + kNormalBlock);
    for (int64_t i = begin; i < end; i += 2) {
      const double u1 = static_cast<double>((next() >> 11) + 1) * kInv53;  // (0, 1]
      const double u2 = static_cast<double>(next() >> 11) * kInv53;        // [0, 1)
      const double r = std::sqrt(-2.0 * std::log(u1));
      out[i] = static_cast<float>(stddev * r * std::cos(kTwoPi * u2));
      if (i + 1 < end) out[i + 1] = static_cast<float>(stddev * r * std::sin(kTwoPi * u2));
    }
  }
}

Expected<onnx::ModelProto> build_model(const ModelConfig& config, int64_t batch, int64_t seq, WeightInit init,
                                       uint64_t seed) {
  GV_RETURN_IF_ERROR(config.validate());
  GV_CHECK_ARG(batch > 0, "build_model: batch must be positive, got " + std::to_string(batch));
  GV_CHECK_ARG(seq > 0, "build_model: seq must be positive, got " + std::to_string(seq));
  if (config.type != ModelType::kLlama && seq > config.max_positions) {
    return invalid_argument("build_model: seq " + std::to_string(seq) + " exceeds the " +
                            std::to_string(config.max_positions) + " learned positions of " + config.size +
                            " (set max_positions, or use a shorter sequence)");
  }

  onnx::ModelProto model;
  model.set_ir_version(kIrVersion);
  model.set_producer_name("galvatron-zoo");
  model.set_producer_version("1");
  model.set_doc_string(config.describe());
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOpset);
  add_metadata(&model, "galvatron.model_type", model_type_name(config.type));
  add_metadata(&model, "galvatron.model_size", config.size);
  add_metadata(&model, "galvatron.config", config_json(config));
  add_metadata(&model, "galvatron.weight_init", init == WeightInit::kHuggingFace ? "huggingface" : "none");
  add_metadata(&model, "galvatron.seed", std::to_string(seed));

  onnx::GraphProto* g = model.mutable_graph();
  g->set_name(config.size);
  add_value_info(g->add_input(), "input_ids", onnx::TensorProto::INT64, {batch, seq});
  add_value_info(g->add_output(), "logits", onnx::TensorProto::FLOAT, {batch, seq, config.vocab_size});

  // Initializers first (HF named_parameters order), so that the graph reads like an export.
  for (const ParamSpec& p : parameter_specs(config)) {
    onnx::TensorProto* t = g->add_initializer();
    t->set_name(p.name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : p.shape) t->add_dims(d);
    std::string* raw = t->mutable_raw_data();
    raw->assign(static_cast<size_t>(p.numel()) * sizeof(float), '\0');
    float* data = reinterpret_cast<float*>(raw->data());
    if (init == WeightInit::kNone) continue;
    switch (p.init) {
      case ParamInit::kNormal: normal_fill(data, p.numel(), p.stddev, seed, p.name); break;
      case ParamInit::kOnes: std::fill(data, data + p.numel(), 1.0f); break;
      case ParamInit::kZeros: break;
    }
    if (p.zero_row >= 0 && p.shape.size() == 2 && p.zero_row < p.shape[0]) {
      std::memset(data + p.zero_row * p.shape[1], 0, static_cast<size_t>(p.shape[1]) * sizeof(float));
    }
  }

  OnnxBuilder b(g);
  Net net(b, batch, seq);
  std::string logits;
  switch (config.type) {
    case ModelType::kGpt: logits = build_gpt(config, net, "input_ids"); break;
    case ModelType::kLlama: logits = build_llama(config, net, "input_ids"); break;
    case ModelType::kBert: logits = build_bert(config, net, "input_ids"); break;
  }
  // The last node's output is the graph output: rename it.
  onnx::NodeProto* last = g->mutable_node(g->node_size() - 1);
  if (last->output(0) != logits) return internal_error("build_model: the logits are not the last node's output");
  last->set_output(0, "logits");
  return model;
}

}  // namespace gv
