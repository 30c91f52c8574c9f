// parry::Response and parry::RequestContext: what goes into and out of
// Guard::predict().
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "parry/core/errors.hpp"

namespace parry {

/// Who is asking. The client id is the unit of throttling and per-client
/// query monitoring (an API key, an account id; never trusted for anything
/// else).
struct RequestContext {
  std::string client_id = "anonymous";
};

/// The label of a sample whose answer was withheld (Verdict::Abstained).
inline constexpr int64_t kNoLabel = -1;

/// The outcome of a request.
enum class Verdict {
  Accepted,  ///< answered normally
  Flagged,   ///< answered, but a detector or monitor considers it adversarial
  Rejected,  ///< not answered (throttled or refused by a gate)
  /// Answered without a label for some samples: the decision rule (a
  /// smoothed classifier) was not confident enough and withheld it.
  Abstained,
};

/// "accepted", "flagged", "rejected", "abstained".
const char* to_string(Verdict verdict);

/// What a caller may see. Fields the output policy hides stay empty/undefined.
struct Response {
  Verdict verdict = Verdict::Accepted;
  /// Public reason code (see parry::reason): "ok", "flagged", "rate_limited"…
  std::string reason = reason::kOk;
  /// Top-1 class per sample (empty when Rejected); kNoLabel (-1) where the
  /// decision rule abstained.
  std::vector<int64_t> labels;
  /// Class indices per sample, N×k, for TopK; undefined otherwise.
  torch::Tensor top_classes;
  /// Probabilities (softmax), N×K or N×k for TopK, only if the policy allows.
  torch::Tensor scores;
  /// Per sample: 1 if a detector flagged it (empty when Rejected).
  std::vector<uint8_t> flagged;
  /// For Rejected by a throttle: seconds until a retry can succeed.
  double retry_after_seconds = 0.0;
  /// Per sample: the certified L2 radius (pixel units) within which the
  /// label cannot change, 0 where the rule abstained. Empty unless the
  /// Guard's decision rule certifies and the output policy shows radii
  /// (OutputPolicy::shows_certified_radius).
  std::vector<double> certified_radius;
};

}  // namespace parry
