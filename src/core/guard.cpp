// parry::Guard: gates, validation, preprocessors, model, detectors, output policy.
#include "parry/core/guard.hpp"

#include <sstream>

#include "parry/core/log.hpp"

namespace parry {

namespace {

class DefaultLabelOnly final : public OutputPolicy {
 public:
  void fill(const torch::Tensor& logits, Response& response) const override {
    const torch::Tensor labels = logits.argmax(1).contiguous();
    response.labels.assign(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
  }
  std::string describe() const override { return "LabelOnly"; }
};

}  // namespace

Guard::Guard(Model model, InputSpec spec)
    : model_(std::move(model)), spec_(spec), policy_(std::make_shared<DefaultLabelOnly>()) {
  if (model_.is_training()) {
    throw StateError("Guard: the model is in training mode",
                     "call eval() on the module before wrapping it: a Guard never toggles "
                     "train/eval on a shared module");
  }
}

Guard& Guard::add_gate(std::shared_ptr<Gate> gate) {
  if (!gate) throw OptionError("Guard::add_gate: gate is null");
  gates_.push_back(std::move(gate));
  return *this;
}

Guard& Guard::add_preprocessor(std::shared_ptr<const Preprocessor> preprocessor) {
  if (!preprocessor) throw OptionError("Guard::add_preprocessor: preprocessor is null");
  preprocessors_.push_back(std::move(preprocessor));
  return *this;
}

Guard& Guard::add_detector(std::shared_ptr<const Detector> detector) {
  if (!detector) throw OptionError("Guard::add_detector: detector is null");
  detectors_.push_back(std::move(detector));
  return *this;
}

Guard& Guard::set_output_policy(std::shared_ptr<const OutputPolicy> policy) {
  if (!policy) throw OptionError("Guard::set_output_policy: policy is null");
  policy_ = std::move(policy);
  return *this;
}

torch::Tensor Guard::preprocess(const torch::Tensor& batch) const {
  torch::Tensor x = batch;
  for (const auto& p : preprocessors_) x = p->apply(x);
  return x;
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

Response Guard::predict(const torch::Tensor& input, const RequestContext& context) const {
  const GateOutcome gates = run_gates(context, input, GatePhase::All, GateOutcome());
  if (gates.rejected) return gates.rejection;
  return predict_valid(spec_.validate(input), gates);
}

Response Guard::predict_decoded(const std::function<torch::Tensor()>& decode, const RequestContext& context) const {
  const GateOutcome before_decoding = run_gates(context, torch::Tensor(), GatePhase::WithoutPixels, GateOutcome());
  if (before_decoding.rejected) return before_decoding.rejection;
  torch::Tensor image;
  try {
    image = decode();
  } catch (const InputError& e) {
    log(LogLevel::Debug, "Guard::predict_decoded: " + e.detail());
    throw;
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string("Guard::predict_decoded: ") + e.what());
    throw InternalError(e.what());
  }
  const GateOutcome gates = run_gates(context, image, GatePhase::WithPixels, before_decoding);
  if (gates.rejected) return gates.rejection;
  return predict_valid(spec_.validate(image), gates);
}

Response Guard::predict_valid(const torch::Tensor& batch, const GateOutcome& gates) const {
  try {
    c10::InferenceMode inference;
    const torch::Tensor x = preprocess(batch);
    const torch::Tensor logits = model_.logits(x);
    if (!logits.defined() || logits.dim() != 2 || logits.size(0) != batch.size(0) || logits.size(1) < 1) {
      throw InternalError("model returned logits of shape " +
                          (logits.defined() ? c10::str(logits.sizes()) : std::string("undefined")) +
                          " for a batch of " + std::to_string(batch.size(0)));
    }
    Response response;
    torch::Tensor flagged = torch::zeros({batch.size(0)}, torch::kBool);
    const DetectorInput detector_input{x, logits, model_};
    for (const auto& detector : detectors_) flagged |= detector->flag(detector_input).to(torch::kBool);
    policy_->fill(logits, response);
    const torch::Tensor flags = flagged.to(torch::kUInt8).contiguous();
    response.flagged.assign(flags.data_ptr<uint8_t>(), flags.data_ptr<uint8_t>() + flags.numel());
    if (flagged.any().item<bool>()) {
      response.verdict = Verdict::Flagged;
      response.reason = reason::kFlagged;
    } else if (gates.flagged) {
      response.verdict = Verdict::Flagged;
      response.reason = gates.flag_reason;
    }
    return response;
  } catch (const InputError& e) {
    log(LogLevel::Debug, "Guard::predict: " + e.detail());
    throw;
  } catch (const InternalError& e) {
    log(LogLevel::Error, "Guard::predict: " + e.detail());
    throw;
  } catch (const Error& e) {
    // A misconfigured stage (e.g. an uncalibrated detector): the caller only
    // learns that something internal failed.
    log(LogLevel::Error, "Guard::predict: " + e.detail());
    throw InternalError(e.detail());
  } catch (const c10::Error& e) {
    log(LogLevel::Error, std::string("Guard::predict: ") + e.what_without_backtrace());
    throw InternalError(e.what_without_backtrace());
  } catch (const std::exception& e) {
    log(LogLevel::Error, std::string("Guard::predict: ") + e.what());
    throw InternalError(e.what());
  }
}

torch::Tensor Guard::differentiable_logits(const torch::Tensor& x) const {
  torch::Tensor batch = spec_.validate(x);
  for (const auto& p : preprocessors_) batch = p->apply_differentiable(batch);
  return model_.logits(batch);
}

std::string Guard::describe() const {
  std::ostringstream out;
  out << "Guard\n  input: " << spec_.describe() << "\n  model: " << model_.kind() << '\n';
  for (const auto& g : gates_) out << "  gate: " << g->describe() << '\n';
  for (const auto& p : preprocessors_) out << "  preprocess: " << p->describe() << '\n';
  for (const auto& d : detectors_) out << "  detect: " << d->describe() << '\n';
  out << "  output: " << policy_->describe() << '\n';
  return out.str();
}

}  // namespace parry
