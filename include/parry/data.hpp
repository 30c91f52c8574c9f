// Data: data sources (image folders, tensor files, IDX), image decoding and the Guard's image path.
#pragma once

#include "parry/data/data_splits.hpp"
#include "parry/data/idx.hpp"
#include "parry/data/image.hpp"
#include "parry/data/image_folder.hpp"
#include "parry/data/image_source.hpp"
#include "parry/data/predict_image.hpp"
#include "parry/data/tensor_file.hpp"
