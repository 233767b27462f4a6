// The parallel ops of runtime/ops/parallel_ops.cpp and the parallel attributes of the training ops, run with the
// executor on threads (one per rank, thread communicators). Forward values are checked against arithmetic on the
// whole tensors; gradients of split graphs against build_backward over the unsplit graph in one process.
#include <gtest/gtest.h>

#include "tests/parallel_test_util.h"

namespace gv::testing {
namespace {

Attributes sized(const std::vector<int64_t>& sizes, int64_t index = -1, std::vector<int64_t> group = {},
                 const std::string& backward = "") {
  Attributes a;
  a.set_ints("sizes", sizes);
  if (index >= 0) a.set_int("index", index);
  if (!group.empty()) a.set_ints("group", std::move(group));
  if (!backward.empty()) a.set_string("backward", backward);
  return a;
}

Attributes group_attr(std::vector<int64_t> group) {
  Attributes a;
  a.set_ints("group", std::move(group));
  return a;
}

void expect_all_ok(const std::vector<Status>& results) {
  for (size_t r = 0; r < results.size(); ++r) EXPECT_TRUE(results[r].is_ok()) << "rank " << r << ": " << results[r].message();
}

Status expect_close(const std::string& what, int rank, const Tensor& got, const Tensor& want, double tol = 1e-9) {
  const double d = max_diff(got, want);
  if (d <= tol) return Status::ok();
  return internal_error(what + " on rank " + std::to_string(rank) + ": " + shape_str(got.shape()) + " vs " +
                        shape_str(want.shape()) + ", max difference " + std::to_string(d));
}

// Rank r's rows for the forward checks: value 100 r + 10 i + j.
Tensor rank_rows(DType dtype, int r, int64_t rows, int64_t cols) {
  Tensor t(dtype, {rows, cols});
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const double v = 100.0 * r + 10.0 * i + j;
      convert_elements(&v, DType::kFloat64, static_cast<char*>(t.data()) + (i * cols + j) * dtype_size(dtype), dtype, 1);
    }
  }
  return t;
}

Tensor sum_over_ranks(int n, uint64_t seed, const Shape& shape) {
  Tensor s(DType::kFloat64, shape);
  for (int r = 0; r < n; ++r) {
    Tensor t = rand64(shape, seed + r);
    for (int64_t i = 0; i < s.numel(); ++i) s.data_as<double>()[i] += t.data_as<double>()[i];
  }
  return s;
}

TEST(ParallelOps, CollectivesForwardOnThreeRanks) {
  const std::vector<int64_t> sizes = {2, 1, 3};
  const int64_t offsets[] = {0, 2, 3};
  expect_all_ok(on_ranks(3, [&](int r, Communicator& c) -> Status {
    Builder b;
    ValueId xf = b.g.add_input("xf", DType::kFloat32, {sizes[r], 2});
    ValueId xi = b.g.add_input("xi", DType::kInt64, {sizes[r], 2});
    ValueId z = b.param("z", rand64({6, 2}, 10 + r));       // differs per rank
    ValueId rep = b.param("rep", rand64({6, 2}, 99));       // replicated
    ValueId gf = b.gv("AllGather", {xf}, sized(sizes));
    ValueId gi = b.gv("AllGather", {xi}, sized(sizes, r));
    ValueId rs = b.gv("ReduceScatter", {z}, sized(sizes, r));
    ValueId sp = b.gv("SplitToGroup", {rep}, sized(sizes, r));
    ValueId red = b.gv("TensorParallelReduce", {z});
    ValueId cp = b.gv("TensorParallelCopy", {z});
    GV_RETURN_IF_ERROR(b.status);
    std::map<std::string, Tensor> feeds = {{"xf", rank_rows(DType::kFloat32, r, sizes[r], 2)},
                                           {"xi", rank_rows(DType::kInt64, r, sizes[r], 2)}};
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {gf, gi, rs, sp, red, cp}, &c, 0, feeds));
    Tensor want_gather(DType::kFloat64, {6, 2});
    for (int k = 0, row = 0; k < 3; ++k) {
      Tensor part = rank_rows(DType::kFloat64, k, sizes[k], 2);
      for (int64_t i = 0; i < sizes[k]; ++i, ++row)
        for (int j = 0; j < 2; ++j) want_gather.data_as<double>()[row * 2 + j] = part.data_as<double>()[i * 2 + j];
    }
    GV_RETURN_IF_ERROR(expect_close("AllGather float32", r, out[0].cast(DType::kFloat64), want_gather));
    if (out[1].dtype() != DType::kInt64) return internal_error("AllGather changed the dtype");
    GV_RETURN_IF_ERROR(expect_close("AllGather int64", r, out[1].cast(DType::kFloat64), want_gather));
    const Tensor sum = sum_over_ranks(3, 10, {6, 2});
    GV_RETURN_IF_ERROR(expect_close("ReduceScatter", r, out[2], rows_of(sum, offsets[r], offsets[r] + sizes[r])));
    GV_RETURN_IF_ERROR(expect_close("SplitToGroup", r, out[3], rows_of(rand64({6, 2}, 99), offsets[r], offsets[r] + sizes[r])));
    GV_RETURN_IF_ERROR(expect_close("TensorParallelReduce", r, out[4], sum));
    return expect_close("TensorParallelCopy", r, out[5], rand64({6, 2}, 10 + r));
  }));
}

TEST(ParallelOps, StridedAndConsecutiveGroupsOnFourRanks) {
  expect_all_ok(on_ranks(4, [&](int r, Communicator& c) -> Status {
    const std::vector<int64_t> strided = {r % 2, r % 2 + 2};   // {0,2} or {1,3}
    const std::vector<int64_t> halves = {r / 2 * 2, r / 2 * 2 + 1};  // {0,1} or {2,3}
    const int spos = r / 2, hpos = r % 2;
    Builder b;
    ValueId z = b.param("z", rand64({3, 2}, 20 + r));
    ValueId red = b.gv("TensorParallelReduce", {z}, group_attr(strided));
    ValueId rows = b.param("rows", rand64({spos + 1, 2}, 30 + r));
    ValueId gat = b.gv("AllGather", {rows}, sized({1, 2}, spos, strided));
    ValueId w = b.param("w", rand64({4, 2}, 40 + r));
    ValueId rs = b.gv("ReduceScatter", {w}, sized({2, 2}, -1, halves));
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {red, gat, rs}, &c));
    Tensor want_red(DType::kFloat64, {3, 2}), want_rs(DType::kFloat64, {2, 2});
    for (int64_t k : strided) {
      Tensor t = rand64({3, 2}, 20 + k);
      for (int i = 0; i < 6; ++i) want_red.data_as<double>()[i] += t.data_as<double>()[i];
    }
    for (int64_t k : halves) {
      Tensor t = rows_of(rand64({4, 2}, 40 + k), hpos * 2, hpos * 2 + 2);
      for (int i = 0; i < 4; ++i) want_rs.data_as<double>()[i] += t.data_as<double>()[i];
    }
    Tensor want_gat(DType::kFloat64, {3, 2});
    Tensor first = rand64({1, 2}, 30 + strided[0]), second = rand64({2, 2}, 30 + strided[1]);
    std::memcpy(want_gat.data(), first.data(), first.nbytes());
    std::memcpy(want_gat.data_as<double>() + 2, second.data(), second.nbytes());
    GV_RETURN_IF_ERROR(expect_close("TensorParallelReduce in a strided group", r, out[0], want_red));
    GV_RETURN_IF_ERROR(expect_close("AllGather in a strided group", r, out[1], want_gat));
    return expect_close("ReduceScatter in a consecutive group", r, out[2], want_rs);
  }));
}

// The single-process reference: loss and gradients of `loss_of(builder, params)` over the whole tensors.
struct Reference {
  std::vector<Tensor> grads;
  Tensor loss;
};
Expected<Reference> reference(const std::vector<Tensor>& params,
                              const std::function<ValueId(Builder&, const std::vector<ValueId>&)>& loss_of) {
  Builder b;
  std::vector<ValueId> p;
  for (size_t i = 0; i < params.size(); ++i) p.push_back(b.param("p" + std::to_string(i), params[i]));
  ValueId loss = loss_of(b, p);
  GV_RETURN_IF_ERROR(b.status);
  GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(b.g, loss, p));
  std::vector<ValueId> fetch = {loss};
  for (ValueId v : p) fetch.push_back(ag.grads.at(v));
  GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, fetch, nullptr));
  Reference r;
  r.loss = out[0];
  r.grads.assign(out.begin() + 1, out.end());
  return r;
}

// Megatron's MLP on 2 ranks: y = TPReduce(Tanh(TPCopy(x) A_r) B_r) with A split by columns and B by rows equals
// Tanh(x A) B; the gradients of x (replicated), A_r and B_r are the whole computation's, or their slices.
TEST(ParallelOps, TensorParallelMlpGradientsMatchTheUnsplitGraph) {
  const Tensor X = rand64({4, 6}, 1), A = rand64({6, 8}, 2), B = rand64({8, 5}, 3);
  auto ref = reference({X, A, B}, [](Builder& b, const std::vector<ValueId>& p) {
    ValueId y = b.op("MatMul", {b.op("Tanh", {b.op("MatMul", {p[0], p[1]})}), p[2]});
    return b.sum(b.op("Mul", {y, y}));
  });
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  expect_all_ok(on_ranks(2, [&](int r, Communicator& c) -> Status {
    Builder b;
    ValueId x = b.param("x", X);
    ValueId a = b.param("a", cols_of(A, 4 * r, 4 * r + 4));
    ValueId bb = b.param("b", rows_of(B, 4 * r, 4 * r + 4));
    ValueId xc = b.gv("TensorParallelCopy", {x});
    ValueId y = b.gv("TensorParallelReduce", {b.op("MatMul", {b.op("Tanh", {b.op("MatMul", {xc, a})}), bb})});
    ValueId loss = b.sum(b.op("Mul", {y, y}));
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(b.g, loss, {x, a, bb}));
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {loss, ag.grads.at(x), ag.grads.at(a), ag.grads.at(bb)}, &c));
    GV_RETURN_IF_ERROR(expect_close("loss", r, out[0], ref->loss));
    GV_RETURN_IF_ERROR(expect_close("grad x", r, out[1], ref->grads[0]));
    GV_RETURN_IF_ERROR(expect_close("grad A shard", r, out[2], cols_of(ref->grads[1], 4 * r, 4 * r + 4)));
    return expect_close("grad B shard", r, out[3], rows_of(ref->grads[2], 4 * r, 4 * r + 4));
  }));
}

// Sequence parallelism with uneven rows {3, 1}: x_r -> AllGather -> Tanh(. A_r) B_r -> ReduceScatter -> y_r; the
// ranks' losses sum(y_r^2) add up to the unsplit sum(Y^2), and every gradient is the unsplit one's slice.
TEST(ParallelOps, SequenceParallelGradientsWithUnevenRows) {
  const Tensor X = rand64({4, 6}, 4), A = rand64({6, 8}, 5), B = rand64({8, 5}, 6);
  auto ref = reference({X, A, B}, [](Builder& b, const std::vector<ValueId>& p) {
    ValueId y = b.op("MatMul", {b.op("Tanh", {b.op("MatMul", {p[0], p[1]})}), p[2]});
    return b.sum(b.op("Mul", {y, y}));
  });
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  const std::vector<int64_t> sizes = {3, 1};
  std::vector<double> losses(2);
  expect_all_ok(on_ranks(2, [&](int r, Communicator& c) -> Status {
    const int64_t off = r == 0 ? 0 : 3;
    Builder b;
    ValueId x = b.param("x", rows_of(X, off, off + sizes[r]));
    ValueId a = b.param("a", cols_of(A, 4 * r, 4 * r + 4));
    ValueId bb = b.param("b", rows_of(B, 4 * r, 4 * r + 4));
    ValueId h = b.gv("AllGather", {x}, sized(sizes, r));
    ValueId v = b.op("MatMul", {b.op("Tanh", {b.op("MatMul", {h, a})}), bb});
    ValueId y = b.gv("ReduceScatter", {v}, sized(sizes, r));
    ValueId loss = b.sum(b.op("Mul", {y, y}));
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(b.g, loss, {x, a, bb}));
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {loss, ag.grads.at(x), ag.grads.at(a), ag.grads.at(bb)}, &c));
    losses[r] = out[0].scalar_f64();
    GV_RETURN_IF_ERROR(expect_close("grad x rows", r, out[1], rows_of(ref->grads[0], off, off + sizes[r])));
    GV_RETURN_IF_ERROR(expect_close("grad A shard", r, out[2], cols_of(ref->grads[1], 4 * r, 4 * r + 4)));
    return expect_close("grad B shard", r, out[3], rows_of(ref->grads[2], 4 * r, 4 * r + 4));
  }));
  EXPECT_NEAR(losses[0] + losses[1], ref->loss.scalar_f64(), 1e-9);
}

// SplitToGroup (each rank's loss covers its rows: the gradient of the replicated input is gathered whole) and
// AllGather with backward "split" (a loss computed identically on every rank: each keeps its rows of the gradient).
TEST(ParallelOps, SplitAndGatherWithSplitBackward) {
  const Tensor X = rand64({4, 3}, 7), C = rand64({4, 3}, 8);
  auto ref = reference({X}, [&](Builder& b, const std::vector<ValueId>& p) {
    ValueId y = b.op("Mul", {p[0], b.constant("c", C)});
    return b.sum(b.op("Mul", {y, y}));
  });
  ASSERT_TRUE(ref.has_value()) << ref.status().message();
  const std::vector<int64_t> sizes = {1, 3};
  expect_all_ok(on_ranks(2, [&](int r, Communicator& c) -> Status {
    const int64_t off = r == 0 ? 0 : 1;
    Builder b;
    // Split: rank r's loss is its rows' part of the whole loss.
    ValueId x = b.param("x", X);
    ValueId part = b.gv("SplitToGroup", {x}, sized(sizes, r));
    ValueId y1 = b.op("Mul", {part, b.constant("c_rows", rows_of(C, off, off + sizes[r]))});
    ValueId loss1 = b.sum(b.op("Mul", {y1, y1}));
    // Gather: every rank computes the whole loss from the gathered rows.
    ValueId rows = b.param("rows", rows_of(X, off, off + sizes[r]));
    ValueId whole = b.gv("AllGather", {rows}, sized(sizes, r, {}, "split"));
    ValueId y2 = b.op("Mul", {whole, b.constant("c", C)});
    ValueId loss2 = b.sum(b.op("Mul", {y2, y2}));
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(AutogradResult ag1, build_backward(b.g, loss1, {x}));
    GV_ASSIGN_OR_RETURN(AutogradResult ag2, build_backward(b.g, loss2, {rows}));
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {ag1.grads.at(x), ag2.grads.at(rows), loss2}, &c));
    GV_RETURN_IF_ERROR(expect_close("SplitToGroup: gathered gradient", r, out[0], ref->grads[0]));
    GV_RETURN_IF_ERROR(expect_close("AllGather split: my rows of the gradient", r, out[1],
                                    rows_of(ref->grads[0], off, off + sizes[r])));
    return expect_close("AllGather split: loss", r, out[2], ref->loss);
  }));
}

// A two-stage pipeline: rank 0 sends x = 2p to rank 1, which computes loss = sum(w * y^2) and sends dloss/dy back
// (tag + 1, as the training-graph builder does); rank 0's backward receives it through Send's rule, so
// dloss/dp = 2 * 2 w y = 8 w p. Micro-batch 3 moves the message tags (tag + 3 * 65536).
TEST(ParallelOps, SendRecvCarryActivationsForwardAndGradientsBack) {
  const Tensor P = rand64({2, 3}, 9), W = rand64({2, 3}, 10);
  std::vector<Tensor> results(2);
  expect_all_ok(on_ranks(2, [&](int r, Communicator& c) -> Status {
    Builder b;
    if (r == 0) {
      ValueId p = b.param("p", P);
      ValueId x = b.op("Mul", {p, b.constant("two", Tensor::scalar(DType::kFloat64, 2.0))});
      Attributes a;
      a.set_int("peer", 1);
      a.set_int("tag", 4);
      a.set_int("requires_grad", 1);
      ValueId token = b.gv("Send", {x}, a);
      GV_RETURN_IF_ERROR(b.status);
      if (b.g.value(token).dtype != DType::kFloat32 || !b.g.value(token).shape.empty()) {
        return internal_error("Send's token must be a float32 scalar");
      }
      GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(b.g, token, {p}));
      GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {ag.grads.at(p), token}, &c, 3));
      if (out[1].scalar_f64() != 0.0) return internal_error("Send's token must hold 0");
      results[0] = out[0];
      return Status::ok();
    }
    Attributes a;
    a.set_int("peer", 0);
    a.set_int("tag", 4);
    a.set_ints("shape", {2, 3});
    a.set_int("dtype", 11);  // float64
    a.set_int("requires_grad", 1);
    ValueId y = b.gv("Recv", {}, a);
    ValueId loss = b.sum(b.op("Mul", {b.constant("w", W), b.op("Mul", {y, y})}));
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(AutogradResult ag, build_backward(b.g, loss, {y}));
    Attributes back;
    back.set_int("peer", 0);
    back.set_int("tag", 5);
    b.gv("Send", {ag.grads.at(y)}, back);
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {y}, &c, 3));
    results[1] = out[0];
    return Status::ok();
  }));
  Tensor want_y(DType::kFloat64, {2, 3}), want_grad(DType::kFloat64, {2, 3});
  for (int i = 0; i < 6; ++i) {
    want_y.data_as<double>()[i] = 2 * P.data_as<double>()[i];
    want_grad.data_as<double>()[i] = 8 * W.data_as<double>()[i] * P.data_as<double>()[i];
  }
  EXPECT_LE(max_diff(results[1], want_y), 1e-12);
  EXPECT_LE(max_diff(results[0], want_grad), 1e-12);
}

TEST(ParallelOps, SendToItselfInOneProcess) {
  Builder b;
  ValueId x = b.param("x", rand64({3}, 11));
  Attributes s;
  s.set_int("peer", 0);
  s.set_int("tag", 7);
  ValueId token = b.gv("Send", {x}, s);
  Attributes r = s;
  r.set_ints("shape", {3});
  r.set_int("dtype", 11);
  ValueId y = b.gv("Recv", {}, r);
  ASSERT_TRUE(b.status.is_ok()) << b.status.message();
  auto out = run_graph(b.g, {y, token}, nullptr);
  ASSERT_TRUE(out.has_value()) << out.status().message();
  EXPECT_EQ(max_diff((*out)[0], rand64({3}, 11)), 0.0);
}

TEST(ParallelOps, ShapeAndAttributeErrorsNameTheNode) {
  Builder b;
  ValueId x = b.param("x", rand64({4, 2}, 12));
  b.gv("ReduceScatter", {x}, sized({3, 1}));  // sizes differ, no index
  EXPECT_FALSE(b.status.is_ok());
  EXPECT_NE(b.status.message().find("index"), std::string::npos) << b.status.message();
  EXPECT_NE(b.status.message().find("ReduceScatter"), std::string::npos) << b.status.message();
  Builder b2;
  ValueId x2 = b2.param("x", rand64({4, 2}, 12));
  b2.gv("ReduceScatter", {x2}, sized({2, 1}, 0));  // 3 rows in all, x has 4
  EXPECT_FALSE(b2.status.is_ok());
  Builder b3;
  Attributes a;
  a.set_int("peer", 0);
  a.set_int("tag", 70000);
  b3.gv("Send", {b3.param("x", rand64({2}, 1))}, a);
  EXPECT_FALSE(b3.status.is_ok());
  Builder b4;
  ValueId x4 = b4.param("x", rand64({4, 2}, 12));
  ValueId g4 = b4.gv("AllGather", {x4}, sized({4, 4}));  // two members, but one process runs it
  ASSERT_TRUE(b4.status.is_ok()) << b4.status.message();
  auto out = run_graph(b4.g, {g4}, nullptr);
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.status().message().find("AllGather"), std::string::npos) << out.status().message();
}

// ---- training ops: AllReduce group/reduction, GradNorm weights/all_reduce, AdamW/SGD shard_offset ---------------

TEST(ParallelTrainingOps, AllReduceOverGroupsWithSumOrMean) {
  expect_all_ok(on_ranks(4, [&](int r, Communicator& c) -> Status {
    Builder b;
    ValueId g1 = b.state("g1", rand64({5}, 50 + r));
    ValueId g2 = b.state("g2", rand64({5}, 60 + r));
    ValueId g3 = b.state("g3", rand64({5}, 70 + r));
    Attributes sum = group_attr({r % 2, r % 2 + 2});
    sum.set_string("reduction", "sum");
    b.node("AllReduce", {g1}, sum, kGalvatronDomain, 0);
    b.node("AllReduce", {g2}, group_attr({r % 2, r % 2 + 2}), kGalvatronDomain, 0);  // mean by default
    b.node("AllReduce", {g3}, {}, kGalvatronDomain, 0);                               // the whole world
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {g1, g2, g3}, &c));
    Tensor w1(DType::kFloat64, {5}), w2(DType::kFloat64, {5}), w3(DType::kFloat64, {5});
    for (int k : {r % 2, r % 2 + 2}) {
      for (int i = 0; i < 5; ++i) {
        w1.data_as<double>()[i] += rand64({5}, 50 + k).data_as<double>()[i];
        w2.data_as<double>()[i] += rand64({5}, 60 + k).data_as<double>()[i] / 2;
      }
    }
    for (int k = 0; k < 4; ++k)
      for (int i = 0; i < 5; ++i) w3.data_as<double>()[i] += rand64({5}, 70 + k).data_as<double>()[i] / 4;
    GV_RETURN_IF_ERROR(expect_close("AllReduce sum over a group", r, out[0], w1, 1e-12));
    GV_RETURN_IF_ERROR(expect_close("AllReduce mean over a group", r, out[1], w2, 1e-12));
    return expect_close("AllReduce mean over the world", r, out[2], w3, 1e-12);
  }));
}

TEST(ParallelTrainingOps, GradNormWeightsAndAllReduce) {
  // Rank r holds a shard s_r (its own) and a replicated tensor t: the global norm counts t once (weight 1/2 each).
  const Tensor T = rand64({3}, 80);
  double want_sq = 0;
  for (int r = 0; r < 2; ++r) want_sq += [&] {
    double s = 0;
    Tensor t = rand64({4}, 81 + r);
    for (int i = 0; i < 4; ++i) s += t.data_as<double>()[i] * t.data_as<double>()[i];
    return s;
  }();
  for (int i = 0; i < 3; ++i) want_sq += T.data_as<double>()[i] * T.data_as<double>()[i];
  std::vector<double> norms(2), local(2);
  expect_all_ok(on_ranks(2, [&](int r, Communicator& c) -> Status {
    Builder b;
    ValueId s = b.param("s", rand64({4}, 81 + r));
    ValueId t = b.param("t", T);
    Attributes a;
    a.set_floats("weights", {1.0f, 0.5f});
    a.set_int("all_reduce", 1);
    a.set_float("scale", 2.0);
    ValueId n = b.gv("GradNorm", {s, t}, a);
    ValueId plain = b.gv("GradNorm", {s, t});
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {n, plain}, &c));
    norms[r] = out[0].scalar_f64();
    local[r] = out[1].scalar_f64();
    return Status::ok();
  }));
  for (int r = 0; r < 2; ++r) {
    EXPECT_NEAR(norms[r], 2.0 * std::sqrt(want_sq), 1e-5) << "rank " << r;
    double own = 0;
    Tensor s = rand64({4}, 81 + r);
    for (int i = 0; i < 4; ++i) own += s.data_as<double>()[i] * s.data_as<double>()[i];
    for (int i = 0; i < 3; ++i) own += T.data_as<double>()[i] * T.data_as<double>()[i];
    EXPECT_NEAR(local[r], std::sqrt(own), 1e-5) << "without attrs: this rank's plain norm";
  }
}

// One optimizer step on the whole parameter, and on the flat range [3, 8) with shard_offset: the range gets the
// same values, the rest of the parameter is left as it was.
void check_sharded_update(const std::string& op, int num_state) {
  const Tensor P = rand64({3, 4}, 90), G = rand64({3, 4}, 91);
  auto step = [&](int64_t offset, int64_t n) -> Expected<Tensor> {
    Builder b;
    ValueId p = b.param("p", P);
    Tensor g(DType::kFloat64, {n});
    if (offset >= 0) std::memcpy(g.data(), G.data_as<double>() + offset, n * sizeof(double));
    std::vector<ValueId> in = {p, b.state("g", offset < 0 ? G : g)};
    for (int k = 0; k < num_state; ++k) {
      in.push_back(b.state("s" + std::to_string(k), offset < 0 ? Tensor(DType::kFloat64, {3, 4}) : Tensor(DType::kFloat64, {n})));
    }
    in.push_back(b.constant("lr", Tensor::scalar(DType::kFloat64, 0.1)));
    in.push_back(b.constant("step", Tensor::from_i64({1}, {})));
    Attributes a;
    if (offset >= 0) a.set_int("shard_offset", offset);
    if (op == "SGD") a.set_float("momentum", 0.9);
    b.node(op, in, a, kGalvatronDomain, 0);
    GV_RETURN_IF_ERROR(b.status);
    GV_ASSIGN_OR_RETURN(auto out, run_graph(b.g, {p}, nullptr));
    return out[0];
  };
  auto whole = step(-1, 12);
  auto shard = step(3, 5);
  ASSERT_TRUE(whole.has_value()) << whole.status().message();
  ASSERT_TRUE(shard.has_value()) << shard.status().message();
  for (int i = 0; i < 12; ++i) {
    const double want = i >= 3 && i < 8 ? whole->data_as<double>()[i] : P.data_as<double>()[i];
    EXPECT_DOUBLE_EQ(shard->data_as<double>()[i], want) << op << " element " << i;
  }
  EXPECT_NE(whole->data_as<double>()[4], P.data_as<double>()[4]) << "the step must change the parameter";
}

TEST(ParallelTrainingOps, AdamWUpdatesOnlyItsShard) { check_sharded_update("AdamW", 2); }
TEST(ParallelTrainingOps, SgdUpdatesOnlyItsShard) { check_sharded_update("SGD", 1); }

TEST(ParallelTrainingOps, ShardOutsideTheParameterIsAnError) {
  Builder b;
  ValueId p = b.param("p", rand64({4}, 1));
  Attributes a;
  a.set_int("shard_offset", 2);
  b.node("SGD", {p, b.state("g", rand64({3}, 2)), b.state("m", rand64({3}, 3)),
                 b.constant("lr", Tensor::scalar(DType::kFloat64, 0.1)), b.constant("step", Tensor::from_i64({1}, {}))},
         a, kGalvatronDomain, 0);
  EXPECT_FALSE(b.status.is_ok());
  EXPECT_NE(b.status.message().find("shard_offset"), std::string::npos) << b.status.message();
}

}  // namespace
}  // namespace gv::testing
