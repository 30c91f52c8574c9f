// Input-transformation defenses.
#pragma once

#include "parry/preprocess/bit_depth.hpp"
#include "parry/preprocess/gaussian_blur.hpp"
#include "parry/preprocess/jpeg.hpp"
#include "parry/preprocess/median_smoothing.hpp"
#include "parry/preprocess/normalize.hpp"
#include "parry/preprocess/resize.hpp"
