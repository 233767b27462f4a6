#include "cli/model_flags.h"

namespace gv::cli {
namespace {

const char* kShapeFlags[] = {"hidden-size", "num-layers", "num-heads", "ffn-size", "kv-heads", "seq-length", "vocab-size"};

}  // namespace

std::vector<FlagSpec> zoo_model_flags() {
  return {
      string_flag("model-type", "gpt|llama|bert", "", "A built-in model type (see `galvatron models`)."),
      string_flag("model-size", "NAME", "", "A built-in size, e.g. gpt-1.5b, llama-7b, bert-large, gpt2 (see `galvatron models`)."),
      int_flag("hidden-size", "H", "0", "Zoo model: hidden size (overrides the named size; the FFN width then follows the type's rule unless --ffn-size is given)."),
      int_flag("num-layers", "L", "0", "Zoo model: number of transformer layers."),
      int_flag("num-heads", "N", "0", "Zoo model: attention heads (a multi-head size stays multi-head: its key/value heads follow unless --kv-heads is given)."),
      int_flag("ffn-size", "F", "0", "Zoo model: feed-forward size (default 4*H for gpt and bert, 2/3 of 4*H rounded up to 256 for llama)."),
      int_flag("kv-heads", "K", "0", "Zoo model (llama): key/value heads."),
      int_flag("seq-length", "T", "0", "Zoo model: sequence length."),
      int_flag("vocab-size", "V", "0", "Zoo model: vocabulary size."),
  };
}

bool names_zoo_model(const ParsedArgs& args) {
  if (args.given("model-type") || args.given("model-size")) return true;
  for (const char* f : kShapeFlags) {
    if (args.given(f)) return true;
  }
  return false;
}

Expected<ModelConfig> zoo_model_from_flags(const ParsedArgs& args, CommandContext& ctx) {
  ModelConfig cfg;
  if (args.given("model-size")) {
    auto c = zoo_config(args.str("model-type"), args.str("model-size"));
    if (!c) return ctx.usage(c.status().message() + " (see `galvatron models`)");
    cfg = *c;
  } else {
    if (!args.given("model-type")) return ctx.usage("give --model-type (gpt, llama or bert) for a custom shape");
    auto t = parse_model_type(args.str("model-type"));
    if (!t) return ctx.usage(t.status().message());
    cfg.type = *t;
    cfg.size = "custom";
    cfg.vocab_size = 50257;
    cfg.norm_eps = cfg.type == ModelType::kBert ? 1e-12 : (cfg.type == ModelType::kLlama ? 1e-6 : 1e-5);
    cfg.tie_word_embeddings = cfg.type != ModelType::kLlama;
    if (cfg.type == ModelType::kBert) cfg.pad_token_id = 0;
  }
  auto set = [&](const char* flag, int64_t* field) {
    if (args.given(flag)) *field = args.i64(flag);
  };
  // A named size's dependent shapes follow the overridden ones unless given too: its FFN width follows a new hidden
  // size (the type's rule: 4H, Llama's 2/3 of 4H rounded up to 256), and multi-head attention stays multi-head when
  // the heads change (llama-7b with --num-heads 8 gets 8 key/value heads, not its 32).
  if (args.given("hidden-size") && !args.given("ffn-size")) cfg.ffn_size = 0;
  if (args.given("num-heads") && !args.given("kv-heads") &&
      (cfg.kv_heads == 0 || cfg.kv_heads == cfg.num_heads)) {
    cfg.kv_heads = 0;
  }
  set("hidden-size", &cfg.hidden_size);
  set("num-layers", &cfg.num_layers);
  set("num-heads", &cfg.num_heads);
  set("ffn-size", &cfg.ffn_size);
  set("kv-heads", &cfg.kv_heads);
  set("seq-length", &cfg.seq_length);
  set("vocab-size", &cfg.vocab_size);
  if (cfg.type == ModelType::kLlama && cfg.ffn_size == 0 && cfg.hidden_size > 0) {
    // HF LlamaConfig's rule: 2/3 of 4H, rounded up to a multiple of 256.
    cfg.ffn_size = (8 * cfg.hidden_size / 3 + 255) / 256 * 256;
  }
  if (cfg.seq_length > cfg.max_positions) cfg.max_positions = cfg.seq_length;
  if (cfg.size != "custom" && (args.given("hidden-size") || args.given("num-layers") || args.given("num-heads"))) {
    cfg.size += "-custom";
  }
  Status st = cfg.validate();
  if (!st.is_ok()) return ctx.usage(st.message());
  return cfg;
}

}  // namespace gv::cli
