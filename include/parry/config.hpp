// The JSON defense configuration.
#pragma once

#include "parry/config/defense_config.hpp"
