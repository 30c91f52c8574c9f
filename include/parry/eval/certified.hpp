// eval::evaluate_certified: the certified-robustness rows of `parry eval`
// (randomized smoothing, Cohen, Rosenfeld, Kolter, ICML 2019).
//
// For each σ of the config's "evaluation.certified", on the first `images`
// test images of the evaluation's order:
//   - CERTIFY (n₀, n, α) of the smoothed bare model (its model_input
//     included): the certified accuracy at radius r is the share of images
//     whose certified label is right with a radius of at least r (an
//     abstention is never right); the curve of Cohen et al.'s figures is
//     that share as a function of r;
//   - the attacked accuracy at each radius r of the table: the first
//     `attack_images` images are attacked at L2 budget ε = r through the
//     smoothed classifier (PGD-L2 and APGD-CE-L2 on SmoothAdv's loss, the
//     base model's softmax averaged over `attack_samples` noise draws:
//     EOT; Salman et al. 2019), and an image counts as broken only if
//     PREDICT (predict_n copies, α) answers a wrong label for one of them;
//     an abstention proves nothing either way and does not count as broken
//     (at r = 0 this is the share of clean images PREDICT does not get wrong).
// A certificate is a lower bound on the smoothed classifier's robust
// accuracy and an attack an upper bound (each holding with probability
// 1 − α per image): the report shows both. The certificate covers L2 perturbations of
// the pixels only, and holds for the smoothed classifier, not for the base
// model (which the other rows attack).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "parry/config/defense_config.hpp"
#include "parry/core/model.hpp"
#include "parry/data/image_source.hpp"

namespace parry::eval {

/// One σ's certified and empirical accuracies.
struct CertifiedOutcome {
  double sigma = 0.0;
  int64_t images = 0;  ///< n of the certified accuracies and the abstention rate
  int64_t n0 = 0, n = 0;
  double alpha = 0.0;
  std::vector<double> radii;               ///< the table's L2 radii (pixel units)
  std::vector<double> certified_accuracy;  ///< per radius: certified right with radius >= r
  /// Per radius: the share of images that neither PGD-L2 nor APGD-L2 at
  /// ε = r brought PREDICT to a wrong label (r = 0: clean images). Rests on
  /// attack_images images; empty if 0.
  std::vector<double> empirical_accuracy;
  int64_t attack_images = 0;
  double abstention_rate = 0.0;  ///< CERTIFY abstained
  /// Per certified image (for the curve): its certified radius, or −1 if the
  /// certificate is wrong or CERTIFY abstained.
  std::vector<double> correct_radius;
  double certify_seconds = 0.0;  ///< wall time of CERTIFY over all images
  /// CERTIFY's overhead: its wall time over that of the (n₀ + n) · images
  /// plain forward passes of the base model it makes, at the noise batch
  /// (1 = nothing but the forward passes). The reference is one batch of
  /// clean copies of each image, timed right after that image's CERTIFY, so
  /// both see the same machine load.
  double certify_cost_ratio = 0.0;
  /// Images certified per second.
  double images_per_second() const { return certify_seconds > 0 ? images / certify_seconds : 0.0; }

  /// The share of images certified right with radius >= r.
  double certified_accuracy_at(double radius) const;
};

/// Checks `spec` against the test set before anything runs: every σ positive
/// and finite, at least spec.images test images, n0 <= n, attack_images <= images.
/// @throws parry::OptionError naming the problem.
void check_certified(const config::CertifiedSpec& spec, const data::ImageSource& test);

/// Runs the certified rows for every σ of `spec` (none if spec.sigmas is
/// empty). `model` is the model with its input transform (Config::model_for),
/// `test` the test images in the evaluation's order.
/// @throws parry::OptionError if test holds fewer than spec.images images.
std::vector<CertifiedOutcome> evaluate_certified(const Model& model, const data::ImageSource& test,
                                                 const config::CertifiedSpec& spec, uint64_t seed,
                                                 const std::function<void(const std::string&)>& progress = {});

}  // namespace parry::eval
