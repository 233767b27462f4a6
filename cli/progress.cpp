#include "cli/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace gv::cli {

std::string format_duration(double s) {
  char buf[64];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) % 3600) / 60);
  }
  return buf;
}

Progress::Progress(int64_t total, int64_t first, bool quiet)
    : total_(total), first_(first), quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {
  every_ = std::max<int64_t>(1, (total - first) / 20);
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

double Progress::remaining_s(int64_t step) const {
  int64_t done = step - first_;
  if (done <= 0) return 0;
  return elapsed_s() / static_cast<double>(done) * static_cast<double>(total_ - step);
}

void Progress::update(int64_t step, const std::string& fields) {
  if (quiet_) return;
  const std::string times = "elapsed " + format_duration(elapsed_s()) + "  remaining " + format_duration(remaining_s(step));
  if (tty_) {
    const int width = 24;
    int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r\033[K[%s] %lld/%lld  %s  %s", bar.c_str(), static_cast<long long>(step),
                 static_cast<long long>(total_), fields.c_str(), times.c_str());
    std::fflush(stderr);
    drawn_ = true;
  } else if (step == first_ + 1 || step % every_ == 0 || step == total_) {
    std::fprintf(stderr, "step %lld/%lld  %s  %s\n", static_cast<long long>(step), static_cast<long long>(total_),
                 fields.c_str(), times.c_str());
  }
}

void Progress::finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace gv::cli
