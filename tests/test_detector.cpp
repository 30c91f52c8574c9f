#include "parry/core/detector.hpp"

#include <fstream>

#include "parry/detect/softmax_confidence.hpp"
#include "test_support.hpp"

using namespace parry;

namespace {

class DetectorTest : public parry::testing::SeededTest {};

// Scores each sample by its first pixel, to test calibration arithmetic.
class FirstPixel : public Detector {
 public:
  std::string name() const override { return "first_pixel"; }
  std::string describe() const override { return "FirstPixel"; }
  torch::Tensor score(const DetectorInput& in) const override { return in.batch.flatten(1).select(1, 0).clone(); }
  using Detector::score;
};

Model any_model() {
  return Model::from_callable([](const torch::Tensor& x) { return x.flatten(1).narrow(1, 0, 2); });
}

torch::Tensor images_with_first_pixels(const std::vector<float>& values) {
  auto x = torch::zeros({static_cast<int64_t>(values.size()), 1, 2, 2});
  for (size_t i = 0; i < values.size(); ++i) x[static_cast<int64_t>(i)][0][0][0] = values[i];
  return x;
}

}  // namespace

TEST_F(DetectorTest, CalibrationKeepsFalsePositivesAtOrBelowTarget) {
  FirstPixel d;
  EXPECT_FALSE(d.is_calibrated());
  EXPECT_THROW(d.threshold(), StateError);
  // 100 distinct scores 0.00 .. 0.99.
  std::vector<float> values;
  for (int i = 0; i < 100; ++i) values.push_back(static_cast<float>(i) / 100.0f);
  auto clean = images_with_first_pixels(values);
  auto report = d.calibrate(clean, any_model(), 0.05, /*batch_size=*/7);
  EXPECT_EQ(report.samples, 100);
  EXPECT_NEAR(report.threshold, 0.94, 1e-6);  // 5 scores (0.95..0.99) lie above
  EXPECT_DOUBLE_EQ(report.achieved_fpr, 0.05);
  EXPECT_TRUE(d.is_calibrated());
  const auto logits = any_model().logits(clean);
  auto flags = d.flag(DetectorInput{clean, logits, any_model()});
  EXPECT_EQ(flags.sum().item<int64_t>(), 5);
  // Target 0: nothing clean is flagged; the threshold is the maximum.
  report = d.calibrate(clean, any_model(), 0.0);
  EXPECT_NEAR(report.threshold, 0.99, 1e-6);
  EXPECT_DOUBLE_EQ(report.achieved_fpr, 0.0);
}

TEST_F(DetectorTest, CalibrationWithTiesReportsTheRateItAchieves) {
  FirstPixel d;
  // Scores 5 × 0.1, 10 × 0.5, 5 × 0.9. A 30% target would need 6 above the
  // threshold; the tie at the cut allows only the 5 at 0.9 (25%).
  std::vector<float> values(5, 0.1f);
  values.insert(values.end(), 10, 0.5f);
  values.insert(values.end(), 5, 0.9f);
  auto report = d.calibrate(images_with_first_pixels(values), any_model(), 0.30);
  EXPECT_FLOAT_EQ(static_cast<float>(report.threshold), 0.5f);
  EXPECT_DOUBLE_EQ(report.achieved_fpr, 0.25);
  report = d.calibrate_from_scores(torch::full({20}, 0.5), 0.3);
  EXPECT_DOUBLE_EQ(report.achieved_fpr, 0.0) << "all tied: nothing can be flagged without flagging all";
}

TEST_F(DetectorTest, BadCalibrationArguments) {
  FirstPixel d;
  auto clean = images_with_first_pixels({0.1f, 0.2f});
  EXPECT_THROW(d.calibrate(clean, any_model(), 1.0), OptionError);
  EXPECT_THROW(d.calibrate(clean, any_model(), -0.1), OptionError);
  EXPECT_THROW(d.calibrate(torch::zeros({0, 1, 2, 2}), any_model(), 0.05), OptionError);
  EXPECT_THROW(d.calibrate(clean, any_model(), 0.05, 0), OptionError);
  EXPECT_THROW(d.calibrate_from_scores(torch::tensor({0.1, std::nan("")}), 0.05), StateError);
  EXPECT_THROW(d.set_threshold(INFINITY), OptionError);
}

TEST_F(DetectorTest, SaveLoadRoundTripAndErrors) {
  parry::testing::TempDir dir;
  FirstPixel d;
  d.set_threshold(0.375);
  d.save(dir.file("d.pt"));
  FirstPixel loaded;
  loaded.load(dir.file("d.pt"));
  EXPECT_TRUE(loaded.is_calibrated());
  EXPECT_DOUBLE_EQ(loaded.threshold(), 0.375);

  detect::SoftmaxConfidence other;
  EXPECT_THROW(other.load(dir.file("d.pt")), IoError) << "another detector's state must be refused";
  EXPECT_FALSE(other.is_calibrated()) << "a failed load changed the detector";
  EXPECT_THROW(other.load(dir.file("missing.pt")), IoError);
  { std::ofstream(dir.file("junk.pt")) << "junk"; }
  EXPECT_THROW(other.load(dir.file("junk.pt")), IoError);
  // A valid archive that is not a detector file.
  torch::serialize::OutputArchive archive;
  archive.write("x", torch::ones({2}));
  archive.save_to(dir.file("archive.pt"));
  EXPECT_THROW(other.load(dir.file("archive.pt")), IoError);
}

TEST_F(DetectorTest, SoftmaxConfidenceMatchesFormula) {
  detect::SoftmaxConfidence d;
  auto logits = torch::tensor({{2.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f}, {10.0f, -10.0f, 0.0f}});
  auto batch = torch::zeros({3, 1, 1, 1});
  auto model = any_model();
  auto s = d.score(DetectorInput{batch, logits, model});
  const double e2 = std::exp(2.0);
  auto expected = torch::tensor(
      {1.0 - e2 / (e2 + 2.0), 1.0 - 1.0 / 3.0, 1.0 - 1.0 / (1.0 + std::exp(-20.0) + std::exp(-10.0))}, torch::kFloat32);
  EXPECT_TRUE(torch::allclose(s, expected, 1e-5, 1e-6)) << s;
}
