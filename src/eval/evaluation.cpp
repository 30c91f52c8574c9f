// eval::evaluate: every defense of a config against non-adaptive and adaptive attacks.
#include "parry/eval/evaluation.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <sstream>

#include "eval/plots.hpp"
#include "parry/attack/carlini_wagner.hpp"
#include "parry/attack/detector_aware.hpp"
#include "parry/attack/fgsm.hpp"
#include "parry/attack/pgd.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/config/registry.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/generator.hpp"
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

torch::Tensor preprocessed(const Guard& guard, const torch::Tensor& x) {
  // 256 rows bound the memory of the preprocessors (Guard::preprocess has no batch limit).
  return parry::detail::map_chunks(x, 256, [&](const torch::Tensor& chunk) { return guard.preprocess(chunk); });
}

// The AutoAttack ensemble an attack entry of the config names.
attack::AutoAttackOptions auto_attack_options(const config::AttackSpec& spec, double epsilon,
                                              const attack::GradientSettings& settings) {
  attack::AutoAttackOptions options(epsilon, attack::Norm::Linf, attack::auto_attack_version(spec.version));
  if (!spec.components.empty()) {
    std::vector<attack::AutoAttackComponent> components;
    for (const auto& name : spec.components) components.push_back(attack::auto_attack_component(name));
    options.components(components);
  }
  return options.steps(spec.steps)
      .square_queries(spec.square_queries)
      .target_classes(spec.target_classes)
      .settings(settings)
      .client_id("evaluation-auto-attack");
}

// `service` answers the queries of black-box components (AutoAttack's
// Square); `details`, if given, receives AutoAttack's stages and warnings.
attack::AttackResult run_attack(const config::AttackSpec& spec, const attack::LogitsFn& f, const torch::Tensor& x,
                                const torch::Tensor& y, double epsilon, const attack::GradientSettings& settings,
                                const Guard* service = nullptr, attack::AutoAttackResult* details = nullptr) {
  using namespace attack;
  if (spec.type == "autoattack") {
    AutoAttackResult r = auto_attack(f, service, x, y, auto_attack_options(spec, epsilon, settings));
    AttackResult result = r.attack;
    if (details) *details = std::move(r);
    return result;
  }
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
  if (spec.type == "autoattack") {
    std::string label;
    if (spec.version != "custom") {
      label = "AutoAttack-" + spec.version;
    } else {
      label = "AutoAttack(";
      for (size_t i = 0; i < spec.components.size(); ++i) label += (i ? "+" : "") + spec.components[i];
      label += ")";
    }
    // Budgets below the published ones are part of the name: the figure is not the published ensemble's.
    std::string changed;
    if (spec.steps != 100) changed += std::to_string(spec.steps) + " iterations";
    if (spec.square_queries != 5000) {
      changed +=
          (changed.empty() ? "" : ", ") + std::string("Square ") + std::to_string(spec.square_queries) + " queries";
    }
    if (spec.target_classes != 9) {
      changed += (changed.empty() ? "" : ", ") + std::to_string(spec.target_classes) + " targets";
    }
    return changed.empty() ? label : label + " (" + changed + ")";
  }
  if (spec.type == "fgsm") return "FGSM";
  if (spec.type == "pgd") return "PGD-" + std::to_string(spec.steps);
  return "C&W-L2";
}

// fn over matching row chunks of two tensors, concatenated (attacks that
// must respect a Guard's max_batch).
torch::Tensor map_batches(const torch::Tensor& x, const torch::Tensor& y, int64_t batch,
                          const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>& fn) {
  std::vector<torch::Tensor> parts;
  parry::detail::for_each_chunk(x.size(0), batch, [&](int64_t begin, int64_t end) {
    parts.push_back(fn(x.slice(0, begin, end), y.slice(0, begin, end)));
  });
  return torch::cat(parts);
}

// The largest batch every Guard of the config accepts, capped by `cap`.
int64_t batch_limit(const config::Config& config, int64_t cap) {
  int64_t limit = cap;
  for (const auto& d : config.defenses) limit = std::min(limit, d.input.max_batch());
  return std::max<int64_t>(limit, 1);
}

std::string shape_text(int64_t c, int64_t h, int64_t w) {
  return std::to_string(c) + "×" + std::to_string(h) + "×" + std::to_string(w);
}

// The data must fit every defense's input and the model's class count.
void check_data(const config::Config& config, const Model& model, const EvaluationData& data) {
  if (!data.test) throw OptionError("evaluation: no test images");
  const auto check_source = [&](const data::ImageSource& source, const char* split) {
    const auto shape = source.shape();
    for (const auto& d : config.defenses) {
      const auto& in = d.input;
      if (in.channels() != shape.channels || in.height() != shape.height || in.width() != shape.width) {
        throw OptionError("evaluation: the " + std::string(split) + " images of " + source.name() + " are " +
                          shape_text(shape.channels, shape.height, shape.width) + " but defense '" + d.name +
                          "' expects " + shape_text(in.channels(), in.height(), in.width()));
      }
    }
  };
  check_source(*data.test, "test");
  if (data.train) check_source(*data.train, "training");
  const auto classes = static_cast<int64_t>(data.test->classes().size());
  if (classes < 2) throw OptionError("evaluation: the test set " + data.test->name() + " must have at least 2 classes");
  if (data.train && static_cast<int64_t>(data.train->classes().size()) != classes) {
    throw OptionError("evaluation: the training set has " + std::to_string(data.train->classes().size()) +
                      " classes but the test set " + std::to_string(classes));
  }
  if (config.defenses.empty()) return;
  torch::Tensor logits;
  const auto shape = data.test->shape();
  try {
    c10::InferenceMode inference;
    logits = config.defenses.front().model_for(model).logits(data.test->read(0, 1).images);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw OptionError("evaluation: the model fails on one " + shape_text(shape.channels, shape.height, shape.width) +
                      " image of " + data.test->name() + " (does it take this input shape?): " + e.what());
  }
  if (logits.dim() != 2 || logits.size(1) != classes) {
    throw OptionError("evaluation: the data set " + data.test->name() + " has " + std::to_string(classes) +
                      " classes but the model outputs " + (logits.dim() == 2 ? std::to_string(logits.size(1)) : "?") +
                      " logits");
  }
}

// Both splits in a random order fixed by the seed: image folders list their
// images class by class, and the evaluation takes contiguous ranges (the first
// `images` attacked, the last `calibration_images` for thresholds, the first
// `fit_images` for densities), which must each hold every class.
EvaluationData in_random_order(const EvaluationData& data, uint64_t seed) {
  return {data.train ? data::shuffled(data.train, seed + 1) : nullptr,
          data.test ? data::shuffled(data.test, seed) : nullptr};
}

// Preprocessed model features and labels of the first `count` training images.
std::pair<torch::Tensor, torch::Tensor> training_features(const Guard& plain, const Model& model,
                                                          const data::ImageSource& train, int64_t count,
                                                          int64_t batch) {
  std::vector<torch::Tensor> features, labels;
  data::for_each_batch(
      train, batch,
      [&](const data::LabeledImages& b, int64_t) {
        c10::InferenceMode inference;
        features.push_back(model.features(plain.preprocess(b.images)).flatten(1));
        labels.push_back(b.labels);
      },
      0, count);
  return {torch::cat(features), torch::cat(labels)};
}

// Running totals of one defense over the attacked batches.
struct DefenseRun {
  std::shared_ptr<const Guard> guard;
  attack::LogitsFn adaptive;    // the adaptive attacker's path: BPDA/EOT and the detector-aware logits
  attack::LogitsFn classifier;  // the Guard's classifier path without the detectors (AutoAttack's)
  bool targeted = false;
  int64_t eot_samples_cap = 1;  // 1 unless the defense is randomised
  double clean_correct = 0, clean_flagged = 0;
  std::vector<double> class_correct, class_total;
  std::vector<double> defended, adaptive_defended, l2_sum;       // per transfer
  std::vector<int64_t> forward_passes;                           // per transfer
  std::vector<attack::AutoAttackTally> auto_attack;              // per transfer: stages and warnings summed
  std::vector<std::vector<torch::Tensor>> negatives, positives;  // per detector
};

// Adds one batch's AutoAttack outcome to the running totals.
// prepare_detectors on data already in its random order.
void prepare_in_order(config::DefenseSpec& defense, const Model& raw_model, const EvaluationData& data,
                      const config::EvaluationSpec& settings, const Progress& progress) {
  const Model model = defense.model_for(raw_model);  // with the model's own input transform
  if (defense.detectors.empty()) return;
  if (!data.test) throw OptionError("evaluation: no test images to calibrate the detectors with");
  config::DefenseSpec no_detectors = defense;
  no_detectors.detectors.clear();
  no_detectors.gates.clear();
  const auto plain = no_detectors.build_guard(raw_model);
  const int64_t batch = std::max<int64_t>(1, std::min(settings.batch_size, defense.input.max_batch()));
  const int64_t n_test = data.test->size();
  if (settings.calibration_images >= n_test) {
    throw OptionError("evaluation: calibration_images must be below the test set size " + std::to_string(n_test));
  }
  for (auto& spec : defense.detectors) {
    const auto start = Clock::now();
    if (spec.needs_fit()) {
      if (!data.train || data.train->size() == 0) {
        throw OptionError("evaluation: detector '" + spec.type +
                          "' is fitted on training images, but the data has no training split");
      }
      const int64_t total = data.train->size();
      const int64_t fit_n = std::min<int64_t>(spec.fit_images, total);
      const auto [features, labels] = training_features(*plain, model, *data.train, fit_n, batch);
      if (auto kde = std::dynamic_pointer_cast<detect::KernelDensity>(spec.detector)) {
        kde->fit_features(features, labels);
      } else if (auto combined = std::dynamic_pointer_cast<detect::UncertaintyDensity>(spec.detector)) {
        const_cast<detect::KernelDensity&>(combined->density()).fit_features(features, labels);
        // The combiner learns from PGD examples of training images the attack
        // set never contains (the last combiner_images of the training set).
        const int64_t m = std::min<int64_t>(spec.combiner_images, total / 2);
        if (m < 1) {
          throw OptionError("evaluation: detector '" + spec.type + "' needs at least 2 training images");
        }
        const auto held = data.train->read(total - m, total);
        attack::GradientSettings gs;
        gs.seed = settings.seed;
        const auto adv =
            map_batches(held.images, held.labels, batch, [&](const torch::Tensor& cx, const torch::Tensor& cy) {
              return attack::pgd(
                         attack::differentiable(*plain), cx, cy,
                         attack::PgdOptions(spec.fit_epsilon).steps(20).step_size(spec.fit_epsilon / 8).settings(gs))
                  .adversarial;
            });
        const auto clean_p = preprocessed(*plain, held.images), adv_p = preprocessed(*plain, adv);
        combined->fit(model, clean_p, detect::noisy_counterparts(clean_p, adv_p, settings.seed + 1), adv_p);
      }
    }
    // Clean held-out scores (the last calibration_images of the test set), batch by batch.
    std::vector<torch::Tensor> scores;
    data::for_each_batch(
        *data.test, batch,
        [&](const data::LabeledImages& b, int64_t) {
          scores.push_back(spec.detector->score(plain->preprocess(b.images), model));
        },
        n_test - settings.calibration_images, n_test);
    const auto report = spec.detector->calibrate_from_scores(torch::cat(scores), spec.target_fpr);
    say(progress, "  " + spec.detector->name() + ": fitted and calibrated (threshold " + fixed(report.threshold, 4) +
                      ", clean FPR " + percent(report.achieved_fpr) + " on " + std::to_string(report.samples) +
                      " images) in " + fixed(std::chrono::duration<double>(Clock::now() - start).count(), 1) + " s");
  }
}

}  // namespace

void prepare_detectors(config::DefenseSpec& defense, const Model& raw_model, const EvaluationData& data,
                       const config::EvaluationSpec& settings, const Progress& progress) {
  prepare_in_order(defense, raw_model, in_random_order(data, settings.seed), settings, progress);
}

Evaluation evaluate(config::Config& config, const Model& raw_model, const EvaluationData& given,
                    const Progress& progress, bool detectors_ready) {
  const Model model = config.model_for(raw_model);  // with the model's own input transform
  const auto& settings = config.evaluation;
  const auto started = Clock::now();
  const int64_t n = settings.images;
  check_data(config, raw_model, given);
  const EvaluationData data = in_random_order(given, settings.seed);
  check_certified(settings.certified, *data.test);  // before hours of other work
  if (data.test->size() < n + settings.calibration_images) {
    throw OptionError(
        "evaluation: need at least images + calibration_images = " + std::to_string(n + settings.calibration_images) +
        " test images, but " + data.test->name() + " has " + std::to_string(data.test->size()));
  }
  const auto classes = static_cast<int64_t>(data.test->classes().size());
  Evaluation evaluation;
  evaluation.model_description = model.describe();
  evaluation.data_name = data.test->name();
  evaluation.data_description = data.test->description();
  evaluation.classes = data.test->classes();
  evaluation.images = n;
  evaluation.example_epsilon = settings.roc_epsilon;

  // Detectors are fitted and calibrated before any image is attacked.
  for (size_t d = 0; d < config.defenses.size() && !detectors_ready; ++d) {
    auto& defense = config.defenses[d];
    if (defense.detectors.empty()) continue;
    say(progress, "defense " + std::to_string(d + 1) + "/" + std::to_string(config.defenses.size()) + " (" +
                      defense.name + "): preparing detectors");
    prepare_in_order(defense, raw_model, data, settings, progress);
  }

  struct Transfer {
    size_t attack;
    double epsilon;
  };
  std::vector<Transfer> transfers;
  for (size_t a = 0; a < config.attacks.size(); ++a) {
    const auto& spec = config.attacks[a];
    for (double eps : spec.type == "cw" ? std::vector<double>{0.0} : settings.epsilons) transfers.push_back({a, eps});
  }

  std::vector<DefenseRun> runs;
  std::vector<std::vector<BlackBoxOutcome>> black_box_rows;  // per defense
  for (auto& defense : config.defenses) {
    config::DefenseSpec no_gates = defense;
    no_gates.gates.clear();
    DefenseRun run;
    run.guard = no_gates.build_guard(raw_model);
    // Adaptive attack path: BPDA/EOT through the Guard, plus the detectors.
    run.adaptive = attack::differentiable(*run.guard);
    const auto preprocess_path = [g = run.guard](const torch::Tensor& t) {
      torch::Tensor out = t;
      for (const auto& p : g->preprocessors()) out = p->apply_differentiable(out);
      return out;
    };
    for (const auto& det : defense.detectors) {
      if (det.descriptor().adaptive != config::AdaptiveAttack::DetectorAware) continue;
      // The registry gives each detector's weight in the detector-aware loss.
      run.adaptive = attack::detector_aware(run.adaptive, *det.detector, model, det.descriptor().detector_aware_weight,
                                            preprocess_path);
    }
    run.targeted = !defense.detectors.empty();
    run.eot_samples_cap = defense.is_randomised() ? INT64_MAX : 1;
    run.class_correct.assign(static_cast<size_t>(classes), 0.0);
    run.class_total.assign(static_cast<size_t>(classes), 0.0);
    run.defended.assign(transfers.size(), 0.0);
    run.adaptive_defended.assign(transfers.size(), 0.0);
    run.l2_sum.assign(transfers.size(), 0.0);
    run.forward_passes.assign(transfers.size(), 0);
    run.auto_attack.resize(transfers.size());
    run.classifier = attack::differentiable(*run.guard);
    run.negatives.resize(defense.detectors.size());
    run.positives.resize(defense.detectors.size());
    runs.push_back(std::move(run));
  }

  // One batch at a time: the non-adaptive examples are computed once on the
  // bare model and sent through every defense; then each defense is attacked.
  const auto bare = attack::differentiable(model);
  // The bare model as a service that shows every score: the non-adaptive
  // attacker's black-box components (AutoAttack's Square) query it.
  const auto bare_service =
      GuardBuilder(model, config.defenses.empty() ? InputSpec(1, 28, 28) : config.defenses.front().input)
          .set_output_policy(std::make_shared<conceal::Full>())
          .build_shared();
  const bool any_detectors = std::any_of(config.defenses.begin(), config.defenses.end(),
                                         [](const config::DefenseSpec& d) { return !d.detectors.empty(); });
  const int64_t batch = batch_limit(config, settings.batch_size);
  const int64_t batches = (n + batch - 1) / batch;
  data::for_each_batch(
      *data.test, batch,
      [&](const data::LabeledImages& b, int64_t begin) {
        const auto batch_started = Clock::now();
        const auto& x = b.images;
        const auto& y = b.labels;
        auto generator = parry::detail::make_generator(settings.seed + static_cast<uint64_t>(begin), x.device());
        const auto wrong_targets =
            (y + 1 + torch::randint(0, classes - 1, y.sizes(), generator, torch::TensorOptions(torch::kInt64))) %
            classes;
        attack::GradientSettings gs;
        gs.seed = settings.seed + static_cast<uint64_t>(begin);
        std::vector<torch::Tensor> transferred_examples;
        for (const auto& t : transfers) {
          transferred_examples.push_back(
              run_attack(config.attacks[t.attack], bare, x, y, t.epsilon, gs, bare_service.get()).adversarial);
        }
        // PGD at roc_epsilon: the positives of the ROC curves, and the
        // examples of the report (only those when no defense has detectors).
        const int64_t shown = begin == 0 ? std::min<int64_t>(8, x.size(0)) : 0;
        const int64_t roc_n = any_detectors ? x.size(0) : shown;
        torch::Tensor roc_adversarial;
        if (roc_n > 0) {
          roc_adversarial =
              attack::pgd(
                  bare, x.slice(0, 0, roc_n), y.slice(0, 0, roc_n),
                  attack::PgdOptions(settings.roc_epsilon).steps(20).step_size(settings.roc_epsilon / 8).settings(gs))
                  .adversarial;
        }
        if (shown > 0) {
          evaluation.example_clean = x.slice(0, 0, shown).clone();
          evaluation.example_adversarial = roc_adversarial.slice(0, 0, shown).clone();
          for (int64_t i = 0; i < shown; ++i) evaluation.example_labels.push_back(y[i].item<int64_t>());
        }
        for (size_t d = 0; d < runs.size(); ++d) {
          auto& run = runs[d];
          const auto& defense = config.defenses[d];
          const Verdicts clean = run_guard(*run.guard, x);
          const auto right = clean.labels.eq(y);
          run.clean_correct += right.sum().item<double>();
          run.clean_flagged += clean.flagged.sum().item<double>();
          const auto correct_per_class = torch::bincount(y, right.to(torch::kFloat64), classes);
          const auto seen_per_class = torch::bincount(y, {}, classes);
          for (int64_t c = 0; c < classes; ++c) {
            run.class_correct[c] += correct_per_class[c].item<double>();
            run.class_total[c] += seen_per_class[c].item<double>();
          }
          for (size_t i = 0; i < transfers.size(); ++i) {
            const auto& spec = config.attacks[transfers[i].attack];
            const Verdicts transferred = run_guard(*run.guard, transferred_examples[i]);
            const auto transfer_ok = transferred.labels.eq(y) | transferred.flagged;
            attack::GradientSettings adaptive_settings = gs;
            torch::Tensor adv;
            if (spec.type == "autoattack") {
              // AutoAttack is untargeted on the Guard's classifier path (BPDA
              // and, with the rand version, EOT), its Square querying the
              // Guard; it does not know the detectors, whose flags the Guard
              // verdict below still counts (the detector-aware attack is PGD's).
              attack::AutoAttackResult details;
              const auto r = run_attack(spec, run.classifier, x, y, transfers[i].epsilon, adaptive_settings,
                                        run.guard.get(), &details);
              adv = r.adversarial;
              run.forward_passes[i] += r.queries.sum().item<int64_t>();
              run.auto_attack[i].add(details);
            } else {
              adaptive_settings.targeted = run.targeted;
              adaptive_settings.eot_samples = std::min<int64_t>(spec.eot_samples, run.eot_samples_cap);
              const auto r = run_attack(spec, run.adaptive, x, run.targeted ? wrong_targets : y, transfers[i].epsilon,
                                        adaptive_settings);
              adv = r.adversarial;
              run.forward_passes[i] += r.queries.sum().item<int64_t>();
            }
            // Worst case per image: an image counts as defended only if it
            // withstands both the adaptive attack and the transferred one.
            const Verdicts attacked = run_guard(*run.guard, adv);
            run.defended[i] += transfer_ok.sum().item<double>();
            run.adaptive_defended[i] += (transfer_ok & (attacked.labels.eq(y) | attacked.flagged)).sum().item<double>();
            run.l2_sum[i] += attack::perturbation_norm(adv - x, attack::Norm::L2).sum().item<double>();
          }
          if (!defense.detectors.empty()) {
            const auto clean_seen = preprocessed(*run.guard, x), adv_seen = preprocessed(*run.guard, roc_adversarial);
            for (size_t k = 0; k < defense.detectors.size(); ++k) {
              run.negatives[k].push_back(defense.detectors[k].detector->score(clean_seen, model));
              run.positives[k].push_back(defense.detectors[k].detector->score(adv_seen, model));
            }
          }
        }
        say(progress, "batch " + std::to_string(begin / batch + 1) + "/" + std::to_string(batches) + " (images " +
                          std::to_string(begin) + "–" + std::to_string(begin + x.size(0) - 1) + ") attacked on " +
                          std::to_string(runs.size()) + " defenses in " +
                          fixed(std::chrono::duration<double>(Clock::now() - batch_started).count(), 1) + " s");
      },
      0, n);

  // Black-box rows on the first black_box.images attacked images.
  evaluation.black_box = settings.black_box;
  evaluation.black_box.images = std::min(settings.black_box.images, n);
  if (evaluation.black_box.images > 0) {
    const auto subset = data.test->read(0, evaluation.black_box.images);
    for (size_t d = 0; d < runs.size(); ++d) {
      const auto started = Clock::now();
      say(progress, "defense " + std::to_string(d + 1) + "/" + std::to_string(runs.size()) + " (" +
                        config.defenses[d].name + "): black-box attacks on " +
                        std::to_string(evaluation.black_box.images) + " images through the full Guard");
      black_box_rows.push_back(
          black_box(config.defenses[d], raw_model, subset.images, subset.labels, settings, progress));
      say(progress, "  in " + fixed(std::chrono::duration<double>(Clock::now() - started).count(), 1) + " s");
    }
  }

  const auto one = data.test->read(0, 1).images;
  // Throughput at the evaluation's batch (at most 256): memory stays that of one batch.
  const int64_t throughput_n = std::min<int64_t>(batch_limit(config, std::min<int64_t>(256, settings.batch_size)), n);
  const auto throughput_batch = data.test->read(0, throughput_n).images;
  evaluation.throughput_batch = throughput_n;
  {
    // The undefended forward pass of the same model, timed like the Guards
    // below: the reference of every defense's cost ratio.
    c10::InferenceMode inference;
    for (int i = 0; i < 3; ++i) model.logits(one);
    auto t0 = Clock::now();
    for (int64_t i = 0; i < settings.latency_repeats; ++i) model.logits(one);
    evaluation.forward_latency_ms = 1000.0 * std::chrono::duration<double>(Clock::now() - t0).count() /
                                    static_cast<double>(settings.latency_repeats);
    t0 = Clock::now();
    for (int i = 0; i < 3; ++i) model.logits(throughput_batch);
    evaluation.forward_images_per_second =
        static_cast<double>(3 * throughput_n) / std::chrono::duration<double>(Clock::now() - t0).count();
  }
  for (size_t d = 0; d < runs.size(); ++d) {
    auto& run = runs[d];
    const auto& defense = config.defenses[d];
    DefenseOutcome outcome;
    outcome.name = defense.name;
    // Gates included, built fresh where they have factories, so that the
    // latency runs leave the config's own gates as they were.
    const auto full = defense.gate_factories.size() == defense.gates.size() ? defense.build_fresh_guard(raw_model)
                                                                            : defense.build_guard(raw_model);
    outcome.description = full->describe();
    const auto total = static_cast<double>(n);
    outcome.clean_accuracy = run.clean_correct / total;
    outcome.clean_flagged = run.clean_flagged / total;
    outcome.images = n;
    for (int64_t c = 0; c < classes; ++c) {
      outcome.class_accuracy.push_back(run.class_total[c] > 0 ? run.class_correct[c] / run.class_total[c]
                                                              : std::nan(""));
      outcome.class_images.push_back(static_cast<int64_t>(run.class_total[c]));
    }
    for (size_t i = 0; i < transfers.size(); ++i) {
      AttackOutcome result;
      result.attack = attack_label(config.attacks[transfers[i].attack]);
      result.epsilon = transfers[i].epsilon;
      result.accuracy = run.defended[i] / total;
      result.adaptive_accuracy = run.adaptive_defended[i] / total;
      result.mean_l2 = run.l2_sum[i] / total;
      result.images = n;
      result.forward_passes = run.forward_passes[i];
      result.stages = run.auto_attack[i].stages();
      result.clean_correct = run.auto_attack[i].clean_correct();
      result.warnings = run.auto_attack[i].warnings();
      outcome.attacks.push_back(result);
    }
    for (size_t k = 0; k < defense.detectors.size(); ++k) {
      const auto& detector = *defense.detectors[k].detector;
      DetectorOutcome r;
      r.name = detector.name();
      const auto neg = torch::cat(run.negatives[k]), pos = torch::cat(run.positives[k]);
      const auto curve = roc_curve(neg, pos);
      r.auc = curve.auc;
      r.roc_fpr = curve.fpr;
      r.roc_tpr = curve.tpr;
      r.detection_rate = pos.gt(detector.threshold()).to(torch::kFloat64).mean().item<double>();
      r.clean_fpr = neg.gt(detector.threshold()).to(torch::kFloat64).mean().item<double>();
      r.adversarial_images = pos.numel();
      r.clean_images = neg.numel();
      outcome.detectors.push_back(r);
    }
    if (d < black_box_rows.size()) outcome.black_box = black_box_rows[d];
    // Latency with the full Guard (gates included), one client per call.
    for (int i = 0; i < 3; ++i) full->predict(one, RequestContext{"warm-up"});
    auto t0 = Clock::now();
    for (int64_t i = 0; i < settings.latency_repeats; ++i) {
      full->predict(one, RequestContext{"latency-" + std::to_string(i)});
    }
    outcome.latency_ms = 1000.0 * std::chrono::duration<double>(Clock::now() - t0).count() /
                         static_cast<double>(settings.latency_repeats);
    t0 = Clock::now();
    const int repeats = 3;
    for (int i = 0; i < repeats; ++i) run.guard->predict(throughput_batch);
    outcome.images_per_second =
        static_cast<double>(repeats * throughput_n) / std::chrono::duration<double>(Clock::now() - t0).count();
    std::string line = "defense " + defense.name + ": clean " + percent(outcome.clean_accuracy);
    for (const auto& a : outcome.attacks) {
      line += "; " + a.attack + (a.epsilon > 0 ? " ε=" + fixed(a.epsilon, 3) : "") + " " + percent(a.accuracy) + " / " +
              percent(a.adaptive_accuracy);
    }
    say(progress, line);
    evaluation.defenses.push_back(std::move(outcome));
  }
  evaluation.certified = evaluate_certified(model, *data.test, settings.certified, settings.seed, progress);
  evaluation.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  return evaluation;
}

}  // namespace parry::eval
