// The component registry: one descriptor per component of the JSON config.
// Ranges and their rule texts come from the Options structs (PARRY_CHECKED_ARG);
// this file only binds JSON keys to setters and says how to build each component.
#include "parry/config/registry.hpp"

#include <cmath>
#include <sstream>

#include "config/reader.hpp"
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
#include "parry/preprocess/non_local_means.hpp"
#include "parry/preprocess/normalize.hpp"
#include "parry/preprocess/resize.hpp"

namespace parry::config {

using detail::Binder;
using detail::json;
using detail::Object;
using detail::Reader;

namespace {

// The settings every detector entry carries into its DetectorSpec; the
// defaults are DetectorSpec's, the rules are declared here once.
struct DetectorSpecOptions {
  PARRY_OPTIONS(DetectorSpec);
  PARRY_CHECKED_ARG(double, target_fpr, DetectorSpec().target_fpr, v >= 0 && v < 1, "must be in [0, 1)");
  PARRY_CHECKED_ARG(int64_t, fit_images, DetectorSpec().fit_images, v >= 10 && v <= 60000, "must be in 10..60000");
  PARRY_CHECKED_ARG(int64_t, combiner_images, DetectorSpec().combiner_images, v >= 10 && v <= 10000,
                    "must be in 10..10000");
  PARRY_CHECKED_ARG(double, fit_epsilon, DetectorSpec().fit_epsilon, std::isfinite(v) && v > 0,
                    "must be finite and > 0");

 public:
  // Copies the settings into `spec`.
  void apply(DetectorSpec& spec) const {
    spec.target_fpr = target_fpr();
    spec.fit_images = fit_images();
    spec.combiner_images = combiner_images();
    spec.fit_epsilon = fit_epsilon();
  }
};

using GradientNames = std::vector<std::pair<std::string, GradientPolicy>>;
GradientNames gradient_names() {
  return {{"exact", GradientPolicy::Exact},
          {"straight_through", GradientPolicy::StraightThrough},
          {"blocked", GradientPolicy::Blocked}};
}

// Binds the attack-path policy under the key "gradient".
template <typename O>
Binder<O>& with_gradient(Binder<O>& b) {
  return b.choice("gradient", &O::gradient_policy, &O::gradient_policy, gradient_names());
}

ComponentDescriptor describe(ComponentKind kind, std::string type, std::string description,
                             std::vector<OptionDescriptor> options) {
  ComponentDescriptor d;
  d.kind = kind;
  d.type = std::move(type);
  d.description = std::move(description);
  d.options = std::move(options);
  return d;
}

void append(std::vector<OptionDescriptor>& to, const std::vector<OptionDescriptor>& more) {
  to.insert(to.end(), more.begin(), more.end());
}

// A preprocessor whose options struct O is read by `binder` and turned into
// the component by `make(O)`; constructor checks are reported under the entry's path.
template <typename O, typename Make>
ComponentDescriptor preprocessor(std::string type, std::string description, AdaptiveAttack adaptive, Binder<O> binder,
                                 Make make) {
  auto d = describe(ComponentKind::Preprocessor, std::move(type), std::move(description), binder.options());
  d.adaptive = adaptive;
  d.build = [binder, make](Reader& r) {
    const O options = binder.read(r);
    Component c;
    c.preprocessor = detail::at_path(r.path(), [&]() -> std::shared_ptr<const Preprocessor> { return make(options); });
    return c;
  };
  return d;
}

void add_preprocessors(std::vector<ComponentDescriptor>& out) {
  using namespace preprocess;
  {
    Binder<BitDepthOptions> b;
    b.arg(PARRY_BIND_CHECKED(BitDepthOptions, bits));
    out.push_back(preprocessor("bit_depth",
                               "colour-depth reduction to 2^bits levels (feature squeezing, Xu et al. 2018)",
                               AdaptiveAttack::Bpda, with_gradient(b),
                               [](const BitDepthOptions& o) { return std::make_shared<BitDepth>(o); }));
  }
  {
    Binder<MedianSmoothingOptions> b;
    b.arg(PARRY_BIND_CHECKED(MedianSmoothingOptions, window));
    out.push_back(preprocessor("median_smoothing", "k×k median filter per channel (scipy.ndimage semantics)",
                               AdaptiveAttack::Bpda, with_gradient(b),
                               [](const MedianSmoothingOptions& o) { return std::make_shared<MedianSmoothing>(o); }));
  }
  {
    Binder<NonLocalMeansOptions> b;
    b.arg(PARRY_BIND_CHECKED(NonLocalMeansOptions, search_window))
        .arg(PARRY_BIND_CHECKED(NonLocalMeansOptions, patch_size))
        .arg(PARRY_BIND_CHECKED(NonLocalMeansOptions, strength));
    out.push_back(preprocessor("non_local_means",
                               "non-local means denoising of 8-bit images (OpenCV's fastNlMeansDenoising[Colored])",
                               AdaptiveAttack::Bpda, with_gradient(b),
                               [](const NonLocalMeansOptions& o) { return std::make_shared<NonLocalMeans>(o); }));
  }
  {
    Binder<GaussianBlurOptions> b;
    b.arg(PARRY_BIND_CHECKED(GaussianBlurOptions, kernel_size)).arg(PARRY_BIND_CHECKED(GaussianBlurOptions, sigma));
    out.push_back(preprocessor("gaussian_blur", "separable Gaussian smoothing (OpenCV's GaussianBlur)",
                               AdaptiveAttack::Gradient, with_gradient(b),
                               [](const GaussianBlurOptions& o) { return std::make_shared<GaussianBlur>(o); }));
  }
  {
    Binder<JpegOptions> b;
    b.arg(PARRY_BIND_CHECKED(JpegOptions, quality));
    out.push_back(preprocessor("jpeg", "JPEG compression and decompression (libjpeg through OpenCV)",
                               AdaptiveAttack::Bpda, with_gradient(b),
                               [](const JpegOptions& o) { return std::make_shared<Jpeg>(o); }));
  }
  {
    Binder<ResizeOptions> b(ResizeOptions(14, 14));
    b.arg(PARRY_BIND_CHECKED(ResizeOptions, height))
        .arg(PARRY_BIND_CHECKED(ResizeOptions, width))
        .choice("mode", &ResizeOptions::mode, &ResizeOptions::mode,
                std::vector<std::pair<std::string, ResizeMode>>{{"area", ResizeMode::Area},
                                                                {"bilinear", ResizeMode::Bilinear}})
        .arg(PARRY_BIND(ResizeOptions, antialias))
        .arg(PARRY_BIND(ResizeOptions, restore));
    out.push_back(preprocessor("resize", "down-scaling, by default back up to the input size", AdaptiveAttack::Gradient,
                               with_gradient(b), [](const ResizeOptions& o) { return std::make_shared<Resize>(o); }));
  }
  {
    // mean and std are constructor arguments: the factory reads them, the
    // constructor checks them (its errors are reported under the entry's path).
    Binder<NormalizeOptions> b(NormalizeOptions({0.0}, {1.0}));
    OptionDescriptor mean, std;
    mean.key = "mean";
    mean.type = OptionType::Numbers;
    mean.default_value = "required";
    mean.rule = std::string(NormalizeOptions::mean_rule()) + "; one per channel";
    std.key = "std";
    std.type = OptionType::Numbers;
    std.default_value = "required";
    std.rule = std::string(NormalizeOptions::std_rule()) + "; as many as mean";
    b.manual(mean).manual(std);
    with_gradient(b);
    auto d = describe(ComponentKind::Preprocessor, "normalize", "per-channel (x − mean) / std", b.options());
    d.adaptive = AdaptiveAttack::Gradient;
    d.build = [b](Reader& r) {
      Object& o = r.object();
      const auto means = o.numbers("mean", {});
      const auto stds = o.numbers("std", {});
      if (!o.has("mean") || !o.has("std")) detail::fail(r.path(), "normalize needs mean and std");
      NormalizeOptions options = detail::at_path(r.path(), [&] { return NormalizeOptions(means, stds); });
      b.apply(r, options);
      Component c;
      c.preprocessor = detail::at_path(r.path(), [&] { return std::make_shared<Normalize>(options); });
      return c;
    };
    out.push_back(std::move(d));
  }
}

Binder<DetectorSpecOptions> spec_binder(bool fitted, bool combiner) {
  Binder<DetectorSpecOptions> b;
  b.arg(PARRY_BIND_CHECKED(DetectorSpecOptions, target_fpr));
  if (fitted) b.arg(PARRY_BIND_CHECKED(DetectorSpecOptions, fit_images));
  if (combiner) {
    b.arg(PARRY_BIND_CHECKED(DetectorSpecOptions, combiner_images))
        .arg(PARRY_BIND_CHECKED(DetectorSpecOptions, fit_epsilon));
  }
  return b;
}

Binder<detect::McDropoutOptions> mc_dropout_binder() {
  Binder<detect::McDropoutOptions> b;
  b.arg(PARRY_BIND_CHECKED(detect::McDropoutOptions, samples)).arg(PARRY_BIND(detect::McDropoutOptions, fast_path));
  return b;
}

Binder<detect::KernelDensityOptions> kernel_density_binder() {
  Binder<detect::KernelDensityOptions> b;
  b.arg(PARRY_BIND_CHECKED(detect::KernelDensityOptions, bandwidth));
  return b;
}

const Model& model_of(const Reader& r) {
  if (!r.context().model) detail::fail(r.path(), "this detector needs the model (BuildContext::model is null)");
  return *r.context().model;
}

ComponentDescriptor detector(std::string type, std::string description, double weight) {
  auto d = describe(ComponentKind::Detector, std::move(type), std::move(description), {});
  d.adaptive = AdaptiveAttack::DetectorAware;
  d.detector_aware_weight = weight;
  return d;
}

void add_detectors(std::vector<ComponentDescriptor>& out) {
  using namespace detect;
  {
    auto spec = spec_binder(false, false);
    auto d = detector("softmax_confidence", "1 − the largest softmax probability (Hendrycks & Gimpel 2017)", 10.0);
    d.options = spec.options();
    d.build = [spec](Reader& r) {
      Component c;
      c.detector.type = "softmax_confidence";
      spec.read(r).apply(c.detector);
      c.detector.detector = std::make_shared<SoftmaxConfidence>();
      return c;
    };
    out.push_back(std::move(d));
  }
  {
    auto spec = spec_binder(false, false);
    auto mc = mc_dropout_binder();
    auto d = detector("mc_dropout", "Monte-Carlo dropout uncertainty (Feinman et al. 2017)", 10.0);
    d.randomised = true;
    d.options = mc.options();
    append(d.options, spec.options());
    d.build = [spec, mc](Reader& r) {
      Component c;
      c.detector.type = "mc_dropout";
      const auto options = mc.read(r);
      spec.read(r).apply(c.detector);
      c.detector.detector =
          detail::at_path(r.path(), [&] { return std::make_shared<McDropout>(model_of(r), options); });
      return c;
    };
    out.push_back(std::move(d));
  }
  {
    auto spec = spec_binder(true, false);
    auto kd = kernel_density_binder();
    auto d = detector("kernel_density",
                      "Gaussian kernel density of last-layer features per class (Feinman et al. 2017)", 0.1);
    d.needs_fit = true;
    d.options = kd.options();
    append(d.options, spec.options());
    d.build = [spec, kd](Reader& r) {
      Component c;
      c.detector.type = "kernel_density";
      const auto options = kd.read(r);
      spec.read(r).apply(c.detector);
      c.detector.detector = std::make_shared<KernelDensity>(options);
      return c;
    };
    out.push_back(std::move(d));
  }
  {
    auto spec = spec_binder(false, false);
    auto d = detector("feature_squeezing",
                      "L1 distance between predictions on the input and squeezed copies (Xu et al. 2018)", 10.0);
    OptionDescriptor squeezers;
    squeezers.key = "squeezers";
    squeezers.type = OptionType::Components;
    squeezers.default_value =
        "by input channels: 1-bit depth and 2×2 median (1), 5-bit depth, 2×2 median and non-local means 13-3-2 (3)";
    squeezers.rule = "preprocess entries";
    d.options = {squeezers};
    append(d.options, spec.options());
    d.build = [spec](Reader& r) {
      Component c;
      c.detector.type = "feature_squeezing";
      spec.read(r).apply(c.detector);
      std::vector<std::shared_ptr<const Preprocessor>> list;
      const json& entries = r.object().array("squeezers");
      for (size_t i = 0; i < entries.size(); ++i) {
        const std::string path = r.object().child("squeezers") + "[" + std::to_string(i) + "]";
        list.push_back(detail::build_any(ComponentKind::Preprocessor, entries[i], path, r.context()).preprocessor);
      }
      // Without squeezers: Xu et al.'s configuration for the defense's channel count.
      c.detector.detector = list.empty()
                                ? detail::at_path(r.path(),
                                                  [&] {
                                                    return std::make_shared<FeatureSqueezing>(
                                                        FeatureSqueezing::for_channels(r.context().input.channels()));
                                                  })
                                : std::make_shared<FeatureSqueezing>(list);
      return c;
    };
    out.push_back(std::move(d));
  }
  {
    auto spec = spec_binder(true, true);
    auto mc = mc_dropout_binder();
    auto kd = kernel_density_binder();
    auto d = detector("uncertainty_density",
                      "MC-dropout uncertainty and kernel density combined by logistic regression (Feinman et al. 2017)",
                      10.0);
    d.needs_fit = true;
    d.randomised = true;
    d.options = mc.options();
    append(d.options, kd.options());
    append(d.options, spec.options());
    d.build = [spec, mc, kd](Reader& r) {
      Component c;
      c.detector.type = "uncertainty_density";
      const auto mc_options = mc.read(r);
      const auto kd_options = kd.read(r);
      spec.read(r).apply(c.detector);
      auto uncertainty =
          detail::at_path(r.path(), [&] { return std::make_shared<McDropout>(model_of(r), mc_options); });
      c.detector.detector =
          std::make_shared<UncertaintyDensity>(uncertainty, std::make_shared<KernelDensity>(kd_options));
      return c;
    };
    out.push_back(std::move(d));
  }
}

// The optional "state" key of a gate entry (not an OptionDescriptor: its
// value is a URL or an object; docs/configuration.md describes it).
std::optional<conceal::RedisOptions> gate_state(Reader& r) {
  Object& o = r.object();
  if (!o.has("state")) return std::nullopt;
  return detail::read_state(o.get("state"), o.child("state"));
}

void add_gates(std::vector<ComponentDescriptor>& out) {
  using namespace conceal;
  {
    Binder<ThrottleOptions> b;
    b.arg(PARRY_BIND_CHECKED(ThrottleOptions, rate))
        .arg(PARRY_BIND_CHECKED(ThrottleOptions, burst))
        .arg(PARRY_BIND_CHECKED(ThrottleOptions, global_rate))
        .arg(PARRY_BIND_CHECKED(ThrottleOptions, global_burst))
        .arg(PARRY_BIND_CHECKED(ThrottleOptions, max_clients))
        .shown_default("global_burst", "global_rate");
    auto d = describe(ComponentKind::Gate, "throttle", "token buckets per client and globally, in images per second",
                      b.options());
    d.adaptive = AdaptiveAttack::BlackBox;
    d.build = [b](Reader& r) {
      ThrottleOptions options = b.read(r);
      options.redis(gate_state(r));
      if (r.context().clock) options.clock(r.context().clock);
      // Without its own burst, the global bucket holds one second of global_rate.
      if (options.global_rate() > 0 && !r.object().has("global_burst")) {
        detail::at_path(r.path(), [&] { options.global_burst(options.global_rate()); });
      }
      Component c;
      c.gate = std::make_shared<Throttle>(options);
      return c;
    };
    out.push_back(std::move(d));
  }
  {
    using O = QueryMonitorOptions;
    Binder<O> b;
    b.arg(PARRY_BIND_CHECKED(O, quantization_step))
        .arg(PARRY_BIND_CHECKED(O, window))
        .arg(PARRY_BIND_CHECKED(O, window_step))
        .arg(PARRY_BIND_CHECKED(O, hashes_kept))
        .arg(PARRY_BIND_CHECKED(O, threshold))
        .arg(PARRY_BIND_CHECKED(O, max_stored_queries))
        .arg(PARRY_BIND(O, salted))
        .choice("scope", &O::scope, &O::scope,
                std::vector<std::pair<std::string, MonitorScope>>{
                    {to_string(MonitorScope::Global), MonitorScope::Global},
                    {to_string(MonitorScope::PerClient), MonitorScope::PerClient},
                    {to_string(MonitorScope::Both), MonitorScope::Both}})
        .choice("action", &O::action, &O::action,
                std::vector<std::pair<std::string, MonitorAction>>{
                    {to_string(MonitorAction::Flag), MonitorAction::Flag},
                    {to_string(MonitorAction::Reject), MonitorAction::Reject},
                    {to_string(MonitorAction::Silent), MonitorAction::Silent}});
    auto d =
        describe(ComponentKind::Gate, "query_monitor",
                 "detects many near-identical queries by fingerprint (Blacklight, Li et al. 2022); shape from input",
                 b.options());
    d.adaptive = AdaptiveAttack::BlackBox;
    d.build = [b](Reader& r) {
      O options = b.read(r);
      options.redis(gate_state(r));
      if (r.context().salt_key && !options.salt_key()) options.salt_key(r.context().salt_key);
      Component c;
      c.gate = detail::at_path(r.path(),
                               [&] { return std::make_shared<QueryMonitor>(options.match_spec(r.context().input)); });
      return c;
    };
    out.push_back(std::move(d));
  }
}

void add_output_policies(std::vector<ComponentDescriptor>& out) {
  using namespace conceal;
  auto plain = [](std::string type, std::string description,
                  std::function<std::shared_ptr<const OutputPolicy>()> make) {
    auto d = describe(ComponentKind::OutputPolicy, std::move(type), std::move(description), {});
    d.adaptive = AdaptiveAttack::None;
    d.build = [make](Reader&) {
      Component c;
      c.output = make();
      return c;
    };
    return d;
  };
  out.push_back(
      plain("label_only", "only the top-1 label (the default)", [] { return std::make_shared<LabelOnly>(); }));
  {
    Binder<TopKOptions> b;
    b.arg(PARRY_BIND_CHECKED(TopKOptions, k));
    auto d = describe(ComponentKind::OutputPolicy, "top_k",
                      "the label and the k most probable classes with probabilities", b.options());
    d.adaptive = AdaptiveAttack::None;
    d.build = [b](Reader& r) {
      Component c;
      c.output = std::make_shared<TopK>(b.read(r));
      return c;
    };
    out.push_back(std::move(d));
  }
  {
    Binder<RoundedScoresOptions> b;
    b.arg(PARRY_BIND_CHECKED(RoundedScoresOptions, decimals));
    auto d = describe(ComponentKind::OutputPolicy, "rounded_scores", "the label and all probabilities, rounded",
                      b.options());
    d.adaptive = AdaptiveAttack::None;
    d.build = [b](Reader& r) {
      Component c;
      c.output = std::make_shared<RoundedScores>(b.read(r));
      return c;
    };
    out.push_back(std::move(d));
  }
  out.push_back(plain("full", "the label and the full probability vector (internal callers only)",
                      [] { return std::make_shared<Full>(); }));
}

std::string option_rule(const OptionDescriptor& o) {
  if (o.type == OptionType::Choice) {
    std::string list;
    for (const auto& c : o.choices) list += (list.empty() ? "" : ", ") + c;
    return "one of " + list;
  }
  return o.rule;
}

std::string capitalised(std::string text) {
  if (!text.empty() && text[0] >= 'a' && text[0] <= 'z') text[0] = static_cast<char>(text[0] - 'a' + 'A');
  return text;
}

std::string flags(const ComponentDescriptor& d) {
  std::string text = std::string("adaptive attack: ") + to_string(d.adaptive);
  if (d.randomised) text += " with EOT (randomised)";
  if (d.needs_fit) text += "; fitted on training images";
  return text;
}

}  // namespace

const char* to_string(ComponentKind kind) {
  switch (kind) {
    case ComponentKind::Preprocessor:
      return "preprocessor";
    case ComponentKind::Detector:
      return "detector";
    case ComponentKind::Gate:
      return "gate";
    case ComponentKind::OutputPolicy:
      return "output policy";
  }
  return "component";
}

const char* config_key(ComponentKind kind) {
  switch (kind) {
    case ComponentKind::Preprocessor:
      return "preprocess";
    case ComponentKind::Detector:
      return "detectors";
    case ComponentKind::Gate:
      return "gates";
    case ComponentKind::OutputPolicy:
      return "output";
  }
  return "";
}

const char* type_key(ComponentKind kind) {
  return kind == ComponentKind::OutputPolicy ? "policy" : "type";
}

const char* to_string(OptionType type) {
  switch (type) {
    case OptionType::Integer:
      return "int";
    case OptionType::Number:
      return "number";
    case OptionType::Boolean:
      return "bool";
    case OptionType::Choice:
      return "string";
    case OptionType::Numbers:
      return "[number]";
    case OptionType::Components:
      return "[preprocess]";
  }
  return "";
}

const char* to_string(AdaptiveAttack attack) {
  switch (attack) {
    case AdaptiveAttack::Gradient:
      return "gradient";
    case AdaptiveAttack::Bpda:
      return "BPDA";
    case AdaptiveAttack::DetectorAware:
      return "detector-aware";
    case AdaptiveAttack::BlackBox:
      return "black-box";
    case AdaptiveAttack::None:
      return "none";
  }
  return "";
}

const OptionDescriptor* ComponentDescriptor::option(const std::string& key) const {
  for (const auto& o : options) {
    if (o.key == key) return &o;
  }
  return nullptr;
}

const std::vector<ComponentDescriptor>& components() {
  static const std::vector<ComponentDescriptor> all = [] {
    std::vector<ComponentDescriptor> out;
    add_preprocessors(out);
    add_detectors(out);
    add_gates(out);
    add_output_policies(out);
    return out;
  }();
  return all;
}

std::vector<std::string> component_types(ComponentKind kind) {
  std::vector<std::string> types;
  for (const auto& d : components()) {
    if (d.kind == kind) types.push_back(d.type);
  }
  return types;
}

const ComponentDescriptor& component(ComponentKind kind, const std::string& type) {
  for (const auto& d : components()) {
    if (d.kind == kind && d.type == type) return d;
  }
  std::string list;
  for (const auto& t : component_types(kind)) list += (list.empty() ? "" : ", ") + t;
  throw OptionError(std::string("unknown ") + to_string(kind) + " type \"" + type + "\"; registered: " + list);
}

namespace detail {

std::optional<conceal::RedisOptions> read_state(const json& value, const std::string& path) {
  using conceal::FailurePolicy;
  using conceal::RedisOptions;
  constexpr const char* kExpected = "must be \"memory\", a URL redis://HOST[:PORT][/DATABASE] or an object with a url";
  if (value.is_string()) {
    const std::string url = value.get<std::string>();
    if (url == "memory") return std::nullopt;
    return at_path(path, [&] { return RedisOptions::from_url(url); });
  }
  if (!value.is_object()) fail(path, std::string(kExpected) + ", but is " + type_name(value));
  Object o(value, path);
  const std::string url = o.text("url", "", {});
  if (url.empty()) fail(o.child("url"), "is required: \"memory\" or redis://HOST[:PORT][/DATABASE]");
  // The other keys are checked for "memory" too, so that a config whose url
  // a command line replaces is valid either way.
  RedisOptions options =
      url == "memory" ? RedisOptions() : at_path(o.child("url"), [&] { return RedisOptions::from_url(url); });
  if (o.has("prefix")) {
    const std::string prefix = o.text("prefix", "", {});
    at_path(o.child("prefix"), [&] { options.prefix(prefix); });
  }
  const auto any = [](double) { return true; };
  if (o.has("timeout_ms")) {
    const double ms = o.number("timeout_ms", 0, any, "");
    at_path(o.child("timeout_ms"), [&] { options.timeout_ms(ms); });
  }
  if (o.has("reconnect_ms")) {
    const double ms = o.number("reconnect_ms", 0, any, "");
    at_path(o.child("reconnect_ms"), [&] { options.reconnect_ms(ms); });
  }
  if (o.has("failure")) {
    options.failure(o.text("failure", "", {"fail_closed", "fail_open"}) == "fail_open" ? FailurePolicy::FailOpen
                                                                                       : FailurePolicy::FailClosed);
  }
  o.finish();
  if (url == "memory") return std::nullopt;
  return options;
}

Component build_component(const ComponentDescriptor& descriptor, const json& value, const std::string& path,
                          const BuildContext& context) {
  Reader r(value, path, context);
  if (r.object().has(type_key(descriptor.kind))) r.object().get(type_key(descriptor.kind));
  Component c = descriptor.build(r);
  r.object().finish();
  return c;
}

Component build_any(ComponentKind kind, const json& value, const std::string& path, const BuildContext& context) {
  Object o(value, path);
  const std::string type = o.text(type_key(kind), "", component_types(kind));
  return build_component(component(kind, type), value, path, context);
}

}  // namespace detail

Component build_component(ComponentKind kind, const std::string& json_object, const BuildContext& context) {
  json value;
  try {
    value = json::parse(json_object);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers such as 1e309
    throw OptionError(std::string("config: not valid JSON: ") + e.what());
  }
  return detail::build_any(kind, value, to_string(kind), context);
}

std::string components_text() {
  std::ostringstream out;
  for (auto kind :
       {ComponentKind::Preprocessor, ComponentKind::Detector, ComponentKind::Gate, ComponentKind::OutputPolicy}) {
    out << to_string(kind) << "s (\"" << config_key(kind) << "\", named by \"" << type_key(kind) << "\"):\n";
    for (const auto& d : components()) {
      if (d.kind != kind) continue;
      out << "  " << d.type << ": " << d.description << " [" << flags(d) << "]\n";
      for (const auto& o : d.options) {
        out << "      " << o.key << " (" << to_string(o.type) << ", default " << o.default_value << ")";
        const auto rule = option_rule(o);
        if (!rule.empty()) out << ": " << rule;
        out << "\n";
      }
    }
  }
  return out.str();
}

std::string components_markdown() {
  std::ostringstream out;
  const std::pair<ComponentKind, const char*> sections[] = {{ComponentKind::Preprocessor, "Preprocessors"},
                                                            {ComponentKind::Detector, "Detectors"},
                                                            {ComponentKind::Gate, "Gates"},
                                                            {ComponentKind::OutputPolicy, "Output policies"}};
  for (const auto& [kind, title] : sections) {
    out << "### " << title << " (`" << config_key(kind) << "`, named by `" << type_key(kind) << "`)\n\n";
    for (const auto& d : components()) {
      if (d.kind != kind) continue;
      out << "#### `" << d.type << "`\n\n" << capitalised(d.description) << ". " << capitalised(flags(d)) << ".\n\n";
      if (d.options.empty()) {
        out << "No options.\n\n";
        continue;
      }
      out << "| key | type | default | rule |\n|---|---|---|---|\n";
      for (const auto& o : d.options) {
        out << "| `" << o.key << "` | " << to_string(o.type) << " | " << o.default_value << " | " << option_rule(o)
            << " |\n";
      }
      out << "\n";
    }
  }
  return out.str();
}

}  // namespace parry::config
