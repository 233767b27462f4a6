// The ONNX importer: tensor payloads and external data, shape specialization, topological order, local functions,
// constant folding, initializer classification. Uses the "gv.test" ops (importer/importer_test_ops.h) so that it
// does not depend on the ONNX op families; the fixture classification test needs no op at all.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/scratch_dir.h"
#include "importer/constant_folding.h"
#include "importer/importer_test_ops.h"
#include "importer/onnx_importer.h"
#include "importer/onnx_model_writer.h"
#include "importer/onnx_proto_reader.h"
#include "runtime/executor.h"

namespace gv {
namespace {

namespace fs = std::filesystem;
using namespace onnx_writer;
using testing::kTestDomain;

class ImporterTest : public testing::ScratchDirTest {
 protected:
  void SetUp() override {
    testing::ScratchDirTest::SetUp();
    testing::register_importer_test_ops();
  }
  std::string save_model(const onnx::ModelProto& m, const std::string& name = "model.onnx") {
    std::string p = path(name);
    EXPECT_TRUE(save(m, p));
    return p;
  }
};

onnx::ModelProto test_model(int opset = 20) {
  onnx::ModelProto m = make_model(opset);
  add_opset(m, kTestDomain, 1);
  return m;
}

std::vector<float> floats_of(const Tensor& t) {
  Tensor f = t.cast(DType::kFloat32);
  return std::vector<float>(f.data_as<float>(), f.data_as<float>() + f.numel());
}

Expected<std::map<std::string, Tensor>> run_graph(const Graph& g, const std::map<std::string, Tensor>& feeds) {
  auto backend = make_cpu_backend();
  auto ex = Executor::create(g, *backend);
  if (!ex) return ex.status();
  GV_RETURN_IF_ERROR((*ex)->set_inputs(feeds));
  GV_RETURN_IF_ERROR((*ex)->run());
  std::map<std::string, Tensor> out;
  for (ValueId o : g.outputs) {
    auto t = (*ex)->fetch(o);
    if (!t) return t.status();
    out[g.value(o).name] = *t;
  }
  return out;
}

TEST_F(ImporterTest, TensorPayloadForms) {
  using onnx_import::tensor_from_proto;
  onnx_import::TensorSource src{dir_.string(), "test.onnx"};
  auto make = [](int type, std::vector<int64_t> dims) {
    onnx::TensorProto t;
    t.set_name("t");
    t.set_data_type(type);
    for (int64_t d : dims) t.add_dims(d);
    return t;
  };
  {  // raw_data
    auto t = make_float_tensor("w", {2}, {1.5f, -2.0f});
    auto r = tensor_from_proto(t, src);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(floats_of(*r), (std::vector<float>{1.5f, -2.0f}));
  }
  {  // float_data
    auto t = make(onnx::TensorProto_DataType_FLOAT, {3});
    for (float v : {1.f, 2.f, 3.f}) t.add_float_data(v);
    auto r = tensor_from_proto(t, src);
    ASSERT_TRUE(r);
    EXPECT_EQ(floats_of(*r), (std::vector<float>{1, 2, 3}));
  }
  {  // int64_data
    auto t = make(onnx::TensorProto_DataType_INT64, {2});
    t.add_int64_data(-7);
    t.add_int64_data(1LL << 40);
    auto r = tensor_from_proto(t, src);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->dtype(), DType::kInt64);
    EXPECT_EQ(r->to_i64_vector(), (std::vector<int64_t>{-7, 1LL << 40}));
  }
  {  // double_data
    auto t = make(onnx::TensorProto_DataType_DOUBLE, {});
    t.add_double_data(0.25);
    auto r = tensor_from_proto(t, src);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->dtype(), DType::kFloat64);
    EXPECT_EQ(r->scalar_f64(), 0.25);
  }
  // int32_data holds int32, int8, uint8, bool, float16 and bfloat16.
  struct Case {
    int type;
    DType dtype;
    std::vector<int32_t> data;
    std::vector<double> expect;
  };
  std::vector<Case> cases = {
      {onnx::TensorProto_DataType_INT32, DType::kInt32, {-3, 4}, {-3, 4}},
      {onnx::TensorProto_DataType_INT8, DType::kInt8, {-128, 127}, {-128, 127}},
      {onnx::TensorProto_DataType_UINT8, DType::kUInt8, {0, 255}, {0, 255}},
      {onnx::TensorProto_DataType_BOOL, DType::kBool, {1, 0}, {1, 0}},
      {onnx::TensorProto_DataType_FLOAT16, DType::kFloat16, {0x3c00, 0xc000}, {1.0, -2.0}},
      {onnx::TensorProto_DataType_BFLOAT16, DType::kBFloat16, {0x3f80, 0x4040}, {1.0, 3.0}},
  };
  for (const Case& c : cases) {
    auto t = make(c.type, {2});
    for (int32_t v : c.data) t.add_int32_data(v);
    auto r = tensor_from_proto(t, src);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(r->dtype(), c.dtype);
    for (int i = 0; i < 2; ++i) EXPECT_EQ(r->scalar_f64(i), c.expect[i]) << dtype_name(c.dtype);
  }
  {  // empty tensor
    auto r = tensor_from_proto(make(onnx::TensorProto_DataType_FLOAT, {0, 3}), src);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->numel(), 0);
  }
  {  // wrong number of values
    auto t = make(onnx::TensorProto_DataType_FLOAT, {3});
    t.add_float_data(1);
    auto r = tensor_from_proto(t, src);
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("'t'"), std::string::npos) << r.status().message();
  }
  {  // raw_data of the wrong size
    auto t = make(onnx::TensorProto_DataType_FLOAT, {3});
    t.set_raw_data(std::string(5, '\0'));
    EXPECT_FALSE(tensor_from_proto(t, src));
  }
  {  // strings are not supported
    auto t = make(onnx::TensorProto_DataType_STRING, {1});
    t.add_string_data("x");
    auto r = tensor_from_proto(t, src);
    ASSERT_FALSE(r);
    EXPECT_NE(r.status().message().find("STRING"), std::string::npos) << r.status().message();
  }
}

TEST_F(ImporterTest, ReadTensorProtoFile) {
  auto t = make_float_tensor("x", {2, 2}, {1, 2, 3, 4});
  ASSERT_TRUE(save(t, path("input_0.pb")));
  auto r = read_tensor_proto_file(path("input_0.pb"));
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ(r->shape(), (Shape{2, 2}));
  EXPECT_EQ(floats_of(*r), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_FALSE(read_tensor_proto_file(path("missing.pb")));
}

TEST_F(ImporterTest, ExternalDataBesideTheModel) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2, 2});
  std::vector<float> w1 = {1, 2, 3, 4}, w2 = {10, 20, 30, 40};
  {
    std::ofstream f(path("weights.bin"), std::ios::binary);
    f.write("PAD!", 4);  // data at a non-zero offset
    f.write(reinterpret_cast<const char*>(w1.data()), 16);
    f.write(reinterpret_cast<const char*>(w2.data()), 16);
  }
  auto external = [&](const std::string& name, int64_t offset) {
    auto* t = m.mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto_DataType_FLOAT);
    t->add_dims(2);
    t->add_dims(2);
    t->set_data_location(onnx::TensorProto_DataLocation_EXTERNAL);
    auto* kv = t->add_external_data();
    kv->set_key("location");
    kv->set_value("weights.bin");
    kv = t->add_external_data();
    kv->set_key("offset");
    kv->set_value(std::to_string(offset));
    kv = t->add_external_data();
    kv->set_key("length");
    kv->set_value("16");
  };
  external("layer.weight", 4);
  external("layer.bias", 20);
  add_node(m, "TestAdd", {"x", "layer.weight"}, {"h"}, "add1", kTestDomain);
  add_node(m, "TestAdd", {"h", "layer.bias"}, {"y"}, "add2", kTestDomain);
  add_output(m, "y");
  auto model = import_onnx(save_model(m));
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  ASSERT_NE(g.find("layer.weight"), kNoValue);
  EXPECT_EQ(g.value(g.find("layer.weight")).kind, ValueKind::kParameter);
  EXPECT_EQ(floats_of(g.value(g.find("layer.bias")).data), w2);
  auto out = run_graph(g, {{"x", Tensor::from_f32({0, 0, 1, 1}, {2, 2})}});
  ASSERT_TRUE(out) << out.status().message();
  EXPECT_EQ(floats_of(out->at("y")), (std::vector<float>{11, 22, 34, 45}));
}

TEST_F(ImporterTest, BuildsFoldsAndRuns) {
  onnx::ModelProto m = test_model(17);
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {"batch", "seq"});
  add_float_initializer(m, "c1", {2, 3}, {1, 2, 3, 4, 5, 6});
  add_float_initializer(m, "c2", {2, 3}, {1, 1, 1, 1, 1, 1});  // all equal, generic name: a constant
  auto* k = add_node(m, "Constant", {}, {"c3"}, "const");
  auto* attr = k->add_attribute();
  attr->set_name("value");
  attr->set_type(onnx::AttributeProto_AttributeType_TENSOR);
  *attr->mutable_t() = make_float_tensor("", {2, 3}, {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f});
  add_node(m, "TestAdd", {"c2", "c3"}, {"folded"}, "fold_me", kTestDomain);  // constant + constant: folds
  add_node(m, "TestAdd", {"x", "folded"}, {"y"}, "keep_me", kTestDomain);
  auto* s = add_node(m, "TestScale", {"folded"}, {"k"}, "scale", kTestDomain);  // a constant graph output
  set_attr_float(s, "alpha", 2.0f);
  add_node(m, "TestAdd", {"x", "x"}, {"dead"}, "dead_node", kTestDomain);  // pruned
  add_output(m, "y");
  add_output(m, "k");
  ImportOptions opt;
  opt.batch = 2;
  opt.seq = 3;
  auto model = import_onnx(save_model(m), opt);
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  ASSERT_EQ(g.nodes.size(), 1u);
  EXPECT_EQ(g.nodes[0].name, "keep_me");
  EXPECT_EQ(g.nodes[0].domain, kTestDomain);
  EXPECT_EQ(g.nodes[0].opset, 1);
  EXPECT_EQ(model->opsets.at(""), 17);
  EXPECT_EQ(model->onnx_node_count, 5);
  EXPECT_EQ(g.find("dead"), kNoValue);
  EXPECT_EQ(g.find("c1"), kNoValue);  // unused initializer pruned
  ASSERT_EQ(g.inputs.size(), 1u);
  EXPECT_EQ(g.value(g.inputs[0]).shape, (Shape{2, 3}));
  ASSERT_EQ(g.outputs.size(), 2u);
  const Value& kv = g.value(g.outputs[1]);
  EXPECT_EQ(kv.kind, ValueKind::kConstant);
  EXPECT_EQ(floats_of(kv.data), std::vector<float>(6, 3.0f));
  auto out = run_graph(g, {{"x", Tensor::from_f32({0, 1, 2, 3, 4, 5}, {2, 3})}});
  ASSERT_TRUE(out) << out.status().message();
  EXPECT_EQ(floats_of(out->at("y")), (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f}));
  EXPECT_EQ(floats_of(out->at("k")), std::vector<float>(6, 3.0f));

  // Without folding every node stays.
  opt.fold_constants = false;
  auto unfolded = import_onnx(path("model.onnx"), opt);
  ASSERT_TRUE(unfolded) << unfolded.status().message();
  EXPECT_EQ(unfolded->graph.nodes.size(), 3u);
}

TEST_F(ImporterTest, NodesWithoutCpuKernelAreNotFolded) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2});
  add_float_initializer(m, "c", {2}, {1, 1});
  add_node(m, "TestNoKernel", {"c"}, {"n"}, "nk", kTestDomain);
  add_node(m, "TestAdd", {"x", "n"}, {"y"}, "add", kTestDomain);
  add_output(m, "y");
  auto model = import_onnx(save_model(m));
  ASSERT_TRUE(model) << model.status().message();
  EXPECT_EQ(model->graph.nodes.size(), 2u);
}

TEST_F(ImporterTest, ShapeAndSizeFoldFromStaticShapes) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {"b", "s", "hidden"});
  add_node(m, "Shape", {"x"}, {"shape"}, "shape");
  auto* sl = add_node(m, "Shape", {"x"}, {"tail"}, "shape_tail");
  set_attr_int(sl, "start", -2);
  add_node(m, "Size", {"x"}, {"size"}, "size");
  add_output(m, "shape", onnx::TensorProto_DataType_INT64);
  add_output(m, "tail", onnx::TensorProto_DataType_INT64);
  add_output(m, "size", onnx::TensorProto_DataType_INT64);
  ImportOptions opt;
  opt.batch = 2;
  opt.seq = 5;
  opt.dims["hidden"] = 7;
  auto model = import_onnx(save_model(m), opt);
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  EXPECT_TRUE(g.nodes.empty());
  EXPECT_EQ(g.value(g.outputs[0]).data.to_i64_vector(), (std::vector<int64_t>{2, 5, 7}));
  EXPECT_EQ(g.value(g.outputs[1]).data.to_i64_vector(), (std::vector<int64_t>{5, 7}));
  EXPECT_EQ(g.value(g.outputs[2]).data.scalar_i64(), 70);
  ASSERT_EQ(g.inputs.size(), 1u);  // the input stays, even unused
  auto out = run_graph(g, {{"x", Tensor(DType::kFloat32, {2, 5, 7})}});
  ASSERT_TRUE(out) << out.status().message();
  EXPECT_EQ(out->at("shape").to_i64_vector(), (std::vector<int64_t>{2, 5, 7}));

  // input_shapes overrides everything.
  opt.input_shapes["x"] = {1, 1, 3};
  model = import_onnx(path("model.onnx"), opt);
  ASSERT_TRUE(model) << model.status().message();
  EXPECT_EQ(model->graph.value(model->graph.outputs[2]).data.scalar_i64(), 3);

  // A dynamic sequence dim needs --seq; an unknown named dim needs --dim.
  ImportOptions no_seq;
  no_seq.dims["hidden"] = 7;
  auto r = import_onnx(path("model.onnx"), no_seq);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("--seq"), std::string::npos) << r.status().message();
  ImportOptions no_hidden;
  no_hidden.seq = 4;
  r = import_onnx(path("model.onnx"), no_hidden);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("'hidden'"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("'x'"), std::string::npos) << r.status().message();
}

TEST_F(ImporterTest, UnorderedNodesAreSorted) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {3});
  add_node(m, "TestAdd", {"b", "a"}, {"y"}, "last", kTestDomain);
  auto* s = add_node(m, "TestScale", {"a"}, {"b"}, "middle", kTestDomain);
  set_attr_float(s, "alpha", 3.0f);
  add_node(m, "TestAdd", {"x", "x"}, {"a"}, "first", kTestDomain);
  add_output(m, "y");
  auto model = import_onnx(save_model(m));
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  ASSERT_EQ(g.nodes.size(), 3u);
  EXPECT_EQ(g.nodes[0].name, "first");
  EXPECT_EQ(g.nodes[1].name, "middle");
  EXPECT_EQ(g.nodes[2].name, "last");
  auto out = run_graph(g, {{"x", Tensor::from_f32({1, 2, 3}, {3})}});
  ASSERT_TRUE(out) << out.status().message();
  EXPECT_EQ(floats_of(out->at("y")), (std::vector<float>{8, 16, 24}));
}

TEST_F(ImporterTest, LocalFunctionsAreInlined) {
  onnx::ModelProto m = test_model();
  // Twice(a; scale) = TestScale(a, alpha=scale) + a
  auto* twice = m.add_functions();
  twice->set_name("Twice");
  twice->set_domain("gv.local");
  twice->add_input("a");
  twice->add_output("b");
  twice->add_attribute("scale");
  {
    auto* op = twice->add_opset_import();
    op->set_domain(kTestDomain);
    op->set_version(1);
    auto* n = twice->add_node();
    n->set_op_type("TestScale");
    n->set_domain(kTestDomain);
    n->add_input("a");
    n->add_output("t");
    set_attr_ref(n, "alpha", "scale", onnx::AttributeProto_AttributeType_FLOAT);
    n = twice->add_node();
    n->set_op_type("TestAdd");
    n->set_domain(kTestDomain);
    n->add_input("t");
    n->add_input("a");
    n->add_output("b");
  }
  // Quad(a; factor) = Twice(Twice(a; factor); default 10): nested calls and a default attribute (ONNX 1.13's
  // FunctionProto.attribute_proto, field 11).
  auto* quad = m.add_functions();
  quad->set_name("Quad");
  quad->set_domain("gv.local");
  quad->add_input("a");
  quad->add_output("b");
  quad->add_attribute("factor");
  {
    auto* op = quad->add_opset_import();
    op->set_domain("gv.local");
    op->set_version(1);
    auto* n = quad->add_node();
    n->set_op_type("Twice");
    n->set_domain("gv.local");
    n->add_input("a");
    n->add_output("t");  // same internal name as in Twice: must be renamed apart
    set_attr_ref(n, "scale", "factor", onnx::AttributeProto_AttributeType_FLOAT);
    n = quad->add_node();
    n->set_op_type("Twice");
    n->set_domain("gv.local");
    n->add_input("t");
    n->add_output("b");
    set_attr_ref(n, "scale", "offset", onnx::AttributeProto_AttributeType_FLOAT);
    onnx::AttributeProto dflt;
    dflt.set_name("offset");
    dflt.set_type(onnx::AttributeProto_AttributeType_FLOAT);
    dflt.set_f(10.0f);
    quad->GetReflection()->MutableUnknownFields(quad)->AddLengthDelimited(11, dflt.SerializeAsString());
  }
  add_opset(m, "gv.local", 1);
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2});
  auto* call = add_node(m, "Quad", {"x"}, {"y"}, "call", "gv.local");
  set_attr_float(call, "factor", 2.0f);
  add_output(m, "y");
  auto model = import_onnx(save_model(m));
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  EXPECT_EQ(g.nodes.size(), 4u);
  EXPECT_EQ(model->onnx_node_count, 4);
  for (const Node& n : g.nodes) EXPECT_EQ(n.domain, kTestDomain);
  // x * (2 + 1) = 3x, then 3x * (10 + 1) = 33x.
  auto out = run_graph(g, {{"x", Tensor::from_f32({1, 2}, {2})}});
  ASSERT_TRUE(out) << out.status().message();
  EXPECT_EQ(floats_of(out->at("y")), (std::vector<float>{33, 66}));
}

TEST_F(ImporterTest, InputsThatAreInitializersAreInitializers) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2});
  add_input(m, "dense.weight", onnx::TensorProto_DataType_FLOAT, {2});  // old IR lists initializers as inputs
  add_float_initializer(m, "dense.weight", {2}, {0.5f, 0.25f});
  add_node(m, "TestAdd", {"x", "dense.weight"}, {"y"}, "add", kTestDomain);
  add_output(m, "y");
  auto model = import_onnx(save_model(m));
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  ASSERT_EQ(g.inputs.size(), 1u);
  EXPECT_EQ(g.value(g.inputs[0]).name, "x");
  EXPECT_EQ(g.value(g.find("dense.weight")).kind, ValueKind::kParameter);
  EXPECT_EQ(g.parameters().size(), 1u);
}

TEST_F(ImporterTest, ConstantInputsAreBoundAndFolded) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2});
  add_input(m, "c", onnx::TensorProto_DataType_FLOAT, {2});
  add_node(m, "TestAdd", {"c", "c"}, {"cc"}, "fold", kTestDomain);
  add_node(m, "TestAdd", {"x", "cc"}, {"y"}, "add", kTestDomain);
  add_output(m, "y");
  ImportOptions opt;
  opt.constant_inputs["c"] = Tensor::from_f32({1, 2}, {2});
  auto model = import_onnx(save_model(m), opt);
  ASSERT_TRUE(model) << model.status().message();
  EXPECT_EQ(model->graph.inputs.size(), 1u);
  EXPECT_EQ(model->graph.nodes.size(), 1u);
  EXPECT_TRUE(model->graph.parameters().empty());
}

TEST_F(ImporterTest, AllowUnsupportedListsEveryUnsupportedNode) {
  onnx::ModelProto m = test_model();
  add_opset(m, "com.example", 1);
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2});
  add_node(m, "TestAdd", {"x", "x"}, {"a"}, "ok", kTestDomain);
  add_node(m, "Frobnicate", {"a"}, {"b"}, "frob");
  add_node(m, "Custom", {"b"}, {"y"}, "custom", "com.example");
  add_output(m, "y");
  const std::string p = save_model(m);
  auto strict = import_onnx(p);
  ASSERT_FALSE(strict);
  EXPECT_EQ(strict.status().code(), StatusCode::kUnsupported);
  ImportOptions opt;
  opt.allow_unsupported = true;
  auto model = import_onnx(p, opt);
  ASSERT_TRUE(model) << model.status().message();
  EXPECT_TRUE(model->partial);
  ASSERT_EQ(model->unsupported_ops.size(), 2u);
  EXPECT_NE(model->unsupported_ops[0].find("Frobnicate"), std::string::npos);
  EXPECT_NE(model->unsupported_ops[0].find("'frob'"), std::string::npos);
  EXPECT_NE(model->unsupported_ops[1].find("com.example"), std::string::npos);
  EXPECT_EQ(model->graph.nodes.size(), 1u);
}

TEST_F(ImporterTest, ConstantNodeForms) {
  Node n;
  n.name = "c";
  n.op_type = "Constant";
  n.attrs.set_ints("value_ints", {3, -1});
  auto t = onnx_import::constant_node_value(n);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->dtype(), DType::kInt64);
  EXPECT_EQ(t->to_i64_vector(), (std::vector<int64_t>{3, -1}));
  n.attrs = Attributes();
  n.attrs.set_float("value_float", 2.5);
  t = onnx_import::constant_node_value(n);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->rank(), 0);
  EXPECT_EQ(t->scalar_f64(), 2.5);
  n.attrs = Attributes();
  n.attrs.set_int("value_int", 7);
  t = onnx_import::constant_node_value(n);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->scalar_i64(), 7);
  n.attrs = Attributes();
  n.attrs.set_floats("value_floats", {1, 2});
  t = onnx_import::constant_node_value(n);
  ASSERT_TRUE(t);
  EXPECT_EQ(floats_of(*t), (std::vector<float>{1, 2}));
  n.attrs = Attributes();
  n.attrs.set_string("value_string", "x");
  EXPECT_FALSE(onnx_import::constant_node_value(n));
}

TEST_F(ImporterTest, ImportsFromMemory) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2});
  add_float_initializer(m, "layer.weight", {2}, {1, 2});
  add_node(m, "TestAdd", {"x", "layer.weight"}, {"y"}, "add", kTestDomain);
  add_output(m, "y");
  auto model = import_onnx_model(m, {}, dir_.string(), "generated");
  ASSERT_TRUE(model) << model.status().message();
  EXPECT_EQ(model->graph.nodes.size(), 1u);
  EXPECT_EQ(model->graph.parameters().size(), 1u);
  m.mutable_graph()->mutable_node(0)->set_input(1, "missing");
  auto bad = import_onnx_model(m, {}, dir_.string(), "generated");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("'generated'"), std::string::npos) << bad.status().message();
}

TEST_F(ImporterTest, InitializerClassificationRules) {
  onnx::ModelProto m = test_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2, 2});
  add_float_initializer(m, "val_fill", {2, 2}, {0, 0, 0, 0});           // a fill: constant
  add_float_initializer(m, "val_zero_weight", {2, 2}, {0, 0, 0, 0});    // zero-initialized linear weight: parameter
  add_float_initializer(m, "val_random", {2, 2}, {0.1f, -0.2f, 0.3f, 0.05f});  // renamed weight: parameter
  add_float_initializer(m, "val_scalar", {}, {2.0f});                     // scalar: constant
  add_float_initializer(m, "val_shape_only", {2, 2}, {1, 2, 3, 4});       // read only by Shape: constant
  add_float_initializer(m, "rotary.inv_freq", {2, 2}, {1, 0.5f, 0.25f, 0.125f});  // a known buffer: constant
  add_float_initializer(m, "val_mask", {2, 2}, {0, -3.4e38f, 0, 0});      // a mask: constant
  add_float_initializer(m, "block.scale", {}, {1.0f});                    // named like a weight: parameter
  add_float_initializer(m, "val_table", {2, 2}, {1, 2, 3, 5});            // combined with constants only: constant
  add_float_initializer(m, "val_other", {2, 2}, {2, 1, 1, 1});
  add_node(m, "TestAdd", {"x", "val_fill"}, {"a"}, "", kTestDomain);
  add_node(m, "MatMul", {"a", "val_zero_weight"}, {"b"});
  add_node(m, "TestAdd", {"b", "val_random"}, {"c"}, "", kTestDomain);
  add_node(m, "Mul", {"c", "val_scalar"}, {"d"});
  add_node(m, "Shape", {"val_shape_only"}, {"s"});
  add_node(m, "Reshape", {"d", "s"}, {"e"});
  add_node(m, "TestAdd", {"e", "rotary.inv_freq"}, {"f"}, "", kTestDomain);
  add_node(m, "TestAdd", {"f", "val_mask"}, {"g"}, "", kTestDomain);
  add_node(m, "Mul", {"g", "block.scale"}, {"h"});
  add_node(m, "TestAdd", {"val_table", "val_other"}, {"table"}, "", kTestDomain);
  add_node(m, "TestAdd", {"h", "table"}, {"y"}, "", kTestDomain);
  add_output(m, "y");
  auto params = onnx_parameter_names(save_model(m));
  ASSERT_TRUE(params) << params.status().message();
  EXPECT_EQ(*params, (std::set<std::string>{"val_zero_weight", "val_random", "block.scale"}));
}

TEST_F(ImporterTest, TiedWeightsReadOneParameter) {
  onnx::ModelProto m = test_model();
  add_input(m, "ids", onnx::TensorProto_DataType_INT64, {3});
  std::vector<float> emb = {0.1f, -0.2f, 0.3f, 0.4f, -0.5f, 0.6f};  // [3, 2]
  add_float_initializer(m, "embed.weight", {3, 2}, emb);
  add_float_initializer(m, "onnx::MatMul_9", {2, 3}, {0.1f, 0.3f, -0.5f, -0.2f, 0.4f, 0.6f});  // embed.weight^T
  add_float_initializer(m, "ln_a.weight", {2}, {1, 1});  // equal to ln_b.weight, but not tied
  add_float_initializer(m, "ln_b.weight", {2}, {1, 1});
  add_node(m, "Gather", {"embed.weight", "ids"}, {"h"}, "gather");
  add_node(m, "Mul", {"h", "ln_a.weight"}, {"h1"}, "ln_a");
  add_node(m, "Mul", {"h1", "ln_b.weight"}, {"h2"}, "ln_b");
  add_node(m, "MatMul", {"h2", "onnx::MatMul_9"}, {"logits"}, "head");
  add_output(m, "logits");
  const std::string p = save_model(m);
  auto model = import_onnx(p);
  ASSERT_TRUE(model) << model.status().message();
  const Graph& g = model->graph;
  ASSERT_EQ(model->tied_parameters.size(), 1u);
  EXPECT_EQ(model->tied_parameters.at("onnx::MatMul_9").parameter, "embed.weight");
  EXPECT_TRUE(model->tied_parameters.at("onnx::MatMul_9").transposed);
  std::set<std::string> names;
  for (ValueId v : g.parameters()) names.insert(g.value(v).name);
  EXPECT_EQ(names, (std::set<std::string>{"embed.weight", "ln_a.weight", "ln_b.weight"}));
  ASSERT_NE(g.find("onnx::MatMul_9"), kNoValue);
  EXPECT_EQ(g.value(g.find("onnx::MatMul_9")).kind, ValueKind::kActivation);
  // Same result as the untied model.
  ImportOptions untied;
  untied.tie_weights = false;
  auto plain = import_onnx(p, untied);
  ASSERT_TRUE(plain) << plain.status().message();
  EXPECT_TRUE(plain->tied_parameters.empty());
  EXPECT_EQ(plain->graph.parameters().size(), 4u);
  std::map<std::string, Tensor> feeds = {{"ids", Tensor::from_i64({2, 0, 1}, {3})}};
  auto a = run_graph(g, feeds), b = run_graph(plain->graph, feeds);
  ASSERT_TRUE(a) << a.status().message();
  ASSERT_TRUE(b) << b.status().message();
  EXPECT_EQ(floats_of(a->at("logits")), floats_of(b->at("logits")));
}

// Every initializer that meta.json maps to an HF parameter is a parameter; the exporter's other initializers are
// constants, except `embedding_1` in gpt2_loss: the static-shape export folded the position embedding's first 32 rows
// into it, so it is the trainable position embedding (what PyTorch updates in `transformer.wpe.weight`).
//
// bert_opset14 stores the tied word embedding twice (the TorchScript exporter's transposed copy `onnx::MatMul_410` for
// the decoder's MatMul): with weight tying (the default) the copy reads the embedding and is not a parameter.
TEST_F(ImporterTest, InitializerClassificationMatchesFixtures) {
  const std::set<std::string> trainable_unmapped = {"gpt2_loss/embedding_1"};
  const std::set<std::string> tied_copies = {"bert_opset14/onnx::MatMul_410"};
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(GV_FIXTURES_DIR)) {
    const std::string name = entry.path().filename().string();
    if (!fs::exists(entry.path() / "model.onnx")) continue;
    std::ifstream mf(entry.path() / "meta.json");
    nlohmann::json meta = nlohmann::json::parse(mf);
    auto params = onnx_parameter_names((entry.path() / "model.onnx").string());
    ASSERT_TRUE(params) << params.status().message();
    auto untied = onnx_parameter_names((entry.path() / "model.onnx").string(), false);
    ASSERT_TRUE(untied) << untied.status().message();
    size_t expected = 0;
    for (const auto& [onnx_name, info] : meta["initializers"].items()) {
      EXPECT_TRUE(untied->count(onnx_name)) << name << ": '" << onnx_name << "' (" << info["hf"] << ") is not a parameter";
      if (tied_copies.count(name + "/" + onnx_name)) {
        EXPECT_FALSE(params->count(onnx_name)) << name << ": '" << onnx_name << "' should be tied";
        continue;
      }
      EXPECT_TRUE(params->count(onnx_name)) << name << ": '" << onnx_name << "' (" << info["hf"] << ") is not a parameter";
      ++expected;
    }
    for (const auto& n : meta["unmapped_initializers"]) {
      const std::string s = n.get<std::string>();
      if (trainable_unmapped.count(name + "/" + s)) {
        EXPECT_TRUE(params->count(s)) << name << ": " << s;
        ++expected;
      } else {
        EXPECT_FALSE(params->count(s)) << name << ": '" << s << "' should be a constant";
      }
    }
    EXPECT_EQ(params->size(), expected) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

}  // namespace
}  // namespace gv
