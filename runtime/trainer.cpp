#include "runtime/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <tuple>

#include "kernels/split_float32.h"
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
  go.save_attention_lse = go.save_attention_lse || backend.saves_attention_statistics();
  go.bf16_operands = go.bf16_operands || backend.shares_bf16_operands();
  go.fuse_linear = go.fuse_linear || backend.fuses_linear();
  go.fuse_sibling_linears = go.fuse_sibling_linears || backend.fuses_sibling_linears();
  go.fuse_gelu_grad_product = go.fuse_gelu_grad_product || backend.fuses_gelu_grad_product();
  go.pack_attention_qkv = go.pack_attention_qkv || backend.packs_attention_qkv();
  go.bf16_attention_io = go.bf16_attention_io || backend.bf16_attention_io();
  go.bf16_residual_stream = go.bf16_residual_stream || backend.bf16_residual_stream();
  go.fuse_residual_add = go.fuse_residual_add || backend.fuses_residual_add();
  go.fuse_norm_grad_add = go.fuse_norm_grad_add || backend.fuses_norm_grad_add();
  go.fuse_norm_grad_outputs = go.fuse_norm_grad_outputs || backend.fuses_norm_grad_outputs();
  go.save_norm_statistics = go.save_norm_statistics || backend.saves_norm_statistics();
  if (go.attention_saved_head_multiple == 0) go.attention_saved_head_multiple = backend.attention_saved_head_multiple();
  if (go.fuse_skip_norm == 0) go.fuse_skip_norm = backend.skip_norm_branch();
  go.optimizer_bf16_copies = go.optimizer_bf16_copies || backend.optimizer_writes_bf16_copies();
  go.optimizer_reads_bf16_grads = go.optimizer_reads_bf16_grads && backend.reads_bf16_grads();
  go.bf16_weight_grads = go.bf16_weight_grads || backend.bf16_weight_grads();
  const bool parallel = config.comm && config.comm->size() > 1;
  if (parallel) go.rank = config.comm->rank();
  if (parallel && go.param_sync.empty() && config.shards.empty() && config.pipeline_schedule.empty()) {
    // Plain data parallelism over the whole world: every gradient summed over all ranks, each rank's loss a mean
    // over its slice of the batch.
    std::vector<int> world(config.comm->size());
    for (int i = 0; i < config.comm->size(); ++i) world[i] = i;
    for (ValueId p : forward.parameters()) go.param_sync[forward.value(p).name].dp_group = world;
    go.loss_replicas = config.comm->size();
  }
  if (config.in_flight < 1) return invalid_argument("pipeline: in_flight must be at least 1");
  GV_ASSIGN_OR_RETURN(TrainingGraph tg, build_training_graph(std::move(forward), go));
  t->tg_ = std::make_unique<TrainingGraph>(std::move(tg));
  if (parallel) {
    // Create every communicator group the graph's collectives use, in one global order (see communicator.h).
    std::set<std::vector<int>> groups;
    for (const Node& n : t->tg_->graph.nodes) {
      auto g = n.attrs.get_ints("group");
      if (!g.empty()) groups.insert(std::vector<int>(g.begin(), g.end()));
    }
    GV_RETURN_IF_ERROR(config.comm->prepare_groups(std::vector<std::vector<int>>(groups.begin(), groups.end()))
                           .with_context("creating communicator groups"));
  }
  ExecutorOptions eo;
  eo.rng_seed = config.seed;
  eo.comm = parallel ? config.comm : nullptr;
  eo.keep_alive = {t->tg_->loss};
  for (const auto& kv : t->tg_->reported_grads) {
    if (kv.second != kNoValue) eo.keep_alive.push_back(kv.second);
  }
  GV_ASSIGN_OR_RETURN(t->executor_, Executor::create(t->tg_->graph, backend, eo));
  // Pipeline: one more activation arena per further micro-batch in flight, sharing parameters and state.
  for (int k = 1; k < config.in_flight; ++k) {
    ExecutorOptions more = eo;
    more.share_persistent_with = t->executor_.get();
    GV_ASSIGN_OR_RETURN(auto ex, Executor::create(t->tg_->graph, backend, more));
    t->more_slots_.push_back(std::move(ex));
  }
  return t;
}

std::vector<Executor*> Trainer::all_slots() {
  std::vector<Executor*> v = {executor_.get()};
  for (auto& e : more_slots_) v.push_back(e.get());
  return v;
}

bool Trainer::parallel() const { return config_.comm && config_.comm->size() > 1; }

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

Status Trainer::feed(Executor& ex, const TensorMap& batch) {
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
    GV_RETURN_IF_ERROR(ex.set_value(in, it->second).with_context("batch"));
  }
  return Status::ok();
}

Status Trainer::refresh_param_copies() {
  if (!param_copies_stale_) return Status::ok();
  // The copies are state buffers, which every micro-batch slot shares with slot 0.
  if (tg_->prologue_end > 0) GV_RETURN_IF_ERROR(executor_->run_steps(0, tg_->prologue_end));
  param_copies_stale_ = false;
  return Status::ok();
}

Status Trainer::run_forward_backward(const TensorMap& batch, int64_t micro_index, double* loss) {
  GV_RETURN_IF_ERROR(feed(*executor_, batch));
  executor_->rng_counter = static_cast<uint64_t>(micro_index);
  executor_->micro_batch = 0;
  GV_RETURN_IF_ERROR(refresh_param_copies());
  GV_RETURN_IF_ERROR(executor_->run_steps(tg_->prologue_end, tg_->optimizer_begin));
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
  for (int k = 0; k < accum; ++k) {
    for (const auto& kv : micro_batches[k]) {
      if (kv.first != config_.graph.labels_input) {
        m.tokens += kv.second.numel();
        break;
      }
    }
  }
  std::vector<TrainerConfig::PipelineStep> schedule = config_.pipeline_schedule;
  if (schedule.empty()) {
    for (int k = 0; k < accum; ++k) schedule.push_back({false, k}), schedule.push_back({true, k});
  }
  const int slots = 1 + static_cast<int>(more_slots_.size());
  auto slot = [&](int micro) -> Executor& { return micro % slots == 0 ? *executor_ : *more_slots_[micro % slots - 1]; };
  double loss_sum = 0.0;
  GV_RETURN_IF_ERROR(refresh_param_copies());
  m.lr = lr_at(m.step);
  auto set_update_scalars = [&]() -> Status {
    GV_RETURN_IF_ERROR(executor_->set_value(tg_->lr, Tensor::scalar(DType::kFloat64, m.lr)));
    Tensor step_t(DType::kInt64, {});
    step_t.data_as<int64_t>()[0] = m.step;
    return executor_->set_value(tg_->step, step_t);
  };
  // One process: the update's scalars before the forward (updates may run inside the backward, and a recorded step
  // reads them), and the loss read after the step when nothing overwrites it (one micro-batch). Several processes
  // keep the order their collectives were proven with: each micro-batch's loss read after its forward, the loss
  // all-reduced before the optimizer region, the scalars fed then.
  const bool one_process = !parallel();
  const bool loss_after_step = one_process && accum == 1;
  if (one_process) GV_RETURN_IF_ERROR(set_update_scalars());
  const std::string not_recorded = why_not_recorded();
  if (not_recorded.empty()) {
    executor_->micro_batch = 0;
    executor_->rng_counter = static_cast<uint64_t>(steps_done_);
    GV_RETURN_IF_ERROR(feed(*executor_, micro_batches[0]));
    GV_RETURN_IF_ERROR(run_whole_step());
    schedule.clear();  // done: forward, backward and updates
  } else if (record_declined_.empty() && steps_run_here_ > 0) {
    record_declined_ = not_recorded;
  }
  for (const auto& ps : schedule) {
    if (ps.micro < 0 || ps.micro >= accum) return internal_error("pipeline schedule names micro-batch " +
                                                                 std::to_string(ps.micro));
    Executor& ex = slot(ps.micro);
    ex.micro_batch = ps.micro;
    ex.rng_counter = static_cast<uint64_t>(steps_done_ * accum + ps.micro);
    if (!ps.backward) {
      GV_RETURN_IF_ERROR(feed(ex, micro_batches[ps.micro]));
      GV_RETURN_IF_ERROR(ex.run_steps(tg_->prologue_end, tg_->backward_begin));
      if (!loss_after_step) {  // the next micro-batch's forward overwrites it
        GV_ASSIGN_OR_RETURN(Tensor l, ex.fetch(tg_->loss));
        loss_sum += l.scalar_f64(0);
      }
    } else {
      GV_RETURN_IF_ERROR(ex.run_steps(tg_->backward_begin, tg_->optimizer_begin));
    }
  }
  if (parallel()) {
    // The step's loss: the mean over the batch slices (each rank's loss is the mean over its rows; ranks without
    // the loss, pipeline stages before the last, hold 0).
    m.loss = loss_sum / accum;
    GV_RETURN_IF_ERROR(config_.comm->all_reduce(&m.loss, 1, DType::kFloat64, ReduceOp::kSum));
    m.loss /= config_.loss_divisor > 0 ? config_.loss_divisor : config_.comm->size();
    GV_RETURN_IF_ERROR(set_update_scalars());
  }
  if (!not_recorded.empty()) GV_RETURN_IF_ERROR(executor_->run_steps(tg_->optimizer_begin, executor_->num_steps()));
  ++steps_run_here_;
  if (one_process) {
    if (loss_after_step) {
      GV_ASSIGN_OR_RETURN(Tensor l, executor_->fetch(tg_->loss));
      loss_sum = l.scalar_f64(0);
    }
    m.loss = loss_sum / accum;
  }
  if (parallel()) GV_RETURN_IF_ERROR(config_.comm->wait_sends());
  for (Executor* ex : all_slots()) {
    for (const auto& [op, b] : ex->comm_bytes) m.comm_bytes[op] += b;
    ex->comm_bytes.clear();
  }
  GV_ASSIGN_OR_RETURN(Tensor gn, executor_->fetch(tg_->grad_norm));
  m.grad_norm = gn.scalar_f64(0);
  steps_done_ = m.step;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}

// Whether a step may run as one recorded launch ("" if so): one micro-batch in one process (no pipeline slots, no
// collectives), no kernel whose arguments change from step to step (Dropout's random stream is keyed by a counter
// given at launch), and recording did not fail or was not declined before (the CPU backend declines).
std::string Trainer::why_not_recorded() const {
  if (!record_declined_.empty()) return record_declined_;
  if (config_.graph.grad_accum_steps != 1 || !config_.pipeline_schedule.empty() || !more_slots_.empty()) {
    return "the step has several micro-batches";
  }
  if (parallel()) return "the step communicates with other processes";
  for (const Node& n : tg_->graph.nodes) {
    if (n.op_type == "Dropout") return "Dropout's random stream changes every step";
  }
  return "";
}

// The step's kernels: recorded at this trainer's second step and replayed from then on; one by one before, or when
// the backend cannot record them (the reason is kept, and the step runs as before).
Status Trainer::run_whole_step() {
  const size_t begin = tg_->prologue_end, end = executor_->num_steps();
  if (!recorded_step_ && steps_run_here_ >= 1) {
    Executor* ex = executor_.get();
    auto r = backend_->record([ex, begin, end] { return ex->run_steps(begin, end); });
    if (r) {
      recorded_step_ = std::move(*r);
    } else {
      record_declined_ = r.status().message();
    }
  }
  if (recorded_step_) return recorded_step_->replay();
  return executor_->run_steps(begin, end);
}

Expected<TensorMap> Trainer::compute_gradients(const TensorMap& batch, double* loss) {
  if (tg_->fused.updates_in_backward > 0) {
    return invalid_argument(
        "compute_gradients: this trainer's optimizer updates run inside the backward pass "
        "(TrainingGraphOptions::updates_in_backward), so its gradients cannot be read without "
        "updating the weights; build it with updates_in_backward off");
  }
  double l = 0.0;
  GV_RETURN_IF_ERROR(run_forward_backward(batch, steps_done_ * config_.graph.grad_accum_steps, &l));
  if (loss) *loss = l;
  TensorMap out;
  const Graph& g = tg_->graph;
  for (ValueId p : tg_->params) {
    auto acc = tg_->grad_accumulators.find(p);
    ValueId src = acc != tg_->grad_accumulators.end() ? acc->second : tg_->grads.at(p);
    GV_ASSIGN_OR_RETURN(Tensor grad, executor_->fetch(src));
    // A reduced bf16 gradient (optimizer_reads_bf16_grads) is reported in the parameter's type (exact widening).
    if (grad.dtype() == DType::kBFloat16 && g.value(p).dtype == DType::kFloat32) grad = grad.cast(DType::kFloat32);
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
  GV_RETURN_IF_ERROR(feed(*executor_, batch));
  GV_RETURN_IF_ERROR(refresh_param_copies());
  GV_RETURN_IF_ERROR(executor_->run_steps(tg_->prologue_end, tg_->backward_begin));
  GV_ASSIGN_OR_RETURN(Tensor l, executor_->fetch(tg_->loss));
  return l.scalar_f64(0);
}

TensorShard Trainer::shard_of(ValueId param) const {
  const Value& v = tg_->graph.value(param);
  auto it = config_.shards.find(v.name);
  if (it != config_.shards.end()) return it->second;
  TensorShard whole;
  whole.global_name = v.name;
  whole.global_shape = v.shape;
  // Without pieces every rank holds the whole tensor (plain data parallelism): rank 0's copy is the one. Every rank
  // is a data-parallel rank of it (no tensor or pipeline copies): each contributes its own ZeRO-2 range.
  whole.owner = !parallel() || config_.comm->rank() == 0;
  whole.owner_of_dp_range = true;
  return whole;
}

TensorShard Trainer::state_shard_of(ValueId param) const {
  TensorShard s = shard_of(param);
  auto r = tg_->optimizer_state_range.find(param);
  if (r != tg_->optimizer_state_range.end()) {
    // ZeRO-2: the state covers a flat range of this rank's (whole or TP) piece; every rank of the DP group owns
    // its own range.
    s.flat_begin = r->second.first;
    s.flat_end = r->second.second;
    s.owner = s.owner_of_dp_range;
  }
  return s;
}

namespace {

// Every rank's list of (name, dtype, shape), merged in name order: the tensors all ranks assemble together.
Expected<std::vector<std::tuple<std::string, DType, Shape>>> agree_on_tensors(
    Communicator& comm, const std::vector<std::tuple<std::string, DType, Shape>>& mine) {
  std::string text;
  for (const auto& [name, dtype, shape] : mine) {
    text += name + "\t" + std::to_string(static_cast<int>(dtype));
    for (int64_t d : shape) text += "\t" + std::to_string(d);
    text += "\n";
  }
  std::vector<size_t> counts(comm.size());
  size_t my_count = text.size();
  std::vector<size_t> one(comm.size(), 1);
  std::vector<int64_t> all_counts(comm.size());
  int64_t mine_n = static_cast<int64_t>(my_count);
  GV_RETURN_IF_ERROR(comm.all_gather(&mine_n, all_counts.data(), one, DType::kInt64));
  size_t total = 0;
  for (int i = 0; i < comm.size(); ++i) total += counts[i] = static_cast<size_t>(all_counts[i]);
  std::string all(total, '\0');
  GV_RETURN_IF_ERROR(comm.all_gather(text.data(), all.data(), counts, DType::kUInt8));
  std::map<std::string, std::pair<DType, Shape>> merged;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t nl = all.find('\n', pos);
    std::string line = all.substr(pos, nl - pos);
    pos = nl + 1;
    std::vector<std::string> f;
    size_t a = 0;
    while (true) {
      size_t tab = line.find('\t', a);
      f.push_back(line.substr(a, tab == std::string::npos ? std::string::npos : tab - a));
      if (tab == std::string::npos) break;
      a = tab + 1;
    }
    Shape shape;
    for (size_t i = 2; i < f.size(); ++i) shape.push_back(std::stoll(f[i]));
    merged[f[0]] = {static_cast<DType>(std::stoi(f[1])), shape};
  }
  std::vector<std::tuple<std::string, DType, Shape>> out;
  for (const auto& [name, ds] : merged) out.emplace_back(name, ds.first, ds.second);
  return out;
}

}  // namespace

Expected<Tensor> Trainer::fetch_current(ValueId v) const {
  auto split = tg_->split_masters.find(v);
  // Until the prologue has run (first step, after a checkpoint load) the parameter's own buffer is current.
  if (split == tg_->split_masters.end() || param_copies_stale_) return executor_->fetch(v);
  GV_ASSIGN_OR_RETURN(Tensor hi, executor_->fetch(split->second.first));
  GV_ASSIGN_OR_RETURN(Tensor lo, executor_->fetch(split->second.second));
  Tensor out(DType::kFloat32, hi.shape());
  const uint16_t* h = static_cast<const uint16_t*>(hi.data());
  const uint16_t* l = static_cast<const uint16_t*>(lo.data());
  float* o = static_cast<float*>(out.data());
  for (int64_t i = 0; i < out.numel(); ++i) {
    const uint32_t bits = join_float32(h[i], l[i]);
    std::memcpy(o + i, &bits, 4);
  }
  return out;
}

Status Trainer::materialize_parameters() {
  if (param_copies_stale_) return Status::ok();  // the buffers are what the next prologue splits
  // The halves live inside the parameters' buffers (Value::stored_in): join every one before writing any.
  std::vector<std::pair<ValueId, Tensor>> joined;
  for (const auto& [p, halves] : tg_->split_masters) {
    GV_ASSIGN_OR_RETURN(Tensor t, fetch_current(p));
    joined.emplace_back(p, std::move(t));
  }
  for (const auto& [p, t] : joined) GV_RETURN_IF_ERROR(executor_->set_value(p, t));
  param_copies_stale_ = true;  // the halves are overwritten: split again before the next step
  return Status::ok();
}

Expected<TensorMap> Trainer::assemble(const std::vector<std::pair<ValueId, TensorShard>>& pieces) const {
  TensorMap out;
  if (!parallel()) {
    for (const auto& [v, shard] : pieces) {
      GV_ASSIGN_OR_RETURN(Tensor t, fetch_current(v));
      out[shard.global_name] = t;
    }
    return out;
  }
  // Every rank writes the pieces it owns into a zero tensor; a sum over the world gives the whole tensor.
  std::vector<std::tuple<std::string, DType, Shape>> mine;
  std::map<std::string, std::vector<std::pair<ValueId, TensorShard>>> by_name;
  for (const auto& [v, shard] : pieces) {
    mine.emplace_back(shard.global_name, tg_->graph.value(v).dtype, shard.global_shape);
    by_name[shard.global_name].push_back({v, shard});
  }
  GV_ASSIGN_OR_RETURN(auto all, agree_on_tensors(*config_.comm, mine));
  for (const auto& [name, dtype, shape] : all) {
    Tensor whole(dtype, shape);
    for (const auto& [v, shard] : by_name[name]) {
      if (!shard.owner) continue;
      GV_ASSIGN_OR_RETURN(Tensor piece, fetch_current(v));
      if (shard.flat_end >= 0 && piece.numel() != shard.flat_end - shard.flat_begin) {
        // A whole value of which only the flat range is current (TrainingGraph::sharded_masters): that range.
        Tensor range(piece.dtype(), {shard.flat_end - shard.flat_begin});
        const size_t elem = dtype_size(piece.dtype());
        std::memcpy(range.data(), static_cast<const char*>(piece.data()) + shard.flat_begin * elem, range.nbytes());
        piece = std::move(range);
      }
      GV_RETURN_IF_ERROR(place_piece(whole, piece, shard).with_context("assembling '" + name + "'"));
    }
    GV_RETURN_IF_ERROR(config_.comm->all_reduce(whole.data(), static_cast<size_t>(whole.numel()), dtype,
                                                ReduceOp::kSum).with_context("assembling '" + name + "'"));
    out[name] = std::move(whole);
  }
  return out;
}

TensorShard Trainer::current_shard_of(ValueId param) const {
  return tg_->sharded_masters.count(param) ? state_shard_of(param) : shard_of(param);
}

Expected<TensorMap> Trainer::parameters() const {
  std::vector<std::pair<ValueId, TensorShard>> pieces;
  for (ValueId p : tg_->graph.parameters()) pieces.push_back({p, current_shard_of(p)});
  return assemble(pieces);
}

Status Trainer::save_checkpoint(const std::string& path, std::map<std::string, std::string> metadata) const {
  const auto kind = config_.graph.optimizer.kind;
  std::vector<std::pair<ValueId, TensorShard>> pieces;
  for (ValueId p : tg_->graph.parameters()) pieces.push_back({p, current_shard_of(p)});
  for (const auto& [p, states] : tg_->optimizer_state) {
    for (size_t i = 0; i < states.size(); ++i) {
      TensorShard s = state_shard_of(p);
      s.global_name = state_key(s.global_name, i, kind);
      pieces.push_back({states[i], s});
    }
  }
  GV_ASSIGN_OR_RETURN(TensorMap tensors, assemble(pieces));
  if (parallel() && config_.comm->rank() != 0) return Status::ok();
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
  // Each rank cuts its pieces out of the whole tensors, whatever plan wrote them.
  auto restore = [&](ValueId v, const TensorShard& shard) -> Status {
    auto it = tensors.find(shard.global_name);
    if (it == tensors.end()) return not_found(path + ": checkpoint has no tensor '" + shard.global_name + "'");
    if (it->second.shape() != shard.global_shape) {
      return invalid_argument(path + ": tensor '" + shard.global_name + "' has shape " +
                              shape_str(it->second.shape()) + ", this model needs " + shape_str(shard.global_shape));
    }
    GV_ASSIGN_OR_RETURN(Tensor piece, extract_piece(it->second, shard));
    return executor_->set_value(v, piece).with_context(path);
  };
  for (ValueId p : g.parameters()) GV_RETURN_IF_ERROR(restore(p, shard_of(p)));
  parameters_changed();
  for (const auto& [p, states] : tg_->optimizer_state) {
    for (size_t i = 0; i < states.size(); ++i) {
      TensorShard s = state_shard_of(p);
      s.global_name = state_key(s.global_name, i, kind);
      GV_RETURN_IF_ERROR(restore(states[i], s));
    }
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
