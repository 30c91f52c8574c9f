// Parry core: Model, InputSpec, the stage interfaces and Guard.
#pragma once

#include "parry/core/decision_rule.hpp"
#include "parry/core/detector.hpp"
#include "parry/core/errors.hpp"
#include "parry/core/gate.hpp"
#include "parry/core/guard.hpp"
#include "parry/core/input_spec.hpp"
#include "parry/core/log.hpp"
#include "parry/core/model.hpp"
#include "parry/core/output_policy.hpp"
#include "parry/core/preprocessor.hpp"
#include "parry/core/response.hpp"
#include "parry/core/runtime.hpp"
