#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "runtime/data_loader.h"
#include "runtime/npy.h"

#if __has_include("runtime/safetensors.h")
#include "runtime/safetensors.h"
#define GV_TEST_HAVE_SAFETENSORS 1
#endif

namespace gv {
namespace {

namespace fs = std::filesystem;

// A fresh empty directory per test, under one per-process root that is removed at exit.
std::string test_dir() {
  struct Root {
    fs::path path = fs::temp_directory_path() / ("gv_data_" + std::to_string(::getpid()));
    ~Root() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static Root root;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path d = root.path / (std::string(info->test_suite_name()) + "_" + info->name());
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// Tokens 0, 1, 2, ... so that a window's first token is its start offset.
std::vector<uint16_t> iota_tokens(size_t n) {
  std::vector<uint16_t> t(n);
  std::iota(t.begin(), t.end(), uint16_t{0});
  return t;
}

std::string write_bin(const std::string& dir, size_t n) {
  std::string path = dir + "/tokens.bin";
  EXPECT_TRUE(write_token_bin(path, iota_tokens(n)).is_ok());
  return path;
}

std::unique_ptr<DataLoader> open_ok(const std::string& path, const DataOptions& opt) {
  Expected<std::unique_ptr<DataLoader>> d = open_data(path, opt);
  EXPECT_TRUE(d.has_value()) << d.status().message();
  return d.has_value() ? std::move(d).value() : nullptr;
}

std::vector<int64_t> values(const Batch& b, const std::string& name) { return b.tensors.at(name).to_i64_vector(); }

// The start offsets of the windows of `steps` batches.
std::vector<int64_t> window_starts(DataLoader& d, int steps) {
  std::vector<int64_t> starts;
  for (int s = 0; s < steps; ++s) {
    Expected<Batch> b = d.next();
    EXPECT_TRUE(b.has_value());
    const Tensor& in = b->tensors.at("input_ids");
    for (int64_t r = 0; r < in.shape()[0]; ++r) starts.push_back(in.data_as<int64_t>()[r * in.shape()[1]]);
  }
  return starts;
}

// Expects a failure of `code` whose message names the file and contains `words`.
void expect_error(const std::string& path, const DataOptions& opt, StatusCode code, const std::string& words) {
  Expected<std::unique_ptr<DataLoader>> d = open_data(path, opt);
  ASSERT_FALSE(d.has_value()) << "opened " << path;
  EXPECT_EQ(d.status().code(), code) << d.status().message();
  EXPECT_NE(d.status().message().find(fs::path(path).filename().string()), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find(words), std::string::npos) << d.status().message();
  EXPECT_EQ(d.status().message().find('\n'), std::string::npos) << "one line: " << d.status().message();
}

DataOptions opts(int64_t batch, int64_t seq, uint64_t seed = 0) {
  DataOptions o;
  o.batch_size = batch;
  o.seq_len = seq;
  o.seed = seed;
  return o;
}

// ---- token streams

TEST(DataTokenStream, WindowsAndShift) {
  std::string path = write_bin(test_dir(), 105);  // (105-1)/10 = 10 windows
  auto d = open_ok(path, opts(3, 10));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->samples_per_epoch(), 10u);
  EXPECT_EQ(d->seq_len(), 10);
  for (int step = 0; step < 7; ++step) {
    Expected<Batch> b = d->next();
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->tensors.size(), 2u);
    const Tensor& in = b->tensors.at("input_ids");
    const Tensor& lab = b->tensors.at("labels");
    EXPECT_EQ(in.dtype(), DType::kInt64);
    EXPECT_EQ(lab.dtype(), DType::kInt64);
    EXPECT_EQ(in.shape(), (Shape{3, 10}));
    EXPECT_EQ(lab.shape(), (Shape{3, 10}));
    for (int64_t r = 0; r < 3; ++r) {
      const int64_t* x = in.data_as<int64_t>() + r * 10;
      const int64_t* y = lab.data_as<int64_t>() + r * 10;
      EXPECT_EQ(x[0] % 10, 0) << "window k starts at token k*seq";
      EXPECT_LT(x[0], 100);
      for (int t = 0; t < 10; ++t) {
        EXPECT_EQ(x[t], x[0] + t);
        EXPECT_EQ(y[t], x[t] + 1);
        if (t + 1 < 10) {
          EXPECT_EQ(y[t], x[t + 1]);
        }
      }
    }
  }
  EXPECT_EQ(d->position(), 21u);
  EXPECT_EQ(d->epoch(), 2u);
}

TEST(DataTokenStream, EveryWindowOncePerEpoch) {
  std::string path = write_bin(test_dir(), 1001);  // 100 windows; batch 7 straddles epochs
  auto d = open_ok(path, opts(7, 10, 5));
  ASSERT_TRUE(d);
  std::vector<int64_t> starts = window_starts(*d, 43);  // 301 samples
  ASSERT_EQ(starts.size(), 301u);
  for (int e = 0; e < 3; ++e) {
    std::set<int64_t> seen(starts.begin() + e * 100, starts.begin() + (e + 1) * 100);
    EXPECT_EQ(seen.size(), 100u) << "epoch " << e;
    EXPECT_EQ(*seen.begin(), 0);
    EXPECT_EQ(*seen.rbegin(), 990);
  }
  EXPECT_NE(std::vector<int64_t>(starts.begin(), starts.begin() + 100),
            std::vector<int64_t>(starts.begin() + 100, starts.begin() + 200))
      << "a fresh permutation per epoch";
}

TEST(DataTokenStream, ShuffleIsReproducibleAndDependsOnSeedAndEpoch) {
  std::string path = write_bin(test_dir(), 2001);  // 200 windows
  auto a = open_ok(path, opts(4, 10, 1234));
  auto b = open_ok(path, opts(4, 10, 1234));
  auto c = open_ok(path, opts(4, 10, 1235));
  ASSERT_TRUE(a && b && c);
  std::vector<int64_t> sa = window_starts(*a, 50), sb = window_starts(*b, 50), sc = window_starts(*c, 50);
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  std::vector<int64_t> identity(200);
  for (int i = 0; i < 200; ++i) identity[i] = i * 10;
  EXPECT_NE(sa, identity);

  EXPECT_EQ(shuffled_order(50, 7, 0), shuffled_order(50, 7, 0));
  EXPECT_NE(shuffled_order(50, 7, 0), shuffled_order(50, 7, 1));
  EXPECT_NE(shuffled_order(50, 7, 0), shuffled_order(50, 8, 0));
  EXPECT_EQ(shuffled_order(1, 7, 3), (std::vector<uint64_t>{0}));
  EXPECT_TRUE(shuffled_order(0, 7, 3).empty());
}

TEST(DataTokenStream, ShuffleMatchesTheDocumentedGenerator) {
  // From an independent Python implementation of the algorithm documented in data_loader.h (splitmix64 seeded
  // with mix(mix(seed) + epoch), rejection sampling, Fisher-Yates from the top). Changing these breaks resuming
  // every run that was checkpointed with an earlier build.
  EXPECT_EQ(shuffled_order(10, 0, 0), (std::vector<uint64_t>{6, 3, 2, 9, 8, 1, 4, 7, 0, 5}));
  EXPECT_EQ(shuffled_order(10, 0, 1), (std::vector<uint64_t>{2, 1, 8, 4, 9, 6, 5, 7, 3, 0}));
  EXPECT_EQ(shuffled_order(10, 42, 3), (std::vector<uint64_t>{1, 5, 6, 2, 0, 3, 7, 9, 8, 4}));
}

TEST(DataTokenStream, SeekReproducesTheContinuation) {
  std::string path = write_bin(test_dir(), 331);  // 33 windows of 10+1
  auto a = open_ok(path, opts(5, 10, 99));
  ASSERT_TRUE(a);
  window_starts(*a, 4);
  uint64_t saved = a->position();
  EXPECT_EQ(saved, 20u);
  std::vector<Batch> rest;
  for (int s = 0; s < 12; ++s) rest.push_back(std::move(a->next()).value());  // crosses two epoch boundaries

  auto b = open_ok(path, opts(5, 10, 99));
  ASSERT_TRUE(b);
  ASSERT_TRUE(b->seek(saved).is_ok());
  EXPECT_EQ(b->position(), saved);
  for (int s = 0; s < 12; ++s) {
    Expected<Batch> got = b->next();
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(values(*got, "input_ids"), values(rest[s], "input_ids")) << "step " << s;
    EXPECT_EQ(values(*got, "labels"), values(rest[s], "labels")) << "step " << s;
  }
  // Seeking backwards, into an earlier epoch, works on the same loader.
  auto fresh = open_ok(path, opts(5, 10, 99));
  std::vector<int64_t> first = window_starts(*fresh, 3);
  ASSERT_TRUE(b->seek(0).is_ok());
  EXPECT_EQ(window_starts(*b, 3), first);
}

TEST(DataTokenStream, NpyTokensOfEveryIntegerTypeMatchTheBin) {
  std::string dir = test_dir();
  std::string bin = write_bin(dir, 257);
  std::vector<int64_t> tok(257);
  std::iota(tok.begin(), tok.end(), 0);
  Tensor t64 = Tensor::from_i64(tok, {257});
  ASSERT_TRUE(write_npy(dir + "/t64.npy", t64).is_ok());
  ASSERT_TRUE(write_npy(dir + "/t32.npy", t64.cast(DType::kInt32)).is_ok());
  {  // uint16, written by hand (Tensor has no uint16)
    std::string header = "{'descr': '<u2', 'fortran_order': False, 'shape': (257,), }";
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    std::ofstream f(dir + "/t16.npy", std::ios::binary);
    f.write("\x93NUMPY\x01\x00", 8);
    uint16_t n = static_cast<uint16_t>(header.size());
    f.write(reinterpret_cast<const char*>(&n), 2);
    f << header;
    std::vector<uint16_t> u = iota_tokens(257);
    f.write(reinterpret_cast<const char*>(u.data()), u.size() * 2);
  }
  auto ref = open_ok(bin, opts(4, 8, 3));
  ASSERT_TRUE(ref);
  std::vector<int64_t> want = window_starts(*ref, 20);
  for (std::string name : {"t64.npy", "t32.npy", "t16.npy"}) {
    auto d = open_ok(dir + "/" + name, opts(4, 8, 3));
    ASSERT_TRUE(d) << name;
    EXPECT_EQ(window_starts(*d, 20), want) << name;
    EXPECT_NE(d->describe().find("257 tokens"), std::string::npos) << d->describe();
  }
}

TEST(DataTokenStream, DescribeAndCustomNames) {
  std::string path = write_bin(test_dir(), 1001);
  DataOptions o = opts(8, 10, 17);
  o.input_name = "tokens";
  o.label_name = "targets";
  auto d = open_ok(path, o);
  ASSERT_TRUE(d);
  std::string s = d->describe();
  for (std::string w : {"tokens.bin", "1001 tokens", "100 windows", "12.50 steps", "seed 17", "epoch 0"})
    EXPECT_NE(s.find(w), std::string::npos) << w << " in " << s;
  EXPECT_EQ(s.find('\n'), std::string::npos);
  Expected<Batch> b = d->next();
  ASSERT_TRUE(b.has_value());
  EXPECT_TRUE(b->tensors.count("tokens"));
  EXPECT_TRUE(b->tensors.count("targets"));
}

TEST(DataTokenStream, NegativeTokensAreReportedByNext) {
  std::string dir = test_dir();
  ASSERT_TRUE(write_npy(dir + "/neg.npy", Tensor::from_i64({0, 1, -2, 3, 4}, {5})).is_ok());
  auto d = open_ok(dir + "/neg.npy", opts(1, 4));
  ASSERT_TRUE(d);
  Expected<Batch> b = d->next();
  ASSERT_FALSE(b.has_value());
  EXPECT_NE(b.status().message().find("negative"), std::string::npos) << b.status().message();
}

TEST(DataTokenStream, WriteTokenBinLayout) {
  std::string dir = test_dir();
  ASSERT_TRUE(write_token_bin(dir + "/t.bin", {7, 65535, 3}).is_ok());
  EXPECT_FALSE(fs::exists(dir + "/t.bin.tmp"));
  std::ifstream f(dir + "/t.bin", std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), {});
  ASSERT_EQ(s.size(), 1024u + 6u);
  int32_t h[256];
  std::memcpy(h, s.data(), 1024);
  EXPECT_EQ(h[0], 20240520);
  EXPECT_EQ(h[1], 1);
  EXPECT_EQ(h[2], 3);
  for (int i = 3; i < 256; ++i) EXPECT_EQ(h[i], 0);
  uint16_t t[3];
  std::memcpy(t, s.data() + 1024, 6);
  EXPECT_EQ(t[0], 7);
  EXPECT_EQ(t[1], 65535);
  EXPECT_EQ(t[2], 3);
}

// ---- samples

// A directory of .npy samples: input_ids[r][t] = 100 r + t, labels = input_ids + 1, attention_mask all ones.
std::string write_samples_dir(const std::string& dir, int64_t rows, int64_t seq) {
  std::vector<int64_t> ids, lab;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < seq; ++t) {
      ids.push_back(100 * r + t);
      lab.push_back(100 * r + t + 1);
    }
  std::string d = dir + "/samples";
  fs::create_directories(d);
  EXPECT_TRUE(write_npy(d + "/input_ids.npy", Tensor::from_i64(ids, {rows, seq}).cast(DType::kInt32)).is_ok());
  EXPECT_TRUE(write_npy(d + "/labels.npy", Tensor::from_i64(lab, {rows, seq})).is_ok());
  EXPECT_TRUE(write_npy(d + "/attention_mask.npy", Tensor::from_i64(std::vector<int64_t>(rows * seq, 1), {rows, seq}))
                  .is_ok());
  std::ofstream(d + "/README.txt") << "ignored\n";
  return d;
}

TEST(DataSamples, InOrderWithWrapAround) {
  std::string path = write_samples_dir(test_dir(), 5, 4);
  auto d = open_ok(path, opts(2, 0));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->seq_len(), 4);
  EXPECT_EQ(d->samples_per_epoch(), 5u);
  const std::vector<std::vector<int64_t>> rows = {{0, 1}, {2, 3}, {4, 0}, {1, 2}, {3, 4}, {0, 1}};
  for (size_t s = 0; s < rows.size(); ++s) {
    Expected<Batch> b = d->next();
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->tensors.size(), 3u);
    const Tensor& in = b->tensors.at("input_ids");
    EXPECT_EQ(in.dtype(), DType::kInt64) << "int32 samples come out as int64";
    EXPECT_EQ(in.shape(), (Shape{2, 4}));
    EXPECT_EQ(b->tensors.at("attention_mask").shape(), (Shape{2, 4}));
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t t = 0; t < 4; ++t) {
        EXPECT_EQ(in.data_as<int64_t>()[r * 4 + t], 100 * rows[s][r] + t) << "step " << s;
        EXPECT_EQ(b->tensors.at("labels").data_as<int64_t>()[r * 4 + t], 100 * rows[s][r] + t + 1);
      }
  }
  EXPECT_EQ(d->position(), 12u);
  EXPECT_EQ(d->epoch(), 2u);
  ASSERT_TRUE(d->seek(3).is_ok());
  EXPECT_EQ(values(std::move(d->next()).value(), "input_ids")[0], 300);
  std::string s = d->describe();
  for (std::string w : {"samples", "5 rows", "4 tokens", "2.50 steps", "in order"})
    EXPECT_NE(s.find(w), std::string::npos) << w << " in " << s;
}

TEST(DataSamples, FixtureRowsTwoPerStep) {
#ifndef GV_TEST_HAVE_SAFETENSORS
  GTEST_SKIP() << "runtime/safetensors.h has not landed yet";
#else
  std::string path = GV_FIXTURES_DIR "/gpt2/samples.safetensors";
  Expected<std::map<std::string, Tensor>> raw = read_safetensors(path);
  ASSERT_TRUE(raw.has_value()) << raw.status().message();
  const Tensor& ids = raw->at("input_ids");
  const Tensor& lab = raw->at("labels");
  ASSERT_EQ(ids.shape(), (Shape{20, 32}));
  auto d = open_ok(path, opts(2, 32));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->samples_per_epoch(), 20u);
  for (int s = 0; s < 11; ++s) {
    Expected<Batch> b = d->next();
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->tensors.size(), 2u);
    int64_t r0 = (2 * s) % 20;  // step 10 wraps to rows [0, 2)
    std::vector<int64_t> want_ids(ids.data_as<int64_t>() + r0 * 32, ids.data_as<int64_t>() + (r0 + 2) * 32);
    std::vector<int64_t> want_lab(lab.data_as<int64_t>() + r0 * 32, lab.data_as<int64_t>() + (r0 + 2) * 32);
    EXPECT_EQ(values(*b, "input_ids"), want_ids) << "step " << s;
    EXPECT_EQ(values(*b, "labels"), want_lab) << "step " << s;
  }
#endif
}

// ---- errors, one per case

TEST(DataErrors, MissingPath) {
  expect_error(test_dir() + "/nope.bin", opts(1, 8), StatusCode::kNotFound, "no such file");
}

TEST(DataErrors, EmptyFile) {
  std::string dir = test_dir();
  for (std::string name : {"e.bin", "e.npy", "e.safetensors"}) {
    std::ofstream(dir + "/" + name).close();
    expect_error(dir + "/" + name, opts(1, 8), StatusCode::kCorrupt, "empty");
  }
}

void write_bin_header(const std::string& path, int32_t magic, int32_t version, int32_t count, size_t tokens) {
  std::vector<int32_t> h(256, 0);
  h[0] = magic;
  h[1] = version;
  h[2] = count;
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(h.data()), 1024);
  std::vector<uint16_t> t(tokens, 1);
  f.write(reinterpret_cast<const char*>(t.data()), t.size() * 2);
}

TEST(DataErrors, BinBadMagic) {
  std::string path = test_dir() + "/m.bin";
  write_bin_header(path, 20240801, 1, 100, 100);
  expect_error(path, opts(1, 8), StatusCode::kCorrupt, "bad magic 20240801");
}

TEST(DataErrors, BinBadVersion) {
  std::string path = test_dir() + "/v.bin";
  write_bin_header(path, 20240520, 2, 100, 100);
  expect_error(path, opts(1, 8), StatusCode::kUnsupported, "version 2");
}

TEST(DataErrors, BinTruncated) {
  std::string dir = test_dir();
  write_bin_header(dir + "/t.bin", 20240520, 1, 100, 60);
  expect_error(dir + "/t.bin", opts(1, 8), StatusCode::kCorrupt, "truncated");
  std::ofstream(dir + "/h.bin", std::ios::binary) << std::string(100, '\x01');
  expect_error(dir + "/h.bin", opts(1, 8), StatusCode::kCorrupt, "truncated");
  write_bin_header(dir + "/x.bin", 20240520, 1, 50, 60);
  expect_error(dir + "/x.bin", opts(1, 8), StatusCode::kCorrupt, "bytes after");
}

TEST(DataErrors, TokenStreamShorterThanOneWindow) {
  std::string path = write_bin(test_dir(), 8);
  expect_error(path, opts(1, 8), StatusCode::kInvalidArgument, "fewer than --seq-len + 1 = 9");
  EXPECT_TRUE(open_data(path, opts(1, 7)).has_value());
}

TEST(DataErrors, SeqLenMissingForTokenStream) {
  std::string path = write_bin(test_dir(), 100);
  expect_error(path, opts(1, 0), StatusCode::kInvalidArgument, "--seq-len is required");
}

TEST(DataErrors, SamplesRowCountsDiffer) {
  std::string dir = write_samples_dir(test_dir(), 5, 4);
  ASSERT_TRUE(write_npy(dir + "/attention_mask.npy", Tensor(DType::kInt64, {4, 4})).is_ok());
  expect_error(dir, opts(1, 0), StatusCode::kInvalidArgument, "different row counts");
}

TEST(DataErrors, SamplesSeqLenDiffersFromOption) {
  std::string dir = write_samples_dir(test_dir(), 5, 4);
  expect_error(dir, opts(1, 8), StatusCode::kInvalidArgument, "sequence length 4 but --seq-len is 8");
  EXPECT_TRUE(open_data(dir, opts(1, 4)).has_value());
}

TEST(DataErrors, SamplesWithoutLabels) {
  std::string dir = write_samples_dir(test_dir(), 5, 4);
  fs::remove(dir + "/labels.npy");
  expect_error(dir, opts(1, 0), StatusCode::kInvalidArgument, "no array named 'labels'");
}

TEST(DataErrors, SamplesWithoutInput) {
  std::string dir = write_samples_dir(test_dir(), 5, 4);
  DataOptions o = opts(1, 0);
  o.input_name = "input_values";
  expect_error(dir, o, StatusCode::kInvalidArgument, "no array named 'input_values'");
}

TEST(DataErrors, SamplesLabelsNotAlignedOrNot2D) {
  std::string dir = write_samples_dir(test_dir(), 5, 4);
  ASSERT_TRUE(write_npy(dir + "/labels.npy", Tensor(DType::kInt64, {5, 3})).is_ok());
  expect_error(dir, opts(1, 0), StatusCode::kInvalidArgument, "aligned");
  ASSERT_TRUE(write_npy(dir + "/labels.npy", Tensor(DType::kInt64, {5})).is_ok());
  expect_error(dir, opts(1, 0), StatusCode::kInvalidArgument, "2-D");
}

TEST(DataErrors, BatchLargerThanRows) {
  std::string dir = write_samples_dir(test_dir(), 5, 4);
  expect_error(dir, opts(6, 0), StatusCode::kInvalidArgument, "larger than the 5 rows");
  EXPECT_TRUE(open_data(dir, opts(5, 0)).has_value());
}

TEST(DataErrors, BatchLargerThanWindows) {
  std::string path = write_bin(test_dir(), 41);  // 4 windows of 10+1
  expect_error(path, opts(5, 10), StatusCode::kInvalidArgument, "larger than the 4 windows");
  EXPECT_TRUE(open_data(path, opts(4, 10)).has_value());
}

TEST(DataErrors, TwoDimensionalNpyAsTokenStream) {
  std::string path = test_dir() + "/tok.npy";
  ASSERT_TRUE(write_npy(path, Tensor(DType::kInt64, {20, 32})).is_ok());
  expect_error(path, opts(1, 8), StatusCode::kInvalidArgument, "must be 1-D");
}

TEST(DataErrors, NpyUnsupportedTokenDType) {
  std::string dir = test_dir();
  ASSERT_TRUE(write_npy(dir + "/f.npy", Tensor(DType::kFloat32, {100})).is_ok());
  expect_error(dir + "/f.npy", opts(1, 8), StatusCode::kUnsupported, "'<f4'");
  ASSERT_TRUE(write_npy(dir + "/u8.npy", Tensor(DType::kUInt8, {100})).is_ok());
  expect_error(dir + "/u8.npy", opts(1, 8), StatusCode::kUnsupported, "'|u1'");
}

TEST(DataErrors, NpyFortranOrder) {
  std::string path = test_dir() + "/fo.npy";
  std::string header = "{'descr': '<i8', 'fortran_order': True, 'shape': (100,), }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t n = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&n), 2);
  f << header << std::string(800, '\0');
  f.close();
  expect_error(path, opts(1, 8), StatusCode::kUnsupported, "Fortran order");
}

TEST(DataErrors, UnknownExtension) {
  std::string path = test_dir() + "/corpus.txt";
  std::ofstream(path) << "hello world\n";
  expect_error(path, opts(1, 8), StatusCode::kInvalidArgument, "unknown data format '.txt'");
}

TEST(DataErrors, BadOptions) {
  std::string path = write_bin(test_dir(), 100);
  expect_error(path, opts(0, 8), StatusCode::kInvalidArgument, "batch size");
  expect_error(path, opts(1, -3), StatusCode::kInvalidArgument, "--seq-len");
}

}  // namespace
}  // namespace gv
