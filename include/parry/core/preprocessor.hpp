// parry::Preprocessor: a batch-to-batch input transformation inside a Guard.
//
// Threat model: a preprocessor changes the input before the model sees it
// (e.g. removes fine-grained perturbations). It does not stop an attacker who
// knows it is there: the attack path (Guard::differentiable_logits) runs the
// same transform with a gradient policy so that evaluations are adaptive.
#pragma once

#include <torch/torch.h>

#include <string>

#include "parry/core/errors.hpp"

namespace parry {

/// How gradients flow through a preprocessor on the attack path.
enum class GradientPolicy {
  /// The transform is built from differentiable torch ops; exact gradient.
  Exact,
  /// BPDA (Athalye, Carlini, Wagner 2018): forward is the transform, backward
  /// treats it as the identity. The default for non-differentiable transforms.
  StraightThrough,
  /// Zero gradient: demonstrates gradient masking. An evaluation that uses it
  /// reports a robustness the defense does not have.
  Blocked,
};

/// "exact", "straight_through" or "blocked".
const char* to_string(GradientPolicy policy);

/// Base class of every transform a Guard applies before the model.
class Preprocessor {
 public:
  virtual ~Preprocessor() = default;

  /// The transform on a batch N×C×H×W (float32). Inference path: need not
  /// track gradients. Must not modify `x` and must be safe to call from many
  /// threads at once.
  virtual torch::Tensor apply(const torch::Tensor& x) const = 0;

  /// One line for reports, e.g. "BitDepth(bits=4, grad=straight_through)".
  virtual std::string describe() const = 0;

  /// True if apply() is built from differentiable torch ops only.
  virtual bool is_differentiable() const = 0;

  /// True if apply() keeps its input's shape and its values within the range
  /// of its input: a pixel-space defense that a Guard may run before its
  /// detectors. False for a transform that belongs to the model's own input
  /// (Normalize; a Resize to the network's size): see Model::with_input_transform.
  virtual bool works_in_pixel_space() const { return true; }

  GradientPolicy gradient_policy() const { return policy_; }

  /// The transform on the attack path: forward value equals apply(x); the
  /// gradient with respect to `x` follows gradient_policy().
  torch::Tensor apply_differentiable(const torch::Tensor& x) const;

 protected:
  explicit Preprocessor(GradientPolicy policy) : policy_(policy) {}
  /// Subclasses call this from their constructor: Exact needs is_differentiable().
  void check_policy(const char* component) const;

 private:
  GradientPolicy policy_;
};

}  // namespace parry
