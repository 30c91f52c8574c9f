// Adversarial-input detectors.
#pragma once

#include "parry/detect/feature_squeezing.hpp"
#include "parry/detect/kernel_density.hpp"
#include "parry/detect/learned_detector.hpp"
#include "parry/detect/logistic_regression.hpp"
#include "parry/detect/mc_dropout.hpp"
#include "parry/detect/softmax_confidence.hpp"
#include "parry/detect/uncertainty_density.hpp"
