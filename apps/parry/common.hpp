// What every subcommand of the parry command line shares: global options,
// loading a model, the state directory `parry calibrate` writes, progress.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "parry/parry.hpp"

namespace parry::cli {

/// Options before the subcommand (--data, --threads).
struct CommonOptions {
  std::string data_dir = data::kDebianFashionMnistDir;
  std::string train_data;  // overrides the training split of data_dir
  int64_t channels = 0;    // image folders: 1 or 3 (0: 3, RGB, as torchvision)
  std::string resize;      // image folders: "HxW" (empty: keep each image's size)
  int threads = 0;         // 0: the cores idle at start-up (parry::idle_cores)
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

/// The data set a config was calibrated on, as `parry calibrate` records it
/// in <config>.state/data.json: its name, image shape and class names.
struct DataInfo {
  std::string name;
  data::ImageShape shape;
  std::vector<std::string> classes;
};
/// Writes <state_dir>/data.json atomically.
void save_data_info(const std::string& state_dir, const data::ImageSource& source);
/// Reads <state_dir>/data.json; std::nullopt if there is none.
/// @throws parry::IoError if it exists but is corrupt.
std::optional<DataInfo> load_data_info(const std::string& state_dir);

/// A Guard ready to serve and the names of its classes.
struct Defended {
  std::shared_ptr<const Guard> guard;
  std::vector<std::string> classes;  ///< index = label
  bool has_gates = false;            ///< the defense throttles or monitors queries
};

/// The Guard of defense `defense` (empty: the first) of `config_path`, with
/// its detectors loaded from the state `parry calibrate` saved; without a
/// config, a Guard with no defenses. The input shape is `input` ("CxHxW")
/// when given, else the config's, else the calibrated data's. Class names come
/// from the config's "classes", else the calibrated data, else "0", "1", …
/// for each logit of the model.
/// `state_url`, when not empty, replaces the config's top-level "state" url
/// ("memory" or redis://HOST[:PORT][/DATABASE]; parry serve --state).
/// @throws parry::OptionError for an unknown defense, a missing shape or a
///   class count that differs from the model's; parry::StateError for
///   detectors that were never calibrated.
Defended open_defense(const Model& model, const std::string& config_path, const std::string& defense,
                      const std::string& input, const std::string& state_url = "");

/// Prints one progress line to stderr.
void print_progress(const std::string& line);

/// How --channels and --resize ask image folders to be decoded.
data::DecodeOptions decode_options(const CommonOptions& common);

/// The splits of --data (data::open_data), the training split replaced by
/// --train-data when given.
data::DataSplits open_splits(const CommonOptions& common);

/// The input of defenses that give none: the test images' shape.
InputSpec data_input(const data::ImageSource& source);

/// Top-1 accuracy of `model` on every image of `source`, read in batches.
double streamed_accuracy(const Model& model, const data::ImageSource& source, int64_t batch = 256);

/// One line per component kind, for the help footers of eval and calibrate.
std::string component_summary();

}  // namespace parry::cli
