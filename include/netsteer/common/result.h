// Result<T>: the one error type used across netsteer.
// Modelled on bpftrace's Result and std::expected (C++23) but small enough for C++20.
#pragma once

#include <cerrno>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace netsteer {

// An error: an errno-style code (0 when no errno applies) and a human message that
// already names what failed ("setns into pod netns: Operation not permitted").
struct Error {
  int code = 0;
  std::string message;

  // From an errno value (positive) with a context prefix.
  static Error from_errno(int err, std::string_view context);
  // From libbpf's convention: negative errno return values (or -1 with errno set).
  static Error from_libbpf(long ret, std::string_view context);
  // A plain error without an errno.
  static Error msg(std::string message, int code = 0) { return Error{code, std::move(message)}; }

  // Prefix the message with more context: "enrol pod x: " + message.
  Error wrap(std::string_view context) const&;
  Error wrap(std::string_view context) &&;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(implicit)
  Result(Error err) : v_(std::in_place_index<1>, std::move(err)) {}  // NOLINT(implicit)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error err) : err_(std::move(err)), ok_(false) {}  // NOLINT(implicit)

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const& { return err_; }
  Error&& error() && { return std::move(err_); }

 private:
  Error err_;
  bool ok_ = true;
};

using Status = Result<void>;

inline Status ok() { return {}; }

// Convenience for syscalls: returns Error from errno when ret < 0.
inline Status check_errno(long ret, std::string_view context) {
  if (ret < 0) return Error::from_errno(errno, context);
  return {};
}

}  // namespace netsteer

// Propagate an error from a Result expression: NS_TRY(auto x, f()); or NS_TRY_STATUS(g());
#define NS_CONCAT_INNER(a, b) a##b
#define NS_CONCAT(a, b) NS_CONCAT_INNER(a, b)
#define NS_TRY_STATUS(...)                                   \
  do {                                                       \
    auto&& ns_try_status_ = (__VA_ARGS__);                          \
    if (!ns_try_status_.ok()) return std::move(ns_try_status_).error(); \
  } while (0)
#define NS_TRY_IMPL(tmp, decl, expr)                 \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).error();      \
  decl = std::move(tmp).value()
#define NS_TRY(decl, ...) NS_TRY_IMPL(NS_CONCAT(ns_try_tmp_, __LINE__), decl, (__VA_ARGS__))
