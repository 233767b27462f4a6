// `galvatron train MODEL.onnx --data PATH ...`: trains an imported model on the CPU (or a built-in zoo model).
// The loop: batches from the data loader, Trainer::step, a progress bar, metrics lines, checkpoints (temp file +
// rename), and at the end the trained weights exported back into the ONNX model.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/common.h"
#include "cli/demo_addition.h"
#include "cli/model_flags.h"
#include "cli/train_loop.h"
#include "runtime/communicator.h"

namespace gv::cli {
namespace {

// The first `mpirun` on PATH ("" when there is none).
std::string find_mpirun() {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t colon = p.find(':', pos);
    std::string dir = p.substr(pos, colon == std::string::npos ? std::string::npos : colon - pos);
    if (!dir.empty()) {
      std::string candidate = dir + "/mpirun";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    if (colon == std::string::npos) break;
    pos = colon + 1;
  }
  return "";
}

// Replaces this process by `mpirun -np N` running this same command line; returns only on failure.
Status relaunch_under_mpirun(int64_t n) {
  if (!mpi_backend_built()) {
    return unsupported("--devices " + std::to_string(n) + " needs MPI, but galvatron was built without it (install "
                       "libopenmpi-dev and rebuild)");
  }
  const std::string mpirun = find_mpirun();
  if (mpirun.empty()) {
    return not_found("--devices " + std::to_string(n) + " starts one process per worker with mpirun, but there is no "
                     "mpirun on PATH (install openmpi-bin)");
  }
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> self_args;
  for (std::string a; std::getline(in, a, '\0');) self_args.push_back(a);
  std::error_code ec;
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec || self_args.empty()) return internal_error("cannot read this process's command line to re-launch it");
  // The workers share the cores: give each its part, unless the user chose.
  if (!std::getenv("OMP_NUM_THREADS")) {
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    std::string threads = std::to_string(std::max<unsigned>(1, cores / static_cast<unsigned>(n)));
    ::setenv("OMP_NUM_THREADS", threads.c_str(), 1);
  }
  std::vector<std::string> cmd = {mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                                  "-np", std::to_string(n), exe};
  cmd.insert(cmd.end(), self_args.begin() + 1, self_args.end());
  std::vector<char*> argv;
  for (std::string& a : cmd) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  ::execv(mpirun.c_str(), argv.data());
  return io_error("cannot run " + mpirun + ": " + std::strerror(errno));
}

Status run_train(const ParsedArgs& args, CommandContext& ctx) {
  if (args.positionals.empty() && !names_zoo_model(args) && !args.given("data")) return run_addition_demo(args, ctx);
  const int64_t devices = args.i64("devices");
  if (devices > 1 && args.str("device") != "cpu") {
    return ctx.usage("--devices " + std::to_string(devices) + " runs on the CPU only for now (--device cpu)");
  }
  if (devices > 1 && !launched_under_mpi()) return relaunch_under_mpirun(devices);
  GV_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, make_communicator());
  if (comm->size() != devices) {
    return ctx.usage("launched with " + std::to_string(comm->size()) + " MPI ranks but --devices " +
                     std::to_string(devices) + "; they must agree");
  }
  if (comm->rank() != 0) ctx.quiet = true;  // rank 0 alone reports
  GV_ASSIGN_OR_RETURN(TrainSettings settings, train_settings_from_args(args, ctx));
  settings.trainer.comm = comm.get();
  auto t0 = std::chrono::steady_clock::now();
  GV_ASSIGN_OR_RETURN(TrainModelSource source, load_train_model(args, ctx));
  ctx.timing("loading the model", t0);
  GV_ASSIGN_OR_RETURN(TrainOutcome outcome, run_training(settings, source, ctx));
  return Status::ok();
}

}  // namespace

GV_REGISTER_COMMAND(
    train,
    (Command{
        .spec =
            {
                .name = "train",
                .summary = "Train an ONNX model (or a zoo model) on the CPU.",
                .description =
                    "Imports MODEL.onnx specialized to --batch-size x --seq-len, builds the backward pass, loss and\n"
                    "optimizer as one static plan, and trains on --data. The loss is the graph's scalar output if it\n"
                    "has one, else the mean cross-entropy of its logits against the data's labels (ignore index\n"
                    "-100). --data is a token stream (llm.c .bin, or a 1-D .npy) cut into windows of seq+1 tokens and\n"
                    "shuffled with --seed, or samples (.safetensors, or a folder of .npy) named after the graph inputs\n"
                    "plus `labels`, taken in order. One step uses --grad-accum micro-batches of --batch-size rows.\n"
                    "With no model and no data, runs the built-in demo: a small GPT learns two-digit addition\n"
                    "and reports its accuracy on held-out problems (results in runs/NAME/, see --run-name).",
                .positionals = {{.name = "MODEL.onnx", .help = "The model to train.", .optional = true}},
                .flags = train_flags(),
                .examples = {"galvatron train", "galvatron train gpt2.onnx --data tokens.bin --seq-len 256 --steps 1000 --lr 3e-4 "
                             "--schedule cosine --warmup-steps 100 --metrics metrics.jsonl --checkpoint-dir ckpt",
                             "galvatron train model.onnx --data samples.safetensors --steps 10 --save-grads grads.safetensors",
                             "galvatron train model.onnx --data tokens.bin --seq-len 256 --steps 2000 --resume ckpt"},
            },
        .run = run_train,
        .order = 10}));

}  // namespace gv::cli
