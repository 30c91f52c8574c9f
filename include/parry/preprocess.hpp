// Input-transformation defenses.
#pragma once

#include "parry/preprocess/normalize.hpp"
