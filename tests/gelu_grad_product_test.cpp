// galvatron GeluGradMatMul (runtime/ops/math_gelu_grad_product.cpp) on the CPU: the same dP and bias gradient as the
// chain it replaces (FusedMatMul -> GeluGrad -> Cast to bf16, ReduceSum), for every operand type, transB, both GELU
// forms and both output types; inference errors name the node and the problem. The pass that forms it is tested on
// whole models in tests/fusion_test.cpp (GeluGradProductSameGradients).
#include <gtest/gtest.h>

#include "runtime/graph.h"
#include "tests/op_test_util.h"

namespace gv {
namespace {

using testing::randn_f32;
using testing::relative_gap;

struct Case {
  Shape x, w;
  bool tb = false, tanh = true, bf16_out = true, bf16_pre = true, bf16_operands = false;
};

Tensor maybe_bf16(Tensor t, bool bf16) { return bf16 ? t.cast(DType::kBFloat16) : t; }

// Builds X, W, Pre inputs and either the fused node or the chain; returns {dP, dBias} as float32.
Expected<std::vector<Tensor>> run(const Case& c, bool fused, uint64_t seed) {
  Graph g;
  g.opsets[""] = 17;
  g.opsets[kGalvatronDomain] = 1;
  const int64_t n = c.tb ? c.w[0] : c.w[1];
  Shape out = c.x;
  out.back() = n;
  const DType op_t = c.bf16_operands ? DType::kBFloat16 : DType::kFloat32;
  const DType pre_t = c.bf16_pre ? DType::kBFloat16 : DType::kFloat32;
  const ValueId x = g.add_input("x", op_t, c.x), w = g.add_input("w", op_t, c.w), pre = g.add_input("pre", pre_t, out);
  Attributes mm;
  mm.set_int("transB", c.tb);
  std::vector<std::string> names = {"dp", "db"};
  if (fused) {
    Node f{"f", "GeluGradMatMul", kGalvatronDomain, 1, mm, {x, w, pre}, {}, {}};
    f.attrs.set_string("approximate", c.tanh ? "tanh" : "none");
    f.attrs.set_int("out_dtype", c.bf16_out ? 16 : 1);
    GV_ASSIGN_OR_RETURN(auto outs, g.add_node(f, names));
    g.outputs = outs;
  } else {
    Node m{"m", "FusedMatMul", kGalvatronDomain, 1, mm, {x, w}, {}, {}};
    m.attrs.set_int("out_dtype", 1);
    GV_ASSIGN_OR_RETURN(auto dh, g.add_node(m));
    Attributes ga;
    ga.set_string("approximate", c.tanh ? "tanh" : "none");
    GV_ASSIGN_OR_RETURN(auto dp, g.add_node(Node{"gg", "GeluGrad", kGalvatronDomain, 1, ga, {dh[0], pre}, {}, {}}));
    ValueId dp_out = dp[0];
    if (c.bf16_out) {
      Attributes to;
      to.set_int("to", 16);
      GV_ASSIGN_OR_RETURN(auto cast, g.add_node(Node{"cast", "Cast", "", 17, to, {dp[0]}, {}, {}}));
      dp_out = cast[0];
    }
    std::vector<int64_t> axes;
    for (size_t i = 0; i + 1 < out.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    const ValueId ax = g.add_initializer("axes", Tensor::from_i64(axes, {static_cast<int64_t>(axes.size())}),
                                         ValueKind::kConstant);
    const ValueId shape = g.add_initializer("shape", Tensor::from_i64({n}, {1}), ValueKind::kConstant);
    GV_ASSIGN_OR_RETURN(auto sum, g.add_node(Node{"sum", "ReduceSum", "", 17, {}, {dp[0], ax}, {}, {}}));
    GV_ASSIGN_OR_RETURN(auto db, g.add_node(Node{"flat", "Reshape", "", 17, {}, {sum[0], shape}, {}, {}}));
    g.outputs = {dp_out, db[0]};
  }
  GV_ASSIGN_OR_RETURN(auto res, testing::run_graph(g, {{"x", maybe_bf16(randn_f32(c.x, seed), c.bf16_operands)},
                                                        {"w", maybe_bf16(randn_f32(c.w, seed + 1), c.bf16_operands)},
                                                        {"pre", maybe_bf16(randn_f32(out, seed + 2), c.bf16_pre)}}));
  for (Tensor& t : res) t = t.cast(DType::kFloat32);
  return res;
}

TEST(GeluGradMatMul, EqualsTheChainItReplaces) {
  std::vector<Case> cases;
  for (bool tb : {false, true}) {
    for (bool tanh : {true, false}) {
      for (bool bf16_out : {true, false}) {
        Case c;
        c.x = {2, 7, 12};
        c.w = tb ? Shape{20, 12} : Shape{12, 20};
        c.tb = tb, c.tanh = tanh, c.bf16_out = bf16_out, c.bf16_pre = bf16_out;
        cases.push_back(c);
      }
    }
  }
  cases.push_back({{9, 16}, {16, 24}, false, true, true, false, true});  // bf16 operands, float32 Pre
  cases.push_back({{3, 5, 16}, {24, 16}, true, true, false, true, true});  // float32 dP, bf16 Pre
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE("case " + std::to_string(i) + (c.tb ? " transB" : "") + (c.tanh ? " tanh" : " erf") +
                 (c.bf16_out ? " bf16 dP" : " float32 dP"));
    auto fused = run(c, true, 10 * i);
    ASSERT_TRUE(fused.has_value()) << fused.status().message();
    auto chain = run(c, false, 10 * i);
    ASSERT_TRUE(chain.has_value()) << chain.status().message();
    // dP: the same float32 values, rounded the same way.
    EXPECT_EQ(relative_gap((*fused)[0], (*chain)[0], 0.0), 0.0);
    // dBias: column sums of the float32 dP, in double against ReduceSum's float order.
    EXPECT_LE(relative_gap((*fused)[1], (*chain)[1]), 1e-5);
  }
}

TEST(GeluGradMatMul, InferenceErrorsNameTheProblem) {
  struct Bad {
    Shape x, w, pre;
    std::string approximate;
    int64_t out_dtype;
    std::string needle;
  };
  for (const Bad& b : std::vector<Bad>{{{4, 8}, {8, 6}, {4, 5}, "tanh", 1, "Pre [4,5] must have 6 columns and 4 rows"},
                                       {{4, 8}, {7, 6}, {4, 6}, "tanh", 1, "has 8 columns"},
                                       {{4, 8}, {8, 6}, {4, 6}, "fast", 1, "approximate must be none or tanh"},
                                       {{4, 8}, {8, 6}, {4, 6}, "tanh", 10, "out_dtype must be 1"}}) {
    SCOPED_TRACE(b.needle);
    Graph g;
    g.opsets[kGalvatronDomain] = 1;
    Node f{"my_node", "GeluGradMatMul", kGalvatronDomain, 1, {},
           {g.add_input("x", DType::kFloat32, b.x), g.add_input("w", DType::kFloat32, b.w),
            g.add_input("pre", DType::kFloat32, b.pre)},
           {}, {}};
    f.attrs.set_string("approximate", b.approximate);
    f.attrs.set_int("out_dtype", b.out_dtype);
    auto r = g.add_node(f);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.status().message().find("my_node"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(b.needle), std::string::npos) << r.status().message();
  }
}

}  // namespace
}  // namespace gv
