// Data: IDX / Fashion-MNIST readers, image decoding and the Guard's image path.
#pragma once

#include "parry/data/idx.hpp"
#include "parry/data/image.hpp"
#include "parry/data/predict_image.hpp"
