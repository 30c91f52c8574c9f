// The parry command line.
//   parry train      train the reference CNN on Fashion-MNIST (plain,
//                    distilled or adversarially trained) and save it
//   parry eval       evaluate a model under a defense config; write the report
//   parry calibrate  fit and calibrate a config's detectors; save them beside it
//   parry predict    defended label-only predictions for image or IDX files
//   parry components the defense components a config can use, with their options
//   parry demo       the main job: train (first run) or load the reference
//                    model, evaluate each defense family, write the report
#include <CLI/CLI.hpp>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "parry/detail/chunks.hpp"
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
  std::string method = "plain";  // plain | distilled | adversarial
  double temperature = 20.0;     // distilled
  std::string attack = "pgd";    // adversarial: pgd | fast_fgsm | trades
  double epsilon = 0.1;          // adversarial, L∞ in [0, 1] pixels
  int64_t steps = 7;             // adversarial PGD/TRADES steps
  std::string checkpoint_dir;    // adversarial: resumable checkpoints
};

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
  auto net = opts.method == "distilled"     ? train_distilled(common, opts)
             : opts.method == "adversarial" ? train_adversarial(common, opts)
                                            : train_reference(common, opts);
  const auto test = data::load_fashion_mnist(common.data_dir, /*train=*/false);
  std::printf("test accuracy: %.2f%% on %lld images\nsaved: %s\n",
              100.0 * train::accuracy(Model(net), test.images, test.labels),
              static_cast<long long>(test.images.size(0)), opts.out.c_str());
  return 0;
}

// A saved reference model (parry::Model::save) or a TorchScript file.
Model load_model(const std::string& path) {
  if (!fs::is_regular_file(path)) throw IoError("model file not found", "no such file '" + path + "'");
  try {
    auto net = models::load_reference_cnn(path);
    return Model(net);
  } catch (const IoError&) {
    return Model::load_torchscript(path);  // IoError if it is neither
  }
}

std::string state_dir_for(const std::string& config_path) {
  return config_path + ".state";
}

std::string state_file(const std::string& dir, const config::DefenseSpec& d, size_t index) {
  std::string name = d.name;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  }
  return dir + "/" + name + "-" + std::to_string(index) + "-" + d.detectors[index].type + ".pt";
}

void print_progress(const std::string& line) {
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

eval::EvaluationData load_data(const CommonOptions& common, int64_t train_limit) {
  eval::EvaluationData data;
  data.train = data::load_fashion_mnist(common.data_dir, /*train=*/true, train_limit);
  data.test = data::load_fashion_mnist(common.data_dir, /*train=*/false);
  return data;
}

int64_t train_images_needed(const config::Config& config) {
  int64_t needed = 1000;
  for (const auto& d : config.defenses) {
    for (const auto& det : d.detectors) needed = std::max(needed, det.fit_images + det.combiner_images);
  }
  return std::min<int64_t>(needed, 60000);
}

struct EvalOptions {
  std::string model, config, out = "parry-report";
  int64_t images = 0;
};

int run_eval(const CommonOptions& common, const EvalOptions& opts) {
  const Model model = load_model(opts.model);
  auto config = config::load_config(opts.config, model);
  if (opts.images > 0) config.evaluation.images = opts.images;
  const auto data = load_data(common, train_images_needed(config));
  // Detectors saved by `parry calibrate` beside the config are used as they are.
  const std::string state = state_dir_for(opts.config);
  bool ready = fs::is_directory(state);
  if (ready) {
    for (auto& d : config.defenses) {
      for (size_t i = 0; i < d.detectors.size(); ++i) d.detectors[i].detector->load(state_file(state, d, i));
    }
    print_progress("using calibrated detectors from " + state);
  }
  const auto evaluation = eval::evaluate(config, model, data, print_progress, ready);
  eval::write_report(evaluation, opts.out);
  std::printf("%s\nreport: %s/report.html (also report.md, metrics.json, *.png)\n",
              eval::summary_table(evaluation).c_str(), opts.out.c_str());
  return 0;
}

int run_calibrate(const CommonOptions& common, const EvalOptions& opts) {
  const Model model = load_model(opts.model);
  auto config = config::load_config(opts.config, model);
  const auto data = load_data(common, train_images_needed(config));
  const std::string state = state_dir_for(opts.config);
  fs::create_directories(state);
  for (auto& d : config.defenses) {
    print_progress("defense " + d.name);
    eval::prepare_detectors(d, model, data, config.evaluation, print_progress);
    for (size_t i = 0; i < d.detectors.size(); ++i) {
      d.detectors[i].detector->save(state_file(state, d, i));
      std::printf("saved %s\n", state_file(state, d, i).c_str());
    }
  }
  return 0;
}

struct PredictOptions {
  std::string model, config, defense;
  std::vector<std::string> inputs;
};

int run_predict(const CommonOptions&, const PredictOptions& opts) {
  const Model model = load_model(opts.model);
  std::shared_ptr<const Guard> guard;
  if (!opts.config.empty()) {
    auto config = config::load_config(opts.config, model);
    const config::DefenseSpec* chosen = nullptr;
    for (auto& d : config.defenses) {
      if (opts.defense.empty() ? !chosen : d.name == opts.defense) chosen = &d;
    }
    if (!chosen) throw OptionError("no defense named '" + opts.defense + "' in " + opts.config);
    auto spec = *chosen;
    const std::string state = state_dir_for(opts.config);
    for (size_t i = 0; i < spec.detectors.size(); ++i) {
      spec.detectors[i].detector->load(state_file(state, spec, i));  // run `parry calibrate` first
    }
    guard = spec.build_guard(model);
  } else {
    guard = std::make_shared<const Guard>(model, InputSpec(1, 28, 28));
  }
  const auto& names = data::fashion_mnist_classes();
  auto print = [&](const std::string& what, const Response& r) {
    for (size_t i = 0; i < r.labels.size(); ++i) {
      std::printf("%s%s: %s (%lld)%s\n", what.c_str(),
                  r.labels.size() > 1 ? ("[" + std::to_string(i) + "]").c_str() : "",
                  r.labels[i] >= 0 && r.labels[i] < 10 ? names[r.labels[i]] : "?", static_cast<long long>(r.labels[i]),
                  !r.flagged.empty() && r.flagged[i] ? " [flagged]" : "");
    }
    if (r.verdict == Verdict::Rejected) std::printf("%s: rejected (%s)\n", what.c_str(), r.reason.c_str());
  };
  int failures = 0;
  for (const auto& path : opts.inputs) {
    try {
      const bool idx = path.find("idx") != std::string::npos || path.find("ubyte") != std::string::npos;
      if (idx) {
        auto images = data::read_idx(path);
        if (images.dim() == 3) images = images.unsqueeze(1);
        images = images.to(torch::kFloat32) / 255.0;
        parry::detail::for_each_chunk(images.size(0), guard->input_spec().max_batch(), [&](int64_t begin, int64_t end) {
          print(path + "#" + std::to_string(begin), guard->predict(images.slice(0, begin, end), RequestContext{"cli"}));
        });
      } else {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw IoError("input file not found", "cannot read '" + path + "'");
        std::stringstream bytes;
        bytes << in.rdbuf();
        print(path, parry::data::predict_image(*guard, bytes.str(), RequestContext{"cli"}));
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), e.public_message());
      ++failures;
    }
  }
  return failures ? 1 : 0;
}

// The demo's configuration: each family alone and combined, sized so that a
// later run takes about two minutes on 2 cores.
const char* kDemoConfig = R"({
  "evaluation": {"images": 150, "epsilons": [0.05, 0.1], "roc_epsilon": 0.1, "calibration_images": 500,
                 "latency_repeats": 20, "seed": 0},
  "attacks": [{"type": "fgsm"}, {"type": "pgd", "steps": 10, "step_ratio": 0.25, "eot_samples": 2}],
  "defenses": [
    {"name": "undefended", "output": {"policy": "full"}},
    {"name": "concealment", "gates": [{"type": "throttle", "rate": 50, "burst": 64}],
     "output": {"policy": "label_only"}},
    {"name": "preprocessing", "preprocess": [{"type": "bit_depth", "bits": 4}, {"type": "median_smoothing", "window": 2}]},
    {"name": "detection", "detectors": [{"type": "uncertainty_density", "samples": 30, "fit_images": 5000,
                                         "combiner_images": 200}]},
    {"name": "combined", "gates": [{"type": "throttle", "rate": 50, "burst": 64}],
     "preprocess": [{"type": "bit_depth", "bits": 4}],
     "detectors": [{"type": "uncertainty_density", "samples": 30, "fit_images": 5000, "combiner_images": 200}],
     "output": {"policy": "label_only"}}
  ]
})";

int run_demo(const CommonOptions& common, std::string cache_dir, const std::string& out) {
  const auto started = std::chrono::steady_clock::now();
  if (cache_dir.empty()) cache_dir = default_cache_dir();
  const std::string model_path = cache_dir + "/reference_cnn.pt";
  models::ReferenceCnn net{nullptr};
  if (fs::is_regular_file(model_path)) {
    std::printf("loading the cached reference model from %s\n", model_path.c_str());
    net = models::load_reference_cnn(model_path);
  } else {
    std::printf("no cached reference model yet: training one (first run only, about 4 minutes)\n");
    std::fflush(stdout);
    TrainOptions opts;
    opts.out = model_path;
    net = train_reference(common, opts);
    net->eval();
  }
  const Model model(net);
  auto config = config::parse_config(kDemoConfig, model);
  const auto data = load_data(common, 5200);
  std::printf("reference model: test accuracy %.2f%% on %lld Fashion-MNIST test images\n",
              100.0 * train::accuracy(model, data.test.images, data.test.labels),
              static_cast<long long>(data.test.images.size(0)));
  std::printf("evaluating %zu defenses against FGSM and PGD on %lld test images (progress on stderr)\n",
              config.defenses.size(), static_cast<long long>(config.evaluation.images));
  std::fflush(stdout);
  const auto evaluation = eval::evaluate(config, model, data, print_progress);
  eval::write_report(evaluation, out);
  std::printf("\n%s\n", eval::summary_table(evaluation).c_str());
  std::printf(
      "Each attack cell: accuracy (right label or flagged) against an attacker who does not know the defense / one "
      "who attacks it (BPDA, EOT, detector-aware).\n");

  // One defended request, as a service would answer it.
  auto& combined = config.defenses.back();
  const auto guard = combined.build_guard(model);
  const Response response = guard->predict(data.test.images.slice(0, 9000, 9004), RequestContext{"demo-client"});
  std::printf("\na label-only answer from the combined Guard for 4 images: verdict %s, labels",
              to_string(response.verdict));
  for (size_t i = 0; i < response.labels.size(); ++i) {
    std::printf(" %s%s", data::fashion_mnist_classes()[response.labels[i]], response.flagged[i] ? "[flagged]" : "");
  }
  std::printf(", scores %s\n", response.scores.defined() ? "returned" : "withheld");
  try {
    guard->predict(torch::full({1, 28, 28}, 2.0f), RequestContext{"another-client"});
  } catch (const InputError& e) {
    std::printf("an out-of-range image is refused with: \"%s\"\n", e.public_message());
  }
  std::printf("\nreport: %s/report.html (also report.md, metrics.json and PNG plots); demo took %.0f s\n", out.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return 0;
}

// One line per component kind: "preprocess: bit_depth, median_smoothing, …".
std::string component_summary() {
  std::string text = "Components of the config (parry components lists their options):\n";
  for (auto kind : {config::ComponentKind::Gate, config::ComponentKind::Preprocessor, config::ComponentKind::Detector,
                    config::ComponentKind::OutputPolicy}) {
    std::string names;
    for (const auto& type : config::component_types(kind)) names += (names.empty() ? "" : ", ") + type;
    text += std::string("  ") + config::config_key(kind) + ": " + names + "\n";
  }
  return text;
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

  std::string cache_dir, demo_out = "parry-report";
  auto* demo_cmd = app.add_subcommand(
      "demo", "Train (first run) or load the reference model, evaluate each defense family and write the report");
  demo_cmd->add_option("--cache", cache_dir, "Cache directory (default $PARRY_CACHE_DIR or ~/.cache/parry)");
  demo_cmd->add_option("--out", demo_out, "Report directory")->capture_default_str();

  EvalOptions eval_opts;
  auto* eval_cmd = app.add_subcommand("eval", "Evaluate a model under the defenses of a config and write the report");
  eval_cmd->add_option("--model", eval_opts.model, "Saved reference model or TorchScript file")->required();
  eval_cmd->add_option("--config", eval_opts.config, "Defense configuration (JSON, see docs/configuration.md)")
      ->required();
  eval_cmd->add_option("--out", eval_opts.out, "Report directory")->capture_default_str();
  eval_cmd->add_option("--images", eval_opts.images, "Override evaluation.images")->check(CLI::PositiveNumber);

  eval_cmd->footer(component_summary());

  bool components_markdown = false;
  auto* components_cmd =
      app.add_subcommand("components", "List the components a defense config can use, with options and rules");
  components_cmd->add_flag("--markdown", components_markdown,
                           "Print the component reference of docs/configuration.md (Markdown)");

  EvalOptions calibrate_opts;
  auto* calibrate_cmd = app.add_subcommand(
      "calibrate",
      "Fit detector densities and combiners, set thresholds, save them beside the config (<config>.state/)");
  calibrate_cmd->add_option("--model", calibrate_opts.model, "Saved reference model or TorchScript file")->required();
  calibrate_cmd->add_option("--config", calibrate_opts.config, "Defense configuration (JSON)")->required();
  calibrate_cmd->footer(component_summary());

  PredictOptions predict_opts;
  auto* predict_cmd =
      app.add_subcommand("predict", "Defended label-only predictions for PNG/JPEG files or an IDX image file");
  predict_cmd->add_option("--model", predict_opts.model, "Saved reference model or TorchScript file")->required();
  predict_cmd->add_option("--config", predict_opts.config, "Defense configuration (calibrated with parry calibrate)");
  predict_cmd->add_option("--defense", predict_opts.defense, "Defense name in the config (default: the first)");
  predict_cmd->add_option("inputs", predict_opts.inputs, "Image files (.png, .jpg) or IDX files")->required();

  CLI11_PARSE(app, argc, argv);
  configure_runtime(RuntimeOptions().threads(common.threads));
  try {
    if (*train_cmd) return run_train(common, train_opts);
    if (*demo_cmd) return run_demo(common, cache_dir, demo_out);
    if (*eval_cmd) return run_eval(common, eval_opts);
    if (*calibrate_cmd) return run_calibrate(common, calibrate_opts);
    if (*predict_cmd) return run_predict(common, predict_opts);
    if (*components_cmd) {
      std::fputs((components_markdown ? config::components_markdown() : config::components_text()).c_str(), stdout);
      return 0;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "parry: %s\n  detail: %s\n", e.public_message(), e.detail().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parry: %s\n", e.what());
    return 1;
  }
  return 0;
}
