// The importer's error paths: every broken input gives a Status whose message names the file, node, op or value
// concerned, and nothing crashes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "tests/scratch_dir.h"
#include "importer/importer_test_ops.h"
#include "importer/onnx_importer.h"
#include "importer/onnx_model_writer.h"
#include "runtime/executor.h"

namespace gv {
namespace {

namespace fs = std::filesystem;
using namespace onnx_writer;
using testing::kTestDomain;

class ImporterErrors : public testing::ScratchDirTest {
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
  void write_bytes(const std::string& p, const std::string& bytes) {
    std::ofstream f(p, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  // Imports and expects a failure whose message contains every one of `words`.
  Status expect_error(const std::string& p, const std::vector<std::string>& words, const ImportOptions& opt = {}) {
    auto r = import_onnx(p, opt);
    EXPECT_FALSE(r.has_value()) << "import of " << p << " should fail";
    if (r.has_value()) return Status::ok();
    for (const std::string& w : words) {
      EXPECT_NE(r.status().message().find(w), std::string::npos)
          << "message does not mention \"" << w << "\": " << r.status().message();
    }
    return r.status();
  }
};

// x -> TestAdd(x, w) -> y, valid.
onnx::ModelProto valid_model(int opset = 20) {
  onnx::ModelProto m = make_model(opset);
  add_opset(m, kTestDomain, 1);
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2, 3});
  add_float_initializer(m, "w", {2, 3}, {1, 2, 3, 4, 5, 6});
  add_node(m, "TestAdd", {"x", "w"}, {"y"}, "add", kTestDomain);
  add_output(m, "y");
  return m;
}

TEST_F(ImporterErrors, MissingFile) {
  Status st = expect_error(path("nope.onnx"), {path("nope.onnx"), "does not exist"});
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  expect_error(dir_.string(), {"directory"});
}

TEST_F(ImporterErrors, EmptyFile) {
  write_bytes(path("empty.onnx"), "");
  expect_error(path("empty.onnx"), {path("empty.onnx"), "empty"});
}

TEST_F(ImporterErrors, GarbageBytes) {
  std::mt19937 rng(42);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  write_bytes(path("garbage.onnx"), bytes);
  expect_error(path("garbage.onnx"), {path("garbage.onnx")});
  write_bytes(path("text.onnx"), "this is not an onnx model\n");
  expect_error(path("text.onnx"), {path("text.onnx")});
}

TEST_F(ImporterErrors, TruncatedFile) {
  // A real model (the gpt2 fixture) cut at many points: every cut is an error naming the file.
  std::ifstream f(std::string(GV_FIXTURES_DIR) + "/gpt2/model.onnx", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 1000u);
  for (double frac : {0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999}) {
    const size_t n = static_cast<size_t>(bytes.size() * frac);
    write_bytes(path("cut.onnx"), bytes.substr(0, n));
    expect_error(path("cut.onnx"), {path("cut.onnx")});
  }
  // And the small valid model, cut at every byte.
  std::string small = valid_model().SerializeAsString();
  for (size_t n = 0; n + 1 < small.size(); ++n) {
    write_bytes(path("cut.onnx"), small.substr(0, n));
    auto r = import_onnx(path("cut.onnx"));
    EXPECT_FALSE(r.has_value()) << "cut at " << n << " of " << small.size() << " bytes";
    if (!r) {
      EXPECT_NE(r.status().message().find(path("cut.onnx")), std::string::npos) << r.status().message();
    }
  }
}

TEST_F(ImporterErrors, UnsupportedOp) {
  onnx::ModelProto m = valid_model();
  add_node(m, "FrobnicateNotAnOp", {"y"}, {"z"}, "frob_node");
  m.mutable_graph()->mutable_output(0)->set_name("z");
  const std::string p = save_model(m);
  Status st = expect_error(p, {p, "node 'frob_node'", "FrobnicateNotAnOp", "domain ai.onnx", "opset 20",
                               "op is not supported", "Supported ops:"});
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
}

TEST_F(ImporterErrors, UnknownDomain) {
  onnx::ModelProto m = valid_model();
  add_opset(m, "com.microsoft", 1);
  add_node(m, "FusedMatMul", {"y", "y"}, {"z"}, "fused", "com.microsoft");
  m.mutable_graph()->mutable_output(0)->set_name("z");
  const std::string p = save_model(m);
  expect_error(p, {"node 'fused'", "FusedMatMul", "com.microsoft", "not supported"});
}

TEST_F(ImporterErrors, ControlFlow) {
  onnx::ModelProto m = valid_model();
  auto* n = add_node(m, "If", {"y"}, {"z"}, "branch");
  auto* a = n->add_attribute();
  a->set_name("then_branch");
  a->set_type(onnx::AttributeProto_AttributeType_GRAPH);
  a->mutable_g()->set_name("then");
  m.mutable_graph()->mutable_output(0)->set_name("z");
  const std::string p = save_model(m);
  expect_error(p, {"node 'branch'", "If", "subgraph"});
}

TEST_F(ImporterErrors, UnsupportedOpset) {
  for (int v : {11, 12, 24}) {
    const std::string p = save_model(valid_model(v), "opset" + std::to_string(v) + ".onnx");
    Status st = expect_error(p, {p, "opset " + std::to_string(v), "13..23"});
    EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  }
  // ai.onnx spelled out is the same domain.
  onnx::ModelProto m = valid_model();
  m.mutable_opset_import(0)->set_domain("ai.onnx");
  m.mutable_opset_import(0)->set_version(9);
  const std::string p = save_model(m, "ai_onnx.onnx");
  expect_error(p, {"opset 9"});
}

TEST_F(ImporterErrors, NoDefaultOpsetImport) {
  onnx::ModelProto m = valid_model();
  m.mutable_opset_import()->DeleteSubrange(0, 1);  // keeps gv.test only
  add_node(m, "Shape", {"y"}, {"s"}, "shape_node");
  m.mutable_graph()->mutable_output(0)->set_name("s");
  const std::string p = save_model(m);
  expect_error(p, {p, "shape_node", "no opset"});
}

onnx::TensorProto* external_initializer(onnx::ModelProto& m, const std::string& name, const std::string& file,
                                        int64_t offset) {
  auto* t = m.mutable_graph()->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto_DataType_FLOAT);
  t->add_dims(2);
  t->add_dims(3);
  t->set_data_location(onnx::TensorProto_DataLocation_EXTERNAL);
  auto* kv = t->add_external_data();
  kv->set_key("location");
  kv->set_value(file);
  kv = t->add_external_data();
  kv->set_key("offset");
  kv->set_value(std::to_string(offset));
  return t;
}

onnx::ModelProto external_model(const std::string& file, int64_t offset) {
  onnx::ModelProto m = make_model();
  add_opset(m, kTestDomain, 1);
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2, 3});
  external_initializer(m, "ext.weight", file, offset);
  add_node(m, "TestAdd", {"x", "ext.weight"}, {"y"}, "add", kTestDomain);
  add_output(m, "y");
  return m;
}

TEST_F(ImporterErrors, MissingExternalDataFile) {
  const std::string p = save_model(external_model("weights.bin", 0));
  Status st = expect_error(p, {p, path("weights.bin"), "ext.weight", "does not exist"});
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
}

TEST_F(ImporterErrors, ExternalDataTooShort) {
  write_bytes(path("weights.bin"), std::string(30, '\0'));  // 24 bytes needed from offset 8
  const std::string p = save_model(external_model("weights.bin", 8));
  expect_error(p, {p, path("weights.bin"), "ext.weight", "30 bytes"});
  // Enough bytes: loads.
  write_bytes(path("weights.bin"), std::string(32, '\0'));
  EXPECT_TRUE(import_onnx(p).has_value());
}

TEST_F(ImporterErrors, ExternalDataOutsideTheModelDirectory) {
  const std::string p = save_model(external_model("../elsewhere.bin", 0));
  expect_error(p, {"ext.weight", "../elsewhere.bin"});
  const std::string q = save_model(external_model("/etc/passwd", 0), "abs.onnx");
  expect_error(q, {"ext.weight", "absolute"});
}

TEST_F(ImporterErrors, DanglingInputName) {
  onnx::ModelProto m = valid_model();
  m.mutable_graph()->mutable_node(0)->set_input(1, "no_such_value");
  const std::string p = save_model(m);
  expect_error(p, {p, "node 'add'", "'no_such_value'", "dangling"});
}

TEST_F(ImporterErrors, DanglingGraphOutput) {
  onnx::ModelProto m = valid_model();
  add_output(m, "nowhere");
  const std::string p = save_model(m);
  expect_error(p, {p, "graph output 'nowhere'"});
}

TEST_F(ImporterErrors, DuplicatedOutput) {
  onnx::ModelProto m = valid_model();
  add_node(m, "TestAdd", {"x", "x"}, {"y"}, "second_add", kTestDomain);
  const std::string p = save_model(m);
  expect_error(p, {p, "'y'", "second_add", "add"});
  onnx::ModelProto m2 = valid_model();
  add_node(m2, "TestAdd", {"x", "x"}, {"w"}, "shadow", kTestDomain);  // same name as an initializer
  const std::string p2 = save_model(m2, "m2.onnx");
  expect_error(p2, {"'w'", "shadow", "initializer"});
  onnx::ModelProto m3 = valid_model();
  add_float_initializer(m3, "w", {1}, {0});
  const std::string p3 = save_model(m3, "m3.onnx");
  expect_error(p3, {"initializer 'w'", "twice"});
}

TEST_F(ImporterErrors, Cycle) {
  onnx::ModelProto m = valid_model();
  m.mutable_graph()->mutable_node(0)->set_input(0, "z");
  add_node(m, "TestAdd", {"y", "y"}, {"z"}, "loop_back", kTestDomain);
  const std::string p = save_model(m);
  expect_error(p, {p, "cycle"});
}

TEST_F(ImporterErrors, GraphWithoutNodes) {
  onnx::ModelProto m = make_model();
  add_input(m, "x", onnx::TensorProto_DataType_FLOAT, {2});
  add_output(m, "x");
  const std::string p = save_model(m);
  expect_error(p, {p, "no nodes"});
}

TEST_F(ImporterErrors, UnsupportedInputType) {
  onnx::ModelProto m = valid_model();
  m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->set_elem_type(
      onnx::TensorProto_DataType_STRING);
  const std::string p = save_model(m);
  expect_error(p, {p, "'x'", "STRING"});
}

TEST_F(ImporterErrors, ShapeInferenceFailureNamesTheNode) {
  onnx::ModelProto m = valid_model();
  add_input(m, "other", onnx::TensorProto_DataType_FLOAT, {4});
  add_node(m, "TestAdd", {"y", "other"}, {"z"}, "mismatch", kTestDomain);
  m.mutable_graph()->mutable_output(0)->set_name("z");
  const std::string p = save_model(m);
  expect_error(p, {p, "mismatch", "TestAdd", "equal shapes"});
}

TEST_F(ImporterErrors, DynamicSequenceWithoutSeq) {
  onnx::ModelProto m = valid_model();
  auto* shape = m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  shape->mutable_dim(1)->set_dim_param("sequence_length");
  const std::string p = save_model(m);
  expect_error(p, {p, "'x'", "sequence_length", "--seq"});
}

TEST_F(ImporterErrors, WrongFeedShape) {
  auto model = import_onnx(save_model(valid_model()));
  ASSERT_TRUE(model) << model.status().message();
  auto backend = make_cpu_backend();
  auto ex = Executor::create(model->graph, *backend);
  ASSERT_TRUE(ex) << ex.status().message();
  Status st = (*ex)->set_inputs({{"x", Tensor(DType::kFloat32, {3, 2})}});
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("'x'"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("[2,3]"), std::string::npos) << st.message();
  st = (*ex)->set_inputs({{"x", Tensor(DType::kInt64, {2, 3})}});
  EXPECT_FALSE(st.is_ok());
  st = (*ex)->set_inputs({});
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("'x'"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace gv
