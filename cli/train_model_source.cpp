#include "cli/train_model_source.h"

#include "cli/common.h"
#include "cli/model_flags.h"
#include "cli/onnx_scan.h"
#include "cli/parallel_flags.h"
#include "importer/onnx_exporter.h"

namespace gv::cli {

std::vector<FlagSpec> train_model_flags() {
  return {
      string_flag("data", "PATH", "", "Training data: .bin / 1-D .npy token stream, or .safetensors / folder of .npy samples."),
      int_flag("steps", "N", "100", "Optimizer steps to train (a resumed run continues up to N)."),
      int_flag("batch-size", "B", "8", "Rows per micro-batch."),
      int_flag("seq-len", "T", "0", "Sequence length; 0: the samples' length or the model's static length."),
      string_flag("optimizer", "adamw|sgd", "adamw", "Optimizer (PyTorch semantics)."),
      float_flag("lr", "LR", "0.001", "Peak learning rate."),
      float_flag("weight-decay", "WD", "0.01", "Decoupled weight decay for adamw (default 0.01); L2 for sgd (default 0)."),
      float_flag("beta1", "B1", "0.9", "AdamW beta1."),
      float_flag("beta2", "B2", "0.999", "AdamW beta2."),
      float_flag("eps", "EPS", "1e-8", "AdamW epsilon."),
      float_flag("momentum", "M", "0", "SGD momentum."),
      string_flag("schedule", "constant|cosine", "constant", "Learning-rate schedule: constant, or linear warmup then cosine decay to 0."),
      int_flag("warmup-steps", "N", "0", "Warmup steps of the cosine schedule."),
      float_flag("grad-clip", "NORM", "0", "Clip the global gradient norm to NORM (0: off)."),
      int_flag("grad-accum", "K", "1", "Micro-batches per optimizer step (gradients averaged)."),
      int_flag("seed", "S", "0", "Seed of the data shuffle and of dropout masks."),
      int_flag("padding-idx", "ID", "-1", "Token whose embedding row gets no gradient from the lookup (PyTorch's Embedding padding_idx; HF pad_token_id of BERT-style models). -1: none."),
      string_flag("checkpoint-layers", "LIST", "", "Layers to recompute in the backward pass: all, none, or 0,2,5."),
      string_flag("fuse-ops", "on|off", "on", "Rewrite the exporters' attention chains (MatMul, scale, mask, Softmax, MatMul) into one Attention node and GELU formulas into one Gelu node before the backward pass: the same results up to float rounding, less memory and time. off: train the graph as imported."),
      string_flag("metrics", "FILE.jsonl", "", "Write one JSON object per step: step, loss, lr, grad_norm, tokens_per_s, peak_mem_bytes."),
      string_flag("save-grads", "FILE.safetensors", "", "Write the first batch's gradients at the initial weights, keyed by initializer name."),
      string_flag("checkpoint-dir", "DIR", "", "Write checkpoints here (and at the end of the run)."),
      int_flag("checkpoint-every", "N", "0", "Checkpoint every N steps (0: only at the end)."),
      string_flag("resume", "DIR|FILE", "", "Continue from a checkpoint folder (its latest) or file."),
      string_flag("export", "OUT.onnx", "", "Write the trained weights back into the ONNX model."),
      string_flag("run-name", "NAME", "", "Demo only: results go to runs/NAME/ (default: addition)."),
      int_flag("devices", "N", "1", "Worker processes: N > 1 re-launches under mpirun -np N (one MPI rank per worker; one GPU each with --device cuda, NCCL between them). Without plan flags: data parallel, each takes B/N rows of every batch; with them: the plan's layout."),
      device_flag(),
      string_flag("precision", "fp32|tf32|bf16", "fp32", "What the matrix products compute in: fp32 (exact), tf32 or bf16 tensor cores on rounded operands (--device cuda only; storage, accumulation and master weights stay float32). GALVATRON_CUDA_TF32=1 is an alias of tf32 when the flag is not given."),
      dim_flag(),
  };
}

std::vector<FlagSpec> train_flags() {
  std::vector<FlagSpec> f = train_model_flags();
  for (auto& z : zoo_model_flags()) f.push_back(z);
  for (auto& p : parallel_flags()) f.push_back(p);
  return f;
}

Status export_trained_model(const TrainModelSource& source, const std::map<std::string, Tensor>& params,
                            const std::string& out_path) {
  if (!source.from_zoo) return export_onnx_with_weights(source.onnx_path, out_path, params);
  GV_ASSIGN_OR_RETURN(auto proto, build_model(source.zoo_config, source.batch, source.seq, WeightInit::kNone));
  GV_ASSIGN_OR_RETURN(int64_t n, set_hf_weights(&proto, params, /*require_all=*/true));
  (void)n;
  return write_model(proto, out_path);
}

Expected<Graph> import_model_at_rows(const TrainModelSource& source, int64_t rows) {
  if (source.from_zoo) {
    GV_ASSIGN_OR_RETURN(ImportedModel m, build_and_import(source.zoo_config, rows, source.seq,
                                                          WeightInit::kHuggingFace, source.seed));
    return std::move(m.graph);
  }
  ImportOptions io = source.import_options;
  io.batch = rows;
  GV_ASSIGN_OR_RETURN(ImportedModel m, import_onnx(source.onnx_path, io));
  return std::move(m.graph);
}

Expected<Graph> RowImports::operator()(int64_t rows) {
  if (!source_.from_zoo) return import_model_at_rows(source_, rows);
  if (weights_.empty()) {
    GV_ASSIGN_OR_RETURN(Graph g, import_model_at_rows(source_, rows));
    for (ValueId v : g.parameters()) weights_[g.value(v).name] = g.value(v).data;
    return g;
  }
  // The structure at these rows, and the weights drawn once: the random initialisation of a large model (llama-7b:
  // 6.7B draws per process) is most of a plan's start-up time.
  GV_ASSIGN_OR_RETURN(ImportedModel m, build_and_import(source_.zoo_config, rows, source_.seq, WeightInit::kNone,
                                                        source_.seed));
  const std::vector<ValueId> params = m.graph.parameters();
  if (params.size() != weights_.size()) {
    return internal_error("zoo model imported at " + std::to_string(rows) + " rows has " +
                          std::to_string(params.size()) + " parameters, the first import " +
                          std::to_string(weights_.size()));
  }
  for (ValueId v : params) {
    Value& val = m.graph.value(v);
    auto it = weights_.find(val.name);
    if (it == weights_.end() || it->second.shape() != val.data.shape() || it->second.dtype() != val.data.dtype()) {
      return internal_error("zoo model imported at " + std::to_string(rows) + " rows: parameter '" + val.name +
                            "' differs from the first import");
    }
    val.data = it->second;
  }
  return std::move(m.graph);
}

namespace {

// Rows of each batch this process trains on: B / --devices (rank r takes rows [r*B/N, (r+1)*B/N)).
Expected<int64_t> local_batch_size(const ParsedArgs& args, CommandContext& ctx) {
  const int64_t b = args.i64("batch-size"), n = args.i64("devices");
  if (n < 1) return ctx.usage("--devices must be at least 1");
  // A parallel plan re-imports the model per batch slice; this import gives the model's structure.
  if (parallel_flags_given(args)) return b;
  if (b % n != 0) {
    return ctx.usage("--batch-size " + std::to_string(b) + " is not divisible by --devices " + std::to_string(n) +
                     ": each data-parallel worker takes an equal share of every batch");
  }
  return b / n;
}

Expected<TrainModelSource> load_zoo_model(const ParsedArgs& args, CommandContext& ctx) {
  TrainModelSource src;
  GV_ASSIGN_OR_RETURN(src.zoo_config, zoo_model_from_flags(args, ctx));
  src.from_zoo = true;
  src.label = src.zoo_config.size == "custom" ? src.zoo_config.describe() : src.zoo_config.size;
  if (!args.given("data")) return ctx.usage("--data PATH is required to train a zoo model");
  DataOptions dopt;
  dopt.batch_size = args.i64("batch-size");
  dopt.seq_len = args.i64("seq-len") > 0 ? args.i64("seq-len") : src.zoo_config.seq_length;
  dopt.seed = static_cast<uint64_t>(args.i64("seed"));
  GV_ASSIGN_OR_RETURN(src.setup.loader, open_data(args.str("data"), dopt));
  GV_ASSIGN_OR_RETURN(src.batch, local_batch_size(args, ctx));
  src.seq = src.setup.loader->seq_len();
  if (src.seq > src.zoo_config.max_positions && src.zoo_config.type != ModelType::kLlama) {
    return ctx.usage("sequence length " + std::to_string(src.seq) + " exceeds the model's " +
                     std::to_string(src.zoo_config.max_positions) + " positions");
  }
  ctx.note("building " + src.zoo_config.describe() + " (" + with_commas(parameter_count(src.zoo_config)) +
           " parameters, HuggingFace initialisation, seed " + std::to_string(args.i64("seed")) + ")");
  src.seed = static_cast<uint64_t>(args.i64("seed"));
  // Under a parallel plan the partitioner imports the model again for each batch slice (import_model_at_rows), with
  // the seeded weights; this import only gives the structure (layers, shapes, tied parameters), so its weights stay
  // zero: no random initialisation of a model that is thrown away (most of a large model's start-up time).
  const WeightInit init = parallel_flags_given(args) ? WeightInit::kNone : WeightInit::kHuggingFace;
  GV_ASSIGN_OR_RETURN(src.model, build_and_import(src.zoo_config, src.batch, src.seq, init, src.seed));
  return src;
}

}  // namespace

Expected<TrainModelSource> load_train_model(const ParsedArgs& args, CommandContext& ctx) {
  if (names_zoo_model(args)) {
    if (!args.positionals.empty()) return ctx.usage("give either MODEL.onnx or --model-type/--model-size, not both");
    return load_zoo_model(args, ctx);
  }
  TrainModelSource src;
  if (args.positionals.empty()) {
    return ctx.usage("give MODEL.onnx or --model-type/--model-size to train");
  }
  if (!args.given("data")) return ctx.usage("--data PATH is required to train MODEL.onnx");
  src.onnx_path = args.positionals[0];
  src.label = src.onnx_path;
  GV_ASSIGN_OR_RETURN(OnnxFileInfo info, scan_onnx(src.onnx_path));

  // The sequence length: the flag, else the model's static one (samples may also set it).
  int64_t seq = args.i64("seq-len");
  if (seq == 0) {
    for (const OnnxInput& in : info.inputs) {
      if (in.has_shape && in.dims.size() >= 2 && in.dims[1].value > 0) seq = in.dims[1].value;
    }
  }
  DataOptions dopt;
  dopt.batch_size = args.i64("batch-size");
  dopt.seq_len = seq;
  dopt.seed = static_cast<uint64_t>(args.i64("seed"));
  GV_ASSIGN_OR_RETURN(src.setup.loader, open_data(args.str("data"), dopt));

  ImportOptions io;
  GV_ASSIGN_OR_RETURN(io.batch, local_batch_size(args, ctx));
  io.seq = src.setup.loader->seq_len();
  GV_RETURN_IF_ERROR(parse_dim_flags(args, ctx, &io.dims));
  GV_ASSIGN_OR_RETURN(src.model, import_onnx(src.onnx_path, io));
  src.import_options = io;
  src.batch = io.batch;
  src.seq = io.seq;
  return src;
}

}  // namespace gv::cli
