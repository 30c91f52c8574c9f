// FAB's projection onto a hyperplane intersected with a box (Croce & Hein
// 2020, section 3.1; the reference's projection_linf / projection_l2).
// Internal: not installed.
#pragma once

#include <torch/torch.h>

#include <limits>

#include "parry/attack/attack.hpp"

namespace parry::attack::detail {

/// For each row i of p (N×D), the perturbation δ of smallest ‖δ‖ (L∞ or L2)
/// with w_i·(p_i + δ) = b_i and lo <= p_i + δ <= hi (p inside the box). If
/// the box does not reach the hyperplane, the box point furthest towards it
/// (every coordinate moved to its bound in the direction of sign(w)); the
/// reference does the same. Coordinates with w = 0 do not move.
///
/// Why it is exact: let s = sign(b − w·p) and v = s·w, so the task is to raise
/// v·δ by g = |b − w·p|. For a radius λ the best move is, per coordinate, as
/// far as possible along sign(v_j) but not past the box: L∞
/// δ_j = sign(v_j)·min(λ, room_j); L2 (KKT of the quadratic programme)
/// δ_j = sign(v_j)·min(λ|v_j|, room_j), room_j the distance from p_j to its
/// bound in that direction. The gain h(λ) = Σ a_j·min(λ, β_j) with
/// breakpoints β_j (L∞: room_j; L2: room_j/|v_j|) and slopes a_j (L∞: |v_j|;
/// L2: v_j²) is piecewise linear, continuous and non-decreasing, so the
/// smallest λ with h(λ) = g lies in the segment found by sorting the
/// breakpoints (the reference finds it by bisection on the same sums).
/// Computed in float64, returned in p's dtype.
inline torch::Tensor fab_projection(const torch::Tensor& p, const torch::Tensor& w, const torch::Tensor& b, Norm norm,
                                    double lo, double hi) {
  const auto p64 = p.to(torch::kFloat64), w64 = w.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
  const int64_t n = p64.size(0), d = p64.size(1);
  const torch::Tensor gap = b64 - (w64 * p64).sum(1);
  const torch::Tensor s = torch::where(gap >= 0, torch::ones_like(gap), -torch::ones_like(gap));
  const torch::Tensor g = gap.abs().unsqueeze(1);
  const torch::Tensor v = w64 * s.unsqueeze(1);
  const torch::Tensor active = v.abs() > 1e-30;
  const torch::Tensor room = torch::where(v > 0, hi - p64, p64 - lo).clamp_min(0) * active;
  const torch::Tensor speed = v.abs() * active;  // |v| on active coordinates, else 0
  const torch::Tensor slope = norm == Norm::Linf ? speed : speed * speed;
  const torch::Tensor breakpoint =
      norm == Norm::Linf ? room : torch::where(active, room / speed.clamp_min(1e-30), room);
  const auto [sorted, order] = breakpoint.sort(1);
  const torch::Tensor a = slope.gather(1, order);
  // h at the k-th breakpoint: Σ_{j<=k} a_j β_j + β_k Σ_{j>k} a_j.
  const torch::Tensor prefix = (a * sorted).cumsum(1);
  const torch::Tensor total = a.sum(1, /*keepdim=*/true);
  const torch::Tensor tail = total - a.cumsum(1);
  const torch::Tensor h = prefix + sorted * tail;
  // m breakpoints fall short of g; the solution lies after the m-th and at or
  // before the (m+1)-th, where h(λ) = prefix_{m−1} + λ·tail_{m−1}.
  const torch::Tensor m = (h < g).sum(1, /*keepdim=*/true);
  const auto opts = p64.options();
  const torch::Tensor prefix_before = torch::cat({torch::zeros({n, 1}, opts), prefix}, 1).gather(1, m);
  const torch::Tensor tail_before = torch::cat({total, tail}, 1).gather(1, m);
  torch::Tensor lambda = ((g - prefix_before) / tail_before.clamp_min(1e-300)).clamp_min(0);
  lambda = torch::where(m < d, lambda, torch::full_like(lambda, std::numeric_limits<double>::infinity()));
  const torch::Tensor reach = norm == Norm::Linf ? lambda.expand_as(room) : lambda * speed;
  const torch::Tensor delta = torch::where(active, v.sign() * torch::minimum(reach, room), torch::zeros_like(room));
  return delta.to(p.scalar_type());
}

}  // namespace parry::attack::detail
