// The registry of `galvatron` subcommands. A command is one file (cli/cmd_NAME.cpp) that declares its flags and
// registers itself:
//
//   namespace gv::cli {
//   namespace {
//   Status run_frob(const ParsedArgs& args, CommandContext& ctx) { ... }
//   }
//   GV_REGISTER_COMMAND(frob, (Command{{.name = "frob", .summary = "...", .flags = {...}}, run_frob, 50}));
//   }
//
// main.cpp finds it by name, parses its flags, handles --help, and turns the returned Status into the one-line error
// and exit code. Results go to stdout; progress, notes and timings to stderr (ctx.note / ctx.timing).
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "cli/args.h"
#include "runtime/status.h"

namespace gv::cli {

inline constexpr const char* kVersion = "0.1.0";

struct CommandContext {
  std::string command;  // "inspect"
  bool quiet = false;   // --quiet: no notes or timings

  // A usage error (bad flag value, conflicting flags): exit code 2 and the "see --help" hint.
  Status usage(std::string message) {
    usage_error = true;
    return invalid_argument(std::move(message));
  }
  // Exit with this code and no error line (the command printed its own report, e.g. unsupported ops).
  Status fail_quietly(int code = 1) {
    exit_code = code;
    return internal_error("");
  }
  // "galvatron inspect: note: ..." on stderr.
  void note(const std::string& message) const;
  // "galvatron inspect: <what> took 1.23 s" on stderr.
  void timing(const std::string& what, std::chrono::steady_clock::time_point since) const;

  bool usage_error = false;
  int exit_code = 0;  // non-zero: set by fail_quietly
};

using CommandFn = std::function<Status(const ParsedArgs&, CommandContext&)>;

struct Command {
  CommandSpec spec;
  CommandFn run;
  int order = 100;  // position in `galvatron --help` (ascending)
};

// Every registered command, sorted by `order` then name.
std::vector<const Command*> all_commands();
const Command* find_command(const std::string& name);

struct CommandRegistrar {
  explicit CommandRegistrar(Command command);
};

}  // namespace gv::cli

#define GV_REGISTER_COMMAND(id, ...) static ::gv::cli::CommandRegistrar gv_command_registrar_##id(__VA_ARGS__)
