#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "runtime/npy.h"

namespace gv {
namespace {

namespace fs = std::filesystem;

// A fresh empty directory per test, under one per-process root that is removed at exit.
std::string test_dir() {
  struct Root {
    fs::path path = fs::temp_directory_path() / ("gv_npy_" + std::to_string(::getpid()));
    ~Root() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static Root root;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path d = root.path / (std::string(info->name()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// Writes a version-1 .npy with a hand-written header dict (to make files write_npy never would).
void write_raw_npy(const std::string& path, const std::string& dict, const std::string& data, int major = 1) {
  std::string header = dict;
  size_t pre = major == 1 ? 10 : 12;
  header.append((64 - (pre + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  uint32_t n = static_cast<uint32_t>(header.size());
  out.append(reinterpret_cast<const char*>(&n), major == 1 ? 2 : 4);
  out += header;
  out += data;
  std::ofstream(path, std::ios::binary) << out;
}

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

TEST(Npy, RoundTripEveryDType) {
  std::string dir = test_dir();
  Tensor f = Tensor::from_f32({1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f}, {2, 3});
  std::vector<Tensor> cases = {f,
                               f.cast(DType::kFloat64),
                               f.cast(DType::kFloat16),
                               f.cast(DType::kInt64),
                               f.cast(DType::kInt32),
                               f.cast(DType::kInt8),
                               Tensor::from_i64({0, 1, 255, 7}, {4}).cast(DType::kUInt8),
                               f.cast(DType::kBool),
                               Tensor::scalar(DType::kFloat32, 2.5),
                               Tensor(DType::kInt64, {0, 5}),
                               Tensor::from_i64({1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 1, 2})};
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string path = dir + "/a" + std::to_string(i) + ".npy";
    ASSERT_TRUE(write_npy(path, cases[i]).is_ok()) << i;
    EXPECT_EQ(fs::file_size(path) % 64, cases[i].nbytes() % 64) << "data starts on a 64-byte boundary";
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    Expected<Tensor> back = read_npy(path);
    ASSERT_TRUE(back.has_value()) << back.status().message();
    EXPECT_TRUE(same_tensor(*back, cases[i])) << i << " " << dtype_name(cases[i].dtype());
  }
}

TEST(Npy, HeaderIsWhatNumpyWrites) {
  std::string dir = test_dir();
  ASSERT_TRUE(write_npy(dir + "/a.npy", Tensor::from_i64({1, 2, 3}, {3})).is_ok());
  std::ifstream in(dir + "/a.npy", std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GE(s.size(), 152u);
  EXPECT_EQ(s.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  std::string dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
  EXPECT_EQ(s.substr(10, dict.size()), dict);
  EXPECT_EQ(s[127], '\n');  // numpy's usual 128-byte preamble
  EXPECT_EQ(s.size(), 128u + 24u);
}

TEST(Npy, ReadsNarrowAndUnsignedIntegersWidened) {
  std::string dir = test_dir();
  write_raw_npy(dir + "/u2.npy", "{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }",
                bytes_of(std::vector<uint16_t>{0, 65535, 7}));
  write_raw_npy(dir + "/i2.npy", "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }",
                bytes_of(std::vector<int16_t>{-5, 300}));
  write_raw_npy(dir + "/u4.npy", "{\"descr\": \"<u4\", \"fortran_order\": False, \"shape\": (1, 2)}",
                bytes_of(std::vector<uint32_t>{4000000000u, 1}), 2);
  Expected<Tensor> u2 = read_npy(dir + "/u2.npy");
  ASSERT_TRUE(u2.has_value()) << u2.status().message();
  EXPECT_EQ(u2->dtype(), DType::kInt32);
  EXPECT_EQ(u2->to_i64_vector(), (std::vector<int64_t>{0, 65535, 7}));
  Expected<Tensor> i2 = read_npy(dir + "/i2.npy");
  ASSERT_TRUE(i2.has_value()) << i2.status().message();
  EXPECT_EQ(i2->to_i64_vector(), (std::vector<int64_t>{-5, 300}));
  Expected<Tensor> u4 = read_npy(dir + "/u4.npy");
  ASSERT_TRUE(u4.has_value()) << u4.status().message();
  EXPECT_EQ(u4->dtype(), DType::kInt64);
  EXPECT_EQ(u4->shape(), (Shape{1, 2}));
  EXPECT_EQ(u4->to_i64_vector(), (std::vector<int64_t>{4000000000ll, 1}));
}

TEST(Npy, RefusesFortranOrder) {
  std::string dir = test_dir();
  write_raw_npy(dir + "/f.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                bytes_of(std::vector<float>{1, 2, 3, 4}));
  Expected<Tensor> t = read_npy(dir + "/f.npy");
  ASSERT_FALSE(t.has_value());
  EXPECT_EQ(t.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(t.status().message().find("Fortran order"), std::string::npos) << t.status().message();
  EXPECT_NE(t.status().message().find("f.npy"), std::string::npos);
}

TEST(Npy, RefusesUnsupportedDTypes) {
  std::string dir = test_dir();
  for (std::string descr : {"<c8", ">i4", "<u8", "|O", "<U4", "<M8"}) {
    write_raw_npy(dir + "/x.npy", "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (1,), }",
                  std::string(16, '\0'));
    Expected<Tensor> t = read_npy(dir + "/x.npy");
    ASSERT_FALSE(t.has_value()) << descr;
    EXPECT_EQ(t.status().code(), StatusCode::kUnsupported) << descr << ": " << t.status().message();
    EXPECT_NE(t.status().message().find(descr), std::string::npos) << t.status().message();
  }
}

TEST(Npy, RefusesCorruptFiles) {
  std::string dir = test_dir();
  std::ofstream(dir + "/empty.npy").close();
  std::ofstream(dir + "/text.npy") << "input_ids,labels\n1,2\n";
  write_raw_npy(dir + "/short.npy", "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }",
                bytes_of(std::vector<int64_t>{1, 2, 3}));
  write_raw_npy(dir + "/dict.npy", "{'descr': '<i8', 'shape': (4,), }", bytes_of(std::vector<int64_t>{1, 2, 3, 4}));
  for (std::string name : {"empty.npy", "text.npy", "short.npy", "dict.npy"}) {
    Expected<Tensor> t = read_npy(dir + "/" + name);
    ASSERT_FALSE(t.has_value()) << name;
    EXPECT_EQ(t.status().code(), StatusCode::kCorrupt) << name << ": " << t.status().message();
    EXPECT_NE(t.status().message().find(name), std::string::npos) << t.status().message();
  }
  Expected<Tensor> missing = read_npy(dir + "/missing.npy");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(Npy, WriteRefusesBFloat16) {
  std::string dir = test_dir();
  Status s = write_npy(dir + "/b.npy", Tensor::from_f32({1.0f}, {1}).cast(DType::kBFloat16));
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_FALSE(fs::exists(dir + "/b.npy"));
}

}  // namespace
}  // namespace gv
