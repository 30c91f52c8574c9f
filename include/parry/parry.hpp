// Parry: defenses for LibTorch image classifiers against adversarial examples.
// Umbrella header: includes every family.
#pragma once

#include "parry/attack.hpp"
#include "parry/certify.hpp"
#include "parry/conceal.hpp"
#include "parry/config.hpp"
#include "parry/core.hpp"
#include "parry/data.hpp"
#include "parry/detect.hpp"
#include "parry/eval.hpp"
#include "parry/models.hpp"
#include "parry/preprocess.hpp"
#include "parry/serve.hpp"
#include "parry/train.hpp"
