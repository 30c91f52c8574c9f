// parry train: train the reference CNN (plain, distilled or adversarially) and save it.
#include <cstdio>
#include <filesystem>

#include "commands.hpp"

namespace fs = std::filesystem;

namespace parry::cli {

namespace {

// Papernot et al. 2016: teacher and student trained at T; the student is saved.
models::ReferenceCnn train_distilled(const CommonOptions& common, const TrainOptions& opts) {
  const auto train = data::load_fashion_mnist(common.data_dir, /*train=*/true, opts.limit);
  std::fprintf(stderr, "defensive distillation at T = %g on %lld images (%lld epochs per stage)\n", opts.temperature,
               static_cast<long long>(train.images.size(0)), static_cast<long long>(opts.epochs));
  torch::manual_seed(opts.seed);
  models::ReferenceCnn teacher_net, student_net;
  Model teacher(teacher_net), student(student_net);
  const auto summary = train::Distillation(train::DistillationOptions()
                                               .temperature(opts.temperature)
                                               .epochs(opts.epochs)
                                               .batch_size(opts.batch)
                                               .learning_rate(opts.lr)
                                               .seed(opts.seed)
                                               .on_progress(train::progress_printer()))
                           .fit(teacher, student, train.images, train.labels);
  std::fprintf(stderr, "distilled in %.1f s; student agrees with the teacher on %.2f%% of the training images\n",
               summary.seconds, 100.0 * summary.label_agreement);
  fs::create_directories(fs::absolute(opts.out).parent_path());
  student.save(opts.out);
  return student_net;
}

// Madry et al. 2017 / Wong et al. 2020 / Zhang et al. 2019, resumable with --checkpoint-dir.
models::ReferenceCnn train_adversarial(const CommonOptions& common, const TrainOptions& opts) {
  const auto train = data::load_fashion_mnist(common.data_dir, /*train=*/true, opts.limit);
  const auto test = data::load_fashion_mnist(common.data_dir, /*train=*/false);
  const auto method = train::adversarial_method_from_string(opts.attack);
  std::fprintf(stderr, "%s adversarial training at eps %g on %lld images (%lld epochs)\n", train::to_string(method),
               opts.epsilon, static_cast<long long>(train.images.size(0)), static_cast<long long>(opts.epochs));
  torch::manual_seed(opts.seed);
  models::ReferenceCnn net;
  Model model(net);
  train::AdversarialTrainer trainer(train::AdversarialTrainerOptions()
                                        .method(method)
                                        .epsilon(opts.epsilon)
                                        .steps(opts.steps)
                                        .epochs(opts.epochs)
                                        .batch_size(opts.batch)
                                        .learning_rate(opts.lr)
                                        .seed(opts.seed)
                                        .eval_samples(std::min<int64_t>(500, test.images.size(0)))
                                        .checkpoint_dir(opts.checkpoint_dir)
                                        .on_progress(train::progress_printer()));
  trainer.fit(model, train, test, train::epoch_printer());
  fs::create_directories(fs::absolute(opts.out).parent_path());
  model.save(opts.out);
  return net;
}

}  // namespace

models::ReferenceCnn train_reference(const CommonOptions& common, const TrainOptions& opts) {
  const auto train = data::load_fashion_mnist(common.data_dir, /*train=*/true, opts.limit);
  std::fprintf(stderr, "training the reference CNN on %lld Fashion-MNIST images (%lld epochs, %d threads)\n",
               static_cast<long long>(train.images.size(0)), static_cast<long long>(opts.epochs), common.threads);
  torch::manual_seed(opts.seed);
  models::ReferenceCnn net;
  Model model(net);
  const auto summary = train::fit_classifier(model, train.images, train.labels,
                                             train::ClassifierTrainerOptions()
                                                 .epochs(opts.epochs)
                                                 .batch_size(opts.batch)
                                                 .learning_rate(opts.lr)
                                                 .seed(opts.seed)
                                                 .random_flip(opts.augment)
                                                 .on_progress(train::progress_printer()));
  std::fprintf(stderr, "trained in %.1f s, final loss %.4f\n", summary.seconds, summary.final_loss);
  fs::create_directories(fs::absolute(opts.out).parent_path());
  model.save(opts.out);
  return net;
}

namespace {

int run_train(const CommonOptions& common, const TrainOptions& opts) {
  auto net = opts.method == "distilled"     ? train_distilled(common, opts)
             : opts.method == "adversarial" ? train_adversarial(common, opts)
                                            : train_reference(common, opts);
  const auto test = data::load_fashion_mnist(common.data_dir, /*train=*/false);
  std::printf("test accuracy: %.2f%% on %lld images\nsaved: %s\n",
              100.0 * train::accuracy(Model(net), test.images, test.labels),
              static_cast<long long>(test.images.size(0)), opts.out.c_str());
  return 0;
}

}  // namespace

Command add_train_command(CLI::App& app, const CommonOptions& common) {
  auto opts = std::make_shared<TrainOptions>();
  auto& train_opts = *opts;
  auto* train_cmd = app.add_subcommand("train", "Train the reference CNN on Fashion-MNIST and save it");
  train_cmd->add_option("--out", train_opts.out, "Where to save the model")->required();
  train_cmd->add_option("--epochs", train_opts.epochs, "Epochs")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--batch", train_opts.batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--lr", train_opts.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--limit", train_opts.limit, "Use only the first N training images (0 = all)")
      ->check(CLI::NonNegativeNumber);
  train_cmd->add_option("--seed", train_opts.seed, "Random seed")->capture_default_str();
  train_cmd->add_flag("!--no-augment", train_opts.augment, "Train without random left-right flips (plain)");
  train_cmd->add_option("--method", train_opts.method, "plain, distilled (Papernot 2016) or adversarial")
      ->check(CLI::IsMember({"plain", "distilled", "adversarial"}))
      ->capture_default_str();
  train_cmd->add_option("--temperature", train_opts.temperature, "Distillation temperature T")
      ->check(CLI::Range(1.0, 1000.0))
      ->capture_default_str();
  train_cmd->add_option("--attack", train_opts.attack, "Adversarial training method: pgd, fast_fgsm or trades")
      ->check(CLI::IsMember({"pgd", "fast_fgsm", "trades"}))
      ->capture_default_str();
  train_cmd->add_option("--epsilon", train_opts.epsilon, "Adversarial training L-inf budget, in [0, 1] pixel units")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  train_cmd->add_option("--steps", train_opts.steps, "Attack steps for pgd and trades")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train_cmd->add_option("--checkpoint-dir", train_opts.checkpoint_dir,
                        "Adversarial training: checkpoint after every epoch and resume from it when rerun");

  return {train_cmd, [&common, opts] { return run_train(common, *opts); }};
}

}  // namespace parry::cli
