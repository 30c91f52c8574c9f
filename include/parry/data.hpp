// Data: IDX / Fashion-MNIST readers.
#pragma once

#include "parry/data/idx.hpp"
#include "parry/data/image.hpp"
