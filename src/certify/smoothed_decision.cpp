// certify::SmoothedDecision: PREDICT or CERTIFY of a SmoothedClassifier behind a Guard.
#include "parry/certify/smoothed_decision.hpp"

#include <sstream>

#include "parry/core/response.hpp"
#include "parry/detail/format.hpp"

namespace parry::certify {

static_assert(kAbstain == kNoLabel, "an abstention of the classifier is the Guard's withheld label");

SmoothedDecision::SmoothedDecision(std::shared_ptr<const SmoothedClassifier> classifier,
                                   SmoothedDecisionOptions options)
    : classifier_(std::move(classifier)), options_(std::move(options)) {
  if (!classifier_) throw OptionError("SmoothedDecision: classifier is null");
  detail::require(options_.certification().n0() <= options_.certification().n(), "SmoothedDecision",
                  "certification n0 must not exceed n = " + std::to_string(options_.certification().n()),
                  options_.certification().n0());
}

Decisions SmoothedDecision::decide(const torch::Tensor& batch) const {
  Decisions decisions;
  torch::Tensor votes;
  if (options_.certify()) {
    const auto certificates = classifier_->certify(batch, options_.certification());
    std::vector<torch::Tensor> rows;
    for (const auto& c : certificates) {
      decisions.labels.push_back(c.label);
      decisions.certified_radius.push_back(c.radius);
      rows.push_back(c.votes);
    }
    votes = torch::stack(rows);
  } else {
    decisions.labels = classifier_->predict(batch, options_.prediction(), &votes);
  }
  decisions.probabilities = votes.to(torch::kFloat32) / votes.sum(1, /*keepdim=*/true).to(torch::kFloat32);
  return decisions;
}

std::string SmoothedDecision::describe() const {
  std::ostringstream out;
  if (options_.certify()) {
    const auto& c = options_.certification();
    out << "SmoothedDecision(CERTIFY n0=" << c.n0() << " n=" << c.n() << " alpha=" << detail::format_number(c.alpha());
  } else {
    const auto& p = options_.prediction();
    out << "SmoothedDecision(PREDICT n=" << p.n() << " alpha=" << detail::format_number(p.alpha());
  }
  out << ", " << classifier_->describe() << ")";
  return out.str();
}

}  // namespace parry::certify
