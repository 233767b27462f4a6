// Helpers shared by the CLI commands: number formatting, symbolic-dim flags, output path checks.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/onnx_scan.h"
#include "kernels/dtype.h"
#include "runtime/status.h"

namespace gv::cli {

// Collapses a message to one line (newlines become "; ").
std::string one_line(const std::string& message);
// 1234567 -> "1,234,567"
std::string with_commas(int64_t n);
// 1536 -> "1.5 KiB"
std::string human_bytes(uint64_t bytes);
// The project's name for an ONNX element type ("int64"), or "onnx type N" when the runtime has no such dtype.
std::string onnx_type_name(int32_t elem_type);
// "[batch, 32]" from declared dims ("?" for an unnamed dynamic dim).
std::string declared_shape_str(const OnnxInput& input);
// "ai.onnx" for the default domain.
std::string domain_name(const std::string& domain);

// The --dim NAME=VALUE flags as a map; a usage error for a malformed one.
Status parse_dim_flags(const ParsedArgs& args, CommandContext& ctx, std::map<std::string, int64_t>* dims);

// The flag spec of --dim, shared by the commands that import models.
FlagSpec dim_flag();
// The flag spec of --device.
FlagSpec device_flag();
// Checks --device (a usage error for a name other than cpu or cuda).
Status check_device_flag(const ParsedArgs& args, CommandContext& ctx);

// Fails when the output path cannot be written (its directory is missing or read-only, or it is a directory),
// so that a command finds out before doing its work.
Status check_output_path(const std::string& path, const std::string& flag);

}  // namespace gv::cli
