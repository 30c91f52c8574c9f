// The JSON defense configuration and its component registry.
#pragma once

#include "parry/config/defense_config.hpp"
#include "parry/config/registry.hpp"
