// `galvatron COMMAND [args]`: finds the command in the registry (cli/commands.h), parses its flags, and turns its
// Status into one line on stderr and an exit code: 0 success, 1 failure, 2 usage error.
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/blas_cpu_check.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "runtime/backend.h"

namespace gv::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

std::string general_help() {
  std::string s =
      "usage: galvatron COMMAND [args] [flags]\n"
      "\n"
      "Imports HuggingFace transformer ONNX graphs and runs or trains them.\n"
      "\n"
      "commands:\n";
  size_t width = 0;
  for (const Command* c : all_commands()) width = std::max(width, c->spec.name.size());
  for (const Command* c : all_commands()) {
    s += "  " + c->spec.name + std::string(width + 3 - c->spec.name.size(), ' ') + c->spec.summary + "\n";
  }
  s +=
      "\n"
      "flags:\n"
      "  --help      Show this help (galvatron COMMAND --help describes a command's flags).\n"
      "  --version   Print the version and exit.\n";
  return s;
}

std::string version_text() {
  return std::string("galvatron ") + kVersion + " (backends: cpu" + (cuda_backend_built() ? ", cuda" : "") + ")\n";
}

std::string closest_command(const std::string& name) {
  std::string best;
  size_t best_d = 3;
  for (const Command* c : all_commands()) {
    const std::string& n = c->spec.name;
    // Levenshtein distance, small strings.
    std::vector<size_t> prev(n.size() + 1), cur(n.size() + 1);
    for (size_t j = 0; j <= n.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= name.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= n.size(); ++j) {
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (name[i - 1] == n[j - 1] ? 0 : 1)});
      }
      std::swap(prev, cur);
    }
    if (prev[n.size()] < best_d) {
      best_d = prev[n.size()];
      best = n;
    }
  }
  return best;
}

void print_error(const std::string& who, const std::string& message) {
  std::fflush(stdout);
  std::string line = who + ": error: " + one_line(message) + "\n";
  std::fputs(line.c_str(), stderr);
}

int run_main(const std::vector<std::string>& argv) {
  if (argv.empty()) {
    std::fputs(general_help().c_str(), stderr);
    return kExitUsage;
  }
  const std::string& first = argv[0];
  if (first == "--help" || first == "-h" || (first == "help" && argv.size() == 1)) {
    std::fputs(general_help().c_str(), stdout);
    return kExitOk;
  }
  if (first == "--version" || first == "version") {
    std::fputs(version_text().c_str(), stdout);
    return kExitOk;
  }
  if (first == "help") {  // galvatron help COMMAND
    const Command* c = find_command(argv[1]);
    if (!c) {
      print_error("galvatron", "unknown command '" + argv[1] + "'; see galvatron --help");
      return kExitUsage;
    }
    return run_main({argv[1], "--help"});  // galvatron help COMMAND == galvatron COMMAND --help
  }
  if (!first.empty() && first[0] == '-') {
    print_error("galvatron", "unknown flag " + first + "; a command comes first; see galvatron --help");
    return kExitUsage;
  }
  const Command* command = find_command(first);
  if (!command) {
    std::string hint = closest_command(first);
    print_error("galvatron", "unknown command '" + first + "'" + (hint.empty() ? "" : " (did you mean " + hint + "?)") +
                                 "; see galvatron --help");
    return kExitUsage;
  }
  const std::string who = "galvatron " + command->spec.name;
  const std::string see = "; see galvatron " + command->spec.name + " --help";
  // Every command takes --quiet.
  CommandSpec spec = command->spec;
  bool has_quiet = false;
  for (const auto& f : spec.flags) has_quiet = has_quiet || f.name == "quiet";
  if (!has_quiet) spec.flags.push_back(bool_flag("quiet", "No progress, notes or timings on stderr (errors only)."));
  auto args = parse_args(spec, std::vector<std::string>(argv.begin() + 1, argv.end()));
  if (!args) {
    print_error(who, args.status().message() + see);
    return kExitUsage;
  }
  if (args->help) {
    std::fputs(format_help(spec).c_str(), stdout);
    return kExitOk;
  }
  CommandContext ctx;
  ctx.command = command->spec.name;
  ctx.quiet = args->flag("quiet");
  Status st = command->run(*args, ctx);
  std::fflush(stdout);
  if (ctx.exit_code != 0) return ctx.exit_code;
  if (st.is_ok()) return kExitOk;
  if (ctx.usage_error) {
    print_error(who, st.message() + see);
    return kExitUsage;
  }
  print_error(who, st.message());
  return kExitFailure;
}

}  // namespace
}  // namespace gv::cli

int main(int argc, char** argv) {
  gv::cli::restart_with_fast_blas_kernels(argv);
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    return gv::cli::run_main(args);
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fputs("galvatron: error: out of memory\n", stderr);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::string line = "galvatron: internal error: " + gv::cli::one_line(e.what()) + "\n";
    std::fputs(line.c_str(), stderr);
  } catch (...) {
    std::fflush(stdout);
    std::fputs("galvatron: internal error: unknown exception\n", stderr);
  }
  return 1;
}
