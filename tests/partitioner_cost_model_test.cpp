// Galvatron v2.4.0's cost-model formulas against values worked out by hand (galvatron.md section b), the knapsack DP
// against Galvatron's plain recurrence and brute-force enumeration, and bad inputs.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "partitioner/cost_model.h"
#include "partitioner/dp_core.h"
#include "partitioner/galvatron_files.h"
#include "partitioner/search.h"

namespace gv::partitioner {
namespace {

Strategy S(int pp, int tp, int dp, int tpc, int fsdp, int cpt = -1) {
  Strategy s;
  s.pp = pp;
  s.tp = tp;
  s.dp = dp;
  s.tp_consec = tpc;
  s.fsdp = fsdp;
  s.cpt = cpt;
  return s;
}

struct Fixture {
  ModelProfile m;
  HardwareProfile hw;
  CostInputs ci;
  Fixture() {
    LayerTypeProfile l;
    l.hidden_size = 1024;
    l.seq_length = 1024;
    l.layer_num = 4;
    l.parameter_size_mb = 100;
    l.act_per_sample_mb = {{1, 50}, {2, 25}, {4, 12.5}, {8, 6.25}};
    l.act_checkpoint_mb = 10;
    l.has_checkpoint = true;
    l.forward = TimeFn{false, 2.0, 0, 0};
    m.layer_types = {l};
    m.other_forward = TimeFn{false, 3.0, 0, 0};
    for (int k : {1, 2, 4, 8}) {
      m.pp_off.model_states_mb[k] = 800.0 / k;
      m.pp_off.activation_mb[k] = 40.0 / k;
      m.pp_on_first.model_states_mb[k] = 400.0 / k;
      m.pp_on_first.activation_mb[k] = 10.0 / k;
      m.pp_on_last.model_states_mb[k] = 400.0 / k;
      m.pp_on_last.activation_mb[k] = 30.0 / k;
    }
    hw.world_size = 8;
    hw.allreduce_coe = {{"8", 0.01}, {"4_0", 1.0 / 90}, {"4_1", 0.0125}, {"2_0", 1.0 / 60}, {"2_1", 0.02}, {"1", 0}};
    hw.p2p_coe = {{2, 0.02}, {4, 0.025}, {8, 0.03}};
    hw.overlap_coe = 1.25;
    ci.model = &m;
    ci.hw = &hw;
    ci.opt.mixed_precision = true;
  }
};

TEST(PartitionerCostModel, ZeroRatios) {
  EXPECT_NEAR(zero2_ratio(8, 1, true, true), 0.237, 1e-12);
  EXPECT_NEAR(zero3_ratio(8, 1, true, true), 0.128, 1e-12);
  EXPECT_NEAR(zero3_ratio(8, 4, true, true), 0.237, 1e-12);
  EXPECT_NEAR(zero2_ratio(4, 4, true, true), 0.43975, 1e-12);
  EXPECT_NEAR(zero2_ratio(8, 4, false, true), 0.237 * 1.25, 1e-12);
  EXPECT_NEAR(zero3_ratio(8, 4, false, true), 0.128 * 1.25, 1e-12);
  EXPECT_NEAR(zero2_ratio(8, 1, true, false), 0.75 * 0.128 + 0.25, 1e-12);
}

TEST(PartitionerCostModel, ChunkLikeTorch) {
  EXPECT_EQ(chunk_like_torch(6, 4), (std::vector<int>{2, 2, 2}));
  EXPECT_EQ(chunk_like_torch(7, 3), (std::vector<int>{3, 3, 1}));
  EXPECT_EQ(real_chunks(6, 4), 3);
  EXPECT_EQ(real_chunks(6, 1), 1);
}

TEST(PartitionerCostModel, LayerMemoryByHand) {
  Fixture f;
  // dp 8, bsz 16, mbsz 1: chunks = min(ceil(2/1), 16/8) = 2; 1F1B stage 0 of pp 1 holds 1 of the micro-batches [1, 1].
  LayerMemory m = layer_memory(f.ci, 0, S(1, 1, 8, -1, 0), 16, 1, 1, 1, 0, false, false);
  EXPECT_EQ(m.chunks, 2);
  EXPECT_DOUBLE_EQ(m.model_states, 400);
  EXPECT_DOUBLE_EQ(m.activation, 50);
  EXPECT_DOUBLE_EQ(m.enc_total, 450);
  // ZeRO-3 with 2 chunks and async reduce: 7/8 (1/8 + 0.003) + 1/8 = 0.237.
  m = layer_memory(f.ci, 0, S(1, 1, 8, -1, 1), 16, 1, 1, 1, 0, false, false);
  EXPECT_NEAR(m.model_states, 400 * 0.237, 1e-9);
  // Checkpointed tp 2 under sequence parallelism: 10 MB/sample x 2 samples / tp 2.
  f.ci.opt.sequence_parallel = true;
  m = layer_memory(f.ci, 0, S(1, 2, 4, 1, 0, 1), 16, 1, 1, 1, 0, false, false);
  EXPECT_DOUBLE_EQ(m.model_states, 200);
  EXPECT_DOUBLE_EQ(m.activation, 10);
  // Other memory, pp 1, vtp 1: 800 MB of states + 40 MB x (16 / 8 / 2 chunks) + 1024 MB context.
  m = layer_memory(f.ci, 0, S(1, 1, 8, -1, 0), 16, 1, 1, 1, 0, false, false);
  ASSERT_EQ(m.other.count(1), 1u);
  EXPECT_DOUBLE_EQ(m.other[1][0], 800 + 40 * 1 + 1024);
}

// Activations in flight under a pipeline of 2 stages, dp 4, batch 16 in micro-batches of 1 (4 chunks of 1 sample):
// 1F1B holds pp - stage micro-batches (Galvatron's rule), GPipe all four on every stage, as this runtime's schedule
// does (partitioner/rank_program.cpp; Galvatron v2.4.0 counted one, so the search under-predicted GPipe memory).
TEST(PartitionerCostModel, PipelineActivationsInFlight) {
  Fixture f;
  f.ci.opt.pipeline_type = PipelineType::kPipedreamFlush;
  LayerMemory first = layer_memory(f.ci, 0, S(2, 1, 4, -1, 0), 16, 1, 1, 1, 0, false, false);
  LayerMemory last = layer_memory(f.ci, 0, S(2, 1, 4, -1, 0), 16, 1, 1, 1, 1, false, false);
  EXPECT_EQ(first.chunks, 4);
  EXPECT_DOUBLE_EQ(first.activation, 50 * 2);
  EXPECT_DOUBLE_EQ(last.activation, 50 * 1);
  // Other memory (vtp 1): one sample per micro-batch; the first stage holds pp of them, the last one.
  EXPECT_DOUBLE_EQ(first.other[1][0], 400 + 10 * 2 + 1024);
  EXPECT_DOUBLE_EQ(first.other[1][1], 400 + 30 * 1 + 1024);
  f.ci.opt.pipeline_type = PipelineType::kGpipe;
  for (int stage : {0, 1}) {
    LayerMemory g = layer_memory(f.ci, 0, S(2, 1, 4, -1, 0), 16, 1, 1, 1, stage, false, false);
    EXPECT_DOUBLE_EQ(g.activation, 50 * 4) << "stage " << stage;
    EXPECT_DOUBLE_EQ(g.other[1][0], 400 + 10 * 4 + 1024);
    EXPECT_DOUBLE_EQ(g.other[1][1], 400 + 30 * 4 + 1024);
  }
}

TEST(PartitionerCostModel, LayerTimeByHand) {
  Fixture f;
  // dp 8: fct 2 ms x 1 x 4 = 8, bct 16; grad 2*7/8*100*4/2 = 350 MB at 0.01 ms/MB, overlapped under 1.25x slowdown:
  // 350*0.0125 = 4.375 < 16*1.25 -> 4.375 + (16 - 4.375/1.25) = 16.875; (8 + 16.875) ms / 1000 / 4 layers.
  EXPECT_NEAR(layer_time(f.ci, 0, S(1, 1, 8, -1, 0), 8, false).total_s, 24.875 / 4000, 1e-15);
  // ZeRO-3 adds the forward all-gather, half the gradient message: 175 MB x 0.01.
  EXPECT_NEAR(layer_time(f.ci, 0, S(1, 1, 8, -1, 1), 8, false).total_s, 26.625 / 4000, 1e-15);
  // tp 8: 2*7/8 * (8*1024*1024*16 B = 128 MB) * 4 layers / 2 = 448 MB at coe['8'] -> 4.48 ms; 8 + 16 + 4.48.
  EXPECT_NEAR(layer_time(f.ci, 0, S(1, 8, 1, -1, -1), 8, false).total_s, 28.48 / 4000, 1e-15);
  // pp 2, dp 4: coe '4_1'; 32.9375 + 16 ms fct; p2p 2*2*2*1024*1024*4 B = 32 MB / 2 at 0.02 ms/MB = 0.32.
  EXPECT_NEAR(layer_time(f.ci, 0, S(2, 1, 4, -1, 0), 8, false).total_s, 49.2575 / 4000, 1e-15);
  // no_comm zeroes the gradient message: 8 + 16.
  EXPECT_NEAR(layer_time(f.ci, 0, S(1, 1, 8, -1, 0), 8, true).total_s, 24.0 / 4000, 1e-15);
  // dp 2 with tp 4: half the backward overlaps the gradient sync.
  LayerTime t = layer_time(f.ci, 0, S(1, 4, 2, 1, 0), 8, false);
  // bsz 4, fct 2*4/4*4 = 8, bct 16; grad 2*1/2*25*4/2 = 50 MB at '2_0' (1/60); 50/60*1.25 < 8*1.25.
  const double dpm = 50, dc = 1.0 / 60, dco = dc * 1.25;
  const double ov = dpm * dco + (8 - dpm * dco / 1.25);
  const double tpm = 2.0 * 3 / 4 * (4.0 * 1024 * 1024 * 16 / 1024 / 1024) * 4 / 2;
  EXPECT_NEAR(t.total_s, (8 + 8 + ov + tpm * 0.0125) / 4000, 1e-15);
}

TEST(PartitionerCostModel, PipelineFormulaByHand) {
  Fixture f;
  std::vector<Strategy> plan(4, S(1, 1, 8, -1, 0));
  // bsz 16 in 2 micro-batches of 8: C = 4 x 0.006, F = 4 x 0.00621875; T = 2C + (F - C).
  PipelineCost p = pipeline_cost(f.ci, plan, {4}, {2}, 16, 1, {0.0});
  EXPECT_EQ(p.micro_batches, 2);
  EXPECT_NEAR(p.total_s, 2 * 0.024 + 0.000875, 1e-15);
  // Two stages, 4 micro-batches: max(sum C + C_last*(m-1), bubble form) + un-overlapped reduce.
  std::vector<Strategy> plan2(4, S(2, 1, 4, -1, 0));
  PipelineCost q = pipeline_cost(f.ci, plan2, {2, 2}, {4}, 16, 1, {0.001, 0.002});
  const double c = layer_time(f.ci, 0, canonical_strategy(plan2[0]), 4, true).total_s;
  const double fl = layer_time(f.ci, 0, canonical_strategy(plan2[0]), 4, false).total_s;
  const double c0 = 2 * c + 0.001, c1 = 2 * c + 0.002;
  double t = std::max(c0 + c1 + c1 * 3, std::max(1 * c0 / 3, c1 / 3) + std::max(1 * c0 * 2 / 3, c1 * 2 / 3) + c0 * 3);
  double red = std::max(2 * fl - c0, 2 * fl - c0 - c1);
  EXPECT_NEAR(q.total_s, t + std::max(0.0, red), 1e-14);
}

// galvatron's extension: optimizer_ms_per_param_mb adds the optimizer step over the parameters a GPU updates to the
// time with the gradient sync (not to the compute-only time): param / tp under DDP, further / dp under ZeRO-3 (and
// ZeRO-2 with --default-dp-type zero2). 0 leaves Galvatron's formulas untouched.
TEST(PartitionerCostModel, OptimizerStepOnlyWithTheExtensionKey) {
  Fixture f;
  const Strategy ddp = S(1, 2, 4, 1, 0), zero3 = S(1, 2, 4, 1, 1);
  const LayerTime base = layer_time(f.ci, 0, ddp, 8, false);
  const LayerTime base3 = layer_time(f.ci, 0, zero3, 8, false);
  EXPECT_EQ(base.optimizer_time, 0.0);
  f.m.optimizer_ms_per_param_mb = 0.01;
  const LayerTime t = layer_time(f.ci, 0, ddp, 8, false);
  EXPECT_NEAR(t.optimizer_time, 0.01 * 100 / 2 * 4, 1e-12);  // 100 MB per layer / tp 2, x 4 layers
  EXPECT_NEAR(t.total_s, base.total_s + 0.001 * t.optimizer_time / 4, 1e-15);
  const LayerTime t3 = layer_time(f.ci, 0, zero3, 8, false);
  EXPECT_NEAR(t3.optimizer_time, 0.01 * 100 / 2 / 4 * 4, 1e-12);
  EXPECT_NEAR(t3.total_s, base3.total_s + 0.001 * t3.optimizer_time / 4, 1e-15);
  f.ci.opt.use_zero2_for_dp = true;
  const LayerTime z2 = layer_time(f.ci, 0, ddp, 8, false);
  EXPECT_NEAR(z2.optimizer_time, t3.optimizer_time, 1e-12);
  // This runtime's ZeRO-2: half the DP message (the reduce-scatter) overlaps the backward pass, the other half (the
  // parameter gather) comes on top of the update.
  EXPECT_NEAR(z2.dp_message_mb, t.dp_message_mb / 2, 1e-9);
  EXPECT_NEAR(z2.gather_time, t.dp_message_mb / 2 * t.dc, 1e-9);
  EXPECT_GT(z2.gather_time, z2.optimizer_time);
  // ZeRO-2 in bf16 (zero2_gathers_in_forward): the gather overlaps the forward pass (Galvatron's overlap formula, as
  // the DP message with the backward pass) and adds nothing after the update.
  f.ci.opt.zero2_gathers_in_forward = true;
  const LayerTime zf = layer_time(f.ci, 0, ddp, 8, false);
  f.ci.opt.zero2_gathers_in_forward = false;
  const double gm = t.dp_message_mb / 2, dc_ov = z2.dc * f.hw.overlap_coe, fo = z2.fct * f.hw.overlap_coe;
  const double fwd =
      gm * dc_ov > fo ? fo + (gm - fo / dc_ov) * z2.dc : gm * dc_ov + (z2.fct - gm * dc_ov / f.hw.overlap_coe);
  EXPECT_NEAR(zf.gather_time, fwd - z2.fct, 1e-9);
  EXPECT_GT(zf.gather_time, 0.0);
  EXPECT_LT(zf.gather_time, z2.gather_time);
  EXPECT_NEAR(zf.total_s, z2.total_s + 0.001 * (zf.gather_time - z2.gather_time) / 4, 1e-15);
  // bf16 gradient messages without mixed precision: DDP and ZeRO-2 messages halve, ZeRO-3's do not.
  {
    f.ci.opt.mixed_precision = false;
    const LayerTime z2_f32 = layer_time(f.ci, 0, ddp, 8, false), z3_f32 = layer_time(f.ci, 0, zero3, 8, false);
    f.ci.opt.bf16_grad_messages = true;
    const LayerTime z2_b16 = layer_time(f.ci, 0, ddp, 8, false), z3_b16 = layer_time(f.ci, 0, zero3, 8, false);
    EXPECT_NEAR(z2_b16.dp_message_mb, z2_f32.dp_message_mb / 2, 1e-9);
    EXPECT_NEAR(z2_b16.gather_time, z2_f32.gather_time / 2, 1e-9);
    EXPECT_GT(z3_b16.fsdp_time, 0.0);
    EXPECT_NEAR(z3_b16.fsdp_time, z3_f32.fsdp_time, 1e-12);
    EXPECT_NEAR(z3_b16.dp_message_mb, z3_f32.dp_message_mb, 1e-12);
    f.ci.opt.bf16_grad_messages = false;
    f.ci.opt.mixed_precision = true;
  }
  Strategy ddp_nc = ddp;
  f.ci.opt.use_zero2_for_dp = false;
  const LayerTime plain = layer_time(f.ci, 0, ddp_nc, 8, false);
  f.ci.opt.use_zero2_for_dp = true;
  // Same compute; the gather and the (sharded) update added where DDP has its whole update.
  EXPECT_NEAR(z2.fct + z2.bct, plain.fct + plain.bct, 1e-12);
  // Not in the compute-only time, and once per iteration in the pipeline formula (through the reduce term).
  EXPECT_EQ(layer_time(f.ci, 0, ddp, 8, true).optimizer_time, 0.0);
  f.ci.opt.use_zero2_for_dp = false;
  std::vector<Strategy> plan(4, ddp);
  const PipelineCost with = pipeline_cost(f.ci, plan, {4}, {2}, 16, 1, {0.0}, {0.003});
  f.m.optimizer_ms_per_param_mb = 0;
  const PipelineCost without = pipeline_cost(f.ci, plan, {4}, {2}, 16, 1, {0.0});
  EXPECT_NEAR(with.total_s - without.total_s, 0.001 * 0.01 * 100 / 2 * 4 + 0.003, 1e-12);
  // The embedding / head: ds = model_states / 4 MB of parameters at vocab TP k, in with_sync and on its own.
  f.m.optimizer_ms_per_param_mb = 0.01;
  OtherTime o = other_time(f.ci, 1, 1, 8, false, false, 8, 8);
  EXPECT_NEAR(o.optimizer[8][0], 0.001 * 0.01 * (800.0 / 8 / 4), 1e-15);
  const double tp = 2 * (7.0 / 8 * 1 * 2) * 0.01;
  EXPECT_NEAR(o.with_sync[8][0], 0.001 * (3.0 / 8 + 6.0 / 8 + tp) + o.optimizer[8][0], 1e-15);
}

TEST(PartitionerCostModel, OtherTimeByHand) {
  Fixture f;
  // pp 1, vtp 8 (dp 1): no DP sync; TP 2x (7/8 x 1 x 1024 x 1024 / 1 MB x 2 B) at coe['8']; compute 3 ms x mbsz 1 /
  // min_tp 8 forward, x2 backward, the overlap factor applied and removed again.
  OtherTime o = other_time(f.ci, 1, 1, 8, false, false, 8, 8);
  ASSERT_EQ(o.with_sync.count(8), 1u);
  const double tp = 2 * (7.0 / 8 * 1 * 2) * 0.01;
  EXPECT_NEAR(o.with_sync[8][0], 0.001 * (3.0 / 8 + 6.0 / 8 + tp), 1e-15);
}

TEST(PartitionerDp, MatchesReferenceAndBruteForce) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    DpProblem p;
    p.layers = 1 + rng() % 4;
    p.strategies = 1 + rng() % 4;
    p.budget_mb = 5 + rng() % 40;
    const int L = p.layers, Sn = p.strategies;
    for (int i = 0; i < L * Sn; ++i) {
      p.weight.push_back(1 + rng() % 12);
      p.intra.push_back((rng() % 100) / 10.0);
    }
    for (int i = 0; i < L * Sn * Sn; ++i) p.inter.push_back(i < Sn * Sn ? 0.0 : (rng() % 30) / 10.0);
    std::vector<DpQuery> qs = {{0, 0.5}, {static_cast<int>(rng() % 10), 1.0}, {p.budget_mb + 1, 0}};
    auto fast = solve_knapsack(p, qs), ref = solve_knapsack_reference(p, qs);
    for (size_t q = 0; q < qs.size(); ++q) {
      ASSERT_EQ(fast[q].remaining_mb, ref[q].remaining_mb) << trial;
      ASSERT_EQ(fast[q].plan, ref[q].plan) << trial;
      if (ref[q].remaining_mb >= 0) {
        ASSERT_EQ(fast[q].cost, ref[q].cost);
      }
      // brute force
      double best = std::numeric_limits<double>::infinity();
      std::vector<int> idx(L, 0);
      while (true) {
        int w = 0;
        double c = 0;
        for (int i = 0; i < L; ++i) {
          w += p.weight[i * Sn + idx[i]];
          c += p.intra[i * Sn + idx[i]];
          if (i > 0) c += p.inter[(i * Sn + idx[i - 1]) * Sn + idx[i]];
        }
        if (w <= p.budget_mb - qs[q].other_mem_mb) best = std::min(best, c);
        int k = 0;
        while (k < L && ++idx[k] == Sn) idx[k++] = 0;
        if (k == L) break;
      }
      if (std::isinf(best)) {
        EXPECT_EQ(fast[q].remaining_mb, -1);
      } else {
        EXPECT_NEAR(fast[q].layers_cost, best, 1e-9) << trial;
      }
    }
  }
}

TEST(PartitionerInputs, MissingAndMalformedFiles) {
  ModelFileOptions mo;
  mo.layers = {{4096, 32, 2048}};
  auto r = load_galvatron_model_profile("/nonexistent/computation.json", "/nonexistent/memory.json", mo);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("/nonexistent/computation.json"), std::string::npos);
  EXPECT_NE(r.status().message().find("--"), std::string::npos);  // names the flag to use
  const std::string bad = ::testing::TempDir() + "/gv_partitioner_bad.json";
  {
    std::ofstream o(bad);
    o << "{\"layertype_0_bsz1_seq2048\": 4.0,";
  }
  r = load_galvatron_model_profile(bad, bad, mo);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find(bad), std::string::npos);
  HardwareFiles hf{bad, bad, bad, bad};
  auto h = load_galvatron_hardware_profile(hf, 8);
  ASSERT_FALSE(h.has_value());
  EXPECT_NE(h.status().message().find(bad), std::string::npos);
  std::remove(bad.c_str());
}

// galvatron's extension keys in a computation profile: tp{k}_layertype_0_bsz{b}_seq{S} become LayerTypeProfile::
// forward_tp[k] (a fit over the batch in batch mode, the first value in static mode), and layer_time then takes the
// layer's compute at TP k from them instead of Galvatron's TP 1 time at batch / k. A file without them reads as before.
TEST(PartitionerInputs, PerTensorParallelDegreeTimes) {
  const std::string dir = ::testing::TempDir();
  const std::string comp = dir + "/gv_tp_comp.json", plain = dir + "/gv_tp_plain.json", mem = dir + "/gv_tp_mem.json";
  {
    std::ofstream o(comp), q(plain);
    o.precision(17);
    o << "{";
    q << "{";
    for (int b = 1; b <= 8; ++b) {
      const std::string sep = b == 1 ? "" : ", ";
      const std::string k = "_bsz" + std::to_string(b) + "_seq1024";
      // TP 1: 2 ms per sample; TP 2: a constant 0.5 ms plus 1.5 ms per sample of the group's batch.
      o << sep << "\"layertype_0" << k << "\": 2.0, \"layertype_other" << k << "\": 1.0, \"tp2_layertype_0" << k
        << "\": " << (0.5 + 1.5 * b) / b;
      q << sep << "\"layertype_0" << k << "\": 2.0, \"layertype_other" << k << "\": 1.0";
    }
    o << ", \"optimizer_ms_per_param_mb\": 0.002}";
    q << "}";
    std::ofstream m(mem);
    m << R"({"layertype_0": {"1024": {"parameter_size": 100.0, "tp_activation_per_bsz_dict": {"1": 50.0, "2": 25.0,)"
      << R"( "4": 12.5, "8": 6.25, "checkpoint": 10.0}}}, )";
    for (const char* sec : {"other_memory_pp_off", "other_memory_pp_on_first", "other_memory_pp_on_last"}) {
      m << "\"" << sec << R"(": {"1024": {"model_states": {"1": 800.0, "2": 400.0, "4": 200.0, "8": 100.0},)"
        << R"( "activation": {"1": 40.0, "2": 20.0, "4": 10.0, "8": 5.0}}})"
        << (std::string(sec) == "other_memory_pp_on_last" ? "" : ", ");
    }
    m << "}";
  }
  ModelFileOptions mo;
  mo.layers = {{1024, 4, 1024}};
  mo.time_mode = ProfileMode::kBatch;
  auto with = load_galvatron_model_profile(comp, mem, mo);
  ASSERT_TRUE(with.has_value()) << with.status().message();
  auto without = load_galvatron_model_profile(plain, mem, mo);
  ASSERT_TRUE(without.has_value()) << without.status().message();
  ASSERT_EQ(with->layer_types[0].forward_tp.count(2), 1u);
  EXPECT_TRUE(without->layer_types[0].forward_tp.empty());
  EXPECT_EQ(without->optimizer_ms_per_param_mb, 0.0);
  EXPECT_DOUBLE_EQ(with->optimizer_ms_per_param_mb, 0.002);
  const TimeFn& f = with->layer_types[0].forward_tp.at(2);
  EXPECT_NEAR(f.at(6), 0.5 + 1.5 * 6, 1e-9);
  HardwareProfile hw;
  hw.world_size = 4;
  hw.allreduce_coe = {{"4", 0.01}, {"2_0", 0.01}, {"2_1", 0.01}, {"1", 0}};
  hw.overlap_coe = 1.0;
  CostInputs ci;
  ci.hw = &hw;
  const Strategy tp2 = S(1, 2, 2, 1, 0);
  ci.model = &*with;
  const LayerTime a = layer_time(ci, 0, tp2, 8, false);
  ci.model = &*without;
  const LayerTime b = layer_time(ci, 0, tp2, 8, false);
  // Group batch 8 / dp 2 = 4 samples per TP group: 0.5 + 1.5 * 4 ms per layer (with) vs 2 ms x 4 / 2 (without).
  EXPECT_NEAR(a.fct, (0.5 + 1.5 * 4) * 4, 1e-9);
  EXPECT_NEAR(b.fct, 2.0 * 4 / 2 * 4, 1e-9);
  // TP 1 layers (and TP degrees without keys) keep Galvatron's formula.
  ci.model = &*with;
  EXPECT_NEAR(layer_time(ci, 0, S(1, 1, 4, -1, 0), 8, false).fct, 2.0 * 2 * 4, 1e-9);
  EXPECT_NEAR(layer_time(ci, 0, S(1, 4, 1, -1, 0), 8, false).fct, 2.0 * 8 / 4 * 4, 1e-9);
  for (const std::string& p : {comp, plain, mem}) std::remove(p.c_str());
}

TEST(PartitionerInputs, ImpossibleBudgetSaysWhatIsNeeded) {
  const std::string P = std::string(GV_SOURCE_DIR) + "/../shared/galvatron-profiles/";
  ModelFileOptions mo;
  mo.layers = {{4096, 32, 2048}};
  mo.sequence_parallel = true;
  auto m = load_galvatron_model_profile(P + "llama2-7b/computation_profiling_bf16_llama2-7b_all.json",
                                        P + "llama2-7b/memory_profiling_bf16_llama2-7b_all.json", mo);
  ASSERT_TRUE(m.has_value()) << m.status().message();
  HardwareFiles hf{P + "hardware/allreduce_bandwidth_1nodes_8gpus_per_node.json",
                   P + "hardware/p2p_bandwidth_1nodes_8gpus_per_node.json", P + "hardware/overlap_coefficient.json",
                   P + "hardware/sp_time_1nodes_8gpus_per_node.json"};
  auto h = load_galvatron_hardware_profile(hf, 8);
  ASSERT_TRUE(h.has_value()) << h.status().message();
  SearchOptions o;
  o.memory_constraint_gb = 4;
  o.settle_bsz = 8;
  o.sequence_parallel = true;
  o.default_dp_type = "zero2";
  o.pipeline_type = "pipedream_flush";
  auto r = search(*m, *h, o);
  ASSERT_TRUE(r.has_value()) << r.status().message();
  EXPECT_FALSE(r->feasible);
  EXPECT_GT(r->least_memory_gb, 4);
  // The hardware file is for 8 GPUs: asking for 16 is a clear error, not a crash.
  o.num_nodes = 2;
  auto bad = search(*m, *h, o);
  EXPECT_FALSE(bad.has_value());
}

TEST(PartitionerSpace, StrategyCountsAndPresets) {
  SearchOptions o;
  auto s = generate_strategies(o, 32);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->strategies.size(), 44u);  // 22 base strategies on 8 GPUs, each with and without checkpointing
  o.search_space = "dp+tp";
  s = generate_strategies(o, 32);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->effective.disable_sdp, 1);
  EXPECT_EQ(s->effective.disable_pp, 1);
  o.search_space = "sdp";
  s = generate_strategies(o, 32);
  ASSERT_EQ(s->strategies.size(), 1u);
  EXPECT_EQ(form_strategy(s->strategies[0]), "1-1-8f");
  EXPECT_EQ(s->effective.disable_ckpt, 1);
  o.search_space = "nope";
  EXPECT_FALSE(generate_strategies(o, 32).has_value());
}

}  // namespace
}  // namespace gv::partitioner
