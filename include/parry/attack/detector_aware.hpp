// Adaptive attacks on detectors: the combined-classifier construction of
// Carlini & Wagner, "Adversarial Examples Are Not Easily Detected: Bypassing
// Ten Detection Methods", AISec 2017 (section 3).
//
// A classifier F with logits Z(x) ∈ R^K and a detector D are merged into one
// classifier G with K+1 classes whose extra class means "flagged":
//     G(x)_i = Z(x)_i                                   for i < K
//     G(x)_K = max_j Z(x)_j + s · (score_D(x) − threshold)
// G(x)_K beats every other logit exactly when the detector flags x. A targeted
// attack on G (any white-box attack in parry::attack, e.g. C&W-L2 or PGD) that
// reaches class t < K therefore fools F *and* evades D. The paper writes the
// extra logit as (Z_D(x) + 1) · max_j Z(x)_j, which needs positive logits; the
// additive form here has the same decision rule for any sign. `scale` s
// converts the detector's units into logit units.
//
// Stochastic detectors (McDropout) draw fresh masks on every evaluation; set
// GradientSettings::eot_samples > 1 to average gradients over masks (EOT).
#pragma once

#include "parry/attack/attack.hpp"
#include "parry/core/detector.hpp"

namespace parry::attack {

/// G(x) above, shape N×(K+1). `classifier` is the attack path of the model
/// (e.g. differentiable(guard)); `detector` scores its preprocessed input with
/// `model` via Detector::differentiable_score. `preprocess` maps the attack
/// input to what the detector sees (identity when empty).
/// @throws parry::StateError (when called) if the detector is uncalibrated or not differentiable;
/// parry::OptionError if scale is not finite and > 0.
LogitsFn detector_aware(LogitsFn classifier, const Detector& detector, const Model& model, double scale = 1.0,
                        LogitsFn preprocess = {});

}  // namespace parry::attack
