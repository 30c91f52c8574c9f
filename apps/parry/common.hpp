// What every subcommand of the parry command line shares: global options,
// loading a model, the state directory `parry calibrate` writes, progress.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>

#include "parry/parry.hpp"

namespace parry::cli {

/// Options before the subcommand (--data, --threads).
struct CommonOptions {
  std::string data_dir = data::kDebianFashionMnistDir;
  int threads = 2;
};

/// A subcommand: its CLI11 app and what runs it once the line is parsed.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

/// $PARRY_CACHE_DIR, else $XDG_CACHE_HOME/parry, else ~/.cache/parry.
std::string default_cache_dir();

/// A saved reference model (parry::Model::save) or a TorchScript file.
/// @throws parry::IoError if the file is missing or neither.
Model load_model(const std::string& path);

/// Where `parry calibrate` saves the detectors of `config_path`: <config>.state/.
std::string state_dir_for(const std::string& config_path);
/// The file of detector `index` of defense `defense` in `dir`.
std::string state_file(const std::string& dir, const config::DefenseSpec& defense, size_t index);

/// Prints one progress line to stderr.
void print_progress(const std::string& line);

/// The training split (its first `train_limit` images) and the test split of --data.
eval::EvaluationData load_data(const CommonOptions& common, int64_t train_limit);

/// One line per component kind, for the help footers of eval and calibrate.
std::string component_summary();

}  // namespace parry::cli
