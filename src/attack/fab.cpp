// attack::fab: the Fast Adaptive Boundary attack (Croce & Hein 2020), L∞ and L2, untargeted, FAB-T and with given
// targets, ε-bounded or minimum-norm.
#include "parry/attack/fab.hpp"

#include <limits>

#include "attack/fab_projection.hpp"
#include "attack/support.hpp"
#include "parry/detail/generator.hpp"

namespace parry::attack {

using namespace detail;

FabOptions::FabOptions(Norm norm) {
  this->norm(norm);
}
FabOptions& FabOptions::norm(Norm n) {
  norm_ = n;
  return *this;
}
FabOptions& FabOptions::epsilon(double v) {
  require(v >= 0 && std::isfinite(v), "FabOptions", "epsilon must be non-negative and finite (0: minimum norm)", v);
  epsilon_ = v;
  return *this;
}
FabOptions& FabOptions::steps(int64_t v) {
  require(v >= 1, "FabOptions", "steps must be at least 1", v);
  steps_ = v;
  return *this;
}
FabOptions& FabOptions::restarts(int64_t v) {
  require(v >= 1, "FabOptions", "restarts must be at least 1", v);
  restarts_ = v;
  return *this;
}
FabOptions& FabOptions::alpha_max(double v) {
  require(v > 0 && v <= 1, "FabOptions", "alpha_max must be in (0, 1]", v);
  alpha_max_ = v;
  return *this;
}
FabOptions& FabOptions::eta(double v) {
  require(v >= 1 && std::isfinite(v), "FabOptions", "eta (overshoot) must be finite and at least 1", v);
  eta_ = v;
  return *this;
}
FabOptions& FabOptions::beta(double v) {
  require(v > 0 && v < 1, "FabOptions", "beta must be in (0, 1)", v);
  beta_ = v;
  return *this;
}
FabOptions& FabOptions::targeted(bool on) {
  targeted_ = on;
  return *this;
}
FabOptions& FabOptions::n_target_classes(int64_t v) {
  require(v >= 1, "FabOptions", "n_target_classes must be at least 1", v);
  n_target_classes_ = v;
  return *this;
}
FabOptions& FabOptions::final_search_steps(int64_t v) {
  require(v >= 0, "FabOptions", "final_search_steps must be non-negative", v);
  final_search_steps_ = v;
  return *this;
}
FabOptions& FabOptions::settings(GradientSettings s) {
  check_settings("FabOptions", s);
  require(s.eot_samples == 1, "FabOptions",
          "eot_samples must be 1: FAB linearises a deterministic model (attack randomised defenses with PGD and EOT)",
          s.eot_samples);
  settings_ = s;
  return *this;
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// What one run attacks: the class whose region it leaves, the class whose
// boundary it linearises (undefined: the nearest one), and when a point counts.
struct Goal {
  torch::Tensor leave;   // int64 N
  torch::Tensor target;  // int64 N, or undefined
  bool reach_target;     // success = argmax == target (else argmax != leave)
  torch::Tensor adversarial(const torch::Tensor& logits) const {
    const torch::Tensor predicted = logits.argmax(1);
    return reach_target ? predicted.eq(target) : predicted.ne(leave);
  }
  Goal rows(const torch::Tensor& index) const {
    return {leave.index_select(0, index), target.defined() ? target.index_select(0, index) : torch::Tensor(),
            reach_target};
  }
};

// The linearised logit differences f_j − f_leave at x (N×M) and their input
// gradients (N×M×D): every class (M = K, the leave class itself set far away)
// or the target only (M = 1). One forward pass, M backward passes, no
// parameter gradients.
std::pair<torch::Tensor, torch::Tensor> logit_differences(const LogitsFn& f, const torch::Tensor& x, const Goal& goal) {
  torch::AutoGradMode enable_grad(true);
  const torch::Tensor input = x.detach().requires_grad_(true);
  const torch::Tensor logits = f(input);
  const int64_t n = x.size(0);
  const torch::Tensor leave = goal.leave.view({-1, 1});
  auto gradient = [&](const torch::Tensor& output, const torch::Tensor& weights, bool retain) {
    const torch::autograd::variable_list grad_outputs =
        weights.defined() ? torch::autograd::variable_list{weights} : torch::autograd::variable_list{};
    torch::Tensor g = torch::autograd::grad({output}, {input}, grad_outputs, retain, /*create_graph=*/false,
                                            /*allow_unused=*/true)[0];
    return g.defined() ? g.detach().reshape({n, -1}) : torch::zeros({n, x[0].numel()}, x.options());
  };
  if (goal.target.defined()) {
    const torch::Tensor diff = logits.gather(1, goal.target.view({-1, 1})) - logits.gather(1, leave);
    return {diff.detach(), gradient(diff.sum(), torch::Tensor(), false).unsqueeze(1)};
  }
  const int64_t k = logits.size(1);
  std::vector<torch::Tensor> rows;
  rows.reserve(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    torch::Tensor weights = torch::zeros_like(logits);
    weights.select(1, j).fill_(1);
    rows.push_back(gradient(logits, weights, j + 1 < k));
  }
  torch::Tensor jacobian = torch::stack(rows, 1);  // N×K×D
  const torch::Tensor z = logits.detach();
  torch::Tensor df = z - z.gather(1, leave);
  const torch::Tensor at_leave = leave.view({-1, 1, 1}).expand({n, 1, jacobian.size(2)});
  torch::Tensor dg = jacobian - jacobian.gather(1, at_leave);
  df.scatter_(1, leave, 1e10);  // never the boundary of the class itself (the reference's choice)
  return {df, dg};
}

torch::Tensor batch_norm(const torch::Tensor& flat_delta, Norm norm) {
  return norm == Norm::Linf ? std::get<0>(flat_delta.abs().max(1)) : flat_delta.norm(2, 1);
}

// A start at distance radius/2 from x (the reference's restarts), clipped to the box.
torch::Tensor random_start(const torch::Tensor& x, const torch::Tensor& radius, const FabOptions& o,
                           torch::Generator& gen) {
  const auto& s = o.settings();
  torch::Tensor t;
  if (o.norm() == Norm::Linf) {
    t = torch::rand(x.sizes(), gen, x.options()) * 2 - 1;
  } else {
    t = torch::randn(x.sizes(), gen, x.options());
  }
  const torch::Tensor length = batch_norm(flat(t), o.norm()).clamp_min(1e-12);
  const torch::Tensor scale = (radius.to(x.scalar_type()) * 0.5 / length).view({-1, 1, 1, 1});
  return (x + t * scale).clamp(s.clip_min, s.clip_max);
}

struct Found {
  torch::Tensor point;  // N×C×H×W: closest adversarial point of the run (x where none)
  torch::Tensor norm;   // float N: its norm (inf where none)
};

// One run of FAB from `start` towards the boundary of `goal`, for o.steps() iterations.
Found single_run(const LogitsFn& f, const torch::Tensor& x0, const torch::Tensor& start, const Goal& goal,
                 const FabOptions& o) {
  const auto& s = o.settings();
  const int64_t n = x0.size(0);
  const torch::Tensor origin = flat(x0);
  torch::Tensor current = flat(start).clone();
  Found best{x0.clone(), torch::full({n}, kInf, x0.options().dtype(torch::kFloat32))};
  torch::Tensor best_flat = flat(best.point);
  for (int64_t i = 0; i < o.steps(); ++i) {
    const auto [df, dg] = logit_differences(f, current.view_as(x0), goal);
    const torch::Tensor dual = o.norm() == Norm::Linf ? dg.abs().sum(2) : dg.norm(2, 2);
    const torch::Tensor nearest = (df.abs() / (dual + 1e-12)).argmin(1);
    const torch::Tensor w = dg.gather(1, nearest.view({-1, 1, 1}).expand({n, 1, dg.size(2)})).squeeze(1);
    const torch::Tensor b = (w * current).sum(1) - df.gather(1, nearest.view({-1, 1})).squeeze(1);
    // The hyperplane w·z = b, from the iterate and from the clean point (in one call, as the reference does).
    const torch::Tensor both = fab_projection(torch::cat({current, origin}), torch::cat({w, w}), torch::cat({b, b}),
                                              o.norm(), s.clip_min, s.clip_max);
    const torch::Tensor d_current = both.slice(0, 0, n), d_origin = both.slice(0, n);
    const torch::Tensor lengths = batch_norm(both, o.norm()).clamp_min(1e-8);
    const torch::Tensor a_current = lengths.slice(0, 0, n), a_origin = lengths.slice(0, n);
    const torch::Tensor alpha = (a_current / (a_current + a_origin)).clamp(0, o.alpha_max()).view({-1, 1});
    current = ((current + o.eta() * d_current) * (1 - alpha) + (origin + o.eta() * d_origin) * alpha)
                  .clamp(s.clip_min, s.clip_max);
    const torch::Tensor adversarial = goal.adversarial(evaluate(f, current.view_as(x0)));
    const torch::Tensor distance = perturbation_norm(current - origin, o.norm());
    const torch::Tensor closer = adversarial & distance.lt(best.norm);
    best_flat.copy_(torch::where(closer.view({-1, 1}), current, best_flat));
    best.norm = torch::where(closer, distance, best.norm);
    // Back towards x from an adversarial iterate (β): the next steps search closer.
    current = torch::where(adversarial.view({-1, 1}), origin + o.beta() * (current - origin), current);
  }
  return best;
}

// The final search of the original FAB code: regula falsi on the segment from
// the clean point (not adversarial) to the adversarial one, using the logit
// difference between the leave class and the adversarial class at both ends.
// Every point it keeps lies on the segment and is adversarial.
torch::Tensor final_search(const LogitsFn& f, const torch::Tensor& x0, const torch::Tensor& clean_logits,
                           const torch::Tensor& adversarial, const Goal& goal, int64_t steps) {
  torch::Tensor inside = x0.clone(), outside = adversarial.clone();
  torch::Tensor z_in = clean_logits, z_out = evaluate(f, outside);
  const torch::Tensor leave = goal.leave.view({-1, 1});
  for (int64_t i = 0; i < steps; ++i) {
    const torch::Tensor other = goal.reach_target ? goal.target.view({-1, 1}) : z_out.argmax(1, true);
    const torch::Tensor t_in = (z_in.gather(1, leave) - z_in.gather(1, other)).squeeze(1);
    const torch::Tensor t_out = (z_out.gather(1, other) - z_out.gather(1, leave)).squeeze(1);
    torch::Tensor t = t_in / (t_in + t_out + 1e-10);
    t = torch::where(t.ge(0) & t.le(1), t, torch::ones_like(t)).view({-1, 1, 1, 1});
    const torch::Tensor probe = inside * (1 - t) + outside * t;
    const torch::Tensor z = evaluate(f, probe);
    const torch::Tensor hit = goal.adversarial(z);
    const torch::Tensor hit4 = hit.view({-1, 1, 1, 1}), hit2 = hit.view({-1, 1});
    outside = torch::where(hit4, probe, outside);
    z_out = torch::where(hit2, z, z_out);
    inside = torch::where(hit4, inside, probe);
    z_in = torch::where(hit2, z_in, z);
  }
  return outside;
}

}  // namespace

AttackResult fab(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y, const FabOptions& options) {
  const auto& s = options.settings();
  check_batch("fab", x, y, s);
  require(s.eot_samples == 1, "fab", "eot_samples must be 1 (FAB has no EOT)", s.eot_samples);
  if (options.targeted() && s.targeted) {
    throw OptionError(
        "fab: FabOptions::targeted (FAB-T, y are true labels and targets are ranked by the clean logits) and "
        "GradientSettings::targeted (y are targets) cannot be combined");
  }
  const int64_t n = x.size(0);
  const torch::Tensor x0 = x.detach();
  const torch::Tensor clean_logits = evaluate(f, x0);
  check_labels("fab", clean_logits, y);
  const int64_t classes = clean_logits.size(1);
  require(classes >= 2, "fab", "the model must have at least 2 classes", classes);
  if (options.targeted()) {
    require(options.n_target_classes() <= classes - 1, "fab",
            "n_target_classes must be at most the class count − 1 = " + std::to_string(classes - 1),
            options.n_target_classes());
  }
  const torch::Tensor predicted = clean_logits.argmax(1);
  const bool given_targets = s.targeted;
  // Samples that already count as fooled at x, and the ones to attack.
  const torch::Tensor fooled_at_x = given_targets ? predicted.eq(y) : predicted.ne(y);
  const torch::Tensor attacked = ~fooled_at_x;
  const bool bounded = options.epsilon() > 0;
  const double default_radius = (options.norm() == Norm::Linf ? 0.3 : 1.0) * (s.clip_max - s.clip_min);

  torch::Generator gen = parry::detail::make_generator(s.seed, x0.device());
  torch::Tensor best = x0.clone();
  const auto per_sample = x0.options().dtype(torch::kFloat32);
  const auto counts = x0.options().dtype(torch::kInt64);
  torch::Tensor best_norm =
      torch::where(fooled_at_x, torch::zeros({n}, per_sample), torch::full({n}, kInf, per_sample));
  AttackResult result;
  result.queries = torch::ones({n}, counts);

  // The runs: one per target rank for FAB-T (ranks 2..n+1), else one.
  std::vector<Goal> goals;
  if (options.targeted()) {
    const torch::Tensor ranked = clean_logits.argsort(1, /*descending=*/true);
    for (int64_t rank = 2; rank <= options.n_target_classes() + 1; ++rank) {
      goals.push_back({y, ranked.select(1, rank - 1).contiguous(), false});
    }
  } else if (given_targets) {
    goals.push_back({predicted, y, true});
  } else {
    goals.push_back({y, torch::Tensor(), false});
  }
  const int64_t gradients_per_step = goals.front().target.defined() ? 1 : classes;
  for (const Goal& goal : goals) {
    for (int64_t restart = 0; restart < options.restarts(); ++restart) {
      torch::Tensor todo = attacked;
      if (bounded) todo = todo & ~best_norm.le(options.epsilon());
      const torch::Tensor rows = todo.nonzero().flatten();
      if (rows.numel() == 0) break;
      const torch::Tensor xr = x0.index_select(0, rows);
      torch::Tensor start = xr;
      if (restart > 0) {
        const torch::Tensor radius = bounded ? torch::full({rows.size(0)}, options.epsilon(), per_sample)
                                             : best_norm.index_select(0, rows).clamp_max(default_radius);
        start = random_start(xr, radius, options, gen);
      }
      const Found found = single_run(f, xr, start, goal.rows(rows), options);
      const torch::Tensor closer = found.norm.lt(best_norm.index_select(0, rows));
      const torch::Tensor kept = rows.masked_select(closer);
      const torch::Tensor from = closer.nonzero().flatten();
      best.index_copy_(0, kept, found.point.index_select(0, from));
      best_norm.index_copy_(0, kept, found.norm.index_select(0, from));
      result.queries.index_add_(0, rows,
                                torch::full({rows.size(0)}, options.steps() * (gradients_per_step + 1), counts));
    }
  }

  // Found points (not x itself), optionally pulled closer to x by the final search.
  const torch::Tensor found_rows = (best_norm.isfinite() & attacked).nonzero().flatten();
  if (options.final_search_steps() > 0 && found_rows.numel() > 0) {
    const Goal goal = (given_targets ? Goal{predicted, y, true} : Goal{y, torch::Tensor(), false}).rows(found_rows);
    const torch::Tensor searched =
        final_search(f, x0.index_select(0, found_rows), clean_logits.index_select(0, found_rows),
                     best.index_select(0, found_rows), goal, options.final_search_steps());
    best.index_copy_(0, found_rows, searched);
    result.queries.index_add_(0, found_rows,
                              torch::full({found_rows.size(0)}, options.final_search_steps() + 1, counts));
  }

  // The returned batch: every found point within the budget, x elsewhere;
  // success as the model judges the returned points.
  result.norm = perturbation_norm(best - x0, options.norm());
  torch::Tensor keep = best_norm.isfinite();
  if (bounded) keep = keep & result.norm.le(options.epsilon());
  result.adversarial = torch::where(keep.view({-1, 1, 1, 1}), best, x0);
  const torch::Tensor final_logits = evaluate(f, result.adversarial);
  result.queries += 1;
  result.success = given_targets ? final_logits.argmax(1).eq(y) : final_logits.argmax(1).ne(y);
  result.success = result.success & (keep | fooled_at_x);
  // A point the final check does not confirm is a failure: x itself.
  result.adversarial = torch::where(result.success.view({-1, 1, 1, 1}), result.adversarial, x0);
  result.norm = perturbation_norm(result.adversarial - x0, options.norm());
  return result;
}

}  // namespace parry::attack
