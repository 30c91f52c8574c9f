// parry::Response helpers.
#include "parry/core/response.hpp"

namespace parry {

const char* to_string(Verdict verdict) {
  switch (verdict) {
    case Verdict::Accepted:
      return "accepted";
    case Verdict::Flagged:
      return "flagged";
    case Verdict::Rejected:
      return "rejected";
    case Verdict::Abstained:
      return "abstained";
  }
  return "unknown";
}

}  // namespace parry
