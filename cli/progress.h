// Progress output for long loops: a one-line bar redrawn in place on a terminal, plain lines otherwise (logs, CI).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace gv::cli {

class Progress {
 public:
  // `total` steps; `first` is the step the run starts from (non-zero when resuming).
  Progress(int64_t total, int64_t first, bool quiet);
  // Redraws (terminal) or prints a line every `every` steps (plain), with the fields given.
  void update(int64_t step, const std::string& fields);
  // Ends the bar's line.
  void finish();
  double elapsed_s() const;
  // Seconds left at the rate so far.
  double remaining_s(int64_t step) const;

 private:
  int64_t total_, first_;
  bool quiet_, tty_;
  int64_t every_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

// "1m05s", "12.3s"
std::string format_duration(double seconds);

}  // namespace gv::cli
