// attack::auto_attack: the AutoAttack ensemble (Croce & Hein, ICML 2020) and its sanity checks.
#include "parry/attack/auto_attack.hpp"

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "attack/support.hpp"
#include "parry/attack/apgd.hpp"
#include "parry/attack/fab.hpp"
#include "parry/attack/square.hpp"
#include "parry/detail/format.hpp"

namespace parry::attack {

using namespace detail;

namespace {

constexpr AutoAttackVersion kVersions[] = {AutoAttackVersion::Standard, AutoAttackVersion::Plus,
                                           AutoAttackVersion::Rand, AutoAttackVersion::Custom};
constexpr AutoAttackComponent kComponents[] = {AutoAttackComponent::ApgdCe, AutoAttackComponent::ApgdDlr,
                                               AutoAttackComponent::ApgdT,  AutoAttackComponent::Fab,
                                               AutoAttackComponent::FabT,   AutoAttackComponent::Square};

template <class T, size_t N>
std::string names(const T (&values)[N]) {
  std::string out;
  for (const auto& v : values) out += std::string(out.empty() ? "" : ", ") + "'" + to_string(v) + "'";
  return out;
}

}  // namespace

const char* to_string(AutoAttackVersion version) {
  switch (version) {
    case AutoAttackVersion::Standard:
      return "standard";
    case AutoAttackVersion::Plus:
      return "plus";
    case AutoAttackVersion::Rand:
      return "rand";
    case AutoAttackVersion::Custom:
      return "custom";
  }
  return "?";
}

AutoAttackVersion auto_attack_version(const std::string& name) {
  for (auto v : kVersions) {
    if (name == to_string(v)) return v;
  }
  throw OptionError("auto_attack: version must be one of " + names(kVersions) + ", but got '" + name + "'");
}

const char* to_string(AutoAttackComponent component) {
  switch (component) {
    case AutoAttackComponent::ApgdCe:
      return "apgd-ce";
    case AutoAttackComponent::ApgdDlr:
      return "apgd-dlr";
    case AutoAttackComponent::ApgdT:
      return "apgd-t";
    case AutoAttackComponent::Fab:
      return "fab";
    case AutoAttackComponent::FabT:
      return "fab-t";
    case AutoAttackComponent::Square:
      return "square";
  }
  return "?";
}

AutoAttackComponent auto_attack_component(const std::string& name) {
  for (auto c : kComponents) {
    if (name == to_string(c)) return c;
  }
  throw OptionError("auto_attack: a component must be one of " + names(kComponents) + ", but got '" + name + "'");
}

std::vector<AutoAttackComponent> auto_attack_components(AutoAttackVersion version) {
  using C = AutoAttackComponent;
  switch (version) {
    case AutoAttackVersion::Standard:
      return {C::ApgdCe, C::ApgdT, C::FabT, C::Square};
    case AutoAttackVersion::Plus:
      return {C::ApgdCe, C::ApgdDlr, C::Fab, C::Square, C::ApgdT, C::FabT};
    case AutoAttackVersion::Rand:
      return {C::ApgdCe, C::ApgdDlr};
    case AutoAttackVersion::Custom:
      return {};
  }
  return {};
}

AutoAttackOptions::AutoAttackOptions(double epsilon, Norm norm, AutoAttackVersion version) {
  this->epsilon(epsilon);
  this->norm(norm);
  this->version(version);
}
AutoAttackOptions& AutoAttackOptions::epsilon(double v) {
  require(v >= 0 && std::isfinite(v), "AutoAttackOptions", "epsilon must be non-negative and finite", v);
  epsilon_ = v;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::norm(Norm n) {
  norm_ = n;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::version(AutoAttackVersion v) {
  version_ = v;
  components_ = auto_attack_components(v);
  eot_samples_ = v == AutoAttackVersion::Rand ? 20 : 1;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::components(std::vector<AutoAttackComponent> c) {
  if (c.empty()) throw OptionError("AutoAttackOptions: components must name at least one attack");
  for (size_t i = 0; i < c.size(); ++i) {
    if (std::find(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(i), c[i]) !=
        c.begin() + static_cast<std::ptrdiff_t>(i)) {
      throw OptionError(std::string("AutoAttackOptions: component '") + to_string(c[i]) + "' is listed twice");
    }
  }
  version_ = AutoAttackVersion::Custom;
  components_ = std::move(c);
  return *this;
}
AutoAttackOptions& AutoAttackOptions::steps(int64_t v) {
  require(v >= 1, "AutoAttackOptions", "steps must be at least 1", v);
  steps_ = v;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::square_queries(int64_t v) {
  require(v >= 1, "AutoAttackOptions", "square_queries must be at least 1", v);
  square_queries_ = v;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::target_classes(int64_t v) {
  require(v >= 1, "AutoAttackOptions", "target_classes must be at least 1", v);
  target_classes_ = v;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::eot_samples(int64_t v) {
  require(v >= 1, "AutoAttackOptions", "eot_samples must be at least 1", v);
  eot_samples_ = v;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::settings(GradientSettings s) {
  s.targeted = false;
  s.eot_samples = 1;
  check_settings("AutoAttackOptions", s);
  settings_ = s;
  return *this;
}
AutoAttackOptions& AutoAttackOptions::client_id(std::string id) {
  client_id_ = std::move(id);
  return *this;
}

double AutoAttackResult::robust_accuracy() const {
  const int64_t n = attack.success.defined() ? attack.success.size(0) : 0;
  if (n == 0) return 0.0;
  return 1.0 - attack.success.to(torch::kFloat64).mean().item<double>();
}

namespace {

// Backward functions that ran on this thread while a check was watching.
thread_local int64_t backward_calls = 0;

std::unique_ptr<at::ObserverContext> count_backward(const at::RecordFunction&) {
  ++backward_calls;
  return nullptr;
}

std::string share(int64_t k, int64_t n) {
  return std::to_string(k) + " of " + std::to_string(n) + " (" +
         parry::detail::format_fixed(100.0 * static_cast<double>(k) / static_cast<double>(n), 1) + "%" + ")";
}

// Whether the policy gives every class score, as Square needs.
bool reveals_scores(const Guard& guard, int64_t classes) {
  Response probe;
  guard.output_policy().fill(torch::zeros({1, classes}), probe);
  return probe.scores.defined() && !probe.top_classes.defined();
}

}  // namespace

std::string square_masking_warning(const std::vector<AutoAttackStage>& stages, int64_t images) {
  // checks.py: α = 0.002 of the images, and only when white-box attacks ran before Square.
  bool white_box_ran = false;
  for (const auto& stage : stages) {
    if (stage.component != AutoAttackComponent::Square) {
      white_box_ran = white_box_ran || !stage.skipped;
      continue;
    }
    if (white_box_ran && !stage.skipped && images > 0 &&
        static_cast<double>(stage.broken) / static_cast<double>(images) > 0.002) {
      return "the black-box Square Attack broke " + share(stage.broken, images) +
             " images that every white-box attack before it missed: the gradients are likely masked, so this "
             "evaluation is unreliable; consider an adaptive attack";
    }
  }
  return "";
}

void AutoAttackTally::add(const AutoAttackResult& batch) {
  if (stages_.empty()) {
    stages_ = batch.stages;
  } else {
    if (batch.stages.size() != stages_.size()) {
      throw OptionError("AutoAttackTally::add: a batch has " + std::to_string(batch.stages.size()) +
                        " stages where the earlier ones had " + std::to_string(stages_.size()));
    }
    for (size_t s = 0; s < stages_.size(); ++s) {
      auto& into = stages_[s];
      const auto& from = batch.stages[s];
      into.attacked += from.attacked;
      into.broken += from.broken;
      into.robust_after += from.robust_after;
      into.forward_passes += from.forward_passes;
      into.seconds += from.seconds;
      into.skipped = into.skipped && from.skipped;
      if (into.skip_reason.empty()) into.skip_reason = from.skip_reason;
    }
  }
  const int64_t n = batch.attack.success.defined() ? batch.attack.success.size(0) : 0;
  images_ += n;
  clean_correct_ += batch.clean_correct;
  if (n > 0) robust_ += n - batch.attack.success.sum().item<int64_t>();
  const std::string batch_masking = square_masking_warning(batch.stages, n);
  // A warning's kind: its sentence without the counts.
  const auto kind = [](std::string w) {
    w.erase(std::remove_if(w.begin(), w.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }),
            w.end());
    return w;
  };
  for (const auto& w : batch.warnings) {
    if (w == batch_masking) continue;
    const bool seen =
        std::any_of(warnings_.begin(), warnings_.end(), [&](const std::string& t) { return kind(t) == kind(w); });
    if (!seen) warnings_.push_back(w);
  }
}

std::vector<std::string> AutoAttackTally::warnings() const {
  std::vector<std::string> all = warnings_;
  const std::string masking = square_masking_warning(stages_, images_);
  if (!masking.empty()) all.push_back(masking);
  return all;
}

std::vector<std::string> auto_attack_checks(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y,
                                            bool expect_randomised) {
  std::vector<std::string> warnings;
  // Randomised: five forward passes, normalised logits compared pairwise (checks.py: α = 1e-4).
  std::vector<torch::Tensor> outputs;
  std::vector<int64_t> correct;
  torch::Tensor z;
  for (int i = 0; i < 5; ++i) {
    z = evaluate(f, x);
    correct.push_back(z.argmax(1).eq(y).sum().item<int64_t>());
    outputs.push_back(z / (z.norm(2, 1, true) + 1e-10));
  }
  double max_difference = 0.0;
  for (size_t a = 0; a < outputs.size(); ++a) {
    for (size_t b = a + 1; b < outputs.size(); ++b) {
      max_difference = std::max(max_difference, (outputs[a] - outputs[b]).norm(2, 1).max().item<double>());
    }
  }
  const bool differs = std::any_of(correct.begin(), correct.end(), [&](int64_t c) { return c != correct.back(); });
  if (!expect_randomised && (differs || max_difference > 1e-4)) {
    warnings.push_back(
        "the model looks randomised: five forward passes of the same images differ (largest "
        "normalised-logit difference " +
        parry::detail::format_fixed(max_difference, 6) +
        "); evaluate it with the rand version (EOT) and treat this result as unreliable");
  }
  // Probabilities instead of logits (checks.py: max < 1 + α, min > −α, rows sum to 1, α = 1e-5).
  if (z.max().item<double>() < 1 + 1e-5 && z.min().item<double>() > -1e-5 &&
      (z.sum(1) - 1).abs().max().item<double>() < 1e-5) {
    warnings.push_back(
        "the model's output looks like probabilities, not logits: the cross-entropy and DLR losses "
        "are computed on what it returns, so give the attack the logits");
  }
  // Zero gradients: the authors' code checks the DLR gradient (what APGD-DLR
  // and APGD-T climb); the cross-entropy's when there are too few classes.
  const bool use_dlr = z.size(1) >= 3;
  const auto [grad, logits] = objective_gradient(f, x, 1, [&y, use_dlr](const torch::Tensor& out) {
    if (use_dlr) return dlr_loss(out, y.to(out.device())).sum();
    return torch::nn::functional::cross_entropy(
        out, y.to(out.device()), torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  });
  // Counted on the correctly classified images only (a deviation from
  // checks.py, which counts all): where the true class ranks third, DLR =
  // −(z_π3 − z_π1)/(z_π1 − z_π3) ≡ 1 and its gradient is exactly zero, but
  // such an image is already misclassified and no attack needs to move it.
  // On the PGD-trained reference model that case was every zero of checks.py's count.
  const torch::Tensor judged = logits.argmax(1).eq(y.to(logits.device()));
  const int64_t zero = (flat(grad).abs().sum(1).eq(0) & judged).sum().item<int64_t>();
  if (zero > 0) {
    warnings.push_back(std::string("the ") + (use_dlr ? "DLR" : "cross-entropy") +
                       " loss gradient is exactly zero on " + share(zero, judged.sum().item<int64_t>()) +
                       " correctly classified images: gradient-based attacks cannot move them, so their "
                       "robustness may be masked");
  }
  // Backward passes inside the forward: the defense optimises while answering.
  backward_calls = 0;
  const auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(&count_backward).scopes({at::RecordScope::BACKWARD_FUNCTION}));
  try {
    evaluate(f, x);
  } catch (...) {
    at::removeCallback(handle);
    throw;
  }
  at::removeCallback(handle);
  if (backward_calls > 0) {
    warnings.push_back("the model runs " + std::to_string(backward_calls) +
                       " autograd backward functions while answering: a defense that optimises at inference time "
                       "needs an adaptive attack beyond AutoAttack");
  }
  return warnings;
}

AutoAttackResult auto_attack(const LogitsFn& f, const Guard* guard, const torch::Tensor& x, const torch::Tensor& y,
                             const AutoAttackOptions& options) {
  using Clock = std::chrono::steady_clock;
  using C = AutoAttackComponent;
  GradientSettings gs = options.settings();
  check_batch("auto_attack", x, y, gs);
  if (options.components().empty()) throw OptionError("auto_attack: the custom version needs its components");
  const int64_t n = x.size(0);
  const torch::Tensor x0 = x.detach();
  const torch::Tensor clean_logits = evaluate(f, x0).to(x0.device());
  check_labels("auto_attack", clean_logits, y);
  const int64_t classes = clean_logits.size(1);

  AutoAttackResult result;
  result.warnings = auto_attack_checks(f, x0, y, options.version() == AutoAttackVersion::Rand);
  AttackResult& total = result.attack;
  total.adversarial = x0.clone();
  total.success = clean_logits.argmax(1).ne(y);
  total.queries = torch::ones({n}, torch::kInt64);
  result.clean_correct = n - total.success.sum().item<int64_t>();
  const int64_t targets = std::min(options.target_classes(), classes - 1);
  if (targets < options.target_classes()) {
    const bool targeted = std::any_of(options.components().begin(), options.components().end(),
                                      [](C c) { return c == C::ApgdT || c == C::FabT; });
    if (targeted) {
      result.warnings.push_back("only " + std::to_string(classes - 1) + " target classes exist for " +
                                std::to_string(options.target_classes()) + " asked: the targeted attacks use " +
                                std::to_string(targets));
    }
  }
  GradientSettings white_box = gs;
  white_box.eot_samples = options.eot_samples();

  for (const C component : options.components()) {
    AutoAttackStage stage;
    stage.component = component;
    const torch::Tensor active = (~total.success).nonzero().flatten();
    stage.attacked = active.numel();
    const auto skip = [&](std::string reason) {
      stage.skipped = true;
      stage.skip_reason = std::move(reason);
    };
    if (component == C::ApgdDlr && classes < 3) skip("the DLR loss needs at least 3 classes");
    if (component == C::ApgdT && classes < 4) skip("the targeted DLR loss needs at least 4 classes");
    if (component == C::Square) {
      if (!guard) {
        skip("no service to query (Square runs through Guard::predict)");
      } else if (options.norm() != Norm::Linf) {
        skip("Parry's Square Attack is the L∞ version");
      } else if (!reveals_scores(*guard, classes)) {
        skip("the service answers without class scores (label-only or top-k): Square needs them");
      }
    }
    if (stage.attacked == 0 && !stage.skipped) skip("no image left to attack");
    if (stage.skipped && stage.attacked > 0) {
      result.warnings.push_back(std::string("the ensemble ran without ") + to_string(component) + " (" +
                                stage.skip_reason + "): its robust accuracy is that of the components that ran");
    }
    if (stage.skipped) {
      stage.robust_after = n - total.success.sum().item<int64_t>();
      result.stages.push_back(stage);
      continue;
    }
    const auto started = Clock::now();
    const torch::Tensor xa = x0.index_select(0, active), ya = y.index_select(0, active);
    AttackResult r;
    switch (component) {
      case C::ApgdCe:
      case C::ApgdDlr:
        r = apgd(f, xa, ya,
                 ApgdOptions(options.epsilon(), options.norm())
                     .steps(options.steps())
                     .restarts(options.restarts())
                     .loss(component == C::ApgdCe ? ApgdLoss::CrossEntropy : ApgdLoss::Dlr)
                     .settings(white_box));
        break;
      case C::ApgdT:
        r = apgd(f, xa, ya,
                 ApgdOptions(options.epsilon(), options.norm())
                     .steps(options.steps())
                     .loss(ApgdLoss::TargetedDlr)
                     .target_classes(targets)
                     .settings(white_box));
        break;
      case C::Fab:
      case C::FabT:
        r = fab(f, xa, ya,
                FabOptions(options.norm())
                    .epsilon(options.epsilon())
                    .steps(options.steps())
                    .restarts(component == C::Fab ? options.restarts() : 1)
                    .targeted(component == C::FabT)
                    .n_target_classes(targets)
                    .settings(gs));
        break;
      case C::Square:
        r = square(*guard, xa, ya,
                   SquareOptions(options.epsilon())
                       .max_queries(options.square_queries())
                       .p_init(0.8)
                       .rescale_schedule(false)
                       .seed(gs.seed)
                       .client_id(options.client_id()));
        if (r.stopped_by_defense) {
          result.warnings.push_back("the service stopped Square (" + r.stop_reason +
                                    "): its figure is that of a budget-limited attacker");
        }
        break;
    }
    // As the authors' implementation: an image counts as broken when the
    // model misclassifies the returned point (one more forward pass each).
    const torch::Tensor adversarial =
        project(r.adversarial, xa, options.epsilon(), options.norm(), gs.clip_min, gs.clip_max);
    const torch::Tensor broken = evaluate(f, adversarial).to(x0.device()).argmax(1).ne(ya);
    const torch::Tensor rows = active.masked_select(broken);
    total.adversarial.index_copy_(0, rows, adversarial.index_select(0, broken.nonzero().flatten()));
    total.success.index_fill_(0, rows, true);
    const torch::Tensor spent = r.queries + 1;
    total.queries.index_add_(0, active.cpu(), spent.cpu());
    stage.broken = rows.numel();
    stage.forward_passes = spent.sum().item<int64_t>();
    stage.robust_after = n - total.success.sum().item<int64_t>();
    stage.seconds = std::chrono::duration<double>(Clock::now() - started).count();
    result.stages.push_back(stage);
  }
  const std::string masking = square_masking_warning(result.stages, n);
  if (!masking.empty()) result.warnings.push_back(masking);
  total.norm = perturbation_norm(total.adversarial - x0, options.norm());
  return result;
}

}  // namespace parry::attack
