// parry::Guard: a model behind a composed pipeline of defenses.
//
//   request -> gates -> validate (InputSpec) -> preprocessors -> model
//           -> detectors -> output policy -> Response
//
// Threat model: the Guard is the service boundary. Callers are untrusted:
// gates run first (throttling, query monitoring), then every input is
// validated. Errors carry a public message that reveals nothing internal; the
// detail goes to parry's log. The output policy decides what leaves.
//
// Thread safety: configure a Guard (add_* / set_*) before sharing it; after
// that predict() and differentiable_logits() may be called from any number of
// threads. predict() never changes module state (no train/eval toggling).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parry/core/detector.hpp"
#include "parry/core/errors.hpp"
#include "parry/core/gate.hpp"
#include "parry/core/input_spec.hpp"
#include "parry/core/model.hpp"
#include "parry/core/output_policy.hpp"
#include "parry/core/preprocessor.hpp"
#include "parry/core/response.hpp"

namespace parry {

class Guard {
 public:
  /// @param model the classifier, in eval mode (LibTorch modules start in
  ///   training mode: call `net->eval()` first).
  /// @param spec what callers may send.
  /// The default output policy is label-only.
  /// @throws parry::StateError if the model is in training mode.
  Guard(Model model, InputSpec spec);

  /// Appends a gate; gates run in the order added.
  Guard& add_gate(std::shared_ptr<Gate> gate);
  /// Appends a preprocessor; preprocessors run in the order added.
  Guard& add_preprocessor(std::shared_ptr<const Preprocessor> preprocessor);
  /// Appends a detector; it must be calibrated before predict() is called.
  Guard& add_detector(std::shared_ptr<const Detector> detector);
  /// Replaces the output policy.
  Guard& set_output_policy(std::shared_ptr<const OutputPolicy> policy);

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

  /// Multi-line description of the pipeline, for reports and logs.
  std::string describe() const;

 private:
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

  Model model_;
  InputSpec spec_;
  std::vector<std::shared_ptr<Gate>> gates_;
  std::vector<std::shared_ptr<const Preprocessor>> preprocessors_;
  std::vector<std::shared_ptr<const Detector>> detectors_;
  std::shared_ptr<const OutputPolicy> policy_;
};

}  // namespace parry
