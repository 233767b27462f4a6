#include "cli/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace gv::cli {

Status write_loss_svg(const std::string& path, const std::vector<std::pair<int64_t, double>>& points,
                      const std::string& title) {
  if (points.empty()) return invalid_argument("no loss values to plot");
  const double W = 720, H = 420, left = 70, right = 20, top = 40, bottom = 50;
  const double pw = W - left - right, ph = H - top - bottom;
  int64_t s0 = points.front().first, s1 = std::max(points.back().first, s0 + 1);
  double lo = points[0].second, hi = points[0].second;
  for (const auto& p : points) {
    lo = std::min(lo, p.second);
    hi = std::max(hi, p.second);
  }
  lo = std::max(0.0, lo - 0.05 * (hi - lo));
  if (hi - lo < 1e-9) hi = lo + 1;
  auto X = [&](double s) { return left + pw * (s - s0) / static_cast<double>(s1 - s0); };
  auto Y = [&](double l) { return top + ph * (1.0 - (l - lo) / (hi - lo)); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" << title << "</text>\n";
  // Axes, ticks and grid.
  for (int i = 0; i <= 5; ++i) {
    double l = lo + (hi - lo) * i / 5.0, y = Y(l);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", l);
    o << "<line x1=\"" << left << "\" y1=\"" << y << "\" x2=\"" << W - right << "\" y2=\"" << y
      << "\" stroke=\"#e5e5e5\"/>\n<text x=\"" << left - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << buf
      << "</text>\n";
    double s = s0 + (s1 - s0) * i / 5.0;
    o << "<text x=\"" << X(s) << "\" y=\"" << H - bottom + 18 << "\" text-anchor=\"middle\">"
      << static_cast<int64_t>(std::llround(s)) << "</text>\n";
  }
  o << "<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\"" << H - bottom
    << "\" stroke=\"black\"/>\n<line x1=\"" << left << "\" y1=\"" << H - bottom << "\" x2=\"" << W - right
    << "\" y2=\"" << H - bottom << "\" stroke=\"black\"/>\n";
  o << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text x=\"18\" y=\"" << top + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 18 "
    << top + ph / 2 << ")\">loss</text>\n";
  o << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  for (const auto& p : points) o << X(static_cast<double>(p.first)) << "," << Y(p.second) << " ";
  o << "\"/>\n</svg>\n";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << o.str();
    if (!f.good()) return io_error("cannot write '" + tmp + "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  return ec ? io_error("cannot rename '" + tmp + "': " + ec.message()) : Status::ok();
}

}  // namespace gv::cli
