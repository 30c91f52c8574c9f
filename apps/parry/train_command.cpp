// parry train: train a model (the user's TorchScript file or the reference CNN)
// plainly, by distillation or adversarially, on --data, and save it.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "commands.hpp"

namespace fs = std::filesystem;

namespace parry::cli {

namespace {

// The model to train: a fresh copy of --model (each call loads the file
// again, so a teacher and a student start from the same weights), or a new
// reference CNN (Fashion-MNIST's 1×28×28 only).
Model fresh_model(const TrainOptions& opts, const data::ImageShape& shape) {
  if (!opts.model.empty()) {
    if (opts.width != 1) throw OptionError("--width applies to a new reference CNN, not to your --model");
    if (opts.dropout != 0.5) throw OptionError("--dropout applies to a new reference CNN, not to your --model");
    return load_model(opts.model);
  }
  if (shape.channels != 1 || shape.height != 28 || shape.width != 28) {
    throw OptionError("the reference CNN takes 1×28×28 images but the data has " + std::to_string(shape.channels) +
                      "×" + std::to_string(shape.height) + "×" + std::to_string(shape.width) +
                      "; give your own TorchScript model with --model");
  }
  const models::ReferenceCnn net(models::ReferenceCnnOptions().width(opts.width).dropout(opts.dropout));
  // Read back from the network (its forward() uses these), so the CLI test sees what is trained.
  std::fprintf(stderr, "a new reference CNN: width %lld, dropout %g\n", static_cast<long long>(net->options().width()),
               net->options().dropout());
  return Model(net);
}

// The training split of --data (or --train-data), whole, and the test split.
struct TrainingData {
  data::LabeledImages train;
  std::shared_ptr<const data::ImageSource> test;  // may be null
  data::ImageShape shape;
  std::string name;
};

TrainingData training_data(const CommonOptions& common, int64_t limit) {
  const auto splits = open_splits(common);
  if (!splits.train) {
    throw OptionError(
        "training needs a training split: give --train-data, or a --data directory with train/ and test/");
  }
  TrainingData out;
  const int64_t n = limit > 0 ? std::min(limit, splits.train->size()) : splits.train->size();
  print_progress("reading " + std::to_string(n) + " training images of " + splits.train->description());
  // The trainers shuffle the whole split in memory; --limit takes a random
  // subset (an image folder lists its images class by class).
  out.train = limit > 0 ? data::shuffled(splits.train, 0)->read(0, n) : splits.train->read(0, n);
  out.test = splits.test;
  out.shape = splits.train->shape();
  out.name = splits.train->name();
  return out;
}

// Rank 0 reports progress; the other ranks of a data-parallel run stay quiet.
std::function<void(const train::StepProgress&)> progress_for(const TrainOptions& opts) {
  return opts.rank == 0 ? train::progress_printer() : std::function<void(const train::StepProgress&)>();
}

// The process group of --world-size/--rank/--master, or null for one process.
std::shared_ptr<train::ProcessGroup> process_group(const TrainOptions& opts) {
  if (opts.world_size == 1) return nullptr;
  const auto colon = opts.master.rfind(':');
  int64_t port = 0;
  try {
    if (colon == std::string::npos || colon == 0) throw std::invalid_argument("no port");
    size_t used = 0;
    port = std::stoll(opts.master.substr(colon + 1), &used);
    if (used != opts.master.size() - colon - 1) throw std::invalid_argument("trailing characters");
  } catch (const std::exception&) {
    throw OptionError("--master must be HOST:PORT, but got '" + opts.master + "'");
  }
  if (opts.rank == 0) {
    std::fprintf(stderr, "rank 0 of %lld: waiting for the other ranks at %s\n", static_cast<long long>(opts.world_size),
                 opts.master.c_str());
  }
  return train::ProcessGroup::connect(train::ProcessGroupOptions()
                                          .world_size(opts.world_size)
                                          .rank(opts.rank)
                                          .master_host(opts.master.substr(0, colon))
                                          .master_port(port)
                                          .host_store(!opts.master_hosted)
                                          .timeout_seconds(opts.dist_timeout)
                                          .join_timeout_seconds(opts.dist_timeout));
}

void save_model(const Model& model, const std::string& out) {
  fs::create_directories(fs::absolute(out).parent_path());
  model.save(out);  // TorchScript models as TorchScript archives, the reference CNN as its state
}

// Papernot et al. 2016: teacher and student trained at T; the student is returned.
Model train_distilled(const TrainingData& data, const TrainOptions& opts,
                      const std::shared_ptr<train::ProcessGroup>& group) {
  std::fprintf(stderr, "defensive distillation at T = %g on %lld images (%lld epochs per stage)\n", opts.temperature,
               static_cast<long long>(data.train.size()), static_cast<long long>(opts.epochs));
  torch::manual_seed(opts.seed);
  Model teacher = fresh_model(opts, data.shape), student = fresh_model(opts, data.shape);
  const auto summary = train::Distillation(train::DistillationOptions()
                                               .temperature(opts.temperature)
                                               .epochs(opts.epochs)
                                               .batch_size(opts.batch)
                                               .learning_rate(opts.lr)
                                               .seed(opts.seed)
                                               .process_group(group)
                                               .on_progress(progress_for(opts)))
                           .fit(teacher, student, data.train.images, data.train.labels);
  std::fprintf(stderr, "distilled in %.1f s; student agrees with the teacher on %.2f%% of the training images\n",
               summary.seconds, 100.0 * summary.label_agreement);
  return student;
}

// Madry et al. 2017 / Wong et al. 2020 / Zhang et al. 2019, resumable with --checkpoint-dir.
Model train_adversarial(const TrainingData& data, const TrainOptions& opts,
                        const std::shared_ptr<train::ProcessGroup>& group) {
  const auto method = train::adversarial_method_from_string(opts.attack);
  std::fprintf(stderr, "%s adversarial training at eps %g on %lld images (%lld epochs)\n", train::to_string(method),
               opts.epsilon, static_cast<long long>(data.train.size()), static_cast<long long>(opts.epochs));
  torch::manual_seed(opts.seed);
  Model model = fresh_model(opts, data.shape);
  data::LabeledImages held_out;
  if (data.test) held_out = data::shuffled(data.test, 0)->read(0, std::min<int64_t>(500, data.test->size()));
  train::AdversarialTrainer trainer(train::AdversarialTrainerOptions()
                                        .method(method)
                                        .epsilon(opts.epsilon)
                                        .steps(opts.steps)
                                        .epochs(opts.epochs)
                                        .batch_size(opts.batch)
                                        .learning_rate(opts.lr)
                                        .seed(opts.seed)
                                        .eval_samples(held_out.size())
                                        .checkpoint_dir(opts.checkpoint_dir)
                                        .process_group(group)
                                        .on_progress(progress_for(opts)));
  const auto summary =
      trainer.fit(model, data.train, held_out,
                  opts.rank == 0 ? train::epoch_printer() : std::function<void(const train::EpochReport&)>());
  if (summary.resumed_from_epoch > 0 && opts.rank == 0) {
    std::fprintf(stderr, "resumed from epoch %lld of %s\n", static_cast<long long>(summary.resumed_from_epoch),
                 opts.checkpoint_dir.c_str());
  }
  return model;
}

Model train_plain(const TrainingData& data, const TrainOptions& opts,
                  const std::shared_ptr<train::ProcessGroup>& group = nullptr) {
  std::fprintf(stderr, "training %s on %lld images of %s (%lld epochs)%s\n",
               opts.model.empty() ? "the reference CNN" : opts.model.c_str(), static_cast<long long>(data.train.size()),
               data.name.c_str(), static_cast<long long>(opts.epochs),
               opts.method == "gaussian" ? (" with Gaussian noise at sigma " + detail::format_number(opts.sigma)).c_str()
                                         : "");
  torch::manual_seed(opts.seed);
  Model model = fresh_model(opts, data.shape);
  const auto summary = train::fit_classifier(model, data.train.images, data.train.labels,
                                             train::ClassifierTrainerOptions()
                                                 .epochs(opts.epochs)
                                                 .batch_size(opts.batch)
                                                 .learning_rate(opts.lr)
                                                 .seed(opts.seed)
                                                 .random_flip(opts.augment)
                                                 .gaussian_noise(opts.method == "gaussian" ? opts.sigma : 0.0)
                                                 .process_group(group)
                                                 .on_progress(progress_for(opts)));
  std::fprintf(stderr, "trained in %.1f s, final loss %.4f\n", summary.seconds, summary.final_loss);
  return model;
}

}  // namespace

models::ReferenceCnn train_reference(const CommonOptions& common, const TrainOptions& opts) {
  TrainOptions plain = opts;
  plain.model.clear();  // a new reference CNN
  save_model(train_plain(training_data(common, opts.limit), plain), opts.out);
  return models::load_reference_cnn(opts.out);
}

namespace {

int run_train(const CommonOptions& common, const TrainOptions& opts) {
  if (opts.nproc > 0) {
    if (opts.world_size != 1) throw OptionError("give either --nproc or --world-size, not both");
    return launch_local_ranks(opts);
  }
  if (opts.rank >= opts.world_size) {
    throw OptionError("--rank must lie in [0, --world-size = " + std::to_string(opts.world_size) + "), but got " +
                      std::to_string(opts.rank));
  }
  const auto group = process_group(opts);
  const auto data = training_data(common, opts.limit);
  Model model = opts.method == "distilled"     ? train_distilled(data, opts, group)
                : opts.method == "adversarial" ? train_adversarial(data, opts, group)
                                               : train_plain(data, opts, group);
  model.set_training(false);
  if (group && opts.rank == 0) {
    std::fprintf(stderr, "rank 0: %.1f s in %lld collectives (communication and waiting for other ranks)\n",
                 group->communication_seconds(), static_cast<long long>(group->collectives()));
  }
  if (opts.rank != 0) return 0;  // rank 0 saves and evaluates the (identical) model
  save_model(model, opts.out);
  if (data.test) {
    std::printf("test accuracy: %.2f%% on %lld images of %s\n", 100.0 * streamed_accuracy(model, *data.test),
                static_cast<long long>(data.test->size()), data.test->name().c_str());
  }
  std::printf("saved: %s\n", opts.out.c_str());
  return 0;
}

}  // namespace

Command add_train_command(CLI::App& app, const CommonOptions& common) {
  auto opts = std::make_shared<TrainOptions>();
  auto& train_opts = *opts;
  auto* train_cmd = app.add_subcommand(
      "train", "Train a model (your TorchScript file, or the reference CNN on Fashion-MNIST) on --data and save it");
  train_cmd->add_option("--model", train_opts.model,
                        "TorchScript model to train from its current weights (saved as TorchScript; default: a new "
                        "reference CNN)");
  train_cmd->add_option("--width", train_opts.width,
                        "Width multiplier of a new reference CNN, 1-16 (2: the wider model for adversarial "
                        "training, about 4x the compute)")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  train_cmd->add_option("--dropout", train_opts.dropout,
                        "Dropout probability in [0, 1) before a new reference CNN's last layer (0: the measured "
                        "recipe for adversarial training at --width 2)")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            const double p = std::strtod(value.c_str(), nullptr);
            return p >= 0.0 && p < 1.0 ? "" : "must be in [0, 1), but got " + value;
          },
          "in [0, 1)"))
      ->capture_default_str();
  train_cmd->add_option("--out", train_opts.out, "Where to save the model")->required();
  train_cmd->add_option("--epochs", train_opts.epochs, "Epochs")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--batch", train_opts.batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--lr", train_opts.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--limit", train_opts.limit, "Use only the first N training images (0 = all)")
      ->check(CLI::NonNegativeNumber);
  train_cmd->add_option("--seed", train_opts.seed, "Random seed")->capture_default_str();
  train_cmd->add_flag("!--no-augment", train_opts.augment, "Train without random left-right flips (plain)");
  train_cmd->add_option("--method", train_opts.method,
                        "plain, distilled (Papernot 2016), adversarial, or gaussian (noise augmentation for randomized "
                        "smoothing, Cohen 2019)")
      ->check(CLI::IsMember({"plain", "distilled", "adversarial", "gaussian"}))
      ->capture_default_str();
  train_cmd->add_option("--sigma", train_opts.sigma,
                        "gaussian: standard deviation of the training noise, in [0, 1] pixel units (use the sigma "
                        "the smoothed classifier will certify with)")
      ->check(CLI::Range(0.0, 10.0))
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
  const char* distributed = "Data-parallel training (docs/training.md)";
  train_cmd->add_option("--world-size", train_opts.world_size, "Number of ranks of a data-parallel run")
      ->check(CLI::Range(1, 4096))
      ->group(distributed)
      ->capture_default_str();
  train_cmd->add_option("--rank", train_opts.rank, "This process's rank, in [0, --world-size)")
      ->check(CLI::NonNegativeNumber)
      ->group(distributed)
      ->capture_default_str();
  train_cmd
      ->add_option("--master", train_opts.master,
                   "HOST:PORT of the rendezvous store; rank 0 listens there (trusted networks only)")
      ->group(distributed)
      ->capture_default_str();
  train_cmd->add_option("--nproc", train_opts.nproc, "Start this many local ranks on loopback (one machine)")
      ->check(CLI::Range(1, 64))
      ->group(distributed);
  train_cmd
      ->add_option("--dist-timeout", train_opts.dist_timeout,
                   "Seconds a rank waits for the others before the run fails, naming the rank that stopped")
      ->check(CLI::Range(1.0, 86400.0))
      ->group(distributed)
      ->capture_default_str();
  train_cmd->add_flag("--master-hosted", train_opts.master_hosted, "The store is hosted by a launcher (--nproc)")
      ->group("");

  return {train_cmd, [&common, opts] { return run_train(common, *opts); }};
}

}  // namespace parry::cli
