// Adversarial-input detectors.
#pragma once

#include "parry/detect/softmax_confidence.hpp"
