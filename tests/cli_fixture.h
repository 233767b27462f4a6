// The `galvatron` binary as a test subject: runs it with arguments in a scratch folder per test, captures exit code,
// stdout and stderr. Shared by the CLI tests.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/hf_fixtures.h"
#include "tests/scratch_dir.h"

namespace gv {

namespace fs = std::filesystem;


inline std::string binary() { return std::string(GV_BINARY_DIR) + "/galvatron"; }
inline std::string fixture(const std::string& name, const std::string& file) {
  return testing::fixture_dir(name) + "/" + file;
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

inline std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string line; std::getline(is, line);) out.push_back(line);
  return out;
}

struct CliResult {
  int code = -1;  // exit code; -1 when killed by a signal (a crash)
  std::string out, err;
  std::vector<std::string> err_lines() const { return lines_of(err); }
};

// A scratch directory per test, removed afterwards.
class Cli : public testing::ScratchDirTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(binary())) << binary() << " is missing: build the galvatron target before gv_tests";
    testing::ScratchDirTest::SetUp();
  }

  CliResult run(const std::vector<std::string>& args) const {
    // A hung run (a deadlocked collective) fails the test after five minutes instead of stalling the suite.
    std::string cmd = "timeout -k 10 300 " + shell_quote(binary());
    for (const auto& a : args) cmd += " " + shell_quote(a);
    const std::string out = (dir_ / ".stdout").string(), err = (dir_ / ".stderr").string();
    cmd += " >" + shell_quote(out) + " 2>" + shell_quote(err) + " </dev/null";
    int status = std::system(cmd.c_str());
    CliResult r;
    if (status != -1 && WIFEXITED(status)) r.code = WEXITSTATUS(status);
    r.out = slurp(out);
    r.err = slurp(err);
    fs::remove(out);
    fs::remove(err);
    return r;
  }

  // Files in the scratch directory (to see that nothing partial or temporary was left).
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  // A failed command: the exit code, exactly one line on stderr (run with --quiet where the command takes it), of
  // the form "galvatron[ COMMAND]: error: ...", naming each of `needles`; nothing new in the scratch directory.
  void expect_failure(const CliResult& r, int code, const std::vector<std::string>& needles,
                      const std::vector<std::string>& files_before) const {
    EXPECT_EQ(r.code, code) << r.err;
    auto lines = r.err_lines();
    ASSERT_EQ(lines.size(), 1u) << "stderr:\n" << r.err;
    EXPECT_EQ(lines[0].rfind("galvatron", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find(": error: "), std::string::npos) << lines[0];
    for (const auto& n : needles) EXPECT_NE(lines[0].find(n), std::string::npos) << "'" << n << "' not in: " << lines[0];
    EXPECT_EQ(listing(), files_before);
  }

};


}  // namespace gv
