#include "parry/attack/oars.hpp"

#include <mutex>

#include "attack_support.hpp"
#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/query_monitor.hpp"
#include "parry/conceal/throttle.hpp"
#include "parry/eval/black_box.hpp"

using namespace parry;
using namespace parry::attack;

namespace {

class OarsTest : public parry::testing::SeededTest {};

// A deterministic stateful defense: a query whose image lies within L2
// distance `radius` of any earlier query (detected or not) is detected —
// refused with reason "flagged" (Reject) or answered with verdict Flagged.
// Counts what it saw.
class NearbyGate final : public Gate {
 public:
  NearbyGate(double radius, bool reject) : radius_(radius), reject_(reject) {}
  GateDecision admit(const RequestContext&, const torch::Tensor& input) override {
    std::lock_guard<std::mutex> lock(mutex_);
    bool near = false;
    for (int64_t i = 0; i < input.size(0); ++i) {
      const torch::Tensor image = input[i].flatten();
      for (const auto& old : seen_) near = near || (image - old).norm().item<double>() <= radius_;
      seen_.push_back(image.clone());
    }
    (near ? detected_ : admitted_) += 1;
    if (!near) return GateDecision::admit();
    return reject_ ? GateDecision::reject(reason::kFlagged) : GateDecision::flag(reason::kFlagged);
  }
  std::string describe() const override { return "NearbyGate"; }
  int64_t admitted() const { return admitted_; }
  int64_t detected() const { return detected_; }

 private:
  double radius_;
  bool reject_;
  std::mutex mutex_;
  std::vector<torch::Tensor> seen_;
  int64_t admitted_ = 0, detected_ = 0;
};

Guard guard_with(std::vector<std::shared_ptr<Gate>> gates, bool scores) {
  GuardBuilder builder(parry::testing::reference_model(), InputSpec(1, 28, 28));
  for (auto& g : gates) builder.add_gate(std::move(g));
  if (scores) builder.set_output_policy(std::make_shared<conceal::Full>());
  return builder.build();
}

}  // namespace

TEST_F(OarsTest, SquareLearnsProposalsThatTheGateAccepts) {
  const auto data = parry::testing::correctly_classified(1);
  for (const bool reject : {true, false}) {
    SCOPED_TRACE(reject ? "reject" : "flag");
    // Square's own proposals (one square) lie within 1 of the point they change: detected.
    auto plain_gate = std::make_shared<NearbyGate>(1.0, reject);
    const Guard plain = guard_with({plain_gate}, true);
    const auto r = square(plain, data.images, data.labels, SquareOptions(0.1).p_init(0.05).max_queries(300).seed(1));
    if (reject) {
      EXPECT_TRUE(r.stopped_by_defense);
      EXPECT_EQ(r.stop_reason, "flagged");
      EXPECT_LE(plain_gate->admitted(), 1) << "Square is stopped at its second query";
    } else {
      EXPECT_EQ(r.flagged_answers, r.queries.sum().item<int64_t>() - 1) << "every answer after the first flagged";
    }

    auto gate = std::make_shared<NearbyGate>(1.0, reject);
    const Guard guard = guard_with({gate}, true);
    const auto o = oars_square(guard, data.images, data.labels,
                               OarsSquareOptions(SquareOptions(0.1).p_init(0.05).max_queries(300).seed(1)));
    RecordProperty(reject ? "squares_reject" : "squares_flag", std::to_string(o.scale[0].item<float>()));
    EXPECT_EQ(o.queries[0].item<int64_t>(), gate->admitted() + gate->detected()) << "every image sent is counted";
    EXPECT_EQ(o.detected[0].item<int64_t>(), gate->detected());
    EXPECT_GT(o.scale[0].item<float>(), 1.f) << "more than one square per proposal";
    EXPECT_GT(o.adaptation_queries[0].item<int64_t>(), 0);
    // Rejection sampling: it keeps going on accepted answers.
    EXPECT_GE(gate->admitted(), 50) << gate->detected() << " detected";
    EXPECT_LT(o.detection_rate(), 0.5);
    if (!o.success[0].item<bool>()) {
      EXPECT_EQ(o.queries[0].item<int64_t>(), 300) << "the budget is used";
    }
    EXPECT_LE(o.norm[0].item<float>(), 0.1f + 1e-6f);
    EXPECT_FALSE(o.stopped_by_defense) << o.stop_reason;
  }
}

TEST_F(OarsTest, HopSkipJumpLearnsAProbeRadiusAboveTheGatesRadius) {
  const auto data = parry::testing::correctly_classified(1);
  const double radius = 0.6;
  auto plain_gate = std::make_shared<NearbyGate>(radius, true);
  const auto r = hop_skip_jump(guard_with({plain_gate}, false), data.images, data.labels,
                               HopSkipJumpOptions().max_queries(800).seed(2));
  EXPECT_TRUE(r.stopped_by_defense);
  EXPECT_EQ(r.stop_reason, "flagged");

  auto gate = std::make_shared<NearbyGate>(radius, true);
  const auto o = oars_hop_skip_jump(guard_with({gate}, false), data.images, data.labels,
                                    OarsHopSkipJumpOptions(HopSkipJumpOptions().max_queries(800).seed(2)));
  RecordProperty("delta", std::to_string(o.scale[0].item<float>()));
  EXPECT_GT(o.scale[0].item<float>(), radius) << "probes closer than the radius are all detected";
  EXPECT_LE(o.scale[0].item<float>(), 4.f);
  ASSERT_TRUE(o.success[0].item<bool>());
  EXPECT_EQ(o.queries[0].item<int64_t>(), gate->admitted() + gate->detected());
  EXPECT_GE(gate->admitted(), 200) << "gradient probes are accepted";
  EXPECT_LE(o.norm[0].item<float>(), o.start_norm[0].item<float>() + 1e-5f);
  // Every kept point is adversarial.
  EXPECT_NE(parry::testing::reference_model().logits(o.adversarial).argmax(1)[0].item<int64_t>(),
            data.labels[0].item<int64_t>());
}

TEST_F(OarsTest, ARateLimitStopsTheAdaptiveAttackers) {
  const auto data = parry::testing::correctly_classified(2);
  double now = 0;
  auto throttled = [&](bool scores) {
    return guard_with({std::make_shared<conceal::Throttle>(
                           conceal::ThrottleOptions().rate(1).burst(20).clock([&now] { return now; })),
                       std::make_shared<NearbyGate>(3.0, true)},
                      scores);
  };
  const auto s =
      oars_square(throttled(true), data.images, data.labels, OarsSquareOptions(SquareOptions(0.1).max_queries(500)));
  EXPECT_TRUE(s.stopped_by_defense);
  EXPECT_EQ(s.stop_reason, "rate_limited");
  EXPECT_EQ(s.queries.sum().item<int64_t>(), 21) << "20 answered, 1 refused, then it stops (no retry, no adaptation)";
  EXPECT_EQ(s.queries[1].item<int64_t>(), 0) << "the second image is not attacked";

  const auto h = oars_hop_skip_jump(throttled(false), data.images, data.labels,
                                    OarsHopSkipJumpOptions(HopSkipJumpOptions().max_queries(500)));
  EXPECT_TRUE(h.stopped_by_defense);
  EXPECT_EQ(h.stop_reason, "rate_limited");
  EXPECT_EQ(h.queries.sum().item<int64_t>(), 21);
}

TEST_F(OarsTest, BadOptionsNameTheOption) {
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const OptionError& e) {
      return std::string(e.what());
    }
    return std::string("no OptionError");
  };
  EXPECT_NE(message([] { OarsSquareOptions().max_squares(0); }).find("OarsSquareOptions::max_squares"),
            std::string::npos);
  EXPECT_NE(message([] {
              OarsSquareOptions().squares_detection_rate(1.5);
            }).find("OarsSquareOptions::squares_detection_rate"),
            std::string::npos);
  EXPECT_NE(message([] {
              OarsSquareOptions().max_consecutive_detections(0);
            }).find("OarsSquareOptions::max_consecutive_detections"),
            std::string::npos);
  EXPECT_NE(message([] { OarsHopSkipJumpOptions().min_delta(-1); }).find("OarsHopSkipJumpOptions::min_delta"),
            std::string::npos);
  EXPECT_NE(message([] {
              OarsHopSkipJumpOptions().delta_detection_rate(2);
            }).find("OarsHopSkipJumpOptions::delta_detection_rate"),
            std::string::npos);
  EXPECT_NE(message([] { OarsHopSkipJumpOptions().probe_rounds(0); }).find("OarsHopSkipJumpOptions::probe_rounds"),
            std::string::npos);
  const auto data = parry::testing::correctly_classified(1);
  const Guard scored = guard_with({}, true);
  EXPECT_NE(message([&] {
              oars_square(scored, data.images, data.labels, OarsSquareOptions().min_squares(50).max_squares(10));
            }).find("OarsSquareOptions::min_squares"),
            std::string::npos);
  EXPECT_NE(message([&] {
              oars_hop_skip_jump(scored, data.images, data.labels, OarsHopSkipJumpOptions().min_delta(3).max_delta(1));
            }).find("OarsHopSkipJumpOptions::min_delta"),
            std::string::npos);
  const Guard label_only = guard_with({}, false);
  EXPECT_THROW(oars_square(label_only, data.images, data.labels), OptionError) << "Square needs scores";
}

TEST_F(OarsTest, SeededRunsAreIdentical) {
  const auto data = parry::testing::correctly_classified(1);
  auto run_square = [&] {
    return oars_square(guard_with({std::make_shared<NearbyGate>(3.0, true)}, true), data.images, data.labels,
                       OarsSquareOptions(SquareOptions(0.1).p_init(0.05).max_queries(150).seed(7)));
  };
  const auto a = run_square(), b = run_square();
  EXPECT_TRUE(torch::equal(a.adversarial, b.adversarial));
  EXPECT_TRUE(torch::equal(a.queries, b.queries));
  EXPECT_TRUE(torch::equal(a.detected, b.detected));
  EXPECT_TRUE(torch::equal(a.scale, b.scale));
  auto run_hsj = [&](uint64_t seed) {
    return oars_hop_skip_jump(guard_with({std::make_shared<NearbyGate>(0.6, true)}, false), data.images, data.labels,
                              OarsHopSkipJumpOptions(HopSkipJumpOptions().max_queries(300).seed(seed)));
  };
  const auto h1 = run_hsj(3), h2 = run_hsj(3), h3 = run_hsj(4);
  EXPECT_TRUE(torch::equal(h1.adversarial, h2.adversarial));
  EXPECT_TRUE(torch::equal(h1.detected, h2.detected));
  EXPECT_FALSE(torch::equal(h1.adversarial, h3.adversarial)) << "the seed matters";
}

TEST_F(OarsTest, AgainstTheDefaultQueryMonitorTheAdaptiveAttackersKeepQuerying) {
  // The monitor's default settings, action Reject: the plain attacks are
  // stopped within a few queries; OARS keeps sending accepted queries.
  const auto data = parry::testing::correctly_classified(1);
  auto monitored = [](bool scores) {
    return guard_with(
        {std::make_shared<conceal::QueryMonitor>(
            conceal::QueryMonitorOptions().match_spec(InputSpec(1, 28, 28)).action(conceal::MonitorAction::Reject))},
        scores);
  };
  const auto s = square(monitored(true), data.images, data.labels, SquareOptions(0.1).max_queries(300));
  EXPECT_TRUE(s.stopped_by_defense);
  const auto o =
      oars_square(monitored(true), data.images, data.labels, OarsSquareOptions(SquareOptions(0.1).max_queries(300)));
  RecordProperty("monitor_squares", std::to_string(o.scale[0].item<float>()));
  RecordProperty("monitor_square_detection", std::to_string(o.detection_rate()));
  EXPECT_GT(o.queries[0].item<int64_t>() - o.detected[0].item<int64_t>(), 20);

  const auto h = oars_hop_skip_jump(monitored(false), data.images, data.labels,
                                    OarsHopSkipJumpOptions(HopSkipJumpOptions().max_queries(400)));
  RecordProperty("monitor_delta", std::to_string(h.scale[0].item<float>()));
  RecordProperty("monitor_hsj_detection", std::to_string(h.detection_rate()));
  EXPECT_GT(h.queries[0].item<int64_t>() - h.detected[0].item<int64_t>(), 20);
}

TEST_F(OarsTest, TheEvaluationAddsAdaptiveRowsForADefenseWithAQueryMonitor) {
  const auto data = parry::testing::correctly_classified(2);
  config::EvaluationSpec settings;
  settings.epsilons = {0.1};
  settings.black_box.square_queries = 60;
  settings.black_box.hop_skip_jump_queries = 80;
  config::DefenseSpec defense;
  defense.name = "monitored";
  defense.output = std::make_shared<conceal::Full>();
  defense.add_gate([](const config::FreshGateSettings& fresh) {
    return std::make_shared<conceal::QueryMonitor>(conceal::QueryMonitorOptions()
                                                       .match_spec(InputSpec(1, 28, 28))
                                                       .action(conceal::MonitorAction::Reject)
                                                       .salt_key(fresh.salt_key));
  });
  const auto rows = eval::black_box(defense, parry::testing::reference_model(), data.images, data.labels, settings);
  std::vector<std::string> names;
  for (const auto& r : rows) names.push_back(r.attack);
  EXPECT_EQ(names, (std::vector<std::string>{"Square", "OARS-Square", "HopSkipJump", "OARS-HopSkipJump"}));
  for (const auto& r : rows) {
    SCOPED_TRACE(r.attack);
    EXPECT_EQ(r.images, 2);
    if (r.attack.rfind("OARS-", 0) == 0) {
      EXPECT_GE(r.median_queries, 20) << "the adaptive attacker keeps querying";
    }
  }
  settings.black_box.adaptive_monitor = false;
  EXPECT_EQ(eval::black_box(defense, parry::testing::reference_model(), data.images, data.labels, settings).size(), 2u);
  config::DefenseSpec plain;  // no monitor: no adaptive rows
  plain.output = std::make_shared<conceal::Full>();
  settings.black_box.adaptive_monitor = true;
  EXPECT_EQ(eval::black_box(plain, parry::testing::reference_model(), data.images, data.labels, settings).size(), 2u);
}
