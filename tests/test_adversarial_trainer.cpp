#include "parry/train/adversarial_trainer.hpp"

#include <fstream>

#include "attack_support.hpp"
#include "test_support.hpp"

using namespace parry;
using train::AdversarialMethod;
using train::AdversarialTrainer;
using train::AdversarialTrainerOptions;

namespace {

class AdversarialTrainerTest : public parry::testing::SeededTest {};

struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};

using parry::testing::state_of;

bool same_state(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

double pgd_accuracy(const Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  attack::GradientSettings s;
  s.seed = 7;
  const auto r = attack::pgd(attack::differentiable(model), x, y, attack::PgdOptions(0.1).steps(20).settings(s));
  return 1.0 - r.success_rate();
}

AdversarialTrainerOptions tiny_run(const std::string& dir) {
  return AdversarialTrainerOptions()
      .method(AdversarialMethod::Pgd)
      .steps(2)
      .epochs(3)
      .batch_size(64)
      .eval_samples(64)
      .eval_steps(2)
      .seed(11)
      .checkpoint_dir(dir);
}

}  // namespace

TEST_F(AdversarialTrainerTest, HookStaysInsideTheBallAndRangeAndRestoresTheMode) {
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 64);
  for (auto method : {AdversarialMethod::Pgd, AdversarialMethod::FastFgsm, AdversarialMethod::Trades}) {
    Model model = parry::testing::reference_model().clone();
    model.set_training(true);
    const auto before = state_of(model);
    AdversarialTrainer trainer(AdversarialTrainerOptions().method(method).epsilon(0.1).steps(5));
    const auto batch = trainer.adversarial_batch(model, test.images, test.labels);
    SCOPED_TRACE(train::to_string(method));
    EXPECT_TRUE(model.is_training());  // restored
    // The attack ran in eval mode: BatchNorm statistics untouched, and no parameter gradient exists.
    EXPECT_TRUE(same_state(before, state_of(model)));
    for (const auto& p : model.parameters()) EXPECT_FALSE(p.grad().defined());
    ASSERT_EQ(batch.images.sizes(), test.images.sizes());
    EXPECT_TRUE(torch::equal(batch.labels, test.labels));
    EXPECT_TRUE(batch.adversarial.all().item<bool>());
    const double linf = (batch.images - test.images).abs().max().item<double>();
    EXPECT_LE(linf, 0.1 + 1e-6);
    EXPECT_GT(linf, 0.05);  // it did move
    EXPECT_GE(batch.images.min().item<double>(), 0.0);
    EXPECT_LE(batch.images.max().item<double>(), 1.0);
  }
  // PGD examples fool the undefended model far more often than clean images.
  Model model = parry::testing::reference_model().clone();
  AdversarialTrainer trainer(AdversarialTrainerOptions().steps(10));
  const auto batch = trainer.adversarial_batch(model, test.images, test.labels);
  EXPECT_LT(parry::testing::reference_accuracy(batch.images, test.labels), 0.3);
}

TEST_F(AdversarialTrainerTest, HookMixesCleanAndAdversarialAtTheRatio) {
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 64);
  Model model = parry::testing::reference_model().clone();
  model.set_training(false);
  AdversarialTrainer trainer(AdversarialTrainerOptions().adversarial_fraction(0.25).steps(3));
  const auto batch = trainer.adversarial_batch(model, test.images, test.labels);
  EXPECT_FALSE(model.is_training());
  EXPECT_EQ(batch.adversarial.sum().item<int64_t>(), 16);
  const auto clean_rows = (~batch.adversarial).nonzero().flatten();
  const auto adv_rows = batch.adversarial.nonzero().flatten();
  EXPECT_TRUE(torch::equal(batch.images.index_select(0, clean_rows), test.images.index_select(0, clean_rows)));
  const auto moved = (batch.images - test.images).abs().flatten(1).amax(1);
  EXPECT_GT(moved.index_select(0, adv_rows).min().item<double>(), 0.0);
  // The Fast-FGSM default step is 1.25 ε (Wong et al.); PGD's 2.5 ε / steps.
  EXPECT_DOUBLE_EQ(AdversarialTrainerOptions().method(AdversarialMethod::FastFgsm).epsilon(0.2).step_size(), 0.25);
  EXPECT_DOUBLE_EQ(AdversarialTrainerOptions().epsilon(0.2).steps(10).step_size(), 0.05);
}

TEST_F(AdversarialTrainerTest, TradesLossAddsANonNegativeKlTerm) {
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 32);
  Model model = parry::testing::reference_model().clone();
  model.set_training(false);
  AdversarialTrainer trades(AdversarialTrainerOptions().method(AdversarialMethod::Trades).steps(5).trades_beta(6));
  const auto loss = trades.loss(model, test.images, test.labels);
  torch::NoGradGuard no_grad;
  const double ce = torch::nn::functional::cross_entropy(model.logits(test.images), test.labels).item<double>();
  // The KL term is positive after a KL-maximising attack; with β = 6 it dominates the clean CE of a good model.
  EXPECT_GT(loss.item<double>(), ce + 0.05);
}

// Zhang et al. 2019, eq. (5): CE(f(x), y) + β · KL(f(x) ‖ f(x')), computed by
// hand on the x' that a trainer with the same seed produces.
TEST_F(AdversarialTrainerTest, TradesLossIsCrossEntropyPlusBetaTimesKlFromCleanToAdversarial) {
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 32);
  Model model = parry::testing::reference_model().clone();
  model.set_training(false);
  const auto options = AdversarialTrainerOptions().method(AdversarialMethod::Trades).steps(5).trades_beta(6).seed(7);
  AdversarialTrainer for_batch(options), for_loss(options);
  const auto adversarial = for_batch.adversarial_batch(model, test.images, test.labels).images;
  const double loss = for_loss.loss(model, test.images, test.labels).item<double>();
  torch::NoGradGuard no_grad;
  const auto p_clean = torch::softmax(model.logits(test.images).to(torch::kFloat64), 1);
  const auto p_adv = torch::softmax(model.logits(adversarial).to(torch::kFloat64), 1);
  const double ce = torch::nn::functional::cross_entropy(model.logits(test.images), test.labels).item<double>();
  const double kl_clean_to_adv = (p_clean * (p_clean.log() - p_adv.log())).sum(1).mean().item<double>();
  const double kl_adv_to_clean = (p_adv * (p_adv.log() - p_clean.log())).sum(1).mean().item<double>();
  EXPECT_NEAR(loss, ce + 6 * kl_clean_to_adv, 1e-3 * (1 + loss));
  // The direction matters: the reversed KL gives a measurably different loss.
  EXPECT_GT(std::abs(kl_clean_to_adv - kl_adv_to_clean) * 6, 1e-2);
}

TEST_F(AdversarialTrainerTest, OneEpochOfPgdTrainingRaisesPgdAccuracy) {
  torch::set_num_threads(parry::testing::intra_op_threads(2));
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 2000);
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 300);
  Model model = parry::testing::reference_model().clone();
  const double before = pgd_accuracy(model, test.images, test.labels);
  AdversarialTrainer trainer(AdversarialTrainerOptions().epochs(1).steps(5).eval_samples(0).seed(1));
  const auto summary = trainer.fit(model, train, {});
  ASSERT_EQ(summary.epochs.size(), 1u);
  const double after = pgd_accuracy(model, test.images, test.labels);
  std::printf("PGD-20 accuracy at eps 0.1: undefended %.1f%%, after one PGD-5 epoch on 2000 images %.1f%%\n",
              100 * before, 100 * after);
  EXPECT_GT(after, before + 0.1);
  EXPECT_GT(train::accuracy(model, test.images, test.labels), 0.6);
  EXPECT_FALSE(model.is_training());
}

TEST_F(AdversarialTrainerTest, ResumeContinuesBitForBit) {
  const auto all = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 320);
  const data::LabeledImages train{all.images.slice(0, 0, 256), all.labels.slice(0, 0, 256)};
  const data::LabeledImages held_out{all.images.slice(0, 256), all.labels.slice(0, 256)};
  torch::manual_seed(5);
  Model initial(models::ReferenceCnn{});

  parry::testing::TempDir straight_dir, resumed_dir;
  Model straight = initial.clone();
  const auto expected = AdversarialTrainer(tiny_run(straight_dir.path().string())).fit(straight, train, held_out);

  // Interrupt in the middle of epoch 2, after epoch 1's checkpoint.
  Model resumed = initial.clone();
  auto interrupting = tiny_run(resumed_dir.path().string()).on_progress([](const train::StepProgress& p) {
    if (p.epoch == 2 && p.seen >= 128) throw Interrupted();
  });
  EXPECT_THROW(AdversarialTrainer(interrupting).fit(resumed, train, held_out), Interrupted);
  EXPECT_FALSE(same_state(state_of(resumed), state_of(straight)));
  // Wind the default generator on, as another run in the process would.
  torch::rand({1000});
  const auto summary = AdversarialTrainer(tiny_run(resumed_dir.path().string())).fit(resumed, train, held_out);

  EXPECT_EQ(summary.resumed_from_epoch, 1);
  ASSERT_EQ(summary.epochs.size(), 3u);
  EXPECT_TRUE(same_state(state_of(resumed), state_of(straight)));
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(summary.epochs[i].train_loss, expected.epochs[i].train_loss) << i;
    EXPECT_EQ(summary.epochs[i].adversarial_accuracy, expected.epochs[i].adversarial_accuracy) << i;
  }
  EXPECT_GE(summary.epochs[2].clean_accuracy, 0.0);
  // A finished run resumes to nothing left to do.
  const auto again = AdversarialTrainer(tiny_run(resumed_dir.path().string())).fit(resumed, train, held_out);
  EXPECT_EQ(again.resumed_from_epoch, 3);
  EXPECT_TRUE(same_state(state_of(resumed), state_of(straight)));
}

TEST_F(AdversarialTrainerTest, ResumeWorksForTorchScriptModelsToo) {
  // Loading a TorchScript model replaces its parameter tensors: the resumed
  // optimizer must follow them, or training would continue on stale tensors.
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 128);
  const std::string fixture = parry::testing::fixture_path("tiny_cnn.pt");
  auto options = [](const std::string& dir) {
    return AdversarialTrainerOptions().steps(1).epochs(2).batch_size(64).eval_samples(0).seed(3).checkpoint_dir(dir);
  };
  auto parameters_of = [](const Model& m) {
    std::vector<torch::Tensor> out;
    for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
    return out;
  };
  parry::testing::TempDir straight_dir, resumed_dir;
  Model straight = Model::load_torchscript(fixture);
  AdversarialTrainer(options(straight_dir.path().string())).fit(straight, train, {});
  Model resumed = Model::load_torchscript(fixture);
  auto interrupting = options(resumed_dir.path().string()).on_progress([](const train::StepProgress& p) {
    if (p.epoch == 2) throw Interrupted();
  });
  EXPECT_THROW(AdversarialTrainer(interrupting).fit(resumed, train, {}), Interrupted);
  const auto summary = AdversarialTrainer(options(resumed_dir.path().string())).fit(resumed, train, {});
  EXPECT_EQ(summary.resumed_from_epoch, 1);
  EXPECT_TRUE(same_state(parameters_of(resumed), parameters_of(straight)));
}

TEST_F(AdversarialTrainerTest, CorruptOrForeignCheckpointIsAClearError) {
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 64);
  parry::testing::TempDir dir;
  const std::string path = AdversarialTrainer::checkpoint_path(dir.path().string());
  Model model(models::ReferenceCnn{});
  auto options = tiny_run(dir.path().string()).epochs(1).eval_samples(0);
  AdversarialTrainer(options).fit(model, train, {});
  std::ifstream in(path, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(good.size(), 1000u);

  const auto before = state_of(model);
  // The fuzzer's reproducer of a LibTorch crash in the module source (its first byte picks the reader).
  std::ifstream crash_in(parry::testing::fixture_path("../fuzz/crashes/fuzz_saved_state-checkpoint-type-parser-segv"),
                         std::ios::binary);
  const std::string crash((std::istreambuf_iterator<char>(crash_in)), std::istreambuf_iterator<char>());
  ASSERT_GT(crash.size(), 1000u);
  for (const std::string& bad : {std::string("not a checkpoint"), good.substr(0, good.size() / 2), crash.substr(1)}) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << bad;
    }
    try {
      AdversarialTrainer(options.epochs(2)).fit(model, train, {});
      ADD_FAILURE() << "a corrupt checkpoint was accepted";
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find("checkpoint"), std::string::npos) << e.what();
      parry::testing::expect_public(e.what());
      EXPECT_NE(e.detail().find(path), std::string::npos);
    }
    EXPECT_TRUE(same_state(before, state_of(model)));
  }
  // A valid checkpoint of other options is refused, not silently continued.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << good;
  }
  // Only ε differs from the options the checkpoint was written with.
  auto foreign = options;
  foreign.epochs(1).epsilon(2 * options.epsilon());
  EXPECT_THROW(AdversarialTrainer(foreign).fit(model, train, {}), OptionError);
  // The same options continue from it (here: nothing left to do).
  options.epochs(1);
  EXPECT_EQ(AdversarialTrainer(options).fit(model, train, {}).resumed_from_epoch, 1);
}

TEST_F(AdversarialTrainerTest, BadOptionsAreOptionErrorsNamingTheValue) {
  auto expect_message = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no exception";
    } catch (const OptionError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_message([] { AdversarialTrainerOptions().epsilon(0); }, "but got 0");
  expect_message([] { AdversarialTrainerOptions().epsilon(-0.3); }, "-0.3");
  expect_message([] { AdversarialTrainerOptions().steps(0); }, "steps");
  expect_message([] { AdversarialTrainerOptions().adversarial_fraction(1.5); }, "1.5");
  expect_message([] { AdversarialTrainerOptions().trades_beta(-1); }, "-1");
  expect_message([] { AdversarialTrainerOptions().momentum(1); }, "but got 1");
  expect_message([] { AdversarialTrainerOptions().pixel_range(1, 0); }, "pixel_range");
  expect_message([] { train::adversarial_method_from_string("free"); }, "'free'");
  expect_message(
      [] {
        AdversarialTrainer(AdversarialTrainerOptions().method(AdversarialMethod::Trades).adversarial_fraction(0.5));
      },
      "0.5");
  expect_message([] { AdversarialTrainer(AdversarialTrainerOptions().epochs(3).step_epochs({5})); }, "but got 5");
  // Inputs outside the pixel range and mismatched labels are refused by the hook.
  Model model = parry::testing::reference_model().clone();
  AdversarialTrainer trainer;
  expect_message(
      [&] {
        trainer.adversarial_batch(model, torch::full({2, 1, 28, 28}, 2.0), torch::zeros({2}, torch::kInt64));
      },
      "pixel range");
  expect_message(
      [&] {
        trainer.adversarial_batch(model, torch::rand({2, 1, 28, 28}), torch::zeros({3}, torch::kInt64));
      },
      "labels");
  // A label the model has no class for is a parry error, not a LibTorch one, and the mode is restored.
  model.set_training(true);
  expect_message(
      [&] {
        trainer.adversarial_batch(model, torch::rand({2, 1, 28, 28}), torch::full({2}, 10L));
      },
      "class count 10");
  EXPECT_TRUE(model.is_training());
  model.set_training(false);
  const auto train = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, true, 16);
  // Bad held-out data is refused before any training: the model is untouched, mode included.
  Model fresh(models::ReferenceCnn{});
  ASSERT_TRUE(fresh.is_training());
  const auto before = state_of(fresh);
  data::LabeledImages bad_held_out{train.images * 2, train.labels};
  expect_message([&] { AdversarialTrainer(tiny_run("").eval_samples(8)).fit(fresh, train, bad_held_out); },
                 "held-out data");
  EXPECT_TRUE(same_state(before, state_of(fresh)));
  EXPECT_TRUE(fresh.is_training());
  // An exception in the middle of training (here from the progress callback) leaves it in eval mode.
  auto throwing =
      tiny_run("").eval_samples(0).on_progress([](const train::StepProgress&) { throw std::runtime_error("stop"); });
  EXPECT_THROW(AdversarialTrainer(throwing).fit(fresh, train, {}), std::runtime_error);
  EXPECT_FALSE(fresh.is_training());
}
