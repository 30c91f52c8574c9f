// Parry's exception hierarchy.
//
// Every exception carries two texts:
//  - public_message(): safe to show to the caller of a served model. It says
//    what was expected, never what the model is, where files live, library
//    versions or stack traces. what() returns this text.
//  - detail(): the full story for the operator's log (paths, the underlying
//    LibTorch/OpenCV message). Never send it over a service boundary.
//
//   parry::Error            base of everything Parry throws
//   ├─ InputError           the caller's request is malformed (shape, dtype,
//   │                       NaN/Inf, range, batch size, undecodable image)
//   ├─ OptionError          an options struct or config holds a bad value
//   ├─ IoError              a file is missing, truncated or corrupt
//   ├─ StateError           an object is used before it is ready (e.g. an
//   │                       uncalibrated detector, a model without features)
//   └─ InternalError        the model or a library failed unexpectedly
#pragma once

#include <stdexcept>
#include <string>

namespace parry {

/// Public reason codes: short, stable, safe to return to any caller.
namespace reason {
inline constexpr const char* kOk = "ok";
inline constexpr const char* kInvalidInput = "invalid_input";
inline constexpr const char* kRateLimited = "rate_limited";
inline constexpr const char* kFlagged = "flagged";
/// A smoothed classifier could not decide with the confidence it requires.
inline constexpr const char* kAbstained = "abstained";
inline constexpr const char* kInternal = "internal_error";
}  // namespace reason

/// Base class of every exception Parry throws.
class Error : public std::runtime_error {
 public:
  /// @param public_message text safe for any caller (returned by what()).
  /// @param detail operator-only text for logs; defaults to public_message.
  Error(std::string public_message, std::string detail = {})
      : std::runtime_error(public_message), detail_(detail.empty() ? std::string(what()) : std::move(detail)) {}

  /// Text safe to show to an untrusted caller.
  const char* public_message() const noexcept { return what(); }
  /// Full operator-only detail (may contain paths and library messages).
  const std::string& detail() const noexcept { return detail_; }
  /// The public reason code a service should answer with.
  virtual const char* reason_code() const noexcept { return reason::kInternal; }

 private:
  std::string detail_;
};

/// The caller's input does not satisfy the declared InputSpec or limits.
class InputError : public Error {
 public:
  using Error::Error;
  const char* reason_code() const noexcept override { return reason::kInvalidInput; }
};

/// An options struct or configuration value is out of its valid range.
class OptionError : public Error {
 public:
  using Error::Error;
};

/// A file could not be read or written, or its content is not what it claims.
class IoError : public Error {
 public:
  using Error::Error;
};

/// An object was used in a state that does not allow the call.
class StateError : public Error {
 public:
  using Error::Error;
};

/// Something failed inside the model or a dependency; the public message is
/// generic and the underlying message is kept in detail().
class InternalError : public Error {
 public:
  explicit InternalError(std::string detail)
      : Error("internal error while processing the request", std::move(detail)) {}
};

}  // namespace parry
