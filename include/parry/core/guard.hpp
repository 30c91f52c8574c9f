// parry::Guard: a model behind a composed pipeline of defenses.
//
//   request -> gates -> validate (InputSpec) -> preprocessors -> detectors
//           ---- pixel space above, model space below ----
//           -> model (its own input transform, then logits) -> output policy -> Response
//              or a decision rule over the model (randomized smoothing: votes,
//              abstention, certified radius)
//
// Threat model: the Guard is the service boundary. Callers are untrusted:
// gates run first (throttling, query monitoring), then every input is
// validated. Errors carry a public message that reveals nothing internal; the
// detail goes to parry's log. The output policy decides what leaves.
//
// Pixel space and model space: preprocessors and detectors see pixels in the
// InputSpec's value range. A transform that maps pixels elsewhere (Normalize)
// belongs to the model (Model::with_input_transform), so that a squeezer or a
// bit-depth reduction never sees normalised values; GuardBuilder refuses it as
// a preprocessor.
//
// Life cycle: a GuardBuilder collects the stages, build() makes the Guard, and
// a Guard has no mutating method. predict() and differentiable_logits() may be
// called from any number of threads; gates synchronise their own state, and a
// detector's calibration is replaced whole (Detector::calibrate/load swap it
// atomically) while the Guard serves. predict() never changes module state.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/decision_rule.hpp"
#include "parry/core/detector.hpp"
#include "parry/core/errors.hpp"
#include "parry/core/gate.hpp"
#include "parry/core/input_spec.hpp"
#include "parry/core/model.hpp"
#include "parry/core/output_policy.hpp"
#include "parry/core/preprocessor.hpp"
#include "parry/core/response.hpp"

namespace parry {

class GuardBuilder;

class Guard {
 public:
  /// A Guard with no gates, preprocessors or detectors and a label-only
  /// output policy; GuardBuilder adds stages.
  /// @param model the classifier, in eval mode (LibTorch modules start in
  ///   training mode: call `net->eval()` first).
  /// @param spec what callers may send (pixel space).
  /// @throws parry::StateError if the model is in training mode.
  Guard(Model model, InputSpec spec);

  /// The serving path. `input` is one image C×H×W or a batch N×C×H×W.
  /// @return labels (and scores only if the policy allows), the verdict and a
  ///   public reason code. A gate's rejection is a Rejected response, not an
  ///   exception.
  /// @throws parry::InputError for malformed input (public message names what
  ///   was expected); parry::InternalError if the model fails (details logged).
  Response predict(const torch::Tensor& input, const RequestContext& context = {}) const;

  /// The serving path for a request whose pixels must first be decoded
  /// (data::predict_image decodes PNG/JPEG bytes with it). Gates that decide
  /// without pixels (throttles) run before `decode` is called, so a throttled
  /// client costs no decoding work; gates that need pixels
  /// (Gate::needs_pixels, e.g. QueryMonitor) run on the decoded image, which
  /// then follows predict(). `decode` returns C×H×W or N×C×H×W pixels.
  /// @throws parry::InputError if `decode` throws one (its public message is
  ///   kept); parry::InternalError for any other failure of `decode`.
  Response predict_decoded(const std::function<torch::Tensor()>& decode, const RequestContext& context = {}) const;

  /// The attack path: preprocessors (each with its gradient policy) then the
  /// model, no gates, detectors or output policy. Returns logits N×K that are
  /// differentiable with respect to `x` as far as the policies allow.
  /// @throws parry::InputError for malformed input.
  torch::Tensor differentiable_logits(const torch::Tensor& x) const;

  /// The preprocessed batch, as the model sees it on the serving path.
  torch::Tensor preprocess(const torch::Tensor& batch) const;

  const Model& model() const { return model_; }
  const InputSpec& input_spec() const { return spec_; }
  const std::vector<std::shared_ptr<const Preprocessor>>& preprocessors() const { return preprocessors_; }
  const std::vector<std::shared_ptr<const Detector>>& detectors() const { return detectors_; }
  const std::vector<std::shared_ptr<Gate>>& gates() const { return gates_; }
  const OutputPolicy& output_policy() const { return *policy_; }
  /// The decision rule that replaces one forward pass, or null.
  const std::shared_ptr<const DecisionRule>& decision_rule() const { return decision_rule_; }

  /// Multi-line description of the pipeline, for reports and logs.
  std::string describe() const;

 private:
  friend class GuardBuilder;
  struct GateOutcome {
    bool rejected = false;
    Response rejection;
    bool flagged = false;
    std::string flag_reason;
  };
  enum class GatePhase { All, WithoutPixels, WithPixels };
  GateOutcome run_gates(const RequestContext& context, const torch::Tensor& input, GatePhase phase,
                        GateOutcome outcome) const;
  Response predict_valid(const torch::Tensor& batch, const GateOutcome& gates) const;
  /// Runs the gates; a gate's exception follows the public-message policy.
  GateOutcome run_gates_safely(const RequestContext& context, const torch::Tensor& input, GatePhase phase,
                               GateOutcome outcome) const;
  /// The decision rule's answer for the preprocessed batch x, through the
  /// output policy into `response`; true if it abstained on any sample.
  bool decide(const torch::Tensor& x, Response& response) const;
  /// `logits` if they are N×K for `rows` samples; InternalError otherwise.
  static torch::Tensor checked_logits(const torch::Tensor& logits, int64_t rows);
  /// Validates and moves the batch to the model's device.
  torch::Tensor validated(const torch::Tensor& input) const;

  Model model_;
  InputSpec spec_;
  std::vector<std::shared_ptr<Gate>> gates_;
  std::vector<std::shared_ptr<const Preprocessor>> preprocessors_;
  std::vector<std::shared_ptr<const Detector>> detectors_;
  std::shared_ptr<const OutputPolicy> policy_;
  std::shared_ptr<const DecisionRule> decision_rule_;
};

/// Collects a Guard's stages; build() makes an immutable Guard. The builder
/// may go on and build others (they share the stage objects).
///
///   parry::Guard guard = parry::GuardBuilder(model, parry::InputSpec(3, 32, 32))
///                            .add_gate(throttle)
///                            .add_preprocessor(bit_depth)
///                            .add_detector(squeezing)
///                            .set_output_policy(std::make_shared<parry::LabelOnly>())
///                            .build();
class GuardBuilder {
 public:
  /// @param model the classifier (its own input transform included, see
  ///   Model::with_input_transform), in eval mode.
  /// @param spec what callers may send: pixel space.
  /// @throws parry::StateError if the model is in training mode.
  GuardBuilder(Model model, InputSpec spec);

  /// Appends a gate; gates run in the order added. Gates are shared by every
  /// request and must be thread-safe.
  /// @throws parry::OptionError if `gate` is null.
  GuardBuilder& add_gate(std::shared_ptr<Gate> gate);
  /// Appends a preprocessor; preprocessors run in the order added, on pixels.
  /// @throws parry::OptionError if it is null or does not keep values in the
  ///   pixel range (Preprocessor::keeps_pixel_range, e.g. Normalize: make it
  ///   the model's input transform instead).
  GuardBuilder& add_preprocessor(std::shared_ptr<const Preprocessor> preprocessor);
  /// Appends a detector; it scores the preprocessed pixels and must be
  /// calibrated before predict() is called.
  /// @throws parry::OptionError if `detector` is null.
  GuardBuilder& add_detector(std::shared_ptr<const Detector> detector);
  /// Replaces the output policy (default: LabelOnly).
  /// @throws parry::OptionError if `policy` is null.
  GuardBuilder& set_output_policy(std::shared_ptr<const OutputPolicy> policy);
  /// Decides with `rule` instead of the argmax of one forward pass of the
  /// model (certify::SmoothedDecision: randomized smoothing). The output
  /// policy then sees the rule's probabilities as the scores; samples the
  /// rule abstains on get label kNoLabel, no scores (NaN rows, top classes
  /// -1) and make the verdict Abstained (Flagged takes precedence); radii
  /// leave only if the policy shows them. Detectors still score the
  /// preprocessed pixels with the model's own logits. The attack path
  /// (differentiable_logits) stays the model's: attack a smoothed Guard with
  /// EOT over its noise.
  /// @throws parry::OptionError if `rule` is null.
  GuardBuilder& set_decision_rule(std::shared_ptr<const DecisionRule> rule);

  /// The Guard with every stage added so far.
  Guard build() const { return guard_; }
  /// The same, shared (for services and evaluators that hand it around).
  std::shared_ptr<const Guard> build_shared() const { return std::make_shared<const Guard>(guard_); }

 private:
  Guard guard_;
};

}  // namespace parry
