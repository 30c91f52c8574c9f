// Defense and evaluation configuration from JSON (docs/configuration.md).
//
// A config file describes the defenses to build (each becomes a Guard: input
// spec, gates, preprocessors, detectors, output policy), the attacks to run
// against them and the evaluation settings. Parsing is strict: an unknown key,
// a value of the wrong type or out of range is a parry::OptionError whose
// message starts with the JSON path of the bad key, e.g.
//   "config: defenses[1].preprocess[0].bits: must be in 1..8, but got 9".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "parry/core/detector.hpp"
#include "parry/core/gate.hpp"
#include "parry/core/guard.hpp"
#include "parry/core/input_spec.hpp"
#include "parry/core/output_policy.hpp"
#include "parry/core/preprocessor.hpp"

namespace parry::config {

struct ComponentDescriptor;  // parry/config/registry.hpp

/// What a gate built anew reads instead of the deployment's defaults.
struct FreshGateSettings {
  /// Time in seconds a throttle reads; empty: the steady clock (conceal::steady_seconds).
  std::function<double()> clock;
  /// Secret salt key of a query monitor that has none of its own
  /// (conceal::QueryMonitorOptions::salt_key); empty: a random key, as a
  /// deployment draws. An evaluation sets it from its seed so that its
  /// black-box rows repeat.
  std::optional<uint64_t> salt_key;
};

/// Builds one gate anew, with fresh state: a throttle with every bucket full,
/// a query monitor with an empty store.
using GateFactory = std::function<std::shared_ptr<Gate>(const FreshGateSettings& settings)>;

/// One detector of a defense and how to prepare it.
struct DetectorSpec {
  /// Its registry type: config::component_types(ComponentKind::Detector).
  std::string type;
  /// False-positive rate on clean data that calibration aims for, in [0, 1).
  double target_fpr = 0.05;
  /// Training images whose features the kernel density stores (kernel_density, uncertainty_density).
  int64_t fit_images = 10000;
  /// Correctly classified images used to fit the combiner (uncertainty_density):
  /// adversarial examples are made from them with PGD at fit_epsilon.
  int64_t combiner_images = 300;
  double fit_epsilon = 0.1;
  /// The detector (unfitted and uncalibrated after parsing).
  std::shared_ptr<Detector> detector;
  /// True if it needs fit() on training data before calibration (the registry says so).
  bool needs_fit() const;
  /// The registry entry of `type`. @throws parry::OptionError for an unregistered type.
  const ComponentDescriptor& descriptor() const;
};

/// One defense: everything needed to build its Guard.
struct DefenseSpec {
  std::string name;
  /// The Guard's input: the config's "input", else the data set's shape.
  InputSpec input{1, 28, 28};
  /// The Guard's gates. They hold state (throttle buckets, monitor history)
  /// shared by every Guard built from this spec.
  std::vector<std::shared_ptr<Gate>> gates;
  /// One factory per gate, in the same order: parse_config fills both, so
  /// black-box evaluation runs can meet the same gates with fresh state.
  std::vector<GateFactory> gate_factories;
  /// Appends a gate built by `factory` (steady clock) and keeps the factory.
  DefenseSpec& add_gate(GateFactory factory);
  /// New gates with fresh state, one per gate, from gate_factories; `gates`
  /// is not touched. @throws parry::OptionError if a gate has no factory
  ///   (added to `gates` by hand).
  std::vector<std::shared_ptr<Gate>> fresh_gates(const FreshGateSettings& settings = {}) const;
  std::vector<std::shared_ptr<const Preprocessor>> preprocessors;
  /// Registry type of each preprocessor parsed from JSON (empty for hand-added ones).
  std::vector<std::string> preprocessor_types;
  std::vector<DetectorSpec> detectors;
  std::shared_ptr<const OutputPolicy> output;  ///< null: LabelOnly
  /// True if a preprocessor or detector of the registry is randomised, so an
  /// adaptive attacker averages gradients over draws (EOT).
  bool is_randomised() const;
  /// The model's own input transform (the config's top-level model_input):
  /// model space, applied inside the model, after every defense.
  std::vector<std::shared_ptr<const Preprocessor>> model_input;
  /// The config's top-level feature_layer: the submodule whose input is the
  /// feature vector (Model::with_feature_layer); empty: the model's own split.
  std::string feature_layer;
  /// `model` split at feature_layer (if set), with model_input in front
  /// (Model::with_input_transform): the model this defense's Guard serves and
  /// its detectors score with.
  Model model_for(const Model& model) const;
  /// The Guard over model_for(model) with all stages added (calibrate detectors first).
  std::shared_ptr<const Guard> build_guard(const Model& model) const;
  /// The same Guard with fresh_gates(settings) instead of `gates`: what a new
  /// client meets at a just-deployed service.
  std::shared_ptr<const Guard> build_fresh_guard(const Model& model, const FreshGateSettings& settings = {}) const;
};

/// An attack of the evaluation. Budgets ε come from EvaluationSpec::epsilons.
struct AttackSpec {
  /// "fgsm", "pgd", "cw" (C&W-L2, minimum distortion; ε unused) or
  /// "autoattack" (attack::auto_attack, L∞ at each ε).
  std::string type;
  int64_t steps = 40;               ///< pgd; autoattack: APGD and FAB iterations (default 100)
  double step_ratio = 0.1;          ///< pgd: step size as a fraction of ε
  int64_t restarts = 1;             ///< pgd
  int64_t binary_search_steps = 5;  ///< cw
  int64_t max_iterations = 100;     ///< cw
  int64_t eot_samples = 4;          ///< adaptive runs against randomised defenses
  /// autoattack: "standard", "plus", "rand" or "custom" (given by `components`).
  std::string version = "standard";
  /// autoattack: the components of a custom ensemble, in order ("apgd-ce",
  /// "apgd-dlr", "apgd-t", "fab", "fab-t", "square"); empty for a published version.
  std::vector<std::string> components;
  int64_t square_queries = 5000;  ///< autoattack: Square's queries per image
  int64_t target_classes = 9;     ///< autoattack: targets of APGD-T and FAB-T
};

/// The evaluation's black-box rows (eval::black_box, docs/evaluation.md):
/// Square and HopSkipJump through each defense's full Guard.
struct BlackBoxSpec {
  /// The first `images` attacked images get one run of each attack
  /// (at most EvaluationSpec::images); 0 disables the rows.
  int64_t images = 20;
  int64_t square_queries = 1000;         ///< Square's queries per image, >= 1
  int64_t hop_skip_jump_queries = 1000;  ///< HopSkipJump's queries per image, >= 10
  /// L2 budget (pixel units) at which HopSkipJump's success is counted; 1.5
  /// suits 28×28 images in [0, 1] (scale with √(pixels) for larger ones).
  double l2_epsilon = 1.5;
  /// For a defense with a QueryMonitor gate, also run the attackers that
  /// adapt to its detections (OARS-Square at each ε, OARS-HopSkipJump;
  /// attack/oars.hpp) at the same budgets, next to the plain ones. Default
  /// true: a monitor's figures are paired with an adaptive attack's.
  bool adaptive_monitor = true;
};

/// "evaluation.certified": randomized smoothing of the bare model (with its
/// model_input) at each σ, certified with Cohen et al.'s CERTIFY and attacked
/// through the smoothed classifier (eval/certified.hpp).
struct CertifiedSpec {
  /// Noise levels σ in pixel units; empty (the default) disables the rows.
  std::vector<double> sigmas;
  int64_t images = 100;      ///< test images certified per σ (the first of the evaluation's order)
  int64_t n0 = 100;          ///< CERTIFY's selection copies (Cohen et al.: 100), <= n
  int64_t n = 10000;         ///< CERTIFY's estimation copies (Cohen et al.: 100,000)
  double alpha = 0.001;      ///< failure probability of each certificate
  int64_t noise_batch = 1000;  ///< noisy copies per forward pass
  /// L2 radii (pixel units) of the table: certified and empirical accuracy at each.
  std::vector<double> radii{0.0, 0.25, 0.5, 0.75, 1.0};
  int64_t attack_images = 20;   ///< images attacked at each radius (at most images; 0: no attack rows)
  int64_t attack_steps = 20;    ///< PGD-L2 and APGD-L2 iterations
  int64_t attack_samples = 8;   ///< noise draws per gradient (EOT, SmoothAdv's m)
  int64_t predict_n = 1000;     ///< PREDICT's copies when judging an attacked image
};

struct EvaluationSpec {
  int64_t images = 500;                           ///< test images attacked
  std::vector<double> epsilons{0.03, 0.05, 0.1};  ///< L∞ budgets in pixel units [0, 1]
  double roc_epsilon = 0.1;                       ///< ε of the PGD examples for ROC curves
  int64_t calibration_images = 2000;              ///< clean held-out images for thresholds
  int64_t latency_repeats = 20;                   ///< predict() calls timed per defense
  /// Images attacked per step (capped by each Guard's max_batch): the
  /// evaluation holds one batch, not the data set.
  int64_t batch_size = 128;
  uint64_t seed = 0;
  BlackBoxSpec black_box;
  CertifiedSpec certified;
};

struct Config {
  EvaluationSpec evaluation;
  std::vector<AttackSpec> attacks;
  std::vector<DefenseSpec> defenses;
  /// The model's own input transform ("model_input": e.g. normalize), shared
  /// by every defense: model space, never seen by the defenses.
  std::vector<std::shared_ptr<const Preprocessor>> model_input;
  /// "feature_layer": the TorchScript submodule whose input is the feature
  /// vector for kernel density and the fast MC-dropout path, e.g. "fc" for a
  /// torchvision ResNet (Model::with_feature_layer); empty: none.
  std::string feature_layer;
  /// `model` split at feature_layer (if set), with model_input in front.
  Model model_for(const Model& model) const;
  /// Class names by label index (the optional top-level "classes": non-empty,
  /// distinct, non-empty strings). Empty when the config does not name them;
  /// services then answer with "0".."K-1" (serve::class_names).
  std::vector<std::string> classes;
};

/// Parses a config from JSON text. `model` (without model_input: the parser
/// applies it) is needed by detectors that copy it (mc_dropout).
/// `data_input` is the input of every defense that gives none (the command
/// line passes the data set's shape); without it each defense must give "input".
/// @throws parry::OptionError with the JSON path of the problem.
Config parse_config(const std::string& json_text, const Model& model,
                    const std::optional<InputSpec>& data_input = std::nullopt);
/// Reads and parses a config file. @throws parry::IoError if it cannot be read.
Config load_config(const std::string& path, const Model& model,
                   const std::optional<InputSpec>& data_input = std::nullopt);

/// A complete example config (every component), as documented.
std::string example_config();

}  // namespace parry::config
