// serve::class_names: the names a served model answers with.
#pragma once

#include <string>
#include <vector>

#include "parry/core/guard.hpp"

namespace parry::serve {

/// Number of classes of the Guard's model: the output size of one forward
/// pass on zeros of the Guard's input shape (1×C×H×W, at the low end of the
/// value range), without gates, detectors or output policy.
/// @throws parry::InternalError if the model fails on that input.
int64_t model_classes(const Guard& guard);

/// The class names by label: `configured` (a config's "classes") if it is
/// not empty, else "0".."K-1" with K = model_classes(guard).
/// @throws parry::OptionError if `configured` names a different number of
///   classes than the model outputs (the message gives both counts).
std::vector<std::string> class_names(const Guard& guard, const std::vector<std::string>& configured = {});

}  // namespace parry::serve
