// The named sizes of the zoo, HF config.json parsing, and parameter shapes (no allocation).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "models/zoo.h"

namespace gv {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

ModelConfig gpt(const std::string& size, int64_t hidden, int64_t layers, int64_t heads, int64_t seq,
                int64_t positions, int64_t vocab = 50257) {
  ModelConfig c;
  c.type = ModelType::kGpt;
  c.size = size;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.ffn_size = 4 * hidden;
  c.seq_length = seq;
  c.max_positions = positions;
  c.vocab_size = vocab;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  return c;
}

ModelConfig llama(const std::string& size, int64_t hidden, int64_t layers, int64_t heads, int64_t seq, int64_t ffn,
                  int64_t kv = 0, int64_t vocab = 32000) {
  ModelConfig c;
  c.type = ModelType::kLlama;
  c.size = size;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.kv_heads = kv > 0 ? kv : heads;
  c.ffn_size = ffn;
  c.seq_length = seq;
  c.max_positions = seq;
  c.vocab_size = vocab;
  c.norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  return c;
}

ModelConfig bert(const std::string& size, int64_t hidden, int64_t layers, int64_t heads, int64_t seq = 512,
                 int64_t positions = 512, int64_t vocab = 30522) {
  ModelConfig c;
  c.type = ModelType::kBert;
  c.size = size;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.ffn_size = 4 * hidden;
  c.seq_length = seq;
  c.max_positions = positions;
  c.vocab_size = vocab;
  c.type_vocab_size = 2;
  c.norm_eps = 1e-12;
  c.tie_word_embeddings = true;
  c.pad_token_id = 0;
  return c;
}

struct Named {
  const char* source;
  ModelConfig config;
};

const std::vector<Named>& table() {
  static const std::vector<Named> t = [] {
    std::vector<Named> v;
    // Galvatron's meta_configs (hidden / layers / heads / seq).
    v.push_back({"galvatron", gpt("gpt-0.3b", 1024, 24, 16, 1024, 1024)});
    v.push_back({"galvatron", gpt("gpt-1.5b", 1600, 48, 32, 1024, 1024)});
    v.push_back({"galvatron", gpt("gpt-2.7b", 2560, 32, 32, 2048, 2048)});
    v.push_back({"galvatron", gpt("gpt-6.7b", 4096, 32, 32, 2048, 2048)});
    // HuggingFace's GPT-2 checkpoints.
    v.push_back({"huggingface", gpt("gpt2", 768, 12, 12, 1024, 1024)});
    v.push_back({"huggingface", gpt("gpt2-medium", 1024, 24, 16, 1024, 1024)});
    v.push_back({"huggingface", gpt("gpt2-large", 1280, 36, 20, 1024, 1024)});
    v.push_back({"huggingface", gpt("gpt2-xl", 1600, 48, 25, 1024, 1024)});
    {
      ModelConfig c = gpt("gpt-tiny", 64, 2, 4, 32, 64, 256);
      c.ffn_size = 256;
      v.push_back({"test", c});
    }
    v.push_back({"galvatron", llama("llama-7b", 4096, 32, 32, 2048, 11008)});
    v.push_back({"galvatron", llama("llama-13b", 5120, 40, 40, 4096, 13824)});
    v.push_back({"galvatron", llama("llama-30b", 8192, 48, 64, 4096, 22016, 8)});
    {
      ModelConfig c = llama("llama2-70b", 8192, 80, 64, 4096, 28672, 8);
      c.norm_eps = 1e-5;  // Llama 2
      v.push_back({"galvatron", c});
    }
    {
      ModelConfig c = llama("llama-tiny", 64, 2, 4, 32, 172, 2, 256);
      c.max_positions = 64;
      v.push_back({"test", c});
    }
    v.push_back({"galvatron", bert("bert-base", 768, 12, 12)});
    v.push_back({"galvatron", bert("bert-large", 1024, 24, 16)});
    v.push_back({"galvatron", bert("bert-huge-32", 1280, 32, 16)});
    v.push_back({"galvatron", bert("bert-huge-48", 1280, 48, 16)});
    {
      ModelConfig c = bert("bert-tiny", 64, 2, 4, 32, 64, 256);
      c.ffn_size = 128;
      v.push_back({"test", c});
    }
    return v;
  }();
  return t;
}

void add(std::vector<ParamSpec>& out, std::string name, Shape shape, Placement place, ParamInit init,
         double stddev = 0.0) {
  ParamSpec p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.place = place;
  p.init = init;
  p.stddev = stddev;
  out.push_back(std::move(p));
}

Placement embedding() { return Placement{Placement::Kind::kEmbedding, -1}; }
Placement layer(int64_t i) { return Placement{Placement::Kind::kLayer, static_cast<int>(i)}; }
Placement head() { return Placement{Placement::Kind::kHead, -1}; }

}  // namespace

const char* model_type_name(ModelType t) {
  switch (t) {
    case ModelType::kGpt: return "gpt";
    case ModelType::kLlama: return "llama";
    case ModelType::kBert: return "bert";
  }
  return "?";
}

Expected<ModelType> parse_model_type(const std::string& s) {
  const std::string l = lower(s);
  if (l == "gpt" || l == "gpt2" || l == "gpt_hf") return ModelType::kGpt;
  if (l == "llama" || l == "llama_hf") return ModelType::kLlama;
  if (l == "bert" || l == "bert_mlm") return ModelType::kBert;
  return invalid_argument("unknown model type '" + s + "': the zoo has gpt, llama and bert");
}

Status ModelConfig::validate() const {
  const std::string who = "model config '" + size + "' (" + model_type_name(type) + ")";
  auto positive = [&](int64_t v, const char* field) -> Status {
    if (v <= 0) return invalid_argument(who + ": " + field + " must be positive, got " + std::to_string(v));
    return Status::ok();
  };
  GV_RETURN_IF_ERROR(positive(hidden_size, "hidden_size"));
  GV_RETURN_IF_ERROR(positive(num_layers, "num_layers"));
  GV_RETURN_IF_ERROR(positive(num_heads, "num_heads"));
  GV_RETURN_IF_ERROR(positive(vocab_size, "vocab_size"));
  if (ffn_size < 0) return invalid_argument(who + ": ffn_size must be positive (or 0 for 4 * hidden_size)");
  if (!(norm_eps > 0)) return invalid_argument(who + ": norm_eps must be positive");
  if (!(initializer_range >= 0)) return invalid_argument(who + ": initializer_range must not be negative");
  if (type == ModelType::kLlama) {
    if (ffn_size <= 0) return invalid_argument(who + ": llama needs ffn_size (intermediate_size), e.g. 11008 for 7b");
    if (head_dim < 0) return invalid_argument(who + ": head_dim must be positive (or 0 for hidden / heads)");
    if (head_dim == 0 && hidden_size % num_heads != 0) {
      return invalid_argument(who + ": hidden_size " + std::to_string(hidden_size) + " is not a multiple of num_heads " +
                              std::to_string(num_heads) + " (or set head_dim)");
    }
    if (resolved_head_dim() % 2 != 0) return invalid_argument(who + ": RoPE needs an even head_dim");
    if (kv_heads < 0 || num_heads % resolved_kv_heads() != 0) {
      return invalid_argument(who + ": num_heads " + std::to_string(num_heads) + " must be a multiple of kv_heads " +
                              std::to_string(kv_heads));
    }
    if (!(rope_theta > 0)) return invalid_argument(who + ": rope_theta must be positive");
  } else {
    if (hidden_size % num_heads != 0) {
      return invalid_argument(who + ": hidden_size " + std::to_string(hidden_size) + " is not a multiple of num_heads " +
                              std::to_string(num_heads));
    }
    if (kv_heads != 0 && kv_heads != num_heads) {
      return invalid_argument(who + ": grouped-query attention (kv_heads) is for llama only; set kv_heads to 0");
    }
    if (head_dim != 0 && head_dim * num_heads != hidden_size) {
      return invalid_argument(who + ": head_dim must be hidden_size / num_heads (or 0) for " + model_type_name(type));
    }
    GV_RETURN_IF_ERROR(positive(max_positions, "max_positions"));
    if (type == ModelType::kBert) GV_RETURN_IF_ERROR(positive(type_vocab_size, "type_vocab_size"));
  }
  if (pad_token_id >= vocab_size) return invalid_argument(who + ": pad_token_id is not below vocab_size");
  return Status::ok();
}

std::string ModelConfig::describe() const {
  std::ostringstream s;
  s << size << " (" << model_type_name(type) << ": hidden " << hidden_size << ", " << num_layers << " layers, "
    << num_heads << " heads";
  if (type == ModelType::kLlama && resolved_kv_heads() != num_heads) s << ", " << resolved_kv_heads() << " kv heads";
  s << ", ffn " << resolved_ffn() << ", vocab " << vocab_size << ", seq " << seq_length << ")";
  return s.str();
}

std::vector<ZooEntry> zoo_list() {
  std::vector<ZooEntry> out;
  for (const Named& n : table()) {
    ZooEntry e;
    e.type = model_type_name(n.config.type);
    e.size = n.config.size;
    e.source = n.source;
    e.config = n.config;
    e.parameters = parameter_count(n.config);
    out.push_back(std::move(e));
  }
  return out;
}

Expected<ModelConfig> zoo_config(const std::string& type, const std::string& size) {
  std::optional<ModelType> want;
  if (!type.empty()) {
    auto t = parse_model_type(type);
    if (!t) return t.status();
    want = *t;
  }
  const std::string l = lower(size);
  for (const Named& n : table()) {
    if (n.config.size != l) continue;
    if (want && n.config.type != *want) {
      return invalid_argument("model size '" + size + "' is a " + model_type_name(n.config.type) + " model, not " +
                              model_type_name(*want) + "; use --model_type " + model_type_name(n.config.type));
    }
    return n.config;
  }
  std::string names;
  for (const Named& n : table()) {
    if (want && n.config.type != *want) continue;
    names += (names.empty() ? "" : ", ") + n.config.size;
  }
  return not_found("unknown model size '" + size + "'" + (want ? std::string(" for ") + model_type_name(*want) : "") +
                   "; the zoo has " + names);
}

namespace {
Expected<ModelConfig> config_from_hf_json_impl(const std::string& json_text);
}  // namespace

Expected<ModelConfig> config_from_hf_json(const std::string& json_text) {
  try {
    return config_from_hf_json_impl(json_text);
  } catch (const nlohmann::json::exception& e) {
    return invalid_argument(std::string("HF config: a field has an unexpected type (") + e.what() + ")");
  }
}

namespace {
Expected<ModelConfig> config_from_hf_json_impl(const std::string& json_text) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument("HF config: not a JSON object");
  if (j.contains("config") && j["config"].is_object() && !j.contains("model_type")) j = j["config"];  // fixture meta
  const std::string model_type = j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "";
  auto num = [&](const char* key, int64_t dflt) -> int64_t {
    if (!j.contains(key) || j[key].is_null()) return dflt;
    return j[key].is_number() ? j[key].get<int64_t>() : dflt;
  };
  auto real = [&](const char* key, double dflt) -> double {
    if (!j.contains(key) || j[key].is_null()) return dflt;
    return j[key].is_number() ? j[key].get<double>() : dflt;
  };
  auto str = [&](const char* key, const std::string& dflt) -> std::string {
    if (!j.contains(key) || !j[key].is_string()) return dflt;
    return j[key].get<std::string>();
  };
  auto flag = [&](const char* key, bool dflt) -> bool {
    if (!j.contains(key) || !j[key].is_boolean()) return dflt;
    return j[key].get<bool>();
  };
  ModelConfig c;
  if (model_type == "gpt2") {
    c.type = ModelType::kGpt;
    c.hidden_size = num("n_embd", 768);
    c.num_layers = num("n_layer", 12);
    c.num_heads = num("n_head", 12);
    c.ffn_size = num("n_inner", 4 * c.hidden_size);
    c.max_positions = num("n_positions", 1024);
    c.vocab_size = num("vocab_size", 50257);
    c.norm_eps = real("layer_norm_epsilon", 1e-5);
    c.tie_word_embeddings = flag("tie_word_embeddings", true);
    const std::string act = str("activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh") {
      return unsupported("HF config: gpt2 activation_function '" + act + "' is not built by the zoo (gelu_new only)");
    }
    if (flag("scale_attn_by_inverse_layer_idx", false) || !flag("scale_attn_weights", true)) {
      return unsupported("HF config: gpt2 with scale_attn_by_inverse_layer_idx or without scale_attn_weights");
    }
    if (flag("add_cross_attention", false)) return unsupported("HF config: gpt2 with add_cross_attention");
  } else if (model_type == "llama") {
    c.type = ModelType::kLlama;
    c.hidden_size = num("hidden_size", 4096);
    c.num_layers = num("num_hidden_layers", 32);
    c.num_heads = num("num_attention_heads", 32);
    c.kv_heads = num("num_key_value_heads", c.num_heads);
    c.ffn_size = num("intermediate_size", 11008);
    c.max_positions = num("max_position_embeddings", 2048);
    c.vocab_size = num("vocab_size", 32000);
    c.norm_eps = real("rms_norm_eps", 1e-6);
    c.tie_word_embeddings = flag("tie_word_embeddings", false);
    c.rope_theta = real("rope_theta", 10000.0);
    const int64_t hd = num("head_dim", 0);
    if (hd > 0 && hd * c.num_heads != c.hidden_size) c.head_dim = hd;
    for (const char* key : {"rope_scaling", "rope_parameters"}) {
      if (!j.contains(key) || !j[key].is_object()) continue;
      const auto& r = j[key];
      if (r.contains("rope_theta") && r["rope_theta"].is_number()) c.rope_theta = r["rope_theta"].get<double>();
      std::string rt = r.value("rope_type", r.value("type", std::string("default")));
      if (rt != "default") return unsupported("HF config: llama " + std::string(key) + " type '" + rt + "'");
    }
    if (flag("attention_bias", false) || flag("mlp_bias", false)) {
      return unsupported("HF config: llama with attention_bias or mlp_bias (the zoo builds llama without biases)");
    }
    const std::string act = str("hidden_act", "silu");
    if (act != "silu") return unsupported("HF config: llama hidden_act '" + act + "' (silu only)");
    if (num("pretraining_tp", 1) != 1) return unsupported("HF config: llama pretraining_tp != 1");
  } else if (model_type == "bert") {
    c.type = ModelType::kBert;
    c.hidden_size = num("hidden_size", 768);
    c.num_layers = num("num_hidden_layers", 12);
    c.num_heads = num("num_attention_heads", 12);
    c.ffn_size = num("intermediate_size", 3072);
    c.max_positions = num("max_position_embeddings", 512);
    c.type_vocab_size = num("type_vocab_size", 2);
    c.vocab_size = num("vocab_size", 30522);
    c.norm_eps = real("layer_norm_eps", 1e-12);
    c.pad_token_id = num("pad_token_id", 0);
    c.tie_word_embeddings = flag("tie_word_embeddings", true);
    const std::string act = str("hidden_act", "gelu");
    if (act != "gelu") return unsupported("HF config: bert hidden_act '" + act + "' (gelu only)");
    const std::string pe = str("position_embedding_type", "absolute");
    if (pe != "absolute") return unsupported("HF config: bert position_embedding_type '" + pe + "' (absolute only)");
    if (flag("is_decoder", false)) return unsupported("HF config: bert with is_decoder");
  } else {
    return unsupported("HF config: model_type '" + model_type + "' is not in the zoo (gpt2, llama, bert)");
  }
  // HF's gpt2 and llama embeddings have no padding_idx row at init, so pad_token_id stays -1 for them.
  c.initializer_range = real("initializer_range", 0.02);
  c.seq_length = c.max_positions;
  c.size = "custom";
  GV_RETURN_IF_ERROR(c.validate());
  return c;
}
}  // namespace

std::vector<ParamSpec> parameter_specs(const ModelConfig& c) {
  std::vector<ParamSpec> p;
  const int64_t H = c.hidden_size, V = c.vocab_size, F = c.resolved_ffn();
  const double std = c.initializer_range;
  const auto N = ParamInit::kNormal, Z = ParamInit::kZeros, O = ParamInit::kOnes;
  switch (c.type) {
    case ModelType::kGpt: {
      add(p, "transformer.wte.weight", {V, H}, embedding(), N, std);
      add(p, "transformer.wpe.weight", {c.max_positions, H}, embedding(), N, std);
      const double proj_std = std / std::sqrt(2.0 * static_cast<double>(c.num_layers));
      for (int64_t i = 0; i < c.num_layers; ++i) {
        const std::string s = "transformer.h." + std::to_string(i) + ".";
        add(p, s + "ln_1.weight", {H}, layer(i), O);
        add(p, s + "ln_1.bias", {H}, layer(i), Z);
        add(p, s + "attn.c_attn.weight", {H, 3 * H}, layer(i), N, std);
        add(p, s + "attn.c_attn.bias", {3 * H}, layer(i), Z);
        add(p, s + "attn.c_proj.weight", {H, H}, layer(i), N, proj_std);
        add(p, s + "attn.c_proj.bias", {H}, layer(i), Z);
        add(p, s + "ln_2.weight", {H}, layer(i), O);
        add(p, s + "ln_2.bias", {H}, layer(i), Z);
        add(p, s + "mlp.c_fc.weight", {H, F}, layer(i), N, std);
        add(p, s + "mlp.c_fc.bias", {F}, layer(i), Z);
        add(p, s + "mlp.c_proj.weight", {F, H}, layer(i), N, proj_std);
        add(p, s + "mlp.c_proj.bias", {H}, layer(i), Z);
      }
      add(p, "transformer.ln_f.weight", {H}, head(), O);
      add(p, "transformer.ln_f.bias", {H}, head(), Z);
      if (!c.tie_word_embeddings) add(p, "lm_head.weight", {V, H}, head(), N, std);
      break;
    }
    case ModelType::kLlama: {
      const int64_t hd = c.resolved_head_dim(), nq = c.num_heads * hd, nkv = c.resolved_kv_heads() * hd;
      add(p, "model.embed_tokens.weight", {V, H}, embedding(), N, std);
      for (int64_t i = 0; i < c.num_layers; ++i) {
        const std::string s = "model.layers." + std::to_string(i) + ".";
        add(p, s + "self_attn.q_proj.weight", {nq, H}, layer(i), N, std);
        add(p, s + "self_attn.k_proj.weight", {nkv, H}, layer(i), N, std);
        add(p, s + "self_attn.v_proj.weight", {nkv, H}, layer(i), N, std);
        add(p, s + "self_attn.o_proj.weight", {H, nq}, layer(i), N, std);
        add(p, s + "mlp.gate_proj.weight", {F, H}, layer(i), N, std);
        add(p, s + "mlp.up_proj.weight", {F, H}, layer(i), N, std);
        add(p, s + "mlp.down_proj.weight", {H, F}, layer(i), N, std);
        add(p, s + "input_layernorm.weight", {H}, layer(i), O);
        add(p, s + "post_attention_layernorm.weight", {H}, layer(i), O);
      }
      add(p, "model.norm.weight", {H}, head(), O);
      if (!c.tie_word_embeddings) add(p, "lm_head.weight", {V, H}, head(), N, std);
      break;
    }
    case ModelType::kBert: {
      add(p, "bert.embeddings.word_embeddings.weight", {V, H}, embedding(), N, std);
      add(p, "bert.embeddings.position_embeddings.weight", {c.max_positions, H}, embedding(), N, std);
      add(p, "bert.embeddings.token_type_embeddings.weight", {c.type_vocab_size, H}, embedding(), N, std);
      add(p, "bert.embeddings.LayerNorm.weight", {H}, embedding(), O);
      add(p, "bert.embeddings.LayerNorm.bias", {H}, embedding(), Z);
      for (int64_t i = 0; i < c.num_layers; ++i) {
        const std::string s = "bert.encoder.layer." + std::to_string(i) + ".";
        for (const char* qkv : {"query", "key", "value"}) {
          add(p, s + "attention.self." + qkv + ".weight", {H, H}, layer(i), N, std);
          add(p, s + "attention.self." + qkv + ".bias", {H}, layer(i), Z);
        }
        add(p, s + "attention.output.dense.weight", {H, H}, layer(i), N, std);
        add(p, s + "attention.output.dense.bias", {H}, layer(i), Z);
        add(p, s + "attention.output.LayerNorm.weight", {H}, layer(i), O);
        add(p, s + "attention.output.LayerNorm.bias", {H}, layer(i), Z);
        add(p, s + "intermediate.dense.weight", {F, H}, layer(i), N, std);
        add(p, s + "intermediate.dense.bias", {F}, layer(i), Z);
        add(p, s + "output.dense.weight", {H, F}, layer(i), N, std);
        add(p, s + "output.dense.bias", {H}, layer(i), Z);
        add(p, s + "output.LayerNorm.weight", {H}, layer(i), O);
        add(p, s + "output.LayerNorm.bias", {H}, layer(i), Z);
      }
      // Tied (HF's default): the decoder reads the word embedding, and its bias is cls.predictions.bias. Untied
      // (transformers 5): the decoder has its own weight and bias, and cls.predictions.bias is unused, so left out.
      if (c.tie_word_embeddings) add(p, "cls.predictions.bias", {V}, head(), Z);
      add(p, "cls.predictions.transform.dense.weight", {H, H}, head(), N, std);
      add(p, "cls.predictions.transform.dense.bias", {H}, head(), Z);
      add(p, "cls.predictions.transform.LayerNorm.weight", {H}, head(), O);
      add(p, "cls.predictions.transform.LayerNorm.bias", {H}, head(), Z);
      if (!c.tie_word_embeddings) {
        add(p, "cls.predictions.decoder.weight", {V, H}, head(), N, std);
        add(p, "cls.predictions.decoder.bias", {V}, head(), Z);
      }
      break;
    }
  }
  if (c.pad_token_id >= 0 && !p.empty() && p[0].init == ParamInit::kNormal) p[0].zero_row = c.pad_token_id;
  return p;
}

int64_t parameter_count(const ModelConfig& config) {
  int64_t n = 0;
  for (const ParamSpec& p : parameter_specs(config)) n += p.numel();
  return n;
}

int64_t parameter_bytes(const ModelConfig& config, DType dtype) {
  return parameter_count(config) * static_cast<int64_t>(dtype_size(dtype));
}

}  // namespace gv
