#include "parry/train/detector_trainer.hpp"

#include <fstream>

#include "attack_support.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/core/guard.hpp"
#include "parry/eval/metrics.hpp"

using namespace parry;
using train::DetectorKind;
using train::DetectorTrainer;
using train::DetectorTrainerOptions;

namespace {

class DetectorTrainerTest : public parry::testing::SeededTest {};

Model detector_network(int64_t outputs, uint64_t seed) {
  torch::manual_seed(seed);
  return Model(models::ReferenceCnn(models::ReferenceCnnOptions().classes(outputs)));
}

attack::FgsmOptions fgsm_options() {
  return attack::FgsmOptions(0.1);
}

}  // namespace

TEST_F(DetectorTrainerTest, BinaryDetectorSeparatesItsTrainingAttackFromCleanAndServesInAGuard) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const Model target = parry::testing::reference_model();
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 1000);
  Model network = detector_network(2, 1);
  DetectorTrainer trainer(DetectorTrainerOptions()
                              .kind(DetectorKind::Binary)
                              .add_attack(train::fgsm_attack(fgsm_options()))
                              .epochs(4)
                              .batch_size(64));
  const auto detector = trainer.fit(target, network, train);
  EXPECT_EQ(detector->trained_on(), std::vector<std::string>{"fgsm"});

  // Held-out: test images the model gets right, and their FGSM counterparts.
  const auto test = parry::testing::correctly_classified(400);
  const auto calibration = test.images.slice(0, 0, 200);
  const auto clean = test.images.slice(0, 200);
  const auto adv = attack::fgsm(attack::differentiable(target), clean, test.labels.slice(0, 200), fgsm_options());
  const auto fooled = adv.adversarial.index_select(0, adv.success.nonzero().flatten());
  ASSERT_GT(fooled.size(0), 50);
  const auto clean_scores = detector->score(clean, target);
  const auto adv_scores = detector->score(fooled, target);
  EXPECT_GE(clean_scores.min().item<double>(), 0.0);
  EXPECT_LE(adv_scores.max().item<double>(), 1.0);
  const double auc = eval::roc_auc(clean_scores, adv_scores);
  const auto at5 = eval::detection_at_fpr(clean_scores, adv_scores, 0.05);
  std::printf("binary detector trained on FGSM: ROC-AUC %.3f, detected at 5%% FPR %.1f%%\n", auc,
              100 * at5.detection_rate);
  EXPECT_GT(auc, 0.9);
  EXPECT_GT(at5.detection_rate, 0.5);

  // In a Guard: calibrated on other clean images, it flags most adversarial inputs and few clean ones.
  detector->calibrate(calibration, target, 0.05);
  Guard guard = GuardBuilder(target, InputSpec(1, 28, 28).max_batch(512)).add_detector(detector).build();
  const auto flagged_fraction = [&](const torch::Tensor& x) {
    const Response r = guard.predict(x);
    double flagged = 0;
    for (bool f : r.flagged) flagged += f ? 1 : 0;
    return flagged / static_cast<double>(r.flagged.size());
  };
  EXPECT_LT(flagged_fraction(clean), 0.15);
  EXPECT_GT(flagged_fraction(fooled), 0.5);
  // The score is differentiable for detector-aware attacks.
  auto input = fooled.slice(0, 0, 4).clone().requires_grad_(true);
  auto grad = torch::autograd::grad({detector->differentiable_score(input, target).sum()}, {input})[0];
  EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
}

TEST_F(DetectorTrainerTest, ExtraClassDetectorLearnsItsAttackAndRoundTripsThroughSaveAndLoad) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const Model target = parry::testing::reference_model();
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 1000);
  Model network = detector_network(11, 2);
  DetectorTrainer trainer(DetectorTrainerOptions()
                              .kind(DetectorKind::ExtraClass)
                              .add_attack(train::fgsm_attack(fgsm_options()))
                              .epochs(4)
                              .batch_size(64));
  const auto set = trainer.make_training_set(target, train);
  EXPECT_EQ(set.labels.slice(0, 0, 1000).max().item<int64_t>(), 9);
  EXPECT_EQ(set.labels.slice(0, 1000).min().item<int64_t>(), 10);  // the extra class
  const auto detector = trainer.fit(target, network, train);

  const auto test = parry::testing::correctly_classified(200);
  const auto adv = attack::fgsm(attack::differentiable(target), test.images, test.labels, fgsm_options());
  const auto fooled = adv.adversarial.index_select(0, adv.success.nonzero().flatten());
  const auto clean_scores = detector->score(test.images, target);
  const double auc = eval::roc_auc(clean_scores, detector->score(fooled, target));
  std::printf("extra-class detector trained on FGSM: ROC-AUC %.3f\n", auc);
  EXPECT_GT(auc, 0.9);

  detector->calibrate(test.images, target, 0.05);
  parry::testing::TempDir dir;
  detector->save(dir.file("detector.pt"));
  train::LearnedDetector loaded(detector_network(11, 9), DetectorKind::ExtraClass);
  loaded.load(dir.file("detector.pt"));
  EXPECT_TRUE(torch::equal(loaded.score(test.images, target), clean_scores));
  EXPECT_DOUBLE_EQ(loaded.threshold(), detector->threshold());
  EXPECT_EQ(loaded.trained_on(), std::vector<std::string>{"fgsm"});

  // The wrong kind or architecture, or a damaged file, is an IoError and leaves the detector as it was.
  train::LearnedDetector binary(detector_network(2, 3), DetectorKind::Binary);
  EXPECT_THROW(binary.load(dir.file("detector.pt")), IoError);
  train::LearnedDetector other_classes(detector_network(3, 3), DetectorKind::ExtraClass);
  EXPECT_THROW(other_classes.load(dir.file("detector.pt")), IoError);
  {
    std::ofstream out(dir.file("detector.pt"), std::ios::binary | std::ios::trunc);
    out << "garbage";
  }
  EXPECT_THROW(loaded.load(dir.file("detector.pt")), IoError);
  EXPECT_TRUE(torch::equal(loaded.score(test.images, target), clean_scores));
}

TEST_F(DetectorTrainerTest, BadOptionsAreOptionErrorsNamingTheValue) {
  auto expect_message = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no exception";
    } catch (const OptionError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_message([] { DetectorTrainer{DetectorTrainerOptions()}; }, "at least one attack");
  expect_message([] { DetectorTrainerOptions().epochs(0); }, "but got 0");
  expect_message([] { DetectorTrainerOptions().learning_rate(-1); }, "-1");
  expect_message([] { DetectorTrainerOptions().add_attack({"", nullptr}); }, "no function");
  const Model target = parry::testing::reference_model();
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 32);
  Model wrong = detector_network(10, 1);
  DetectorTrainer binary(DetectorTrainerOptions().add_attack(train::fgsm_attack()).epochs(1));
  expect_message([&] { binary.fit(target, wrong, train); }, "but got 10");
  DetectorTrainer extra(DetectorTrainerOptions().kind(DetectorKind::ExtraClass).add_attack(train::fgsm_attack()));
  expect_message([&] { extra.fit(target, wrong, train); }, "needs 11 outputs");
  Model callable = Model::from_callable([](const torch::Tensor& x) { return x.flatten(1).narrow(1, 0, 2); });
  expect_message([&] { binary.fit(target, callable, train); }, "no trainable");
  data::LabeledImages bad_labels{train.images, torch::full({32}, 12L)};
  expect_message([&] { binary.make_training_set(target, bad_labels); }, "class count 10");
}

// The attacks run against the deployed function: a target handed over in
// train mode is neither switched nor written to (BatchNorm statistics).
TEST_F(DetectorTrainerTest, ATargetInTrainModeIsLeftUntouched) {
  Model target = parry::testing::reference_model().clone();
  target.set_training(true);
  std::vector<torch::Tensor> before;
  const auto net = target.module_as<models::ReferenceCnnImpl>();
  for (const auto& t : net->buffers()) before.push_back(t.clone());
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 64);
  DetectorTrainer binary(DetectorTrainerOptions().add_attack(train::fgsm_attack(fgsm_options())).epochs(1));
  const auto set = binary.make_training_set(target, train);
  EXPECT_GT(set.images.size(0), train.images.size(0));
  EXPECT_TRUE(target.is_training());
  const auto after = net->buffers();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(torch::equal(before[i], after[i])) << i;
}
