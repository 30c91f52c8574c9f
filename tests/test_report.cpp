#include "parry/eval/report.hpp"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "attack_support.hpp"
#include "parry/data/image_source.hpp"
#include "parry/eval/metrics.hpp"

using namespace parry;
using parry::testing::kGrayInput;
using parry::testing::reference_model;

namespace {

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// "88.7% (82.6–92.8)": a rate of metrics.json with its interval, as the report writes it.
std::string with_interval(const nlohmann::json& value, const nlohmann::json& ci) {
  char buffer[96];
  std::snprintf(buffer, sizeof buffer, "%.1f%% (%.1f–%.1f)", 100 * value.get<double>(), 100 * ci["low"].get<double>(),
                100 * ci["high"].get<double>());
  return buffer;
}

// The interval of metrics.json is the Wilson interval of the rate's count.
void expect_wilson(const nlohmann::json& value, const nlohmann::json& ci, int64_t n, const std::string& what) {
  ASSERT_TRUE(ci.is_object()) << what;
  EXPECT_EQ(ci["n"].get<int64_t>(), n) << what;
  const double k = value.get<double>() * static_cast<double>(n);
  EXPECT_NEAR(k, std::round(k), 1e-6) << what << ": not a count of " << n;
  const auto expected = eval::wilson_interval(std::llround(k), n);
  EXPECT_DOUBLE_EQ(ci["low"].get<double>(), expected.low) << what;
  EXPECT_DOUBLE_EQ(ci["high"].get<double>(), expected.high) << what;
  EXPECT_LE(ci["low"].get<double>(), value.get<double>()) << what;
  EXPECT_GE(ci["high"].get<double>(), value.get<double>()) << what;
}

std::shared_ptr<const data::ImageSource> fashion_source(bool train, int64_t n) {
  const auto set = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, train, n);
  const auto& names = data::fashion_mnist_classes();
  return data::from_tensors(set.images, set.labels, std::vector<std::string>(names.begin(), names.end()),
                            "fashion-mnist");
}

eval::Evaluation tiny_evaluation() {
  auto config = config::parse_config(R"({
    "evaluation": {"images": 16, "epsilons": [0.05, 0.1], "calibration_images": 60, "latency_repeats": 2,
                   "black_box": {"images": 3, "square_queries": 60, "hop_skip_jump_queries": 150, "l2_epsilon": 2.0}},
    "attacks": [{"type": "fgsm"}, {"type": "pgd", "steps": 3, "eot_samples": 1}],
    "defenses": [{"name": "undefended", "output": {"policy": "full"}},
                 {"name": "squeeze", "preprocess": [{"type": "bit_depth", "bits": 2}],
                  "detectors": [{"type": "mc_dropout", "samples": 5}, {"type": "kernel_density", "fit_images": 200}]}]
  })",
                                     reference_model(), kGrayInput);
  eval::EvaluationData data;
  data.train = fashion_source(true, 200);
  data.test = fashion_source(false, 100);
  std::vector<std::string> lines;
  auto e = eval::evaluate(config, reference_model(), data, [&](const std::string& l) { lines.push_back(l); });
  EXPECT_GE(lines.size(), 6u);  // progress for each attack and defense
  return e;
}

}  // namespace

// One evaluation (it takes a while): its measurements, then the files written from it.
// A figure with three decimals, as the report prints milliseconds.
std::string fixed3(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f", value);
  return text;
}

TEST(Report, EvaluatesEveryDefenseAndWritesConsistentFilesAndPlots) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const auto e = tiny_evaluation();
  ASSERT_EQ(e.defenses.size(), 2u);
  const auto& undefended = e.defenses[0];
  EXPECT_EQ(undefended.attacks.size(), 4u);  // 2 attacks × 2 budgets
  EXPECT_TRUE(undefended.detectors.empty());
  // Undefended: the adaptive attacker is the same attacker, so the worst case equals it.
  for (const auto& a : undefended.attacks) EXPECT_DOUBLE_EQ(a.accuracy, a.adaptive_accuracy) << a.attack;
  // More budget never helps the undefended model against PGD.
  EXPECT_LE(undefended.attacks[3].accuracy, undefended.attacks[2].accuracy + 1e-9);
  const auto& defended = e.defenses[1];
  ASSERT_EQ(defended.detectors.size(), 2u);
  for (const auto& d : defended.detectors) {
    EXPECT_GE(d.auc, 0.0);
    EXPECT_LE(d.auc, 1.0);
    EXPECT_EQ(d.roc_fpr.front(), 0.0);
    EXPECT_EQ(d.roc_tpr.back(), 1.0);
  }
  for (const auto& a : defended.attacks) EXPECT_LE(a.adaptive_accuracy, a.accuracy + 1e-9) << a.attack;
  EXPECT_GT(defended.latency_ms, 0.0);
  EXPECT_GT(defended.images_per_second, 0.0);
  // The undefended forward pass is timed in the same run: the cost ratios' reference.
  EXPECT_GT(e.forward_latency_ms, 0.0);
  EXPECT_GT(e.forward_images_per_second, 0.0);

  // The report of this evaluation.
  parry::testing::TempDir dir;
  eval::write_report(e, dir.path().string());
  const auto metrics = nlohmann::json::parse(read(dir.file("metrics.json")));
  const auto markdown = read(dir.file("report.md"));
  ASSERT_EQ(metrics["defenses"].size(), 2u);
  // The data set and its class names come from the source, not a constant.
  EXPECT_EQ(metrics["data"], "fashion-mnist");
  EXPECT_EQ(metrics["classes"].size(), 10u);
  EXPECT_NE(markdown.find("## Clean accuracy per class"), std::string::npos);
  EXPECT_NE(markdown.find("| Ankle boot |"), std::string::npos);
  // Every rate carries its 95% Wilson interval and n; the method is stated once.
  EXPECT_EQ(metrics["intervals"]["confidence"], 0.95);
  EXPECT_NE(markdown.find("Wilson score interval"), std::string::npos);
  for (const auto& d : metrics["defenses"]) {
    const auto n = d["images"].get<int64_t>();
    EXPECT_EQ(n, 16);
    expect_wilson(d["clean_accuracy"], d["clean_accuracy_ci"], n, "clean accuracy");
    expect_wilson(d["clean_flagged"], d["clean_flagged_ci"], n, "clean flagged");
    // The Markdown row of each defense shows the numbers of metrics.json.
    std::string row = "| " + d["name"].get<std::string>() + " | " + std::to_string(n) + " | " +
                      with_interval(d["clean_accuracy"], d["clean_accuracy_ci"]) + " | " +
                      with_interval(d["clean_flagged"], d["clean_flagged_ci"]) + " |";
    for (const auto& a : d["attacks"]) {
      expect_wilson(a["accuracy"], a["accuracy_ci"], n, a["attack"].get<std::string>());
      expect_wilson(a["adaptive_accuracy"], a["adaptive_accuracy_ci"], n, a["attack"].get<std::string>());
      row += " " + with_interval(a["accuracy"], a["accuracy_ci"]) + " / " +
             with_interval(a["adaptive_accuracy"], a["adaptive_accuracy_ci"]) + " |";
    }
    EXPECT_NE(markdown.find(row), std::string::npos) << row << "\n" << markdown;
    for (const auto& r : d["detectors"]) {
      expect_wilson(r["detection_rate"], r["detection_rate_ci"], n, r["name"].get<std::string>());
      expect_wilson(r["clean_fpr"], r["clean_fpr_ci"], n, r["name"].get<std::string>());
      const std::string cell = with_interval(r["detection_rate"], r["detection_rate_ci"]);
      EXPECT_NE(markdown.find(cell.substr(0, cell.size() - 1) + ", n = " + std::to_string(n) + ")"), std::string::npos)
          << cell;
    }
    // Per class: n is each class's own count, and the counts add up to the images.
    int64_t class_total = 0;
    for (size_t c = 0; c < d["class_accuracy"].size(); ++c) {
      if (d["class_accuracy"][c].is_null()) continue;
      const auto& ci = d["class_accuracy_ci"][c];
      class_total += ci["n"].get<int64_t>();
      expect_wilson(d["class_accuracy"][c], ci, ci["n"].get<int64_t>(), "class " + std::to_string(c));
      const std::string cell = with_interval(d["class_accuracy"][c], ci);
      EXPECT_NE(
          markdown.find(cell.substr(0, cell.size() - 1) + ", n = " + std::to_string(ci["n"].get<int64_t>()) + ")"),
          std::string::npos)
          << cell;
    }
    EXPECT_EQ(class_total, n);
  }
  // The cost section: every defense's latency and throughput against the forward pass, as in metrics.json.
  EXPECT_DOUBLE_EQ(metrics["forward_latency_ms"].get<double>(), e.forward_latency_ms);
  EXPECT_NE(markdown.find("## Cost against the undefended forward pass"), std::string::npos);
  EXPECT_NE(markdown.find("| undefended forward | " + fixed3(e.forward_latency_ms) + " ms | 1.00× |"),
            std::string::npos)
      << markdown;
  for (size_t d = 0; d < e.defenses.size(); ++d) {
    const auto& defense = e.defenses[d];
    const auto& j = metrics["defenses"][d];
    EXPECT_DOUBLE_EQ(j["latency_vs_forward"].get<double>(), defense.latency_ms / e.forward_latency_ms);
    EXPECT_DOUBLE_EQ(j["cost_vs_forward_at_throughput_batch"].get<double>(),
                     e.forward_images_per_second / defense.images_per_second);
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.2f×", defense.latency_ms / e.forward_latency_ms);
    EXPECT_NE(markdown.find("| " + defense.name + " | " + fixed3(defense.latency_ms) + " ms | " + ratio + " |"),
              std::string::npos)
        << defense.name << "\n"
        << markdown;
  }
  // Black-box rows: the settings once, then per defense Square at each ε and HopSkipJump, with intervals.
  EXPECT_EQ(metrics["black_box"]["images"], 3);
  EXPECT_EQ(metrics["black_box"]["l2_epsilon"], 2.0);
  EXPECT_NE(markdown.find("## Black-box attacks through the full Guard"), std::string::npos);
  for (const auto& d : metrics["defenses"]) {
    ASSERT_EQ(d["black_box"].size(), 3u) << d["name"];
    EXPECT_NE(markdown.find("### " + d["name"].get<std::string>() + "\n"), std::string::npos);
    for (const auto& b : d["black_box"]) {
      if (!b["applicable"].get<bool>()) {
        // The squeeze defense answers with labels only.
        EXPECT_EQ(d["name"], "squeeze");
        EXPECT_EQ(b["attack"], "Square");
        EXPECT_EQ(b["not_applicable"], "label-only answers");
        continue;
      }
      EXPECT_EQ(b["images"], 3);
      expect_wilson(b["success_rate"], b["success_rate_ci"], 3, b["attack"].get<std::string>());
      const std::string cell = with_interval(b["success_rate"], b["success_rate_ci"]);
      EXPECT_NE(markdown.find(cell.substr(0, cell.size() - 1) + ", n = 3)"), std::string::npos) << cell;
      EXPECT_LE(b["median_queries"].get<double>(), b["query_budget"].get<double>());
      EXPECT_EQ(b["stopped"], 0);  // no gates
      if (b["attack"] == "HopSkipJump") {
        EXPECT_EQ(b["epsilon"], 2.0);
      }
    }
  }
  EXPECT_TRUE(metrics["defenses"][0]["black_box"][0]["applicable"].get<bool>());  // full scores: Square runs
  EXPECT_FALSE(metrics["defenses"][1]["black_box"][0]["applicable"].get<bool>());

  const std::vector<std::tuple<std::string, int, int>> plots = {
      {"accuracy_vs_epsilon.png", 860, 520}, {"roc.png", 860, 560}, {"examples.png", 0, 0}, {"latency.png", 860, 138}};
  for (const auto& [name, width, height] : plots) {
    const cv::Mat img = cv::imread(dir.file(name), cv::IMREAD_COLOR);
    ASSERT_FALSE(img.empty()) << name;
    if (width) {
      EXPECT_EQ(img.cols, width) << name;
      EXPECT_EQ(img.rows, height) << name;
    }
    cv::Mat gray;
    cv::cvtColor(img, gray, cv::COLOR_BGR2GRAY);
    cv::Scalar mean, stddev;
    cv::meanStdDev(gray, mean, stddev);
    EXPECT_GT(stddev[0], 5.0) << name << " looks blank";
  }
  const auto html = read(dir.file("report.html"));
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("<h2>Black-box attacks through the full Guard</h2>"), std::string::npos);
  EXPECT_NE(html.find("<h3>squeeze</h3>"), std::string::npos);
  EXPECT_NE(html.find("<h2>Cost against the undefended forward pass</h2>"), std::string::npos);
  EXPECT_NE(html.find("Wilson score interval"), std::string::npos);
  size_t images = 0;
  for (size_t at = html.find("data:image/png;base64,"); at != std::string::npos;
       at = html.find("data:image/png;base64,", at + 1)) {
    ++images;
  }
  EXPECT_EQ(images, 4u);  // self-contained: every plot inline
  EXPECT_THROW(eval::write_report(eval::Evaluation{}, dir.path().string()), OptionError);
}

TEST(Report, RejectsAConfigLargerThanTheData) {
  auto config = config::parse_config(R"({"evaluation": {"images": 100, "calibration_images": 50},
                                         "defenses": [{"name": "a"}]})",
                                     reference_model(), kGrayInput);
  eval::EvaluationData data;
  data.train = fashion_source(true, 10);
  data.test = fashion_source(false, 120);
  EXPECT_THROW(eval::evaluate(config, reference_model(), data), OptionError);
}
