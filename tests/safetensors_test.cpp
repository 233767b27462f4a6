// safetensors reader/writer: round trips of every dtype, metadata, atomic writes, each kind of corrupt file, and the
// HF fixtures' reference files.
#include "runtime/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace gv {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("gv_safetensors_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // Entries in the directory (to check that no temporary file is left behind).
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  // Writes a file from a header string and a data section.
  std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                        int64_t header_len_override = -1) {
    std::string p = path(name);
    std::ofstream f(p, std::ios::binary);
    uint64_t n = header_len_override >= 0 ? static_cast<uint64_t>(header_len_override) : header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header << data;
    return p;
  }
  fs::path dir_;
};

Tensor filled(DType dt, Shape shape, int seed) {
  Tensor t(dt, shape);
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>((i * 131 + seed * 17 + 7) & 0xff);
  if (dt == DType::kBool) {
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] &= 1;
  }
  return t;
}

void expect_same(const Tensor& a, const Tensor& b, const std::string& name) {
  ASSERT_EQ(a.dtype(), b.dtype()) << name;
  ASSERT_EQ(a.shape(), b.shape()) << name;
  ASSERT_EQ(a.nbytes(), b.nbytes()) << name;
  if (a.nbytes()) {
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << name;
  }
}

TEST_F(Safetensors, RoundTripEveryDtype) {
  const DType dtypes[] = {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16, DType::kInt64,
                          DType::kInt32,   DType::kInt8,    DType::kUInt8,   DType::kBool};
  std::map<std::string, Tensor> tensors;
  int seed = 0;
  for (DType dt : dtypes) {
    std::string n = dtype_name(dt);
    tensors[n + "/matrix"] = filled(dt, {3, 5}, ++seed);
    tensors[n + "/odd"] = filled(dt, {7}, ++seed);  // odd byte counts exercise the alignment of what follows
    tensors[n + "/scalar"] = filled(dt, {}, ++seed);
    tensors[n + "/empty"] = filled(dt, {0, 4}, ++seed);
  }
  std::string p = path("all.safetensors");
  ASSERT_TRUE(write_safetensors(p, tensors).is_ok());
  EXPECT_EQ(listing(), std::vector<std::string>{"all.safetensors"});

  auto back = read_safetensors(p);
  ASSERT_TRUE(back.has_value()) << back.status().message();
  ASSERT_EQ(back->size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(back->count(name)) << name;
    expect_same(back->at(name), t, name);
  }
  auto meta = read_safetensors_metadata(p);
  ASSERT_TRUE(meta.has_value());
  EXPECT_TRUE(meta->empty());

  // The layout: header length a multiple of 8, every tensor aligned to its element size.
  auto header = read_safetensors_header(p);
  ASSERT_TRUE(header.has_value());
  std::ifstream f(p, std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  for (const auto& [name, e] : *header) EXPECT_EQ(e.begin % dtype_size(e.dtype), 0u) << name;
}

TEST_F(Safetensors, ValuesSurviveExactly) {
  std::map<std::string, Tensor> tensors = {
      {"f", Tensor::from_f32({1.5f, -2.25f, 3e-38f, 1e30f}, {2, 2})},
      {"ids", Tensor::from_i64({0, -1, INT64_MAX, INT64_MIN}, {4})},
  };
  std::string p = path("v.safetensors");
  ASSERT_TRUE(write_safetensors(p, tensors).is_ok());
  auto back = read_safetensors(p);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->at("f").data_as<float>()[1], -2.25f);
  EXPECT_EQ(back->at("f").data_as<float>()[3], 1e30f);
  EXPECT_EQ(back->at("ids").data_as<int64_t>()[2], INT64_MAX);
  EXPECT_EQ(back->at("ids").data_as<int64_t>()[3], INT64_MIN);
}

TEST_F(Safetensors, Metadata) {
  std::string p = path("m.safetensors");
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"galvatron.step", "12"}, {"note", "ünïcødé \"q\""}};
  ASSERT_TRUE(write_safetensors(p, {{"w", Tensor::from_f32({1, 2}, {2})}}, meta).is_ok());
  auto m = read_safetensors_metadata(p);
  ASSERT_TRUE(m.has_value()) << m.status().message();
  EXPECT_EQ(*m, meta);
  auto t = read_safetensors(p);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->size(), 1u);  // __metadata__ is not a tensor
  // No tensors at all, only metadata.
  ASSERT_TRUE(write_safetensors(path("only_meta.safetensors"), {}, meta).is_ok());
  auto m2 = read_safetensors_metadata(path("only_meta.safetensors"));
  ASSERT_TRUE(m2.has_value());
  EXPECT_EQ(*m2, meta);
}

TEST_F(Safetensors, ReadsFilesWrittenByOthers) {
  // Hand-written: the layout of the Python library (sorted by dtype, header padded with spaces, metadata first).
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"I8","shape":[3],"data_offsets":[8,11]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  float a[2] = {0.5f, -4.0f};
  std::string data(reinterpret_cast<const char*>(a), 8);
  data += std::string("\x01\xff\x7f", 3);
  std::string p = write_raw("py.safetensors", header, data);
  auto t = read_safetensors(p);
  ASSERT_TRUE(t.has_value()) << t.status().message();
  EXPECT_EQ(t->at("a").data_as<float>()[1], -4.0f);
  EXPECT_EQ(t->at("b").data_as<int8_t>()[1], -1);
  EXPECT_EQ(t->at("b").data_as<int8_t>()[2], 127);
}

TEST_F(Safetensors, OverwritesAtomically) {
  std::string p = path("ckpt.safetensors");
  ASSERT_TRUE(write_safetensors(p, {{"x", Tensor::from_f32({1}, {1})}}).is_ok());
  ASSERT_TRUE(write_safetensors(p, {{"y", Tensor::from_f32({2, 3}, {2})}}).is_ok());
  auto t = read_safetensors(p);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->count("x"), 0u);
  EXPECT_EQ(t->at("y").shape(), (Shape{2}));
  // A failing write leaves the previous file as it was and no temporary behind.
  Status s = write_safetensors(p, {{"ok", Tensor::from_f32({1}, {1})}, {"bad", Tensor()}});
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("bad"), std::string::npos) << s.message();
  t = read_safetensors(p);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->count("y"), 1u);
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(Safetensors, WriteErrors) {
  Status s = write_safetensors(path("no/such/dir/x.safetensors"), {{"x", Tensor::from_f32({1}, {1})}});
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("no/such/dir/x.safetensors"), std::string::npos) << s.message();
  s = write_safetensors(path("r.safetensors"), {{"__metadata__", Tensor::from_f32({1}, {1})}});
  EXPECT_FALSE(s.is_ok());
  s = write_safetensors(path("u.safetensors"), {{std::string("bad\xff name"), Tensor::from_f32({1}, {1})}});
  EXPECT_FALSE(s.is_ok());
  // A directory in the way of the final name.
  fs::create_directories(path("d.safetensors"));
  s = write_safetensors(path("d.safetensors"), {{"x", Tensor::from_f32({1}, {1})}});
  EXPECT_FALSE(s.is_ok());
  EXPECT_EQ(listing(), std::vector<std::string>{"d.safetensors"});
}

// Expects reading `p` to fail with a message containing each of `needles`.
void expect_error(const std::string& p, std::vector<std::string> needles) {
  auto r = read_safetensors(p);
  ASSERT_FALSE(r.has_value()) << p << " was accepted";
  const std::string& msg = r.status().message();
  EXPECT_NE(msg.find(p), std::string::npos) << "message does not name the file: " << msg;
  for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  // The metadata reader validates the same header.
  EXPECT_FALSE(read_safetensors_metadata(p).has_value()) << p;
}

TEST_F(Safetensors, MissingFileAndDirectory) {
  expect_error(path("absent.safetensors"), {"no such file"});
  fs::create_directories(path("adir"));
  expect_error(path("adir"), {"directory"});
}

TEST_F(Safetensors, TooShort) {
  std::string p = path("short.safetensors");
  std::ofstream(p, std::ios::binary) << "abc";
  expect_error(p, {"8-byte"});
  std::ofstream(path("empty.safetensors"), std::ios::binary);
  expect_error(path("empty.safetensors"), {"0 bytes"});
}

TEST_F(Safetensors, HeaderLengthBeyondFile) {
  expect_error(write_raw("hl.safetensors", "{}", "", 1000), {"header length 1000"});
  expect_error(write_raw("huge.safetensors", "{}", "", INT64_MAX), {"header length"});
}

TEST_F(Safetensors, BadJson) {
  expect_error(write_raw("j1.safetensors", R"({"a": {"dtype": "F32", )", ""), {"not valid JSON"});
  expect_error(write_raw("j2.safetensors", "[1, 2, 3]", ""), {"expected an object"});
  expect_error(write_raw("j3.safetensors", "garbage!", ""), {"not valid JSON"});
  expect_error(write_raw("j4.safetensors", R"({"a": 3})", ""), {"'a'", "expected an object"});
  // Random bytes, as a non-safetensors file would have.
  std::string junk;
  for (int i = 0; i < 256; ++i) junk += static_cast<char>((i * 73 + 11) & 0xff);
  std::string p = path("junk.safetensors");
  std::ofstream(p, std::ios::binary) << junk;
  auto r = read_safetensors(p);
  EXPECT_FALSE(r.has_value());
}

TEST_F(Safetensors, UnknownDtype) {
  expect_error(write_raw("dt.safetensors", R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})",
                         std::string(2, '\0')),
               {"'w'", "F8_E4M3"});
  expect_error(write_raw("dt2.safetensors", R"({"w": {"dtype": 1, "shape": [2], "data_offsets": [0, 8]}})",
                         std::string(8, '\0')),
               {"'w'", "dtype"});
}

TEST_F(Safetensors, BadShape) {
  expect_error(write_raw("s1.safetensors", R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
                         std::string(4, '\0')),
               {"'w'", "shape"});
  expect_error(write_raw("s2.safetensors", R"({"w": {"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]}})",
                         std::string(16, '\0')),
               {"'w'", "shape"});
  expect_error(write_raw("s3.safetensors",
                         R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})",
                         std::string(4, '\0')),
               {"'w'", "overflow"});
  expect_error(write_raw("s4.safetensors", R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", std::string(4, '\0')),
               {"'w'", "shape"});
}

TEST_F(Safetensors, OffsetsOutOfRange) {
  expect_error(write_raw("o1.safetensors", R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                         std::string(8, '\0')),
               {"'w'", "past the data section"});
  expect_error(write_raw("o2.safetensors", R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})",
                         std::string(8, '\0')),
               {"'w'", "begin > end"});
  expect_error(write_raw("o3.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})",
                         std::string(8, '\0')),
               {"'w'", "data_offsets"});
  expect_error(write_raw("o4.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})",
                         std::string(8, '\0')),
               {"'w'", "data_offsets"});
}

TEST_F(Safetensors, OffsetsNotMatchingShape) {
  expect_error(write_raw("m1.safetensors", R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
                         std::string(16, '\0')),
               {"'w'", "8 bytes", "needs 12"});
  expect_error(write_raw("m2.safetensors", R"({"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 8]}})",
                         std::string(16, '\0')),
               {"'w'", "needs 16"});
}

TEST_F(Safetensors, OverlappingTensors) {
  expect_error(write_raw("ov.safetensors",
                         R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                         R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                         std::string(12, '\0')),
               {"'a'", "'b'", "overlap"});
}

TEST_F(Safetensors, DuplicateName) {
  expect_error(write_raw("dup.safetensors",
                         R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                         R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                         std::string(8, '\0')),
               {"'a'", "twice"});
}

TEST_F(Safetensors, BadMetadata) {
  expect_error(write_raw("md1.safetensors", R"({"__metadata__": {"step": 3}})", ""), {"__metadata__", "step"});
  expect_error(write_raw("md2.safetensors", R"({"__metadata__": "x"})", ""), {"__metadata__"});
}

TEST_F(Safetensors, TruncatedFile) {
  std::string p = path("t.safetensors");
  std::map<std::string, Tensor> tensors = {{"w", filled(DType::kFloat32, {64}, 1)}};
  ASSERT_TRUE(write_safetensors(p, tensors).is_ok());
  fs::resize_file(p, fs::file_size(p) - 10);
  expect_error(p, {"'w'", "past the data section"});
}

TEST_F(Safetensors, RandomCorruptionIsAnErrorNotACrash) {
  std::string good = path("good.safetensors");
  std::map<std::string, Tensor> tensors = {{"a", filled(DType::kFloat32, {4, 3}, 1)},
                                           {"b", filled(DType::kInt64, {5}, 2)},
                                           {"c", filled(DType::kBool, {7}, 3)}};
  ASSERT_TRUE(write_safetensors(good, tensors, {{"k", "v"}}).is_ok());
  std::string bytes;
  {
    std::ifstream f(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  uint32_t rng = 2024;
  auto next = [&] { return rng = rng * 1664525u + 1013904223u; };
  int accepted = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string b = bytes;
    if (trial % 4 == 0) {
      b.resize(next() % b.size());  // truncated
    } else {
      int flips = 1 + next() % 3;
      for (int k = 0; k < flips; ++k) {
        size_t at = next() % std::min<size_t>(b.size(), 8 + 200);  // mostly in the length and the header
        b[at] = static_cast<char>(next() >> 24);
      }
    }
    std::string p = path("mut.safetensors");
    std::ofstream(p, std::ios::binary | std::ios::trunc) << b;
    auto r = read_safetensors(p);
    if (r.has_value()) {
      ++accepted;  // a flip that kept the file valid (in a name, say): every tensor must then be consistent
      for (const auto& [name, t] : *r) EXPECT_EQ(t.nbytes(), static_cast<size_t>(t.numel()) * dtype_size(t.dtype()));
    } else {
      EXPECT_NE(r.status().message().find(p), std::string::npos) << r.status().message();
    }
  }
  EXPECT_LT(accepted, 400);
}

std::string fixture(const std::string& name, const std::string& file) {
  return std::string(GV_FIXTURES_DIR) + "/" + name + "/" + file;
}

TEST(SafetensorsFixtures, ReferenceFiles) {
  for (const char* name : {"gpt2", "gpt2_loss", "llama", "bert", "bert_opset14"}) {
    SCOPED_TRACE(name);
    auto ref = read_safetensors(fixture(name, "reference.safetensors"));
    ASSERT_TRUE(ref.has_value()) << ref.status().message();
    ASSERT_TRUE(ref->count("logits"));
    EXPECT_EQ(ref->at("logits").dtype(), DType::kFloat32);
    EXPECT_EQ(ref->at("logits").shape(), (Shape{2, 32, 256}));
    ASSERT_TRUE(ref->count("input_ids"));
    EXPECT_EQ(ref->at("input_ids").dtype(), DType::kInt64);
    EXPECT_EQ(ref->at("input_ids").shape(), (Shape{2, 32}));
    EXPECT_EQ(ref->at("tokens").shape(), (Shape{2, 33}));
    EXPECT_EQ(ref->at("loss").shape(), (Shape{1}));
    EXPECT_EQ(ref->at("adamw_losses").shape(), (Shape{10}));
    // Token ids are in the vocabulary, the loss is a plausible cross-entropy of a near-random model (ln 256 ~ 5.5).
    const auto* ids = ref->at("input_ids").data_as<int64_t>();
    for (int i = 0; i < 64; ++i) {
      EXPECT_GE(ids[i], 0);
      EXPECT_LT(ids[i], 256);
    }
    double loss = ref->at("loss").scalar_f64(0);
    EXPECT_GT(loss, 4.0);
    EXPECT_LT(loss, 7.0);
    // Gradients are keyed by HF parameter name.
    int grads = 0;
    for (const auto& [k, v] : *ref) grads += k.rfind("grad/", 0) == 0;
    EXPECT_GT(grads, 10);

    auto samples = read_safetensors(fixture(name, "samples.safetensors"));
    ASSERT_TRUE(samples.has_value()) << samples.status().message();
    EXPECT_EQ(samples->at("input_ids").shape(), (Shape{20, 32}));
    EXPECT_EQ(samples->at("labels").dtype(), DType::kInt64);
  }
  // Causal models: input_ids are the first 32 tokens and labels the last 32 (the data is where the header says).
  auto ref = read_safetensors(fixture("gpt2", "reference.safetensors"));
  ASSERT_TRUE(ref.has_value());
  const auto* tok = ref->at("tokens").data_as<int64_t>();
  const auto* ids = ref->at("input_ids").data_as<int64_t>();
  const auto* lab = ref->at("labels").data_as<int64_t>();
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 32; ++t) {
      EXPECT_EQ(ids[b * 32 + t], tok[b * 33 + t]);
      EXPECT_EQ(lab[b * 32 + t], tok[b * 33 + t + 1]);
    }
  }
}

TEST(SafetensorsFixtures, RewriteIsIdentical) {
  // Reading a fixture and writing it back preserves every tensor.
  auto ref = read_safetensors(fixture("llama", "reference.safetensors"));
  ASSERT_TRUE(ref.has_value());
  std::string p = (fs::temp_directory_path() / ("gv_st_rewrite_" + std::to_string(::getpid()) + ".safetensors")).string();
  ASSERT_TRUE(write_safetensors(p, *ref, {{"source", "llama"}}).is_ok());
  auto back = read_safetensors(p);
  ASSERT_TRUE(back.has_value());
  ASSERT_EQ(back->size(), ref->size());
  for (const auto& [k, v] : *ref) expect_same(back->at(k), v, k);
  fs::remove(p);
}

}  // namespace
}  // namespace gv
