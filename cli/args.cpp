#include "cli/args.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace gv::cli {
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

bool parse_i64(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

bool parse_f64(const std::string& s, double* out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool parse_bool(const std::string& s, bool* out) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") {
    *out = true;
    return true;
  }
  if (s == "false" || s == "0" || s == "no" || s == "off") {
    *out = false;
    return true;
  }
  return false;
}

const char* kind_word(FlagSpec::Kind k) {
  switch (k) {
    case FlagSpec::Kind::kInt: return "an integer";
    case FlagSpec::Kind::kFloat: return "a number";
    case FlagSpec::Kind::kBool: return "true or false";
    case FlagSpec::Kind::kString: return "a value";
  }
  return "a value";
}

Status check_value(const FlagSpec& f, const std::string& v) {
  int64_t i;
  double d;
  bool b;
  bool ok = f.kind == FlagSpec::Kind::kString || (f.kind == FlagSpec::Kind::kInt && parse_i64(v, &i)) ||
            (f.kind == FlagSpec::Kind::kFloat && parse_f64(v, &d)) ||
            (f.kind == FlagSpec::Kind::kBool && parse_bool(v, &b));
  if (!ok) return invalid_argument("--" + f.name + " expects " + kind_word(f.kind) + ", got '" + v + "'");
  return Status::ok();
}

std::string suggestion(const CommandSpec& spec, const std::string& name) {
  std::string best;
  size_t best_d = 3;  // suggest only close matches
  for (const auto& f : spec.flags) {
    size_t d = edit_distance(name, f.name);
    bool prefix = !name.empty() && f.name.rfind(name, 0) == 0;
    if (prefix) d = std::min<size_t>(d, 1);
    if (d < best_d) {
      best_d = d;
      best = f.name;
    }
  }
  if (name != "help" && best.empty() && edit_distance(name, "help") <= 1) best = "help";
  return best.empty() ? "" : " (did you mean --" + best + "?)";
}

FlagSpec make_flag(FlagSpec::Kind kind, std::string name, std::string value_name, std::string default_value,
                   std::string help) {
  FlagSpec f;
  f.name = std::move(name);
  f.kind = kind;
  f.value_name = std::move(value_name);
  f.default_value = std::move(default_value);
  f.help = std::move(help);
  return f;
}

}  // namespace

FlagSpec string_flag(std::string name, std::string value_name, std::string default_value, std::string help) {
  return make_flag(FlagSpec::Kind::kString, std::move(name), std::move(value_name), std::move(default_value),
                   std::move(help));
}
FlagSpec int_flag(std::string name, std::string value_name, std::string default_value, std::string help) {
  return make_flag(FlagSpec::Kind::kInt, std::move(name), std::move(value_name), std::move(default_value),
                   std::move(help));
}
FlagSpec float_flag(std::string name, std::string value_name, std::string default_value, std::string help) {
  return make_flag(FlagSpec::Kind::kFloat, std::move(name), std::move(value_name), std::move(default_value),
                   std::move(help));
}
FlagSpec bool_flag(std::string name, std::string help) {
  return make_flag(FlagSpec::Kind::kBool, std::move(name), "", "false", std::move(help));
}

const FlagSpec& ParsedArgs::spec_of(const std::string& name) const {
  auto it = specs_.find(name);
  // A command asking for a flag it did not declare is a programming error: fail loudly in every build.
  if (it == specs_.end()) {
    std::fprintf(stderr, "galvatron: internal error: undeclared flag --%s\n", name.c_str());
    std::abort();
  }
  return it->second;
}

const std::string& ParsedArgs::str(const std::string& name) const {
  const FlagSpec& f = spec_of(name);
  auto it = given_.find(name);
  return it != given_.end() ? it->second.back() : f.default_value;
}

int64_t ParsedArgs::i64(const std::string& name) const {
  int64_t v = 0;
  parse_i64(str(name), &v);
  return v;
}

double ParsedArgs::f64(const std::string& name) const {
  double v = 0;
  parse_f64(str(name), &v);
  return v;
}

bool ParsedArgs::flag(const std::string& name) const {
  bool v = false;
  parse_bool(str(name), &v);
  return v;
}

std::vector<std::string> ParsedArgs::all(const std::string& name) const {
  spec_of(name);
  auto it = given_.find(name);
  return it != given_.end() ? it->second : std::vector<std::string>{};
}

Expected<ParsedArgs> parse_args(const CommandSpec& spec, const std::vector<std::string>& args) {
  ParsedArgs out;
  for (const auto& f : spec.flags) out.specs_[f.name] = f;
  for (const auto& a : args) {
    if (a == "--") break;
    if (a == "--help" || a == "-h") {
      out.help = true;
      return out;
    }
  }
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (flags_done || a == "-" || a.empty() || a[0] != '-') {
      out.positionals.push_back(a);
      continue;
    }
    if (a == "--") {
      flags_done = true;
      continue;
    }
    // One-letter flags may also be spelled with one dash (-o out.onnx, -o=out.onnx).
    const bool short_form = a.rfind("--", 0) != 0 && a.size() >= 2 && (a.size() == 2 || a[2] == '=') &&
                            out.specs_.count(a.substr(1, 1));
    if (a.rfind("--", 0) != 0 && !short_form) {
      // "-5" style negative numbers are not flags, but no command takes a negative positional; be explicit.
      return invalid_argument("unknown flag " + a + " (flags are spelled --name)");
    }
    std::string name = a.substr(short_form ? 1 : 2), value;
    bool has_value = false;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = out.specs_.find(name);
    if (it == out.specs_.end()) return invalid_argument("unknown flag --" + name + suggestion(spec, name));
    const FlagSpec& f = it->second;
    if (!has_value) {
      if (f.kind == FlagSpec::Kind::kBool) {
        value = "true";
      } else {
        // The next argument is the value, unless there is none or it is another flag.
        if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0) {
          return invalid_argument("--" + name + " needs a value (" + kind_word(f.kind) + ")");
        }
        value = args[++i];
      }
    }
    GV_RETURN_IF_ERROR(check_value(f, value));
    auto& slot = out.given_[name];
    if (f.repeated) slot.push_back(value);
    else slot = {value};
  }
  size_t required = 0;
  for (const auto& p : spec.positionals) required += !p.optional;
  if (out.positionals.size() < required) {
    std::string missing;
    for (size_t k = out.positionals.size(); k < spec.positionals.size(); ++k) {
      if (spec.positionals[k].optional) continue;
      missing += (missing.empty() ? "" : " ") + spec.positionals[k].name;
    }
    return invalid_argument("missing argument " + missing);
  }
  if (out.positionals.size() > spec.positionals.size()) {
    return invalid_argument("unexpected argument '" + out.positionals[spec.positionals.size()] + "'");
  }
  for (const auto& f : spec.flags) {
    if (f.required && !out.given_.count(f.name)) {
      return invalid_argument("missing --" + f.name + (f.value_name.empty() ? "" : " " + f.value_name) +
                              " (required)");
    }
  }
  return out;
}

std::string format_help(const CommandSpec& spec) {
  std::ostringstream os;
  os << "usage: galvatron " << spec.name;
  for (const auto& p : spec.positionals) os << " " << (p.optional ? "[" + p.name + "]" : p.name);
  if (!spec.flags.empty()) os << " [flags]";
  os << "\n\n" << spec.summary << "\n";
  if (!spec.description.empty()) os << "\n" << spec.description << "\n";
  if (!spec.positionals.empty()) {
    os << "\narguments:\n";
    for (const auto& p : spec.positionals) os << "  " << p.name << "\n      " << p.help << "\n";
  }
  os << "\nflags:\n";
  for (const auto& f : spec.flags) {
    os << (f.name.size() == 1 ? "  -" : "  --") << f.name;  // one-letter flags take one dash (both work)
    if (f.kind != FlagSpec::Kind::kBool) os << " " << (f.value_name.empty() ? "VALUE" : f.value_name);
    os << "\n      " << f.help;
    if (f.required) os << " (required)";
    else if (!f.default_text.empty()) os << " (default: " << f.default_text << ")";
    else if (f.kind == FlagSpec::Kind::kBool) os << " (default: " << (f.default_value == "true" ? "on" : "off") << ")";
    else if (f.repeated) os << " (repeatable)";
    else os << " (default: " << (f.default_value.empty() ? "none" : f.default_value) << ")";
    os << "\n";
  }
  os << "  --help\n      Show this help and exit.\n";
  if (!spec.examples.empty()) {
    os << "\nexamples:\n";
    for (const auto& e : spec.examples) os << "  " << e << "\n";
  }
  return os.str();
}

}  // namespace gv::cli
