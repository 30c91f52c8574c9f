// parry eval (evaluate a model under a config's defenses and write the report)
// and parry calibrate (fit and calibrate the detectors, save them beside the config).
#include <cstdio>
#include <filesystem>

#include "commands.hpp"

namespace fs = std::filesystem;

namespace parry::cli {

namespace {

struct EvalOptions {
  std::string model, config, out = "parry-report";
  int64_t images = 0;
  std::vector<double> certify_sigmas;  // overrides evaluation.certified.sigmas
};

int run_eval(const CommonOptions& common, const EvalOptions& opts) {
  const Model model = load_model(opts.model);
  const auto splits = open_splits(common);
  auto config = config::load_config(opts.config, model, data_input(*splits.test));
  if (opts.images > 0) config.evaluation.images = opts.images;
  if (!opts.certify_sigmas.empty()) config.evaluation.certified.sigmas = opts.certify_sigmas;
  const eval::EvaluationData data{splits.train, splits.test};
  // Detectors saved by `parry calibrate` beside the config are used as they are.
  const std::string state = state_dir_for(opts.config);
  bool ready = fs::is_directory(state);
  if (ready) {
    const auto info = load_data_info(state);
    const auto shape = splits.test->shape();
    if (!info || info->classes != splits.test->classes() || info->shape.channels != shape.channels ||
        info->shape.height != shape.height || info->shape.width != shape.width) {
      throw StateError("the detectors were calibrated on other data",
                       state + " was calibrated on " + (info ? info->name : std::string("unrecorded data")) +
                           ", not on " + splits.test->description() +
                           ": run parry calibrate with this data (or remove the directory)");
    }
    for (auto& d : config.defenses) {
      for (size_t i = 0; i < d.detectors.size(); ++i) d.detectors[i].detector->load(state_file(state, d, i));
    }
    print_progress("using calibrated detectors from " + state);
  }
  const auto evaluation = eval::evaluate(config, model, data, print_progress, ready);
  eval::write_report(evaluation, opts.out);
  std::printf("%s\n%s\n%s\nreport: %s/report.html (also report.md, metrics.json, *.png)\n",
              eval::summary_table(evaluation).c_str(), eval::certified_tables(evaluation).c_str(),
              eval::black_box_tables(evaluation).c_str(), opts.out.c_str());
  return 0;
}

int run_calibrate(const CommonOptions& common, const EvalOptions& opts) {
  const Model model = load_model(opts.model);
  const auto splits = open_splits(common);
  auto config = config::load_config(opts.config, model, data_input(*splits.test));
  const eval::EvaluationData data{splits.train, splits.test};
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
  // Last, once every detector is saved: what predict and serve need to know
  // of the data without reading it.
  save_data_info(state, *splits.test);
  return 0;
}

}  // namespace

Command add_eval_command(CLI::App& app, const CommonOptions& common) {
  auto opts = std::make_shared<EvalOptions>();
  auto& eval_opts = *opts;
  auto* eval_cmd = app.add_subcommand("eval", "Evaluate a model under the defenses of a config and write the report");
  eval_cmd->add_option("--model", eval_opts.model, "Saved reference model or TorchScript file")->required();
  eval_cmd->add_option("--config", eval_opts.config, "Defense configuration (JSON, see docs/configuration.md)")
      ->required();
  eval_cmd->add_option("--out", eval_opts.out, "Report directory")->capture_default_str();
  eval_cmd->add_option("--images", eval_opts.images, "Override evaluation.images")->check(CLI::PositiveNumber);
  eval_cmd->add_option("--certify-sigma", eval_opts.certify_sigmas,
                       "Also certify the smoothed model at these noise levels (override evaluation.certified.sigmas; "
                       "docs/certified.md)")
      ->check(CLI::PositiveNumber);

  eval_cmd->footer(component_summary());

  return {eval_cmd, [&common, opts] { return run_eval(common, *opts); }};
}

Command add_calibrate_command(CLI::App& app, const CommonOptions& common) {
  auto opts = std::make_shared<EvalOptions>();
  auto& calibrate_opts = *opts;
  auto* calibrate_cmd = app.add_subcommand(
      "calibrate",
      "Fit detector densities and combiners, set thresholds, save them beside the config (<config>.state/)");
  calibrate_cmd->add_option("--model", calibrate_opts.model, "Saved reference model or TorchScript file")->required();
  calibrate_cmd->add_option("--config", calibrate_opts.config, "Defense configuration (JSON)")->required();
  calibrate_cmd->footer(component_summary());

  return {calibrate_cmd, [&common, opts] { return run_calibrate(common, *opts); }};
}

}  // namespace parry::cli
