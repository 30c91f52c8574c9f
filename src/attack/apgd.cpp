// attack::apgd: Auto-PGD with the cross-entropy, DLR and targeted DLR losses (Croce & Hein, ICML 2020, Algorithm 1).
#include "parry/attack/apgd.hpp"

#include <algorithm>

#include "attack/support.hpp"
#include "parry/detail/generator.hpp"

namespace parry::attack {

using namespace detail;

const char* to_string(ApgdLoss loss) {
  switch (loss) {
    case ApgdLoss::CrossEntropy:
      return "ce";
    case ApgdLoss::Dlr:
      return "dlr";
    case ApgdLoss::TargetedDlr:
      return "dlr-targeted";
  }
  return "?";
}

std::vector<int64_t> apgd_checkpoints(int64_t steps) {
  require(steps >= 1, "apgd_checkpoints", "steps must be at least 1", steps);
  // The authors' integer arithmetic: int(0.22·N), int(0.03·N), int(0.06·N), each at least 1.
  const auto part = [steps](double share) { return std::max<int64_t>(static_cast<int64_t>(share * steps), 1); };
  const int64_t decrease = part(0.03), shortest = part(0.06);
  std::vector<int64_t> points{0};
  int64_t period = part(0.22);
  for (int64_t at = period; at <= steps; at += period) {
    points.push_back(at);
    period = std::max(period - decrease, shortest);
  }
  return points;
}

namespace {

void check_logits(const char* loss, const torch::Tensor& logits, const torch::Tensor& y, int64_t min_classes) {
  if (!logits.defined() || logits.dim() != 2 || !y.defined() || y.dim() != 1 || y.size(0) != logits.size(0)) {
    throw OptionError(std::string(loss) + ": expected logits N×K and N labels");
  }
  require(logits.size(1) >= min_classes, loss, "needs at least " + std::to_string(min_classes) + " classes",
          logits.size(1));
}

}  // namespace

torch::Tensor dlr_loss(const torch::Tensor& logits, const torch::Tensor& y) {
  check_logits("dlr_loss", logits, y, 3);
  const auto sorted = std::get<0>(logits.sort(1, /*descending=*/true));
  const auto z_y = logits.gather(1, y.view({-1, 1})).squeeze(1);
  const auto top = sorted.select(1, 0), second = sorted.select(1, 1), third = sorted.select(1, 2);
  // max_{i≠y} z_i: the top logit unless it is y's, then the second.
  const auto best_other = torch::where(logits.argmax(1).eq(y), second, top);
  return -(z_y - best_other) / (top - third + 1e-12);
}

torch::Tensor targeted_dlr_loss(const torch::Tensor& logits, const torch::Tensor& y, const torch::Tensor& target) {
  check_logits("targeted_dlr_loss", logits, y, 4);
  if (!target.defined() || target.sizes() != y.sizes()) {
    throw OptionError("targeted_dlr_loss: expected one target per label");
  }
  const auto sorted = std::get<0>(logits.sort(1, /*descending=*/true));
  const auto z_y = logits.gather(1, y.view({-1, 1})).squeeze(1);
  const auto z_t = logits.gather(1, target.view({-1, 1})).squeeze(1);
  return -(z_y - z_t) / (sorted.select(1, 0) - 0.5 * (sorted.select(1, 2) + sorted.select(1, 3)) + 1e-12);
}

torch::Tensor apgd_update(const torch::Tensor& current, const torch::Tensor& previous, const torch::Tensor& grad,
                          const torch::Tensor& origin, const torch::Tensor& step, double momentum, double epsilon,
                          Norm norm, double clip_min, double clip_max) {
  const torch::Tensor direction =
      norm == Norm::Linf ? grad.sign() : grad / (flat(grad).norm(2, 1).view({-1, 1, 1, 1}) + 1e-12);
  const torch::Tensor z =
      project(current + step.view({-1, 1, 1, 1}) * direction, origin, epsilon, norm, clip_min, clip_max);
  return project(current + momentum * (z - current) + (1.0 - momentum) * (current - previous), origin, epsilon, norm,
                 clip_min, clip_max);
}

ApgdOptions::ApgdOptions(double epsilon, Norm norm) {
  this->epsilon(epsilon);
  this->norm(norm);
}
ApgdOptions& ApgdOptions::epsilon(double v) {
  require(v >= 0 && std::isfinite(v), "ApgdOptions", "epsilon must be non-negative and finite", v);
  epsilon_ = v;
  return *this;
}
ApgdOptions& ApgdOptions::norm(Norm n) {
  norm_ = n;
  return *this;
}
ApgdOptions& ApgdOptions::steps(int64_t v) {
  require(v >= 1, "ApgdOptions", "steps must be at least 1", v);
  steps_ = v;
  return *this;
}
ApgdOptions& ApgdOptions::restarts(int64_t v) {
  require(v >= 1, "ApgdOptions", "restarts must be at least 1", v);
  restarts_ = v;
  return *this;
}
ApgdOptions& ApgdOptions::loss(ApgdLoss l) {
  loss_ = l;
  return *this;
}
ApgdOptions& ApgdOptions::target_classes(int64_t v) {
  require(v >= 1, "ApgdOptions", "target_classes must be at least 1", v);
  target_classes_ = v;
  return *this;
}
ApgdOptions& ApgdOptions::rho(double v) {
  require(v > 0 && v <= 1, "ApgdOptions", "rho must be in (0, 1]", v);
  rho_ = v;
  return *this;
}
ApgdOptions& ApgdOptions::momentum(double v) {
  require(v > 0 && v <= 1, "ApgdOptions", "momentum must be in (0, 1]", v);
  momentum_ = v;
  return *this;
}
ApgdOptions& ApgdOptions::initial_step(double multiple_of_epsilon) {
  require(multiple_of_epsilon > 0 && std::isfinite(multiple_of_epsilon), "ApgdOptions",
          "initial_step must be positive and finite", multiple_of_epsilon);
  initial_step_ = multiple_of_epsilon;
  return *this;
}
ApgdOptions& ApgdOptions::trace(ApgdTrace* trace) {
  trace_ = trace;
  return *this;
}
ApgdOptions& ApgdOptions::settings(GradientSettings s) {
  check_settings("ApgdOptions", s);
  settings_ = s;
  return *this;
}

namespace {

// One run of Algorithm 1 on the samples of (x, y[, target]).
class ApgdRun {
 public:
  ApgdRun(const LogitsFn& f, const ApgdOptions& o) : f_(f), o_(o), s_(o.settings()) {}

  struct Outcome {
    torch::Tensor fooled;       // bool N
    torch::Tensor adversarial;  // the first fooling iterate (rows of `fooled`)
  };

  Outcome run(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& target, torch::Generator& gen,
              ApgdTrace* trace) {
    const int64_t n = x.size(0);
    torch::Tensor current = start(x, gen);
    auto [grad, loss, logits] = evaluate_loss(current, y, target);
    torch::Tensor fooled = is_success(logits, y, s_.targeted);
    torch::Tensor adversarial = current.clone();
    torch::Tensor best = current.clone(), best_grad = grad.clone(), best_loss = loss.clone();
    torch::Tensor step = torch::full({n}, o_.initial_step() * o_.epsilon(), x.options());
    torch::Tensor previous = current.clone();
    torch::Tensor previous_loss = loss.clone();
    torch::Tensor raises = torch::zeros({n}, x.options());
    torch::Tensor halved_last = torch::ones({n}, x.options().dtype(torch::kBool));
    torch::Tensor best_loss_last = best_loss.clone();
    const auto checkpoints = apgd_checkpoints(o_.steps());
    size_t next_checkpoint = 1;
    for (int64_t k = 0; k < o_.steps(); ++k) {
      if (trace) trace->step_size.push_back(step[0].item<double>());
      const double momentum = k == 0 ? 1.0 : o_.momentum();
      torch::Tensor next =
          apgd_update(current, previous, grad, x, step, momentum, o_.epsilon(), o_.norm(), s_.clip_min, s_.clip_max);
      previous = current;
      current = next;
      std::tie(grad, loss, logits) = evaluate_loss(current, y, target);
      if (trace) trace->loss.push_back(loss[0].item<double>());
      // The first iterate that fools the model is the sample's adversarial example.
      const torch::Tensor newly = is_success(logits, y, s_.targeted) & ~fooled;
      adversarial.index_copy_(0, newly.nonzero().flatten(), current.index_select(0, newly.nonzero().flatten()));
      fooled = fooled | newly;
      raises = raises + loss.gt(previous_loss).to(raises.scalar_type());
      previous_loss = loss;
      const torch::Tensor improved = loss.gt(best_loss);
      best = torch::where(improved.view({-1, 1, 1, 1}), current, best);
      best_grad = torch::where(improved.view({-1, 1, 1, 1}), grad, best_grad);
      best_loss = torch::where(improved, loss, best_loss);
      if (next_checkpoint < checkpoints.size() && k + 1 == checkpoints[next_checkpoint]) {
        const auto period = static_cast<double>(checkpoints[next_checkpoint] - checkpoints[next_checkpoint - 1]);
        const torch::Tensor oscillating = raises.le(o_.rho() * period);
        const torch::Tensor stalled = ~halved_last & best_loss_last.ge(best_loss);
        const torch::Tensor halve = oscillating | stalled;
        step = torch::where(halve, step / 2, step);
        current = torch::where(halve.view({-1, 1, 1, 1}), best, current);
        grad = torch::where(halve.view({-1, 1, 1, 1}), best_grad, grad);
        halved_last = halve;
        best_loss_last = best_loss.clone();
        raises.zero_();
        ++next_checkpoint;
      }
    }
    return {fooled, adversarial};
  }

 private:
  // Start on the ε-sphere: L∞ a uniform t in [−1, 1] scaled to max |t| = ε,
  // L2 a Gaussian direction of length ε; then clipped to the pixel range.
  torch::Tensor start(const torch::Tensor& x, torch::Generator& gen) const {
    torch::Tensor t;
    torch::Tensor length;
    if (o_.norm() == Norm::Linf) {
      t = torch::rand(x.sizes(), gen, x.options()) * 2 - 1;
      length = std::get<0>(flat(t).abs().max(1));
    } else {
      t = torch::randn(x.sizes(), gen, x.options());
      length = flat(t).norm(2, 1);
    }
    return (x + o_.epsilon() * t / (length.view({-1, 1, 1, 1}) + 1e-12)).clamp(s_.clip_min, s_.clip_max);
  }

  // {gradient of the summed loss in x, per-sample loss, logits of the last
  // draw}, the loss averaged over the EOT draws.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> evaluate_loss(const torch::Tensor& point,
                                                                        const torch::Tensor& y,
                                                                        const torch::Tensor& target) {
    torch::AutoGradMode enable_grad(true);
    const torch::Tensor input = point.detach().requires_grad_(true);
    torch::Tensor total, logits;
    for (int64_t draw = 0; draw < s_.eot_samples; ++draw) {
      logits = f_(input);
      if (!labels_checked_) {
        check_labels("apgd", logits, y);
        labels_checked_ = true;
      }
      const torch::Tensor per_sample =
          sample_loss(logits, y.to(logits.device()), target.defined() ? target.to(logits.device()) : target);
      total = draw == 0 ? per_sample : total + per_sample;
    }
    if (s_.eot_samples > 1) total = total / static_cast<double>(s_.eot_samples);
    torch::Tensor grad = torch::autograd::grad({total.sum()}, {input}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                               /*create_graph=*/false, /*allow_unused=*/true)[0];
    if (!grad.defined()) grad = torch::zeros_like(input);
    // Bookkeeping stays on the input's device (a Guard may answer from another).
    return {grad.detach(), total.detach().to(point.device()), logits.detach().to(point.device())};
  }

  torch::Tensor sample_loss(const torch::Tensor& logits, const torch::Tensor& y, const torch::Tensor& target) const {
    namespace F = torch::nn::functional;
    switch (o_.loss()) {
      case ApgdLoss::CrossEntropy: {
        const torch::Tensor ce = F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kNone));
        return s_.targeted ? -ce : ce;
      }
      case ApgdLoss::Dlr:
        return dlr_loss(logits, y);
      case ApgdLoss::TargetedDlr:
        return targeted_dlr_loss(logits, y, target);
    }
    return {};
  }

  const LogitsFn& f_;
  const ApgdOptions& o_;
  const GradientSettings& s_;
  bool labels_checked_ = false;
};

}  // namespace

AttackResult apgd(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y, const ApgdOptions& options) {
  const auto& s = options.settings();
  check_batch("apgd", x, y, s);
  const bool targeted_dlr = options.loss() == ApgdLoss::TargetedDlr;
  if (s.targeted && options.loss() != ApgdLoss::CrossEntropy) {
    throw OptionError(std::string("apgd: a targeted run (settings().targeted, y = targets) needs the cross-entropy; ") +
                      "the " + to_string(options.loss()) +
                      " loss takes true labels (ApgdLoss::TargetedDlr picks its own targets)");
  }
  const int64_t n = x.size(0);
  const torch::Tensor x0 = x.detach();
  const torch::Tensor clean_logits = detail::evaluate(f, x0).to(x0.device());
  check_labels("apgd", clean_logits, y);
  const int64_t classes = clean_logits.size(1);
  if (options.loss() == ApgdLoss::Dlr) {
    require(classes >= 3, "apgd", "the DLR loss needs at least 3 classes", classes);
  }
  if (targeted_dlr) {
    require(classes >= 4, "apgd", "the targeted DLR loss needs at least 4 classes", classes);
    require(options.target_classes() <= classes - 1, "apgd",
            "target_classes must be at most the class count − 1 = " + std::to_string(classes - 1),
            options.target_classes());
  }
  AttackResult result;
  result.adversarial = x0.clone();
  result.success = is_success(clean_logits, y, s.targeted);  // already wrong: nothing to do
  result.queries = torch::ones({n}, torch::kInt64);
  // Targets of APGD-T: the classes ranked 2, 3, … by the clean logits.
  const torch::Tensor ranked = targeted_dlr ? std::get<1>(clean_logits.sort(1, /*descending=*/true)) : torch::Tensor();
  torch::Generator gen = parry::detail::make_generator(s.seed, x0.device());
  ApgdRun runner(f, options);
  ApgdTrace* trace = options.trace();
  const int64_t targets = targeted_dlr ? options.target_classes() : 1;
  const int64_t run_cost = (options.steps() + 1) * s.eot_samples;
  for (int64_t t = 0; t < targets; ++t) {
    for (int64_t restart = 0; restart < options.restarts(); ++restart) {
      const torch::Tensor active = (~result.success).nonzero().flatten();
      if (active.numel() == 0) break;
      const torch::Tensor xa = x0.index_select(0, active), ya = y.index_select(0, active);
      const torch::Tensor target = targeted_dlr ? ranked.index_select(0, active).select(1, t + 1) : torch::Tensor();
      const auto outcome = runner.run(xa, ya, target, gen, trace);
      trace = nullptr;  // the first run only
      result.queries.index_add_(0, active.cpu(), torch::full({active.size(0)}, run_cost, torch::kInt64));
      const torch::Tensor rows = outcome.fooled.nonzero().flatten();
      const torch::Tensor fooled_rows = active.index_select(0, rows);
      result.adversarial.index_copy_(0, fooled_rows, outcome.adversarial.index_select(0, rows));
      result.success.index_fill_(0, fooled_rows, true);
    }
  }
  result.norm = perturbation_norm(result.adversarial - x0, options.norm());
  return result;
}

}  // namespace parry::attack
