// eval::write_report and summary_table: HTML, Markdown, JSON and the plots.
#include "parry/eval/report.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "eval/plots.hpp"
#include "parry/detail/files.hpp"
#include "parry/eval/metrics.hpp"

namespace parry::eval {

using namespace detail;

namespace {

// Every rate of an Evaluation is k/n for a stated n; k is recovered exactly.
Interval interval_of(double rate, int64_t n) {
  return wilson_interval(n > 0 ? std::llround(rate * static_cast<double>(n)) : 0, n);
}

// "82.6–92.8": an interval in percent points.
std::string interval_text(double rate, int64_t n) {
  const Interval i = interval_of(rate, n);
  return fixed(100.0 * i.low, 1) + "–" + fixed(100.0 * i.high, 1);
}

// "88.7% (82.6–92.8)", for cells whose n the row or column states.
std::string rate_cell(double rate, int64_t n) {
  return percent(rate) + " (" + interval_text(rate, n) + ")";
}

// "88.7% (82.6–92.8, n = 150)".
std::string rate_cell_n(double rate, int64_t n) {
  return percent(rate) + " (" + interval_text(rate, n) + ", n = " + std::to_string(n) + ")";
}

// The explanation of the black-box rows, stated once.
std::string black_box_sentence(const Evaluation& e) {
  const auto& b = e.black_box;
  return "Square (score-based, L∞ at each ε, at most " + std::to_string(b.square_queries) +
         " queries per image) and HopSkipJump (decision-based, labels only, L2, at most " +
         std::to_string(b.hop_skip_jump_queries) +
         " queries per image) attack each defense through Guard::predict of its full Guard (gates, preprocessing, "
         "detectors, output policy) on the first " +
         std::to_string(b.images) +
         " images, one run per image. Each run meets fresh gates, as a new attacker meets a deployed service: "
         "throttle buckets full, query-monitor store empty, one client id, and a throttle clock that stands still "
         "(the attacker never waits). A run succeeds when its final image is labelled wrongly and not flagged by "
         "the Guard, and for HopSkipJump, a minimum-distortion attack, lies within L2 " +
         fixed(b.l2_epsilon, 2) +
         " of the clean image. Stopped: a gate refused a query and the run ended there; flagged: a gate or detector "
         "flagged at least one of its answers. Square and HopSkipJump are budget-limited attackers that do not adapt "
         "to "
         "the gates; " +
         std::string(b.adaptive_monitor
                         ? "against a defense with a query monitor, OARS-Square and OARS-HopSkipJump (Feng et al., CCS "
                           "2023) adapt to it: they learn from its detections how far apart their queries must be, "
                           "discard detected proposals and count every query sent, refused ones included; for them, "
                           "flagged counts runs with at least one detected query (flagged or refused)."
                         : "adaptive attackers of query monitors were not run (black_box.adaptive_monitor false).");
}

// "3/20 (rate_limited)".
std::string runs_cell(int64_t count, int64_t n, const std::vector<std::string>& reasons = {}) {
  std::string out = std::to_string(count) + "/" + std::to_string(n);
  if (count > 0 && !reasons.empty()) {
    out += " (";
    for (size_t i = 0; i < reasons.size(); ++i) out += (i ? ", " : "") + reasons[i];
    out += ")";
  }
  return out;
}

std::string budget_cell(const BlackBoxOutcome& o) {
  return (o.norm == "l2" ? "L2 ≤ " + fixed(o.epsilon, 2) : "L∞ ε=" + fixed(o.epsilon, 2)) + ", " +
         std::to_string(o.query_budget) + " queries";
}

std::string median_l2_cell(const BlackBoxOutcome& o) {
  if (o.norm != "l2" || !o.applicable) return "–";
  return std::isfinite(o.median_l2) ? fixed(o.median_l2, 2) : "∞ (over half found none)";
}

// The cells of one black-box row: attack, budget, success, median queries, median L2, stopped, flagged.
std::vector<std::string> black_box_cells(const BlackBoxOutcome& o) {
  if (!o.applicable) return {o.attack, budget_cell(o), "not applicable: " + o.not_applicable, "–", "–", "–", "–"};
  return {o.attack,
          budget_cell(o),
          rate_cell_n(o.success_rate, o.images),
          fixed(o.median_queries, 0),
          median_l2_cell(o),
          runs_cell(o.stopped, o.images, o.stop_reasons),
          runs_cell(o.flagged, o.images)};
}

const char* const kBlackBoxHeader[] = {
    "attack", "budget", "success", "median queries", "median L2", "stopped by the gates", "flagged"};

}  // namespace

namespace {

std::string certified_sentence(const Evaluation& e) {
  if (e.certified.empty()) return "";
  const auto& c = e.certified.front();
  return "Randomized smoothing (Cohen et al. 2019) of the bare model: CERTIFY with n0 = " + std::to_string(c.n0) +
         ", n = " + std::to_string(c.n) + ", alpha = " + parry::detail::format_number(c.alpha) + " on " +
         std::to_string(c.images) +
         " images. Certified: the share of images whose certified label is right with an L2 radius (pixel units) of "
         "at least r (an abstention counts as wrong); it is a lower bound on the smoothed classifier's robust "
         "accuracy at r, valid with probability 1 - alpha per image, for L2 perturbations only. Attacked: the share "
         "of the first " +
         std::to_string(c.attack_images) +
         " images that neither PGD-L2 nor APGD-L2 at budget r through the smoothed classifier (SmoothAdv's loss "
         "with EOT over the noise) brought PREDICT to a wrong label (an abstention proves nothing and does not "
         "count as broken); it is an upper bound. Each certified image costs n0 + n forward passes of the base "
         "model; the last columns give the images certified per second and CERTIFY's time over that of its "
         "forward passes alone.";
}

}  // namespace

std::string certified_tables(const Evaluation& e) {
  if (e.certified.empty()) return "";
  std::ostringstream out;
  out << certified_sentence(e) << "\n\n| sigma | abstained |";
  const auto& radii = e.certified.front().radii;
  for (const double r : radii) out << " r = " << parry::detail::format_number(r) << " (certified / attacked) |";
  out << " images/s | CERTIFY time / forward passes |\n|---:|---:|";
  for (size_t i = 0; i < radii.size(); ++i) out << "---:|";
  out << "---:|---:|\n";
  for (const auto& c : e.certified) {
    out << "| " << parry::detail::format_number(c.sigma) << " | " << rate_cell_n(c.abstention_rate, c.images) << " |";
    for (size_t i = 0; i < c.radii.size(); ++i) {
      out << " " << rate_cell(c.certified_accuracy[i], c.images) << " / "
          << (c.empirical_accuracy.empty() ? std::string("-") : rate_cell(c.empirical_accuracy[i], c.attack_images))
          << " |";
    }
    out << " " << fixed(c.images_per_second(), 2) << " | " << fixed(c.certify_cost_ratio, 2) << "x |\n";
  }
  return out.str();
}

std::string black_box_tables(const Evaluation& e) {
  if (e.black_box.images == 0) return "";
  std::ostringstream out;
  out << black_box_sentence(e) << "\n";
  for (const auto& d : e.defenses) {
    out << "\n### " << d.name << "\n\n|";
    for (const char* h : kBlackBoxHeader) out << " " << h << " |";
    out << "\n|---|---|---:|---:|---:|---:|---:|\n";
    for (const auto& o : d.black_box) {
      out << "|";
      for (const auto& cell : black_box_cells(o)) out << " " << cell << " |";
      out << "\n";
    }
  }
  return out.str();
}

std::string summary_table(const Evaluation& e) {
  std::ostringstream out;
  out << "| defense | n | clean accuracy | clean flagged |";
  const auto& first = e.defenses.front();
  for (const auto& a : first.attacks) {
    out << " " << a.attack << (a.epsilon > 0 ? " ε=" + fixed(a.epsilon, 2) : "") << " (non-adaptive / adaptive) |";
  }
  out << " latency (batch 1) | images/s (batch " << e.throughput_batch << ") |\n|---|---:|---:|---:|";
  for (size_t i = 0; i < first.attacks.size(); ++i) out << "---:|";
  out << "---:|---:|\n";
  for (const auto& d : e.defenses) {
    out << "| " << d.name << " | " << d.images << " | " << rate_cell(d.clean_accuracy, d.images) << " | "
        << rate_cell(d.clean_flagged, d.images) << " |";
    for (const auto& a : d.attacks) {
      out << " " << rate_cell(a.accuracy, a.images) << " / " << rate_cell(a.adaptive_accuracy, a.images) << " |";
    }
    out << " " << fixed(d.latency_ms, 2) << " ms | " << fixed(d.images_per_second, 0) << " |\n";
  }
  return out.str();
}

namespace {

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

// A defense's clean accuracy on class c, or "–" when no evaluated image has it.
std::string class_cell(const DefenseOutcome& d, size_t c) {
  if (c >= d.class_accuracy.size() || std::isnan(d.class_accuracy[c])) return "–";
  return rate_cell_n(d.class_accuracy[c], c < d.class_images.size() ? d.class_images[c] : 0);
}

// Markdown table: one row per class, one column per defense.
// The cost section (header row first): each defense's Guard::predict against
// the undefended forward pass timed in the same run, at batch 1 (latency) and
// at the throughput batch (the forward's images/s over the Guard's: how many
// times the forward's cost a defended image costs).
std::vector<std::vector<std::string>> cost_rows(const Evaluation& e) {
  const std::string batch = std::to_string(e.throughput_batch);
  std::vector<std::vector<std::string>> rows{{"defense", "latency (batch 1)", "× forward (batch 1)",
                                              "images/s (batch " + batch + ")", "× forward (batch " + batch + ")"}};
  rows.push_back({"undefended forward", fixed(e.forward_latency_ms, 3) + " ms", "1.00×",
                  fixed(e.forward_images_per_second, 0), "1.00×"});
  for (const auto& d : e.defenses) {
    rows.push_back({d.name, fixed(d.latency_ms, 3) + " ms", fixed(d.latency_ms / e.forward_latency_ms, 2) + "×",
                    fixed(d.images_per_second, 0), fixed(e.forward_images_per_second / d.images_per_second, 2) + "×"});
  }
  return rows;
}

std::string class_table(const Evaluation& e) {
  std::ostringstream out;
  out << "| class |";
  for (const auto& d : e.defenses) out << " " << d.name << " |";
  out << "\n|---|";
  for (size_t i = 0; i < e.defenses.size(); ++i) out << "---:|";
  out << "\n";
  for (size_t c = 0; c < e.classes.size(); ++c) {
    out << "| " << e.classes[c] << " |";
    for (const auto& d : e.defenses) out << " " << class_cell(d, c) << " |";
    out << "\n";
  }
  return out.str();
}

// AutoAttack's robust accuracy after each component, RobustBench style: one
// table per AutoAttack entry of the config, one row per defense and ε.
// Rows are cells; the first row is the header.
std::vector<std::vector<std::vector<std::string>>> auto_attack_tables(const Evaluation& e) {
  std::vector<std::string> labels;
  for (const auto& d : e.defenses) {
    for (const auto& a : d.attacks) {
      if (a.is_auto_attack() && std::find(labels.begin(), labels.end(), a.attack) == labels.end()) {
        labels.push_back(a.attack);
      }
    }
  }
  std::vector<std::vector<std::vector<std::string>>> tables;
  for (const auto& label : labels) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& d : e.defenses) {
      for (const auto& a : d.attacks) {
        if (a.attack != label || !a.is_auto_attack()) continue;
        if (rows.empty()) {
          std::vector<std::string> header{"defense", "ε", "n", "clean"};
          for (const auto& stage : a.stages)
            header.push_back(std::string("after ") + attack::to_string(stage.component));
          header.insert(header.end(), {"forward passes", "sanity checks"});
          rows.push_back(header);
        }
        const auto n = a.images;
        std::vector<std::string> row{d.name, fixed(a.epsilon, 3), std::to_string(n),
                                     rate_cell(static_cast<double>(a.clean_correct) / std::max<int64_t>(n, 1), n)};
        for (const auto& stage : a.stages) {
          row.push_back(stage.skipped
                            ? "skipped: " + stage.skip_reason
                            : rate_cell(static_cast<double>(stage.robust_after) / std::max<int64_t>(n, 1), n));
        }
        row.push_back(std::to_string(a.forward_passes));
        row.push_back(a.warnings.empty() ? "passed" : std::to_string(a.warnings.size()) + " warning(s)");
        rows.push_back(row);
      }
    }
    tables.push_back(rows);
  }
  return tables;
}

// Every AutoAttack warning, as "defense, attack ε: sentence".
std::vector<std::string> auto_attack_warnings(const Evaluation& e) {
  std::vector<std::string> out;
  for (const auto& d : e.defenses) {
    for (const auto& a : d.attacks) {
      for (const auto& w : a.warnings) out.push_back(d.name + ", " + a.attack + " ε=" + fixed(a.epsilon, 3) + ": " + w);
    }
  }
  return out;
}

const char* kAutoAttackNote =
    "AutoAttack (Croce & Hein 2020) attacks each defense's classifier path (BPDA through preprocessing; EOT over 20 "
    "draws in the rand version); its Square queries the Guard itself. Robust accuracy after each component is judged "
    "as the authors' code judges it, by the classifier's label (a detector's flag does not count there); the "
    "adaptive column of the summary counts flags. Forward passes are the model evaluations the ensemble spent on all "
    "images.";

const char* kCostNote =
    "Each defense's Guard::predict (gates included, fresh ones at batch 1) against the undefended model's forward "
    "pass, timed in the same run the same way: mean of latency_repeats calls at batch 1, and three calls at the "
    "throughput batch. The ratios are this machine's at this moment; rerun parry eval on the serving machine for "
    "its own figures.";

// {"low", "high", "n"}: the 95% Wilson interval of a rate and the images it rests on.
nlohmann::json interval_json(double rate, int64_t n) {
  const Interval i = interval_of(rate, n);
  return {{"low", i.low}, {"high", i.high}, {"n", n}};
}

nlohmann::json to_json(const Evaluation& e) {
  nlohmann::json root;
  root["intervals"] = {{"method", "Wilson score interval"},
                       {"confidence", 0.95},
                       {"fields", "every rate X has X_ci = {low, high, n}: its interval and the images it rests on"}};
  root["model"] = e.model_description;
  root["images"] = e.images;
  root["data"] = e.data_name;
  root["data_description"] = e.data_description;
  root["classes"] = e.classes;
  root["throughput_batch"] = e.throughput_batch;
  root["forward_latency_ms"] = e.forward_latency_ms;
  root["forward_images_per_second"] = e.forward_images_per_second;
  root["seconds"] = e.seconds;
  root["example_epsilon"] = e.example_epsilon;
  root["certified"] = nlohmann::json::array();
  for (const auto& c : e.certified) {
    nlohmann::json j = {{"sigma", c.sigma},           {"images", c.images},
                        {"n0", c.n0},                 {"n", c.n},
                        {"alpha", c.alpha},           {"radii", c.radii},
                        {"certified_accuracy", c.certified_accuracy},
                        {"empirical_accuracy", c.empirical_accuracy},
                        {"attack_images", c.attack_images},
                        {"abstention_rate", c.abstention_rate},
                        {"abstention_rate_ci", interval_json(c.abstention_rate, c.images)},
                        {"correct_radius", c.correct_radius},
                        {"certify_seconds", c.certify_seconds},
                        {"images_per_second", c.images_per_second()},
                        {"certify_cost_ratio", c.certify_cost_ratio}};
    j["certified_accuracy_ci"] = nlohmann::json::array();
    for (const double a : c.certified_accuracy) j["certified_accuracy_ci"].push_back(interval_json(a, c.images));
    j["empirical_accuracy_ci"] = nlohmann::json::array();
    for (const double a : c.empirical_accuracy) j["empirical_accuracy_ci"].push_back(interval_json(a, c.attack_images));
    root["certified"].push_back(j);
  }
  root["black_box"] = {{"images", e.black_box.images},
                       {"square_queries", e.black_box.square_queries},
                       {"hop_skip_jump_queries", e.black_box.hop_skip_jump_queries},
                       {"l2_epsilon", e.black_box.l2_epsilon},
                       {"adaptive_monitor", e.black_box.adaptive_monitor},
                       {"gates", "fresh per run: throttle buckets full, query-monitor store empty, clock held still"},
                       {"client_ids", {"eval-square", "eval-hop-skip-jump"}}};
  for (const auto& d : e.defenses) {
    nlohmann::json j;
    j["name"] = d.name;
    j["description"] = d.description;
    j["clean_accuracy"] = d.clean_accuracy;
    j["clean_flagged"] = d.clean_flagged;
    j["images"] = d.images;
    j["clean_accuracy_ci"] = interval_json(d.clean_accuracy, d.images);
    j["clean_flagged_ci"] = interval_json(d.clean_flagged, d.images);
    j["latency_ms"] = d.latency_ms;
    j["images_per_second"] = d.images_per_second;
    j["latency_vs_forward"] = d.latency_ms / e.forward_latency_ms;
    j["cost_vs_forward_at_throughput_batch"] = e.forward_images_per_second / d.images_per_second;
    j["class_accuracy"] = nlohmann::json::array();
    j["class_accuracy_ci"] = nlohmann::json::array();
    for (size_t c = 0; c < d.class_accuracy.size(); ++c) {
      const double a = d.class_accuracy[c];
      if (std::isnan(a)) {
        j["class_accuracy"].push_back(nullptr);
        j["class_accuracy_ci"].push_back(nullptr);
      } else {
        j["class_accuracy"].push_back(a);
        j["class_accuracy_ci"].push_back(interval_json(a, c < d.class_images.size() ? d.class_images[c] : 0));
      }
    }
    j["attacks"] = nlohmann::json::array();
    for (const auto& a : d.attacks) {
      j["attacks"].push_back({{"attack", a.attack},
                              {"epsilon", a.epsilon},
                              {"accuracy", a.accuracy},
                              {"accuracy_ci", interval_json(a.accuracy, a.images)},
                              {"adaptive_accuracy", a.adaptive_accuracy},
                              {"adaptive_accuracy_ci", interval_json(a.adaptive_accuracy, a.images)},
                              {"adaptive_mean_l2", a.mean_l2},
                              {"images", a.images},
                              {"adaptive_forward_passes", a.forward_passes}});
      if (!a.is_auto_attack()) continue;
      const auto n = std::max<int64_t>(a.images, 1);
      nlohmann::json stages = nlohmann::json::array();
      for (const auto& stage : a.stages) {
        const double robust = static_cast<double>(stage.robust_after) / static_cast<double>(n);
        stages.push_back({{"component", attack::to_string(stage.component)},
                          {"attacked", stage.attacked},
                          {"broken", stage.broken},
                          {"robust_accuracy", robust},
                          {"robust_accuracy_ci", interval_json(robust, a.images)},
                          {"forward_passes", stage.forward_passes},
                          {"seconds", stage.seconds},
                          {"skipped", stage.skipped},
                          {"skip_reason", stage.skip_reason}});
      }
      auto& entry = j["attacks"].back();
      entry["auto_attack"] = {{"stages", stages}, {"warnings", a.warnings}};
      // The fields of a RobustBench model entry. Parry's Guard labels an
      // input with one forward pass of the model (detectors add their own
      // passes but do not change the label), hence number_forward_passes = 1.
      const double clean = static_cast<double>(a.clean_correct) / static_cast<double>(n);
      const double robust =
          a.stages.empty() ? clean : static_cast<double>(a.stages.back().robust_after) / static_cast<double>(n);
      j["robustbench"].push_back({{"attack", a.attack},
                                  {"clean_acc", 100.0 * clean},
                                  {"autoattack_acc", 100.0 * robust},
                                  {"autoattack_acc_ci", interval_json(robust, a.images)},
                                  {"eps", a.epsilon},
                                  {"threat_model", "Linf"},
                                  {"number_forward_passes", 1},
                                  {"unreliable", !a.warnings.empty()}});
    }
    j["detectors"] = nlohmann::json::array();
    for (const auto& r : d.detectors) {
      j["detectors"].push_back({{"name", r.name},
                                {"auc", r.auc},
                                {"detection_rate", r.detection_rate},
                                {"detection_rate_ci", interval_json(r.detection_rate, r.adversarial_images)},
                                {"clean_fpr", r.clean_fpr},
                                {"clean_fpr_ci", interval_json(r.clean_fpr, r.clean_images)},
                                {"roc_fpr", r.roc_fpr},
                                {"roc_tpr", r.roc_tpr}});
    }
    j["black_box"] = nlohmann::json::array();
    for (const auto& o : d.black_box) {
      nlohmann::json b = {{"attack", o.attack},
                          {"norm", o.norm},
                          {"epsilon", o.epsilon},
                          {"query_budget", o.query_budget},
                          {"applicable", o.applicable}};
      if (!o.applicable) {
        b["not_applicable"] = o.not_applicable;
      } else {
        b["images"] = o.images;
        b["success_rate"] = o.success_rate;
        b["success_rate_ci"] = interval_json(o.success_rate, o.images);
        b["median_queries"] = o.median_queries;
        if (o.norm == "l2") {
          // JSON has no infinity: null when over half of the runs found no adversarial image.
          b["median_l2"] = std::isfinite(o.median_l2) ? nlohmann::json(o.median_l2) : nlohmann::json(nullptr);
        }
        b["stopped"] = o.stopped;
        b["stop_reasons"] = o.stop_reasons;
        b["flagged"] = o.flagged;
      }
      j["black_box"].push_back(b);
    }
    root["defenses"].push_back(j);
  }
  return root;
}

// The interval method, stated once, with the first defense's clean accuracy as the example.
std::string interval_sentence(const Evaluation& e) {
  const auto& d = e.defenses.front();
  const Interval i = interval_of(d.clean_accuracy, d.images);
  return "Every rate is followed by its 95% confidence interval (the Wilson score interval for a binomial "
         "proportion) and rests on the n images stated beside it: " +
         d.name + "'s clean accuracy of " + percent(d.clean_accuracy) + " on " + std::to_string(d.images) +
         " images lies between " + percent(i.low) + " and " + percent(i.high) + " (about ±" +
         fixed(50.0 * (i.high - i.low), 1) +
         " points); a difference between two figures smaller than their intervals needs more images to be trusted.";
}

}  // namespace

void write_report(const Evaluation& e, const std::string& directory) {
  if (e.defenses.empty()) throw OptionError("write_report: the evaluation has no defenses");
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) throw IoError("cannot write the report", "create_directories('" + directory + "'): " + error.message());
  const auto file = [&](const std::string& name) { return (std::filesystem::path(directory) / name).string(); };
  std::vector<std::pair<std::string, std::string>> plots = {
      {"accuracy_vs_epsilon.png", png_bytes(plot_accuracy(e))},
      {"roc.png", png_bytes(plot_roc(e))},
      {"examples.png", png_bytes(plot_examples(e))},
      {"latency.png", png_bytes(plot_latency(e))}};
  if (!e.certified.empty()) plots.emplace_back("certified_accuracy.png", png_bytes(plot_certified(e)));
  for (const auto& [name, bytes] : plots) parry::detail::atomic_write_bytes(file(name), bytes);
  parry::detail::atomic_write_bytes(file("metrics.json"), to_json(e).dump(2) + "\n");

  std::ostringstream md;
  md << "# Parry evaluation report\n\n"
     << e.images << " test images of " << e.data_description << "; evaluation took " << fixed(e.seconds, 0)
     << " s.\nModel: `" << e.model_description << "`.\n"
     << "Accuracy counts an input as defended when the Guard's label is right or the input is flagged.\n"
     << "Non-adaptive: the attack is computed on the bare model. Adaptive: it attacks the Guard itself "
        "(BPDA through preprocessing, EOT over dropout, detector-aware and targeted when detectors are present).\n\n"
     << interval_sentence(e) << "\n\n"
     << summary_table(e) << "\n## Detectors (clean vs PGD ε=" << fixed(e.example_epsilon, 2) << ")\n\n"
     << "| defense | detector | ROC-AUC | detected at calibrated threshold | clean flagged "
        "|\n|---|---|---:|---:|---:|\n";
  for (const auto& d : e.defenses) {
    for (const auto& r : d.detectors) {
      md << "| " << d.name << " | " << r.name << " | " << fixed(r.auc, 3) << " | "
         << rate_cell_n(r.detection_rate, r.adversarial_images) << " | " << rate_cell_n(r.clean_fpr, r.clean_images)
         << " |\n";
    }
  }
  const auto tables = auto_attack_tables(e);
  if (!tables.empty()) {
    md << "\n## AutoAttack: robust accuracy after each component\n\n" << kAutoAttackNote << "\n";
    for (const auto& rows : tables) {
      md << "\n";
      for (size_t r = 0; r < rows.size(); ++r) {
        md << "|";
        for (const auto& cell : rows[r]) md << " " << cell << " |";
        md << "\n";
        if (r == 0) {
          md << "|---|";
          for (size_t c = 1; c < rows[r].size(); ++c) md << "---:|";
          md << "\n";
        }
      }
    }
    const auto warnings = auto_attack_warnings(e);
    if (!warnings.empty()) {
      md << "\nSanity-check warnings (the figure they concern is unreliable):\n\n";
      for (const auto& w : warnings) md << "- " << w << "\n";
    }
  }
  md << "\n## Cost against the undefended forward pass\n\n" << kCostNote << "\n\n";
  const auto costs = cost_rows(e);
  for (size_t r = 0; r < costs.size(); ++r) {
    md << "|";
    for (const auto& cell : costs[r]) md << " " << cell << " |";
    md << (r == 0 ? "\n|---|---:|---:|---:|---:|\n" : "\n");
  }
  if (!e.certified.empty()) {
    md << "\n## Certified robustness (randomized smoothing)\n\n" << certified_tables(e)
       << "\n![certified accuracy](certified_accuracy.png)\n";
  }
  if (e.black_box.images > 0) md << "\n## Black-box attacks through the full Guard\n\n" << black_box_tables(e);
  md << "\n## Clean accuracy per class\n\n" << class_table(e);
  md << "\n## Defenses\n\n";
  for (const auto& d : e.defenses) md << "- **" << d.name << "**: `" << d.description << "`\n";
  md << "\n![accuracy](accuracy_vs_epsilon.png)\n\n![roc](roc.png)\n\n![examples](examples.png)\n\n"
        "![latency](latency.png)\n";
  parry::detail::atomic_write_bytes(file("report.md"), md.str());

  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Parry evaluation report</title>"
          "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}"
          "code{font-size:90%}</style></head><body>\n<h1>Parry evaluation report</h1>\n<p>"
       << e.images << " test images of " << html_escape(e.data_description) << "; model <code>"
       << html_escape(e.model_description) << "</code>; evaluation took " << fixed(e.seconds, 0)
       << " s. An input counts as defended when the Guard's label is right or the input is flagged. Each cell shows "
          "non-adaptive / adaptive accuracy.</p>\n<p>"
       << html_escape(interval_sentence(e))
       << "</p>\n<table><tr><th>defense</th><th>n</th><th>clean accuracy</th><th>clean flagged</th>";
  for (const auto& a : e.defenses.front().attacks) {
    html << "<th>" << html_escape(a.attack) << (a.epsilon > 0 ? " &epsilon;=" + fixed(a.epsilon, 2) : "") << "</th>";
  }
  html << "<th>latency (batch 1)</th><th>images/s (batch " << e.throughput_batch << ")</th></tr>\n";
  for (const auto& d : e.defenses) {
    html << "<tr><td>" << html_escape(d.name) << "</td><td>" << d.images << "</td><td>"
         << rate_cell(d.clean_accuracy, d.images) << "</td><td>" << rate_cell(d.clean_flagged, d.images) << "</td>";
    for (const auto& a : d.attacks) {
      html << "<td>" << rate_cell(a.accuracy, a.images) << " / " << rate_cell(a.adaptive_accuracy, a.images) << "</td>";
    }
    html << "<td>" << fixed(d.latency_ms, 2) << " ms</td><td>" << fixed(d.images_per_second, 0) << "</td></tr>\n";
  }
  html << "</table>\n";
  if (!tables.empty()) {
    html << "<h2>AutoAttack: robust accuracy after each component</h2>\n<p>" << html_escape(kAutoAttackNote)
         << "</p>\n";
    for (const auto& rows : tables) {
      html << "<table>";
      for (size_t r = 0; r < rows.size(); ++r) {
        html << "<tr>";
        for (const auto& cell : rows[r])
          html << (r == 0 ? "<th>" : "<td>") << html_escape(cell) << (r == 0 ? "</th>" : "</td>");
        html << "</tr>\n";
      }
      html << "</table>\n";
    }
    const auto warnings = auto_attack_warnings(e);
    if (!warnings.empty()) {
      html << "<p>Sanity-check warnings (the figure they concern is unreliable):</p>\n<ul>";
      for (const auto& w : warnings) html << "<li>" << html_escape(w) << "</li>";
      html << "</ul>\n";
    }
  }
  html << "<h2>Cost against the undefended forward pass</h2>\n<p>" << html_escape(kCostNote) << "</p>\n<table>";
  for (size_t r = 0; r < costs.size(); ++r) {
    html << "<tr>";
    for (const auto& cell : costs[r])
      html << (r == 0 ? "<th>" : "<td>") << html_escape(cell) << (r == 0 ? "</th>" : "</td>");
    html << "</tr>\n";
  }
  html << "</table>\n";
  if (!e.certified.empty()) {
    html << "<h2>Certified robustness (randomized smoothing)</h2>\n<p>" << html_escape(certified_sentence(e))
         << "</p>\n<table><tr><th>sigma</th><th>abstained</th>";
    for (const double radius : e.certified.front().radii) {
      html << "<th>r = " << parry::detail::format_number(radius) << " (certified / attacked)</th>";
    }
    html << "<th>images/s</th><th>CERTIFY time / forward passes</th></tr>\n";
    for (const auto& c : e.certified) {
      html << "<tr><td>" << parry::detail::format_number(c.sigma) << "</td><td>"
           << rate_cell_n(c.abstention_rate, c.images) << "</td>";
      for (size_t i = 0; i < c.radii.size(); ++i) {
        html << "<td>" << rate_cell(c.certified_accuracy[i], c.images) << " / "
             << (c.empirical_accuracy.empty() ? std::string("-") : rate_cell(c.empirical_accuracy[i], c.attack_images))
             << "</td>";
      }
      html << "<td>" << fixed(c.images_per_second(), 2) << "</td><td>" << fixed(c.certify_cost_ratio, 2)
           << "x</td></tr>\n";
    }
    html << "</table>\n";
  }
  if (e.black_box.images > 0) {
    html << "<h2>Black-box attacks through the full Guard</h2>\n<p>" << html_escape(black_box_sentence(e)) << "</p>\n";
    for (const auto& d : e.defenses) {
      html << "<h3>" << html_escape(d.name) << "</h3>\n<table><tr>";
      for (const char* h : kBlackBoxHeader) html << "<th>" << h << "</th>";
      html << "</tr>\n";
      for (const auto& o : d.black_box) {
        html << "<tr>";
        for (const auto& cell : black_box_cells(o)) html << "<td>" << html_escape(cell) << "</td>";
        html << "</tr>\n";
      }
      html << "</table>\n";
    }
  }
  html << "<h2>Clean accuracy per class</h2>\n<table><tr><th>class</th>";
  for (const auto& d : e.defenses) html << "<th>" << html_escape(d.name) << "</th>";
  html << "</tr>\n";
  for (size_t c = 0; c < e.classes.size(); ++c) {
    html << "<tr><td>" << html_escape(e.classes[c]) << "</td>";
    for (const auto& d : e.defenses) html << "<td>" << class_cell(d, c) << "</td>";
    html << "</tr>\n";
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
  parry::detail::atomic_write_bytes(file("report.html"), html.str());
}

}  // namespace parry::eval
