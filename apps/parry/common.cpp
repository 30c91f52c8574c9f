// What every subcommand shares.
#include "common.hpp"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

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
