// eval::evaluate: every defense of a config against non-adaptive and adaptive attacks.
#include "parry/eval/evaluation.hpp"

#include <chrono>
#include <sstream>

#include "eval/plots.hpp"
#include "parry/attack/carlini_wagner.hpp"
#include "parry/attack/detector_aware.hpp"
#include "parry/attack/fgsm.hpp"
#include "parry/attack/pgd.hpp"
#include "parry/config/registry.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detect/kernel_density.hpp"
#include "parry/detect/mc_dropout.hpp"
#include "parry/detect/uncertainty_density.hpp"
#include "parry/eval/metrics.hpp"

namespace parry::eval {

using detail::fixed;
using detail::percent;

namespace {

using Clock = std::chrono::steady_clock;
using Progress = std::function<void(const std::string&)>;

void say(const Progress& progress, const std::string& line) {
  if (progress) progress(line);
}

// Labels and flags of the Guard's pipeline (no gates) in chunks.
struct Verdicts {
  torch::Tensor labels, flagged;
};

Verdicts run_guard(const Guard& guard, const torch::Tensor& x) {
  std::vector<torch::Tensor> labels, flags;
  parry::detail::for_each_chunk(x.size(0), guard.input_spec().max_batch(), [&](int64_t begin, int64_t end) {
    const Response r = guard.predict(x.slice(0, begin, end));
    labels.push_back(torch::tensor(r.labels, torch::kInt64));
    std::vector<int64_t> f(r.flagged.begin(), r.flagged.end());
    flags.push_back(f.empty() ? torch::zeros({static_cast<int64_t>(r.labels.size())}, torch::kBool)
                              : torch::tensor(f, torch::kInt64).to(torch::kBool));
  });
  return {torch::cat(labels), torch::cat(flags)};
}

double defended_rate(const Verdicts& v, const torch::Tensor& y) {
  return (v.labels.eq(y) | v.flagged).to(torch::kFloat64).mean().item<double>();
}

torch::Tensor preprocessed(const Guard& guard, const torch::Tensor& x) {
  // 256 rows bound the memory of the preprocessors (Guard::preprocess has no batch limit).
  return parry::detail::map_chunks(x, 256, [&](const torch::Tensor& chunk) { return guard.preprocess(chunk); });
}

attack::AttackResult run_attack(const config::AttackSpec& spec, const attack::LogitsFn& f, const torch::Tensor& x,
                                const torch::Tensor& y, double epsilon, const attack::GradientSettings& settings) {
  using namespace attack;
  if (spec.type == "fgsm") return fgsm(f, x, y, FgsmOptions(epsilon).settings(settings));
  if (spec.type == "pgd") {
    return pgd(f, x, y,
               PgdOptions(epsilon)
                   .steps(spec.steps)
                   .step_size(spec.step_ratio * epsilon)
                   .restarts(spec.restarts)
                   .settings(settings));
  }
  return carlini_wagner_l2(f, x, y,
                           CarliniWagnerOptions()
                               .binary_search_steps(spec.binary_search_steps)
                               .max_iterations(spec.max_iterations)
                               .settings(settings));
}

std::string attack_label(const config::AttackSpec& spec) {
  if (spec.type == "fgsm") return "FGSM";
  if (spec.type == "pgd") return "PGD-" + std::to_string(spec.steps);
  return "C&W-L2";
}

}  // namespace

void prepare_detectors(config::DefenseSpec& defense, const Model& raw_model, const EvaluationData& data,
                       const config::EvaluationSpec& settings, const Progress& progress) {
  const Model model = defense.model_for(raw_model);  // with the model's own input transform
  if (defense.detectors.empty()) return;
  config::DefenseSpec no_detectors = defense;
  no_detectors.detectors.clear();
  no_detectors.gates.clear();
  const auto plain = no_detectors.build_guard(raw_model);
  const int64_t n_test = data.test.images.size(0);
  if (settings.calibration_images >= n_test) {
    throw OptionError("evaluation: calibration_images must be below the test set size " + std::to_string(n_test));
  }
  const torch::Tensor calibration =
      preprocessed(*plain, data.test.images.slice(0, n_test - settings.calibration_images, n_test));
  for (auto& spec : defense.detectors) {
    const auto start = Clock::now();
    if (spec.needs_fit()) {
      const int64_t fit_n = std::min<int64_t>(spec.fit_images, data.train.images.size(0));
      const auto train_x = preprocessed(*plain, data.train.images.slice(0, 0, fit_n));
      const auto train_y = data.train.labels.slice(0, 0, fit_n);
      if (auto kde = std::dynamic_pointer_cast<detect::KernelDensity>(spec.detector)) {
        kde->fit(model, train_x, train_y);
      } else if (auto combined = std::dynamic_pointer_cast<detect::UncertaintyDensity>(spec.detector)) {
        const_cast<detect::KernelDensity&>(combined->density()).fit(model, train_x, train_y);
        // The combiner learns from PGD examples of training images the attack
        // set never contains (the last combiner_images of the training subset).
        const int64_t m = std::min<int64_t>(spec.combiner_images, data.train.images.size(0) / 2);
        const int64_t total = data.train.images.size(0);
        const auto cx = data.train.images.slice(0, total - m, total), cy = data.train.labels.slice(0, total - m, total);
        attack::GradientSettings gs;
        gs.seed = settings.seed;
        const auto adv =
            attack::pgd(attack::differentiable(*plain), cx, cy,
                        attack::PgdOptions(spec.fit_epsilon).steps(20).step_size(spec.fit_epsilon / 8).settings(gs))
                .adversarial;
        const auto clean_p = preprocessed(*plain, cx), adv_p = preprocessed(*plain, adv);
        combined->fit(model, clean_p, detect::noisy_counterparts(clean_p, adv_p, settings.seed + 1), adv_p);
      }
    }
    const auto report = spec.detector->calibrate(calibration, model, spec.target_fpr);
    say(progress, "  " + spec.detector->name() + ": fitted and calibrated (threshold " + fixed(report.threshold, 4) +
                      ", clean FPR " + percent(report.achieved_fpr) + " on " + std::to_string(report.samples) +
                      " images) in " + fixed(std::chrono::duration<double>(Clock::now() - start).count(), 1) + " s");
  }
}

Evaluation evaluate(config::Config& config, const Model& raw_model, const EvaluationData& data,
                    const Progress& progress, bool detectors_ready) {
  const Model model = config.model_for(raw_model);  // with the model's own input transform
  const auto& settings = config.evaluation;
  const auto started = Clock::now();
  const int64_t n = settings.images;
  if (data.test.images.size(0) < n + settings.calibration_images) {
    throw OptionError(
        "evaluation: need at least images + calibration_images = " + std::to_string(n + settings.calibration_images) +
        " test images, but have " + std::to_string(data.test.images.size(0)));
  }
  const auto x = data.test.images.slice(0, 0, n), y = data.test.labels.slice(0, 0, n);
  Evaluation evaluation;
  evaluation.model_description = model.kind();
  evaluation.images = n;
  torch::manual_seed(settings.seed);
  const auto wrong_targets = (y + 1 + torch::randint(0, 9, y.sizes(), torch::kInt64)) % 10;

  // Non-adaptive examples are computed once on the bare model and reused for every defense.
  const auto bare = attack::differentiable(model);
  struct Transfer {
    size_t attack;
    double epsilon;
    torch::Tensor adversarial;
  };
  std::vector<Transfer> transfers;
  for (size_t a = 0; a < config.attacks.size(); ++a) {
    const auto& spec = config.attacks[a];
    const std::vector<double> budgets = spec.type == "cw" ? std::vector<double>{0.0} : settings.epsilons;
    for (double eps : budgets) {
      const auto start = Clock::now();
      attack::GradientSettings gs;
      gs.seed = settings.seed;
      transfers.push_back({a, eps, run_attack(spec, bare, x, y, eps, gs).adversarial});
      say(progress, "attack " + attack_label(spec) + (eps > 0 ? " ε=" + fixed(eps, 3) : "") + " on the bare model: " +
                        fixed(std::chrono::duration<double>(Clock::now() - start).count(), 1) + " s");
    }
  }
  attack::GradientSettings roc_settings;
  roc_settings.seed = settings.seed;
  const auto roc_adversarial =
      attack::pgd(bare, x, y, attack::PgdOptions(settings.roc_epsilon).steps(20).step_size(settings.roc_epsilon / 8))
          .adversarial;
  evaluation.example_clean = x.slice(0, 0, 8);
  evaluation.example_adversarial = roc_adversarial.slice(0, 0, 8);
  evaluation.example_epsilon = settings.roc_epsilon;

  for (size_t d = 0; d < config.defenses.size(); ++d) {
    auto& defense = config.defenses[d];
    say(progress,
        "defense " + std::to_string(d + 1) + "/" + std::to_string(config.defenses.size()) + ": " + defense.name);
    if (!detectors_ready) prepare_detectors(defense, raw_model, data, settings, progress);
    config::DefenseSpec no_gates = defense;
    no_gates.gates.clear();
    const auto guard = no_gates.build_guard(raw_model);
    DefenseOutcome outcome;
    outcome.name = defense.name;
    outcome.description = defense.build_guard(raw_model)->describe();
    const Verdicts clean = run_guard(*guard, x);
    outcome.clean_accuracy = clean.labels.eq(y).to(torch::kFloat64).mean().item<double>();
    outcome.clean_flagged = clean.flagged.to(torch::kFloat64).mean().item<double>();

    // Adaptive attack path: BPDA/EOT through the Guard, plus the detectors.
    attack::LogitsFn adaptive = attack::differentiable(*guard);
    const auto preprocess_path = [g = guard](const torch::Tensor& t) {
      torch::Tensor out = t;
      for (const auto& p : g->preprocessors()) out = p->apply_differentiable(out);
      return out;
    };
    for (const auto& det : defense.detectors) {
      if (det.descriptor().adaptive != config::AdaptiveAttack::DetectorAware) continue;
      // The registry gives each detector's weight in the detector-aware loss.
      adaptive = attack::detector_aware(adaptive, *det.detector, model, det.descriptor().detector_aware_weight,
                                        preprocess_path);
    }
    const bool targeted = !defense.detectors.empty();
    for (const auto& t : transfers) {
      const auto& spec = config.attacks[t.attack];
      const auto start = Clock::now();
      AttackOutcome result;
      result.attack = attack_label(spec);
      result.epsilon = t.epsilon;
      const Verdicts transferred = run_guard(*guard, t.adversarial);
      result.accuracy = defended_rate(transferred, y);
      attack::GradientSettings gs;
      gs.seed = settings.seed;
      gs.targeted = targeted;
      gs.eot_samples = defense.is_randomised() ? spec.eot_samples : 1;
      const auto adv = run_attack(spec, adaptive, x, targeted ? wrong_targets : y, t.epsilon, gs).adversarial;
      // Worst case per image: an image counts as defended only if it
      // withstands both the adaptive attack and the transferred one.
      const Verdicts attacked = run_guard(*guard, adv);
      result.adaptive_accuracy =
          ((transferred.labels.eq(y) | transferred.flagged) & (attacked.labels.eq(y) | attacked.flagged))
              .to(torch::kFloat64)
              .mean()
              .item<double>();
      result.mean_l2 = attack::perturbation_norm(adv - x, attack::Norm::L2).mean().item<double>();
      outcome.attacks.push_back(result);
      say(progress, "  " + result.attack + (t.epsilon > 0 ? " ε=" + fixed(t.epsilon, 3) : "") + ": defended " +
                        percent(result.accuracy) + " non-adaptive, " + percent(result.adaptive_accuracy) +
                        " adaptive (" + fixed(std::chrono::duration<double>(Clock::now() - start).count(), 1) + " s)");
    }

    const auto clean_seen = preprocessed(*guard, x), adv_seen = preprocessed(*guard, roc_adversarial);
    for (const auto& det : defense.detectors) {
      DetectorOutcome r;
      r.name = det.detector->name();
      const auto neg = det.detector->score(clean_seen, model), pos = det.detector->score(adv_seen, model);
      const auto curve = roc_curve(neg, pos);
      r.auc = curve.auc;
      r.roc_fpr = curve.fpr;
      r.roc_tpr = curve.tpr;
      r.detection_rate = pos.gt(det.detector->threshold()).to(torch::kFloat64).mean().item<double>();
      r.clean_fpr = neg.gt(det.detector->threshold()).to(torch::kFloat64).mean().item<double>();
      outcome.detectors.push_back(r);
    }

    // Latency with the full Guard (gates included), one client per call.
    const auto full = defense.build_guard(raw_model);
    const auto one = x.slice(0, 0, 1);
    for (int i = 0; i < 3; ++i) full->predict(one, RequestContext{"warm-up"});
    auto t0 = Clock::now();
    for (int64_t i = 0; i < settings.latency_repeats; ++i) {
      full->predict(one, RequestContext{"latency-" + std::to_string(i)});
    }
    outcome.latency_ms = 1000.0 * std::chrono::duration<double>(Clock::now() - t0).count() /
                         static_cast<double>(settings.latency_repeats);
    const auto batch = data.test.images.slice(0, 0, std::min<int64_t>(256, data.test.images.size(0)));
    t0 = Clock::now();
    const int repeats = 3;
    for (int i = 0; i < repeats; ++i) guard->predict(batch);
    outcome.images_per_second =
        static_cast<double>(repeats * batch.size(0)) / std::chrono::duration<double>(Clock::now() - t0).count();
    evaluation.defenses.push_back(std::move(outcome));
  }
  evaluation.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  return evaluation;
}

}  // namespace parry::eval
