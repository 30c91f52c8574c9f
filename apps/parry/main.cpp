// The parry command line.
//   parry train  train the reference CNN on Fashion-MNIST and save it
//   parry demo   the main job: load (or train and cache) the reference model,
//                report its accuracy and serve defended predictions
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "parry/parry.hpp"

namespace fs = std::filesystem;
using namespace parry;

namespace {

struct CommonOptions {
  std::string data_dir = data::kDebianFashionMnistDir;
  int threads = 2;
};

std::string default_cache_dir() {
  if (const char* env = std::getenv("PARRY_CACHE_DIR"); env && *env) return env;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/parry";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/parry";
  return ".parry-cache";
}

struct TrainOptions {
  std::string out;
  int64_t epochs = 15;
  int64_t batch = 128;
  double lr = 1e-3;
  int64_t limit = 0;
  uint64_t seed = 0;
  bool augment = true;
};

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

int run_train(const CommonOptions& common, const TrainOptions& opts) {
  auto net = train_reference(common, opts);
  const auto test = data::load_fashion_mnist(common.data_dir, /*train=*/false);
  std::printf("test accuracy: %.2f%% on %lld images\nsaved: %s\n",
              100.0 * train::accuracy(Model(net), test.images, test.labels),
              static_cast<long long>(test.images.size(0)), opts.out.c_str());
  return 0;
}

int run_demo(const CommonOptions& common, std::string cache_dir) {
  if (cache_dir.empty()) cache_dir = default_cache_dir();
  const std::string model_path = cache_dir + "/reference_cnn.pt";
  models::ReferenceCnn net{nullptr};
  if (fs::is_regular_file(model_path)) {
    std::printf("loading the cached reference model from %s\n", model_path.c_str());
    net = models::load_reference_cnn(model_path);
  } else {
    std::printf("no cached reference model yet: training one (first run only)\n");
    std::fflush(stdout);
    TrainOptions opts;
    opts.out = model_path;
    net = train_reference(common, opts);
    net->eval();
  }
  Model model(net);
  const auto test = data::load_fashion_mnist(common.data_dir, /*train=*/false);
  std::printf("reference model: test accuracy %.2f%% on %lld Fashion-MNIST test images\n",
              100.0 * train::accuracy(model, test.images, test.labels), static_cast<long long>(test.images.size(0)));

  // A defended deployment: per-client throttle, label-only answers, and a
  // confidence detector calibrated for a 5% false-positive rate on held-out data.
  auto detector = std::make_shared<detect::SoftmaxConfidence>();
  const auto held_out = test.images.slice(0, 0, 5000);
  const auto report = detector->calibrate(held_out, model, 0.05);
  Guard guard(model, InputSpec(1, 28, 28).max_batch(64));
  guard.add_gate(std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(50).burst(16)))
      .add_detector(detector)
      .set_output_policy(std::make_shared<conceal::LabelOnly>());
  std::printf("\n%s", guard.describe().c_str());
  std::printf(
      "detector calibrated on %lld clean images: threshold %.4f, false-positive rate %.2f%% (target %.0f%%)\n\n",
      static_cast<long long>(report.samples), report.threshold, 100 * report.achieved_fpr, 100 * report.target_fpr);

  const auto sample = test.images.slice(0, 5000, 5008);
  const Response response = guard.predict(sample, RequestContext{"demo-client"});
  std::printf("defended prediction for 8 test images (client 'demo-client'): verdict %s\n",
              to_string(response.verdict));
  for (size_t i = 0; i < response.labels.size(); ++i) {
    const auto truth = test.labels[5000 + static_cast<int64_t>(i)].item<int64_t>();
    std::printf("  image %zu: %-12s (true: %-12s)%s\n", i, data::fashion_mnist_classes()[response.labels[i]],
                data::fashion_mnist_classes()[truth], response.flagged[i] ? "  [flagged: low confidence]" : "");
  }
  std::printf("scores returned to the caller: %s\n", response.scores.defined() ? "yes" : "none (label-only policy)");
  const Response throttled = guard.predict(test.images.slice(0, 5008, 5024), RequestContext{"demo-client"});
  std::printf(
      "a second burst of 16 images from the same client right away: verdict %s, reason %s, retry after %.2f s\n",
      to_string(throttled.verdict), throttled.reason.c_str(), throttled.retry_after_seconds);
  try {
    guard.predict(torch::full({1, 28, 28}, 2.0f), RequestContext{"another-client"});
  } catch (const InputError& e) {
    std::printf("an out-of-range image is refused: \"%s\"\n", e.public_message());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"parry: defend LibTorch image classifiers against adversarial examples"};
  app.require_subcommand(1);
  CommonOptions common;
  app.add_option("--data", common.data_dir, "Fashion-MNIST directory (IDX files, .gz or plain)")->capture_default_str();
  app.add_option("--threads", common.threads, "LibTorch intra-op threads")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();

  TrainOptions train_opts;
  auto* train_cmd = app.add_subcommand("train", "Train the reference CNN on Fashion-MNIST and save it");
  train_cmd->add_option("--out", train_opts.out, "Where to save the model")->required();
  train_cmd->add_option("--epochs", train_opts.epochs, "Epochs")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--batch", train_opts.batch, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--lr", train_opts.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  train_cmd->add_option("--limit", train_opts.limit, "Use only the first N training images (0 = all)")
      ->check(CLI::NonNegativeNumber);
  train_cmd->add_option("--seed", train_opts.seed, "Random seed")->capture_default_str();
  train_cmd->add_flag("!--no-augment", train_opts.augment, "Train without random left-right flips");

  std::string cache_dir;
  auto* demo_cmd = app.add_subcommand("demo", "Train or load the reference model and show a defended deployment");
  demo_cmd->add_option("--cache", cache_dir, "Cache directory (default $PARRY_CACHE_DIR or ~/.cache/parry)");

  CLI11_PARSE(app, argc, argv);
  configure_runtime(RuntimeOptions().threads(common.threads));
  try {
    if (*train_cmd) return run_train(common, train_opts);
    if (*demo_cmd) return run_demo(common, cache_dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "parry: %s\n  detail: %s\n", e.public_message(), e.detail().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parry: %s\n", e.what());
    return 1;
  }
  return 0;
}
