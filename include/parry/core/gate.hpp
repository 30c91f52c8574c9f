// parry::Gate: request-level admission control that runs before anything else
// in Guard::predict (throttling, query-stream monitoring).
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/response.hpp"

namespace parry {

/// A gate's answer for one request.
struct GateDecision {
  enum class Action { Admit, Flag, Reject };
  Action action = Action::Admit;
  /// Public reason code when not admitted (see parry::reason).
  std::string reason = reason::kOk;
  /// For Reject: seconds until a retry can succeed (0 if unknown).
  double retry_after_seconds = 0.0;

  static GateDecision admit() { return {}; }
  static GateDecision flag(std::string reason) { return {Action::Flag, std::move(reason), 0.0}; }
  static GateDecision reject(std::string reason, double retry_after_seconds = 0.0) {
    return {Action::Reject, std::move(reason), retry_after_seconds};
  }
};

/// Gates are shared by all requests of a Guard and must be thread-safe.
class Gate {
 public:
  virtual ~Gate() = default;
  /// Decides on a request. `input` is the caller's tensor before validation:
  /// a gate must not assume its shape, dtype or values are sane.
  virtual GateDecision admit(const RequestContext& context, const torch::Tensor& input) = 0;
  /// Whether admit() looks at the pixels (default false: it decides from the
  /// context alone, like a throttle). Guard::predict_image runs the gates that
  /// do not before decoding the image, and those that do after, on the
  /// decoded image, so a pixel-based gate is never handed an empty tensor.
  virtual bool needs_pixels() const { return false; }
  /// One line for reports.
  virtual std::string describe() const = 0;
};

}  // namespace parry
