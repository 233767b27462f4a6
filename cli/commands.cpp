#include "cli/commands.h"

#include <algorithm>
#include <cstdio>
#include <memory>

namespace gv::cli {
namespace {

// Constructed on first use, so registrars in other files can run in any order during static initialization.
std::vector<std::unique_ptr<Command>>& registry() {
  static std::vector<std::unique_ptr<Command>> r;
  return r;
}

}  // namespace

CommandRegistrar::CommandRegistrar(Command command) {
  for (const auto& c : registry()) {
    if (c->spec.name == command.spec.name) {
      std::fprintf(stderr, "galvatron: internal error: command '%s' registered twice\n", command.spec.name.c_str());
      std::abort();
    }
  }
  registry().push_back(std::make_unique<Command>(std::move(command)));
}

std::vector<const Command*> all_commands() {
  std::vector<const Command*> out;
  for (const auto& c : registry()) out.push_back(c.get());
  std::sort(out.begin(), out.end(), [](const Command* a, const Command* b) {
    return a->order != b->order ? a->order < b->order : a->spec.name < b->spec.name;
  });
  return out;
}

const Command* find_command(const std::string& name) {
  for (const auto& c : registry())
    if (c->spec.name == name) return c.get();
  return nullptr;
}

void CommandContext::note(const std::string& message) const {
  if (quiet) return;
  std::fprintf(stderr, "galvatron %s: %s\n", command.c_str(), message.c_str());
}

void CommandContext::timing(const std::string& what, std::chrono::steady_clock::time_point since) const {
  if (quiet) return;
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
  if (s < 1.0) std::fprintf(stderr, "galvatron %s: %s in %.0f ms\n", command.c_str(), what.c_str(), s * 1e3);
  else std::fprintf(stderr, "galvatron %s: %s in %.2f s\n", command.c_str(), what.c_str(), s);
}

}  // namespace gv::cli
