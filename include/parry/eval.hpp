// Evaluation: detector metrics, the evaluation runner and its report.
#pragma once

#include "parry/eval/evaluation.hpp"
#include "parry/eval/metrics.hpp"
#include "parry/eval/report.hpp"
