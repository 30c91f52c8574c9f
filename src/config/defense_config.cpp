// JSON defense configuration (nlohmann-json): strict parsing with the path of
// every bad key in the error message. Components (gates, preprocessors,
// detectors, output policies) are built by their registry entries
// (parry/config/registry.hpp), whose ranges are the Options setters' own.
#include "parry/config/defense_config.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "config/json_object.hpp"
#include "config/reader.hpp"
#include "parry/attack/auto_attack.hpp"
#include "parry/config/registry.hpp"

namespace parry::config {

using namespace detail;
using json = nlohmann::json;

namespace {

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

// The entries of `key` (an array of components of `kind`), built by the registry.
std::vector<Component> parse_components(Object& o, const char* key, ComponentKind kind, const BuildContext& context) {
  std::vector<Component> out;
  const json& list = o.array(key);
  for (size_t i = 0; i < list.size(); ++i) {
    out.push_back(build_any(kind, list[i], o.child(key) + "[" + std::to_string(i) + "]", context));
  }
  return out;
}

// The config's top-level "state" as an object for the gates of the defense
// `name`: its prefix gets the defense's name, so that the gates of different
// defenses never share (or clash over) one key space.
json state_for_defense(const json& state, const std::string& name) {
  json out = state.is_string() ? json{{"url", state}} : state;
  std::string base = out.contains("prefix") && out["prefix"].is_string() ? out["prefix"].get<std::string>() : "parry";
  std::string suffix;
  for (const char c : name.substr(0, 48)) suffix += std::isalnum(static_cast<unsigned char>(c)) || c == '-' ? c : '_';
  out["prefix"] = base + ":" + suffix;
  return out;
}

DefenseSpec parse_defense(const json& value, const std::string& path, const Model& model,
                          const std::vector<std::shared_ptr<const Preprocessor>>& model_input,
                          const std::string& feature_layer, const std::optional<InputSpec>& data_input,
                          const json& state) {
  Object o(value, path);
  DefenseSpec spec;
  spec.model_input = model_input;
  spec.feature_layer = feature_layer;
  spec.name = o.text("name", "", {});
  if (spec.name.empty()) fail(o.child("name"), "is required and must not be empty");
  if (o.has("input")) {
    spec.input = parse_input(o.get("input"), o.child("input"));
  } else if (data_input) {
    spec.input = *data_input;
  } else {
    fail(o.child("input"), "is required when no data set gives the image shape (give --data or an input)");
  }
  BuildContext context;
  context.model = &model;
  context.input = spec.input;
  {
    // Each gate with its factory: the same JSON entry, built again on demand.
    // A gate without a "state" of its own takes the config's. Fresh gates
    // (an evaluation's black-box runs) always keep their state in-process:
    // they must start empty and never write into a served Redis.
    const json& list = o.array("gates");
    BuildContext gate_context = context;
    gate_context.model = nullptr;  // gates never read the model; the factory outlives parse_config
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string entry = o.child("gates") + "[" + std::to_string(i) + "]";
      json served = list[i];
      if (!state.is_null() && served.is_object() && !served.contains("state")) {
        served["state"] = state_for_defense(state, spec.name);
      }
      spec.gates.push_back(build_any(ComponentKind::Gate, served, entry, gate_context).gate);
      json fresh_value = list[i];
      if (fresh_value.is_object()) fresh_value.erase("state");
      spec.gate_factories.push_back([value = fresh_value, entry, gate_context](const FreshGateSettings& settings) {
        BuildContext fresh = gate_context;
        fresh.clock = settings.clock;
        fresh.salt_key = settings.salt_key;
        return build_any(ComponentKind::Gate, value, entry, fresh).gate;
      });
    }
  }
  const json& pre = o.array("preprocess");
  for (size_t i = 0; i < pre.size(); ++i) {
    const std::string entry = o.child("preprocess") + "[" + std::to_string(i) + "]";
    auto preprocessor = build_any(ComponentKind::Preprocessor, pre[i], entry, context).preprocessor;
    if (!preprocessor->works_in_pixel_space()) {
      fail(entry, preprocessor->describe() +
                      " works in model space (it maps pixels out of their range or shape): list it under the "
                      "top-level model_input, the model's own input transform");
    }
    spec.preprocessors.push_back(std::move(preprocessor));
    spec.preprocessor_types.push_back(pre[i].at(type_key(ComponentKind::Preprocessor)).get<std::string>());
  }
  for (auto& c : parse_components(o, "detectors", ComponentKind::Detector, context)) {
    spec.detectors.push_back(std::move(c.detector));
  }
  if (o.has("output")) {
    spec.output = build_any(ComponentKind::OutputPolicy, o.get("output"), o.child("output"), context).output;
  }
  o.finish();
  return spec;
}

AttackSpec parse_attack(const json& value, const std::string& path) {
  Object o(value, path);
  AttackSpec spec;
  spec.type = o.text("type", "", {"fgsm", "pgd", "cw", "autoattack"});
  const bool autoattack = spec.type == "autoattack";
  spec.steps = o.integer("steps", autoattack ? 100 : spec.steps, 1, 10000);
  spec.step_ratio = o.number("step_ratio", spec.step_ratio, positive, "must be finite and > 0");
  spec.restarts = o.integer("restarts", spec.restarts, 1, 100);
  spec.binary_search_steps = o.integer("binary_search_steps", spec.binary_search_steps, 1, 50);
  spec.max_iterations = o.integer("max_iterations", spec.max_iterations, 1, 100000);
  spec.eot_samples = o.integer("eot_samples", spec.eot_samples, 1, 1000);
  if (autoattack) {
    const json& components = o.array("components");
    spec.version =
        o.text("version", components.empty() ? "standard" : "custom", {"standard", "plus", "rand", "custom"});
    if ((spec.version == "custom") != !components.empty()) {
      fail(o.child("components"),
           spec.version == "custom" ? "is required by the custom version" : "is only read by the custom version");
    }
    for (size_t i = 0; i < components.size(); ++i) {
      const std::string entry = o.child("components") + "[" + std::to_string(i) + "]";
      if (!components[i].is_string()) fail(entry, "must be a string");
      const std::string name = components[i].get<std::string>();
      try {
        attack::auto_attack_component(name);
      } catch (const OptionError& e) {
        const std::string message = e.what();
        fail(entry, message.substr(message.find("must")));
      }
      if (std::find(spec.components.begin(), spec.components.end(), name) != spec.components.end()) {
        fail(entry, "lists '" + name + "' twice");
      }
      spec.components.push_back(name);
    }
    spec.square_queries = o.integer("square_queries", spec.square_queries, 1, 100000);
    spec.target_classes = o.integer("target_classes", spec.target_classes, 1, 1000);
  }
  o.finish();
  return spec;
}

BlackBoxSpec parse_black_box(const json& value, const std::string& path) {
  Object o(value, path);
  BlackBoxSpec spec;
  spec.images = o.integer("images", spec.images, 0, 100000);
  spec.square_queries = o.integer("square_queries", spec.square_queries, 1, 1000000);
  spec.hop_skip_jump_queries = o.integer("hop_skip_jump_queries", spec.hop_skip_jump_queries, 10, 1000000);
  spec.l2_epsilon = o.number("l2_epsilon", spec.l2_epsilon, positive, "must be finite and > 0");
  spec.adaptive_monitor = o.boolean("adaptive_monitor", spec.adaptive_monitor);
  o.finish();
  return spec;
}

CertifiedSpec parse_certified(const json& value, const std::string& path) {
  Object o(value, path);
  CertifiedSpec spec;
  const auto non_negative_list = [&](const char* key, std::vector<double> list, bool strictly_positive) {
    for (size_t i = 0; i < list.size(); ++i) {
      const double v = list[i];
      if (!std::isfinite(v) || v < 0 || (strictly_positive && v == 0)) {
        fail(o.child(key) + "[" + std::to_string(i) + "]",
             std::string(strictly_positive ? "must be finite and > 0" : "must be finite and >= 0") + ", but got " +
                 std::to_string(v));
      }
    }
    return list;
  };
  spec.sigmas = non_negative_list("sigmas", o.numbers("sigmas", spec.sigmas), true);
  spec.images = o.integer("images", spec.images, 1, 1000000);
  spec.n = o.integer("n", spec.n, 1, 100000000);
  spec.n0 = o.integer("n0", std::min(spec.n0, spec.n), 1, spec.n);
  spec.alpha = o.number("alpha", spec.alpha, [](double v) { return v > 0 && v < 1; }, "must be in (0, 1)");
  spec.noise_batch = o.integer("noise_batch", spec.noise_batch, 1, 100000);
  spec.radii = non_negative_list("radii", o.numbers("radii", spec.radii), false);
  if (spec.radii.empty()) fail(o.child("radii"), "must hold at least one radius");
  spec.attack_images = o.integer("attack_images", std::min(spec.attack_images, spec.images), 0, spec.images);
  spec.attack_steps = o.integer("attack_steps", spec.attack_steps, 1, 10000);
  spec.attack_samples = o.integer("attack_samples", spec.attack_samples, 1, 1000);
  spec.predict_n = o.integer("predict_n", spec.predict_n, 1, 100000000);
  o.finish();
  return spec;
}

EvaluationSpec parse_evaluation(const json& value, const std::string& path) {
  Object o(value, path);
  EvaluationSpec spec;
  spec.images = o.integer("images", spec.images, 1, 10000000);
  spec.batch_size = o.integer("batch_size", spec.batch_size, 1, 4096);
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
  if (o.has("black_box")) spec.black_box = parse_black_box(o.get("black_box"), o.child("black_box"));
  if (o.has("certified")) spec.certified = parse_certified(o.get("certified"), o.child("certified"));
  o.finish();
  return spec;
}

}  // namespace

namespace {

// The split first (it needs the TorchScript backend underneath), then the transforms in front.
Model with_transforms(Model model, const std::string& feature_layer,
                      const std::vector<std::shared_ptr<const Preprocessor>>& transforms) {
  if (!feature_layer.empty()) model = model.with_feature_layer(feature_layer);
  for (const auto& t : transforms) model = model.with_input_transform(t);
  return model;
}

}  // namespace

Model DefenseSpec::model_for(const Model& model) const {
  return with_transforms(model, feature_layer, model_input);
}

Model Config::model_for(const Model& model) const {
  return with_transforms(model, feature_layer, model_input);
}

const ComponentDescriptor& DetectorSpec::descriptor() const {
  return component(ComponentKind::Detector, type);
}

bool DetectorSpec::needs_fit() const {
  return descriptor().needs_fit;
}

bool DefenseSpec::is_randomised() const {
  for (const auto& type : preprocessor_types) {
    if (component(ComponentKind::Preprocessor, type).randomised) return true;
  }
  for (const auto& d : detectors) {
    if (d.descriptor().randomised) return true;
  }
  return false;
}

DefenseSpec& DefenseSpec::add_gate(GateFactory factory) {
  if (!factory) throw OptionError("DefenseSpec::add_gate: the gate factory is empty");
  auto gate = factory({});
  if (!gate) throw OptionError("DefenseSpec::add_gate: the factory built no gate");
  gates.push_back(std::move(gate));
  gate_factories.push_back(std::move(factory));
  return *this;
}

std::vector<std::shared_ptr<Gate>> DefenseSpec::fresh_gates(const FreshGateSettings& settings) const {
  if (gate_factories.size() != gates.size()) {
    throw OptionError("defense '" + name + "': " + std::to_string(gates.size()) + " gates but " +
                      std::to_string(gate_factories.size()) +
                      " gate factories; add gates with DefenseSpec::add_gate so that they can be built with fresh "
                      "state");
  }
  std::vector<std::shared_ptr<Gate>> out;
  for (const auto& factory : gate_factories) out.push_back(factory(settings));
  return out;
}

namespace {

std::shared_ptr<const Guard> guard_with(const DefenseSpec& spec, const Model& model,
                                        const std::vector<std::shared_ptr<Gate>>& gates) {
  GuardBuilder builder(spec.model_for(model), spec.input);
  for (const auto& g : gates) builder.add_gate(g);
  for (const auto& p : spec.preprocessors) builder.add_preprocessor(p);
  for (const auto& d : spec.detectors) builder.add_detector(d.detector);
  if (spec.output) builder.set_output_policy(spec.output);
  return builder.build_shared();
}

}  // namespace

std::shared_ptr<const Guard> DefenseSpec::build_fresh_guard(const Model& model,
                                                            const FreshGateSettings& settings) const {
  return guard_with(*this, model, fresh_gates(settings));
}

std::shared_ptr<const Guard> DefenseSpec::build_guard(const Model& model) const {
  return guard_with(*this, model, gates);
}

Config parse_config(const std::string& json_text, const Model& model, const std::optional<InputSpec>& data_input) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers such as 1e309
    throw OptionError(std::string("config: not valid JSON: ") + e.what());
  }
  Object o(root, "");
  Config config;
  if (o.has("evaluation")) config.evaluation = parse_evaluation(o.get("evaluation"), "evaluation");
  const json& attacks = o.array("attacks");
  for (size_t i = 0; i < attacks.size(); ++i) {
    config.attacks.push_back(parse_attack(attacks[i], "attacks[" + std::to_string(i) + "]"));
  }
  if (o.has("feature_layer")) {
    config.feature_layer = o.text("feature_layer", "", {});
    if (config.feature_layer.empty()) fail("feature_layer", "must name a submodule of the model, e.g. \"fc\"");
    at_path("feature_layer", [&] { return model.with_feature_layer(config.feature_layer); });
  }
  const json& classes = o.array("classes");
  std::set<std::string> class_names;
  for (size_t i = 0; i < classes.size(); ++i) {
    const std::string at = "classes[" + std::to_string(i) + "]";
    if (!classes[i].is_string()) fail(at, std::string("must be a string, but is ") + type_name(classes[i]));
    const auto name = classes[i].get<std::string>();
    if (name.empty() || name.size() > 256) fail(at, "must be a non-empty name of at most 256 characters");
    if (!class_names.insert(name).second) fail(at, "duplicate class name \"" + name + "\"");
    config.classes.push_back(name);
  }
  if (o.has("classes") && classes.empty()) fail("classes", "must name at least one class when given");
  const json& model_input = o.array("model_input");
  BuildContext model_input_context;
  model_input_context.model = &model;
  for (size_t i = 0; i < model_input.size(); ++i) {
    const std::string at = "model_input[" + std::to_string(i) + "]";
    config.model_input.push_back(
        build_any(ComponentKind::Preprocessor, model_input[i], at, model_input_context).preprocessor);
    at_path(at, [&] { return config.model_for(model); });  // differentiable with policy exact
  }
  const Model defended_model = config.model_for(model);
  // Where the gates keep their state (docs/deployment.md); checked here so
  // that a bad value is reported under "state".
  json state;
  if (o.has("state")) {
    state = o.get("state");
    if (!read_state(state, "state")) state = json();  // "memory": every gate in-process
  }
  const json& defenses = o.array("defenses");
  if (defenses.empty()) fail("defenses", "must hold at least one defense");
  std::set<std::string> names;
  for (size_t i = 0; i < defenses.size(); ++i) {
    const std::string path = "defenses[" + std::to_string(i) + "]";
    config.defenses.push_back(
        parse_defense(defenses[i], path, defended_model, config.model_input, config.feature_layer, data_input, state));
    if (!names.insert(config.defenses.back().name).second) fail(path + ".name", "duplicate defense name");
  }
  o.finish();
  return config;
}

Config load_config(const std::string& path, const Model& model, const std::optional<InputSpec>& data_input) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("configuration file not found", "cannot read '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), model, data_input);
}

std::string example_config() {
  return R"({
  "evaluation": {"images": 500, "epsilons": [0.03, 0.05, 0.1], "roc_epsilon": 0.1,
                 "calibration_images": 2000, "latency_repeats": 20, "batch_size": 128, "seed": 0,
                 "black_box": {"images": 20, "square_queries": 1000, "hop_skip_jump_queries": 1000,
                               "l2_epsilon": 1.5}},
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
