// parry::Guard and parry::GuardBuilder: gates, validation, preprocessors and
// detectors on pixels, then the model and the output policy.
#include "parry/core/guard.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "parry/core/log.hpp"

namespace parry {

namespace {

// The public-message policy of the serving path: an InputError keeps its
// public message (it names what was expected); anything else becomes the
// generic InternalError, with the detail in the log only.
template <typename F>
auto with_public_errors(const char* where, F&& serve) -> decltype(serve()) {
  try {
    return serve();
  } catch (const InputError& e) {
    log(LogLevel::Debug, std::string(where) + ": " + e.detail());
    throw;
  } catch (const InternalError& e) {
    log(LogLevel::Error, std::string(where) + ": " + e.detail());
    throw;
  } catch (const Error& e) {
    // A misconfigured stage (e.g. an uncalibrated detector): the caller only
    // learns that something internal failed.
    log(LogLevel::Error, std::string(where) + ": " + e.detail());
    throw InternalError(e.detail());
  } catch (const c10::Error& e) {
    log(LogLevel::Error, std::string(where) + ": " + e.what_without_backtrace());
    throw InternalError(e.what_without_backtrace());
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string(where) + ": " + e.what());
    throw InternalError(e.what());
  }
}

}  // namespace

Guard::Guard(Model model, InputSpec spec)
    : model_(std::move(model)), spec_(spec), policy_(std::make_shared<LabelOnly>()) {
  if (model_.is_training()) {
    throw StateError("Guard: the model is in training mode",
                     "call eval() on the module before wrapping it: a Guard never toggles "
                     "train/eval on a shared module");
  }
}

torch::Tensor Guard::preprocess(const torch::Tensor& batch) const {
  torch::Tensor x = batch;
  for (const auto& p : preprocessors_) x = p->apply(x);
  return x;
}

torch::Tensor Guard::validated(const torch::Tensor& input) const {
  const torch::Tensor batch = spec_.validate(input);
  const torch::Device device = model_.device();
  return batch.device() == device ? batch : batch.to(device);
}

Guard::GateOutcome Guard::run_gates(const RequestContext& context, const torch::Tensor& input, GatePhase phase,
                                    GateOutcome outcome) const {
  for (const auto& gate : gates_) {
    if ((phase == GatePhase::WithoutPixels && gate->needs_pixels()) ||
        (phase == GatePhase::WithPixels && !gate->needs_pixels())) {
      continue;
    }
    const GateDecision decision = gate->admit(context, input);
    if (decision.action == GateDecision::Action::Reject) {
      outcome.rejected = true;
      outcome.rejection.verdict = Verdict::Rejected;
      outcome.rejection.reason = decision.reason;
      outcome.rejection.retry_after_seconds = decision.retry_after_seconds;
      return outcome;
    }
    if (decision.action == GateDecision::Action::Flag && !outcome.flagged) {
      outcome.flagged = true;
      outcome.flag_reason = decision.reason;
    }
  }
  return outcome;
}

Guard::GateOutcome Guard::run_gates_safely(const RequestContext& context, const torch::Tensor& input, GatePhase phase,
                                           GateOutcome outcome) const {
  return with_public_errors("Guard gate", [&] { return run_gates(context, input, phase, std::move(outcome)); });
}

Response Guard::predict(const torch::Tensor& input, const RequestContext& context) const {
  const GateOutcome gates = run_gates_safely(context, input, GatePhase::All, GateOutcome());
  if (gates.rejected) return gates.rejection;
  return predict_valid(with_public_errors("Guard::predict", [&] { return validated(input); }), gates);
}

Response Guard::predict_decoded(const std::function<torch::Tensor()>& decode, const RequestContext& context) const {
  const GateOutcome before_decoding =
      run_gates_safely(context, torch::Tensor(), GatePhase::WithoutPixels, GateOutcome());
  if (before_decoding.rejected) return before_decoding.rejection;
  if (!decode) throw InternalError("Guard::predict_decoded: no decoder");
  const torch::Tensor image = with_public_errors("Guard::predict_decoded", [&] { return decode(); });
  const GateOutcome gates = run_gates_safely(context, image, GatePhase::WithPixels, before_decoding);
  if (gates.rejected) return gates.rejection;
  return predict_valid(with_public_errors("Guard::predict", [&] { return validated(image); }), gates);
}

Response Guard::predict_valid(const torch::Tensor& batch, const GateOutcome& gates) const {
  return with_public_errors("Guard::predict", [&] {
    c10::InferenceMode inference;
    const torch::Tensor x = preprocess(batch);
    Response response;
    torch::Tensor logits;
    bool any_abstained = false;
    if (decision_rule_) {
      any_abstained = decide(x, response);
    } else {
      logits = checked_logits(model_.logits(x), batch.size(0));
      policy_->fill(logits.device().is_cpu() ? logits : logits.cpu(), response);  // responses live on the CPU
    }
    bool any_flagged = false;
    if (detectors_.empty()) {
      response.flagged.assign(static_cast<size_t>(batch.size(0)), 0);  // no tensor work for a Guard without detectors
    } else {
      torch::Tensor flagged = torch::zeros({batch.size(0)}, torch::kBool);
      if (!logits.defined()) logits = checked_logits(model_.logits(x), batch.size(0));
      const DetectorInput detector_input{x, logits, model_};
      for (const auto& detector : detectors_) flagged |= detector->flag(detector_input).to(torch::kCPU, torch::kBool);
      const torch::Tensor flags = flagged.to(torch::kUInt8).contiguous();
      response.flagged.assign(flags.data_ptr<uint8_t>(), flags.data_ptr<uint8_t>() + flags.numel());
      any_flagged = std::find(response.flagged.begin(), response.flagged.end(), 1) != response.flagged.end();
    }
    if (any_flagged) {
      response.verdict = Verdict::Flagged;
      response.reason = reason::kFlagged;
    } else if (gates.flagged) {
      response.verdict = Verdict::Flagged;
      response.reason = gates.flag_reason;
    } else if (any_abstained) {
      response.verdict = Verdict::Abstained;
      response.reason = reason::kAbstained;
    }
    return response;
  });
}

torch::Tensor Guard::checked_logits(const torch::Tensor& logits, int64_t rows) {
  if (!logits.defined() || logits.dim() != 2 || logits.size(0) != rows || logits.size(1) < 1) {
    throw InternalError("model returned logits of shape " +
                        (logits.defined() ? c10::str(logits.sizes()) : std::string("undefined")) +
                        " for a batch of " + std::to_string(rows));
  }
  return logits;
}

bool Guard::decide(const torch::Tensor& x, Response& response) const {
  const int64_t rows = x.size(0);
  const Decisions decisions = decision_rule_->decide(x);
  const torch::Tensor& p = decisions.probabilities;
  if (decisions.labels.size() != static_cast<size_t>(rows) || !p.defined() || p.dim() != 2 || p.size(0) != rows ||
      p.size(1) < 1 || (!decisions.certified_radius.empty() && decisions.certified_radius.size() != static_cast<size_t>(rows))) {
    throw InternalError("decision rule " + decision_rule_->describe() + " answered " +
                        std::to_string(decisions.labels.size()) + " labels and probabilities of shape " +
                        (p.defined() ? c10::str(p.sizes()) : std::string("undefined")) + " for a batch of " +
                        std::to_string(rows));
  }
  // The policy works on logits; log(p) gives softmax(log p) = p back.
  policy_->fill(torch::log(p.to(torch::kCPU, torch::kFloat32)), response);
  response.labels = decisions.labels;
  std::vector<int64_t> abstained;
  for (int64_t i = 0; i < rows; ++i) {
    if (decisions.labels[static_cast<size_t>(i)] == kNoLabel) abstained.push_back(i);
  }
  if (!abstained.empty()) {
    // An abstention withholds everything of that sample, scores included:
    // its top class would be the label the rule refused to give.
    const torch::Tensor rows_withheld = torch::tensor(abstained, torch::kInt64);
    if (response.scores.defined()) response.scores.index_fill_(0, rows_withheld, std::nan(""));
    if (response.top_classes.defined()) response.top_classes.index_fill_(0, rows_withheld, -1);
  }
  if (policy_->shows_certified_radius()) response.certified_radius = decisions.certified_radius;
  return !abstained.empty();
}

torch::Tensor Guard::differentiable_logits(const torch::Tensor& x) const {
  torch::Tensor batch = validated(x);
  for (const auto& p : preprocessors_) batch = p->apply_differentiable(batch);
  return model_.logits(batch);
}

std::string Guard::describe() const {
  std::ostringstream out;
  out << "Guard\n  input: " << spec_.describe() << "\n  model: " << model_.describe() << '\n';
  for (const auto& g : gates_) out << "  gate: " << g->describe() << '\n';
  for (const auto& p : preprocessors_) out << "  preprocess: " << p->describe() << '\n';
  for (const auto& d : detectors_) out << "  detect: " << d->describe() << '\n';
  if (decision_rule_) out << "  decide: " << decision_rule_->describe() << '\n';
  out << "  output: " << policy_->describe() << '\n';
  return out.str();
}

// ---------------------------------------------------------------- GuardBuilder

GuardBuilder::GuardBuilder(Model model, InputSpec spec) : guard_(std::move(model), spec) {}

GuardBuilder& GuardBuilder::add_gate(std::shared_ptr<Gate> gate) {
  if (!gate) throw OptionError("GuardBuilder::add_gate: gate is null");
  guard_.gates_.push_back(std::move(gate));
  return *this;
}

GuardBuilder& GuardBuilder::add_preprocessor(std::shared_ptr<const Preprocessor> preprocessor) {
  if (!preprocessor) throw OptionError("GuardBuilder::add_preprocessor: preprocessor is null");
  if (!preprocessor->works_in_pixel_space()) {
    throw OptionError("GuardBuilder::add_preprocessor: " + preprocessor->describe() +
                      " maps pixels out of the input's shape or value range, so the defenses after it would not "
                      "see pixels; make it the model's input transform (Model::with_input_transform)");
  }
  guard_.preprocessors_.push_back(std::move(preprocessor));
  return *this;
}

GuardBuilder& GuardBuilder::add_detector(std::shared_ptr<const Detector> detector) {
  if (!detector) throw OptionError("GuardBuilder::add_detector: detector is null");
  guard_.detectors_.push_back(std::move(detector));
  return *this;
}

GuardBuilder& GuardBuilder::set_output_policy(std::shared_ptr<const OutputPolicy> policy) {
  if (!policy) throw OptionError("GuardBuilder::set_output_policy: policy is null");
  guard_.policy_ = std::move(policy);
  return *this;
}

GuardBuilder& GuardBuilder::set_decision_rule(std::shared_ptr<const DecisionRule> rule) {
  if (!rule) throw OptionError("GuardBuilder::set_decision_rule: rule is null");
  guard_.decision_rule_ = std::move(rule);
  return *this;
}

}  // namespace parry
