// Certified robustness: randomized smoothing with certificates (Cohen et al. 2019).
#pragma once

#include "parry/certify/smoothed_classifier.hpp"
#include "parry/certify/smoothed_decision.hpp"
#include "parry/certify/statistics.hpp"
