// eval::evaluate on streamed data: batches within every Guard's max_batch,
// any channel count and class count, and clear errors for data that does not
// fit the model or the config.
#include "parry/eval/evaluation.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/config/defense_config.hpp"
#include "parry/data/image_source.hpp"
#include "parry/detail/generator.hpp"
#include "parry/detect/softmax_confidence.hpp"
#include "parry/eval/report.hpp"
#include "test_support.hpp"

using namespace parry;

namespace {

// A linear RGB classifier over 3×6×6 images with 3 classes, and images it
// classifies by their mean colour: class c is brightest in channel c.
struct ColourData {
  Model model;
  std::shared_ptr<const data::ImageSource> train, test;
};

ColourData colour_data(int64_t test_images) {
  torch::manual_seed(3);
  auto net = torch::nn::Sequential(torch::nn::Flatten(), torch::nn::Linear(3 * 6 * 6, 3));
  {
    torch::NoGradGuard no_grad;
    auto& linear = *net->ptr<torch::nn::LinearImpl>(1);
    linear.weight.zero_();
    linear.bias.zero_();
    // Red and green are recognised by their channel; blue never wins (its
    // row is zero and its bias negative), so per-class accuracy differs.
    for (int64_t c = 0; c < 2; ++c) linear.weight[c].view({3, 36})[c].fill_(1.0);
    linear.bias[2] = -1000.0;
  }
  net->eval();
  const auto make = [](int64_t n, uint64_t seed) {
    auto generator = parry::detail::make_generator(seed, torch::kCPU);
    const auto labels = torch::randint(0, 3, {n}, generator, torch::kInt64);
    auto images = torch::rand({n, 3, 6, 6}, generator) * 0.3 + 0.2;
    for (int64_t i = 0; i < n; ++i) images[i][labels[i].template item<int64_t>()] += 0.4;
    return std::make_pair(images.clamp(0, 1), labels);
  };
  const auto [train_x, train_y] = make(60, 1);
  const auto [unsorted_x, unsorted_y] = make(test_images, 2);
  // The test set lists its images class by class, as an image folder does.
  const auto by_class = std::get<1>(unsorted_y.sort(/*stable=*/true, 0, false));
  const auto test_x = unsorted_x.index_select(0, by_class), test_y = unsorted_y.index_select(0, by_class);
  const std::vector<std::string> names{"red", "green", "blue"};
  return {Model(net), data::from_tensors(train_x, train_y, names, "colours-train"),
          data::from_tensors(test_x, test_y, names, "colours-test")};
}

// `black_box`: the evaluation's black_box object (none by default: those runs are slow).
config::Config colour_config(const Model& model, const std::string& defenses, int64_t images, int64_t batch,
                             const std::string& black_box = R"({"images": 0})") {
  return config::parse_config(R"({"evaluation": {"images": )" + std::to_string(images) +
                                  R"(, "epsilons": [0.05, 0.3], "calibration_images": 10, "latency_repeats": 1,
                                  "batch_size": )" +
                                  std::to_string(batch) + R"(, "black_box": )" + black_box +
                                  R"(}, "attacks": [{"type": "fgsm"}], "defenses": [)" + defenses + "]}",
                              model, InputSpec(3, 6, 6));
}

}  // namespace

TEST(Evaluation, StreamsBatchesWithinMaxBatchAndMatchesOneBigBatch) {
  auto data = colour_data(40);
  // max_batch 8 < images 30: the evaluator must never send more than 8 at once.
  const std::string defenses =
      R"({"name": "small", "input": {"channels": 3, "height": 6, "width": 6, "max_batch": 8},
          "preprocess": [{"type": "bit_depth", "bits": 5}], "output": {"policy": "full"}})";
  auto streamed = colour_config(data.model, defenses, 30, 128);
  std::vector<std::string> lines;
  const auto a = eval::evaluate(streamed, data.model, {data.train, data.test},
                                [&](const std::string& line) { lines.push_back(line); });
  int batches = 0;
  for (const auto& line : lines) batches += line.rfind("batch ", 0) == 0;
  EXPECT_EQ(batches, 4);  // 8 + 8 + 8 + 6 images
  // FGSM is deterministic, so batching cannot change any figure.
  auto single = colour_config(data.model, R"({"name": "small", "input": {"channels": 3, "height": 6, "width": 6},
          "preprocess": [{"type": "bit_depth", "bits": 5}], "output": {"policy": "full"}})",
                              30, 128);
  const auto b = eval::evaluate(single, data.model, {data.train, data.test});
  ASSERT_EQ(a.defenses.size(), 1u);
  EXPECT_DOUBLE_EQ(a.defenses[0].clean_accuracy, b.defenses[0].clean_accuracy);
  ASSERT_EQ(a.defenses[0].attacks.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_DOUBLE_EQ(a.defenses[0].attacks[i].accuracy, b.defenses[0].attacks[i].accuracy);
    EXPECT_NEAR(a.defenses[0].attacks[i].mean_l2, b.defenses[0].attacks[i].mean_l2, 1e-5);
  }
  EXPECT_EQ(a.throughput_batch, 8);
}

TEST(Evaluation, ReportsClassesPerClassAccuracyAndColourExamples) {
  auto data = colour_data(40);
  auto config = colour_config(data.model, R"({"name": "undefended", "output": {"policy": "full"}})", 30, 16);
  const auto e = eval::evaluate(config, data.model, {data.train, data.test});
  EXPECT_EQ(e.classes, (std::vector<std::string>{"red", "green", "blue"}));
  EXPECT_EQ(e.data_name, "colours-test");
  // Per-class accuracy against a count by hand on the same 30 images (the
  // evaluation reads the test set in its seeded random order).
  const auto test = data::shuffled(data.test, 0)->read(0, 30);
  const auto predicted = data.model.logits(test.images).argmax(1);
  const auto& per_class = e.defenses[0].class_accuracy;
  ASSERT_EQ(per_class.size(), 3u);
  for (int64_t c = 0; c < 3; ++c) {
    const auto in_class = test.labels.eq(c);
    const double expected = (predicted.eq(test.labels) & in_class).sum().item<double>() / in_class.sum().item<double>();
    EXPECT_DOUBLE_EQ(per_class[c], expected) << c;
  }
  EXPECT_EQ(per_class[2], 0.0);  // blue is never predicted
  EXPECT_GT(per_class[0], 0.5);
  EXPECT_EQ(e.example_clean.size(1), 3);  // RGB examples for the grid
  EXPECT_EQ(e.example_labels.size(), 8u);
  parry::testing::TempDir dir;
  eval::write_report(e, dir.path().string());
  EXPECT_TRUE(std::filesystem::exists(dir.file("examples.png")));
}

TEST(Evaluation, RefusesDataThatDoesNotFitTheModelOrTheConfig) {
  auto data = colour_data(40);
  // A defense whose input is 1×6×6 against 3×6×6 images.
  auto grey = colour_config(data.model, R"({"name": "g", "input": {"channels": 1, "height": 6, "width": 6}})", 20, 8);
  try {
    eval::evaluate(grey, data.model, {data.train, data.test});
    ADD_FAILURE() << "accepted 3-channel images for a 1-channel input";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("3×6×6"), std::string::npos) << e.what();
  }
  // Two class names for a model with three logits.
  const auto test = data.test->read(0, 40);
  const auto two = data::from_tensors(test.images, test.labels.clamp_max(1), {"a", "b"}, "two");
  auto config = colour_config(data.model, R"({"name": "u"})", 20, 8);
  try {
    eval::evaluate(config, data.model, {nullptr, two});
    ADD_FAILURE() << "accepted 2 classes for 3 logits";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("2 classes but the model outputs 3 logits"), std::string::npos) << e.what();
  }
  // A detector fitted on training images, without a training split.
  auto fitted = colour_config(data.model,
                              R"({"name": "kd", "detectors": [{"type": "kernel_density", "fit_images": 20}]})", 20, 8);
  EXPECT_THROW(eval::evaluate(fitted, data.model, {nullptr, data.test}), OptionError);
}

TEST(Evaluation, DetectorsAreCalibratedFromStreamedScoresOnEveryClass) {
  auto data = colour_data(60);
  // Batches of 8: calibration scores and ROC scores come from several batches.
  auto config = colour_config(
      data.model, R"({"name": "d", "detectors": [{"type": "softmax_confidence", "target_fpr": 0.1}]})", 30, 8);
  const auto e = eval::evaluate(config, data.model, {data.train, data.test});
  const auto& detector = *config.defenses[0].detectors[0].detector;
  // The threshold equals one calibration on all 30 calibration images at once:
  // the last 30 of the seeded order.
  const auto calibration = data::shuffled(data.test, 0)->read(30, 60);
  detect::SoftmaxConfidence reference;
  const auto report = reference.calibrate(calibration.images, config.defenses[0].model_for(data.model), 0.1);
  EXPECT_DOUBLE_EQ(detector.threshold(), report.threshold);
  // Those 30 images hold every class, though the source lists them in order.
  EXPECT_EQ(torch::bincount(calibration.labels, {}, 3).gt(0).all().item<bool>(), true);
  ASSERT_EQ(e.defenses[0].detectors.size(), 1u);
  const auto& outcome = e.defenses[0].detectors[0];
  EXPECT_EQ(outcome.roc_fpr.front(), 0.0);
  EXPECT_EQ(outcome.roc_tpr.back(), 1.0);
  EXPECT_GE(outcome.detection_rate, 0.0);
  EXPECT_LE(outcome.clean_fpr, 1.0);
}

namespace {

const eval::BlackBoxOutcome& row(const eval::DefenseOutcome& d, const std::string& attack, double epsilon) {
  for (const auto& o : d.black_box) {
    if (o.attack == attack && std::abs(o.epsilon - epsilon) < 1e-12) return o;
  }
  throw std::runtime_error("no black-box row " + attack + " for " + d.name);
}

// Five defenses over the same model: open (scores, no gates), a throttle
// too tight for one run, one roomy enough for one run but not for two, a
// flagging query monitor, and label-only answers.
const char* kBlackBoxDefenses = R"(
  {"name": "open", "output": {"policy": "full"}},
  {"name": "tight", "gates": [{"type": "throttle", "rate": 1, "burst": 30}], "output": {"policy": "full"}},
  {"name": "roomy", "gates": [{"type": "throttle", "rate": 1, "burst": 250}], "output": {"policy": "full"}},
  {"name": "monitored", "gates": [{"type": "query_monitor", "action": "flag"}], "output": {"policy": "full"}},
  {"name": "label-only"})";
const char* kBlackBoxBudgets = R"({"images": 6, "square_queries": 100, "hop_skip_jump_queries": 200,
                                   "l2_epsilon": 4.0})";

}  // namespace

TEST(Evaluation, BlackBoxRowsMeetTheFullGuardWithFreshGatesPerRun) {
  auto data = colour_data(40);
  auto config = colour_config(data.model, kBlackBoxDefenses, 12, 16, kBlackBoxBudgets);
  const auto e = eval::evaluate(config, data.model, {data.train, data.test});
  EXPECT_EQ(e.black_box.images, 6);
  ASSERT_EQ(e.defenses.size(), 5u);
  // The runs' images: the first 6 attacked, in the seeded order; any the
  // model already gets wrong (blue ones) are won with the first query.
  const auto subset = data::shuffled(data.test, 0)->read(0, 6);
  const int64_t correct = data.model.logits(subset.images).argmax(1).eq(subset.labels).sum().item<int64_t>();
  ASSERT_GT(correct, 0);

  const auto& open = e.defenses[0];
  ASSERT_EQ(open.black_box.size(), 3u);  // Square at both ε, HopSkipJump
  for (const auto& o : open.black_box) {
    EXPECT_TRUE(o.applicable) << o.attack;
    EXPECT_EQ(o.images, 6) << o.attack;
    EXPECT_EQ(o.stopped, 0) << o.attack;
    EXPECT_EQ(o.flagged, 0) << o.attack;
    EXPECT_GE(o.success_rate, (6.0 - static_cast<double>(correct)) / 6.0 - 1e-12) << o.attack;
  }
  // ε = 0.05 cannot move a class-channel margin of about 14 across 36 pixels; ε = 0.3 can.
  EXPECT_DOUBLE_EQ(row(open, "Square", 0.05).success_rate, (6.0 - static_cast<double>(correct)) / 6.0);
  EXPECT_GT(row(open, "Square", 0.3).success_rate, row(open, "Square", 0.05).success_rate);
  const auto& hsj = row(open, "HopSkipJump", 4.0);
  EXPECT_EQ(hsj.norm, "l2");
  EXPECT_EQ(hsj.query_budget, 200);
  EXPECT_TRUE(std::isfinite(hsj.median_l2));
  EXPECT_LE(hsj.median_queries, 200.0);

  // Burst 30: every run on a correctly classified image needs more and is stopped.
  const auto& tight = e.defenses[1];
  EXPECT_EQ(row(tight, "Square", 0.05).stopped, correct);
  EXPECT_EQ(row(tight, "HopSkipJump", 4.0).stopped, correct);
  EXPECT_EQ(row(tight, "HopSkipJump", 4.0).stop_reasons, std::vector<std::string>{"rate_limited"});
  EXPECT_LT(row(tight, "HopSkipJump", 4.0).success_rate, hsj.success_rate + 1e-12);
  EXPECT_LE(row(tight, "Square", 0.05).median_queries, 30.0);
  // Burst 250 holds one run (at most 200 queries) but not two: a gate shared
  // between runs would stop the later ones.
  for (const auto& o : e.defenses[2].black_box) EXPECT_EQ(o.stopped, 0) << o.attack << " " << o.epsilon;
  for (size_t i = 0; i < open.black_box.size(); ++i) {
    EXPECT_DOUBLE_EQ(e.defenses[2].black_box[i].success_rate, open.black_box[i].success_rate);
    EXPECT_DOUBLE_EQ(e.defenses[2].black_box[i].median_queries, open.black_box[i].median_queries);
  }
  // The monitor flags HopSkipJump's near-identical queries in every run that goes past its first answer.
  const auto& monitored = e.defenses[3];
  EXPECT_EQ(row(monitored, "HopSkipJump", 4.0).flagged, correct);
  EXPECT_EQ(row(monitored, "HopSkipJump", 4.0).stopped, 0);
  // Label-only answers: no Square, but HopSkipJump runs.
  const auto& label_only = e.defenses[4];
  ASSERT_EQ(label_only.black_box.size(), 3u);
  for (double eps : {0.05, 0.3}) {
    EXPECT_FALSE(row(label_only, "Square", eps).applicable);
    EXPECT_EQ(row(label_only, "Square", eps).not_applicable, "label-only answers");
    EXPECT_EQ(row(label_only, "Square", eps).images, 0);
  }
  EXPECT_TRUE(row(label_only, "HopSkipJump", 4.0).applicable);
  EXPECT_EQ(row(label_only, "HopSkipJump", 4.0).images, 6);
  EXPECT_DOUBLE_EQ(row(label_only, "HopSkipJump", 4.0).success_rate, hsj.success_rate);

  // The config's own gates saw none of it (latency runs use fresh gates too).
  const auto throttle = std::dynamic_pointer_cast<conceal::Throttle>(config.defenses[1].gates[0]);
  ASSERT_NE(throttle, nullptr);
  EXPECT_EQ(throttle->tracked_clients(), 0u);
  const auto monitor = std::dynamic_pointer_cast<conceal::QueryMonitor>(config.defenses[3].gates[0]);
  ASSERT_NE(monitor, nullptr);
  EXPECT_EQ(monitor->stats().images, 0u);

  // Evaluated again from the same config: the same black-box figures.
  const auto again = eval::evaluate(config, data.model, {data.train, data.test});
  for (size_t d = 0; d < e.defenses.size(); ++d) {
    ASSERT_EQ(again.defenses[d].black_box.size(), e.defenses[d].black_box.size());
    for (size_t i = 0; i < e.defenses[d].black_box.size(); ++i) {
      const auto &a = e.defenses[d].black_box[i], &b = again.defenses[d].black_box[i];
      EXPECT_DOUBLE_EQ(a.success_rate, b.success_rate) << e.defenses[d].name << " " << a.attack;
      EXPECT_DOUBLE_EQ(a.median_queries, b.median_queries) << e.defenses[d].name << " " << a.attack;
      EXPECT_EQ(a.median_l2, b.median_l2) << e.defenses[d].name << " " << a.attack;
      EXPECT_EQ(a.stopped, b.stopped) << e.defenses[d].name << " " << a.attack;
      EXPECT_EQ(a.flagged, b.flagged) << e.defenses[d].name << " " << a.attack;
    }
  }

  // The report: one black-box table per defense, with intervals.
  parry::testing::TempDir dir;
  eval::write_report(e, dir.path().string());
  std::ifstream in(dir.file("report.md"));
  const std::string md((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(md.find("## Black-box attacks through the full Guard"), std::string::npos);
  for (const auto& d : e.defenses) EXPECT_NE(md.find("### " + d.name + "\n"), std::string::npos) << d.name;
  EXPECT_NE(md.find("| Square | L∞ ε=0.05, 100 queries | not applicable: label-only answers |"), std::string::npos);
  EXPECT_NE(md.find(std::to_string(correct) + "/6 (rate_limited)"), std::string::npos);
}

TEST(Evaluation, BlackBoxRowsNeedGatesThatCanBeBuiltAgain) {
  auto data = colour_data(40);
  auto config = colour_config(data.model, R"({"name": "open", "output": {"policy": "full"}})", 12, 16,
                              R"({"images": 2, "square_queries": 10, "hop_skip_jump_queries": 20})");
  // A gate added by hand has no factory: the black-box rows refuse rather than share its state.
  config.defenses[0].gates.push_back(std::make_shared<conceal::Throttle>());
  EXPECT_THROW(eval::evaluate(config, data.model, {data.train, data.test}), OptionError);
  config.evaluation.black_box.images = 0;  // without black-box rows it evaluates
  const auto e = eval::evaluate(config, data.model, {data.train, data.test});
  EXPECT_TRUE(e.defenses[0].black_box.empty());
  parry::testing::TempDir dir;
  eval::write_report(e, dir.path().string());
  std::ifstream in(dir.file("report.md"));
  const std::string md((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(md.find("Black-box"), std::string::npos);
}

TEST(Evaluation, AutoAttackReportsEveryComponentAndItsSanityChecks) {
  auto data = colour_data(40);
  const std::string defenses = R"({"name": "scores", "output": {"policy": "full"}},
                                  {"name": "labels", "output": {"policy": "label_only"}})";
  auto config = config::parse_config(
      R"({"evaluation": {"images": 24, "epsilons": [0.05, 0.3], "calibration_images": 10, "latency_repeats": 1},
          "attacks": [{"type": "autoattack", "steps": 10, "square_queries": 50}],
          "defenses": [)" +
          defenses + "]}",
      data.model, InputSpec(3, 6, 6));
  const auto e = eval::evaluate(config, data.model, {data.train, data.test});
  ASSERT_EQ(e.defenses.size(), 2u);
  for (const auto& d : e.defenses) {
    ASSERT_EQ(d.attacks.size(), 2u);
    for (const auto& a : d.attacks) {
      EXPECT_EQ(a.attack, "AutoAttack-standard (10 iterations, Square 50 queries)");
      ASSERT_TRUE(a.is_auto_attack());
      ASSERT_EQ(a.stages.size(), 4u);
      EXPECT_EQ(a.images, 24);
      int64_t robust = a.clean_correct;
      for (const auto& stage : a.stages) {
        EXPECT_LE(stage.robust_after, robust) << attack::to_string(stage.component);
        robust = stage.robust_after;
      }
      // Without detectors the Guard's label is the classifier's: the adaptive
      // accuracy cannot exceed what AutoAttack left robust.
      EXPECT_LE(a.adaptive_accuracy * 24, static_cast<double>(robust) + 1e-9);
      EXPECT_GT(a.forward_passes, 0);
      // Three classes: no targeted DLR, and two targets instead of nine.
      EXPECT_TRUE(a.stages[1].skipped);
      EXPECT_NE(a.stages[1].skip_reason.find("4 classes"), std::string::npos);
      EXPECT_TRUE(std::any_of(a.warnings.begin(), a.warnings.end(),
                              [](const std::string& w) { return w.find("target classes") != std::string::npos; }));
    }
  }
  // Square needs the scores that only the first defense shows.
  // (At ε = 0.05 images are left for it: the colour margins need about 0.2.)
  ASSERT_GT(e.defenses[0].attacks[0].stages[3].attacked, 0);
  EXPECT_FALSE(e.defenses[0].attacks[0].stages[3].skipped) << e.defenses[0].attacks[0].stages[3].skip_reason;
  EXPECT_TRUE(e.defenses[1].attacks[0].stages[3].skipped);
  EXPECT_NE(e.defenses[1].attacks[0].stages[3].skip_reason.find("class scores"), std::string::npos);
  // At ε = 0.3 the linear model breaks on more images than at 0.05.
  EXPECT_LE(e.defenses[0].attacks[1].stages.back().robust_after, e.defenses[0].attacks[0].stages.back().robust_after);

  parry::testing::TempDir dir;
  eval::write_report(e, dir.path().string());
  std::ifstream md_file(dir.file("report.md"));
  const std::string md((std::istreambuf_iterator<char>(md_file)), std::istreambuf_iterator<char>());
  EXPECT_NE(md.find("## AutoAttack: robust accuracy after each component"), std::string::npos);
  EXPECT_NE(md.find("after apgd-ce"), std::string::npos);
  EXPECT_NE(md.find("skipped: the service answers without class scores"), std::string::npos);
  EXPECT_NE(md.find("Sanity-check warnings"), std::string::npos);
  std::ifstream json_file(dir.file("metrics.json"));
  const auto metrics = nlohmann::json::parse(json_file);
  const auto& robustbench = metrics["defenses"][0]["robustbench"];
  ASSERT_EQ(robustbench.size(), 2u);
  EXPECT_EQ(robustbench[0]["threat_model"], "Linf");
  EXPECT_DOUBLE_EQ(robustbench[0]["eps"].get<double>(), 0.05);
  EXPECT_TRUE(robustbench[0]["unreliable"].get<bool>());  // the target-class warning
  const auto& a = e.defenses[0].attacks[0];
  EXPECT_NEAR(robustbench[0]["autoattack_acc"].get<double>(), 100.0 * a.stages.back().robust_after / 24.0, 1e-9);
  EXPECT_NEAR(robustbench[0]["clean_acc"].get<double>(), 100.0 * a.clean_correct / 24.0, 1e-9);
  EXPECT_EQ(metrics["defenses"][0]["attacks"][0]["auto_attack"]["stages"].size(), 4u);
}
