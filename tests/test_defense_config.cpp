#include "parry/config/defense_config.hpp"

#include <fstream>

#include "attack_support.hpp"
#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/detect/uncertainty_density.hpp"

using namespace parry;
using parry::testing::kGrayInput;
using parry::testing::reference_model;

namespace {

// Expects parse_config to fail with a message that starts with the path.
void expect_rejected(const std::string& json, const std::string& path_and_problem) {
  try {
    config::parse_config(json, reference_model(), kGrayInput);
    ADD_FAILURE() << "accepted: " << json;
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("config: " + path_and_problem), std::string::npos)
        << "message: " << e.what() << "\nexpected: " << path_and_problem;
  }
}

std::string with_defense(const std::string& defense) {
  return R"({"defenses": [)" + defense + "]}";
}

}  // namespace

TEST(DefenseConfig, TheDocumentedExampleBuildsEveryComponent) {
  const auto config = config::parse_config(config::example_config(), reference_model(), kGrayInput);
  EXPECT_EQ(config.evaluation.images, 500);
  EXPECT_EQ(config.evaluation.epsilons, (std::vector<double>{0.03, 0.05, 0.1}));
  EXPECT_EQ(config.evaluation.black_box.images, 20);
  ASSERT_EQ(config.attacks.size(), 3u);
  EXPECT_EQ(config.attacks[1].type, "pgd");
  EXPECT_EQ(config.attacks[1].steps, 40);
  ASSERT_EQ(config.defenses.size(), 4u);
  const auto& combined = config.defenses[3];
  EXPECT_EQ(combined.name, "combined");
  EXPECT_EQ(combined.gates.size(), 2u);
  EXPECT_EQ(combined.preprocessors.size(), 1u);
  ASSERT_EQ(combined.detectors.size(), 1u);
  EXPECT_TRUE(combined.detectors[0].needs_fit());
  EXPECT_NE(std::dynamic_pointer_cast<detect::UncertaintyDensity>(combined.detectors[0].detector), nullptr);
  const auto guard = combined.build_guard(reference_model());
  const auto text = guard->describe();
  EXPECT_NE(text.find("Throttle"), std::string::npos) << text;
  EXPECT_NE(text.find("QueryMonitor"), std::string::npos) << text;
  EXPECT_NE(text.find("BitDepth(bits=4"), std::string::npos) << text;
  EXPECT_NE(text.find("LabelOnly"), std::string::npos) << text;
  EXPECT_EQ(config.defenses[1].preprocessors[1]->describe().rfind("MedianSmoothing", 0), 0u);
}

TEST(DefenseConfig, ModelInputIsTheModelsOwnTransformAndDefensesSeePixels) {
  const auto config = config::parse_config(R"({"model_input": [{"type": "normalize", "mean": [0.5], "std": [0.25]}],
    "defenses": [{"name": "squeezed", "preprocess": [{"type": "bit_depth", "bits": 2}],
                  "detectors": [{"type": "feature_squeezing", "squeezers": [{"type": "bit_depth", "bits": 1}]}],
                  "output": {"policy": "full"}}]})",
                                           reference_model(), kGrayInput);
  ASSERT_EQ(config.model_input.size(), 1u);
  const auto& d = config.defenses[0];
  ASSERT_EQ(d.model_input.size(), 1u);
  d.detectors[0].detector->set_threshold(0.5);
  const auto guard = d.build_guard(reference_model());
  EXPECT_NE(guard->describe().find("after Normalize"), std::string::npos) << guard->describe();
  // The Guard's model is the reference CNN on (x - 0.5) / 0.25 after the pixel-space BitDepth.
  const auto x = torch::rand({3, 1, 28, 28});
  const auto quantised = torch::round(x * 3) / 3;
  const auto expected = torch::softmax(reference_model().logits((quantised - 0.5) / 0.25), 1);
  EXPECT_TRUE(torch::allclose(guard->predict(x).scores, expected, 1e-5, 1e-6));
}

TEST(DefenseConfig, EveryPreprocessorDetectorAndPolicyParses) {
  const auto config = config::parse_config(with_defense(R"({"name": "all",
    "preprocess": [{"type": "bit_depth", "bits": 3, "gradient": "blocked"}, {"type": "median_smoothing", "window": 3},
                   {"type": "gaussian_blur", "kernel_size": 5, "sigma": 0.8}, {"type": "jpeg", "quality": 60},
                   {"type": "resize", "height": 14, "width": 14, "mode": "bilinear"}],
    "detectors": [{"type": "softmax_confidence"}, {"type": "mc_dropout", "samples": 10},
                  {"type": "kernel_density", "bandwidth": 0.9, "fit_images": 100},
                  {"type": "feature_squeezing", "squeezers": [{"type": "bit_depth", "bits": 1}]},
                  {"type": "uncertainty_density", "target_fpr": 0.01}],
    "output": {"policy": "top_k", "k": 2}})"),
                                           reference_model(), kGrayInput);
  const auto& d = config.defenses[0];
  EXPECT_EQ(d.preprocessors.size(), 5u);
  EXPECT_EQ(d.preprocessors[0]->gradient_policy(), GradientPolicy::Blocked);
  EXPECT_EQ(d.detectors.size(), 5u);
  EXPECT_DOUBLE_EQ(d.detectors[4].target_fpr, 0.01);
  EXPECT_EQ(d.detectors[2].fit_images, 100);
  EXPECT_NE(d.output->describe().find("2"), std::string::npos);
  for (const char* policy : {"label_only", "rounded_scores", "full"}) {
    EXPECT_NO_THROW(
        config::parse_config(with_defense(std::string(R"({"name": "p", "output": {"policy": ")") + policy + R"("}})"),
                             reference_model(), kGrayInput));
  }
}

TEST(DefenseConfig, RejectsUnknownKeysWithTheirPath) {
  expect_rejected(R"({"defenses": [{"name": "a"}], "extra": 1})", "extra: unknown key");
  expect_rejected(with_defense(R"({"name": "a", "preprocess": [{"type": "bit_depth", "bitz": 3}]})"),
                  "defenses[0].preprocess[0].bitz: unknown key");
  expect_rejected(with_defense(R"({"name": "a"}, {"name": "b", "detectors": [{"type": "mc_dropout", "T": 5}]})"),
                  "defenses[1].detectors[0].T: unknown key");
}

TEST(DefenseConfig, RejectsWrongTypesWithTheirPath) {
  expect_rejected(with_defense(R"({"name": "a", "preprocess": [{"type": "bit_depth", "bits": "4"}]})"),
                  "defenses[0].preprocess[0].bits: must be an integer, but is string");
  expect_rejected(with_defense(R"({"name": "a", "preprocess": {"type": "jpeg"}})"),
                  "defenses[0].preprocess: must be an array, but is object");
  expect_rejected(R"({"defenses": [{"name": "a"}], "evaluation": {"epsilons": [0.1, "x"]}})",
                  "evaluation.epsilons[1]: must be a number");
  expect_rejected(R"([1, 2])", "(top level): must be an object");
  expect_rejected(with_defense(R"({"name": "a", "output": {"policy": "full", "k": true}})"),
                  "defenses[0].output.k: unknown key");
}

TEST(DefenseConfig, RejectsOutOfRangeValuesWithTheirPath) {
  expect_rejected(with_defense(R"({"name": "a"}, {"name": "b", "preprocess": [{"type": "bit_depth", "bits": 9}]})"),
                  "defenses[1].preprocess[0].bits: must be in 1..8, but got 9");
  expect_rejected(with_defense(R"({"name": "a", "detectors": [{"type": "mc_dropout", "target_fpr": 1.5}]})"),
                  "defenses[0].detectors[0].target_fpr: must be in [0, 1), but got 1.5");
  expect_rejected(with_defense(R"({"name": "a", "gates": [{"type": "throttle", "rate": -1}]})"),
                  "defenses[0].gates[0].rate: must be finite and > 0, but got -1");
  expect_rejected(with_defense(R"({"name": "a", "gates": [{"type": "query_monitor", "action": "ban"}]})"),
                  "defenses[0].gates[0].action: must be one of flag, reject, silent");
  expect_rejected(with_defense(R"({"name": "a", "preprocess": [{"type": "median_smoothing", "window": 0}]})"),
                  "defenses[0].preprocess[0].window: must be in 1..15, but got 0");
  expect_rejected(R"({"defenses": [{"name": "a"}], "evaluation": {"epsilons": [2.0]}})",
                  "evaluation.epsilons[0]: must be in (0, 1]");
  expect_rejected(with_defense(R"({"name": "a", "preprocess": [{"type": "sharpen"}]})"),
                  "defenses[0].preprocess[0].type: must be one of");
  expect_rejected(with_defense(R"({"name": "a", "preprocess": [{"type": "normalize", "mean": [0.5], "std": [0]}]})"),
                  "defenses[0].preprocess[0]: NormalizeOptions");
  expect_rejected(with_defense(R"({"name": "a", "preprocess": [{"type": "normalize", "mean": [0.5], "std": [1]}]})"),
                  "defenses[0].preprocess[0]: Normalize");
  expect_rejected(R"({"model_input": [{"type": "bit_depth", "bits": 3}], "defenses": [{"name": "a"}]})",
                  "model_input[0]: Model::with_input_transform");
  expect_rejected(with_defense(R"({"name": "a"}, {"name": "a"})"), "defenses[1].name: duplicate defense name");
  expect_rejected(with_defense(R"({"preprocess": []})"), "defenses[0].name: is required");
  expect_rejected(R"({"defenses": []})", "defenses: must hold at least one defense");
  expect_rejected(R"({"defenses": [)", "not valid JSON");
  // Found by fuzz_config: a number out of double's range is nlohmann's
  // out_of_range, not a parse_error, and escaped as a foreign exception.
  expect_rejected(R"({"defenses": [{"name": "a"}], "evaluation": {"images": 1e309}})", "not valid JSON");
}

TEST(DefenseConfig, LoadingAMissingFileIsAnIoError) {
  EXPECT_THROW(config::load_config("/nonexistent/parry.json", reference_model(), kGrayInput), IoError);
  parry::testing::TempDir dir;
  {
    std::ofstream out(dir.file("c.json"));
    out << config::example_config();
  }
  EXPECT_EQ(config::load_config(dir.file("c.json"), reference_model(), kGrayInput).defenses.size(), 4u);
}

TEST(DefenseConfig, TheInputComesFromTheDataUnlessTheDefenseGivesOne) {
  const std::string json = R"({"defenses": [{"name": "from-data"},
                                {"name": "own", "input": {"channels": 1, "height": 28, "width": 28}}]})";
  const auto config = config::parse_config(json, reference_model(), InputSpec(3, 32, 32));
  EXPECT_EQ(config.defenses[0].input.channels(), 3);
  EXPECT_EQ(config.defenses[0].input.height(), 32);
  EXPECT_EQ(config.defenses[1].input.channels(), 1);
  // Without a data set, every defense must say what it accepts.
  try {
    config::parse_config(json, reference_model());
    ADD_FAILURE() << "parsed a defense without an input shape";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("config: defenses[0].input: is required"), std::string::npos) << e.what();
  }
}

TEST(DefenseConfig, ClassNamesAreOptionalDistinctAndNonEmpty) {
  EXPECT_TRUE(config::parse_config(with_defense(R"({"name": "a"})"), reference_model(), kGrayInput).classes.empty());
  const auto config = config::parse_config(R"({"classes": ["cat", "dog"], "defenses": [{"name": "a"}]})",
                                           reference_model(), kGrayInput);
  EXPECT_EQ(config.classes, (std::vector<std::string>{"cat", "dog"}));
  expect_rejected(R"({"classes": "cat", "defenses": [{"name": "a"}]})", "classes: must be an array");
  expect_rejected(R"({"classes": [], "defenses": [{"name": "a"}]})", "classes: must name at least one class");
  expect_rejected(R"({"classes": ["cat", 3], "defenses": [{"name": "a"}]})", "classes[1]: must be a string");
  expect_rejected(R"({"classes": ["cat", ""], "defenses": [{"name": "a"}]})", "classes[1]: must be a non-empty");
  expect_rejected(R"({"classes": ["cat", "cat"], "defenses": [{"name": "a"}]})",
                  "classes[1]: duplicate class name \"cat\"");
}

TEST(DefenseConfig, AutoAttackEntriesNameAVersionOrTheirComponents) {
  const auto parsed = config::parse_config(
      R"({"attacks": [{"type": "autoattack"},
                      {"type": "autoattack", "version": "rand", "square_queries": 100},
                      {"type": "autoattack", "components": ["apgd-ce", "square"], "steps": 20, "target_classes": 3}],
          "defenses": [{"name": "undefended"}]})",
      reference_model(), kGrayInput);
  ASSERT_EQ(parsed.attacks.size(), 3u);
  EXPECT_EQ(parsed.attacks[0].version, "standard");
  EXPECT_EQ(parsed.attacks[0].steps, 100);  // AutoAttack's iterations, not PGD's 40
  EXPECT_EQ(parsed.attacks[0].square_queries, 5000);
  EXPECT_EQ(parsed.attacks[0].target_classes, 9);
  EXPECT_EQ(parsed.attacks[1].version, "rand");
  EXPECT_EQ(parsed.attacks[1].square_queries, 100);
  EXPECT_EQ(parsed.attacks[2].version, "custom");
  EXPECT_EQ(parsed.attacks[2].components, (std::vector<std::string>{"apgd-ce", "square"}));
  EXPECT_EQ(parsed.attacks[2].steps, 20);
  expect_rejected(R"({"attacks": [{"type": "autoattack", "version": "strong"}]})",
                  "attacks[0].version: must be one of");
  expect_rejected(R"({"attacks": [{"type": "autoattack", "version": "custom"}]})",
                  "attacks[0].components: is required by the custom version");
  expect_rejected(R"({"attacks": [{"type": "autoattack", "version": "plus", "components": ["fab"]}]})",
                  "attacks[0].components: is only read by the custom version");
  expect_rejected(R"({"attacks": [{"type": "autoattack", "components": ["apgd-ce", "pgd"]}]})",
                  "attacks[0].components[1]: must be one of 'apgd-ce'");
  expect_rejected(R"({"attacks": [{"type": "autoattack", "components": ["fab", "fab"]}]})",
                  "attacks[0].components[1]: lists 'fab' twice");
  expect_rejected(R"({"attacks": [{"type": "autoattack", "components": [3]}]})",
                  "attacks[0].components[0]: must be a string");
  expect_rejected(R"({"attacks": [{"type": "autoattack", "square_queries": 0}]})", "attacks[0].square_queries:");
  expect_rejected(R"({"attacks": [{"type": "pgd", "version": "standard"}]})", "attacks[0].version");
}

TEST(DefenseConfig, BlackBoxSettingsHaveDefaultsAndParseStrictly) {
  const auto defaults = config::parse_config(with_defense(R"({"name": "a"})"), reference_model(), kGrayInput);
  EXPECT_EQ(defaults.evaluation.black_box.images, 20);
  EXPECT_EQ(defaults.evaluation.black_box.square_queries, 1000);
  EXPECT_EQ(defaults.evaluation.black_box.hop_skip_jump_queries, 1000);
  EXPECT_DOUBLE_EQ(defaults.evaluation.black_box.l2_epsilon, 1.5);
  const auto given = config::parse_config(
      R"({"defenses": [{"name": "a"}], "evaluation": {"black_box": {"images": 0, "square_queries": 7,
          "hop_skip_jump_queries": 10, "l2_epsilon": 0.25}}})",
      reference_model(), kGrayInput);
  EXPECT_EQ(given.evaluation.black_box.images, 0);
  EXPECT_EQ(given.evaluation.black_box.square_queries, 7);
  EXPECT_EQ(given.evaluation.black_box.hop_skip_jump_queries, 10);
  EXPECT_DOUBLE_EQ(given.evaluation.black_box.l2_epsilon, 0.25);
  const auto bad = [](const std::string& black_box) {
    return R"({"defenses": [{"name": "a"}], "evaluation": {"black_box": )" + black_box + "}}";
  };
  expect_rejected(bad(R"({"images": -1})"), "evaluation.black_box.images: must be in 0..100000, but got -1");
  expect_rejected(bad(R"({"images": 2.5})"), "evaluation.black_box.images: must be an integer");
  expect_rejected(bad(R"({"square_queries": 0})"), "evaluation.black_box.square_queries: must be in 1..1000000");
  expect_rejected(bad(R"({"hop_skip_jump_queries": 9})"),
                  "evaluation.black_box.hop_skip_jump_queries: must be in 10..1000000, but got 9");
  expect_rejected(bad(R"({"l2_epsilon": 0})"), "evaluation.black_box.l2_epsilon: must be finite and > 0");
  expect_rejected(bad(R"({"l2_epsilon": "big"})"), "evaluation.black_box.l2_epsilon: must be a number");
  expect_rejected(bad(R"({"queries": 100})"), "evaluation.black_box.queries: unknown key");
  expect_rejected(bad("20"), "evaluation.black_box: must be an object");
}

TEST(DefenseConfig, CertifiedSettingsHaveDefaultsAndParseStrictly) {
  const auto defaults = config::parse_config(with_defense(R"({"name": "a"})"), reference_model(), kGrayInput);
  const auto& d = defaults.evaluation.certified;
  EXPECT_TRUE(d.sigmas.empty());
  EXPECT_EQ(d.images, 100);
  EXPECT_EQ(d.n0, 100);
  EXPECT_EQ(d.n, 10000);
  EXPECT_DOUBLE_EQ(d.alpha, 0.001);
  EXPECT_EQ(d.radii, (std::vector<double>{0.0, 0.25, 0.5, 0.75, 1.0}));
  EXPECT_EQ(d.attack_images, 20);
  const auto given = config::parse_config(
      R"({"defenses": [{"name": "a"}], "evaluation": {"certified": {"sigmas": [0.12, 0.5], "images": 10, "n0": 50,
          "n": 2000, "alpha": 0.01, "noise_batch": 64, "radii": [0, 0.3], "attack_steps": 5, "attack_samples": 4,
          "predict_n": 300}}})",
      reference_model(), kGrayInput);
  const auto& g = given.evaluation.certified;
  EXPECT_EQ(g.sigmas, (std::vector<double>{0.12, 0.5}));
  EXPECT_EQ(g.images, 10);
  EXPECT_EQ(g.attack_images, 10);  // the default 20, capped at images
  EXPECT_EQ(g.n0, 50);
  EXPECT_EQ(g.n, 2000);
  EXPECT_DOUBLE_EQ(g.alpha, 0.01);
  EXPECT_EQ(g.noise_batch, 64);
  EXPECT_EQ(g.radii, (std::vector<double>{0.0, 0.3}));
  EXPECT_EQ(g.attack_steps, 5);
  EXPECT_EQ(g.attack_samples, 4);
  EXPECT_EQ(g.predict_n, 300);
  // n0's default (Cohen et al.'s 100) is capped at a smaller n.
  const auto small = config::parse_config(
      R"({"defenses": [{"name": "a"}], "evaluation": {"certified": {"sigmas": [0.25], "n": 50}}})", reference_model(),
      kGrayInput);
  EXPECT_EQ(small.evaluation.certified.n0, 50);
  const auto bad = [](const std::string& certified) {
    return R"({"defenses": [{"name": "a"}], "evaluation": {"certified": )" + certified + "}}";
  };
  expect_rejected(bad(R"({"sigmas": [0.25, 0]})"), "evaluation.certified.sigmas[1]: must be finite and > 0");
  expect_rejected(bad(R"({"radii": [-0.5]})"), "evaluation.certified.radii[0]: must be finite and >= 0");
  expect_rejected(bad(R"({"radii": []})"), "evaluation.certified.radii: must hold at least one radius");
  expect_rejected(bad(R"({"n": 500, "n0": 600})"), "evaluation.certified.n0: must be in 1..500, but got 600");
  expect_rejected(bad(R"({"alpha": 1})"), "evaluation.certified.alpha: must be in (0, 1)");
  expect_rejected(bad(R"({"images": 5, "attack_images": 6})"),
                  "evaluation.certified.attack_images: must be in 0..5, but got 6");
  expect_rejected(bad(R"({"sigma": 0.25})"), "evaluation.certified.sigma: unknown key");
}

TEST(DefenseConfig, GatesAreBuiltAgainWithFreshStateTheGivenClockAndSaltKey) {
  const auto config =
      config::parse_config(with_defense(R"({"name": "a", "gates": [{"type": "throttle", "rate": 1, "burst": 2},
                                             {"type": "query_monitor", "action": "reject"}]})"),
                           reference_model(), kGrayInput);
  const auto& spec = config.defenses[0];
  ASSERT_EQ(spec.gate_factories.size(), 2u);
  const RequestContext client{"c"};
  const auto image = torch::rand({1, 1, 28, 28});
  // Spend the config's own throttle bucket: fresh gates do not share it.
  EXPECT_EQ(spec.gates[0]->admit(client, image).action, GateDecision::Action::Admit);
  EXPECT_EQ(spec.gates[0]->admit(client, image).action, GateDecision::Action::Admit);
  EXPECT_EQ(spec.gates[0]->admit(client, image).action, GateDecision::Action::Reject);
  EXPECT_EQ(spec.gates[1]->admit(client, image).action, GateDecision::Action::Admit);
  EXPECT_EQ(spec.gates[1]->admit(client, image).action, GateDecision::Action::Reject);  // the same image again
  double now = 0.0;
  config::FreshGateSettings settings;
  settings.clock = [&] { return now; };
  const auto fresh = spec.fresh_gates(settings);
  ASSERT_EQ(fresh.size(), 2u);
  EXPECT_NE(fresh[0], spec.gates[0]);
  EXPECT_EQ(fresh[0]->describe(), spec.gates[0]->describe());
  EXPECT_EQ(fresh[1]->describe(), spec.gates[1]->describe());
  EXPECT_EQ(fresh[1]->admit(client, image).action, GateDecision::Action::Admit);  // an empty store
  EXPECT_EQ(fresh[0]->admit(client, image).action, GateDecision::Action::Admit);  // a full bucket
  EXPECT_EQ(fresh[0]->admit(client, image).action, GateDecision::Action::Admit);
  EXPECT_EQ(fresh[0]->admit(client, image).action, GateDecision::Action::Reject);
  now = 1.0;  // the fresh throttle reads the given clock: one second refills one image
  EXPECT_EQ(fresh[0]->admit(client, image).action, GateDecision::Action::Admit);
  EXPECT_EQ(fresh[0]->admit(client, image).action, GateDecision::Action::Reject);
  // A given salt key makes a fresh monitor's fingerprints repeat; without
  // one, each fresh monitor draws its own.
  const auto monitor = [](const std::shared_ptr<Gate>& gate) {
    const auto m = std::dynamic_pointer_cast<conceal::QueryMonitor>(gate);
    EXPECT_NE(m, nullptr);
    return m;
  };
  config::FreshGateSettings keyed, keyed_again, other_key;
  keyed.salt_key = keyed_again.salt_key = 7;
  other_key.salt_key = 8;
  EXPECT_EQ(monitor(spec.fresh_gates(keyed)[1])->fingerprint(image[0]),
            monitor(spec.fresh_gates(keyed_again)[1])->fingerprint(image[0]));
  EXPECT_NE(monitor(spec.fresh_gates(keyed)[1])->fingerprint(image[0]),
            monitor(spec.fresh_gates(other_key)[1])->fingerprint(image[0]));
  EXPECT_NE(monitor(spec.fresh_gates()[1])->fingerprint(image[0]),
            monitor(spec.fresh_gates()[1])->fingerprint(image[0]));
  EXPECT_FALSE(monitor(spec.fresh_gates(keyed)[1])->options().salt_key() == std::nullopt);
  // A fresh Guard is built from fresh gates too.
  const auto guard = spec.build_fresh_guard(reference_model(), config::FreshGateSettings{[] { return 0.0; }, {}});
  ASSERT_EQ(guard->gates().size(), 2u);
  EXPECT_NE(guard->gates()[0], spec.gates[0]);
  EXPECT_NE(guard->gates()[1], spec.gates[1]);

  // A gate added by hand cannot be built again; add_gate keeps its factory.
  config::DefenseSpec by_hand = spec;
  by_hand.gates.push_back(spec.gates[0]);
  EXPECT_THROW(by_hand.fresh_gates(), OptionError);
  config::DefenseSpec with_factory = spec;
  with_factory.add_gate(
      [](const config::FreshGateSettings&) -> std::shared_ptr<Gate> { return std::make_shared<conceal::Throttle>(); });
  EXPECT_EQ(with_factory.fresh_gates().size(), 3u);
  EXPECT_THROW(with_factory.add_gate(nullptr), OptionError);
}
