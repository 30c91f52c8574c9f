#include "attack/fab_projection.hpp"
#include "attack_support.hpp"

#include <chrono>
#include <iostream>

using namespace parry;
using namespace parry::attack;

namespace {
class FabTest : public parry::testing::SeededTest {};

// Two classes on 1×4×4 inputs: logit difference f₁ − f₀ = w·x + c.
struct TwoClass {
  parry::testing::LinearModel model;
  torch::Tensor w;  // D
  double c;
};

TwoClass two_class(torch::Tensor w, double c) {
  const int64_t d = w.numel();
  auto weight = torch::zeros({2, d});
  weight[1] = w;
  auto bias = torch::zeros({2});
  bias[1] = c;
  return {{weight, bias}, w, c};
}

// Smallest λ with Σ a_j·min(λ, β_j) >= g, by bisection (the gain is
// continuous and non-decreasing); +inf if even λ = max β falls short.
double bisect_radius(const torch::Tensor& a, const torch::Tensor& breakpoints, double g) {
  auto gain = [&](double lambda) { return (a * breakpoints.clamp_max(lambda)).sum().item<double>(); };
  double hi = breakpoints.max().item<double>();
  if (gain(hi) < g) return std::numeric_limits<double>::infinity();
  double lo = 0;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    (gain(mid) >= g ? hi : lo) = mid;
  }
  return hi;
}

// Independent reference for the box-constrained projection of one point p
// onto w·z = b (float64): bisection on the radius instead of sorting.
torch::Tensor reference_projection(const torch::Tensor& p, const torch::Tensor& w, double b, Norm norm, double lo,
                                   double hi) {
  const double gap = b - (w * p).sum().item<double>();
  const auto v = gap >= 0 ? w : -w;
  const auto room = torch::where(v > 0, hi - p, p - lo) * v.ne(0);
  const auto speed = v.abs();
  if (norm == Norm::Linf) {
    const double lambda = bisect_radius(speed, room, std::abs(gap));
    return v.sign() * torch::minimum(room, torch::full_like(room, lambda));
  }
  const auto breakpoints = torch::where(speed > 0, room / speed.clamp_min(1e-300), torch::zeros_like(room));
  const double mu = bisect_radius(speed * speed, breakpoints, std::abs(gap));
  return torch::where(speed > 0, v.sign() * torch::minimum(room, speed * mu), torch::zeros_like(room));
}

// The closed-form L∞ distance to the linear boundary when the box binds:
// moving each pixel by min(λ, its room) along sign(w), find the smallest λ
// that crosses (bisection).
double linf_distance_in_box(const torch::Tensor& x, const torch::Tensor& w, double c) {
  const double margin = -((w * x).sum().item<double>() + c);  // > 0: class 0 at x
  const auto room = torch::where(w > 0, 1 - x, x);
  return bisect_radius(w.abs(), room, margin);
}
double l2_distance_in_box(const torch::Tensor& x, const torch::Tensor& w, double c) {
  const double margin = -((w * x).sum().item<double>() + c);
  const auto room = torch::where(w > 0, 1 - x, x);
  const double mu = bisect_radius(w * w, room / w.abs(), margin);
  return torch::minimum(room, w.abs() * mu).norm().item<double>();
}

// Minimum-norm perturbations of the reference implementation (fra31/auto-attack FABAttack_PT.attack_single_run, 100
// iterations, no random start) on the 16 images of correctly_classified(16): benchmarks/peer_fab.py.
const std::vector<float> kReferenceLinf = {0.028283f, 0.032742f, 0.088439f, 0.075764f, 0.008988f, 0.058354f,
                                           0.014852f, 0.026065f, 0.032118f, 0.048326f, 0.013092f, 0.037815f,
                                           0.024793f, 0.043778f, 0.006059f, 0.042246f};
const std::vector<float> kReferenceL2 = {0.395432f, 0.530135f, 1.138307f, 1.021902f, 0.150933f, 0.921727f,
                                         0.230102f, 0.445877f, 0.422448f, 0.715962f, 0.229702f, 0.515357f,
                                         0.362958f, 0.582331f, 0.085454f, 0.632209f};

// Largest relative difference between per-image norms and the reference's.
float worst_relative_gap(const torch::Tensor& norms, const std::vector<float>& reference) {
  const auto want = torch::tensor(reference);
  return ((norms - want).abs() / want).max().item<float>();
}

torch::Tensor predictions(const LogitsFn& f, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return f(x).argmax(1);
}
}  // namespace

TEST_F(FabTest, ProjectionMatchesHandCases) {
  using parry::attack::detail::fab_projection;
  auto project1 = [](std::vector<double> p, std::vector<double> w, double gap, Norm norm) {
    auto pt = torch::tensor(p, torch::kFloat64).view({1, -1}), wt = torch::tensor(w, torch::kFloat64).view({1, -1});
    auto b = (wt * pt).sum(1) + gap;
    return fab_projection(pt, wt, b, norm, 0, 1).flatten();
  };
  auto expect = [](const torch::Tensor& got, std::vector<double> want) {
    EXPECT_TRUE(torch::allclose(got, torch::tensor(want, torch::kFloat64), 0, 1e-12)) << got;
  };
  // L∞, no box constraint: λ = gap / ‖w‖₁ along sign(w); a zero weight does not move.
  expect(project1({0.5, 0.5, 0.5}, {1, -2, 0}, 0.9, Norm::Linf), {0.3, -0.3, 0});
  // Downwards (w·p above b).
  expect(project1({0.5, 0.5}, {1, 0}, -0.3, Norm::Linf), {-0.3, 0});
  // L∞, the box binds: the first pixel has room 0.1, the second takes the rest (λ = 0.4).
  expect(project1({0.9, 0.5}, {1, 1}, 0.5, Norm::Linf), {0.1, 0.4});
  // Unreachable inside the box: the corner that gets closest.
  expect(project1({0.9, 0.5}, {1, 1}, 1.0, Norm::Linf), {0.1, 0.5});
  // L2, no box constraint: gap · w / ‖w‖².
  expect(project1({0.5, 0.5, 0.5}, {1, 2, 2}, 0.3, Norm::L2), {0.3 / 9, 0.6 / 9, 0.6 / 9});
  // L2, the box binds: (0.2, 0.2) would leave the box; 0.05 saturates, 0.35 goes to the other pixel.
  expect(project1({0.95, 0.5}, {1, 1}, 0.4, Norm::L2), {0.05, 0.35});
  // Already on the hyperplane.
  expect(project1({0.2, 0.7}, {1, -1}, 0, Norm::L2), {0, 0});
  // A general box [lo, hi] = [-1, 2]: room 0.5 for the first pixel (L∞, λ = 1).
  {
    auto p = torch::tensor({1.5, 0.0}, torch::kFloat64).view({1, -1});
    auto w = torch::tensor({1.0, -1.0}, torch::kFloat64).view({1, -1});
    auto got = fab_projection(p, w, (w * p).sum(1) + 1.5, Norm::Linf, -1, 2).flatten();
    EXPECT_TRUE(torch::allclose(got, torch::tensor({0.5, -1.0}, torch::kFloat64), 0, 1e-12)) << got;
  }
}

TEST_F(FabTest, ProjectionMatchesABisectionReferenceOnRandomRows) {
  using parry::attack::detail::fab_projection;
  const int64_t n = 40, d = 30;
  auto p = torch::rand({n, d}, torch::kFloat64);
  auto w = torch::randn({n, d}, torch::kFloat64) * (torch::rand({n, d}, torch::kFloat64) > 0.1);  // some zeros
  // Gaps from tiny to beyond the box's reach.
  auto b = (w * p).sum(1) + torch::randn({n}, torch::kFloat64) * 4;
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    auto got = fab_projection(p, w, b, norm, 0, 1);
    int reachable = 0;
    for (int64_t i = 0; i < n; ++i) {
      auto want = reference_projection(p[i], w[i], b[i].item<double>(), norm, 0, 1);
      EXPECT_TRUE(torch::allclose(got[i], want, 1e-9, 1e-9)) << to_string(norm) << " row " << i << "\n"
                                                             << torch::stack({got[i], want, p[i], w[i]});
      const auto z = p[i] + got[i];
      EXPECT_GE(z.min().item<double>(), -1e-12);
      EXPECT_LE(z.max().item<double>(), 1 + 1e-12);
      if (std::abs((w[i] * z).sum().item<double>() - b[i].item<double>()) < 1e-9) ++reachable;
    }
    EXPECT_GT(reachable, 10) << "the random rows cover the reachable case";
    EXPECT_LT(reachable, n) << "and the unreachable one";
  }
}

TEST_F(FabTest, ReachesTheClosedFormDistanceOnALinearModel) {
  // Six points in [0.4, 0.6] at different distances from one boundary w·x + c = 0, all in class 0.
  auto w = torch::randn({16});
  auto x = torch::rand({6, 1, 4, 4}) * 0.2 + 0.4;
  auto y = torch::zeros({6}, torch::kInt64);
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    const double dual = norm == Norm::Linf ? w.abs().sum().item<double>() : w.norm().item<double>();
    const double c = -(x.flatten(1) * w).sum(1).max().item<double>() - (norm == Norm::Linf ? 0.05 : 0.1) * dual;
    auto model = two_class(w, c);
    // The closed form |w·x + c| / ‖w‖_dual, and its minimiser stays inside the box (so the box does not bind).
    auto closed = -((x.flatten(1) * w).sum(1) + c) / dual;
    auto direction = norm == Norm::Linf ? w.sign() : w / w.norm();
    auto optimum = x.flatten(1) + closed.view({-1, 1}) * direction;
    ASSERT_TRUE((optimum > 0).all().item<bool>() && (optimum < 1).all().item<bool>());
    ASSERT_TRUE(predictions(model.model.fn(), x).eq(0).all().item<bool>());
    auto r = fab(model.model.fn(), x, y, FabOptions(norm));
    EXPECT_TRUE(r.success.all().item<bool>());
    auto ratio = r.norm / closed;
    std::cout << "[fab] linear " << to_string(norm) << " distances " << closed.min().item<float>() << ".."
              << closed.max().item<float>() << ", found / closed form: " << ratio.min().item<float>() << ".."
              << ratio.max().item<float>() << "\n";
    RecordProperty(std::string("fab_linear_ratio_max_") + to_string(norm), std::to_string(ratio.max().item<float>()));
    EXPECT_GE(ratio.min().item<float>(), 1 - 1e-4) << "never below the true minimum";
    EXPECT_LE(ratio.max().item<float>(), 1.01f);
    EXPECT_TRUE(predictions(model.model.fn(), r.adversarial).eq(1).all().item<bool>());
  }
}

TEST_F(FabTest, ReachesTheBoxConstrainedDistanceWhenTheBoxBinds) {
  // 12 of 16 pixels sit at 0.97 with a positive weight (or 0.03 with a negative one): each can move by 0.03 only,
  // so the minimal distance is larger than the unconstrained |w·x + c| / ‖w‖.
  auto w = torch::randn({16});
  auto x = torch::full({1, 1, 4, 4}, 0.5f);
  auto flat = x.view({-1});
  for (int64_t i = 0; i < 16; ++i)
    if (i % 4 != 0) flat[i] = w[i].item<float>() > 0 ? 0.97f : 0.03f;
  for (Norm norm : {Norm::Linf, Norm::L2}) {
    const double dual = norm == Norm::Linf ? w.abs().sum().item<double>() : w.norm().item<double>();
    const double c = -(w * flat).sum().item<double>() - (norm == Norm::Linf ? 0.05 : 0.3) * dual;
    auto model = two_class(w, c);
    const double unconstrained = norm == Norm::Linf ? 0.05 : 0.3;
    const double expected = norm == Norm::Linf ? linf_distance_in_box(flat, w, c) : l2_distance_in_box(flat, w, c);
    ASSERT_GT(expected, 1.1 * unconstrained) << "the box binds";
    ASSERT_TRUE(std::isfinite(expected)) << "and the boundary is reachable inside it";
    auto r = fab(model.model.fn(), x, torch::zeros({1}, torch::kInt64), FabOptions(norm));
    ASSERT_TRUE(r.success.item<bool>());
    const double found = r.norm.item<double>();
    std::cout << "[fab] box-bound " << to_string(norm) << ": found " << found << ", reference " << expected
              << ", unconstrained " << unconstrained << "\n";
    EXPECT_GE(found, expected * (1 - 1e-4));
    EXPECT_LE(found, expected * 1.01);
    EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
    EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  }
}

TEST_F(FabTest, TargetedReachesTheBoundaryOfTheChosenTarget) {
  // Three classes on disjoint pixels: f₀ = 0, f₁ = u·(x − ½) − 0.03‖u‖₁, f₂ = v·(x − ½) − 0.06‖v‖₁, u on the first
  // eight pixels, v on the last eight. At x = ½ the ranking is 0, 1, 2; the L∞ distance to class 1 is 0.03, to
  // class 2 0.06 (moving the last pixels leaves f₁ < 0, so crossing f₂ = 0 makes 2 the argmax).
  auto u = torch::cat({torch::randn({8}), torch::zeros({8})});
  auto v = torch::cat({torch::zeros({8}), torch::randn({8})});
  auto weight = torch::stack({torch::zeros({16}), u, v});
  auto bias = torch::tensor({0.0f, -(u.sum() * 0.5 + 0.03 * u.abs().sum()).item<float>(),
                             -(v.sum() * 0.5 + 0.06 * v.abs().sum()).item<float>()});
  parry::testing::LinearModel model{weight, bias};
  auto x = torch::full({2, 1, 4, 4}, 0.5f);
  auto y = torch::zeros({2}, torch::kInt64);
  ASSERT_TRUE(predictions(model.fn(), x).eq(0).all().item<bool>());

  // Given targets (GradientSettings::targeted): y holds the target, success is argmax == 2.
  GradientSettings to_target;
  to_target.targeted = true;
  auto given = fab(model.fn(), x, torch::full({2}, 2L), FabOptions().settings(to_target));
  EXPECT_TRUE(given.success.all().item<bool>());
  EXPECT_TRUE(predictions(model.fn(), given.adversarial).eq(2).all().item<bool>());
  EXPECT_GE(given.norm.min().item<float>(), 0.06f * (1 - 1e-4));
  EXPECT_LE(given.norm.max().item<float>(), 0.06f * 1.01f);

  // FAB-T with one target: the class ranked second by the clean logits (1), at distance 0.03.
  auto fab_t = fab(model.fn(), x, y, FabOptions().targeted(true).n_target_classes(1));
  EXPECT_TRUE(fab_t.success.all().item<bool>());
  EXPECT_TRUE(predictions(model.fn(), fab_t.adversarial).eq(1).all().item<bool>());
  EXPECT_LE(fab_t.norm.max().item<float>(), 0.03f * 1.01f);
  EXPECT_GE(fab_t.norm.min().item<float>(), 0.03f * (1 - 1e-4));

  // ε-bounded FAB-T with ε between the two distances and the ranking swapped (class 2 second): the first target
  // (2, at 0.03 now) fools within ε; with ε below every distance nothing does and x comes back.
  auto swapped_bias = torch::tensor({0.0f, -(u.sum() * 0.5 + 0.06 * u.abs().sum()).item<float>(),
                                     -(v.sum() * 0.5 + 0.03 * v.abs().sum()).item<float>()});
  parry::testing::LinearModel swapped{weight, swapped_bias};
  auto within = fab(swapped.fn(), x, y, FabOptions().targeted(true).n_target_classes(2).epsilon(0.04));
  EXPECT_TRUE(within.success.all().item<bool>());
  EXPECT_TRUE(predictions(swapped.fn(), within.adversarial).eq(2).all().item<bool>());
  EXPECT_LE(within.norm.max().item<float>(), 0.04f + 1e-6f);
  auto beyond = fab(swapped.fn(), x, y, FabOptions().targeted(true).n_target_classes(2).epsilon(0.02));
  EXPECT_FALSE(beyond.success.any().item<bool>());
  EXPECT_TRUE(torch::equal(beyond.adversarial, x));
}

TEST_F(FabTest, EpsilonBoundsEveryResultAndQueriesAreCounted) {
  auto w = torch::randn({16});
  auto x = torch::rand({4, 1, 4, 4}) * 0.4 + 0.3;
  const double dual = w.abs().sum().item<double>();
  const double c = -(w * x.flatten(1)).sum(1).max().item<double>() - 0.05 * dual;
  auto model = two_class(w, c);
  auto y = torch::zeros({4}, torch::kInt64);
  auto closed = -((x.flatten(1) * w).sum(1) + c) / dual;
  const double eps = closed.median().item<double>();
  auto r = fab(model.model.fn(), x, y, FabOptions().epsilon(eps).steps(30).restarts(3));
  EXPECT_LE(r.norm.max().item<double>(), eps + 1e-6);
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  // Fooled exactly where the closed-form distance is within ε (up to FAB's 1%); the others return x.
  auto reachable = closed.le(eps / 1.01);
  EXPECT_TRUE(torch::equal(r.success & reachable, reachable)) << closed << r.norm;
  EXPECT_FALSE((r.success & closed.gt(eps)).any().item<bool>());
  auto failed = (~r.success).nonzero().flatten();
  EXPECT_TRUE(torch::equal(r.adversarial.index_select(0, failed), x.index_select(0, failed)));
  EXPECT_TRUE(r.norm.index_select(0, failed).eq(0).all().item<bool>());

  // Queries: 1 clean pass, per step 2 gradients (the Jacobian of 2 logits) + 1 forward, 1 final check; restarts
  // only for the samples not yet fooled within ε.
  auto one = fab(model.model.fn(), x, y, FabOptions().steps(5));
  EXPECT_TRUE(one.queries.eq(1 + 5 * 3 + 1).all().item<bool>()) << one.queries;
  EXPECT_TRUE(((r.queries - 2) % (30 * 3)).eq(0).all().item<bool>()) << r.queries;
  EXPECT_TRUE(r.queries.masked_select(~r.success).eq(2 + 3 * 30 * 3).all().item<bool>()) << r.queries;
  GradientSettings to_target;
  to_target.targeted = true;
  auto targeted = fab(model.model.fn(), x, torch::ones({4}, torch::kInt64), FabOptions().steps(5).settings(to_target));
  EXPECT_TRUE(targeted.queries.eq(1 + 5 * 2 + 1).all().item<bool>()) << targeted.queries;
  // A sample already misclassified is not attacked: it succeeds with x for the clean and the final pass.
  auto wrong = fab(model.model.fn(), x, torch::ones({4}, torch::kInt64), FabOptions().steps(5));
  EXPECT_TRUE(wrong.success.all().item<bool>());
  EXPECT_TRUE(torch::equal(wrong.adversarial, x));
  EXPECT_TRUE(wrong.queries.eq(2).all().item<bool>());
  // Minimum-norm restarts run on every sample and keep the smallest perturbation.
  auto restarted = fab(model.model.fn(), x, y, FabOptions().steps(5).restarts(3));
  EXPECT_TRUE((restarted.norm <= one.norm + 1e-6).all().item<bool>());
  EXPECT_TRUE(restarted.queries.eq(1 + 3 * 5 * 3 + 1).all().item<bool>()) << restarted.queries;
  EXPECT_TRUE(restarted.success.all().item<bool>());
  // The final search never moves a point away from x.
  auto searched = fab(model.model.fn(), x, y, FabOptions().steps(3).final_search_steps(3));
  auto plain = fab(model.model.fn(), x, y, FabOptions().steps(3));
  EXPECT_TRUE(searched.success.all().item<bool>());
  EXPECT_TRUE((searched.norm <= plain.norm + 1e-6).all().item<bool>());
  EXPECT_TRUE(searched.queries.eq(plain.queries + 4).all().item<bool>());
}

TEST_F(FabTest, BadOptionsNameTheValue) {
  auto expect_message = [](const std::function<void()>& call, const std::string& part) {
    try {
      call();
      ADD_FAILURE() << "accepted: " << part;
    } catch (const OptionError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_message([] { FabOptions().steps(0); }, "steps must be at least 1, but got 0");
  expect_message([] { FabOptions().epsilon(-0.1); }, "but got -0.1");
  expect_message([] { FabOptions().alpha_max(0); }, "alpha_max must be in (0, 1], but got 0");
  expect_message([] { FabOptions().alpha_max(1.5); }, "but got 1.5");
  expect_message([] { FabOptions().eta(0.9); }, "but got 0.9");
  expect_message([] { FabOptions().beta(0); }, "beta must be in (0, 1), but got 0");
  expect_message([] { FabOptions().beta(1); }, "but got 1");
  expect_message([] { FabOptions().restarts(0); }, "but got 0");
  expect_message([] { FabOptions().n_target_classes(0); }, "but got 0");
  GradientSettings eot;
  eot.eot_samples = 4;
  expect_message([&] { FabOptions().settings(eot); }, "eot_samples must be 1");
  auto model = two_class(torch::randn({16}), -10);
  auto x = torch::rand({2, 1, 4, 4});
  auto y = torch::zeros({2}, torch::kInt64);
  // Two classes leave one target for FAB-T.
  expect_message([&] { fab(model.model.fn(), x, y, FabOptions().targeted(true).n_target_classes(2)); },
                 "n_target_classes must be at most the class count − 1 = 1, but got 2");
  GradientSettings to_target;
  to_target.targeted = true;
  expect_message([&] { fab(model.model.fn(), x, y, FabOptions().targeted(true).settings(to_target)); },
                 "cannot be combined");
  EXPECT_THROW(fab(model.model.fn(), x, torch::full({2}, 5L)), OptionError);
  EXPECT_THROW(fab(model.model.fn(), x * 3, y), OptionError);
}

TEST_F(FabTest, FabTAtEpsilonPointOneOnTheReferenceModel) {
  // AutoAttack's FAB-T: 9 targets, 100 iterations, ε = 0.1 (L∞).
  auto data = parry::testing::correctly_classified(16);
  const auto f = differentiable(parry::testing::reference_model());
  auto r = fab(f, data.images, data.labels, FabOptions().targeted(true).epsilon(0.1));
  std::cout << "[fab] FAB-T L∞ ε = 0.1 on 16 reference images: success " << r.success_rate() << ", median norm of "
            << "successes " << r.norm.masked_select(r.success).median().item<float>() << ", mean queries "
            << r.queries.to(torch::kFloat64).mean().item<double>() << "\n";
  RecordProperty("fab_t_success", std::to_string(r.success_rate()));
  EXPECT_GE(r.success_rate(), 0.8);
  EXPECT_LE(r.norm.max().item<float>(), 0.1f + 1e-6f);
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  // Successes are real misclassifications; failures are x itself.
  EXPECT_TRUE(torch::equal(predictions(f, r.adversarial).ne(data.labels), r.success));
  auto failed = (~r.success).nonzero().flatten();
  EXPECT_TRUE(torch::equal(r.adversarial.index_select(0, failed), data.images.index_select(0, failed)));
}

TEST_F(FabTest, MinimumNormLinfIsNotBeatenByPgdOnTheReferenceModel) {
  // FAB's minimum-norm L∞ perturbations: the reference implementation's per image, and against PGD's smallest
  // working ε on a grid (PGD-50, step 2.5·ε/50, one
  // restart, ε = 0.005, 0.010, ..., 0.10): FAB's norms should be no larger, and PGD-50 with 2 restarts at 0.9 ×
  // FAB's norm should rarely succeed (FAB is close to the minimum).
  auto data = parry::testing::correctly_classified(16);
  const auto f = differentiable(parry::testing::reference_model());
  const auto started = std::chrono::steady_clock::now();
  auto r = fab(f, data.images, data.labels, FabOptions());
  const double fab_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_TRUE(r.success.all().item<bool>());
  const auto fab_norm = r.norm;
  const float gap = worst_relative_gap(fab_norm, kReferenceLinf);
  std::cout << "[fab] min-norm L∞ against the reference implementation: largest relative difference " << gap << "\n";
  EXPECT_LE(gap, 0.01f);
  auto pgd_min = torch::full({16}, std::numeric_limits<float>::infinity());
  for (int k = 20; k >= 1; --k) {
    const double eps = 0.005 * k;
    auto p = pgd(f, data.images, data.labels, PgdOptions(eps).steps(50).random_start(false));
    pgd_min = torch::where(p.success, torch::full({16}, static_cast<float>(eps)), pgd_min);
  }
  // PGD per sample at 0.9 × FAB's norm.
  int64_t pgd_below = 0;
  for (int64_t i = 0; i < 16; ++i) {
    auto xi = data.images.slice(0, i, i + 1), yi = data.labels.slice(0, i, i + 1);
    auto p = pgd(f, xi, yi, PgdOptions(0.9 * fab_norm[i].item<double>()).steps(50).restarts(2));
    pgd_below += p.success.item<bool>();
  }
  const float fab_median = fab_norm.median().item<float>(), pgd_median = pgd_min.median().item<float>();
  std::cout << "[fab] min-norm L∞ on 16 reference images: FAB median " << fab_median << " (max "
            << fab_norm.max().item<float>() << "), PGD grid median " << pgd_median << ", FAB <= PGD grid on "
            << fab_norm.le(pgd_min).sum().item<int64_t>() << "/16, PGD at 0.9·FAB succeeds on " << pgd_below
            << "/16; FAB took " << fab_seconds << " s\n";
  RecordProperty("fab_min_norm_median", std::to_string(fab_median));
  RecordProperty("pgd_grid_min_eps_median", std::to_string(pgd_median));
  EXPECT_LE(fab_median, pgd_median);
  EXPECT_GE(fab_norm.le(pgd_min).sum().item<int64_t>(), 12);
  EXPECT_LE(pgd_below, 3);
}

TEST_F(FabTest, L2OnTheReferenceModelMatchesTheReferenceAndTouchesNoParameterGradient) {
  auto model = parry::testing::reference_model();
  for (auto& p : model.parameters()) p.mutable_grad() = torch::Tensor();
  auto data = parry::testing::correctly_classified(16);
  const auto f = differentiable(model);
  auto minimum = fab(f, data.images, data.labels, FabOptions(Norm::L2));
  ASSERT_TRUE(minimum.success.all().item<bool>());
  const float gap = worst_relative_gap(minimum.norm, kReferenceL2);
  std::cout << "[fab] min-norm L2 on 16 reference images: median " << minimum.norm.median().item<float>()
            << ", largest relative difference to the reference implementation " << gap << "\n";
  EXPECT_LE(gap, 0.01f);
  // ε-bounded with restarts (the reference fools 6 of these 8 at ε = 1 with 50 iterations and 2 restarts: the
  // other two need 1.02 and 1.14); reproducible under the seed.
  const auto x8 = data.images.slice(0, 0, 8), y8 = data.labels.slice(0, 0, 8);
  const auto options = FabOptions(Norm::L2).epsilon(1.0).steps(50).restarts(2);
  auto r = fab(f, x8, y8, options);
  std::cout << "[fab] L2 ε = 1 (50 steps, 2 restarts) on 8 reference images: success " << r.success_rate() << "\n";
  EXPECT_GE(r.success_rate(), 0.75);
  EXPECT_LE(r.norm.max().item<float>(), 1.0f + 1e-5f);
  EXPECT_GE(r.adversarial.min().item<float>(), 0.f);
  EXPECT_LE(r.adversarial.max().item<float>(), 1.f);
  EXPECT_TRUE(torch::equal(predictions(f, r.adversarial).ne(y8), r.success));
  EXPECT_TRUE(torch::equal(fab(f, x8, y8, options).adversarial, r.adversarial));
  for (const auto& p : model.parameters()) EXPECT_FALSE(p.grad().defined());
}
