// The token-stream loader: an llm.c .bin or a 1-D .npy, memory-mapped, cut into shuffled windows of seq_len+1
// tokens. Also write_token_bin.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>

#include "runtime/data_loader.h"
#include "runtime/npy.h"

namespace gv {
namespace {

constexpr int32_t kBinMagic = 20240520;
constexpr int32_t kBinVersion = 1;
constexpr size_t kBinHeaderBytes = 256 * sizeof(int32_t);

// A read-only mapping of a whole file.
class MappedFile {
 public:
  static Expected<std::unique_ptr<MappedFile>> open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return io_error(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      return io_error(path + ": cannot stat: " + std::strerror(err));
    }
    auto m = std::unique_ptr<MappedFile>(new MappedFile());
    m->size_ = static_cast<size_t>(st.st_size);
    if (m->size_ > 0) {
      void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int err = errno;
        ::close(fd);
        return io_error(path + ": cannot map: " + std::strerror(err));
      }
      m->data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
    return m;
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

enum class TokenType { kU16, kU32, kI32, kI64 };

class TokenStreamLoader : public DataLoader {
 public:
  TokenStreamLoader(std::string path, std::string format, std::unique_ptr<MappedFile> file, size_t offset,
                    TokenType type, uint64_t ntok, const DataOptions& opt)
      : path_(std::move(path)), format_(std::move(format)), file_(std::move(file)), tokens_(file_->data() + offset),
        type_(type), ntok_(ntok), opt_(opt), windows_((ntok - 1) / static_cast<uint64_t>(opt.seq_len)) {}

  uint64_t windows() const { return windows_; }

  Expected<Batch> next() override {
    const int64_t B = opt_.batch_size, T = opt_.seq_len;
    Tensor inputs(DType::kInt64, {B, T}), labels(DType::kInt64, {B, T});
    int64_t* in = inputs.data_as<int64_t>();
    int64_t* lab = labels.data_as<int64_t>();
    std::vector<int64_t> window(static_cast<size_t>(T) + 1);
    for (int64_t b = 0; b < B; ++b) {
      uint64_t p = pos_ + static_cast<uint64_t>(b);
      uint64_t e = p / windows_;
      if (e != order_epoch_ || order_.empty()) {
        order_ = shuffled_order(windows_, opt_.seed, e);
        order_epoch_ = e;
      }
      uint64_t start = order_[p % windows_] * static_cast<uint64_t>(T);
      for (int64_t t = 0; t <= T; ++t) {
        int64_t v = token(start + static_cast<uint64_t>(t));
        if (v < 0) {
          return corrupt(path_ + ": token " + std::to_string(start + t) + " is negative (" + std::to_string(v) +
                         "); token ids must be >= 0");
        }
        window[t] = v;
      }
      std::memcpy(in + b * T, window.data(), static_cast<size_t>(T) * 8);
      std::memcpy(lab + b * T, window.data() + 1, static_cast<size_t>(T) * 8);
    }
    pos_ += static_cast<uint64_t>(B);
    Batch batch;
    batch.tensors[opt_.input_name] = std::move(inputs);
    batch.tensors[opt_.label_name] = std::move(labels);
    return batch;
  }

  uint64_t position() const override { return pos_; }
  Status seek(uint64_t position) override {
    pos_ = position;
    return Status::ok();
  }
  int64_t seq_len() const override { return opt_.seq_len; }
  uint64_t samples_per_epoch() const override { return windows_; }

  std::string describe() const override {
    return "token stream " + path_ + " (" + format_ + "): " + std::to_string(ntok_) + " tokens, " +
           std::to_string(windows_) + " windows of " + std::to_string(opt_.seq_len) + "+1, batch " +
           std::to_string(opt_.batch_size) + ": " + detail::steps_per_epoch_str(windows_, opt_.batch_size) +
           " per epoch, shuffled with seed " + std::to_string(opt_.seed) + "; at sample " + std::to_string(pos_) +
           ", epoch " + std::to_string(epoch());
  }

 private:
  int64_t token(uint64_t i) const {
    switch (type_) {
      case TokenType::kU16: {
        uint16_t v;
        std::memcpy(&v, tokens_ + 2 * i, 2);
        return v;
      }
      case TokenType::kU32: {
        uint32_t v;
        std::memcpy(&v, tokens_ + 4 * i, 4);
        return v;
      }
      case TokenType::kI32: {
        int32_t v;
        std::memcpy(&v, tokens_ + 4 * i, 4);
        return v;
      }
      case TokenType::kI64: {
        int64_t v;
        std::memcpy(&v, tokens_ + 8 * i, 8);
        return v;
      }
    }
    return -1;
  }

  std::string path_, format_;
  std::unique_ptr<MappedFile> file_;
  const uint8_t* tokens_;
  TokenType type_;
  uint64_t ntok_;
  DataOptions opt_;
  uint64_t windows_;
  uint64_t pos_ = 0;
  uint64_t order_epoch_ = 0;
  std::vector<uint64_t> order_;
};

// Reads the llm.c header; returns the token count.
Expected<uint64_t> check_bin(const MappedFile& f, const std::string& path) {
  if (f.size() < kBinHeaderBytes) {
    return corrupt(path + ": truncated: " + std::to_string(f.size()) + " bytes, but an llm.c .bin starts with a " +
                   std::to_string(kBinHeaderBytes) + "-byte header; regenerate the file");
  }
  int32_t header[3];
  std::memcpy(header, f.data(), sizeof header);
  if (header[0] != kBinMagic) {
    return corrupt(path + ": bad magic " + std::to_string(header[0]) + " (an llm.c GPT-2 token file starts with " +
                   std::to_string(kBinMagic) + "); this is not an llm.c uint16 token .bin, regenerate it with llm.c's "
                   "dev/data scripts");
  }
  if (header[1] != kBinVersion) {
    return unsupported(path + ": llm.c .bin version " + std::to_string(header[1]) + " is not supported (only " +
                       std::to_string(kBinVersion) + ", uint16 tokens); regenerate it with the GPT-2 tokenizer");
  }
  if (header[2] < 0) return corrupt(path + ": negative token count " + std::to_string(header[2]) + " in the header");
  uint64_t ntok = static_cast<uint64_t>(header[2]);
  uint64_t have = f.size() - kBinHeaderBytes;
  if (ntok * 2 > have) {
    return corrupt(path + ": truncated: the header says " + std::to_string(ntok) + " tokens (" +
                   std::to_string(ntok * 2) + " bytes) but only " + std::to_string(have) +
                   " bytes follow it; re-download or regenerate the file");
  }
  if (ntok * 2 < have) {
    return corrupt(path + ": " + std::to_string(have - ntok * 2) + " bytes after the " + std::to_string(ntok) +
                   " tokens that the header counts; the header is wrong or this is not an llm.c .bin");
  }
  return ntok;
}

}  // namespace

namespace detail {

Expected<std::unique_ptr<DataLoader>> open_token_stream(const std::string& path, const DataOptions& options) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  bool is_bin = ext == ".bin";
  GV_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::open(path));
  if (file->size() == 0) return corrupt(path + ": the file is empty; regenerate it");
  size_t offset;
  uint64_t ntok;
  TokenType type;
  std::string format;
  if (is_bin) {
    GV_ASSIGN_OR_RETURN(ntok, check_bin(*file, path));
    offset = kBinHeaderBytes;
    type = TokenType::kU16;
    format = "llm.c .bin, uint16";
  } else {
    GV_ASSIGN_OR_RETURN(NpyHeader h, parse_npy_header(file->data(), file->size(), path));
    if (h.shape.size() != 1) {
      return invalid_argument(path + ": a token stream .npy must be 1-D, this one is " +
                              std::to_string(h.shape.size()) + "-D " + shape_str(h.shape) +
                              "; for per-row samples put input_ids.npy and labels.npy in a directory and pass "
                              "the directory");
    }
    if (h.kind == 'u' && h.itemsize == 2) type = TokenType::kU16;
    else if (h.kind == 'u' && h.itemsize == 4) type = TokenType::kU32;
    else if (h.kind == 'i' && h.itemsize == 4) type = TokenType::kI32;
    else if (h.kind == 'i' && h.itemsize == 8) type = TokenType::kI64;
    else {
      return unsupported(path + ": token dtype '" + h.descr + "' is not supported; save the tokens as uint16, "
                         "uint32, int32 or int64");
    }
    ntok = static_cast<uint64_t>(h.shape[0]);
    offset = h.data_offset;
    format = ".npy, " + std::string(type == TokenType::kU16 ? "uint16" : type == TokenType::kU32 ? "uint32"
                                    : type == TokenType::kI32 ? "int32" : "int64");
  }
  if (options.seq_len == 0) {
    return invalid_argument(path + ": --seq-len is required for a token stream (the window length in tokens)");
  }
  uint64_t T = static_cast<uint64_t>(options.seq_len);
  if (ntok < T + 1) {
    return invalid_argument(path + ": " + std::to_string(ntok) + " tokens, fewer than --seq-len + 1 = " +
                            std::to_string(T + 1) + " needed for one window; use a shorter --seq-len or more data");
  }
  auto loader = std::make_unique<TokenStreamLoader>(path, format, std::move(file), offset, type, ntok, options);
  if (static_cast<uint64_t>(options.batch_size) > loader->windows()) {
    return invalid_argument(path + ": batch size " + std::to_string(options.batch_size) + " is larger than the " +
                            std::to_string(loader->windows()) + " windows of " + std::to_string(T) + "+1 tokens in " +
                            std::to_string(ntok) + " tokens; use a smaller batch size or --seq-len, or more data");
  }
  return std::unique_ptr<DataLoader>(std::move(loader));
}

}  // namespace detail

Status write_token_bin(const std::string& path, const std::vector<uint16_t>& tokens) {
  if (tokens.size() > static_cast<size_t>(INT32_MAX)) {
    return invalid_argument(path + ": " + std::to_string(tokens.size()) +
                            " tokens do not fit one llm.c .bin (at most 2^31-1); split them into shards");
  }
  std::vector<uint8_t> bytes(kBinHeaderBytes + tokens.size() * 2, 0);
  int32_t header[3] = {kBinMagic, kBinVersion, static_cast<int32_t>(tokens.size())};
  std::memcpy(bytes.data(), header, sizeof header);
  if (!tokens.empty()) std::memcpy(bytes.data() + kBinHeaderBytes, tokens.data(), tokens.size() * 2);
  return write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace gv
