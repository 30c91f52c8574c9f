// Options declared once, in the spirit of LibTorch's TORCH_ARG: one line gives
// an options struct its field, its chained setter and its getter, and the
// checked variant also its validation and the rule text that the JSON config,
// the CLI help and the docs show (parry/config/registry.hpp).
//
//   struct BitDepthOptions {
//     PARRY_OPTIONS(BitDepthOptions);
//     /// Bits per channel kept.
//     PARRY_CHECKED_ARG(int, bits, 4, v >= 1 && v <= 8, "must be in 1..8");
//     PARRY_ARG(GradientPolicy, gradient_policy) = GradientPolicy::StraightThrough;
//   };
//   BitDepthOptions().bits(9);  // OptionError "BitDepthOptions::bits: must be in 1..8, but got 9"
//
// Like TORCH_ARG, each macro leaves the struct in a `private:` section; write
// `public:` before hand-written members that follow it.
#pragma once

#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>

#include "parry/detail/format.hpp"
#include "parry/detail/require.hpp"

namespace parry::detail {

/// `value` as an option check prints it: integers exactly, floating-point
/// values with format_number, anything else through its operator<<.
template <typename T>
std::string arg_text(const T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    return value ? "true" : "false";
  } else if constexpr (std::is_integral_v<T>) {
    return std::to_string(value);
  } else if constexpr (std::is_floating_point_v<T>) {
    return format_number(static_cast<double>(value));
  } else if constexpr (std::is_enum_v<T>) {
    return std::to_string(static_cast<std::underlying_type_t<T>>(value));
  } else {
    std::ostringstream out;
    out << value;
    return out.str();
  }
}

/// Throws parry::OptionError "<options>::<name>: <rule>, but got <value>"
/// unless `ok`. The expansion of PARRY_CHECKED_ARG calls it.
template <typename T>
void require_arg(bool ok, const char* options, const char* name, const char* rule, const T& value) {
  require(ok, std::string(options) + "::" + name, rule, arg_text(value));
}

}  // namespace parry::detail

/// Names an options struct for the messages of its checked setters
/// ("BitDepthOptions::bits: …"). Put it first in the struct.
#define PARRY_OPTIONS(Self)                            \
 public:                                               \
  /** The struct's name, as option errors print it. */ \
  static constexpr const char* options_name() {        \
    return #Self;                                      \
  }

/// An option `name` of type `T` without a check: field `name_`, chained
/// setter `name(T)` and getter `name()`. Follow it with `= default_value;`.
#define PARRY_ARG(T, name)                           \
 public:                                             \
  /** Sets `name` and returns *this for chaining. */ \
  auto name(const T& new_##name)->decltype(*this) {  \
    this->name##_ = new_##name;                      \
    return *this;                                    \
  }                                                  \
  /** The current `name`. */                         \
  const T& name() const noexcept {                   \
    return this->name##_;                            \
  }                                                  \
                                                     \
 private:                                            \
  T name##_

/// An option `name` of type `T` with default `default_value` whose setter
/// accepts a value `v` only if the expression `predicate` (written in terms of
/// `v`) holds, and otherwise throws parry::OptionError
/// "<Options>::<name>: <rule>, but got <v>". `rule` is a string literal stating
/// the predicate for people ("must be in 1..8"); `name_rule()` returns it.
/// The struct must start with PARRY_OPTIONS(Self). The default is not checked.
#define PARRY_CHECKED_ARG(T, name, default_value, predicate, rule)                              \
 public:                                                                                        \
  /** The rule the setter of `name` enforces, as its error message states it. */                \
  static constexpr const char* name##_rule() {                                                  \
    return rule;                                                                                \
  }                                                                                             \
  /** Sets `name`; @throws parry::OptionError unless the value obeys name##_rule(). */          \
  auto name(const T& v)->decltype(*this) {                                                      \
    ::parry::detail::require_arg(static_cast<bool>(predicate), options_name(), #name, rule, v); \
    this->name##_ = v;                                                                          \
    return *this;                                                                               \
  }                                                                                             \
  /** The current `name`. */                                                                    \
  const T& name() const noexcept {                                                              \
    return this->name##_;                                                                       \
  }                                                                                             \
                                                                                                \
 private:                                                                                       \
  T name##_ = default_value
