// The samples loader: arrays of rows from a .safetensors file or a directory of .npy files, taken in order,
// batch_size rows per step, wrapping around at the end.
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "runtime/data_loader.h"
#include "runtime/npy.h"

#if __has_include("runtime/safetensors.h")
#include "runtime/safetensors.h"
#define GV_DATA_HAVE_SAFETENSORS 1
#endif

namespace gv {
namespace {

class SamplesLoader : public DataLoader {
 public:
  SamplesLoader(std::string path, std::string format, std::map<std::string, Tensor> arrays, int64_t rows,
                int64_t seq, const DataOptions& opt)
      : path_(std::move(path)), format_(std::move(format)), arrays_(std::move(arrays)), rows_(rows), seq_(seq),
        opt_(opt) {}

  Expected<Batch> next() override {
    const int64_t B = opt_.batch_size;
    Batch batch;
    for (const auto& [name, a] : arrays_) {
      Shape shape = a.shape();
      shape[0] = B;
      Tensor out(a.dtype(), shape);
      size_t row_bytes = a.nbytes() / static_cast<size_t>(rows_);
      for (int64_t b = 0; b < B; ++b) {
        uint64_t r = (pos_ + static_cast<uint64_t>(b)) % static_cast<uint64_t>(rows_);
        std::memcpy(static_cast<uint8_t*>(out.data()) + b * row_bytes,
                    static_cast<const uint8_t*>(a.data()) + r * row_bytes, row_bytes);
      }
      batch.tensors[name] = std::move(out);
    }
    pos_ += static_cast<uint64_t>(B);
    return batch;
  }

  uint64_t position() const override { return pos_; }
  Status seek(uint64_t position) override {
    pos_ = position;
    return Status::ok();
  }
  int64_t seq_len() const override { return seq_; }
  uint64_t samples_per_epoch() const override { return static_cast<uint64_t>(rows_); }

  std::string describe() const override {
    std::string names;
    for (const auto& [name, a] : arrays_) names += (names.empty() ? "" : ", ") + name + " " + shape_str(a.shape());
    return "samples " + path_ + " (" + format_ + "): " + std::to_string(rows_) + " rows of " + std::to_string(seq_) +
           " tokens (" + names + "), batch " + std::to_string(opt_.batch_size) + ": " +
           detail::steps_per_epoch_str(static_cast<uint64_t>(rows_), opt_.batch_size) +
           " per epoch, in order; at sample " + std::to_string(pos_) + ", epoch " + std::to_string(epoch());
  }

 private:
  std::string path_, format_;
  std::map<std::string, Tensor> arrays_;
  int64_t rows_, seq_;
  DataOptions opt_;
  uint64_t pos_ = 0;
};

Expected<std::map<std::string, Tensor>> read_npy_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && e.path().extension() == ".npy") files.push_back(e.path());
  }
  if (ec) return io_error(dir + ": cannot list the directory: " + ec.message());
  if (files.empty()) {
    return invalid_argument(dir + ": the directory has no .npy files; put one array per graph input plus "
                            "labels.npy in it (e.g. input_ids.npy, labels.npy)");
  }
  std::sort(files.begin(), files.end());
  std::map<std::string, Tensor> arrays;
  for (const fs::path& f : files) {
    GV_ASSIGN_OR_RETURN(Tensor t, read_npy(f.string()));
    arrays[f.stem().string()] = std::move(t);
  }
  return arrays;
}

}  // namespace

namespace detail {

Expected<std::unique_ptr<DataLoader>> open_samples(const std::string& path, const DataOptions& options) {
  std::map<std::string, Tensor> arrays;
  std::string format;
  if (std::filesystem::is_directory(path)) {
    GV_ASSIGN_OR_RETURN(arrays, read_npy_dir(path));
    format = "directory of .npy";
  } else {
#ifdef GV_DATA_HAVE_SAFETENSORS
    GV_ASSIGN_OR_RETURN(arrays, read_safetensors(path));
    format = "safetensors";
#else
    return unsupported(path + ": this build has no safetensors reader (runtime/safetensors.h); pass a directory of "
                       ".npy files instead");
#endif
  }
  std::string names;
  for (const auto& [name, a] : arrays) names += (names.empty() ? "" : ", ") + name;
  for (const std::string* want : {&options.input_name, &options.label_name}) {
    if (!arrays.count(*want)) {
      return invalid_argument(path + ": no array named '" + *want + "' (it has: " + names + "); the samples need '" +
                              options.input_name + "' and '" + options.label_name +
                              "' arrays of shape [rows, seq]");
    }
    const Tensor& a = arrays.at(*want);
    if (a.rank() != 2) {
      return invalid_argument(path + ": array '" + *want + "' has shape " + shape_str(a.shape()) +
                              "; it must be 2-D [rows, seq]");
    }
  }
  const Tensor& input = arrays.at(options.input_name);
  const Tensor& labels = arrays.at(options.label_name);
  int64_t rows = input.shape()[0], seq = input.shape()[1];
  for (const auto& [name, a] : arrays) {
    if (a.rank() < 1 || a.shape()[0] != rows) {
      return invalid_argument(path + ": arrays have different row counts: '" + options.input_name + "' has " +
                              std::to_string(rows) + " rows but '" + name + "' has shape " + shape_str(a.shape()) +
                              "; every array needs one row per sample");
    }
  }
  if (labels.shape()[1] != seq) {
    return invalid_argument(path + ": '" + options.input_name + "' has sequence length " + std::to_string(seq) +
                            " but '" + options.label_name + "' has " + std::to_string(labels.shape()[1]) +
                            "; labels must be aligned with the inputs");
  }
  if (options.seq_len != 0 && options.seq_len != seq) {
    return invalid_argument(path + ": the samples have sequence length " + std::to_string(seq) + " but --seq-len is " +
                            std::to_string(options.seq_len) + "; drop --seq-len or pass --seq-len " +
                            std::to_string(seq));
  }
  if (rows == 0) return invalid_argument(path + ": the samples have no rows");
  if (options.batch_size > rows) {
    return invalid_argument(path + ": batch size " + std::to_string(options.batch_size) + " is larger than the " +
                            std::to_string(rows) + " rows of samples; use a batch size of at most " +
                            std::to_string(rows));
  }
  for (auto& [name, a] : arrays) {
    if (!dtype_is_float(a.dtype()) && a.dtype() != DType::kInt64) a = a.cast(DType::kInt64);
  }
  return std::unique_ptr<DataLoader>(
      std::make_unique<SamplesLoader>(path, format, std::move(arrays), rows, seq, options));
}

}  // namespace detail
}  // namespace gv
