// parry::OutputPolicy: turns logits into what a caller may see.
//
// Threat model: score-based black-box attacks (e.g. Square) need scores;
// returning only the label forces the attacker onto slower decision-based
// attacks. A policy is the last stage of Guard::predict and must not leak what
// it hides through any field of Response.
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/response.hpp"

namespace parry {

class OutputPolicy {
 public:
  virtual ~OutputPolicy() = default;
  /// Fills labels and whatever else the policy allows from logits N×K.
  virtual void fill(const torch::Tensor& logits, Response& response) const = 0;
  /// One line for reports.
  virtual std::string describe() const = 0;
  /// Whether a certified radius (Response::certified_radius) may leave with
  /// the answer when the Guard's decision rule certifies one. Default: no.
  /// A radius tells the caller how far the input is from a change of label,
  /// which is what a decision-based attacker searches for.
  virtual bool shows_certified_radius() const { return false; }
};

namespace detail {
/// response.labels = argmax of each row of logits N×K (torch::argmax's
/// answer: the first maximum, a NaN counting as the maximum).
void fill_labels(const torch::Tensor& logits, Response& response);
}  // namespace detail

/// Only the top-1 label: the default policy of a Guard (conceal::LabelOnly is
/// the same class). Leaves score-based black-box attacks nothing to climb.
class LabelOnly final : public OutputPolicy {
 public:
  /// @param show_certified_radius also return the certified radius of a
  ///   certifying decision rule (default false: the label alone).
  explicit LabelOnly(bool show_certified_radius = false) : show_certified_radius_(show_certified_radius) {}
  void fill(const torch::Tensor& logits, Response& response) const override { detail::fill_labels(logits, response); }
  std::string describe() const override {
    return show_certified_radius_ ? "LabelOnly(certified radius)" : "LabelOnly";
  }
  bool shows_certified_radius() const override { return show_certified_radius_; }

 private:
  bool show_certified_radius_;
};

}  // namespace parry
