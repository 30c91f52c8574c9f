#include "parry/eval/report.hpp"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fstream>
#include <sstream>

#include "attack_support.hpp"
#include "parry/data/image_source.hpp"

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

std::string percent(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f%%", 100 * v);
  return buffer;
}

std::shared_ptr<const data::ImageSource> fashion_source(bool train, int64_t n) {
  const auto set = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, train, n);
  const auto& names = data::fashion_mnist_classes();
  return data::from_tensors(set.images, set.labels, std::vector<std::string>(names.begin(), names.end()),
                            "fashion-mnist");
}

eval::Evaluation tiny_evaluation() {
  auto config = config::parse_config(R"({
    "evaluation": {"images": 16, "epsilons": [0.05, 0.1], "calibration_images": 60, "latency_repeats": 2},
    "attacks": [{"type": "fgsm"}, {"type": "pgd", "steps": 3, "eot_samples": 1}],
    "defenses": [{"name": "undefended"},
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
TEST(Report, EvaluatesEveryDefenseAndWritesConsistentFilesAndPlots) {
  torch::set_num_threads(2);
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
  for (const auto& d : metrics["defenses"]) {
    // The Markdown row of each defense shows the numbers of metrics.json.
    std::string row = "| " + d["name"].get<std::string>() + " | " + percent(d["clean_accuracy"].get<double>()) + " | " +
                      percent(d["clean_flagged"].get<double>()) + " |";
    for (const auto& a : d["attacks"]) {
      row += " " + percent(a["accuracy"].get<double>()) + " / " + percent(a["adaptive_accuracy"].get<double>()) + " |";
    }
    EXPECT_NE(markdown.find(row), std::string::npos) << row << "\n" << markdown;
  }
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
