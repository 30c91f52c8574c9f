// The evaluation behind `parry eval` / `parry demo` and its report: tables,
// metrics.json and PNG plots drawn with OpenCV.
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <chrono>
#include <filesystem>
#include <sstream>

#include "parry/attack/carlini_wagner.hpp"
#include "parry/attack/detector_aware.hpp"
#include "parry/attack/fgsm.hpp"
#include "parry/attack/pgd.hpp"
#include "parry/detail/files.hpp"
#include "parry/detect/kernel_density.hpp"
#include "parry/detect/mc_dropout.hpp"
#include "parry/detect/uncertainty_density.hpp"
#include "parry/eval/metrics.hpp"
#include "parry/eval/report.hpp"

namespace parry::eval {

namespace {

using Clock = std::chrono::steady_clock;
using Progress = std::function<void(const std::string&)>;

void say(const Progress& progress, const std::string& line) {
  if (progress) progress(line);
}

std::string fixed(double v, int digits) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(digits);
  out << v;
  return out.str();
}

std::string percent(double v) {
  return fixed(100.0 * v, 1) + "%";
}

// Labels and flags of the Guard's pipeline (no gates) in chunks.
struct Verdicts {
  torch::Tensor labels, flagged;
};

Verdicts run_guard(const Guard& guard, const torch::Tensor& x) {
  std::vector<torch::Tensor> labels, flags;
  const int64_t chunk = guard.input_spec().max_batch();
  for (int64_t s = 0; s < x.size(0); s += chunk) {
    const Response r = guard.predict(x.slice(0, s, s + chunk));
    labels.push_back(torch::tensor(r.labels, torch::kInt64));
    std::vector<int64_t> f(r.flagged.begin(), r.flagged.end());
    flags.push_back(f.empty() ? torch::zeros({static_cast<int64_t>(r.labels.size())}, torch::kBool)
                              : torch::tensor(f, torch::kInt64).to(torch::kBool));
  }
  return {torch::cat(labels), torch::cat(flags)};
}

double defended_rate(const Verdicts& v, const torch::Tensor& y) {
  return (v.labels.eq(y) | v.flagged).to(torch::kFloat64).mean().item<double>();
}

torch::Tensor preprocessed(const Guard& guard, const torch::Tensor& x) {
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < x.size(0); s += 256) parts.push_back(guard.preprocess(x.slice(0, s, s + 256)));
  return torch::cat(parts);
}

bool is_randomised(const config::DefenseSpec& d) {
  for (const auto& det : d.detectors) {
    if (det.type == "mc_dropout" || det.type == "uncertainty_density") return true;
  }
  return false;
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

void prepare_detectors(config::DefenseSpec& defense, const Model& model, const EvaluationData& data,
                       const config::EvaluationSpec& settings, const Progress& progress) {
  if (defense.detectors.empty()) return;
  config::DefenseSpec no_detectors = defense;
  no_detectors.detectors.clear();
  no_detectors.gates.clear();
  const auto plain = no_detectors.build_guard(model);
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

Evaluation evaluate(config::Config& config, const Model& model, const EvaluationData& data, const Progress& progress,
                    bool detectors_ready) {
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
    if (!detectors_ready) prepare_detectors(defense, model, data, settings, progress);
    config::DefenseSpec no_gates = defense;
    no_gates.gates.clear();
    const auto guard = no_gates.build_guard(model);
    DefenseOutcome outcome;
    outcome.name = defense.name;
    outcome.description = defense.build_guard(model)->describe();
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
      adaptive = attack::detector_aware(adaptive, *det.detector, model, det.type == "kernel_density" ? 0.1 : 10.0,
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
      gs.eot_samples = is_randomised(defense) ? spec.eot_samples : 1;
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
    const auto full = defense.build_guard(model);
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

// ---------------------------------------------------------------- report

std::string summary_table(const Evaluation& e) {
  std::ostringstream out;
  out << "| defense | clean accuracy | clean flagged |";
  const auto& first = e.defenses.front();
  for (const auto& a : first.attacks) {
    out << " " << a.attack << (a.epsilon > 0 ? " ε=" + fixed(a.epsilon, 2) : "") << " (non-adaptive / adaptive) |";
  }
  out << " latency (batch 1) | images/s (batch 256) |\n|---|---:|---:|";
  for (size_t i = 0; i < first.attacks.size(); ++i) out << "---:|";
  out << "---:|---:|\n";
  for (const auto& d : e.defenses) {
    out << "| " << d.name << " | " << percent(d.clean_accuracy) << " | " << percent(d.clean_flagged) << " |";
    for (const auto& a : d.attacks) out << " " << percent(a.accuracy) << " / " << percent(a.adaptive_accuracy) << " |";
    out << " " << fixed(d.latency_ms, 2) << " ms | " << fixed(d.images_per_second, 0) << " |\n";
  }
  return out.str();
}

namespace {

const std::vector<cv::Scalar>& palette() {
  static const std::vector<cv::Scalar> colors = {{180, 119, 31},  {14, 127, 255}, {44, 160, 44},   {40, 39, 214},
                                                 {189, 103, 148}, {75, 86, 140},  {194, 119, 227}, {127, 127, 127}};
  return colors;
}

void text(cv::Mat& img, const std::string& s, cv::Point at, double scale = 0.45, cv::Scalar color = {30, 30, 30}) {
  cv::putText(img, s, at, cv::FONT_HERSHEY_SIMPLEX, scale, color, 1, cv::LINE_AA);
}

// Axes with [0,1]-style ranges: returns the mapping from data to pixels.
struct Axes {
  cv::Rect area;
  double x0, x1, y0, y1;
  cv::Point map(double x, double y) const {
    return {area.x + static_cast<int>((x - x0) / (x1 - x0) * area.width),
            area.y + area.height - static_cast<int>((y - y0) / (y1 - y0) * area.height)};
  }
};

Axes draw_axes(cv::Mat& img, cv::Rect area, double x0, double x1, double y0, double y1, const std::string& xlabel,
               const std::string& ylabel, const std::string& title) {
  Axes axes{area, x0, x1, y0, y1};
  for (int i = 0; i <= 5; ++i) {
    const double fy = y0 + (y1 - y0) * i / 5.0, fx = x0 + (x1 - x0) * i / 5.0;
    cv::line(img, axes.map(x0, fy), axes.map(x1, fy), {225, 225, 225}, 1);
    text(img, fixed(fy, 1), axes.map(x0, fy) + cv::Point(-34, 5), 0.4);
    text(img, fixed(fx, 2), axes.map(fx, y0) + cv::Point(-14, 18), 0.4);
  }
  cv::rectangle(img, area, {60, 60, 60}, 1);
  text(img, xlabel, {area.x + area.width / 2 - 40, area.y + area.height + 38});
  text(img, ylabel, {area.x, area.y - 8}, 0.4);
  text(img, title, {area.x, 22}, 0.55);
  return axes;
}

void dashed_line(cv::Mat& img, cv::Point a, cv::Point b, cv::Scalar color) {
  const double length = std::hypot(b.x - a.x, b.y - a.y);
  const int dashes = std::max(1, static_cast<int>(length / 8));
  for (int i = 0; i < dashes; i += 2) {
    const cv::Point p = a + (b - a) * (static_cast<double>(i) / dashes);
    const cv::Point q = a + (b - a) * (static_cast<double>(std::min(i + 1, dashes)) / dashes);
    cv::line(img, p, q, color, 2, cv::LINE_AA);
  }
}

cv::Mat plot_accuracy(const Evaluation& e) {
  cv::Mat img(520, 860, CV_8UC3, cv::Scalar(255, 255, 255));
  // The iterative attack with budgets: the first PGD, else the first with ε.
  std::string attack;
  for (const auto& a : e.defenses.front().attacks) {
    if (a.epsilon > 0 && (attack.empty() || a.attack.rfind("PGD", 0) == 0)) attack = a.attack;
  }
  double max_eps = 0;
  for (const auto& a : e.defenses.front().attacks) {
    if (a.attack == attack) max_eps = std::max(max_eps, a.epsilon);
  }
  const Axes axes = draw_axes(img, {60, 56, 560, 404}, 0.0, max_eps > 0 ? max_eps : 1.0, 0.0, 1.0, "epsilon (L-inf)",
                              "accuracy (right or flagged)", attack + ": solid = non-adaptive, dashed = adaptive");
  for (size_t d = 0; d < e.defenses.size(); ++d) {
    const auto color = palette()[d % palette().size()];
    cv::Point last, last_adaptive;
    bool has_last = false;
    const auto start = axes.map(0.0, e.defenses[d].clean_accuracy);
    last = last_adaptive = start;
    has_last = true;
    for (const auto& a : e.defenses[d].attacks) {
      if (a.attack != attack) continue;
      const auto p = axes.map(a.epsilon, a.accuracy), q = axes.map(a.epsilon, a.adaptive_accuracy);
      if (has_last) {
        cv::line(img, last, p, color, 2, cv::LINE_AA);
        dashed_line(img, last_adaptive, q, color);
      }
      cv::circle(img, p, 4, color, cv::FILLED, cv::LINE_AA);
      cv::circle(img, q, 4, color, 1, cv::LINE_AA);
      last = p;
      last_adaptive = q;
    }
    cv::line(img, {640, 60 + 24 * static_cast<int>(d)}, {670, 60 + 24 * static_cast<int>(d)}, color, 3);
    text(img, e.defenses[d].name, {678, 65 + 24 * static_cast<int>(d)});
  }
  return img;
}

cv::Mat plot_roc(const Evaluation& e) {
  cv::Mat img(560, 860, CV_8UC3, cv::Scalar(255, 255, 255));
  const Axes axes = draw_axes(img, {60, 56, 460, 444}, 0.0, 1.0, 0.0, 1.0, "false-positive rate", "detection rate",
                              "ROC: clean vs PGD eps=" + fixed(e.example_epsilon, 2));
  dashed_line(img, axes.map(0, 0), axes.map(1, 1), {170, 170, 170});
  size_t k = 0;
  for (const auto& d : e.defenses) {
    for (const auto& r : d.detectors) {
      const auto color = palette()[k % palette().size()];
      for (size_t i = 1; i < r.roc_fpr.size(); ++i) {
        cv::line(img, axes.map(r.roc_fpr[i - 1], r.roc_tpr[i - 1]), axes.map(r.roc_fpr[i], r.roc_tpr[i]), color, 2,
                 cv::LINE_AA);
      }
      const int y = 60 + 24 * static_cast<int>(k);
      cv::line(img, {540, y}, {570, y}, color, 3);
      text(img, d.name + ": " + r.name + " (AUC " + fixed(r.auc, 3) + ")", {578, y + 5}, 0.4);
      ++k;
    }
  }
  if (k == 0) text(img, "no detectors in this configuration", {150, 260}, 0.6);
  return img;
}

cv::Mat plot_examples(const Evaluation& e) {
  const int n = static_cast<int>(e.example_clean.size(0)), cell = 84, pad = 8, left = 120;
  cv::Mat img(3 * (cell + pad) + 40, left + n * (cell + pad), CV_8UC3, cv::Scalar(255, 255, 255));
  const auto delta = e.example_adversarial - e.example_clean;
  const double eps = std::max(1e-6, e.example_epsilon);
  const std::vector<std::pair<std::string, torch::Tensor>> rows = {
      {"clean", e.example_clean}, {"adversarial", e.example_adversarial}, {"perturbation", 0.5 + delta / (2 * eps)}};
  for (int r = 0; r < 3; ++r) {
    text(img, rows[r].first, {8, 30 + r * (cell + pad) + cell / 2});
    for (int i = 0; i < n; ++i) {
      const auto t = (rows[r].second[i][0].clamp(0, 1) * 255).to(torch::kUInt8).contiguous();
      cv::Mat gray(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), CV_8UC1, t.data_ptr<uint8_t>());
      cv::Mat big, color;
      cv::resize(gray, big, {cell, cell}, 0, 0, cv::INTER_NEAREST);
      cv::cvtColor(big, color, cv::COLOR_GRAY2BGR);
      color.copyTo(img(cv::Rect(left + i * (cell + pad), 30 + r * (cell + pad), cell, cell)));
    }
  }
  text(img, "PGD eps=" + fixed(eps, 2) + " on the bare model; perturbation shown as 0.5 + delta/(2 eps)", {8, 18});
  return img;
}

cv::Mat plot_latency(const Evaluation& e) {
  const int row = 34;
  cv::Mat img(70 + row * static_cast<int>(e.defenses.size()), 860, CV_8UC3, cv::Scalar(255, 255, 255));
  double top = 1e-9;
  for (const auto& d : e.defenses) top = std::max(top, d.latency_ms);
  text(img, "Guard::predict latency, batch 1 (ms)", {10, 22}, 0.55);
  for (size_t i = 0; i < e.defenses.size(); ++i) {
    const int y = 40 + row * static_cast<int>(i);
    const int width = static_cast<int>(560 * e.defenses[i].latency_ms / top);
    cv::rectangle(img, {200, y, std::max(width, 1), row - 10}, palette()[i % palette().size()], cv::FILLED);
    text(img, e.defenses[i].name, {10, y + 17});
    text(img, fixed(e.defenses[i].latency_ms, 2) + " ms", {205 + width, y + 17});
  }
  return img;
}

std::string png_bytes(const cv::Mat& img) {
  std::vector<uchar> buffer;
  if (!cv::imencode(".png", img, buffer)) throw IoError("cannot write the report", "cv::imencode(.png) failed");
  return std::string(buffer.begin(), buffer.end());
}

std::string base64(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t chunk = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) chunk |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) chunk |= static_cast<uint8_t>(bytes[i + 2]);
    out += alphabet[(chunk >> 18) & 63];
    out += alphabet[(chunk >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(chunk >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? alphabet[chunk & 63] : '=';
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

nlohmann::json to_json(const Evaluation& e) {
  nlohmann::json root;
  root["model"] = e.model_description;
  root["images"] = e.images;
  root["seconds"] = e.seconds;
  root["example_epsilon"] = e.example_epsilon;
  for (const auto& d : e.defenses) {
    nlohmann::json j;
    j["name"] = d.name;
    j["description"] = d.description;
    j["clean_accuracy"] = d.clean_accuracy;
    j["clean_flagged"] = d.clean_flagged;
    j["latency_ms"] = d.latency_ms;
    j["images_per_second"] = d.images_per_second;
    j["attacks"] = nlohmann::json::array();
    for (const auto& a : d.attacks) {
      j["attacks"].push_back({{"attack", a.attack},
                              {"epsilon", a.epsilon},
                              {"accuracy", a.accuracy},
                              {"adaptive_accuracy", a.adaptive_accuracy},
                              {"adaptive_mean_l2", a.mean_l2}});
    }
    j["detectors"] = nlohmann::json::array();
    for (const auto& r : d.detectors) {
      j["detectors"].push_back({{"name", r.name},
                                {"auc", r.auc},
                                {"detection_rate", r.detection_rate},
                                {"clean_fpr", r.clean_fpr},
                                {"roc_fpr", r.roc_fpr},
                                {"roc_tpr", r.roc_tpr}});
    }
    root["defenses"].push_back(j);
  }
  return root;
}

}  // namespace

void write_report(const Evaluation& e, const std::string& directory) {
  if (e.defenses.empty()) throw OptionError("write_report: the evaluation has no defenses");
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) throw IoError("cannot write the report", "create_directories('" + directory + "'): " + error.message());
  const auto file = [&](const std::string& name) { return (std::filesystem::path(directory) / name).string(); };
  const std::vector<std::pair<std::string, std::string>> plots = {
      {"accuracy_vs_epsilon.png", png_bytes(plot_accuracy(e))},
      {"roc.png", png_bytes(plot_roc(e))},
      {"examples.png", png_bytes(plot_examples(e))},
      {"latency.png", png_bytes(plot_latency(e))}};
  for (const auto& [name, bytes] : plots) detail::atomic_write_bytes(file(name), bytes);
  detail::atomic_write_bytes(file("metrics.json"), to_json(e).dump(2) + "\n");

  std::ostringstream md;
  md << "# Parry evaluation report\n\n"
     << e.images << " Fashion-MNIST test images; evaluation took " << fixed(e.seconds, 0) << " s.\n"
     << "Accuracy counts an input as defended when the Guard's label is right or the input is flagged.\n"
     << "Non-adaptive: the attack is computed on the bare model. Adaptive: it attacks the Guard itself "
        "(BPDA through preprocessing, EOT over dropout, detector-aware and targeted when detectors are present).\n\n"
     << summary_table(e) << "\n## Detectors (clean vs PGD ε=" << fixed(e.example_epsilon, 2) << ")\n\n"
     << "| defense | detector | ROC-AUC | detected at calibrated threshold | clean flagged "
        "|\n|---|---|---:|---:|---:|\n";
  for (const auto& d : e.defenses) {
    for (const auto& r : d.detectors) {
      md << "| " << d.name << " | " << r.name << " | " << fixed(r.auc, 3) << " | " << percent(r.detection_rate) << " | "
         << percent(r.clean_fpr) << " |\n";
    }
  }
  md << "\n## Defenses\n\n";
  for (const auto& d : e.defenses) md << "- **" << d.name << "**: `" << d.description << "`\n";
  md << "\n![accuracy](accuracy_vs_epsilon.png)\n\n![roc](roc.png)\n\n![examples](examples.png)\n\n"
        "![latency](latency.png)\n";
  detail::atomic_write_bytes(file("report.md"), md.str());

  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Parry evaluation report</title>"
          "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}"
          "code{font-size:90%}</style></head><body>\n<h1>Parry evaluation report</h1>\n<p>"
       << e.images << " Fashion-MNIST test images; evaluation took " << fixed(e.seconds, 0)
       << " s. An input counts as defended when the Guard's label is right or the input is flagged. Each cell shows "
          "non-adaptive / adaptive accuracy.</p>\n<table><tr><th>defense</th><th>clean accuracy</th><th>clean "
          "flagged</th>";
  for (const auto& a : e.defenses.front().attacks) {
    html << "<th>" << html_escape(a.attack) << (a.epsilon > 0 ? " &epsilon;=" + fixed(a.epsilon, 2) : "") << "</th>";
  }
  html << "<th>latency (batch 1)</th><th>images/s (batch 256)</th></tr>\n";
  for (const auto& d : e.defenses) {
    html << "<tr><td>" << html_escape(d.name) << "</td><td>" << percent(d.clean_accuracy) << "</td><td>"
         << percent(d.clean_flagged) << "</td>";
    for (const auto& a : d.attacks)
      html << "<td>" << percent(a.accuracy) << " / " << percent(a.adaptive_accuracy) << "</td>";
    html << "<td>" << fixed(d.latency_ms, 2) << " ms</td><td>" << fixed(d.images_per_second, 0) << "</td></tr>\n";
  }
  html << "</table>\n<ul>";
  for (const auto& d : e.defenses) {
    html << "<li><b>" << html_escape(d.name) << "</b>: <code>" << html_escape(d.description) << "</code></li>";
  }
  html << "</ul>\n";
  for (const auto& [name, bytes] : plots) {
    html << "<img alt=\"" << name << "\" src=\"data:image/png;base64," << base64(bytes) << "\">\n";
  }
  html << "</body></html>\n";
  detail::atomic_write_bytes(file("report.html"), html.str());
}

}  // namespace parry::eval
