#include "runtime/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdlib>

#include "runtime/communicator.h"
#include "runtime/safetensors.h"

namespace gv {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::string state_key(const std::string& param, size_t index, OptimizerConfig::Kind kind) {
  static const char* adamw[] = {"exp_avg", "exp_avg_sq"};
  const char* what = kind == OptimizerConfig::Kind::kAdamW ? adamw[index] : "momentum_buffer";
  return std::string("optimizer.") + what + "/" + param;
}

}  // namespace

Expected<std::unique_ptr<Trainer>> Trainer::create(Graph forward, const TrainerConfig& config, Backend& backend) {
  std::unique_ptr<Trainer> t(new Trainer());
  t->config_ = config;
  t->backend_ = &backend;
  TrainingGraphOptions go = config.graph;
  const bool parallel = config.comm && config.comm->size() > 1;
  if (parallel) go.data_parallel = true;
  GV_ASSIGN_OR_RETURN(TrainingGraph tg, build_training_graph(std::move(forward), go));
  t->tg_ = std::make_unique<TrainingGraph>(std::move(tg));
  ExecutorOptions eo;
  eo.rng_seed = config.seed;
  eo.comm = parallel ? config.comm : nullptr;
  eo.keep_alive = {t->tg_->loss};
  for (const auto& kv : t->tg_->reported_grads) {
    if (kv.second != kNoValue) eo.keep_alive.push_back(kv.second);
  }
  GV_ASSIGN_OR_RETURN(t->executor_, Executor::create(t->tg_->graph, backend, eo));
  return t;
}

double Trainer::lr_at(int64_t step) const {
  const double lr = config_.lr;
  if (config_.schedule == LrSchedule::kConstant) return lr;
  const int64_t warm = config_.warmup_steps;
  if (step <= warm) return lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(warm, 1));
  const int64_t total = std::max<int64_t>(config_.total_steps, warm + 1);
  double progress = static_cast<double>(step - warm) / static_cast<double>(total - warm);
  progress = std::min(1.0, std::max(0.0, progress));
  const double min_lr = lr * config_.min_lr_ratio;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(kPi * progress));
}

Status Trainer::feed(const TensorMap& batch) {
  const Graph& g = tg_->graph;
  for (ValueId in : g.inputs) {
    if (in == tg_->lr || in == tg_->step) continue;
    const Value& v = g.value(in);
    auto it = batch.find(v.name);
    if (it == batch.end()) {
      std::string have;
      for (const auto& kv : batch) have += (have.empty() ? "" : ", ") + kv.first;
      return not_found("the batch has no tensor for graph input '" + v.name + "' (" + dtype_name(v.dtype) + " " +
                       shape_str(v.shape) + "); it has: " + have);
    }
    GV_RETURN_IF_ERROR(executor_->set_value(in, it->second).with_context("batch"));
  }
  return Status::ok();
}

Status Trainer::run_forward_backward(const TensorMap& batch, int64_t micro_index, double* loss) {
  GV_RETURN_IF_ERROR(feed(batch));
  executor_->rng_counter = static_cast<uint64_t>(micro_index);
  GV_RETURN_IF_ERROR(executor_->run_steps(0, tg_->optimizer_begin));
  GV_ASSIGN_OR_RETURN(Tensor l, executor_->fetch(tg_->loss));
  *loss = l.scalar_f64(0);
  return Status::ok();
}

Expected<StepMetrics> Trainer::step(const std::vector<TensorMap>& micro_batches) {
  const int accum = config_.graph.grad_accum_steps;
  if (static_cast<int>(micro_batches.size()) != accum) {
    return invalid_argument("step needs " + std::to_string(accum) + " micro-batches, got " +
                            std::to_string(micro_batches.size()));
  }
  auto t0 = std::chrono::steady_clock::now();
  StepMetrics m;
  m.step = steps_done_ + 1;
  double loss_sum = 0.0;
  for (int k = 0; k < accum; ++k) {
    double l = 0.0;
    GV_RETURN_IF_ERROR(run_forward_backward(micro_batches[k], steps_done_ * accum + k, &l));
    loss_sum += l;
    for (const auto& kv : micro_batches[k]) {
      if (kv.first != config_.graph.labels_input) {
        m.tokens += kv.second.numel();
        break;
      }
    }
  }
  m.loss = loss_sum / accum;
  if (config_.comm && config_.comm->size() > 1) {
    // The step's loss is the mean over the ranks (each rank's loss is the mean over its rows).
    GV_RETURN_IF_ERROR(config_.comm->all_reduce(&m.loss, 1, DType::kFloat64, ReduceOp::kAvg));
  }
  m.lr = lr_at(m.step);
  GV_RETURN_IF_ERROR(executor_->set_value(tg_->lr, Tensor::scalar(DType::kFloat64, m.lr)));
  Tensor step_t(DType::kInt64, {});
  step_t.data_as<int64_t>()[0] = m.step;
  GV_RETURN_IF_ERROR(executor_->set_value(tg_->step, step_t));
  GV_RETURN_IF_ERROR(executor_->run_steps(tg_->optimizer_begin, executor_->num_steps()));
  GV_ASSIGN_OR_RETURN(Tensor gn, executor_->fetch(tg_->grad_norm));
  m.grad_norm = gn.scalar_f64(0);
  steps_done_ = m.step;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}

Expected<TensorMap> Trainer::compute_gradients(const TensorMap& batch, double* loss) {
  double l = 0.0;
  GV_RETURN_IF_ERROR(run_forward_backward(batch, steps_done_ * config_.graph.grad_accum_steps, &l));
  if (loss) *loss = l;
  TensorMap out;
  const Graph& g = tg_->graph;
  for (ValueId p : tg_->params) {
    auto acc = tg_->grad_accumulators.find(p);
    ValueId src = acc != tg_->grad_accumulators.end() ? acc->second : tg_->grads.at(p);
    GV_ASSIGN_OR_RETURN(Tensor grad, executor_->fetch(src));
    out[g.value(p).name] = grad;
    if (acc != tg_->grad_accumulators.end()) {
      GV_RETURN_IF_ERROR(backend_->zero(executor_->data(acc->second), grad.nbytes()));
    }
  }
  for (const auto& [name, gid] : tg_->reported_grads) {
    if (gid == kNoValue) continue;
    GV_ASSIGN_OR_RETURN(Tensor grad, executor_->fetch(gid));
    out[name] = grad;
  }
  return out;
}

Expected<double> Trainer::evaluate_loss(const TensorMap& batch) {
  // The forward pass ends where the backward begins; the loss is its last value.
  GV_RETURN_IF_ERROR(feed(batch));
  GV_RETURN_IF_ERROR(executor_->run_steps(0, tg_->backward_begin));
  GV_ASSIGN_OR_RETURN(Tensor l, executor_->fetch(tg_->loss));
  return l.scalar_f64(0);
}

Expected<TensorMap> Trainer::parameters() const {
  TensorMap out;
  for (ValueId p : tg_->graph.parameters()) {
    GV_ASSIGN_OR_RETURN(Tensor t, executor_->fetch(p));
    out[tg_->graph.value(p).name] = t;
  }
  return out;
}

Status Trainer::save_checkpoint(const std::string& path, std::map<std::string, std::string> metadata) const {
  GV_ASSIGN_OR_RETURN(TensorMap tensors, parameters());
  const auto kind = config_.graph.optimizer.kind;
  for (const auto& [p, states] : tg_->optimizer_state) {
    for (size_t i = 0; i < states.size(); ++i) {
      GV_ASSIGN_OR_RETURN(Tensor t, executor_->fetch(states[i]));
      tensors[state_key(tg_->graph.value(p).name, i, kind)] = t;
    }
  }
  metadata["galvatron.step"] = std::to_string(steps_done_);
  metadata["galvatron.optimizer"] = kind == OptimizerConfig::Kind::kAdamW ? "adamw" : "sgd";
  metadata["galvatron.seed"] = std::to_string(config_.seed);
  return write_safetensors(path, tensors, metadata);
}

Expected<std::map<std::string, std::string>> Trainer::load_checkpoint(const std::string& path) {
  GV_ASSIGN_OR_RETURN(TensorMap tensors, read_safetensors(path));
  GV_ASSIGN_OR_RETURN(auto metadata, read_safetensors_metadata(path));
  const Graph& g = tg_->graph;
  const auto kind = config_.graph.optimizer.kind;
  std::string want_opt = kind == OptimizerConfig::Kind::kAdamW ? "adamw" : "sgd";
  if (metadata.count("galvatron.optimizer") && metadata["galvatron.optimizer"] != want_opt) {
    return invalid_argument(path + ": checkpoint was written by the " + metadata["galvatron.optimizer"] +
                            " optimizer, this run uses " + want_opt);
  }
  auto restore = [&](ValueId v, const std::string& key) -> Status {
    auto it = tensors.find(key);
    if (it == tensors.end()) return not_found(path + ": checkpoint has no tensor '" + key + "'");
    return executor_->set_value(v, it->second).with_context(path);
  };
  for (ValueId p : g.parameters()) GV_RETURN_IF_ERROR(restore(p, g.value(p).name));
  for (const auto& [p, states] : tg_->optimizer_state) {
    for (size_t i = 0; i < states.size(); ++i) GV_RETURN_IF_ERROR(restore(states[i], state_key(g.value(p).name, i, kind)));
  }
  if (!metadata.count("galvatron.step")) return corrupt(path + ": checkpoint has no galvatron.step metadata");
  char* end = nullptr;
  const std::string& step_str = metadata["galvatron.step"];
  long long step = std::strtoll(step_str.c_str(), &end, 10);
  if (step_str.empty() || *end != '\0' || step < 0) {
    return corrupt(path + ": checkpoint metadata galvatron.step is not a step number: '" + step_str + "'");
  }
  steps_done_ = step;
  return metadata;
}

}  // namespace gv
