// parry predict: defended label-only predictions for image files or an IDX file.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "commands.hpp"
#include "parry/detail/chunks.hpp"

namespace parry::cli {

namespace {

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

}  // namespace

Command add_predict_command(CLI::App& app, const CommonOptions& common) {
  auto opts = std::make_shared<PredictOptions>();
  auto& predict_opts = *opts;
  auto* predict_cmd =
      app.add_subcommand("predict", "Defended label-only predictions for PNG/JPEG files or an IDX image file");
  predict_cmd->add_option("--model", predict_opts.model, "Saved reference model or TorchScript file")->required();
  predict_cmd->add_option("--config", predict_opts.config, "Defense configuration (calibrated with parry calibrate)");
  predict_cmd->add_option("--defense", predict_opts.defense, "Defense name in the config (default: the first)");
  predict_cmd->add_option("inputs", predict_opts.inputs, "Image files (.png, .jpg) or IDX files")->required();

  return {predict_cmd, [&common, opts] { return run_predict(common, *opts); }};
}

}  // namespace parry::cli
