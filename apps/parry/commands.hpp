// The subcommands of the parry command line, one source file each.
#pragma once

#include "common.hpp"

namespace parry::cli {

/// Options of `parry train` (also used by `parry demo` on its first run).
struct TrainOptions {
  std::string model;     // TorchScript file to train; empty: a new reference CNN
  int64_t width = 1;     // the new reference CNN's width multiplier
  double dropout = 0.5;  // the new reference CNN's head dropout probability
  std::string out;
  int64_t epochs = 15;
  int64_t batch = 128;
  double lr = 1e-3;
  int64_t limit = 0;
  uint64_t seed = 0;
  bool augment = true;
  std::string method = "plain";  // plain | distilled | adversarial | gaussian
  double sigma = 0.25;           // gaussian: noise standard deviation, pixel units
  double temperature = 20.0;     // distilled
  std::string attack = "pgd";    // adversarial: pgd | fast_fgsm | trades
  double epsilon = 0.1;          // adversarial, L∞ in [0, 1] pixels
  int64_t steps = 7;             // adversarial PGD/TRADES steps
  std::string checkpoint_dir;    // adversarial: resumable checkpoints
  // Data-parallel training (docs/training.md, "Several processes").
  int64_t world_size = 1;
  int64_t rank = 0;
  std::string master = "127.0.0.1:29500";  // HOST:PORT of the rendezvous store
  bool master_hosted = false;              // set by --nproc for its children: the launcher hosts the store
  int64_t nproc = 0;                       // > 0: start this many local ranks
  double dist_timeout = 300;               // seconds a rank waits for the others
};

/// parry train --nproc N: hosts the rendezvous store, starts N copies of
/// this command line as ranks 0 … N − 1 on loopback, and waits for them. If
/// a rank fails, the others fail within --dist-timeout (they name it); any
/// still running after that are stopped. Returns 0 if every rank succeeded,
/// else the first failing rank's exit status.
int launch_local_ranks(const TrainOptions& opts);

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
