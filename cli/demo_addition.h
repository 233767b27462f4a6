// The built-in demo behind a bare `galvatron train`: a small GPT from the zoo learns two-digit addition
// ("47+38=085") from a corpus generated on the spot, on the CPU, in a few minutes. It ends with something a person can
// judge: the exact-match accuracy on 1,000 problems held out of training, and a few completions. Everything lands in
// runs/<name>/: metrics.jsonl, the checkpoint, the exported ONNX model, loss.svg and summary.json.
#pragma once
#include "cli/args.h"
#include "cli/commands.h"

namespace gv::cli {

Status run_addition_demo(const ParsedArgs& args, CommandContext& ctx);

}  // namespace gv::cli
