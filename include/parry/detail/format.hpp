// Number formatting for messages, reports and describe() strings: one place,
// so every component prints a value the same way.
#pragma once

#include <iomanip>
#include <sstream>
#include <string>

namespace parry::detail {

/// `v` as an ostream prints it by default (up to 6 significant digits):
/// 0.1 -> "0.1", 1e-07 -> "1e-07". For error messages and descriptions.
inline std::string format_number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

/// `v` with exactly `digits` digits after the decimal point, for tables.
inline std::string format_fixed(double v, int digits) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << v;
  return out.str();
}

}  // namespace parry::detail
