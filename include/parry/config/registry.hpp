// The component registry: one descriptor per component that the JSON defense
// configuration can build (docs/configuration.md, docs/architecture.md
// "Components are declared once").
//
// A descriptor states a component's JSON type name, a one-line description,
// its options (JSON key, type, default and the rule its Options setter
// enforces, read from the setter's declaration), whether it must be fitted,
// whether it is randomised, which adaptive attack the evaluator uses against
// it, and a factory from a JSON object to the component. The factory reads
// each raw JSON value with the setter's type and passes it to the setter; a
// rejected value is reported under its JSON path with the setter's own rule,
// so no range is written twice. parse_config, the evaluator (eval::evaluate)
// and the `parry` command line (`parry components`) all read this registry.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "parry/config/defense_config.hpp"
#include "parry/core/gate.hpp"
#include "parry/core/input_spec.hpp"
#include "parry/core/model.hpp"
#include "parry/core/output_policy.hpp"
#include "parry/core/preprocessor.hpp"

namespace parry::config {

/// The stage of a Guard a component belongs to.
enum class ComponentKind { Preprocessor, Detector, Gate, OutputPolicy };

/// "preprocessor", "detector", "gate", "output policy".
const char* to_string(ComponentKind kind);
/// Where a defense of the JSON config lists components of `kind`:
/// "preprocess", "detectors", "gates" or "output".
const char* config_key(ComponentKind kind);
/// The JSON key that names the component: "policy" for output policies, else "type".
const char* type_key(ComponentKind kind);

/// The JSON type of an option's value.
enum class OptionType {
  Integer,     ///< a JSON integer
  Number,      ///< any JSON number
  Boolean,     ///< true or false
  Choice,      ///< one string of OptionDescriptor::choices
  Numbers,     ///< an array of numbers
  Components,  ///< an array of preprocess entries (feature squeezing's squeezers)
};

/// "int", "number", "bool", "string", "[number]", "[preprocess]".
const char* to_string(OptionType type);

/// How the adaptive attacker of eval::evaluate handles a component.
enum class AdaptiveAttack {
  Gradient,       ///< differentiates through it exactly (it is differentiable)
  Bpda,           ///< straight-through gradient (BPDA, Athalye et al. 2018) by default
  DetectorAware,  ///< adds the detector's score to the loss (Carlini & Wagner 2017)
  BlackBox,       ///< a gate: only black-box attacks through Guard::predict meet it
  None,           ///< an output policy: gradient attacks never see it
};

/// "gradient", "BPDA", "detector-aware", "black-box", "none".
const char* to_string(AdaptiveAttack attack);

/// One option of a component as the JSON config spells it.
struct OptionDescriptor {
  std::string key;  ///< JSON key
  OptionType type = OptionType::Number;
  std::string default_value;  ///< as the docs show it ("4", "true", "area", "required")
  /// The rule the option's setter enforces, as its error message states it
  /// ("must be in 1..8"); empty when every value of the type is accepted.
  std::string rule;
  std::vector<std::string> choices;  ///< Choice options: the accepted strings
  /// Integer options: passes `value` to the Options setter alone, on options
  /// that hold the component's defaults; throws the setter's
  /// parry::OptionError if it rejects the value. Empty for other types.
  std::function<void(int64_t value)> check_integer;
  /// Number options: the same for a floating-point value.
  std::function<void(double value)> check_number;
};

/// What the factory of a component needs besides its JSON object.
struct BuildContext {
  const Model* model = nullptr;  ///< detectors that copy the model (mc_dropout) need it
  InputSpec input{1, 28, 28};    ///< the defense's input (the query monitor fingerprints this shape)
  /// Time in seconds for throttles; empty: the steady clock (GateFactory).
  std::function<double()> clock;
  /// Salt key for query monitors (FreshGateSettings::salt_key); empty: random.
  std::optional<uint64_t> salt_key;
};

/// What a factory builds: the member of the descriptor's kind is set.
struct Component {
  std::shared_ptr<const Preprocessor> preprocessor;
  DetectorSpec detector;  ///< type, fitting settings and the (unfitted) detector
  std::shared_ptr<Gate> gate;
  std::shared_ptr<const OutputPolicy> output;
};

namespace detail {
class Reader;  // src/config/reader.hpp: strict reading of one JSON object
}

/// One component the JSON config can build.
struct ComponentDescriptor {
  ComponentKind kind = ComponentKind::Preprocessor;
  std::string type;                       ///< JSON type (or policy) name, e.g. "bit_depth"
  std::string description;                ///< one line
  std::vector<OptionDescriptor> options;  ///< every key besides the type key
  bool needs_fit = false;                 ///< fit() on training data before calibration (detectors)
  bool randomised = false;                ///< output depends on random draws: attacked with EOT
  AdaptiveAttack adaptive = AdaptiveAttack::Gradient;
  /// Detectors: weight of the detector's score in the detector-aware loss.
  double detector_aware_weight = 0.0;
  /// Builds the component from a JSON object (internal reader; use
  /// build_component from outside the config library).
  std::function<Component(detail::Reader&)> build;

  /// The option with JSON key `key`, or null.
  const OptionDescriptor* option(const std::string& key) const;
};

/// Every registered component, grouped by kind in the order of ComponentKind.
const std::vector<ComponentDescriptor>& components();
/// The type names registered for `kind`, in registration order.
std::vector<std::string> component_types(ComponentKind kind);
/// The descriptor of `type`. @throws parry::OptionError "unknown <kind> type
///   "<type>"; registered: a, b, c" if there is none.
const ComponentDescriptor& component(ComponentKind kind, const std::string& type);

/// Builds one component from the JSON text of its object (e.g.
/// `{"type": "bit_depth", "bits": 3}`), as a defense entry of the config would.
/// @throws parry::OptionError naming the bad key, as parse_config does.
Component build_component(ComponentKind kind, const std::string& json_object, const BuildContext& context);

/// Plain-text listing of every component and its options, for `parry components`.
std::string components_text();
/// The component reference of docs/configuration.md as Markdown (one table per component).
std::string components_markdown();

}  // namespace parry::config
