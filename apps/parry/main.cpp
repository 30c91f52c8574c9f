// The parry command line; each subcommand lives in its own file.
//   parry train      train the reference CNN on Fashion-MNIST (plain,
//                    distilled or adversarially trained) and save it
//   parry eval       evaluate a model under a defense config; write the report
//   parry calibrate  fit and calibrate a config's detectors; save them beside it
//   parry predict    defended label-only predictions for image or IDX files
//   parry serve      a config's defense as an HTTP service (API keys, metrics)
//   parry keys       the API key file line for a key read from stdin
//   parry components the defense components a config can use, with their options
//   parry demo       the main job: train (first run) or load the reference
//                    model, evaluate each defense family, write the report
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

#include "commands.hpp"

using namespace parry;

namespace {

// OpenMP workers that spin while they wait cost a process sharing the cores
// several times its time alone (one training epoch: 594 s beside the test
// suite, 75 s alone). PASSIVE makes them sleep. libgomp reads the policy once,
// in its initialiser, before main() and before this program's constructors;
// the dynamic loader runs the executable's .preinit_array earlier still, before
// any shared library's initialiser. A policy the user set is kept.
void prefer_passive_openmp_wait(int, char**, char**) {
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
}

__attribute__((section(".preinit_array"),
               used)) void (*const passive_openmp_wait)(int, char**, char**) = &prefer_passive_openmp_wait;

}  // namespace

namespace parry::cli {

Command add_components_command(CLI::App& app) {
  auto markdown = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("components", "List the components a defense config can use, with options and rules");
  cmd->add_flag("--markdown", *markdown, "Print the component reference of docs/configuration.md (Markdown)");
  return {cmd, [markdown] {
            std::fputs((*markdown ? config::components_markdown() : config::components_text()).c_str(), stdout);
            return 0;
          }};
}

}  // namespace parry::cli

int main(int argc, char** argv) {
  CLI::App app{"parry: defend LibTorch image classifiers against adversarial examples"};
  app.require_subcommand(1);
  cli::CommonOptions common;
  app.add_option("--data", common.data_dir,
                 "Data set: an image folder, a tensor file (.pt), a directory of IDX files, or a directory with train/ "
                 "and test/ (docs/data.md)")
      ->capture_default_str();
  app.add_option("--train-data", common.train_data, "Training split, when --data holds only the test images");
  app.add_option("--channels", common.channels, "Image folders: decode to 1 (grayscale) or 3 (RGB, default) channels")
      ->check(CLI::IsMember({1, 3}));
  app.add_option("--resize", common.resize, "Image folders: resize every image to HEIGHTxWIDTH, e.g. 224x224");
  app.add_option("--threads", common.threads,
                 "LibTorch intra-op threads (default: the cores that no process kept busy in 100 ms at start-up)")
      ->check(CLI::Range(1, 256));
  const std::vector<cli::Command> commands{
      cli::add_train_command(app, common),     cli::add_demo_command(app, common),
      cli::add_eval_command(app, common),      cli::add_components_command(app),
      cli::add_calibrate_command(app, common), cli::add_predict_command(app, common),
      cli::add_serve_command(app, common),     cli::add_keys_command(app),
  };
  CLI11_PARSE(app, argc, argv);
  // Another busy process on the cores makes OpenMP's barriers wait for
  // preempted threads: take only the cores that are free (docs/benchmarks.md).
  if (common.threads == 0) common.threads = idle_cores();
  configure_runtime(RuntimeOptions().threads(common.threads));
  try {
    for (const auto& command : commands) {
      if (*command.app) return command.run();
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
