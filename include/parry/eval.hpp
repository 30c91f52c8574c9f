// Evaluation: detector metrics.
#pragma once

#include "parry/eval/metrics.hpp"
