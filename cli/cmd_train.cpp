// `galvatron train MODEL.onnx --data PATH ...`: trains an imported model on the CPU or GPUs (or a built-in zoo model).
// --devices N runs N processes under mpirun (one GPU each with --device cuda, communicating through NCCL).
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
#include "cli/mpi_launch.h"
#include "cli/train_loop.h"
#include "cli/world_communicator.h"
#include "runtime/communicator.h"

namespace gv::cli {
namespace {

Status run_train(const ParsedArgs& args, CommandContext& ctx) {
  if (args.positionals.empty() && !names_zoo_model(args) && !args.given("data")) return run_addition_demo(args, ctx);
  const int64_t devices = args.i64("devices");
  const bool cuda = args.str("device") == "cuda";
  if (devices > 1 && args.str("device") != "cpu" && !cuda) {
    return ctx.usage("--devices " + std::to_string(devices) + " runs on --device cpu or --device cuda");
  }
  if (devices > 1 && !launched_under_mpi()) {
    // A zoo shape the flags get wrong is one error here, not one per worker process.
    if (names_zoo_model(args)) GV_RETURN_IF_ERROR(zoo_model_from_flags(args, ctx).status());
    return relaunch_under_mpirun(devices);
  }
  // On GPUs: one GPU per process and NCCL's communicator (cli/world_communicator.h).
  GV_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, make_world_communicator(cuda, devices, ctx));
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
                .summary = "Train an ONNX model (or a zoo model) on the CPU or GPUs, in one process or under a parallel plan.",
                .description =
                    "Imports MODEL.onnx specialized to --batch-size x --seq-len, builds the backward pass, loss and\n"
                    "optimizer as one static plan, and trains on --data. The loss is the graph's scalar output if it\n"
                    "has one, else the mean cross-entropy of its logits against the data's labels (ignore index\n"
                    "-100). --data is a token stream (llm.c .bin, or a 1-D .npy) cut into windows of seq+1 tokens and\n"
                    "shuffled with --seed, or samples (.safetensors, or a folder of .npy) named after the graph inputs\n"
                    "plus `labels`, taken in order. One step uses --grad-accum micro-batches of --batch-size rows.\n"
                    "--devices N runs N processes under a hybrid-parallel plan (Galvatron's flags, a plan file, or\n"
                    "--auto); --device cuda trains on GPUs.\n"
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
