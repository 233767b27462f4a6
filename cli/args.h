// The CLI's flag parser. Each command declares its flags (name, kind, default, help) and positional arguments; the
// parser accepts `--flag value`, `--flag=value`, boolean `--flag` (or `--flag=true|false`), positional arguments in
// any order between flags, and `--` to end the flags. Unknown flags, missing or malformed values and a wrong number of
// positional arguments are usage errors (exit code 2). The same declarations produce `galvatron COMMAND --help`.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/status.h"

namespace gv::cli {

struct FlagSpec {
  enum class Kind { kString, kInt, kFloat, kBool };
  std::string name;           // without the leading dashes: "batch"
  Kind kind = Kind::kString;
  std::string default_value;  // as text; "" for none ("false" for booleans)
  std::string help;
  std::string value_name;     // shown in help: --batch B
  bool repeated = false;      // may be given several times; every value is kept
  bool required = false;      // a usage error when not given
  std::string default_text;   // shown in help instead of default_value ("128 when the sequence is dynamic")

  FlagSpec with_required() const {
    FlagSpec f = *this;
    f.required = true;
    return f;
  }
  FlagSpec with_repeated() const {
    FlagSpec f = *this;
    f.repeated = true;
    return f;
  }
  FlagSpec with_default_text(std::string text) const {
    FlagSpec f = *this;
    f.default_text = std::move(text);
    return f;
  }
};

FlagSpec string_flag(std::string name, std::string value_name, std::string default_value, std::string help);
FlagSpec int_flag(std::string name, std::string value_name, std::string default_value, std::string help);
FlagSpec float_flag(std::string name, std::string value_name, std::string default_value, std::string help);
FlagSpec bool_flag(std::string name, std::string help);

struct PositionalSpec {
  std::string name;  // shown in help: MODEL.onnx
  std::string help;
  bool optional = false;
};

struct CommandSpec {
  std::string name;
  std::string summary;      // one line, for `galvatron --help`
  std::string description;  // a paragraph or more, for `galvatron COMMAND --help`
  std::vector<PositionalSpec> positionals;
  std::vector<FlagSpec> flags;
  std::vector<std::string> examples;
};

class ParsedArgs {
 public:
  // True when the user passed --help / -h (nothing else is checked then).
  bool help = false;
  std::vector<std::string> positionals;

  // The flag's value: the user's last one, else the default.
  const std::string& str(const std::string& name) const;
  int64_t i64(const std::string& name) const;
  double f64(const std::string& name) const;
  bool flag(const std::string& name) const;
  // Every value given for a repeated flag (empty when none was given).
  std::vector<std::string> all(const std::string& name) const;
  // Whether the user gave the flag (as opposed to its default applying).
  bool given(const std::string& name) const { return given_.count(name) > 0; }

 private:
  friend Expected<ParsedArgs> parse_args(const CommandSpec& spec, const std::vector<std::string>& args);
  const FlagSpec& spec_of(const std::string& name) const;
  std::map<std::string, std::vector<std::string>> given_;
  std::map<std::string, FlagSpec> specs_;
};

// Parses the arguments after the command name. A usage error comes back as kInvalidArgument with a one-line message
// (without the "see --help" hint, which the caller adds).
Expected<ParsedArgs> parse_args(const CommandSpec& spec, const std::vector<std::string>& args);

// `galvatron COMMAND --help`: usage line, description, arguments, every flag with its default, examples.
std::string format_help(const CommandSpec& spec);

}  // namespace gv::cli
