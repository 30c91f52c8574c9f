// What every subcommand shares.
#include "common.hpp"

#include "parry/detail/files.hpp"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace fs = std::filesystem;

namespace parry::cli {

std::string default_cache_dir() {
  if (const char* env = std::getenv("PARRY_CACHE_DIR"); env && *env) return env;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/parry";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/parry";
  return ".parry-cache";
}

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

std::string state_file(const std::string& dir, const config::DefenseSpec& defense, size_t index) {
  std::string name = defense.name;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  }
  return dir + "/" + name + "-" + std::to_string(index) + "-" + defense.detectors[index].type + ".pt";
}

void save_data_info(const std::string& state_dir, const data::ImageSource& source) {
  const auto shape = source.shape();
  const nlohmann::json info{
      {"data", source.name()}, {"input", {shape.channels, shape.height, shape.width}}, {"classes", source.classes()}};
  parry::detail::atomic_write_bytes(state_dir + "/data.json", info.dump(2) + "\n");
}

std::optional<DataInfo> load_data_info(const std::string& state_dir) {
  const std::string path = state_dir + "/data.json";
  if (!fs::is_regular_file(path)) return std::nullopt;
  try {
    std::ifstream in(path, std::ios::binary);
    const auto info = nlohmann::json::parse(in);
    DataInfo out;
    out.name = info.at("data").get<std::string>();
    const auto input = info.at("input").get<std::vector<int64_t>>();
    if (input.size() != 3) throw std::runtime_error("input must hold C, H, W");
    out.shape = {input[0], input[1], input[2]};
    out.classes = info.at("classes").get<std::vector<std::string>>();
    return out;
  } catch (const std::exception& e) {
    throw IoError("the calibration state is corrupt", path + ": " + e.what() + " (run parry calibrate again)");
  }
}

namespace {

// "CxHxW" → InputSpec.
InputSpec parse_shape(const std::string& text) {
  int64_t c = 0, h = 0, w = 0;
  char x1 = 0, x2 = 0, rest = 0;
  std::istringstream in(text);
  if (!(in >> c >> x1 >> h >> x2 >> w) || x1 != 'x' || x2 != 'x' || (in >> rest) || (c != 1 && c != 3) || h < 1 ||
      w < 1) {
    throw OptionError("--input: expected CHANNELSxHEIGHTxWIDTH with 1 or 3 channels, such as 3x224x224, but got '" +
                      text + "'");
  }
  return InputSpec(c, h, w);
}

}  // namespace

namespace {

// The config file with its top-level "state" url replaced by `state_url`.
config::Config load_config_with_state(const std::string& path, const Model& model,
                                      const std::optional<InputSpec>& shape, const std::string& state_url) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("configuration file not found", "cannot read '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw OptionError(std::string("config: not valid JSON: ") + e.what());
  }
  if (!root.is_object()) throw OptionError("config: (top level): must be an object");
  if (root.contains("state") && root["state"].is_object()) {
    root["state"]["url"] = state_url;
  } else {
    root["state"] = state_url;
  }
  return config::parse_config(root.dump(), model, shape);
}

}  // namespace

Defended open_defense(const Model& model, const std::string& config_path, const std::string& defense,
                      const std::string& input, const std::string& state_url) {
  const std::string state = config_path.empty() ? std::string() : state_dir_for(config_path);
  const auto info = state.empty() ? std::nullopt : load_data_info(state);
  std::optional<InputSpec> shape;
  if (!input.empty()) {
    shape = parse_shape(input);
  } else if (info) {
    shape = InputSpec(info->shape.channels, info->shape.height, info->shape.width);
  }
  Defended out;
  std::vector<std::string> names = info ? info->classes : std::vector<std::string>{};
  if (config_path.empty()) {
    if (!state_url.empty()) throw OptionError("--state needs a --config: the gates that keep state come from it");
    if (!shape) throw OptionError("give the image shape with --input CxHxW (or a calibrated --config)");
    out.guard = std::make_shared<const Guard>(model, *shape);
  } else {
    auto config = state_url.empty() ? config::load_config(config_path, model, shape)
                                    : load_config_with_state(config_path, model, shape, state_url);
    if (!config.classes.empty()) names = config.classes;
    const config::DefenseSpec* chosen = nullptr;
    for (auto& d : config.defenses) {
      if (defense.empty() ? !chosen : d.name == defense) chosen = &d;
    }
    if (!chosen) throw OptionError("no defense named '" + defense + "' in " + config_path);
    auto spec = *chosen;
    for (size_t i = 0; i < spec.detectors.size(); ++i) {
      const std::string file = state_file(state, spec, i);
      if (!fs::is_regular_file(file)) {
        throw StateError("defense '" + spec.name + "' has detectors that are not calibrated: run parry calibrate " +
                             "with this model and config first",
                         "missing detector state '" + file + "'");
      }
      spec.detectors[i].detector->load(file);
    }
    out.has_gates = !spec.gates.empty();
    out.guard = spec.build_guard(model);
  }
  const auto& in = out.guard->input_spec();
  if (!input.empty() &&
      (in.channels() != shape->channels() || in.height() != shape->height() || in.width() != shape->width())) {
    throw OptionError("--input " + input + " disagrees with the input of defense '" + defense + "' in " + config_path +
                      ": " + std::to_string(in.channels()) + "x" + std::to_string(in.height()) + "x" +
                      std::to_string(in.width()));
  }
  out.classes = serve::class_names(*out.guard, names);  // OptionError if the count differs from the model's
  return out;
}

void print_progress(const std::string& line) {
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

data::DecodeOptions decode_options(const CommonOptions& common) {
  data::DecodeOptions options;
  if (common.channels > 0) options.channels(common.channels);
  if (!common.resize.empty()) {
    int64_t height = 0, width = 0;
    char x = 0, rest = 0;
    std::istringstream in(common.resize);
    if (!(in >> height >> x >> width) || (x != 'x' && x != 'X') || (in >> rest) || height < 1 || width < 1) {
      throw OptionError("--resize: expected HEIGHTxWIDTH such as 224x224, but got '" + common.resize + "'");
    }
    options.resize(height, width);
  }
  return options;
}

data::DataSplits open_splits(const CommonOptions& common) {
  const auto options = decode_options(common);
  auto splits = data::open_data(common.data_dir, options);
  if (!common.train_data.empty()) splits.train = data::open_source(common.train_data, options);
  print_progress("test data: " + splits.test->description());
  if (splits.train) print_progress("training data: " + splits.train->description());
  return splits;
}

InputSpec data_input(const data::ImageSource& source) {
  const auto shape = source.shape();
  return InputSpec(shape.channels, shape.height, shape.width);
}

double streamed_accuracy(const Model& model, const data::ImageSource& source, int64_t batch) {
  double correct = 0;
  data::for_each_batch(source, batch, [&](const data::LabeledImages& b, int64_t) {
    c10::InferenceMode inference;
    correct += model.logits(b.images).argmax(1).eq(b.labels).sum().item<double>();
  });
  return correct / static_cast<double>(std::max<int64_t>(source.size(), 1));
}

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

}  // namespace parry::cli
