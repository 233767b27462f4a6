#include "cli/demo_addition.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/loss_plot.h"
#include "cli/train_loop.h"
#include "models/zoo.h"
#include "runtime/executor.h"
#include "runtime/safetensors.h"

namespace gv::cli {
namespace {

namespace fs = std::filesystem;

// Tokens: the digits 0-9, then '+' and '='. A problem "ab+cd=efg" is 9 tokens; the model reads the first 8 and is
// trained to predict e, f, g (labels elsewhere are -100, so the loss counts the answer only).
constexpr int64_t kPlus = 10, kEquals = 11, kVocab = 16, kSeq = 8, kHeldOut = 1000;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Problem {
  int a, b;
};

// All 10,000 pairs, shuffled with the seed; the last kHeldOut are never trained on.
std::vector<Problem> all_problems(uint64_t seed) {
  std::vector<Problem> p;
  for (int a = 0; a < 100; ++a)
    for (int b = 0; b < 100; ++b) p.push_back({a, b});
  uint64_t state = seed ^ 0xadd1u;
  for (size_t i = p.size() - 1; i > 0; --i) std::swap(p[i], p[splitmix64(state) % (i + 1)]);
  return p;
}

void encode(const Problem& q, int64_t* tok) {
  const int s = q.a + q.b;
  const int64_t t[9] = {q.a / 10, q.a % 10, kPlus, q.b / 10, q.b % 10, kEquals, s / 100, (s / 10) % 10, s % 10};
  for (int i = 0; i < 9; ++i) tok[i] = t[i];
}

Status write_corpus(const std::vector<Problem>& train, const std::string& path) {
  const int64_t n = static_cast<int64_t>(train.size());
  Tensor ids(DType::kInt64, {n, kSeq}), labels(DType::kInt64, {n, kSeq});
  for (int64_t r = 0; r < n; ++r) {
    int64_t tok[9];
    encode(train[r], tok);
    for (int64_t t = 0; t < kSeq; ++t) {
      ids.data_as<int64_t>()[r * kSeq + t] = tok[t];
      labels.data_as<int64_t>()[r * kSeq + t] = t >= 5 ? tok[t + 1] : -100;
    }
  }
  return write_safetensors(path, {{"input_ids", ids}, {"labels", labels}}, {{"task", "two-digit addition"}});
}

ModelConfig demo_model() {
  ModelConfig c;
  c.type = ModelType::kGpt;
  c.size = "demo-addition";
  c.hidden_size = 128;
  c.num_layers = 4;
  c.num_heads = 4;
  c.ffn_size = 512;
  c.vocab_size = kVocab;
  c.seq_length = kSeq;
  c.max_positions = kSeq;
  return c;
}

struct Evaluation {
  int64_t correct = 0;
  std::vector<std::pair<Problem, int>> answers;  // the model's answer to each held-out problem
};

// Greedy decoding of the three answer digits for every held-out problem at once, with the trained weights.
Expected<Evaluation> evaluate(const ModelConfig& cfg, const std::vector<Problem>& held_out, const TensorMap& params) {
  const int64_t n = static_cast<int64_t>(held_out.size());
  GV_ASSIGN_OR_RETURN(ImportedModel m, build_and_import(cfg, n, kSeq, WeightInit::kNone));
  auto backend = make_cpu_backend();
  GV_ASSIGN_OR_RETURN(auto ex, Executor::create(m.graph, *backend));
  for (ValueId p : m.graph.parameters()) {
    auto it = params.find(m.graph.value(p).name);
    if (it == params.end()) return internal_error("trained weights lack '" + m.graph.value(p).name + "'");
    GV_RETURN_IF_ERROR(ex->set_value(p, it->second));
  }
  Tensor ids(DType::kInt64, {n, kSeq});
  for (int64_t r = 0; r < n; ++r) {
    int64_t tok[9];
    encode(held_out[r], tok);
    for (int t = 0; t < 6; ++t) ids.data_as<int64_t>()[r * kSeq + t] = tok[t];
  }
  Tensor logits;
  std::vector<int> answer(n, 0);
  for (int d = 0; d < 3; ++d) {
    GV_RETURN_IF_ERROR(ex->set_value(m.graph.inputs[0], ids));
    GV_RETURN_IF_ERROR(ex->run());
    GV_ASSIGN_OR_RETURN(logits, ex->fetch(m.graph.outputs[0]));
    for (int64_t r = 0; r < n; ++r) {
      const float* row = logits.data_as<float>() + (r * kSeq + 5 + d) * kVocab;
      int best = 0;
      for (int v = 1; v < 10; ++v) best = row[v] > row[best] ? v : best;
      answer[r] = answer[r] * 10 + best;
      if (d < 2) ids.data_as<int64_t>()[r * kSeq + 6 + d] = best;
    }
  }
  Evaluation e;
  for (int64_t r = 0; r < n; ++r) {
    e.correct += answer[r] == held_out[r].a + held_out[r].b;
    e.answers.push_back({held_out[r], answer[r]});
  }
  return e;
}

}  // namespace

Status run_addition_demo(const ParsedArgs& args, CommandContext& ctx) {
  GV_ASSIGN_OR_RETURN(TrainSettings s, train_settings_from_args(args, ctx));
  // The demo's own defaults, unless the user set them.
  if (!args.given("steps")) s.steps = 800;
  if (!args.given("batch-size")) s.batch_size = 64;
  if (!args.given("lr")) s.trainer.lr = 2e-3;
  if (!args.given("schedule")) s.trainer.schedule = LrSchedule::kCosine;
  if (!args.given("warmup-steps")) s.trainer.warmup_steps = 50;
  const std::string name = args.str("run-name").empty() ? "addition" : args.str("run-name");
  const fs::path dir = fs::path("runs") / name;
  std::error_code ec;
  fs::create_directories(dir / "data", ec);
  if (ec) return io_error("cannot create '" + dir.string() + "': " + ec.message());
  if (s.metrics.empty()) s.metrics = (dir / "metrics.jsonl").string();
  if (s.checkpoint_dir.empty()) s.checkpoint_dir = (dir / "checkpoint").string();
  if (s.export_path.empty()) s.export_path = (dir / "model.onnx").string();

  std::fprintf(stderr,
               "galvatron demo: a %s learns two-digit addition (\"47+38=085\") on the CPU.\n"
               "  9,000 problems to train on, 1,000 held out; results go to %s/\n",
               "4-layer GPT", dir.string().c_str());
  const std::vector<Problem> problems = all_problems(s.trainer.seed);
  std::vector<Problem> train(problems.begin(), problems.end() - kHeldOut);
  std::vector<Problem> held_out(problems.end() - kHeldOut, problems.end());
  const std::string corpus = (dir / "data" / "train.safetensors").string();
  GV_RETURN_IF_ERROR(write_corpus(train, corpus));

  TrainModelSource src;
  src.from_zoo = true;
  src.zoo_config = demo_model();
  src.label = src.zoo_config.describe();
  src.batch = s.batch_size;
  src.seq = kSeq;
  DataOptions dopt;
  dopt.batch_size = s.batch_size;
  dopt.seq_len = kSeq;
  GV_ASSIGN_OR_RETURN(src.setup.loader, open_data(corpus, dopt));
  GV_ASSIGN_OR_RETURN(src.model, build_and_import(src.zoo_config, s.batch_size, kSeq, WeightInit::kHuggingFace,
                                                  s.trainer.seed));
  GV_ASSIGN_OR_RETURN(TrainOutcome out, run_training(s, src, ctx));

  GV_ASSIGN_OR_RETURN(TensorMap params, out.trainer->parameters());
  GV_ASSIGN_OR_RETURN(Evaluation ev, evaluate(src.zoo_config, held_out, params));
  const double acc = 100.0 * static_cast<double>(ev.correct) / static_cast<double>(held_out.size());
  GV_RETURN_IF_ERROR(write_loss_svg((dir / "loss.svg").string(), out.losses,
                                    "galvatron demo: two-digit addition, training loss (answer tokens)"));
  std::printf("\nheld-out accuracy: %.1f%% (%lld of %lld problems never seen in training answered exactly; "
              "guessing gets about 0.1%%)\n",
              acc, static_cast<long long>(ev.correct), static_cast<long long>(held_out.size()));
  std::printf("sampled completions:\n");
  for (size_t i = 0; i < 8 && i < ev.answers.size(); ++i) {
    const auto& [q, got] = ev.answers[i * 97 % ev.answers.size()];
    std::printf("  %02d+%02d=%03d   %s\n", q.a, q.b, got, got == q.a + q.b ? "right" : "wrong");
  }
  nlohmann::json summary = {{"task", "two-digit addition"},
                            {"held_out_problems", held_out.size()},
                            {"held_out_correct", ev.correct},
                            {"held_out_accuracy", acc / 100.0},
                            {"steps", s.steps},
                            {"final_loss", out.losses.empty() ? 0.0 : out.losses.back().second},
                            {"train_seconds", out.seconds}};
  std::ofstream(dir / "summary.json") << summary.dump(2) << "\n";
  std::printf("\nin %s/: metrics.jsonl, checkpoint/, model.onnx, loss.svg, summary.json\n", dir.string().c_str());
  return Status::ok();
}

}  // namespace gv::cli
