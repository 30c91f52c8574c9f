// parry predict: defended label-only predictions for image files or an IDX file.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "commands.hpp"
#include "parry/detail/chunks.hpp"

namespace parry::cli {

namespace {

struct PredictOptions {
  std::string model, config, defense, input;
  std::vector<std::string> inputs;
};

int run_predict(const CommonOptions&, const PredictOptions& opts) {
  const Model model = load_model(opts.model);
  const auto defended = open_defense(model, opts.config, opts.defense, opts.input);
  const Guard& guard = *defended.guard;
  const auto& names = defended.classes;
  auto print = [&](const std::string& what, const Response& r) {
    for (size_t i = 0; i < r.labels.size(); ++i) {
      const int64_t label = r.labels[i];
      std::printf("%s%s: %s (%lld)%s\n", what.c_str(),
                  r.labels.size() > 1 ? ("[" + std::to_string(i) + "]").c_str() : "",
                  label >= 0 && label < static_cast<int64_t>(names.size()) ? names[label].c_str() : "?",
                  static_cast<long long>(label), !r.flagged.empty() && r.flagged[i] ? " [flagged]" : "");
    }
    if (r.verdict == Verdict::Rejected) std::printf("%s: rejected (%s)\n", what.c_str(), r.reason.c_str());
  };
  int failures = 0;
  for (const auto& path : opts.inputs) {
    try {
      const std::string file = std::filesystem::path(path).filename().string();
      const bool idx = file.find("idx") != std::string::npos || file.find("ubyte") != std::string::npos;
      if (idx) {
        auto images = data::read_idx(path);
        if (images.dim() == 3) images = images.unsqueeze(1);
        images = images.to(torch::kFloat32) / 255.0;
        parry::detail::for_each_chunk(images.size(0), guard.input_spec().max_batch(), [&](int64_t begin, int64_t end) {
          print(path + "#" + std::to_string(begin), guard.predict(images.slice(0, begin, end), RequestContext{"cli"}));
        });
      } else {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw IoError("input file not found", "cannot read '" + path + "'");
        std::stringstream bytes;
        bytes << in.rdbuf();
        print(path, parry::data::predict_image(guard, bytes.str(), RequestContext{"cli"}));
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), e.public_message());
      ++failures;
    }
  }
  return failures ? 1 : 0;
}

}  // namespace

Command add_predict_command(CLI::App& app, const CommonOptions& common) {
  auto opts = std::make_shared<PredictOptions>();
  auto& predict_opts = *opts;
  auto* predict_cmd =
      app.add_subcommand("predict", "Defended label-only predictions for PNG/JPEG files or an IDX image file");
  predict_cmd->add_option("--model", predict_opts.model, "Saved reference model or TorchScript file")->required();
  predict_cmd->add_option("--config", predict_opts.config, "Defense configuration (calibrated with parry calibrate)");
  predict_cmd->add_option("--defense", predict_opts.defense, "Defense name in the config (default: the first)");
  predict_cmd->add_option("--input", predict_opts.input,
                          "Image shape CxHxW, e.g. 3x224x224 (default: the config's input, else the data parry "
                          "calibrate saw)");
  predict_cmd->add_option("inputs", predict_opts.inputs, "Image files (.png, .jpg) or IDX files")->required();

  return {predict_cmd, [&common, opts] { return run_predict(common, *opts); }};
}

}  // namespace parry::cli
