// certify::SmoothedDecision: a randomized-smoothing classifier as a Guard's
// decision rule (GuardBuilder::set_decision_rule), so that a smoothed model
// serves behind the gates, validation and preprocessors like any other.
//
//   auto smoothed = std::make_shared<const certify::SmoothedClassifier>(
//       model, certify::SmoothingOptions().sigma(0.25));
//   Guard guard = GuardBuilder(model, InputSpec(1, 28, 28))
//       .set_decision_rule(std::make_shared<certify::SmoothedDecision>(
//           smoothed, certify::SmoothedDecisionOptions().certify(true)))
//       .set_output_policy(std::make_shared<LabelOnly>(/*show_certified_radius=*/true))
//       .build();
//
// Each sample costs n forward passes of the base model (PREDICT's n, or
// CERTIFY's n₀ + n): size InputSpec::max_batch and the throttle for it.
// The probabilities an output policy may reveal are the vote shares of the
// noisy copies. Threat model: that of SmoothedClassifier; the certificate
// covers perturbations of the pixels the Guard receives only if no
// preprocessor runs before the rule (a preprocessor changes the input the
// radius is measured in).
#pragma once

#include <memory>
#include <string>

#include "parry/certify/smoothed_classifier.hpp"
#include "parry/core/decision_rule.hpp"
#include "parry/detail/arg.hpp"

namespace parry::certify {

struct SmoothedDecisionOptions {
  PARRY_OPTIONS(SmoothedDecisionOptions);
  /// true: CERTIFY each sample (label and certified radius, Algorithm 2);
  /// false (default): PREDICT (label only, Algorithm 1).
  PARRY_ARG(bool, certify) = false;
  /// PREDICT's n and α (used when certify is false).
  PARRY_ARG(SmoothedPredictOptions, prediction) = SmoothedPredictOptions();
  /// CERTIFY's n₀, n and α (used when certify is true).
  PARRY_ARG(CertifyOptions, certification) = CertifyOptions();
};

class SmoothedDecision final : public DecisionRule {
 public:
  /// @param classifier the smoothed classifier; shared, must not be null.
  /// @param options PREDICT or CERTIFY, and their options.
  /// @throws parry::OptionError if classifier is null, or certification's n0 > n.
  SmoothedDecision(std::shared_ptr<const SmoothedClassifier> classifier, SmoothedDecisionOptions options = {});
  /// Labels (kNoLabel where the classifier abstains), vote shares N×K and,
  /// when certifying, the radii.
  Decisions decide(const torch::Tensor& batch) const override;
  std::string describe() const override;

 private:
  std::shared_ptr<const SmoothedClassifier> classifier_;
  SmoothedDecisionOptions options_;
};

}  // namespace parry::certify
