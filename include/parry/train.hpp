// Training: plain classifier training (more in later releases).
#pragma once

#include "parry/train/classifier_trainer.hpp"
