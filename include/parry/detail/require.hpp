// Option validation shared by the compiled components.
#pragma once

#include <sstream>
#include <string>

#include "parry/core/errors.hpp"

namespace parry::detail {

/// Throws parry::OptionError "<where>: <what>, but got <got>" unless `ok`.
template <typename T>
void require(bool ok, const std::string& where, const std::string& what, const T& got) {
  if (!ok) {
    std::ostringstream out;
    out << where << ": " << what << ", but got " << got;
    throw OptionError(out.str());
  }
}

}  // namespace parry::detail
