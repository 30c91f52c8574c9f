// The subcommands of the parry command line, one source file each.
#pragma once

#include "common.hpp"

namespace parry::cli {

/// Options of `parry train` (also used by `parry demo` on its first run).
struct TrainOptions {
  std::string model;  // TorchScript file to train; empty: a new reference CNN
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

/// Trains a new reference CNN plainly on the training split of --data and saves it to opts.out.
models::ReferenceCnn train_reference(const CommonOptions& common, const TrainOptions& opts);

Command add_train_command(CLI::App& app, const CommonOptions& common);
Command add_eval_command(CLI::App& app, const CommonOptions& common);
Command add_calibrate_command(CLI::App& app, const CommonOptions& common);
Command add_predict_command(CLI::App& app, const CommonOptions& common);
Command add_demo_command(CLI::App& app, const CommonOptions& common);
Command add_components_command(CLI::App& app);
/// parry serve: a config's defense over HTTP (serve::Server) until SIGTERM/SIGINT.
Command add_serve_command(CLI::App& app, const CommonOptions& common);
/// parry keys: the API key file line for a key read from stdin.
Command add_keys_command(CLI::App& app);

}  // namespace parry::cli
