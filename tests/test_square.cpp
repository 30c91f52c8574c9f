#include "attack_support.hpp"

#include "parry/conceal/output_policies.hpp"
#include "parry/conceal/throttle.hpp"

using namespace parry;
using namespace parry::attack;

namespace {
class SquareTest : public parry::testing::SeededTest {};

std::shared_ptr<const Guard> scored_guard(std::shared_ptr<Gate> gate = nullptr) {
  GuardBuilder builder(parry::testing::reference_model(), InputSpec(1, 28, 28).max_batch(64));
  builder.set_output_policy(std::make_shared<conceal::Full>());
  if (gate) builder.add_gate(std::move(gate));
  return builder.build_shared();
}
}  // namespace

TEST_F(SquareTest, PaperSchedule) {
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 1, 10000), 0.8);
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 11, 10000), 0.4);
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 201, 10000), 0.1);
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 9000, 10000), 0.8 / 512);
  // Rescaled to the budget: 1,000 queries halve at 1, 5, 20, ...
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 2, 1000), 0.4);
  // AutoAttack's 5,000 queries keep the fixed iterations (resc_schedule=False).
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 11, 5000, false), 0.4);
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 10, 5000, false), 0.8);
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 4999, 5000, false), 0.8 / 128);
  EXPECT_DOUBLE_EQ(square_fraction(0.8, 10, 5000, true), 0.4);
}

TEST_F(SquareTest, FoolsTheReferenceModelWithin2000Queries) {
  auto data = parry::testing::correctly_classified(32);
  auto guard = GuardBuilder(parry::testing::reference_model(), InputSpec(1, 28, 28).max_batch(10))
                   .set_output_policy(std::make_shared<conceal::Full>())  // 32 images: queried in requests of 10
                   .build_shared();
  auto r = square(*guard, data.images, data.labels, SquareOptions(0.1).max_queries(2000));
  RecordProperty("square_success", std::to_string(r.success_rate()));
  RecordProperty("square_median_queries", std::to_string(r.queries.to(torch::kFloat32).median().item<float>()));
  EXPECT_GE(r.success_rate(), 0.8);
  EXPECT_FALSE(r.stopped_by_defense);
  EXPECT_LE(r.queries.max().item<int64_t>(), 2000);
  EXPECT_LE(r.norm.max().item<float>(), 0.1f + 1e-6f);
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  // The reported successes are real: the model misclassifies them.
  auto fooled = parry::testing::reference_model().logits(r.adversarial).argmax(1).ne(data.labels);
  EXPECT_TRUE(torch::equal(fooled, r.success));
}

TEST_F(SquareTest, StopsWhenThrottledAndRefusesLabelOnlyAnswers) {
  auto data = parry::testing::correctly_classified(4);
  double now = 0;
  auto guard = scored_guard(
      std::make_shared<conceal::Throttle>(conceal::ThrottleOptions().rate(1).burst(20).clock([&now] { return now; })));
  auto r = square(*guard, data.images, data.labels, SquareOptions(0.05).max_queries(500));
  EXPECT_TRUE(r.stopped_by_defense);
  EXPECT_EQ(r.stop_reason, "rate_limited");
  EXPECT_LE(r.queries.sum().item<int64_t>(), 20) << "only the admitted images are counted";

  Guard label_only(parry::testing::reference_model(), InputSpec(1, 28, 28));
  EXPECT_THROW(square(label_only, data.images, data.labels), OptionError);
  EXPECT_THROW(SquareOptions(-0.1), OptionError);
  EXPECT_THROW(SquareOptions(0.1).max_queries(0), OptionError);
  EXPECT_THROW(SquareOptions(0.1).p_init(0), OptionError);
}
