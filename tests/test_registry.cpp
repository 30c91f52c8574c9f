#include "parry/config/registry.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <regex>
#include <set>
#include <sstream>

#include "attack_support.hpp"
#include "config/reader.hpp"  // internal: builds a component from a JSON value (NaN and inf included)
#include "parry/preprocess/bit_depth.hpp"
#include "test_paths.hpp"

using namespace parry;
using parry::testing::kGrayInput;
using namespace parry::config;
using parry::testing::reference_model;
using json = nlohmann::json;

namespace {

// Every number written in `text` ("must be in 1..8" -> 1, 8).
std::vector<double> numbers_in(const std::string& text) {
  std::vector<double> out;
  const std::regex number(R"([-+]?\d+(\.\d+)?([eE][-+]?\d+)?)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), number); it != std::sregex_iterator(); ++it) {
    out.push_back(std::stod(it->str()));
  }
  return out;
}

// Values around every boundary the rule and the default mention, and generic extremes.
std::vector<int64_t> integer_probes(const OptionDescriptor& o) {
  std::set<int64_t> probes = {
      0, 1, -1, 2, int64_t{1} << 31, (int64_t{1} << 31) - 1, -(int64_t{1} << 31) - 1, int64_t{1} << 40};
  auto anchors = numbers_in(o.rule + " " + o.default_value);
  for (double a : anchors) {
    const auto n = static_cast<int64_t>(a);
    for (int64_t d = -1; d <= 1; ++d) probes.insert(n + d);
  }
  return {probes.begin(), probes.end()};
}

std::vector<double> number_probes(const OptionDescriptor& o) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> probes = {0.0, 1.0, -1.0, 0.5, 1e300, -1e300, inf, -inf, std::nan("")};
  auto anchors = numbers_in(o.rule + " " + o.default_value);
  for (double a : anchors) {
    for (double v : {a, std::nextafter(a, inf), std::nextafter(a, -inf), a - 0.5, a + 0.5, a - 1, a + 1}) {
      probes.push_back(v);
    }
  }
  return probes;
}

BuildContext context() {
  static const Model model = reference_model();
  BuildContext c;
  c.model = &model;
  return c;
}

// True if the config accepts `value` for the key: building the component
// either succeeds or fails for a reason other than this key (a constraint
// between options checked when the component is built).
bool config_accepts(const ComponentDescriptor& d, const std::string& key, const json& value) {
  json entry = {{type_key(d.kind), d.type}, {key, value}};
  try {
    config::detail::build_component(d, entry, "probe", context());
    return true;
  } catch (const OptionError& e) {
    return std::string(e.what()).rfind("config: probe." + key + ":", 0) != 0;
  }
}

template <typename F>
bool setter_accepts(F&& check) {
  try {
    check();
    return true;
  } catch (const OptionError&) {
    return false;
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

const std::string kConfigurationDoc = parry::testing::fixture_path("../../docs/configuration.md");

}  // namespace

TEST(Registry, TheConfigAcceptsExactlyTheValuesTheOptionsSettersAccept) {
  int probed = 0;
  for (const auto& d : components()) {
    for (const auto& o : d.options) {
      const std::string where = d.type + "." + o.key;
      // Every probe: the config accepts it exactly when the setter does.
      auto probe_all = [&](const auto& probes, const auto& check) {
        int accepted = 0, rejected = 0;
        for (const auto v : probes) {
          const bool setter = setter_accepts([&] { check(v); });
          EXPECT_EQ(config_accepts(d, o.key, v), setter)
              << where << " = " << v << ": the config range differs from the Options validation";
          (setter ? accepted : rejected)++;
          ++probed;
        }
        EXPECT_GT(accepted, 0) << where;
        EXPECT_GT(rejected, 0) << where << ": no boundary probed";
      };
      if (o.type == OptionType::Integer) {
        ASSERT_TRUE(o.check_integer) << where;
        probe_all(integer_probes(o), o.check_integer);
        for (double not_integer : {0.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
          EXPECT_FALSE(config_accepts(d, o.key, not_integer)) << where << " = " << not_integer;
        }
      } else if (o.type == OptionType::Number) {
        ASSERT_TRUE(o.check_number) << where;
        probe_all(number_probes(o), o.check_number);
      }
    }
  }
  EXPECT_GT(probed, 300);
}

TEST(Registry, ARejectedValueIsReportedUnderItsPathWithTheSettersRule) {
  try {
    build_component(ComponentKind::Preprocessor, R"({"type": "bit_depth", "bits": 0})", context());
    FAIL() << "accepted bits = 0";
  } catch (const OptionError& e) {
    EXPECT_EQ(std::string(e.what()),
              std::string("config: preprocessor.bits: ") + preprocess::BitDepthOptions::bits_rule() + ", but got 0");
  }
  try {
    preprocess::BitDepthOptions().bits(9);
    FAIL() << "accepted bits = 9";
  } catch (const OptionError& e) {
    EXPECT_EQ(std::string(e.what()), "BitDepthOptions::bits: must be in 1..8, but got 9");
  }
  EXPECT_EQ(component(ComponentKind::Preprocessor, "bit_depth").option("bits")->rule,
            preprocess::BitDepthOptions::bits_rule());
}

TEST(Registry, EveryDocumentedComponentIsRegisteredAndViceVersa) {
  const std::string doc = read_file(kConfigurationDoc);
  ASSERT_FALSE(doc.empty()) << kConfigurationDoc;
  std::set<std::string> documented, registered;
  const std::regex heading(R"(^#### `([a-z_]+)`)", std::regex::multiline);
  for (auto it = std::sregex_iterator(doc.begin(), doc.end(), heading); it != std::sregex_iterator(); ++it) {
    documented.insert((*it)[1].str());
  }
  for (const auto& d : components()) registered.insert(d.type);
  EXPECT_EQ(documented, registered);
  // The reference in the docs is the registry's own (`parry components --markdown`),
  // so each rule there is the one its setter enforces.
  EXPECT_NE(doc.find(components_markdown()), std::string::npos)
      << "docs/configuration.md is out of date; paste `parry components --markdown`:\n"
      << components_markdown();
}

TEST(Registry, AnUnknownTypeListsTheRegisteredNames) {
  for (auto kind :
       {ComponentKind::Preprocessor, ComponentKind::Detector, ComponentKind::Gate, ComponentKind::OutputPolicy}) {
    const auto types = component_types(kind);
    ASSERT_FALSE(types.empty());
    const std::string entry = std::string(R"({")") + type_key(kind) + R"(": "no_such_component"})";
    try {
      build_component(kind, entry, context());
      FAIL() << "accepted an unknown " << to_string(kind);
    } catch (const OptionError& e) {
      for (const auto& t : types) EXPECT_NE(std::string(e.what()).find(t), std::string::npos) << e.what();
    }
    try {
      component(kind, "no_such_component");
      FAIL();
    } catch (const OptionError& e) {
      EXPECT_NE(std::string(e.what()).find("registered: " + types.front()), std::string::npos) << e.what();
    }
  }
}

TEST(Registry, DescriptorsDriveFittingRandomnessAndTheAdaptiveAttack) {
  EXPECT_TRUE(component(ComponentKind::Detector, "kernel_density").needs_fit);
  EXPECT_TRUE(component(ComponentKind::Detector, "uncertainty_density").needs_fit);
  EXPECT_FALSE(component(ComponentKind::Detector, "mc_dropout").needs_fit);
  EXPECT_TRUE(component(ComponentKind::Detector, "mc_dropout").randomised);
  EXPECT_FALSE(component(ComponentKind::Detector, "softmax_confidence").randomised);
  EXPECT_EQ(component(ComponentKind::Preprocessor, "jpeg").adaptive, AdaptiveAttack::Bpda);
  EXPECT_EQ(component(ComponentKind::Preprocessor, "gaussian_blur").adaptive, AdaptiveAttack::Gradient);
  for (const auto& type : component_types(ComponentKind::Detector)) {
    EXPECT_EQ(component(ComponentKind::Detector, type).adaptive, AdaptiveAttack::DetectorAware) << type;
    EXPECT_GT(component(ComponentKind::Detector, type).detector_aware_weight, 0.0) << type;
  }
  const auto config = parse_config(R"({"defenses": [
      {"name": "plain", "preprocess": [{"type": "bit_depth"}], "detectors": [{"type": "kernel_density"}]},
      {"name": "random", "detectors": [{"type": "mc_dropout", "samples": 4}]}]})",
                                   reference_model(), kGrayInput);
  EXPECT_FALSE(config.defenses[0].is_randomised());
  EXPECT_TRUE(config.defenses[0].detectors[0].needs_fit());
  EXPECT_EQ(config.defenses[0].preprocessor_types, std::vector<std::string>{"bit_depth"});
  EXPECT_TRUE(config.defenses[1].is_randomised());
  EXPECT_FALSE(config.defenses[1].detectors[0].needs_fit());
  for (const auto& d : components()) {
    EXPECT_FALSE(d.description.empty()) << d.type;
    EXPECT_NE(components_text().find(d.type + ": " + d.description), std::string::npos) << d.type;
  }
}
