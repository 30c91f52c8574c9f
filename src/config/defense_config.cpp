// JSON defense configuration (nlohmann-json): strict parsing with the path of
// every bad key in the error message.
#include "parry/config/defense_config.hpp"

#include <fstream>
#include <sstream>

#include "config/json_object.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/detect/feature_squeezing.hpp"
#include "parry/detect/kernel_density.hpp"
#include "parry/detect/mc_dropout.hpp"
#include "parry/detect/softmax_confidence.hpp"
#include "parry/detect/uncertainty_density.hpp"
#include "parry/preprocess/bit_depth.hpp"
#include "parry/preprocess/gaussian_blur.hpp"
#include "parry/preprocess/jpeg.hpp"
#include "parry/preprocess/median_smoothing.hpp"
#include "parry/preprocess/normalize.hpp"
#include "parry/preprocess/resize.hpp"

namespace parry::config {

using namespace detail;
using json = nlohmann::json;

namespace {

std::shared_ptr<const Preprocessor> parse_preprocessor(const json& value, const std::string& path) {
  Object o(value, path);
  const std::string type =
      o.text("type", "", {"bit_depth", "median_smoothing", "gaussian_blur", "jpeg", "resize", "normalize"});
  std::shared_ptr<const Preprocessor> result;
  if (type == "bit_depth") {
    const auto bits = o.integer("bits", 4, 1, 8);
    const auto policy = gradient_policy(o, GradientPolicy::StraightThrough);
    result = at_path(path, [&] {
      return std::make_shared<preprocess::BitDepth>(
          preprocess::BitDepthOptions(static_cast<int>(bits)).gradient_policy(policy));
    });
  } else if (type == "median_smoothing") {
    const auto window = o.integer("window", 2, 1, 15);
    const auto policy = gradient_policy(o, GradientPolicy::StraightThrough);
    result = at_path(path, [&] {
      return std::make_shared<preprocess::MedianSmoothing>(
          preprocess::MedianSmoothingOptions(static_cast<int>(window)).gradient_policy(policy));
    });
  } else if (type == "gaussian_blur") {
    const auto kernel = o.integer("kernel_size", 3, 1, 31);
    const double sigma = o.number("sigma", 1.0, positive, "must be finite and > 0");
    const auto policy = gradient_policy(o, GradientPolicy::Exact);
    result = at_path(path, [&] {
      return std::make_shared<preprocess::GaussianBlur>(
          preprocess::GaussianBlurOptions(static_cast<int>(kernel), sigma).gradient_policy(policy));
    });
  } else if (type == "jpeg") {
    const auto quality = o.integer("quality", 75, 1, 100);
    const auto policy = gradient_policy(o, GradientPolicy::StraightThrough);
    result = at_path(path, [&] {
      return std::make_shared<preprocess::Jpeg>(
          preprocess::JpegOptions(static_cast<int>(quality)).gradient_policy(policy));
    });
  } else if (type == "resize") {
    const auto height = o.integer("height", 14, 1, 4096);
    const auto width = o.integer("width", 14, 1, 4096);
    const std::string mode = o.text("mode", "area", {"area", "bilinear"});
    const bool antialias = o.boolean("antialias", true);
    const bool restore = o.boolean("restore", true);
    const auto policy = gradient_policy(o, GradientPolicy::Exact);
    result = at_path(path, [&] {
      return std::make_shared<preprocess::Resize>(
          preprocess::ResizeOptions(height, width)
              .mode(mode == "area" ? preprocess::ResizeMode::Area : preprocess::ResizeMode::Bilinear)
              .antialias(antialias)
              .restore(restore)
              .gradient_policy(policy));
    });
  } else {  // normalize
    const auto mean = o.numbers("mean", {});
    const auto std = o.numbers("std", {});
    if (!o.has("mean") || !o.has("std")) fail(path, "normalize needs mean and std");
    const auto policy = gradient_policy(o, GradientPolicy::Exact);
    result = at_path(path, [&] {
      return std::make_shared<preprocess::Normalize>(preprocess::NormalizeOptions(mean, std).gradient_policy(policy));
    });
  }
  o.finish();
  return result;
}

DetectorSpec parse_detector(const json& value, const std::string& path, const Model& model) {
  Object o(value, path);
  DetectorSpec spec;
  spec.type = o.text(
      "type", "", {"softmax_confidence", "mc_dropout", "kernel_density", "feature_squeezing", "uncertainty_density"});
  spec.target_fpr = o.number("target_fpr", 0.05, probability, "must be in [0, 1)");
  if (spec.type == "softmax_confidence") {
    spec.detector = std::make_shared<detect::SoftmaxConfidence>();
  } else if (spec.type == "mc_dropout" || spec.type == "uncertainty_density") {
    const auto samples = o.integer("samples", 50, 2, 10000);
    const bool fast = o.boolean("fast_path", true);
    auto uncertainty = at_path(path, [&] {
      return std::make_shared<detect::McDropout>(model, detect::McDropoutOptions().samples(samples).fast_path(fast));
    });
    if (spec.type == "mc_dropout") {
      spec.detector = uncertainty;
    } else {
      const double bandwidth = o.number("bandwidth", 1.20, positive, "must be finite and > 0");
      spec.fit_images = o.integer("fit_images", 10000, 10, 60000);
      spec.combiner_images = o.integer("combiner_images", 300, 10, 10000);
      spec.fit_epsilon = o.number("fit_epsilon", 0.1, positive, "must be finite and > 0");
      spec.detector = std::make_shared<detect::UncertaintyDensity>(
          uncertainty, std::make_shared<detect::KernelDensity>(detect::KernelDensityOptions().bandwidth(bandwidth)));
    }
  } else if (spec.type == "kernel_density") {
    const double bandwidth = o.number("bandwidth", 1.20, positive, "must be finite and > 0");
    spec.fit_images = o.integer("fit_images", 10000, 10, 60000);
    spec.detector = std::make_shared<detect::KernelDensity>(detect::KernelDensityOptions().bandwidth(bandwidth));
  } else {  // feature_squeezing
    std::vector<std::shared_ptr<const Preprocessor>> squeezers;
    const json& list = o.array("squeezers");
    for (size_t i = 0; i < list.size(); ++i) {
      squeezers.push_back(parse_preprocessor(list[i], o.child("squeezers") + "[" + std::to_string(i) + "]"));
    }
    spec.detector = squeezers.empty()
                        ? std::make_shared<detect::FeatureSqueezing>(detect::FeatureSqueezing::for_grayscale())
                        : std::make_shared<detect::FeatureSqueezing>(squeezers);
  }
  o.finish();
  return spec;
}

std::shared_ptr<Gate> parse_query_monitor(Object& o, const std::string& path, const InputSpec& input) {
  conceal::QueryMonitorOptions defaults;
  const double step = o.number(
      "quantization_step", defaults.quantization_step(), [](double v) { return v > 0 && v <= 255; },
      "must be in (0, 255]");
  const auto window = o.integer("window", defaults.window(), 1, 1 << 24);
  const auto window_step = o.integer("window_step", defaults.window_step(), 1, 1 << 24);
  const auto hashes_kept = o.integer("hashes_kept", defaults.hashes_kept(), 1, 100000);
  const auto threshold = o.integer("threshold", defaults.threshold(), 1, 100000);
  const auto max_stored = o.integer("max_stored_queries", defaults.max_stored_queries(), 1, int64_t{1} << 32);
  const std::string scope = o.text("scope", "global", {"global", "per_client", "both"});
  const std::string action = o.text("action", "flag", {"flag", "reject", "silent"});
  o.finish();
  return at_path(path, [&] {
    return std::make_shared<conceal::QueryMonitor>(conceal::QueryMonitorOptions()
                                                       .quantization_step(step)
                                                       .window(window)
                                                       .window_step(window_step)
                                                       .hashes_kept(hashes_kept)
                                                       .threshold(threshold)
                                                       .max_stored_queries(max_stored)
                                                       .match_spec(input)
                                                       .scope(scope == "global"       ? conceal::MonitorScope::Global
                                                              : scope == "per_client" ? conceal::MonitorScope::PerClient
                                                                                      : conceal::MonitorScope::Both)
                                                       .action(action == "flag"     ? conceal::MonitorAction::Flag
                                                               : action == "reject" ? conceal::MonitorAction::Reject
                                                                                    : conceal::MonitorAction::Silent));
  });
}

std::shared_ptr<Gate> parse_gate(const json& value, const std::string& path, const InputSpec& input) {
  Object o(value, path);
  const std::string type = o.text("type", "", {"throttle", "query_monitor"});
  if (type == "query_monitor") return parse_query_monitor(o, path, input);
  conceal::ThrottleOptions options;
  const double rate = o.number("rate", options.rate(), positive, "must be finite and > 0");
  const double burst = o.number(
      "burst", options.burst(), [](double v) { return std::isfinite(v) && v >= 1; }, "must be finite and >= 1");
  const double global_rate = o.number(
      "global_rate", 0.0, [](double v) { return std::isfinite(v) && v >= 0; },
      "must be finite and >= 0 (0: no global limit)");
  const double global_burst = o.number(
      "global_burst", 0.0, [](double v) { return std::isfinite(v) && v >= 0; }, "must be finite and >= 0");
  const auto max_clients = o.integer("max_clients", static_cast<int64_t>(options.max_clients()), 1, 100000000);
  o.finish();
  return at_path(path, [&] {
    options.rate(rate).burst(burst).max_clients(static_cast<size_t>(max_clients));
    if (global_rate > 0) options.global_rate(global_rate).global_burst(global_burst > 0 ? global_burst : global_rate);
    return std::make_shared<conceal::Throttle>(options);
  });
}

std::shared_ptr<const OutputPolicy> parse_output(const json& value, const std::string& path) {
  Object o(value, path);
  const std::string policy = o.text("policy", "", {"label_only", "top_k", "rounded_scores", "full"});
  std::shared_ptr<const OutputPolicy> result;
  if (policy == "label_only") {
    result = std::make_shared<conceal::LabelOnly>();
  } else if (policy == "top_k") {
    const auto k = o.integer("k", 3, 1, 100000);
    result = std::make_shared<conceal::TopK>(k);
  } else if (policy == "rounded_scores") {
    const auto decimals = o.integer("decimals", 2, 0, 8);
    result = at_path(path, [&] { return std::make_shared<conceal::RoundedScores>(static_cast<int>(decimals)); });
  } else {
    result = std::make_shared<conceal::Full>();
  }
  o.finish();
  return result;
}

InputSpec parse_input(const json& value, const std::string& path) {
  Object o(value, path);
  const auto channels = o.integer("channels", 1, 1, 64);
  const auto height = o.integer("height", 28, 1, 8192);
  const auto width = o.integer("width", 28, 1, 8192);
  const double lo = o.number(
      "min", 0.0, [](double v) { return std::isfinite(v); }, "must be finite");
  const double hi = o.number(
      "max", 1.0, [&](double v) { return std::isfinite(v) && v > lo; }, "must be finite and > min");
  const auto max_batch = o.integer("max_batch", 256, 1, 1 << 20);
  o.finish();
  return InputSpec(channels, height, width).value_range(lo, hi).max_batch(max_batch);
}

DefenseSpec parse_defense(const json& value, const std::string& path, const Model& model,
                          const std::vector<std::shared_ptr<const Preprocessor>>& model_input) {
  Object o(value, path);
  DefenseSpec spec;
  spec.model_input = model_input;
  spec.name = o.text("name", "", {});
  if (spec.name.empty()) fail(o.child("name"), "is required and must not be empty");
  if (o.has("input")) spec.input = parse_input(o.get("input"), o.child("input"));
  const json& gates = o.array("gates");
  for (size_t i = 0; i < gates.size(); ++i)
    spec.gates.push_back(parse_gate(gates[i], o.child("gates") + "[" + std::to_string(i) + "]", spec.input));
  const json& pre = o.array("preprocess");
  for (size_t i = 0; i < pre.size(); ++i) {
    const std::string at = o.child("preprocess") + "[" + std::to_string(i) + "]";
    auto preprocessor = parse_preprocessor(pre[i], at);
    if (!preprocessor->works_in_pixel_space()) {
      fail(at, preprocessor->describe() +
                   " works in model space (it maps pixels out of their range or shape): list it under the top-level "
                   "model_input, the model's own input transform");
    }
    spec.preprocessors.push_back(std::move(preprocessor));
  }
  const json& det = o.array("detectors");
  for (size_t i = 0; i < det.size(); ++i) {
    spec.detectors.push_back(parse_detector(det[i], o.child("detectors") + "[" + std::to_string(i) + "]", model));
  }
  if (o.has("output")) spec.output = parse_output(o.get("output"), o.child("output"));
  o.finish();
  return spec;
}

AttackSpec parse_attack(const json& value, const std::string& path) {
  Object o(value, path);
  AttackSpec spec;
  spec.type = o.text("type", "", {"fgsm", "pgd", "cw"});
  spec.steps = o.integer("steps", spec.steps, 1, 10000);
  spec.step_ratio = o.number("step_ratio", spec.step_ratio, positive, "must be finite and > 0");
  spec.restarts = o.integer("restarts", spec.restarts, 1, 100);
  spec.binary_search_steps = o.integer("binary_search_steps", spec.binary_search_steps, 1, 50);
  spec.max_iterations = o.integer("max_iterations", spec.max_iterations, 1, 100000);
  spec.eot_samples = o.integer("eot_samples", spec.eot_samples, 1, 1000);
  o.finish();
  return spec;
}

EvaluationSpec parse_evaluation(const json& value, const std::string& path) {
  Object o(value, path);
  EvaluationSpec spec;
  spec.images = o.integer("images", spec.images, 1, 10000);
  spec.epsilons = o.numbers("epsilons", spec.epsilons);
  if (spec.epsilons.empty()) fail(o.child("epsilons"), "must hold at least one budget");
  for (size_t i = 0; i < spec.epsilons.size(); ++i) {
    if (!(spec.epsilons[i] > 0 && spec.epsilons[i] <= 1)) {
      fail(o.child("epsilons") + "[" + std::to_string(i) + "]",
           "must be in (0, 1], but got " + std::to_string(spec.epsilons[i]));
    }
  }
  spec.roc_epsilon = o.number(
      "roc_epsilon", spec.roc_epsilon, [](double v) { return v > 0 && v <= 1; }, "must be in (0, 1]");
  spec.calibration_images = o.integer("calibration_images", spec.calibration_images, 10, 10000);
  spec.latency_repeats = o.integer("latency_repeats", spec.latency_repeats, 1, 100000);
  spec.seed = static_cast<uint64_t>(o.integer("seed", 0, 0, INT64_MAX));
  o.finish();
  return spec;
}

}  // namespace

namespace {

Model with_transforms(Model model, const std::vector<std::shared_ptr<const Preprocessor>>& transforms) {
  for (const auto& t : transforms) model = model.with_input_transform(t);
  return model;
}

}  // namespace

Model DefenseSpec::model_for(const Model& model) const {
  return with_transforms(model, model_input);
}

Model Config::model_for(const Model& model) const {
  return with_transforms(model, model_input);
}

std::shared_ptr<const Guard> DefenseSpec::build_guard(const Model& model) const {
  GuardBuilder builder(model_for(model), input);
  for (const auto& g : gates) builder.add_gate(g);
  for (const auto& p : preprocessors) builder.add_preprocessor(p);
  for (const auto& d : detectors) builder.add_detector(d.detector);
  if (output) builder.set_output_policy(output);
  return builder.build_shared();
}

Config parse_config(const std::string& json_text, const Model& model) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw OptionError(std::string("config: not valid JSON: ") + e.what());
  }
  Object o(root, "");
  Config config;
  if (o.has("evaluation")) config.evaluation = parse_evaluation(o.get("evaluation"), "evaluation");
  const json& attacks = o.array("attacks");
  for (size_t i = 0; i < attacks.size(); ++i) {
    config.attacks.push_back(parse_attack(attacks[i], "attacks[" + std::to_string(i) + "]"));
  }
  const json& model_input = o.array("model_input");
  for (size_t i = 0; i < model_input.size(); ++i) {
    const std::string at = "model_input[" + std::to_string(i) + "]";
    config.model_input.push_back(parse_preprocessor(model_input[i], at));
    at_path(at, [&] { return config.model_for(model); });  // differentiable with policy exact
  }
  const Model defended_model = config.model_for(model);
  const json& defenses = o.array("defenses");
  if (defenses.empty()) fail("defenses", "must hold at least one defense");
  std::set<std::string> names;
  for (size_t i = 0; i < defenses.size(); ++i) {
    const std::string path = "defenses[" + std::to_string(i) + "]";
    config.defenses.push_back(parse_defense(defenses[i], path, defended_model, config.model_input));
    if (!names.insert(config.defenses.back().name).second) fail(path + ".name", "duplicate defense name");
  }
  o.finish();
  return config;
}

Config load_config(const std::string& path, const Model& model) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("configuration file not found", "cannot read '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), model);
}

std::string example_config() {
  return R"({
  "evaluation": {"images": 500, "epsilons": [0.03, 0.05, 0.1], "roc_epsilon": 0.1,
                 "calibration_images": 2000, "latency_repeats": 20, "seed": 0},
  "attacks": [
    {"type": "fgsm"},
    {"type": "pgd", "steps": 40, "step_ratio": 0.1, "restarts": 1, "eot_samples": 4},
    {"type": "cw", "binary_search_steps": 5, "max_iterations": 100}
  ],
  "defenses": [
    {"name": "undefended"},
    {"name": "preprocessing",
     "preprocess": [{"type": "bit_depth", "bits": 4}, {"type": "median_smoothing", "window": 2}]},
    {"name": "detectors",
     "detectors": [{"type": "uncertainty_density", "samples": 50, "bandwidth": 1.2, "fit_images": 10000,
                    "combiner_images": 300, "fit_epsilon": 0.1, "target_fpr": 0.05},
                   {"type": "feature_squeezing", "target_fpr": 0.05}]},
    {"name": "combined",
     "input": {"channels": 1, "height": 28, "width": 28, "min": 0, "max": 1, "max_batch": 256},
     "gates": [{"type": "throttle", "rate": 100, "burst": 1000},
               {"type": "query_monitor", "quantization_step": 50, "window": 20, "hashes_kept": 50,
                "threshold": 25, "max_stored_queries": 100000, "scope": "global", "action": "reject"}],
     "preprocess": [{"type": "bit_depth", "bits": 4, "gradient": "straight_through"}],
     "detectors": [{"type": "uncertainty_density"}],
     "output": {"policy": "label_only"}}
  ]
}
)";
}

}  // namespace parry::config
