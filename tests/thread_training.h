// Data-parallel training of the gpt2 fixture on thread communicators (n ranks in one process, each on its own thread,
// CPU backend): the tests of gradient synchronisation options compare such runs with each other.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "importer/onnx_importer.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"
#include "runtime/training_graph.h"
#include "tests/hf_fixtures.h"

namespace gv::testing {

// The gpt2 fixture imported for `batch` rows of 32 tokens.
inline Expected<Graph> gpt2_fixture_graph(int64_t batch) {
  ImportOptions io;
  io.batch = batch;
  io.seq = 32;
  GV_ASSIGN_OR_RETURN(ImportedModel im, import_onnx(fixture_dir("gpt2") + "/model.onnx", io));
  return std::move(im.graph);
}

// Every parameter's gradient summed over `dp` (plain data parallelism, as Trainer sets it up), from `rank`'s view,
// with the all-reduces overlapped with the backward pass.
inline TrainingGraphOptions ddp_options(const Graph& g, const std::vector<int>& dp, int rank) {
  TrainingGraphOptions o;
  for (ValueId p : g.parameters()) o.param_sync[g.value(p).name].dp_group = dp;
  o.rank = rank;
  o.loss_replicas = static_cast<int>(dp.size());
  o.overlap_grad_sync = true;
  return o;
}

// Indices of the nodes running `op`, in graph order.
inline std::vector<size_t> nodes_of(const Graph& g, const std::string& op) {
  std::vector<size_t> out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (g.nodes[i].op_type == op) out.push_back(i);
  }
  return out;
}

struct RankRun {
  std::vector<double> losses, norms;
  TensorMap weights;
};

struct ThreadTraining {
  int ranks = 2;
  int steps = 3;
  int rows = 4;  // rows per micro-batch over all ranks (each rank: rows / ranks)
  int micro_batches = 1;
  // Adjusts each rank's config (cfg.comm and cfg.lr = 1e-3 are set); may check the training graph through `check`.
  std::function<void(TrainerConfig&)> configure;
  std::function<Status(const TrainingGraph&)> check;
  // Runs on each rank after the last step (every rank calls it: it may call collective Trainer methods).
  std::function<Status(Trainer&)> after;
};

// Rank r of a run: step s reads rows [(s * micro_batches + mb) * rows + r * rows / ranks, ...) of the fixture's samples
// (wrapping), so every rank count sees the same data per step.
inline Expected<RankRun> train_gpt2_rank(Graph g, const TensorMap& samples, Communicator* comm,
                                         const ThreadTraining& t) {
  const int n = comm->size(), r = comm->rank();
  auto backend = make_cpu_backend();
  TrainerConfig cfg;
  cfg.comm = comm;
  cfg.lr = 1e-3;
  cfg.graph.grad_accum_steps = t.micro_batches;
  if (t.configure) t.configure(cfg);
  GV_ASSIGN_OR_RETURN(auto trainer, Trainer::create(std::move(g), cfg, *backend));
  if (t.check) GV_RETURN_IF_ERROR(t.check(trainer->training_graph()));
  RankRun out;
  const int64_t rows = t.rows / n, total = samples.at("input_ids").shape()[0], seq = 32;
  for (int s = 0; s < t.steps; ++s) {
    std::vector<TensorMap> micro;
    for (int mb = 0; mb < t.micro_batches; ++mb) {
      TensorMap batch;
      for (const char* name : {"input_ids", "labels"}) {
        const Tensor& all = samples.at(name);
        Tensor x(DType::kInt64, {rows, seq});
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = ((s * t.micro_batches + mb) * t.rows + r * rows + i) % total;
          std::memcpy(x.data_as<int64_t>() + i * seq, all.data_as<int64_t>() + row * seq, seq * sizeof(int64_t));
        }
        batch[name] = x;
      }
      micro.push_back(std::move(batch));
    }
    GV_ASSIGN_OR_RETURN(StepMetrics m, trainer->step(micro));
    out.losses.push_back(m.loss);
    out.norms.push_back(m.grad_norm);
  }
  GV_ASSIGN_OR_RETURN(out.weights, trainer->parameters());
  if (t.after) GV_RETURN_IF_ERROR(t.after(*trainer));
  return out;
}

// All ranks of a run, in rank order.
inline std::vector<Expected<RankRun>> train_gpt2_threads(const ThreadTraining& t) {
  const int n = t.ranks;
  auto samples = read_safetensors(fixture_dir("gpt2") + "/samples.safetensors");
  std::vector<Expected<RankRun>> results(n, Expected<RankRun>(internal_error("not run")));
  if (!samples) {
    results[0] = samples.status();
    return results;
  }
  std::vector<Graph> graphs;
  for (int r = 0; r < n; ++r) {
    auto g = gpt2_fixture_graph(t.rows / n);
    if (!g) {
      results[0] = g.status();
      return results;
    }
    graphs.push_back(std::move(*g));
  }
  auto comms = make_thread_communicators(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] { results[r] = train_gpt2_rank(std::move(graphs[r]), *samples, comms[r].get(), t); });
  }
  for (auto& th : threads) th.join();
  return results;
}

// Same names, shapes and bytes.
inline void expect_identical(const TensorMap& a, const TensorMap& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    const Tensor& u = b.at(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    ASSERT_EQ(t.nbytes(), u.nbytes()) << name;
    EXPECT_EQ(std::memcmp(t.data(), u.data(), t.nbytes()), 0) << name << " differs";
  }
}

}  // namespace gv::testing
