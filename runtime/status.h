// Errors as values. Library code returns Status or Expected<T>; only the CLI turns them into exit codes.
// Messages are written for the user: say what (file, node, op), what went wrong, and what to do.
#pragma once
#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace gv {

enum class StatusCode { kOk = 0, kInvalidArgument, kNotFound, kUnsupported, kIoError, kCorrupt, kInternal, kOutOfMemory };

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return {}; }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // Prefixes context ("while loading model.onnx: ...").
  Status with_context(const std::string& ctx) const {
    if (is_ok()) return *this;
    return Status(code_, ctx + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// A value or the Status saying why there is none.
template <typename T>
class Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}
  Expected(Status s) : v_(std::move(s)) { assert(!std::get<Status>(v_).is_ok()); }
  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Status& status() const {
    static const Status kOk;
    return has_value() ? kOk : std::get<1>(v_);
  }

 private:
  std::variant<T, Status> v_;
};

}  // namespace gv

#define GV_CONCAT_INNER(a, b) a##b
#define GV_CONCAT(a, b) GV_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function when it is not ok.
#define GV_RETURN_IF_ERROR(expr)            \
  do {                                      \
    ::gv::Status _gv_st = (expr);           \
    if (!_gv_st.is_ok()) return _gv_st;     \
  } while (0)

// Returns an error Status built from the message when the condition is false.
#define GV_CHECK_ARG(cond, msg)                                   \
  do {                                                            \
    if (!(cond)) return ::gv::invalid_argument(msg);              \
  } while (0)

// Assigns the value of an Expected or returns its Status.
#define GV_ASSIGN_OR_RETURN(lhs, expr)                                   \
  auto GV_CONCAT(_gv_exp_, __LINE__) = (expr);                           \
  if (!GV_CONCAT(_gv_exp_, __LINE__)) return GV_CONCAT(_gv_exp_, __LINE__).status(); \
  lhs = std::move(GV_CONCAT(_gv_exp_, __LINE__)).value()
