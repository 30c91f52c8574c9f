// Training: plain classifier training, defensive distillation, adversarial
// training and learned adversarial-input detectors.
#pragma once

#include "parry/train/adversarial_trainer.hpp"
#include "parry/train/classifier_trainer.hpp"
#include "parry/train/detector_trainer.hpp"
#include "parry/train/distillation.hpp"
#include "parry/train/process_group.hpp"
