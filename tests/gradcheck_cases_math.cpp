// Gradient-check cases of the math family: MatMul, Gemm, Softmax, LogSoftmax, LayerNormalization, RMSNormalization,
// Reduce*, Dropout, Attention, SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss, galvatron LinearCrossEntropy and
// Linear.
#include <random>

#include "tests/gradcheck_cases.h"

namespace gv::testing {
namespace {

// Deterministic float64 values in [lo, hi).
Tensor rand64(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  Tensor t(DType::kFloat64, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<double>()[i] = d(rng);
  return t;
}

Tensor vals64(const std::vector<double>& v, const Shape& shape) {
  Tensor t(DType::kFloat64, shape);
  for (size_t i = 0; i < v.size(); ++i) t.data_as<double>()[i] = v[i];
  return t;
}

Tensor i64(const std::vector<int64_t>& v, Shape shape) { return Tensor::from_i64(v, std::move(shape)); }

GradCase make(const std::string& op, std::vector<Tensor> inputs, const std::string& label, Attributes attrs = {},
              int opset = 20) {
  GradCase c;
  c.op = op;
  c.inputs = std::move(inputs);
  c.attrs = std::move(attrs);
  c.opset = opset;
  c.label = label;
  return c;
}

void add_matmul(std::vector<GradCase>& cases) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 4}, {4, 5}},       {{2, 3, 4}, {4, 5}},    {{4}, {4, 5}},          {{3, 4}, {4}},
      {{4}, {4}},             {{2, 3, 4}, {4}},       {{4}, {2, 4, 3}},       {{3, 4}, {2, 4, 5}},
      {{1, 3, 4}, {2, 4, 5}}, {{2, 3, 4}, {2, 4, 5}}, {{2, 1, 3, 4}, {3, 4, 2}}};
  uint64_t seed = 1;
  for (const auto& [a, b] : shapes) {
    cases.push_back(make("MatMul", {rand64(a, seed++), rand64(b, seed++)}, shape_str(a) + "x" + shape_str(b)));
  }
}

void add_gemm(std::vector<GradCase>& cases) {
  const int64_t m = 3, k = 4, n = 2;
  uint64_t seed = 100;
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      Attributes a;
      a.set_int("transA", ta);
      a.set_int("transB", tb);
      a.set_float("alpha", 0.7);
      a.set_float("beta", 1.3);
      Shape as = ta ? Shape{k, m} : Shape{m, k}, bs = tb ? Shape{n, k} : Shape{k, n};
      std::string label = "transA=" + std::to_string(ta) + " transB=" + std::to_string(tb);
      cases.push_back(make("Gemm", {rand64(as, seed++), rand64(bs, seed++), rand64({n}, seed++)}, label + " C[N]", a));
      cases.push_back(make("Gemm", {rand64(as, seed++), rand64(bs, seed++), rand64({m, n}, seed++)}, label + " C[M,N]", a));
    }
  }
  cases.push_back(make("Gemm", {rand64({m, k}, seed++), rand64({k, n}, seed++), rand64({m, 1}, seed++)}, "C[M,1]"));
  cases.push_back(make("Gemm", {rand64({m, k}, seed++), rand64({k, n}, seed++), rand64({}, seed++)}, "C scalar"));
  cases.push_back(make("Gemm", {rand64({m, k}, seed++), rand64({k, n}, seed++)}, "no C"));
}

void add_softmax(std::vector<GradCase>& cases) {
  for (const char* op : {"Softmax", "LogSoftmax"}) {
    for (int64_t axis : {-1, 1, 0}) {
      Attributes a;
      a.set_int("axis", axis);
      cases.push_back(make(op, {rand64({2, 3, 4}, 200 + axis, -2.0, 2.0)}, "axis " + std::to_string(axis), a));
    }
  }
}

void add_norms(std::vector<GradCase>& cases) {
  Attributes last;
  last.set_int("axis", -1);
  last.set_int("stash_type", 11);
  GradCase ln = make("LayerNormalization", {rand64({2, 3, 4}, 300), rand64({4}, 301), rand64({4}, 302)},
                     "axis -1, saved statistics, gradients into Mean and InvStdDev", last);
  ln.num_outputs = 3;
  cases.push_back(ln);
  Attributes mid;
  mid.set_int("axis", 1);
  mid.set_float("epsilon", 1e-3);
  cases.push_back(make("LayerNormalization", {rand64({2, 3, 4}, 303), rand64({3, 4}, 304)},
                       "axis 1, no bias, statistics recomputed", mid));
  cases.push_back(make("LayerNormalization", {rand64({2, 3, 4}, 305), rand64({1, 4}, 306), rand64({4}, 307)},
                       "Scale [1,4]", last));
  cases.push_back(make("RMSNormalization", {rand64({2, 3, 4}, 310), rand64({4}, 311)}, "axis -1", {}, 23));
  cases.push_back(make("RMSNormalization", {rand64({2, 3, 4}, 312), rand64({3, 4}, 313)}, "axis 1", mid, 23));
}

void add_reduce(std::vector<GradCase>& cases) {
  const char* ops[] = {"ReduceSum", "ReduceMean",      "ReduceMax",    "ReduceMin",      "ReduceProd",
                       "ReduceL1",  "ReduceL2",        "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"};
  uint64_t seed = 400;
  for (const char* op : ops) {
    const std::string name = op;
    // LogSum needs positive inputs; L1 stays away from the kink at 0.
    const double lo = (name == "ReduceLogSum" || name == "ReduceL1") ? 0.2 : -1.0;
    Attributes keep, drop;
    keep.set_int("keepdims", 1);
    drop.set_int("keepdims", 0);
    cases.push_back(make(op, {rand64({2, 3, 4}, seed++, lo), i64({1}, {1})}, "axes [1] keepdims", keep));
    cases.push_back(make(op, {rand64({2, 3, 4}, seed++, lo), i64({0, -1}, {2})}, "axes [0,-1]", drop));
    cases.push_back(make(op, {rand64({2, 3}, seed++, lo)}, "all axes", drop));
  }
  // Opset differences: ReduceSum reads axes from the input since 13, the others since 18.
  Attributes attr_axes;
  attr_axes.set_ints("axes", {2});
  cases.push_back(make("ReduceMean", {rand64({2, 3, 4}, seed++)}, "opset 13 axes attribute", attr_axes, 13));
  cases.push_back(make("ReduceSum", {rand64({2, 3, 4}, seed++), i64({2}, {1})}, "opset 13 axes input", {}, 13));
  Attributes noop;
  noop.set_int("noop_with_empty_axes", 1);
  cases.push_back(make("ReduceSumSquare", {rand64({2, 3}, seed++), i64({}, {0})}, "noop_with_empty_axes", noop, 18));
  // Products with zeros: one zero in a row (its gradient is the product of the others), two zeros (all zero).
  cases.push_back(make("ReduceProd", {vals64({0.5, 0.0, -2.0, 0.0, 3.0, 0.0, 1.5, -0.5, 2.0}, {3, 3}), i64({1}, {1})},
                       "zeros"));
}

void add_dropout(std::vector<GradCase>& cases) {
  Tensor ratio = Tensor::scalar(DType::kFloat64, 0.3);
  Tensor on = Tensor(DType::kBool, {});
  on.data_as<uint8_t>()[0] = 1;
  GradCase train = make("Dropout", {rand64({4, 5}, 500), ratio, on}, "training, mask output");
  train.as_constants = {false, true, true};
  train.num_outputs = 2;
  cases.push_back(train);
  GradCase regen = train;
  regen.num_outputs = 1;
  regen.label = "training, mask regenerated in backward";
  cases.push_back(regen);
  cases.push_back(make("Dropout", {rand64({4, 5}, 501)}, "inference"));
}

// Attention (runtime/ops/attention_ops.cpp): grouped-query heads, causal, masks broadcast (masks get no gradient).
void add_attention(std::vector<GradCase>& cases) {
  Attributes causal;
  causal.set_int("is_causal", 1);
  cases.push_back(make("Attention", {rand64({2, 4, 3, 4}, 700), rand64({2, 2, 5, 4}, 701), rand64({2, 2, 5, 3}, 702)},
                       "GQA, causal, S < L, default scale", causal, 23));
  Attributes scaled;
  scaled.set_float("scale", 0.7f);
  GradCase fm = make("Attention", {rand64({1, 2, 4, 3}, 703), rand64({1, 2, 4, 3}, 704), rand64({1, 2, 4, 2}, 705),
                                   rand64({4, 4}, 706, -2.0, 0.0)},
                     "float mask [S,L], scale 0.7", scaled, 23);
  fm.as_constants = {false, false, false, true};
  cases.push_back(fm);
  Tensor keep(DType::kBool, {1, 1, 1, 4});
  for (int j = 0; j < 4; ++j) keep.data_as<uint8_t>()[j] = j != 2;
  cases.push_back(make("Attention", {rand64({2, 2, 3, 3}, 707), rand64({2, 1, 4, 3}, 708), rand64({2, 1, 4, 3}, 709), keep},
                       "bool mask [1,1,1,L], one KV head", {}, 23));
  // The 3-D form, and AttentionWithLse (its LSE output is declared non-differentiable: only Y enters the loss).
  Attributes three = causal;
  three.set_int("q_num_heads", 4);
  three.set_int("kv_num_heads", 2);
  cases.push_back(make("Attention", {rand64({2, 3, 16}, 710), rand64({2, 5, 8}, 711), rand64({2, 5, 6}, 712)},
                       "3-D form, GQA, causal", three, 23));
  GradCase lse = make("AttentionWithLse", {rand64({2, 4, 3, 4}, 713), rand64({2, 2, 5, 4}, 714),
                                           rand64({2, 2, 5, 4}, 715)},
                      "GQA, causal", causal, 1);
  lse.domain = "galvatron";
  lse.num_outputs = 2;
  lse.nondiff_outputs = {1};
  cases.push_back(lse);
}

void add_losses(std::vector<GradCase>& cases) {
  const Tensor labels = i64({1, 0, 4, 2}, {4});
  const Tensor weights = rand64({5}, 600, 0.2, 1.5);
  for (const char* red : {"mean", "sum", "none"}) {
    Attributes a;
    a.set_string("reduction", red);
    cases.push_back(make("SoftmaxCrossEntropyLoss", {rand64({4, 5}, 601, -2, 2), labels}, red, a));
    cases.push_back(make("NegativeLogLikelihoodLoss", {rand64({4, 5}, 602, -2, 0), labels}, red, a));
  }
  Attributes ii;
  ii.set_int("ignore_index", 2);
  for (const char* op : {"SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"}) {
    GradCase w = make(op, {rand64({4, 5}, 603, -2, 2), labels, weights}, "weights, ignore_index", ii);
    w.as_constants = {false, true, true};
    cases.push_back(w);
    // [N, C, d]: classes on axis 1 with a trailing position axis.
    cases.push_back(make(op, {rand64({2, 4, 3}, 604, -2, 2), i64({0, 3, 2, 1, 2, 0}, {2, 3})}, "[N,C,d]", ii));
  }
  GradCase lp = make("SoftmaxCrossEntropyLoss", {rand64({2, 4, 3}, 605, -2, 2), i64({0, 3, 2, 1, 2, 0}, {2, 3})},
                     "log_prob output used too", ii);
  lp.num_outputs = 2;
  cases.push_back(lp);
  // galvatron LinearCrossEntropy: X [N, K], W [V, K] (trans_w 1) or [K, V]; chunks of 2 rows over N = 5 (a short
  // last chunk), with and without an ignored label.
  for (int trans : {1, 0}) {
    for (const char* red : {"mean", "sum"}) {
      Attributes a;
      a.set_string("reduction", red);
      a.set_int("trans_w", trans);
      a.set_int("chunk_rows", 2);
      a.set_int("ignore_index", 1);
      const Shape ws = trans ? Shape{6, 3} : Shape{3, 6};
      GradCase c = make("LinearCrossEntropy", {rand64({5, 3}, 606, -2, 2), rand64(ws, 607), i64({0, 5, 1, 3, 2}, {5})},
                        std::string(red) + (trans ? ", W [V,K]" : ", W [K,V]"), a);
      c.domain = "galvatron";
      c.as_constants = {false, false, true};
      cases.push_back(c);
      // The training graph's form: the gradients for dLoss = 1 as extra (non-differentiable) outputs.
      c.label += ", gradient outputs";
      c.num_outputs = 3;
      c.nondiff_outputs = {1, 2};
      cases.push_back(c);
    }
  }
  // galvatron Linear: X [2, 3, 4] @ W [4, 5] (or [5, 4] with transB) + bias [5], then none / gelu / gelu_tanh (the
  // pre-activation a second output that also carries a gradient of its own).
  for (const char* act : {"none", "gelu", "gelu_tanh"}) {
    for (int tb : {0, 1}) {
      Attributes a;
      a.set_string("activation", act);
      a.set_int("transB", tb);
      const Shape ws = tb ? Shape{5, 4} : Shape{4, 5};
      GradCase c = make("Linear", {rand64({2, 3, 4}, 700, -2, 2), rand64(ws, 701), rand64({5}, 702)},
                        std::string(act) + (tb ? ", transB" : ""), a);
      c.domain = "galvatron";
      if (std::string(act) != "none") c.num_outputs = 2;
      cases.push_back(c);
    }
  }
  // galvatron AttentionPacked: QKV [B 2, S 5, 3 * H 2 * D 3], causal or not; LSE is not differentiable.
  for (int causal : {0, 1}) {
    Attributes a;
    a.set_int("num_heads", 2);
    a.set_int("is_causal", causal);
    GradCase c = make("AttentionPacked", {rand64({2, 5, 18}, 710 + causal, -1.5, 1.5)}, causal ? "causal" : "full", a);
    c.domain = "galvatron";
    c.num_outputs = 2;
    c.nondiff_outputs = {1};
    cases.push_back(c);
  }
  Attributes no_bias;
  no_bias.set_int("transB", 1);
  GradCase nb = make("Linear", {rand64({6, 4}, 703), rand64({3, 4}, 704)}, "no bias, transB", no_bias);
  nb.domain = "galvatron";
  cases.push_back(nb);
  // With a Residual input (the folded residual add): its gradient is Y's.
  GradCase res = make("Linear", {rand64({2, 3, 4}, 705), rand64({5, 4}, 706), rand64({5}, 707), rand64({2, 3, 5}, 708)},
                      "residual, transB", no_bias);
  res.domain = "galvatron";
  cases.push_back(res);
}

// galvatron SiluMul (SwiGLU's gate) and ONNX RotaryEmbedding in its forms: 4-D and 3-D heads, halves and
// interleaved pairs, a partial rotation, tables by position_ids (the tables and positions fed as constants).
void add_llama_ops(std::vector<GradCase>& cases) {
  GradCase silu = make("SiluMul", {rand64({3, 5}, 400, -3.0, 3.0), rand64({3, 5}, 401)}, "gate and up");
  silu.domain = "galvatron";
  cases.push_back(silu);
  auto rotary = [&](Shape x, Shape table, Attributes a, const std::string& label, Tensor pos = Tensor()) {
    std::vector<Tensor> in = {rand64(x, 410), rand64(table, 411), rand64(table, 412)};
    std::vector<bool> constants = {false, true, true};
    if (pos.numel() > 0) {
      in.push_back(std::move(pos));
      constants.push_back(true);
    }
    GradCase c = make("RotaryEmbedding", std::move(in), label, std::move(a), 23);
    c.as_constants = std::move(constants);
    cases.push_back(c);
  };
  rotary({2, 3, 4, 6}, {2, 4, 3}, {}, "4-D, halves");
  Attributes three;
  three.set_int("num_heads", 3);
  three.set_int("interleaved", 1);
  rotary({2, 4, 12}, {2, 4, 2}, three, "3-D, interleaved", Tensor());
  Attributes partial;
  partial.set_int("rotary_embedding_dim", 4);
  rotary({1, 2, 3, 6}, {5, 2}, partial, "partial, position_ids", i64({4, 0, 2}, {1, 3}));
}

}  // namespace

std::vector<GradCase> gradcheck_cases_math() {
  std::vector<GradCase> cases;
  add_matmul(cases);
  add_gemm(cases);
  add_softmax(cases);
  add_norms(cases);
  add_reduce(cases);
  add_dropout(cases);
  add_attention(cases);
  add_losses(cases);
  add_llama_ops(cases);
  return cases;
}

}  // namespace gv::testing
