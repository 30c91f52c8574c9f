#include "parry/train/distillation.hpp"

#include "attack_support.hpp"
#include "parry/train/classifier_trainer.hpp"

using namespace parry;

namespace {

class DistillationTest : public parry::testing::SeededTest {};

data::LabeledImages training_subset(int64_t n) {
  return data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, /*train=*/true, n);
}

Model fresh_cnn(uint64_t seed) {
  torch::manual_seed(seed);
  return Model(models::ReferenceCnn());
}

// Per-sample L1 norm of the gradient of CE(logits / temperature, y) with respect to the input.
torch::Tensor input_gradient_norms(const Model& model, const torch::Tensor& x, const torch::Tensor& y,
                                   double temperature) {
  auto input = x.detach().clone().requires_grad_(true);
  auto loss = torch::nn::functional::cross_entropy(
      model.logits(input) / temperature, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  auto grad = torch::autograd::grad({loss}, {input})[0];
  return grad.abs().flatten(1).sum(1).to(torch::kFloat64);
}

double median_of(const torch::Tensor& t) {
  return t.median().item<double>();
}

}  // namespace

// Training at T scales the logits the network must learn by about T, so a
// short run needs a larger learning rate and more steps than plain training.
train::DistillationOptions short_run(double temperature) {
  return train::DistillationOptions().temperature(temperature).epochs(4).batch_size(32).learning_rate(3e-3).seed(3);
}

TEST_F(DistillationTest, StudentLearnsTheTeachersLabels) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const auto train = training_subset(1000);
  Model teacher = fresh_cnn(1);
  Model student = fresh_cnn(2);
  const auto summary = train::Distillation(short_run(20)).fit(teacher, student, train.images, train.labels);
  EXPECT_GT(summary.label_agreement, 0.85);
  EXPECT_FALSE(teacher.is_training());
  EXPECT_FALSE(student.is_training());
  // On unseen test images the student still predicts what the teacher predicts.
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 500);
  torch::NoGradGuard no_grad;
  const double agreement = teacher.logits(test.images)
                               .argmax(1)
                               .eq(student.logits(test.images).argmax(1))
                               .to(torch::kFloat64)
                               .mean()
                               .item<double>();
  EXPECT_GT(agreement, 0.75);
  EXPECT_GT(train::accuracy(student, test.images, test.labels), 0.65);
}

TEST_F(DistillationTest, HighTemperatureMasksTheInputGradient) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const auto train = training_subset(1000);
  const double t = 100;
  Model teacher = fresh_cnn(1);
  Model student = fresh_cnn(2);
  train::Distillation(short_run(t)).fit(teacher, student, train.images, train.labels);
  // Correctly classified training images: where an attacker would start.
  const auto x = train.images.slice(0, 0, 500);
  const auto y = train.labels.slice(0, 0, 500);
  torch::Tensor correct;
  {
    torch::NoGradGuard no_grad;
    correct = student.logits(x).argmax(1).eq(y) & teacher.logits(x).argmax(1).eq(y);
  }
  const auto rows = correct.nonzero().flatten();
  ASSERT_GT(rows.numel(), 100);
  const auto xs = x.index_select(0, rows), ys = y.index_select(0, rows);
  // The teacher as it was trained (softmax at T) against the deployed student (T = 1).
  const double teacher_gradient = median_of(input_gradient_norms(teacher, xs, ys, t));
  const double student_gradient = median_of(input_gradient_norms(student, xs, ys, 1.0));
  RecordProperty("teacher_at_T_median_gradient_l1", std::to_string(teacher_gradient));
  RecordProperty("student_at_1_median_gradient_l1", std::to_string(student_gradient));
  std::printf("median input-gradient L1: teacher at T=%.0f %.3e, deployed student at T=1 %.3e\n", t, teacher_gradient,
              student_gradient);
  EXPECT_GT(teacher_gradient, 1e-3);
  EXPECT_LT(student_gradient, 1e-3 * teacher_gradient);
}

TEST_F(DistillationTest, DeployedStudentIsANormalModel) {
  const auto train = training_subset(512);
  Model teacher = fresh_cnn(1);
  models::ReferenceCnn student_net;
  Model student(student_net);
  train::Distillation(train::DistillationOptions().temperature(50).epochs(1))
      .fit(teacher, student, train.images, train.labels);
  EXPECT_EQ(student.kind(), "module");
  ASSERT_EQ(student.module_as<models::ReferenceCnnImpl>(), student_net.ptr());
  const auto x = train.images.slice(0, 0, 16);
  torch::NoGradGuard no_grad;
  // Deployed at T = 1: the Model's logits are the module's raw logits.
  EXPECT_TRUE(torch::equal(student.logits(x), student_net->forward(x)));
  // It saves, loads and clones like any model.
  parry::testing::TempDir dir;
  student.save(dir.file("student.pt"));
  models::ReferenceCnn reloaded_net;
  Model reloaded(reloaded_net);
  reloaded.load(dir.file("student.pt"));
  reloaded.set_training(false);
  EXPECT_TRUE(torch::equal(reloaded.logits(x), student.logits(x)));
  EXPECT_TRUE(torch::equal(student.clone().logits(x), student.logits(x)));
}

TEST_F(DistillationTest, BadOptionsAndModelsAreOptionErrorsNamingTheValue) {
  auto expect_message = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no exception";
    } catch (const OptionError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_message([] { train::DistillationOptions().temperature(0); }, "but got 0");
  expect_message([] { train::DistillationOptions().temperature(-2.5); }, "-2.5");
  expect_message([] { train::DistillationOptions().epochs(0); }, "but got 0");
  expect_message([] { train::DistillationOptions().final_lr_fraction(1.5); }, "1.5");
  const auto train = training_subset(64);
  Model a = fresh_cnn(1);
  Model same = a;
  expect_message([&] { train::Distillation().fit(a, same, train.images, train.labels); }, "different modules");
  Model callable = Model::from_callable([](const torch::Tensor& x) { return x.flatten(1).narrow(1, 0, 10); });
  expect_message([&] { train::Distillation().fit(a, callable, train.images, train.labels); }, "no trainable");
  Model other = fresh_cnn(2);
  expect_message([&] { train::Distillation().fit(a, other, train.images, train.labels.slice(0, 0, 3)); }, "labels");
}
